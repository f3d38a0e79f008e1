"""Q-Former (BLIP-2): a fixed number of learned queries cross-attend to the posterior rows.

    rows --LayerNorm(V), Linear(V, width), SiLU--> [B, T, width]   (sparse path, per row; padding masked)
    queries [num_queries, dim] --Blip2QFormerModel (self-attention + cross-attention to the rows)-->
    [B, num_queries, dim] --Linear(dim, llm_dim)--> speech embeddings, num_queries per utterance

The output length does not depend on the input: every utterance becomes ``num_queries`` embeddings
(64 by default, as in the original), whatever its number of rows. That suits fixed-budget tasks
(classification, short answers) and very long inputs; for transcription, where the LLM has to
reproduce every token, the one-embedding-per-row projectors keep the alignment that TASU relies on.
The rows' width is the Q-Former's ``encoder_hidden_size``; the Q-Former itself is transformers'
BLIP-2 implementation with its default configuration apart from the sizes given here.
"""
from __future__ import annotations

import torch
from torch import nn

from tasu.posteriors import Posteriors
from tasu.projectors.base import Projector, register
from tasu.projectors.layernorm_linear import layernorm_linear


@register("qformer")
class QFormerProjector(Projector):
    """``num_queries`` learned queries; ``dim``, ``num_layers``, ``num_heads`` size the Q-Former."""

    @classmethod
    def check_options(cls, options: dict) -> None:
        if options["dim"] % options["num_heads"]:   # each attention head takes an equal share of dim
            raise ValueError(f"dim {options['dim']} is not a multiple of num_heads {options['num_heads']}")

    def __init__(self, vocab_size: int, llm_dim: int, num_queries: int = 64, width: int = 1024,
                 dim: int = 768, num_layers: int = 12, num_heads: int = 12):
        # Imported here: loading transformers' BLIP-2 code takes seconds, which every user of
        # tasu.projectors would otherwise pay whichever projector they build.
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        super().__init__(vocab_size, llm_dim)
        self.ln = nn.LayerNorm(vocab_size)
        self.reduce = nn.Linear(vocab_size, width)
        config = Blip2QFormerConfig(hidden_size=dim, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                                    intermediate_size=4 * dim, encoder_hidden_size=width)
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim) * config.initializer_range)
        self.qformer = Blip2QFormerModel(config)
        self.linear = nn.Linear(dim, llm_dim)

    def forward(self, post: Posteriors) -> tuple[torch.Tensor, torch.Tensor]:
        rows = nn.functional.silu(layernorm_linear(post, self.ln, self.reduce))
        queries = self.queries.expand(post.batch_size, -1, -1)
        hidden = self.qformer(query_embeds=queries, encoder_hidden_states=rows,
                              encoder_attention_mask=post.mask().long()).last_hidden_state
        lengths = torch.full_like(post.lengths, queries.shape[1])
        return self.linear(hidden), lengths
