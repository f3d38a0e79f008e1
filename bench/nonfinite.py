"""Benchmark of the NaN/infinity check on loaded weights (``tasu.weights.first_non_finite``).

    python bench/nonfinite.py

Prints ``name: value`` lines. Every encoder and LLM a run loads is checked for NaN and infinite
weights, so the check is paid once per load, over every parameter. Here the largest matrix of a
1.5B-parameter LLM (Qwen2.5-1.5B's embedding, 151936 x 1536), in float32 and bfloat16, is checked
the way tasu does (one sum, widened where the type's range is narrow) and by ``isfinite().all()``
(medians after a warm-up, in one process): nonfinite_<dtype>_speedup is the second's time over
the first's.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from timing import median_ms  # noqa: E402
from tasu.weights import first_non_finite  # noqa: E402


def bench_nonfinite(rows: int = 151936, cols: int = 1536) -> dict[str, float]:
    result = {}
    for dtype in (torch.float32, torch.bfloat16):
        t = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)).to(dtype)
        if first_non_finite([("w", t)]) is not None:   # a finite matrix must pass: else the time means nothing
            raise SystemExit("first_non_finite refused a finite matrix")
        name = str(dtype).removeprefix("torch.")
        summed = median_ms(lambda: first_non_finite([("w", t)]), repeats=5, warmup=1)
        elementwise = median_ms(lambda: bool(torch.isfinite(t).all()), repeats=5, warmup=1)
        result[f"nonfinite_{name}_sum_ms"] = summed
        result[f"nonfinite_{name}_isfinite_ms"] = elementwise
        result[f"nonfinite_{name}_speedup"] = elementwise / summed
    return result


def main() -> None:
    for name, value in bench_nonfinite().items():
        print(f"{name}: {value:.6g}", flush=True)


if __name__ == "__main__":
    main()
