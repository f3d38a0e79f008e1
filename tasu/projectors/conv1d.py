"""Strided 1-D convolution over posterior rows: a sparse per-row reduction, then Conv1d, then an MLP.

    rows --LayerNorm(V), Linear(V, width), SiLU--> [B, T, width]      (sparse path, per row)
         --Conv1d(width, hidden, kernel=stride, stride)--> ReLU --Linear(hidden, llm_dim)-->

Like frame stacking it shortens the sequence by ``stride`` (lengths ceil(T / stride)), but each row
is first reduced to ``width`` channels with linear-silu's exact sparse LayerNorm + Linear, so no
V-wide row is ever built and the convolution's weights are width*stride*hidden rather than
V*stride*hidden. Kernel = stride: every output frame sees exactly its own ``stride`` rows, so
utterances padded to the batch length do not leak padding into their last frame's neighbours.
Use it where concat-mlp would fit but V-wide stacked rows are too costly.
"""
from __future__ import annotations

import torch
from torch import nn

from tasu.posteriors import Posteriors
from tasu.projectors.base import Projector, register, zero_padding
from tasu.projectors.layernorm_linear import layernorm_linear


@register("conv1d")
class Conv1dProjector(Projector):
    """Per-row sparse reduction (``ln``, ``reduce``), ``conv`` with kernel = stride, then ``linear``."""

    def __init__(self, vocab_size: int, llm_dim: int, stride: int = 2, width: int = 1024, hidden: int = 2048):
        super().__init__(vocab_size, llm_dim)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = stride
        self.ln = nn.LayerNorm(vocab_size)
        self.reduce = nn.Linear(vocab_size, width)
        self.conv = nn.Conv1d(width, hidden, kernel_size=stride, stride=stride)
        self.linear = nn.Linear(hidden, llm_dim)

    def forward(self, post: Posteriors) -> tuple[torch.Tensor, torch.Tensor]:
        rows = zero_padding(nn.functional.silu(layernorm_linear(post, self.ln, self.reduce)), post.lengths)
        # Zero rows up to a multiple of the stride keep the last partial window: ceil(T / stride).
        rows = nn.functional.pad(rows, (0, 0, 0, -rows.shape[1] % self.stride))
        h = torch.relu(self.conv(rows.transpose(1, 2))).transpose(1, 2)     # [B, T', hidden]
        lengths = (post.lengths + self.stride - 1) // self.stride
        return zero_padding(self.linear(h), lengths), lengths
