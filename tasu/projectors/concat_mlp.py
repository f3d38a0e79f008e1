"""Frame stacking: k consecutive posterior rows concatenated -> Linear(k*V, hidden) -> ReLU -> Linear.

Shortens the sequence the LLM sees by k (lengths become ceil(T / k)) at the price of a first layer
k times wider than linear-silu's. Use it when speech sequences are long compared to the text (real
posteriors compressed little, many blank rows) and LLM context or compute is the concern; on
label-synchronous rows (one per token) linear-silu keeps the one-embedding-per-token alignment.

This projector materialises the V-wide rows (``Posteriors.to_dense``) and has no LayerNorm, as in
the original; at V = 25,055 and text-only batch sizes the dense rows are tens of MB, not a problem,
but the first layer's cost grows with V, unlike linear-silu's sparse path.
"""
from __future__ import annotations

import torch
from torch import nn

from tasu.posteriors import Posteriors
from tasu.projectors.base import Projector, register, zero_padding


def stack_frames(x: torch.Tensor, lengths: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T, D] -> [B, ceil(T/k), k*D] (zero-padded at the end) and the stacked lengths ceil(len/k)."""
    b, t, d = x.shape
    pad = -t % k
    if pad:
        x = nn.functional.pad(x, (0, 0, 0, pad))
    return x.reshape(b, (t + pad) // k, k * d), (lengths + k - 1) // k


@register("concat-mlp")
class ConcatMLP(Projector):
    """Stack ``stack`` rows, then a two-layer ReLU MLP (``linear1``: stack*V -> hidden, ``linear2``)."""

    def __init__(self, vocab_size: int, llm_dim: int, stack: int = 2, hidden: int = 2048):
        super().__init__(vocab_size, llm_dim)
        if stack < 1:
            raise ValueError(f"stack must be >= 1, got {stack}")
        self.stack = stack
        self.linear1 = nn.Linear(stack * vocab_size, hidden)
        self.linear2 = nn.Linear(hidden, llm_dim)

    def forward(self, post: Posteriors) -> tuple[torch.Tensor, torch.Tensor]:
        rows = post.to(dtype=self.linear1.weight.dtype).to_dense()   # zero rows on padding
        x, lengths = stack_frames(rows, post.lengths, self.stack)
        return zero_padding(self.linear2(torch.relu(self.linear1(x))), lengths), lengths
