"""Median VERSION_INFO round trip of the smmemu tree at each path given, interleaved.

Used to check that a change did not slow the foundation's SMI round trip:

    git worktree add /tmp/base <commit>
    python bench/compare_round_trip.py /tmp/base . /tmp/base .

Each argument is a checkout; it is imported in a fresh process, so trees never mix.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

_CHILD = """
import statistics, struct, sys, time
sys.path.insert(0, sys.argv[1])
import smmemu
m = smmemu.Machine()
req = struct.pack('<IIIIQ', 0x5055534d, 1, 3, 0, 0) + bytes(16)
guid = smmemu.MM_SUPERVISOR_REQUEST_HANDLER_GUID
for _ in range(200):
    m.communicate(guid, req)
samples = []
for _ in range(9):
    t = time.perf_counter()
    for _ in range(300):
        m.communicate(guid, req)
    samples.append((time.perf_counter() - t) / 300 * 1e6)
print(f"{statistics.median(samples):.1f} {min(samples):.1f}")
"""


def main() -> int:
    results: dict[str, list[tuple[float, float]]] = {}
    for path in sys.argv[1:]:
        out = subprocess.run([sys.executable, "-c", _CHILD, path], capture_output=True,
                             text=True, check=True).stdout.split()
        results.setdefault(path, []).append((float(out[0]), float(out[1])))
    for path, runs in results.items():
        medians = [median for median, _ in runs]
        best = min(low for _, low in runs)
        print(f"{path:30s} median {statistics.median(medians):7.1f} us   best {best:7.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
