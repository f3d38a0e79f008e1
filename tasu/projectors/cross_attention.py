"""Cross-attention over the LLM's vocabulary: each row becomes a mix of the LLM's token embeddings.

    rows --linear-silu (LayerNorm, Linear(V, hidden), SiLU, Linear(hidden, llm_dim))--> queries q_r
    speech embedding_r = sum_j softmax_j(q_r . E_j / sqrt(llm_dim)) E_j       (E: the LLM's embedding table)

Keys and values are the frozen embedding table itself, so every speech embedding lies in the convex
hull of real token embeddings: the LLM is fed things that look like text. The trainable part is the
query network only. Use it to test whether "snapping" speech onto the text embedding space helps
over linear-silu's unconstrained output.

Memory: a full softmax over Qwen2.5's 151,936 entries keeps N x 151,936 scores (and their
probabilities for the backward pass). With ``topk`` (default 64), the best ``topk`` entries per row
are found without gradient, scanning the table in chunks, and the softmax runs over those only:
exact up to the mass outside the top entries, O(N * topk) memory. ``topk=None`` is the full softmax.
"""
from __future__ import annotations

import torch

from tasu.posteriors import Posteriors
from tasu.projectors.base import Projector, register, zero_padding
from tasu.projectors.linear_silu import LinearSiLU

CHUNK = 16384  # table entries scored at a time while searching the top entries


def top_entries(q: torch.Tensor, table: torch.Tensor, k: int) -> torch.Tensor:
    """Ids [N, k] of the k entries of ``table`` [V, D] with the largest dot product with each q [N, D]."""
    best_scores = best_ids = None
    with torch.no_grad():
        q = q.to(table.dtype)
        for start in range(0, table.shape[0], CHUNK):
            scores = q @ table[start:start + CHUNK].t()
            top, ids = scores.topk(min(k, scores.shape[1]), dim=1)
            if best_ids is not None:
                top, ids = torch.cat([best_scores, top], 1), torch.cat([best_ids, ids + start], 1)
                top, pick = top.topk(min(k, top.shape[1]), dim=1)
                ids = ids.gather(1, pick)
            best_scores, best_ids = top, ids
    return best_ids


@register("cross-attention")
class CrossAttentionProjector(Projector):
    """Queries from a linear-silu network (``query``) attend over the LLM's embedding table."""

    needs_llm_embedding = True

    def __init__(self, vocab_size: int, llm_dim: int, llm_embedding: torch.nn.Embedding,
                 hidden: int = 2048, topk: int | None = 64):
        super().__init__(vocab_size, llm_dim, llm_embedding)
        self.topk = topk
        self.query = LinearSiLU(vocab_size, llm_dim, hidden=hidden)

    def forward(self, post: Posteriors) -> tuple[torch.Tensor, torch.Tensor]:
        q, lengths = self.query(post)
        b, t, d = q.shape
        q = q.reshape(b * t, d)
        table = self.llm_embedding_table()
        embed = self.llm_embedding_scale   # E = table * embed: the embeddings the LLM reads (Gemma: sqrt(D))
        scale = d ** -0.5
        if self.topk is None:
            probs = torch.softmax((q.to(table.dtype) @ table.t()).to(q.dtype) * (embed * scale), dim=-1)
            out = (probs.to(table.dtype) @ table).to(q.dtype) * embed
        else:   # (the top entries of q . E are those of q . table: embed > 0)
            values = table[top_entries(q, table, self.topk)].to(q.dtype) * embed    # [N, topk, D]
            probs = torch.softmax(torch.einsum("nd,nkd->nk", q, values) * scale, dim=-1)
            out = torch.einsum("nk,nkd->nd", probs, values)
        return zero_padding(out.reshape(b, t, d), lengths), lengths
