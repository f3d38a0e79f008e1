"""Benchmark of flushing denormal floats on CPU (``tasu.device.flush_denormals``).

    python bench/denormals.py

Prints ``name: value`` lines. A trained model's tensors can hold denormal floats (below 1.2e-38),
and x86 CPUs take a slow path for arithmetic on them. Here a [256, 768] x [768, 768] float32 matmul
and an elementwise multiply-add run on operands of which a quarter are denormal, with denormals kept
and flushed (medians after a warm-up, the two settings interleaved in one process, one thread):
denormal_matmul_flush_speedup and denormal_elementwise_flush_speedup are kept-time over flushed-time.
A ratio near 1 means this CPU handles denormals at full speed (or its torch cannot flush them).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from timing import median_ms  # noqa: E402


def operands(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal-range matrices with a quarter of the first one's entries made denormal."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(256, 768, generator=gen)
    b = torch.randn(768, 768, generator=gen)
    tiny = torch.rand(a.shape, generator=gen) < 0.25
    a[tiny] = 1e-40
    return a, b


def bench_denormals(rounds: int = 5) -> dict[str, float]:
    torch.set_num_threads(1)
    torch.set_flush_denormal(False)
    a, b = operands()   # made while denormals are kept: flushing would zero them on creation
    out = torch.empty(256, 768)
    cases = {"matmul": lambda: torch.mm(a, b, out=out),
             "elementwise": lambda: torch.addcmul(a, a, a, value=0.5, out=out)}
    times = {(name, flush): [] for name in cases for flush in (False, True)}
    for _ in range(rounds):
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            for name, fn in cases.items():
                times[(name, flush)].append(median_ms(fn, repeats=5, warmup=1))
    torch.set_flush_denormal(False)
    result = {}
    for name in cases:
        kept = sorted(times[(name, False)])[rounds // 2]
        flushed = sorted(times[(name, True)])[rounds // 2]
        result[f"denormal_{name}_kept_ms"] = kept
        result[f"denormal_{name}_flushed_ms"] = flushed
        result[f"denormal_{name}_flush_speedup"] = kept / flushed
    return result


def main() -> None:
    for name, value in bench_denormals().items():
        print(f"{name}: {value:.6g}", flush=True)


if __name__ == "__main__":
    main()
