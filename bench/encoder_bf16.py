"""Benchmark of bf16 autocast in a CTC encoder's training step on CPU (egs/mini/local/train_encoder.py).

    python bench/encoder_bf16.py

Prints ``name: value`` lines. The mini recipe's encoder (tasu's SmallCTCEncoder with the recipe's
60 ms frames) takes training steps on a batch of its size (30 utterances of 40 frames, 1200 frames,
12 labels each; random features and labels) on one thread, as the recipe runs it beside the LLM:
forward, CTC loss, backward and an AdamW step, in float32 and under bf16 autocast, the two
interleaved ``--rounds`` times in one process. encoder_step_bf16_speedup is the float32 median over
the bf16 one; cpu_has_bf16 (1 or 0) is what the recipe's ``--precision auto`` decides by (on a CPU
without native bf16 the ratio shows what forcing ``--precision bf16`` there would gain or cost).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from tasu.cli import at_least  # noqa: E402
from timing import median_ms  # noqa: E402
from tasu.device import cpu_has_bf16, flush_denormals  # noqa: E402
from tasu.encoders.small_ctc import SmallCTCEncoder  # noqa: E402
from tasu.encoders.tokenizers import train_sentencepiece  # noqa: E402
from tasu.funasr_import import use_lean_import  # noqa: E402

UTTERANCES, FRAMES, LABELS = 30, 40, 12


def training_step(encoder: SmallCTCEncoder, optimizer: torch.optim.Optimizer, batch, precision: str):
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with autocast:
        loss = encoder.ctc_loss(*batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def bench_encoder_bf16(rounds: int) -> dict[str, float]:
    torch.set_num_threads(1)
    flush_denormals()
    use_lean_import()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        text = ["turn on the kitchen lights", "what is the weather in paris tomorrow", "play some jazz"] * 30
        tokenizer = train_sentencepiece(text, vocab_size=60, out_prefix=os.path.join(tmp, "bpe"))
    encoder = SmallCTCEncoder(tokenizer, {"encoder_conf": {"dropout_rate": 0.0},
                                          "frontend_conf": {"lfr_m": 6, "lfr_n": 6}})
    encoder.train()
    dim = encoder.config["frontend_conf"]["n_mels"] * encoder.config["frontend_conf"]["lfr_m"]
    batch = (torch.randn(UTTERANCES, FRAMES, dim), torch.full((UTTERANCES,), FRAMES),
             torch.randint(1, tokenizer.vocab_size, (UTTERANCES, LABELS)), torch.full((UTTERANCES,), LABELS))
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-4)
    times = {"fp32": [], "bf16": []}
    for _ in range(rounds):
        for precision in times:
            times[precision].append(median_ms(lambda: training_step(encoder, optimizer, batch, precision),
                                              repeats=5, warmup=1))
    fp32, bf16 = (sorted(times[p])[rounds // 2] for p in ("fp32", "bf16"))
    return {"cpu_has_bf16": float(cpu_has_bf16()), "encoder_step_fp32_ms": fp32, "encoder_step_bf16_ms": bf16,
            "encoder_step_bf16_speedup": fp32 / bf16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=at_least(1), default=5)
    for name, value in bench_encoder_bf16(parser.parse_args().rounds).items():
        print(f"{name}: {value:.6g}", flush=True)


if __name__ == "__main__":
    main()
