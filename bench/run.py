"""smmemu benchmark: throughput against a bare-Unicorn floor and Qiling, start-up, memory.

Run it with ``make bench`` (or ``PYTHONPATH=. python bench/run.py``). It prints a
table and writes the full result, raw samples included, as JSON
(``bench/results/latest.json`` unless ``--json`` says otherwise). What each row
means and how the floor and the Qiling workload are defined: ``bench/README.md``.

A measurement that fails reports its error in its own row; the others still run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from smmbench import BENCH_DIR, REPO_ROOT, floor, peer, probes, report, stats, tools, workloads

import smmemu

T = TypeVar("T")
DEFAULT_JSON = BENCH_DIR / "results" / "latest.json"


def _say(message: str) -> None:
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


def _attempt(errors: dict[str, str], name: str, action: Callable[[], T]) -> T | None:
    """Run one measurement; on failure record the error under ``name`` and return None."""
    try:
        return action()
    except Exception as err:  # noqa: BLE001 - one failing measurement must not stop the rest
        errors[name] = f"{type(err).__name__}: {err}"
        _say(f"{name} failed: {errors[name]}")
        return None


def _git() -> str:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                              timeout=10, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short=10", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "smmemu", "firmware_blobs")
    return f"{commit}{' + uncommitted changes in smmemu/firmware_blobs' if dirty else ''}"


def _host() -> str:
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({model}), "
            f"{platform.python_implementation()} {platform.python_version()}")


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"smmemu {smmemu.__version__}"]
    for name in ("unicorn", "capstone"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} ?")
    return ", ".join(parts)


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 rounds of short samples, 3 start-up runs")
    parser.add_argument("--no-qiling", action="store_true", help="skip the Qiling peer")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="PATH",
                        help=f"where to write the JSON result (default {DEFAULT_JSON})")
    parser.add_argument("--rounds", type=int, default=None,
                        help="samples per row (default 9, 3 with --quick)")
    parser.add_argument("--qiling-venv", type=Path, default=peer.DEFAULT_VENV, metavar="DIR",
                        help="Qiling's virtual environment, created if missing")
    return parser.parse_args(argv)


class Bench:
    """One benchmark invocation: builds the rows, samples them, gathers the rest."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.rounds: int = args.rounds or (3 if self.quick else 9)
        self.target_seconds = 0.03 if self.quick else 0.12
        self.min_calls = 20 if self.quick else 200
        self.errors: dict[str, str] = {}
        self.rows: list[stats.Row] = []
        self.machines: list[smmemu.Machine] = []
        self.worker: peer.QilingWorker | None = None
        self.result: dict[str, Any] = {}

    # -- rows -----------------------------------------------------------------
    def _row(self, key: str, label: str, group: str,
             make: Callable[[], stats.Batch], info: dict[str, Any] | None = None) -> stats.Row:
        row = stats.Row(key, label, group, None, dict(info or {}))
        try:
            row.batch = make()
        except Exception as err:  # noqa: BLE001 - the row shows the error
            row.fail(err, "setup")
        self.rows.append(row)
        return row

    def _smmemu_rows(self) -> None:
        for workload in workloads.WORKLOADS:
            def make(w: workloads.Workload = workload) -> stats.Batch:
                batch, machine = workloads.machine_batch(w)
                self.machines.append(machine)
                return batch

            self._row(f"smmemu.{workload.key}", f"smmemu  {workload.label}", "smmemu", make)

    def _floor_rows(self, counts: dict[str, workloads.InstructionCount]) -> None:
        routines: dict[str, Any] = {}
        self.result["floor_routines"] = routines
        for workload in workloads.WORKLOADS:
            def make(w: workloads.Workload = workload) -> stats.Batch:
                count = _count(counts, w.key)
                routine = floor.build_routine(count.smm_distinct, count.run_length,
                                              count.smm_rep_iterations, count.smm_distinct_writes)
                floor.verify(routine)
                routines[w.key] = {**routine.to_json(), "io_bytes": w.buffer_bytes}
                return floor.floor_batch(routine, w.buffer_bytes)

            self._row(f"floor.{workload.key}", f"floor   {workload.label.split(' (')[0]}",
                      "floor", make)

        def make_ctx() -> stats.Batch:
            count = _count(counts, "swsmi")
            routine = floor.build_routine(count.smm_distinct, count.run_length,
                                          count.smm_rep_iterations, count.smm_distinct_writes)
            return floor.floor_with_context(routine, 0)

        def make_plain() -> stats.Batch:
            count = _count(counts, "version_info")
            routine = floor.build_routine(count.smm, count.run_length, 0, 0)
            floor.verify(routine)
            routines["version_info_plain"] = routine.to_json()
            return floor.floor_batch(routine, workloads.WORKLOADS[0].buffer_bytes)

        self._row("floor_ctx.swsmi", "floor   software_smi + SMI context switch (info)",
                  "floor", make_ctx)
        self._row("floor_plain.version_info", "floor   VERSION_INFO, same count, no stores (info)",
                  "floor", make_plain)

    def _qiling_row(self) -> None:
        qiling: dict[str, Any] = {}
        self.result["qiling"] = qiling
        if self.args.no_qiling:
            qiling["unavailable"] = "skipped (--no-qiling)"
            return
        try:
            python = peer.ensure_venv(self.args.qiling_venv, sys.stderr)
            _say("starting the Qiling worker")
            self.worker = peer.QilingWorker(python)
        except Exception as err:  # noqa: BLE001 - reported in the table
            qiling["unavailable"] = str(err) if isinstance(err, peer.PeerUnavailableError) \
                else f"{type(err).__name__}: {err}"
            _say(f"qiling: unavailable: {qiling['unavailable']}")
            return
        info = self.worker.info
        qiling["info"] = info
        label = f"qiling  {info.get('qiling', '?')} SW SMI {SW_SMI_LABEL}"
        self._row("qiling.swsmi", label, "qiling", lambda: self._worker_batch())

    def _worker_batch(self) -> stats.Batch:
        worker = self.worker
        if worker is None:
            raise RuntimeError("no Qiling worker")
        return worker.batch

    # -- the run --------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.result.update({
            "schema": 1,
            "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
            "meta": {"started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                     "git": _git(), "host": _host(), "versions": _versions(),
                     "loadavg_before": _loadavg()},
            "options": {"quick": self.quick, "rounds": self.rounds,
                        "target_seconds": self.target_seconds, "min_calls": self.min_calls},
        })
        try:
            self._measure()
        finally:
            for machine in self.machines:
                machine.close()
            if self.worker is not None:
                self.worker.close()
        self.result["meta"]["loadavg_after"] = _loadavg()
        self.result["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
        self._ratios()
        self.result["targets"] = report.evaluate_targets(self.result)
        self.result["errors"] = self.errors
        return self.result

    def _measure(self) -> None:
        _say("counting guest instructions (instrumented Machine)")
        counted = _attempt(self.errors, "instruction count",
                           lambda: workloads.count_instructions(workloads.WORKLOADS))
        counts: dict[str, workloads.InstructionCount] = {}
        if counted is not None:
            counts, failures = counted
            self.errors.update({f"instruction count ({k})": v for k, v in failures.items()})
            self.result["instructions"] = {k: v.to_json() for k, v in counts.items()}
        _say("building rows")
        self._smmemu_rows()
        self._floor_rows(counts)
        self._qiling_row()
        _say("warming up and sizing batches")
        for row in self.rows:
            stats.calibrate(row, min_calls=self.min_calls, target_seconds=self.target_seconds,
                            warmup_seconds=0.05 if self.quick else 0.3)
        _say(f"sampling {len(self.rows)} rows x {self.rounds} rounds")
        stats.sample_interleaved(self.rows, self.rounds, progress=_say)
        self.result["rows"] = {
            row.key: {"label": row.label, "group": row.group, "error": row.error,
                      "calls_per_sample": row.calls_per_sample,
                      "samples_s": row.samples,
                      "summary": row.summary.to_json() if row.summary else None,
                      "info": row.info}
            for row in self.rows
        }
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        for machine in self.machines:
            machine.close()
        self.machines.clear()
        _say("time in SMM")
        self.result["smm_time"] = self._smm_time(counts)
        calib = _attempt(self.errors, "engine calibration", floor.engine_calibration)
        if calib is not None:
            self.result["engine_calibration"] = calib
        runs = 3 if self.quick else 7
        _say(f"start-up ({runs} fresh processes)")
        startup = _attempt(self.errors, "start-up", lambda: probes.startup(runs))
        if startup is not None:
            self.result["startup"] = {
                "runs": runs, "raw_s": startup,
                "summary": {f"{k.removesuffix('_s')}_ms": report.summarize_ms(v)
                            for k, v in startup.items()},
            }
        _say("peak RSS (1000 SMIs in a fresh process)")
        rss = _attempt(self.errors, "peak RSS", lambda: probes.peak_rss(1000))
        if rss is not None:
            self.result["rss"] = {"data": rss}
        _say("snapshots")
        cycles, takes = (50, 5) if self.quick else (300, 20)
        snapshots = _attempt(self.errors, "snapshots",
                             lambda: tools.snapshot_times(cycles, takes))
        if snapshots is not None:
            self.result["snapshots"] = snapshots
        _say("debugger single steps")
        step_runs = 3 if self.quick else 9
        steps = _attempt(self.errors, "single steps", lambda: tools.step_rate(step_runs))
        if steps is not None:
            self.result["single_step"] = steps

    def _smm_time(self, counts: dict[str, workloads.InstructionCount]) -> dict[str, Any]:
        calls = 100 if self.quick else 400
        out: dict[str, Any] = {}
        for workload in workloads.WORKLOADS:
            def measure(w: workloads.Workload = workload) -> tuple[float, float]:
                return workloads.smm_time(w, calls)

            measured = _attempt(self.errors, f"SMM time ({workload.key})", measure)
            if measured is None:
                continue
            in_smm, total = measured
            entry: dict[str, Any] = {"smm_us": in_smm * 1e6, "total_us": total * 1e6,
                                     "smm_share_percent": 100 * in_smm / total, "calls": calls}
            if workload.key in counts:
                insns = counts[workload.key].smm
                entry["mips_in_smm"] = insns / in_smm / 1e6
                entry["mips_end_to_end"] = insns / total / 1e6
            out[workload.key] = entry
        return out

    def _ratios(self) -> None:
        """Ratios of medians, plus the per-round spread (rounds are interleaved, see stats)."""
        rows = self.result.get("rows", {})

        def samples(key: str) -> list[float]:
            row = rows.get(key, {})
            return list(row.get("samples_s") or []) if row.get("summary") else []

        ratios: dict[str, float] = {}
        spread: dict[str, dict[str, float]] = {}

        def add(name: str, numerator: list[float], denominator: list[float]) -> None:
            if not numerator or not denominator:
                return
            ratios[name] = statistics.median(numerator) / statistics.median(denominator)
            if len(numerator) == len(denominator):
                per_round = [a / b for a, b in zip(numerator, denominator, strict=True)]
                spread[name] = {"median": statistics.median(per_round), "min": min(per_round),
                                "max": max(per_round)}

        qiling = samples("qiling.swsmi")
        for workload in workloads.WORKLOADS:
            ours = samples(f"smmemu.{workload.key}")
            add(f"{workload.key}_vs_floor", ours, samples(f"floor.{workload.key}"))
            add(f"{workload.key}_vs_qiling", qiling, ours)
        self.result["ratios"] = ratios
        self.result["ratios_per_round"] = spread


SW_SMI_LABEL = "0x9f (SwDispatch2, ~30 insns)"


def _count(counts: dict[str, workloads.InstructionCount], key: str) -> workloads.InstructionCount:
    if key not in counts:
        raise RuntimeError(f"no instruction count for {key} (see the errors below)")
    return counts[key]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    result = Bench(args).run()
    text = report.render(result)
    print(text)
    path: Path = args.json
    path.parent.mkdir(parents=True, exist_ok=True)
    result["table"] = text.splitlines()
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
