"""LegoSLM-style vocabulary transfer: posteriors -> logits over the LLM's vocabulary -> embeddings.

    rows --linear-silu (LayerNorm, Linear(V, hidden), SiLU, Linear(hidden, V_llm))--> logits l_r
    speech embedding_r = softmax(l_r) @ E                 (E: the LLM's frozen embedding table)
    top1=True:           E[argmax l_r]                    (straight-through: gradients as softmax)

The projector learns a translation from the encoder's vocabulary to the LLM's, and hands the LLM
an expected token embedding: the baseline the TASU paper compares against (after LegoSLM). The
output layer is hidden x V_llm (about 311M weights for Qwen2.5 at hidden 2,048): by far the largest
projector here. ``top1`` feeds the embedding of the most likely LLM token, exactly like text input;
its forward pass is the hard choice and its backward pass the softmax's (straight-through), so it
can still be trained.
"""
from __future__ import annotations

import torch

from tasu.posteriors import Posteriors
from tasu.projectors.base import Projector, register, zero_padding
from tasu.projectors.linear_silu import LinearSiLU


@register("legoslm")
class LegoSLM(Projector):
    """``logits`` (a linear-silu network to V_llm outputs), softmax, times the LLM's embedding table."""

    needs_llm_embedding = True

    def __init__(self, vocab_size: int, llm_dim: int, llm_embedding: torch.nn.Embedding,
                 hidden: int = 2048, top1: bool = False):
        super().__init__(vocab_size, llm_dim, llm_embedding)
        self.top1 = top1
        self.logits = LinearSiLU(vocab_size, llm_embedding.num_embeddings, hidden=hidden)

    def forward(self, post: Posteriors) -> tuple[torch.Tensor, torch.Tensor]:
        logits, lengths = self.logits(post)
        table = self.llm_embedding_table()
        probs = torch.softmax(logits, dim=-1)
        scale = self.llm_embedding_scale   # the LLM embeds a token as its row times this (Gemma: sqrt(D))
        out = (probs.to(table.dtype) @ table).to(logits.dtype) * scale
        if self.top1:
            hard = table[logits.argmax(dim=-1)].to(logits.dtype) * scale
            out = hard + (out - out.detach())   # exactly ``hard`` forward, the softmax's gradient backward
        return zero_padding(out, lengths), lengths
