"""The speech LLM: projector outputs spliced into the prompt of a causal LLM; loss and generation.

One training or decoding step, whatever the batch's source::

    Posteriors ──► projector ──► speech rows [B, T', D] ─┐
    TextBatch (prompt + target ids) ──► LLM embeddings ──┴─► splice ──► LLM ──► loss / beam search

The posteriors come from ``tasu.simulate`` (text-only stage: no audio read, no encoder weights
loaded) or from ``encode_audio`` (audio stage: the optional frozen ``CTCEncoder`` + compression);
the model does not know which. Trainable: the projector, plus the LLM's LoRA adapters when asked
for; the LLM itself is frozen.

Label masking (see ``tasu.llm.PromptTokenizer`` for the exact text): for utterance b with prompt
tokens ``p_0 .. p_{m-1}``, speech inserted before ``p_s``, speech rows ``x_0 .. x_{n-1}``, target
tokens ``y_0 .. y_{r-1}`` and EOS, the training sequence (right-padded) and its labels are::

    position  p_0 .. p_{s-1}  x_0 .. x_{n-1}  p_s .. p_{m-1}  y_0 .. y_{r-1}  EOS   pad ..
    label     -100 ..  -100   -100 ..  -100   -100 ..  -100   y_0 .. y_{r-1}  EOS   -100 ..

and the logits at position i are scored against the label at i + 1, so the last prompt token
predicts y_0 and y_{r-1} predicts EOS.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tasu.compress import CompressConfig, encoder_posteriors
from tasu.encoders.base import CTCEncoder
from tasu.llm import (IGNORE_INDEX, SPEECH_TOKEN, ModelFilesError, PromptTokenizer, TextBatch, load_llm,
                      load_llm_tokenizer)
from tasu.posteriors import Posteriors, stack
from tasu.projectors import Projector, build_projector

if TYPE_CHECKING:
    from tasu.experiment import LoRAConfig

try:   # transformers 5 slices the hidden states by a boolean [B, S] mask: each row its own positions
    from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    _MASK_TO_KEEP = True
except ImportError:
    _MASK_TO_KEEP = False


class LossOutput(NamedTuple):
    """Mean cross-entropy over the tokens that carry loss, their argmax accuracy and their count."""

    loss: torch.Tensor
    accuracy: torch.Tensor
    num_tokens: int


class Spliced(NamedTuple):
    """The LLM's input: embeddings, attention mask and (-100 where no loss) labels, all [B, S(, D)]."""

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def splice(text: TextBatch, speech: torch.Tensor, speech_lengths: torch.Tensor, embedding: nn.Module,
           pad_left: bool = False) -> Spliced:
    """Insert ``speech[b, :speech_lengths[b]]`` into utterance b's token embeddings before ``speech_at[b]``.

    Vectorised: each text token and each speech row gets its output position from a closed formula,
    and two indexed writes fill one zero buffer, so no Python loop runs over the batch or the
    sequence and only the valid tokens are looked up in the embedding table. Padding goes right for
    training and left for generation (``pad_left``), where every prompt must end at the same column.
    """
    batch, n_text = text.ids.shape
    device = text.ids.device
    speech_lengths = speech_lengths.to(device)
    total = text.lengths + speech_lengths
    width = int(total.max())
    offset = (width - total if pad_left else torch.zeros_like(total))[:, None]
    rows = torch.arange(batch, device=device)[:, None]

    j = torch.arange(n_text, device=device)[None, :]
    text_valid = j < text.lengths[:, None]
    text_pos = j + offset + torch.where(j >= text.speech_at[:, None], speech_lengths[:, None], 0)
    t = torch.arange(speech.shape[1], device=device)[None, :]
    speech_valid = t < speech_lengths[:, None]
    speech_pos = text.speech_at[:, None] + offset + t

    text_rows, text_cols = rows.expand_as(text_pos)[text_valid], text_pos[text_valid]
    speech_rows, speech_cols = rows.expand_as(speech_pos)[speech_valid], speech_pos[speech_valid]
    text_embeds = embedding(text.ids[text_valid])
    embeds = text_embeds.new_zeros(batch, width, text_embeds.shape[-1])
    embeds[text_rows, text_cols] = text_embeds  # in place: autograd tracks the values written
    embeds[speech_rows, speech_cols] = speech[speech_valid].to(embeds.dtype)

    attention_mask = torch.zeros(batch, width, dtype=torch.long, device=device)
    attention_mask[text_rows, text_cols] = 1
    attention_mask[speech_rows, speech_cols] = 1
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long, device=device)
    is_target = text_valid & (j >= text.target_at[:, None])
    labels[rows.expand_as(text_pos)[is_target], text_pos[is_target]] = text.ids[is_target]
    return Spliced(embeds, attention_mask, labels)


def causal_lm_loss(llm: PreTrainedModel, embeds: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor) -> LossOutput:
    """Next-token cross-entropy, with the LM head applied only where the next label carries loss.

    The head over a 150k-word vocabulary is the largest matrix product of a small LLM's step; a
    prompt-heavy batch wastes most of it on positions whose logits are thrown away, so the LLM is
    asked for those positions' logits alone (``logits_to_keep`` as a mask). Through its own forward:
    whatever a family does to the head's output (Gemma's softcapping, Granite's and Cohere's logit
    scales) is done in training as in decoding.
    """
    next_labels = labels[:, 1:]
    keep = next_labels != IGNORE_INDEX
    wanted = F.pad(keep, (0, 1))   # the logits at position i are scored against the label at i + 1
    if _MASK_TO_KEEP:
        logits = llm(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False, logits_to_keep=wanted).logits
    else:   # transformers 4 keeps positions shared by the batch: the union of the rows' positions
        positions = wanted.any(0).nonzero().flatten()
        logits = llm(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False,
                     logits_to_keep=positions).logits[wanted[:, positions]]
    logits = logits.reshape(-1, logits.shape[-1]).float()   # [tokens with loss, V]
    targets = next_labels[keep]
    loss = F.cross_entropy(logits, targets)
    accuracy = (logits.detach().argmax(-1) == targets).float().mean()
    return LossOutput(loss, accuracy, int(targets.numel()))


class SpeechLLM(nn.Module):
    """Projector + frozen causal LLM (+ optional LoRA), and optionally the frozen CTC encoder.

    ``encoder`` is needed only to decode or train on audio (``encode_audio``); a text-only stage
    builds the model without it and feeds simulated posteriors, so no encoder weights are loaded.
    """

    def __init__(self, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, projector: Projector,
                 encoder: CTCEncoder | None = None):
        super().__init__()
        self.llm = llm
        self.projector = projector
        self.encoder = encoder.requires_grad_(False).eval() if encoder is not None else None
        self.tokenizer = tokenizer
        self.prompt_tokenizer = PromptTokenizer(tokenizer)

    def train(self, mode: bool = True) -> "SpeechLLM":
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()  # frozen: no dropout, no batch-norm statistics updates
        return self

    @classmethod
    def from_pretrained(cls, llm_path: str | Path, projector: str, vocab_size: int, lora: LoRAConfig | None = None,
                        projector_options: dict | None = None, dtype: torch.dtype | str = torch.float32,
                        encoder: CTCEncoder | None = None, gradient_checkpointing: bool = False) -> "SpeechLLM":
        """LLM and tokenizer from the directory ``llm_path``; a fresh projector (registry name
        ``projector``) over the encoder's ``vocab_size`` ids.

        ``dtype`` (a torch dtype or its name, e.g. ``"bfloat16"``) is the LLM's; the projector is built
        float32 and its outputs are cast when spliced. (Training under ``engine.precision`` bf16 or
        fp16 casts the projector too, and its checkpoints hold the weights it ran with, in that
        precision.) ``gradient_checkpointing``: see ``load_llm``.
        """
        llm = load_llm(llm_path, dtype=dtype, lora=lora, gradient_checkpointing=gradient_checkpointing)
        embedding = llm.get_input_embeddings()
        tokenizer = load_llm_tokenizer(llm_path)
        speech_id = tokenizer.convert_tokens_to_ids(SPEECH_TOKEN)   # removed from the ids: never embedded
        top = max(i for i in tokenizer.get_vocab().values() if i != speech_id)
        if top >= embedding.num_embeddings:   # the first text spelling one failed in torch: "index out of range"
            raise ModelFilesError(f"{llm_path}: the tokenizer spells ids up to {top}, but the LLM's embedding has "
                                  f"{embedding.num_embeddings} rows: a tokenizer of another model?")
        proj = build_projector(projector, vocab_size, embedding.embedding_dim, llm_embedding=embedding,
                               **(projector_options or {}))
        return cls(llm, tokenizer, proj, encoder=encoder)

    def splice(self, post: Posteriors, text: TextBatch, pad_left: bool = False) -> Spliced:
        """Project ``post`` and splice it into ``text`` (see ``splice``): the LLM's input."""
        if post.max_len == 0:   # no utterance kept a row (silence, all blank): one padding row, masked as
            post = stack([post], min_len=1)   # in any batch, so no projector meets an empty tensor
        speech, speech_lengths = self.projector(post)
        embedding = self.llm.get_input_embeddings()
        if speech.shape[-1] != embedding.embedding_dim:   # (a projector of one's own: torch said "shape mismatch")
            raise ValueError(f"projector {type(self.projector).__name__} gives vectors of {speech.shape[-1]}, but the "
                             f"LLM's embeddings have {embedding.embedding_dim}: a projector outputs llm_dim")
        return splice(text, speech, speech_lengths, embedding, pad_left=pad_left)

    def forward(self, post: Posteriors, text: TextBatch) -> LossOutput:
        """Loss of one batch: ``text`` from ``PromptTokenizer(prompts, targets)``, ``post`` its speech."""
        if text.ids.shape[0] != post.batch_size:
            raise ValueError(f"{text.ids.shape[0]} prompts but {post.batch_size} posterior sequences")
        return causal_lm_loss(self.llm, *self.splice(post, text))

    @torch.no_grad()
    def generate(self, post: Posteriors, prompts: Sequence[str], num_beams: int = 4, max_new_tokens: int = 200,
                 no_repeat_ngram_size: int = 0, repetition_penalty: float = 1.0) -> list[str]:
        """Beam search from the spliced embeddings; the decoded texts without special tokens.

        The loop guards: ``max_new_tokens`` always; ``no_repeat_ngram_size`` (> 0: an n-gram never
        repeats within an output) and ``repetition_penalty`` (> 1: already generated tokens are
        penalised) when set. The LLM's own generation config is not read (``load_llm``).
        """
        nbest = self.generate_nbest(post, prompts, 1, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                    no_repeat_ngram_size=no_repeat_ngram_size,
                                    repetition_penalty=repetition_penalty)
        return [hyps[0][0] for hyps in nbest]

    @torch.no_grad()
    def generate_nbest(self, post: Posteriors, prompts: Sequence[str], nbest: int, num_beams: int = 4,
                       max_new_tokens: int = 200, no_repeat_ngram_size: int = 0,
                       repetition_penalty: float = 1.0) -> list[list[tuple[str, float]]]:
        """The ``nbest`` best beams of each utterance as ``(text, score)``, best first.

        The score is the beam's log-probability divided by its length in new tokens (the beam
        search's own ranking, length penalty 1); with ``num_beams=1`` (greedy) there is one.
        """
        if not 1 <= nbest <= num_beams:
            raise ValueError(f"nbest must be between 1 and the beam size {num_beams}, got {nbest}")
        if len(prompts) != post.batch_size:   # (torch's message named a mask shape)
            raise ValueError(f"{len(prompts)} prompts but {post.batch_size} posterior sequences")
        text = self.prompt_tokenizer(list(prompts)).to(self.llm.device)
        embeds, attention_mask, _ = self.splice(post, text, pad_left=True)
        with warnings.catch_warnings():  # "guards apply to new tokens only": yes, the prompt has speech rows
            warnings.filterwarnings("ignore", message="Passing `.*` with `inputs_embeds`")
            out = self.llm.generate(
                inputs_embeds=embeds, attention_mask=attention_mask, do_sample=False, num_beams=num_beams,
                num_return_sequences=nbest, max_new_tokens=max_new_tokens,
                no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty,
                eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
                temperature=None, top_p=None, top_k=None, return_dict_in_generate=True, output_scores=True)
        texts = [s.strip() for s in self.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)]
        if num_beams > 1:
            scores = out.sequences_scores.tolist()
        else:  # greedy: the mean log-probability of the chosen tokens, EOS included as beam search counts it
            steps = torch.stack(out.scores, 1).log_softmax(-1)
            new = out.sequences[:, -steps.shape[1]:]
            chosen = steps.gather(2, new[:, :, None]).squeeze(2)
            # after its EOS a sequence is padded: past the first EOS, not wherever the pad id appears
            # (the pad id is the EOS itself for tokenizers that have no pad token)
            eos = (new == self.tokenizer.eos_token_id).long()
            done = (eos.cumsum(1) - eos) > 0
            lengths = (~done).sum(1).clamp_min(1)
            scores = (chosen.masked_fill(done, 0).sum(1) / lengths).tolist()
        return [list(zip(texts[i:i + nbest], scores[i:i + nbest])) for i in range(0, len(texts), nbest)]

    @torch.no_grad()
    def encode_audio(self, waveforms: Sequence[torch.Tensor], compress: CompressConfig | None = None) -> Posteriors:
        """Audio batch -> CTC posteriors through the encoder interface, label-synchronously compressed.

        ``compress`` (an experiment's ``compress`` section; None: the defaults) says how: ``topk``
        explicit entries per row (None: all V, exact; a small k keeps the projector's sparse path
        cheap), ``enabled: false`` keeps every frame, and rows whose blank probability reaches
        ``threshold`` are dropped.
        """
        if self.encoder is None:
            raise RuntimeError("this SpeechLLM has no encoder: audio needs SpeechLLM(..., encoder=...)")
        return encoder_posteriors(self.encoder, waveforms, compress)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained weights only (projector, LoRA adapters): what a checkpoint needs to store."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``trainable_state_dict()`` output; every trainable weight must be in it, nothing else."""
        expected = {name for name, p in self.named_parameters() if p.requires_grad}
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise KeyError(f"trainable weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.load_state_dict(state, strict=False)
