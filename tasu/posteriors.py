"""The one type where the text-only and the audio paths meet: a batch of sparse CTC posteriors.

Every row is a probability vector over the encoder vocabulary V (25,055 for SenseVoice) stored as
``floor`` everywhere plus ``weights`` at ``ids``::

    dense[b, t, :] = floor[b, t]                       (all V entries)
    dense[b, t, ids[b, t, k]] += weights[b, t, k]      (k = 0 .. K-1)

A simulated row (smoothed one-hot, ``(1 - a) * onehot(y) + a / V``) is exactly ``K = 1``,
``weights = 1 - a``, ``floor = a / V``; a real posterior keeps its top-K entries and spreads the
remaining mass evenly over the other V - K entries. Downstream code (projectors) never builds the
V-wide rows unless it has to, so the cost of the text-only stage does not grow with V.

Simulation (``tasu.simulate``) and label-synchronous compression (``tasu.compress``) produce this
type; projectors consume it. Neither side knows where a batch came from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width] bool, True at positions below each row's length.

    The padding mask of posterior rows: before they are a ``Posteriors`` (simulation, compression),
    as one (``Posteriors.mask``), and of what a projector makes of them, so that all of them agree.
    """
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


@dataclass
class Posteriors:
    """A padded batch of sparse posterior rows.

    Attributes:
        ids: [B, T, K] long, vocabulary ids of the explicit entries (padding rows: any valid id).
        weights: [B, T, K] float, mass added to ``floor`` at ``ids`` (padding rows: 0).
        floor: [B, T] float, value of every vocabulary entry before ``weights`` are added.
        blank: [B, T] float, blank probability of each row (what compression thresholds on).
        lengths: [B] long, number of valid rows per utterance.
        vocab_size: V, the encoder vocabulary size.
        blank_id: the encoder's blank id.
    """

    ids: torch.Tensor
    weights: torch.Tensor
    floor: torch.Tensor
    blank: torch.Tensor
    lengths: torch.Tensor
    vocab_size: int
    blank_id: int = 0

    def __post_init__(self) -> None:
        b, t, k = self.ids.shape
        if self.weights.shape != (b, t, k):
            raise ValueError(f"weights {tuple(self.weights.shape)} do not match ids {(b, t, k)}")
        for name in ("floor", "blank"):
            if getattr(self, name).shape != (b, t):
                raise ValueError(f"{name} {tuple(getattr(self, name).shape)} is not [B, T] = {(b, t)}")
        if self.lengths.shape != (b,):
            raise ValueError(f"lengths {tuple(self.lengths.shape)} is not [B] = {(b,)}")
        if k > self.vocab_size:
            raise ValueError(f"K = {k} explicit entries exceed the vocabulary size {self.vocab_size}")

    @property
    def batch_size(self) -> int:
        return self.ids.shape[0]

    @property
    def max_len(self) -> int:
        return self.ids.shape[1]

    @property
    def topk(self) -> int:
        return self.ids.shape[2]

    def mask(self) -> torch.Tensor:
        """[B, T] bool, True on valid rows."""
        return length_mask(self.lengths, self.max_len)

    def to(self, device=None, dtype=None) -> "Posteriors":
        """Move to a device; ``dtype`` applies to the float fields only."""
        def f(x):
            return x.to(device=device, dtype=dtype)

        return Posteriors(
            ids=self.ids.to(device), weights=f(self.weights), floor=f(self.floor), blank=f(self.blank),
            lengths=self.lengths.to(device), vocab_size=self.vocab_size, blank_id=self.blank_id,
        )

    def to_dense(self) -> torch.Tensor:
        """[B, T, V] rows (zeros on padding).

        The cost the sparse form otherwise avoids: B x T x V values (8 utterances of 200 rows over
        SenseVoice's 25,055 tokens: 160 MB in float32; twice that at the peak, when the padding mask is
        applied) and passes over them all. A projector that needs whole rows pays it on every batch:
        concat-mlp always, the LayerNorm ones where their sparse path does not apply
        (``tasu.projectors.layernorm_linear``)."""
        b, t, _ = self.ids.shape
        dense = self.floor[:, :, None].expand(b, t, self.vocab_size).clone()
        dense.scatter_add_(2, self.ids, self.weights)
        return dense * self.mask()[:, :, None].to(dense.dtype)

    @classmethod
    def from_dense(cls, probs: torch.Tensor, lengths: torch.Tensor, topk: int | None = None,
                   blank_id: int = 0) -> "Posteriors":
        """Keep the top-``topk`` entries of each row of ``probs`` [B, T, V] (all when None).

        The mass outside the top-k is spread evenly over the other V - K entries, so every row still
        sums to one and ``to_dense()`` returns ``probs`` exactly when ``topk`` is None or V.
        """
        b, t, v = probs.shape
        k = v if topk is None else min(topk, v)
        if k == v:
            ids = torch.arange(v, device=probs.device).expand(b, t, v)
            top = probs
        else:
            top, ids = probs.topk(k, dim=-1)
        floor = (1.0 - top.sum(-1)).clamp_min(0.0) / max(v - k, 1) if k < v else probs.new_zeros(b, t)
        mask = length_mask(lengths, t).to(probs.dtype)
        return cls(
            ids=ids.contiguous(), weights=(top - floor[:, :, None]) * mask[:, :, None], floor=floor * mask,
            blank=probs[:, :, blank_id] * mask, lengths=lengths.to(torch.long), vocab_size=v,
            blank_id=blank_id,
        )


def stack(posts: Sequence[Posteriors], min_len: int = 0) -> Posteriors:
    """One batch from single-utterance ones (simulated per record, or read from a posterior dump),
    at least ``min_len`` rows wide; padding rows hold the blank id and no mass (weights and floor 0),
    which projectors mask."""
    width = max(min_len, *(p.max_len for p in posts))

    def cat(name: str, value) -> torch.Tensor:
        tensors = [getattr(p, name) for p in posts]
        return torch.cat([F.pad(x, (0, 0) * (x.dim() - 2) + (0, width - x.shape[1]), value=value)
                          for x in tensors])

    first = posts[0]
    return Posteriors(ids=cat("ids", first.blank_id), weights=cat("weights", 0.0), floor=cat("floor", 0.0),
                      blank=cat("blank", 0.0), lengths=torch.cat([p.lengths for p in posts]),
                      vocab_size=first.vocab_size, blank_id=first.blank_id)
