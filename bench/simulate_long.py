"""Benchmark of WER-controlled rule simulation on long transcripts: its cost per token must not grow
with the transcript's length (long-form text, an LM corpus's paragraphs).

    python bench/simulate_long.py

One utterance of L random ids of a 25,055-id vocabulary (SenseVoiceSmall's size), at a WER of 0.2,
for L = 500 (the baseline), 5,000 and 50,000. ``sim_per_token_ratio_L`` is the time per token at L
over the baseline's, in this process: about 1 when the cost is linear in L. (The fresh-token test
that compared every edit with every reference token made it grow with L: a 54k-token draw took tens
of seconds and gigabytes.)
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from environment import enter_recipe_environment, header  # noqa: E402
from timing import median_ms  # noqa: E402

from tasu.simulate import RuleSimulator, SimulationConfig, WERSchedule  # noqa: E402

VOCAB = 25055


def bench_simulate_long(lengths=(500, 5_000, 50_000)) -> dict[str, float]:
    sim = RuleSimulator(SimulationConfig(wer=WERSchedule(start=(0.2, 0.2), end=(0.2, 0.2))), VOCAB)
    g = torch.Generator().manual_seed(0)
    per_token = {}
    for n in lengths:
        ids = torch.randint(1, VOCAB, (n,), generator=g).tolist()
        per_token[n] = median_ms(lambda: sim([ids], g), repeats=3 if n > 10_000 else 7, warmup=1) / n
    base = per_token[lengths[0]]
    out = {f"sim_per_token_ratio_{n}": per_token[n] / base for n in lengths[1:]}
    out.update({f"sim_ms_{n}": per_token[n] * n for n in lengths})
    return out


if __name__ == "__main__":
    enter_recipe_environment()
    print(header())
    for name, value in bench_simulate_long().items():
        print(f"{name}: {value:.6g}", flush=True)
