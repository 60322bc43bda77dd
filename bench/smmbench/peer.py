"""The Qiling peer: its virtual environment and the ``bench/qiling_smm.py`` worker process.

Qiling lives in its own venv (``bench/.qiling-venv``, pinned by
``bench/qiling-requirements.txt``) so it never shares packages with smmemu. The
worker runs ``qiling_smm.py --serve``: it builds and loads the SMM driver, prints a
JSON handshake, then times one batch of SW SMIs per ``sample N`` line, inside its
own process, so the pipe round trip is not part of the figure.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

from smmbench import BENCH_DIR

DEFAULT_VENV = BENCH_DIR / ".qiling-venv"
REQUIREMENTS = BENCH_DIR / "qiling-requirements.txt"
WORKER = BENCH_DIR / "qiling_smm.py"


class PeerUnavailableError(RuntimeError):
    """Qiling cannot be installed or run here; the message says why."""


def _tail(text: str, lines: int = 1) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) if kept else "(no output)"


def ensure_venv(venv: Path, log: IO[str]) -> Path:
    """The venv's python, creating the venv and installing the pinned Qiling if needed.

    A marker file holding the requirements is written after a successful install, so an
    interrupted or failed install is retried on the next run.
    """
    python = venv / "bin" / "python"
    marker = venv / ".smmbench-installed"
    wanted = REQUIREMENTS.read_text()
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    log.write(f"setting up {venv} from {REQUIREMENTS.name} (one time, about a minute)...\n")
    log.flush()
    steps = [[str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "-r", str(REQUIREMENTS)]]
    if not python.exists():
        steps.insert(0, [sys.executable, "-m", "venv", str(venv)])
    for step in steps:
        try:
            proc = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise PeerUnavailableError(f"{' '.join(step[:3])}: {err}") from err
        if proc.returncode != 0:
            raise PeerUnavailableError(
                f"`{' '.join(Path(a).name for a in step[:4])}` failed: {_tail(proc.stderr)}")
    marker.write_text(wanted)
    return python


class QilingWorker:
    """A running ``qiling_smm.py --serve`` process."""

    def __init__(self, python: Path, *, setup_timeout: float = 300.0) -> None:
        self._closed = False
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen(
            [str(python), str(WORKER), "--serve"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=BENCH_DIR)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.info = self._receive(setup_timeout)
        if "error" in self.info:
            self.close()
            raise PeerUnavailableError(str(self.info["error"]))

    def _read(self) -> None:
        stdout = self._proc.stdout
        if stdout is not None:
            for line in stdout:
                self._lines.put(line)
        self._lines.put(None)

    def _receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise PeerUnavailableError(f"no answer from the Qiling worker in {timeout:.0f} s") \
                from None
        if line is None:
            self._stderr.seek(0)
            detail = _tail(self._stderr.read())
            raise PeerUnavailableError(f"the Qiling worker exited: {detail}")
        result: dict[str, Any] = json.loads(line)
        return result

    def batch(self, count: int) -> float:
        """Seconds the worker measured for ``count`` SW SMIs."""
        stdin = self._proc.stdin
        if stdin is None:
            raise RuntimeError("the Qiling worker has no stdin")
        stdin.write(f"sample {count}\n")
        stdin.flush()
        reply = self._receive(60.0 + count * 0.05)
        if "error" in reply:
            raise RuntimeError(f"qiling: {reply['error']}")
        return float(reply["seconds"])

    def close(self) -> None:
        """Ask the worker to quit; kill it if it does not."""
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        if proc.poll() is None:
            try:
                if proc.stdin is not None:
                    proc.stdin.write("quit\n")
                    proc.stdin.close()
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        self._stderr.close()
