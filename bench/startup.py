"""Benchmark of a process's start with funasr imported lean (``tasu.funasr_import``).

    python bench/startup.py

Prints ``name: value`` lines. What a posterior dump or an audio decode pays before its first
utterance: a fresh interpreter imports tasu's encoders, builds a small CTC encoder (funasr's
``SenseVoiceEncoderSmall``, ``CTC`` and ``WavFrontend``) and computes features of one second of
audio, once with funasr's plain import (its ``__init__`` imports every model funasr has) and once
lean, as the ``tasu`` command does. The two are interleaved, ``--rounds`` times each; the medians
are printed, and startup_lean_speedup is plain over lean. A second figure, funasr_import_lean_speedup,
takes the encoder-independent part (Python, torch, tasu) out of both: the import of funasr alone.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from tasu.cli import at_least

BASE = """
import torch
from tasu.encoders.small_ctc import SmallCTCEncoder
from tasu.encoders.tokenizers import train_sentencepiece
"""
BUILD = """
import tempfile
with tempfile.TemporaryDirectory() as d:
    tokenizer = train_sentencepiece(["turn on the lights", "what time is it"] * 20, vocab_size=30,
                                    out_prefix=d + "/bpe")
encoder = SmallCTCEncoder(tokenizer)
encoder.fit_cmvn([torch.zeros(16000).uniform_(-0.1, 0.1)])
encoder.extract_features([torch.zeros(16000).uniform_(-0.1, 0.1)])
"""
LEAN = "from tasu.funasr_import import use_lean_import; use_lean_import()\n"


def seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def bench_startup(rounds: int) -> dict[str, float]:
    cases = {"base": BASE, "plain": BASE + BUILD, "lean": LEAN + BASE + BUILD}
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, code in cases.items():
            times[name].append(seconds(code))
    median = {name: sorted(t)[rounds // 2] for name, t in times.items()}
    return {"startup_plain_s": median["plain"], "startup_lean_s": median["lean"],
            "startup_base_s": median["base"],
            "startup_lean_speedup": median["plain"] / median["lean"],
            "funasr_import_lean_speedup":
                (median["plain"] - median["base"]) / max(median["lean"] - median["base"], 1e-3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=at_least(1), default=3)
    args = parser.parse_args()
    for name, value in bench_startup(args.rounds).items():
        print(f"{name}: {value:.6g}", flush=True)


if __name__ == "__main__":
    main()
