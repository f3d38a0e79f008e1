"""Helpers shared by the benchmark scripts: median of several runs after a warm-up, and checks of what a
timed path computes. Counts on their command lines (rounds, layers, parts) are ``tasu.cli.at_least(1)``."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_ms(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` runs, after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def check_reference(what: str, diff: float, tolerance: float) -> None:
    """Stop with one line where a timed path's output is off the reference: its speed-up would mean nothing."""
    if not diff <= tolerance:   # a NaN is off too
        raise SystemExit(f"{what} differs from the reference by {diff:.3g} (tolerance {tolerance:.3g})")
