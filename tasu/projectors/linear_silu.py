"""The default TASU projector: LayerNorm(V) -> Linear(V, hidden) -> SiLU -> Linear(hidden, llm_dim).

One output vector per posterior row, so the LLM sees one speech embedding per emitted token (the
rows are already label-synchronous: simulated, or compressed from real posteriors). This is the
projector of the original TASU release and the one its results use; start here.

The first two layers are computed from the sparse rows (``layernorm_linear``), so training on
simulated posteriors never builds V-wide rows, yet the parameters are plain ``nn.LayerNorm`` /
``nn.Linear`` modules named ``ln``, ``linear1``, ``linear2``: a checkpoint is the same whichever
path ran, and loads into a dense implementation with those names.
"""
from __future__ import annotations

import torch
from torch import nn

from tasu.posteriors import Posteriors
from tasu.projectors.base import Projector, register, zero_padding
from tasu.projectors.layernorm_linear import layernorm_linear


@register("linear-silu")
class LinearSiLU(Projector):
    """Per-row MLP on posteriors; ``sparse=False`` forces the dense path (same numbers, slower)."""

    def __init__(self, vocab_size: int, llm_dim: int, hidden: int = 2048, sparse: bool = True):
        super().__init__(vocab_size, llm_dim)
        self.sparse = sparse
        self.ln = nn.LayerNorm(vocab_size)
        self.linear1 = nn.Linear(vocab_size, hidden)
        self.linear2 = nn.Linear(hidden, llm_dim)

    def forward(self, post: Posteriors) -> tuple[torch.Tensor, torch.Tensor]:
        h = nn.functional.silu(layernorm_linear(post, self.ln, self.linear1, sparse=self.sparse))
        return zero_padding(self.linear2(h), post.lengths), post.lengths
