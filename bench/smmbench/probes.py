"""Measurements that need a fresh interpreter: start-up time and peak RSS.

Each probe runs ``python -c <script>`` with the benchmark's own interpreter and the
repository root first on ``PYTHONPATH`` (so the working tree is measured), and reads
one JSON line from its stdout.

The interpreter is started through ``/bin/sh`` (not exec'd by it). On Linux a process's
``ru_maxrss`` survives ``execve``: a child forked (or vforked) straight from this
process, which holds several Machines, would report *our* peak RSS as its own (a
300 MiB parent made a 13 MiB child report 313 MiB). A child of the small shell starts
clean. ``VmHWM`` from ``/proc/self/status`` (per address space, so fresh after exec) is
reported alongside as a cross-check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from smmbench import REPO_ROOT

STARTUP_SCRIPT = """
import json, time
t0 = time.perf_counter()
import smmemu
t1 = time.perf_counter()
machine = smmemu.Machine("q35")
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "machine_s": t2 - t1}))
"""

RSS_SCRIPT = """
import json, re, resource, struct
from pathlib import Path
import smmemu
after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
machine = smmemu.Machine("q35")
after_machine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
request = struct.pack("<IIIIQ", 0x5055534D, 1, 3, 0, 0) + bytes(16)
guid = "8c633b23-1260-4ea6-830f-7ddc97382111"
for _ in range({smis}):
    reply = machine.communicate(guid, request)
    if reply.status != 0:
        raise SystemExit("VERSION_INFO failed: status %#x" % reply.status)
after_smis = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
status = Path("/proc/self/status")
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", status.read_text()) if status.exists() else None
print(json.dumps({{"after_import_kib": after_import, "after_machine_kib": after_machine,
                  "after_smis_kib": after_smis, "vm_hwm_kib": int(hwm.group(1)) if hwm else None,
                  "smis": {smis}, "smi_count": machine.smi_count}}))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    parts = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _run(script: str, timeout: float) -> tuple[dict[str, Any], float]:
    """Run ``script`` in a fresh interpreter; returns (its JSON line, process wall seconds)."""
    command = [sys.executable, "-c", script]
    if Path("/bin/sh").exists():  # see the module docstring: keep ru_maxrss our child's own
        command = ["/bin/sh", "-c", '"$0" -c "$1"; exit $?', sys.executable, script]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env(),
                          cwd=REPO_ROOT, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"probe exited with {proc.returncode}: {tail}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError("probe printed nothing")
    return json.loads(lines[-1]), wall


def startup(runs: int) -> dict[str, list[float]]:
    """Seconds for ``import smmemu``, for ``Machine("q35")`` after it, and the process wall time."""
    out: dict[str, list[float]] = {"import_s": [], "machine_s": [], "total_s": [],
                                   "process_wall_s": []}
    _run(STARTUP_SCRIPT, 120)  # warm the OS file cache and __pycache__
    for _ in range(runs):
        result, wall = _run(STARTUP_SCRIPT, 120)
        out["import_s"].append(result["import_s"])
        out["machine_s"].append(result["machine_s"])
        out["total_s"].append(result["import_s"] + result["machine_s"])
        out["process_wall_s"].append(wall)
    return out


def peak_rss(smis: int = 1000) -> dict[str, Any]:
    """Peak RSS (``ru_maxrss``, KiB on Linux) of a process holding one Machine after ``smis``."""
    result, _wall = _run(RSS_SCRIPT.format(smis=smis), 600)
    return result
