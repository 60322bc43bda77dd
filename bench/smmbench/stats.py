"""Samples, their summary and the interleaved sampler.

A *row* is one thing timed (a workload on smmemu, the floor, Qiling). A sample is
the wall time of one batch of calls divided by the batch size, so every figure is
"seconds per call". Rows are sampled round-robin (round 1 of every row, then
round 2, ...) so that a burst of noise on the shared host lands on all rows alike
and the ratios between rows stay meaningful.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Batch = Callable[[int], float]
"""Runs ``n`` calls and returns the seconds they took (timed by the callee)."""


@dataclass(frozen=True, slots=True)
class Summary:
    """Seconds per call over the samples: median, min, p90, quartiles."""

    median: float
    minimum: float
    p90: float
    q1: float
    q3: float
    count: int

    @classmethod
    def of(cls, samples: list[float]) -> Summary:
        ordered = sorted(samples)
        if len(ordered) == 1:
            only = ordered[0]
            return cls(only, only, only, only, only, 1)
        deciles = statistics.quantiles(ordered, n=10, method="inclusive")
        quartiles = statistics.quantiles(ordered, n=4, method="inclusive")
        return cls(statistics.median(ordered), ordered[0], deciles[8], quartiles[0],
                   quartiles[2], len(ordered))

    @property
    def rate(self) -> float:
        """Calls per second at the median."""
        return 1.0 / self.median if self.median > 0 else math.inf

    @property
    def iqr_percent(self) -> float:
        """Interquartile range as a percentage of the median."""
        return 100.0 * (self.q3 - self.q1) / self.median if self.median > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "median_us": self.median * 1e6, "min_us": self.minimum * 1e6, "p90_us": self.p90 * 1e6,
            "q1_us": self.q1 * 1e6, "q3_us": self.q3 * 1e6, "iqr_percent": self.iqr_percent,
            "per_second": self.rate, "samples": self.count,
        }


@dataclass(slots=True)
class Row:
    """One timed thing; ``batch`` is None when setting it up failed (see ``error``)."""

    key: str
    label: str
    group: str
    batch: Batch | None
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    calls_per_sample: int = 0
    samples: list[float] = field(default_factory=list)

    @property
    def summary(self) -> Summary | None:
        return Summary.of(self.samples) if self.samples else None

    def fail(self, err: BaseException, where: str) -> None:
        self.error = f"{where}: {type(err).__name__}: {err}"
        self.info["traceback"] = traceback.format_exc(limit=6)
        self.batch = None


def calibrate(row: Row, *, min_calls: int, target_seconds: float, warmup_seconds: float) -> None:
    """Warm a row up and choose its batch size: ``min_calls`` or more, ``target_seconds`` long."""
    if row.batch is None:
        return
    try:
        calls, spent = 0, 0.0
        size = 10
        while spent < warmup_seconds:
            spent += row.batch(size)
            calls += size
            size = min(size * 2, 5000)
        per_call = spent / calls
        wanted = math.ceil(target_seconds / per_call) if per_call > 0 else min_calls
        row.calls_per_sample = max(min_calls, min(wanted, 200_000))
    except Exception as err:  # noqa: BLE001 - one failing row must not stop the others
        row.fail(err, "warm-up")


def sample_interleaved(rows: list[Row], rounds: int,
                       progress: Callable[[str], None] | None = None) -> None:
    """Take ``rounds`` samples of every live row, round-robin."""
    for index in range(rounds):
        for row in rows:
            if row.batch is None:
                continue
            gc.collect()
            try:
                seconds = row.batch(row.calls_per_sample)
            except Exception as err:  # noqa: BLE001 - one failing row must not stop the others
                row.fail(err, f"sample {index + 1}")
                continue
            row.samples.append(seconds / row.calls_per_sample)
        if progress is not None:
            progress(f"round {index + 1}/{rounds}")


def timed_loop(call: Callable[[], object], check: Callable[[object], None]) -> Batch:
    """A :data:`Batch` that runs ``call`` n times and checks the last result."""

    def batch(n: int) -> float:
        result: object = None
        started = time.perf_counter()
        for _ in range(n):
            result = call()
        elapsed = time.perf_counter() - started
        check(result)
        return elapsed

    return batch
