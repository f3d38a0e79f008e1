"""The projector interface and the registry that picks a projector by name.

A projector turns a batch of CTC posteriors (``tasu.posteriors.Posteriors``) into vectors that
stand in for the ``<speech>`` token in the LLM's input. It is the only trainable part of the
default TASU model, so everything else (simulation, compression, the model, recipes) refers to it
by name only; adding one is a class with ``@register("name")`` in a module of this package.
"""
from __future__ import annotations

import torch
from torch import nn

from tasu.posteriors import Posteriors, length_mask
from tasu.registry import Registry

DEFAULT_PROJECTOR = "linear-silu"


class Projector(nn.Module):
    """Posteriors [B, T, V] (sparse) -> speech embeddings [B, T', llm_dim] and their lengths [B].

    T' may differ from T (frame stacking, a strided convolution, a fixed number of queries).
    Embeddings at padding positions (index >= length) are zero.

    A projector that reads the LLM's input embedding table sets ``needs_llm_embedding = True`` and
    gets it as ``llm_embedding``. The table is borrowed, not owned: it is kept outside the module
    tree, so it is neither a parameter of the projector (no optimizer state, not in the projector's
    checkpoint) nor copied by ``.to(device)``; the projector always reads the LLM's current tensor,
    detached, so the LLM's embedding stays frozen whatever the projector does.
    """

    needs_llm_embedding = False

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Refuse, as a ValueError, ``options`` (the constructor's keyword options, defaults filled in,
        each of a fitting type) whose values do not fit together: the config check calls it before any
        model loads, where the constructor's own error would come after the LLM had loaded."""

    def __init__(self, vocab_size: int, llm_dim: int, llm_embedding: nn.Embedding | None = None):
        super().__init__()
        self.vocab_size = vocab_size
        self.llm_dim = llm_dim
        if self.needs_llm_embedding and llm_embedding is None:
            raise ValueError(f"{type(self).__name__} needs the LLM's input embedding (llm_embedding)")
        if llm_embedding is not None and llm_embedding.embedding_dim != llm_dim:
            raise ValueError(f"llm_embedding has width {llm_embedding.embedding_dim}, llm_dim is {llm_dim}")
        # object.__setattr__ bypasses nn.Module's registration of sub-modules (see the class doc).
        object.__setattr__(self, "_llm_embedding", llm_embedding)
        self.llm_embedding_scale = embedding_scale(llm_embedding) if llm_embedding is not None else 1.0

    def llm_embedding_table(self) -> torch.Tensor:
        """The LLM's embedding matrix [V_llm, llm_dim], detached (it is never trained here). The LLM
        embeds a token as its row times ``llm_embedding_scale``: what a projector mixing rows scales by."""
        return self._llm_embedding.weight.detach()

    def forward(self, post: Posteriors) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def embedding_scale(embedding: nn.Embedding) -> float:
    """The factor by which ``embedding`` multiplies its table's rows: 1 for ``nn.Embedding``; Gemma's
    (and others') scaled embeddings multiply by sqrt(hidden size) in their forward, so the rows of
    ``weight`` are not what the LLM reads. Measured on a few rows; anything but a constant factor is
    refused, since a projector that mixes rows could not give what the LLM embeds."""
    with torch.no_grad():   # rows across the table, all-zero ones aside (padding rows say nothing of a scale)
        ids = torch.linspace(0, embedding.num_embeddings - 1, min(64, embedding.num_embeddings)).long().unique()
        ids = ids[embedding.weight[ids].abs().sum(1) > 0].to(embedding.weight.device)
        if not len(ids):
            return 1.0
        rows, embedded = embedding.weight[ids].float(), embedding(ids).float()
        scale = float((embedded * rows).sum() / (rows * rows).sum().clamp_min(1e-30))
        if scale <= 0 or not torch.allclose(embedded, rows * scale, rtol=1e-2, atol=1e-6 * float(embedded.abs().max())):
            raise ValueError(f"the LLM's input embedding ({type(embedding).__name__}) is not a table lookup times a "
                             "positive constant: a projector that mixes its rows cannot give what the LLM embeds")
    return scale


def zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x`` [B, T, D] with the rows at positions >= ``lengths`` [B] set to zero."""
    return x * length_mask(lengths, x.shape[1])[:, :, None].to(x.dtype)


PROJECTORS = Registry("projector")
register = PROJECTORS.register   # class decorator: @register("name")


def build_projector(name: str, vocab_size: int, llm_dim: int, llm_embedding: nn.Embedding | None = None,
                    **options) -> Projector:
    """The projector registered as ``name``; ``options`` go to its constructor.

    ``llm_embedding`` (the frozen LLM's input embedding) is handed only to projectors that read it,
    so a caller may always pass it.
    """
    cls = PROJECTORS.lookup(name)
    if cls.needs_llm_embedding:
        options["llm_embedding"] = llm_embedding
    return cls(vocab_size, llm_dim, **options)
