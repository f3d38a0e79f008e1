"""Benchmark of label-synchronous compression (PSD): ``compress`` vs the frame loop.

    python bench/core_psd.py

Input: [8, 170, 25,055] softmax posteriors shaped like a CTC encoder's (peaky; ~70 % of the frames
blank-dominated, some of them only weakly; non-blank runs of 1-4 frames of one token), utterance
lengths between 120 and 170 frames.

``psd_ms`` is ``compress`` as it runs on CPU (its C kernels, ``tasu.compress_kernels``),
``psd_torch_ops_ms`` its vectorised torch version (what runs on GPUs), ``psd_loop_ms`` the frame
loop; ``psd_output_write_ms`` is the time to write the compressed rows ([8, ~29, 25,055], 23 MB)
into fresh memory, a cost every implementation pays. Both ``compress`` paths must give the loop's rows
bit for bit; the benchmark stops with one line where they do not.
"""
from __future__ import annotations

import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from environment import enter_recipe_environment, header  # noqa: E402
from timing import check_reference, median_ms  # noqa: E402

from tasu.compress import _compress_loop, compress  # noqa: E402
from tasu.native import torch_ops_only  # noqa: E402


def peaky_posteriors(batch: int = 8, frames: int = 170, vocab: int = 25055, blank_frac: float = 0.7,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """CTC-like frame posteriors [B, T, V] (softmax of logits) and lengths [B].

    Logits are N(0, 1) noise (log-sum-exp over 25,055 ids ~ 10.6) plus: on a blank frame, blank +22
    (p ~ 1), or for one blank frame in ten +11..13 (p ~ 0.6-0.9, kept by the 0.9 threshold); on a run
    of 1-4 frames of one token, that token +18 and blank +14 as the runner-up.
    """
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, vocab, generator=g)
    mean_run = 2.5  # runs of 1-4 frames: a blank event must be this much likelier to give blank_frac
    p_blank_event = blank_frac * mean_run / (1.0 - blank_frac + blank_frac * mean_run)
    for b in range(batch):
        t = 0
        while t < frames:
            if float(torch.rand(1, generator=g)) < p_blank_event:
                weak = float(torch.rand(1, generator=g)) < 0.1
                logits[b, t, 0] += 11.0 + 2.0 * float(torch.rand(1, generator=g)) if weak else 22.0
                t += 1
            else:
                n = int(torch.randint(1, 5, (1,), generator=g))
                token = int(torch.randint(1, vocab, (1,), generator=g))
                logits[b, t: t + n, token] += 18.0
                logits[b, t: t + n, 0] += 14.0
                t += n
    lengths = torch.randint(120, frames + 1, (batch,), generator=g)
    lengths[0] = frames
    return logits.softmax(-1), lengths


def bench_psd() -> dict[str, float]:
    probs, lengths = peaky_posteriors()
    fast = compress(probs, lengths)
    ref, ref_len = _compress_loop(probs, lengths)
    with torch_ops_only():
        torch_ops = compress(probs, lengths)
    # the loop sums a run's frames in compress's order and divides as it does: the rows agree bit for bit
    for what, got in (("compress", fast), ("compress under torch_ops_only()", torch_ops)):
        check_reference(f"core_psd.py: the row count of {what}", float((got.lengths - ref_len).abs().max()), 0)
        check_reference(f"core_psd.py: the output of {what}", float((got.probs - ref).abs().max()), 0)
    # interleaved rounds, the speed-up the median of the rounds' ratios: a burst of load from
    # elsewhere slows both sides of a round rather than one
    t_fast, t_loop, t_torch = [], [], []
    for _ in range(9):
        t_loop.append(median_ms(lambda: _compress_loop(probs, lengths), repeats=1, warmup=0))
        t_fast.append(median_ms(lambda: compress(probs, lengths), repeats=5, warmup=1))
        with torch_ops_only():
            t_torch.append(median_ms(lambda: compress(probs, lengths), repeats=3, warmup=1))
    # what no implementation avoids: writing the compressed rows into fresh memory
    write_ms = median_ms(lambda: torch.empty(fast.probs.shape).fill_(0), repeats=9)
    return {"psd_speedup_vs_loop": statistics.median(loop / fast for loop, fast in zip(t_loop, t_fast)),
            "psd_ms": statistics.median(t_fast),
            "psd_torch_ops_ms": statistics.median(t_torch),
            "psd_loop_ms": statistics.median(t_loop),
            "psd_output_write_ms": write_ms,
            "psd_max_abs_diff": float((fast.probs - ref).abs().max())}


if __name__ == "__main__":
    enter_recipe_environment()
    print(header())
    for name, value in bench_psd().items():
        print(f"{name}: {value:.6g}", flush=True)
