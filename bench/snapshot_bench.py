"""Snapshot and restore costs (decision 0011), with the restore strategies side by side.

    PYTHONPATH=. python bench/snapshot_bench.py            # about 15 s
    PYTHONPATH=. python bench/snapshot_bench.py --rounds 3 # quicker

The scenario is the one fixtures and fuzzers use: a snapshot of a booted
``Machine("q35")`` (one warm VERSION_INFO request done), then, over and over, one
VERSION_INFO request and a restore. Rows:

* ``restore``: ``Machine.restore`` alone, right after the request;
* ``next request``: the request right after a restore, against the same request
  with no restore before it (sampled alternately): its extra cost is what the
  restore leaves for later (page faults, retranslation);
* ``snapshot``: ``Machine.snapshot`` (a fresh snapshot each time, released after).

Strategies: ``default`` (copy back the changed pages while few pages are mapped,
else map the image again; drop only the translations of changed bytes),
``always remap`` (the memfd is mapped over the buffer on every restore, the lead's
original design), and ``flush all`` (default, but every translation dropped).
Each runs in the same process, interleaved round by round.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import smmemu
from smmemu import objstate, ramimage, snapshot

VERSION_INFO = struct.pack("<IIIIQ", 0x5055534D, 1, 3, 0, 0) + bytes(16)
GUID = "8c633b23-1260-4ea6-830f-7ddc97382111"


@contextmanager
def strategy(name: str) -> Iterator[None]:
    """Patch module globals for one strategy (benchmark only)."""
    remap, physical = ramimage.REMAP_PAGES, snapshot._physical
    if name == "always remap":
        ramimage.REMAP_PAGES = -1
    elif name == "flush all":
        snapshot._physical = lambda changed, base: None
    try:
        yield
    finally:
        ramimage.REMAP_PAGES, snapshot._physical = remap, physical


def sample(machine: smmemu.Machine, snap: smmemu.snapshot.Snapshot, calls: int,
           ) -> dict[str, list[float]]:
    """``calls`` cycles of: request, restore (timed), request (timed), request (timed).

    The first timed request follows the restore ("next"); the second follows a
    request, with no restore in between ("plain").
    """
    request = machine.communicate
    out: dict[str, list[float]] = {"restore": [], "next": [], "plain": []}
    clock = time.perf_counter
    for _ in range(calls):
        request(GUID, VERSION_INFO)
        started = clock()
        machine.restore(snap)
        restored = clock()
        request(GUID, VERSION_INFO)
        after_next = clock()
        request(GUID, VERSION_INFO)
        after_plain = clock()
        out["restore"].append(restored - started)
        out["next"].append(after_next - restored)
        out["plain"].append(after_plain - after_next)
    return out


@contextmanager
def timed_phases(spent: dict[str, float]) -> Iterator[None]:
    """Wrap the restore's phases with timers (benchmark only); ``spent`` sums seconds."""
    targets = [(ramimage._scanner, "residency", "scan pagemap"),
               (ramimage.RamImage, "changes", "compare pages"),
               (ramimage.RamImage, "copy_into", "copy back"),
               (ramimage.RamImage, "map_over", "map again"),
               (objstate.ObjectState, "restore", "Python state"),
               (snapshot, "_settle_view", "SMRAM views")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]

    def timed(function: Callable[..., object], label: str) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - started
        return wrapper

    for (owner, name, label), (_, _, original) in zip(targets, originals, strict=True):
        setattr(owner, name, timed(original, label))
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def breakdown(machine: smmemu.Machine, snap: smmemu.snapshot.Snapshot, calls: int) -> None:
    """Where a default restore's time goes (per restore, averaged; timers add ~1 us)."""
    spent: dict[str, float] = {}
    total = 0.0
    with timed_phases(spent):
        for _ in range(calls):
            machine.communicate(GUID, VERSION_INFO)
            started = time.perf_counter()
            machine.restore(snap)
            total += time.perf_counter() - started
    print(f"  breakdown of a default restore, mean of {calls}: {total / calls * 1e6:.1f} us")
    for label, seconds in spent.items():
        print(f"    {label:14s} {seconds / calls * 1e6:6.1f} us")
    rest = total - sum(spent.values())
    print(f"    {'CPUs, checks':14s} {rest / calls * 1e6:6.1f} us  (contexts, TLB, translations)")


def take_times(machine: smmemu.Machine, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        snap = machine.snapshot()
        samples.append(time.perf_counter() - started)
        snap.close()
    return samples


def us(values: list[float]) -> str:
    ordered = sorted(values)
    p10, p90 = ordered[len(ordered) // 10], ordered[len(ordered) * 9 // 10]
    return f"{statistics.median(ordered) * 1e6:8.1f} [{p10 * 1e6:.1f} .. {p90 * 1e6:.1f}]"


def run(rounds: int, calls: int, cpus: int, *, show_breakdown: bool = False,
        ) -> dict[str, dict[str, list[float]]]:
    names = ("default", "always remap", "flush all")
    results: dict[str, dict[str, list[float]]] = {
        name: {"restore": [], "next": [], "plain": []} for name in names}
    machine = smmemu.Machine("q35", cpus=cpus)
    machine.communicate(GUID, VERSION_INFO)
    snap = machine.snapshot()
    gc.disable()
    try:
        for _ in range(rounds):
            for name in names:
                with strategy(name):
                    machine.restore(snap)  # leave the previous strategy's state behind
                    for key, values in sample(machine, snap, calls).items():
                        results[name][key] += values
        results["snapshot"] = {"take": take_times(machine, 50)}
        results["snapshot"]["pages"] = [float(snap.pages)]
        if show_breakdown:
            breakdown(machine, snap, calls)
    finally:
        gc.enable()
        machine.close()
    return results


def report(results: dict[str, dict[str, list[float]]], cpus: int) -> None:
    print(f"smmemu snapshot bench: Machine('q35', cpus={cpus}), one VERSION_INFO per cycle, "
          f"us median [p10 .. p90]")
    for name in ("default", "always remap", "flush all"):
        row = results[name]
        extra = (statistics.median(row["next"]) - statistics.median(row["plain"])) * 1e6
        print(f"  {name:13s} restore                 {us(row['restore'])}")
        print(f"  {name:13s} request after restore   {us(row['next'])}   extra {extra:+.1f}")
        print(f"  {name:13s} request after request   {us(row['plain'])}")
    take = results["snapshot"]
    print(f"  snapshot (take)                       {us(take['take'])}   "
          f"({int(take['pages'][0])} pages stored)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=150, help="cycles per round and strategy")
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the raw samples here")
    parser.add_argument("--breakdown", action="store_true", help="time a restore's phases")
    args = parser.parse_args(argv)
    results = run(args.rounds, args.calls, args.cpus, show_breakdown=args.breakdown)
    report(results, args.cpus)
    if args.json:
        args.json.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
