"""Helpers shared by the benchmark scripts: median of several runs after a warm-up, argument checks."""
from __future__ import annotations

import argparse
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


def positive(text: str) -> int:
    """Argparse type of a count (rounds, layers, parts): below 1 is a usage error, not a traceback later."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
