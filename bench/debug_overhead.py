"""What an attached but idle debugger costs an SMI round trip (docs/debugging.md).

    PYTHONPATH=. python bench/debug_overhead.py [--pairs 200] [--calls 25]

One Machine("q35") and two workloads, the MM Supervisor VERSION_INFO request
and software_smi(0x42). A pair is four batches of ``--calls`` calls in the
order none / attached / attached / none (ABBA, so a drift in host speed
cancels out); "attached" means a Debugger with no breakpoint and no stop at
start. The overhead reported is the median over the pairs of (attached time /
detached time - 1), with the interquartile range; medians and minimums of the
per-call times are shown for scale. The run also checks that attaching adds
no engine hook (the debugger hooks the engine only for breakpoints and
watchpoints).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

from smmemu import MM_SUPERVISOR_REQUEST_HANDLER_GUID, Machine
from smmemu.debug import Debugger, Resume, Stop
from smmemu.uefi.communicate import MmSupervisorRequest, supervisor_request


class _NeverStops:
    """A front-end for a debugger that has nothing to stop for."""

    def stopped(self, stop: Stop) -> Resume:
        raise AssertionError(f"unexpected stop {stop}")

    def finished(self) -> None:
        return None


def _batch(call: Callable[[], object], calls: int) -> float:
    gc.collect()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--calls", type=int, default=25)
    args = parser.parse_args()
    request = supervisor_request(MmSupervisorRequest.VERSION_INFO, bytes(16))
    with Machine("q35") as machine:
        debugger = Debugger(machine, budget=machine.budget, stop_at_start=False)
        workloads: dict[str, Callable[[], object]] = {
            "VERSION_INFO": lambda: machine.communicate(MM_SUPERVISOR_REQUEST_HANDLER_GUID,
                                                        request),
            "software_smi(0x42)": lambda: machine.software_smi(0x42),
        }
        hooks_before = len(machine.cpu.engine._hooks)
        debugger.attach(_NeverStops())
        hooks_attached = len(machine.cpu.engine._hooks)
        debugger.detach()

        def timed(call: Callable[[], object], attached: bool) -> float:
            if attached:
                debugger.attach(_NeverStops())
            try:
                return _batch(call, args.calls)
            finally:
                debugger.detach()

        for call in workloads.values():  # warm up both paths
            for attached in (False, True):
                timed(call, attached)
        times: dict[tuple[str, bool], list[float]] = {
            (name, attached): [] for name in workloads for attached in (False, True)}
        ratios: dict[str, list[float]] = {name: [] for name in workloads}
        for _ in range(args.pairs):
            for name, call in workloads.items():
                a1, b1, b2, a2 = (timed(call, attached) for attached in (False, True, True, False))
                times[(name, False)] += [a1, a2]
                times[(name, True)] += [b1, b2]
                ratios[name].append((b1 + b2) / (a1 + a2) - 1)
        debugger.close()
    print(f"engine hooks: {hooks_before} detached, {hooks_attached} with the debugger attached")
    print(f"{args.pairs} ABBA pairs of {args.calls}-call batches; microseconds per call")
    print(f"{'workload':<20} {'none med':>9} {'none min':>9} {'att. med':>9} {'att. min':>9}  "
          "overhead: median of pairs [IQR]")
    for name in workloads:
        none, attached = times[(name, False)], times[(name, True)]
        q1, median, q3 = statistics.quantiles(ratios[name], n=4)
        print(f"{name:<20} {statistics.median(none):9.1f} {min(none):9.1f} "
              f"{statistics.median(attached):9.1f} {min(attached):9.1f}  "
              f"{median * 100:+.1f} % [{q1 * 100:+.1f} %, {q3 * 100:+.1f} %]")


if __name__ == "__main__":
    main()
