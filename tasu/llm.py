"""The LLM side of a speech LLM: loading a causal LM and its tokenizer, LoRA, and prompt tokens.

Everything here is about text. ``load_llm`` reads any Hugging Face causal LM from a local directory
(frozen; LoRA adapters optional). ``PromptTokenizer`` turns prompts and targets into token ids at
collate time, without the model: the speech span is not yet in the ids, only the position where the
model will splice it in (``TextBatch.speech_at``), because its length is known only after the
projector has run (a stride-k projector shortens it).

The ``<speech>`` placeholder: it is added to the tokenizer as a special token so that tokenising the
rendered prompt splits exactly where the speech goes (special tokens are cut out before BPE, so the
text on either side is tokenised as if it stood alone). Its id is then removed from the ids and
never reaches the LLM, so the embedding matrix is never resized and the placeholder needs no trained
embedding, whatever id the tokenizer gives it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel,
                          PreTrainedTokenizerBase)

from tasu.data.prompts import SPEECH_TOKEN, PromptSet
from tasu.weights import ModelFilesError, from_pretrained

if TYPE_CHECKING:   # the config's own section: one description of the adapters, for configs and code alike
    from tasu.experiment import LoRAConfig

IGNORE_INDEX = -100


def load_llm_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer with ``<speech>`` added and a pad token (EOS when it has none).

    A directory without tokenizer files does not fail in transformers: it builds a tokenizer with
    an empty vocabulary, which turns every target into nothing but EOS (training learns nothing)
    and every hypothesis into "". That is refused here.
    """
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not tokenizer("a b", add_special_tokens=False)["input_ids"]:
        raise ModelFilesError(f"{path}: the LLM tokenizer is empty: the directory has no tokenizer files "
                              "(tokenizer.json, or vocab.json + merges.txt, or tokenizer.model); copy them "
                              "from the model's release")
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer in {path} has no EOS token; targets must end with one")
    tokenizer.add_tokens([SPEECH_TOKEN], special_tokens=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # only ever under attention mask 0 and label -100
    return tokenizer


def load_llm(path: str | Path, dtype: torch.dtype | str = torch.float32,
             lora: LoRAConfig | None = None, gradient_checkpointing: bool = False) -> PreTrainedModel:
    """A causal LM from a local directory, every weight frozen, LoRA adapters added when asked.

    ``gradient_checkpointing`` recomputes each decoder layer in the backward pass (in training mode
    only) instead of keeping its activations: transformers' non-reentrant checkpointing, which needs
    no input that requires a gradient (a frozen LLM's first layer has none but the spliced speech).

    The release's ``generation_config.json`` is set aside: decoding is tasu's options alone (see
    ``SpeechLLM.generate_nbest``). transformers fills every search setting a call leaves unset from
    it, so a length penalty or suppressed tokens there changed the hypotheses and their scores, and
    no decode recorded it."""
    if isinstance(dtype, str):
        name, dtype = dtype, getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {name!r}: use e.g. float32, bfloat16, float16")
    llm = from_pretrained(AutoModelForCausalLM, path, "LLM", dtype=dtype)
    released = llm.generation_config   # its special tokens stay: an exported LLM still stops at EOS elsewhere
    llm.generation_config = GenerationConfig(bos_token_id=released.bos_token_id, eos_token_id=released.eos_token_id,
                                             pad_token_id=released.pad_token_id)
    llm.requires_grad_(False)
    if lora is not None:
        add_lora(llm, lora)
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(llm, "activation_checkpointing_enable"):   # its name from transformers 5 on
            llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return llm


def add_lora(llm: PreTrainedModel, lora: LoRAConfig) -> PreTrainedModel:
    """Inject trainable LoRA adapters into ``llm`` in place (the rest stays as it was: frozen)."""
    from peft import LoraConfig, inject_adapter_in_model

    from transformers.pytorch_utils import Conv1D   # GPT-2's projections: peft adapts them as linear layers

    modules = dict(llm.named_modules())
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, (torch.nn.Linear, Conv1D))})
    embeddings = (llm.get_input_embeddings(), llm.get_output_embeddings())
    tied = embeddings[1] is not None and embeddings[1].weight is embeddings[0].weight
    for target in lora.target_modules:   # peft's own errors name no setting
        matched = [m for n, m in modules.items() if n == target or n.endswith(f".{target}")]
        if not matched:
            raise ValueError(f"llm.lora.target_modules: {target} names no module of the LLM; its linear "
                             f"layers are {', '.join(linear)}")
        odd = next((m for m in matched if not isinstance(m, (torch.nn.Linear, Conv1D, torch.nn.Embedding))), None)
        if odd is not None:
            raise ValueError(f"llm.lora.target_modules: {target} is no linear layer ({type(odd).__name__}); "
                             f"the LLM's linear layers are {', '.join(linear)}")
        # tied input and output embeddings are one tensor: an adapter on either, merged by tasu export,
        # would change the other too, and the exported model would decode otherwise
        if tied and any(m is e for m in matched for e in embeddings):
            raise ValueError(f"llm.lora.target_modules: {target} is an embedding this LLM shares between its input "
                             "and output layers (tie_word_embeddings): an adapter there cannot be merged into one of "
                             "them alone; adapt the attention or MLP layers")
    conv1d = any(isinstance(m, Conv1D) for n, m in modules.items()
                 if any(n == t or n.endswith(f".{t}") for t in lora.target_modules))   # weights stored [in, out]
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), fan_in_fan_out=conv1d)
    return inject_adapter_in_model(config, llm)


@dataclass
class TextBatch:
    """Token ids of a batch without the speech span: prompt, then target (+ EOS) when training.

    ``ids[b, :lengths[b]]`` are the LLM tokens of utterance b, right-padded with ``pad_id``. The
    speech span goes before ``ids[b, speech_at[b]]``; ``ids[b, target_at[b]:lengths[b]]`` is the
    target with its EOS (empty for generation, where ``target_at == lengths``).
    """

    ids: torch.Tensor
    lengths: torch.Tensor
    speech_at: torch.Tensor
    target_at: torch.Tensor

    def to(self, device) -> "TextBatch":
        return TextBatch(self.ids.to(device), self.lengths.to(device), self.speech_at.to(device),
                         self.target_at.to(device))

    @classmethod
    def from_lists(cls, prompts: list[list[int]], speech_at: list[int], targets: list[list[int]] | None,
                   pad_id: int) -> "TextBatch":
        """Pad token-id lists: ``prompts[b]`` (speech before index ``speech_at[b]``) + ``targets[b]``."""
        targets = targets if targets is not None else [[] for _ in prompts]
        rows = [p + t for p, t in zip(prompts, targets)]
        ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        return cls(ids=ids, lengths=torch.tensor([len(r) for r in rows]), speech_at=torch.tensor(speech_at),
                   target_at=torch.tensor([len(p) for p in prompts]))


class PromptTokenizer:
    """Prompts and targets -> ``TextBatch``, at collate time (needs the tokenizer, not the model).

    With a chat template, the user turn is the prompt followed by the speech and the assistant turn
    is the target; for Qwen2.5 (whose template adds its default system turn) utterance b reads::

        <|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n
        <|im_start|>user\\nTranscribe the audio.<speech><|im_end|>\\n<|im_start|>assistant\\n
        turn on the lights<|im_end|>

    where ``<speech>`` stands for the projector's rows and the final ``<|im_end|>`` is the EOS that
    is appended to every target. Without a chat template the text is ``{prompt}<speech>\\n{target}``
    plus EOS (and whatever the tokenizer itself adds, such as a BOS). Only the target tokens and the
    EOS carry loss; the model sets every other label to -100.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.speech_id = tokenizer.convert_tokens_to_ids(SPEECH_TOKEN)
        if self.speech_id is None or self.speech_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer lacks {SPEECH_TOKEN}: load it with tasu.llm.load_llm_tokenizer")
        # The special tokens the template writes itself (role marks, a BOS) and <speech>: a prompt that
        # spells another, from a record's field ({prevtext}: data), would end the user turn where it stands.
        self._specials = set(tokenizer.all_special_ids) | {self.speech_id} | \
            {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
        self._template_specials = self._special_counts(self._encode([""])[0])

    def spelled_special(self, text: str) -> str | None:
        """The first special token ``text`` spells (the end of a turn, a BOS, ``<speech>``), or None.

        A record's field that a prompt is filled from may not spell one: the prompt would end its
        turn where it stands. Asked of the field itself, so that its record is named before any batch."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return next((self.tokenizer.convert_ids_to_tokens(i) for i in ids if i in self._specials), None)

    def _encode(self, prompts: list[str]) -> list[list[int]]:
        # A chat template writes its own BOS/role tokens; plain text gets the tokenizer's usual ones.
        return self.tokenizer([self.render(p) for p in prompts],
                              add_special_tokens=not self.tokenizer.chat_template)["input_ids"]

    def _special_counts(self, ids: list[int]) -> Counter:
        return Counter(i for i in ids if i in self._specials)

    def render(self, prompt: str) -> str:
        """The text before the target, with ``<speech>`` where the speech goes."""
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt + SPEECH_TOKEN}], tokenize=False, add_generation_prompt=True)
        return f"{prompt}{SPEECH_TOKEN}\n"

    def __call__(self, prompts: list[str], targets: list[str] | None = None) -> TextBatch:
        tok = self.tokenizer
        encoded = self._encode(prompts)
        prompt_ids, speech_at = [], []
        for p, ids in zip(prompts, encoded):
            if ids.count(self.speech_id) != 1:
                raise ValueError(f"prompt {p!r} must not contain {SPEECH_TOKEN} itself")
            spelled = self._special_counts(ids) - self._template_specials
            spelled[self.speech_id] = 0
            if +spelled:
                raise ValueError(f"prompt {p!r} spells the LLM's special token "
                                 f"{tok.convert_ids_to_tokens(next(iter(+spelled)))!r}: a prompt is text")
            at = ids.index(self.speech_id)
            prompt_ids.append(ids[:at] + ids[at + 1:])
            speech_at.append(at)
        target_ids = None
        if targets is not None:
            if len(targets) != len(prompts):
                raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
            # A target is text: one that spells a special token (the end of a turn, <speech>) keeps it as
            # letters. Read as the token, an EOS mid-target taught the model to stop there.
            target_ids = [ids + [tok.eos_token_id] for ids in
                          tok(list(targets), add_special_tokens=False, split_special_tokens=True)["input_ids"]]
        return TextBatch.from_lists(prompt_ids, speech_at, target_ids, tok.pad_token_id)


class FieldSpelling:
    """Which field of a record, if any, that its task's prompts are filled from spells one of the LLM's
    special tokens: decoding and training refuse such a record at its line, before any batch (found at
    its batch, it named no file, line or field, after the model had loaded). The tokenizer is loaded
    at the first record whose task takes fields: most data has none. The API asks it of a call's fields."""

    def __init__(self, llm_path: str | Path | None, prompts: PromptSet, tokenizer: PromptTokenizer | None = None):
        self.llm_path, self.prompts = llm_path, prompts
        self._tokenizer = tokenizer   # (a loaded model's own; else read from llm_path when first needed)

    def problem(self, record) -> tuple[str, str] | None:
        """``(field, message)`` for a record one of whose prompt fields spells a special token."""
        for name in sorted(self.prompts.fields(record.task)):
            value = record.get(name)
            if not isinstance(value, str):   # missing: the prompt's filling names it
                continue
            self._tokenizer = self._tokenizer or PromptTokenizer(load_llm_tokenizer(self.llm_path))
            token = self._tokenizer.spelled_special(value)
            if token:
                return name, (f"spells the LLM's special token {token!r} (the {record.task} prompts are filled "
                              "from it): a prompt is text; write it otherwise")
        return None
