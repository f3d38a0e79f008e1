"""Benchmark of the TASU core at the real sizes, on CPU: one run, every figure of the issue.

    python bench/core.py

Prints ``name: value`` lines. Each timing is the median of several repetitions after a warm-up,
and every speed-up is a ratio against a baseline measured in the same process:

- cps_projector_*: simulated rows (8 utterances x ~30 tokens, V = 25,055) through
  LayerNorm(V) + Linear(V -> 2,048), forward and backward: the exact sparse path vs dense rows.
- psd_*: label-synchronous compression of [8, 170, 25,055] posteriors vs a frame loop.
- text_step_*: one TASU text-only training step vs fine-tuning the same LLM on the same text.

It runs in the recipes' environment (``tools/activate_python.sh``: how CPU memory is allocated),
re-executing itself once to get it; the header line shows the settings.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from environment import enter_recipe_environment, header  # noqa: E402

if __name__ == "__main__":
    enter_recipe_environment()  # before torch is imported: glibc reads its settings at start-up

from core_projector import bench_cps_projector  # noqa: E402
from core_psd import bench_psd  # noqa: E402
from core_text_step import bench_text_step  # noqa: E402


def main() -> None:
    print(header())
    for bench in (bench_cps_projector, bench_psd, bench_text_step):
        for name, value in bench().items():
            print(f"{name}: {value:.6g}", flush=True)


if __name__ == "__main__":
    main()
