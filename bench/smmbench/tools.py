"""What the tools built on the Machine cost: snapshots and the debugger's single step.

* ``snapshot_times``: a ``Machine("q35")`` after one warm VERSION_INFO request; each
  cycle makes one request, then restores the snapshot (timed). Snapshots are taken
  (timed) on the same Machine. bench/snapshot_bench.py has the longer study.
* ``step_rate``: a ``Debugger`` on ``Machine("q35")`` whose front-end answers every
  stop with ``stepi``, through one whole ``software_smi(0x42)``: non-SMM code, SMI
  entry, the MM core's 16 -> 32 -> 64-bit switch, dispatch, RSM and the rest of the
  trampoline. Steps per second of wall time, the front-end's own work included.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import smmemu
from smmbench.workloads import VERSION_INFO_GUID, VERSION_INFO_REQUEST
from smmemu.debug import Debugger, Resume, ResumeKind, Stop, StopKind


def snapshot_times(cycles: int, takes: int) -> dict[str, Any]:
    """Median and spread of restore (after one request) and take, in microseconds."""
    with smmemu.Machine("q35") as machine:
        machine.communicate(VERSION_INFO_GUID, VERSION_INFO_REQUEST)
        snapshot = machine.snapshot()
        restores: list[float] = []
        for _ in range(cycles):
            machine.communicate(VERSION_INFO_GUID, VERSION_INFO_REQUEST)
            started = time.perf_counter()
            machine.restore(snapshot)
            restores.append(time.perf_counter() - started)
        taken: list[float] = []
        for _ in range(takes):
            started = time.perf_counter()
            extra = machine.snapshot()
            taken.append(time.perf_counter() - started)
            extra.close()
        snapshot.close()
    return {"restore_us": _summary(restores), "take_us": _summary(taken),
            "cycles": cycles, "takes": takes}


class _Stepper:
    """A front-end that single-steps until the run ends, counting the steps."""

    def __init__(self) -> None:
        self.steps = 0

    def stopped(self, stop: Stop) -> Resume:
        if stop.kind is StopKind.END:
            return Resume(ResumeKind.DETACH)
        self.steps += 1
        return Resume(ResumeKind.STEP)

    def finished(self) -> None:
        return None


def step_rate(runs: int) -> dict[str, Any]:
    """Single steps per second through whole software SMIs (median of ``runs``)."""
    rates: list[float] = []
    steps = 0
    with smmemu.Machine("q35") as machine:
        machine.software_smi(0x42)  # warm: translations, first-SMI set-up
        for _ in range(runs):
            debugger = Debugger(machine, budget=machine.budget, stop_at_start=True)
            stepper = _Stepper()
            debugger.attach(stepper)
            started = time.perf_counter()
            result = machine.software_smi(0x42)
            elapsed = time.perf_counter() - started
            debugger.close()
            if not result.ok or len(result.smis) != 1 or stepper.steps < 100:
                raise RuntimeError(f"stepping software_smi(0x42) failed: {result.stop}, "
                                   f"{stepper.steps} steps")
            steps = stepper.steps
            rates.append(steps / elapsed)
    return {"steps_per_smi": steps, "runs": runs, "steps_per_s": statistics.median(rates),
            "min_per_s": min(rates), "max_per_s": max(rates)}


def _summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"median": statistics.median(ordered) * 1e6, "min": ordered[0] * 1e6,
            "p90": ordered[int(0.9 * (len(ordered) - 1))] * 1e6}
