"""Records -> one training step's inputs, computed in the DataLoader workers.

A text batch carries the encoder token ids of its transcripts (the main process simulates the
posteriors from them, with the step's seed, so a resumed run simulates the same rows); an audio
batch carries waveforms (the main process runs the frozen encoder on them), or, in ``posteriors``
mode, the encoder's compressed posteriors read from a dump (``tasu.dump``): the same batches with
the same rows, the encoder's work done beforehand. All carry the LLM tokens of prompt and target.
A text batch never opens an audio file.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

import torch

from tasu.data.audio import SAMPLE_RATE, AudioError, audio_info, load_audio
from tasu.data.prompts import PromptError, PromptSet
from tasu.data.records import Record
from tasu.dump import SECONDS, FIELD, DumpReader
from tasu.encoders.base import EncoderTokenizer
from tasu.llm import PromptTokenizer, TextBatch
from tasu.posteriors import Posteriors, stack

# Speech rows per second of audio for records without a transcript (label-synchronous rows follow
# the tokens, about 3 to 4 BPE pieces a second of English speech; a high guess keeps batches small).
ROWS_PER_SECOND = 8


@dataclass
class StepBatch:
    keys: list[str]
    mode: Literal["text", "audio"]
    text: TextBatch
    token_ids: list[list[int]] | None = None        # text: encoder ids of each transcript
    waveforms: list[torch.Tensor] | None = None     # audio: 16 kHz mono
    paths: list[str] | None = None                  # audio: where each waveform was read (for messages)
    posteriors: Posteriors | None = None            # audio from a dump: the encoder's compressed rows
    audio_seconds: float = 0.0


class Collator:
    """Build ``StepBatch`` objects; ``length`` is the batching length of a record.

    ``mode``: ``text``, ``audio``, ``mixed`` (each batch is audio with probability
    ``audio_ratio``, drawn from the batch's seed) or ``posteriors`` (audio batches read from dumps
    through ``dumps``). Audio that cannot be read (its samples: the headers were checked before
    step 1) stops the run at its record's line in ``data_files``, the JSONL files the records come from.
    """

    def __init__(self, prompts: PromptSet, prompt_tokenizer: PromptTokenizer, encoder_tokenizer: EncoderTokenizer,
                 mode: Literal["text", "audio", "mixed", "posteriors"] = "text", audio_ratio: float = 0.5,
                 dumps: DumpReader | None = None, data_files: list[str] | None = None):
        if mode == "posteriors" and dumps is None:
            raise ValueError("posteriors mode reads dumps: pass dumps=DumpReader(...)")
        self.prompts = prompts
        self.prompt_tokenizer = prompt_tokenizer
        self.encoder_tokenizer = encoder_tokenizer
        self.mode, self.audio_ratio, self.dumps = mode, audio_ratio, dumps
        self.data_files = data_files or []
        llm = prompt_tokenizer.tokenizer
        # A record's prompt is drawn at collate time, so its length budget uses the task's longest.
        # Prompts filled from the record's fields (prevtext, hotword) are measured filled, per record;
        # the others are the same for every record of their task, measured once.
        self._prompt_len = {task: max(len(llm(p, add_special_tokens=False)["input_ids"]) for p in prompts.prompts(task))
                            for task in prompts.tasks if not prompts.fields(task)}
        self._template_len = len(llm(prompt_tokenizer.render(""), add_special_tokens=False)["input_ids"])
        for task in sorted(prompts.tasks):   # a prompt's own text spelling a special token: before step 1
            neutral = {name: "x" for name in prompts.fields(task)}
            for template in prompts.prompts(task):
                try:
                    prompt_tokenizer([template.format_map(neutral)])
                except ValueError as e:
                    raise PromptError(f"{prompts.source}: task {task}: {e}") from None

    def length(self, record: Record) -> int:
        """Prompt + speech rows + target + EOS, in tokens, as batching budgets them."""
        llm = self.prompt_tokenizer.tokenizer
        target = len(llm(record.target, add_special_tokens=False)["input_ids"]) + 1
        if record.transcript is not None:
            speech = len(self.encoder_tokenizer.encode(record.transcript))
        elif self.mode == "posteriors":   # the duration the dump kept: the audio mode's length, no audio read
            speech = math.ceil(record.get(SECONDS) * ROWS_PER_SECOND)
        else:
            try:
                info = audio_info(record.path, key=record.key, start=record.start, end=record.end)
            except AudioError as e:   # gone or changed since the check before step 1
                raise e.placed(self.data_files) from None
            speech = math.ceil(info.duration * ROWS_PER_SECOND)
        return self._template_len + self._prompt_length(record) + speech + target

    def _prompt_length(self, record: Record) -> int:
        """The tokens of the longest prompt ``record`` may be given."""
        if record.task in self.prompts.tasks and self.prompts.fields(record.task):
            llm = self.prompt_tokenizer.tokenizer
            return max(len(llm(self.prompts.fill(t, record), add_special_tokens=False)["input_ids"])
                       for t in self.prompts.prompts(record.task))
        return self._prompt_len.get(record.task, 0)

    def __call__(self, records: list[Record], seed: int) -> StepBatch:
        rng = random.Random(seed)
        audio = self.mode == "audio" or (self.mode == "mixed" and rng.random() < self.audio_ratio)
        prompts = [self.prompts.render(r, rng) for r in records]
        try:
            text = self.prompt_tokenizer(prompts, [r.target for r in records])
        except ValueError:   # a prompt filled from a record's fields that spells a special token: whose?
            for record, prompt in zip(records, prompts):
                try:
                    self.prompt_tokenizer([prompt])
                except ValueError as e:
                    raise PromptError(f"{record.key}: {e} (filled from the record's fields)") from None
            raise
        keys = [r.key for r in records]
        if self.mode == "posteriors":
            post = stack([self.dumps.load(r.get(FIELD)) for r in records])
            return StepBatch(keys, "audio", text, posteriors=post, audio_seconds=sum(r.get(SECONDS) for r in records))
        if not audio:
            ids = [self.encoder_tokenizer.encode(r.transcript) for r in records]
            return StepBatch(keys, "text", text, token_ids=ids)
        try:
            waves = [torch.from_numpy(load_audio(r.path, key=r.key, start=r.start, end=r.end)) for r in records]
        except AudioError as e:
            raise e.placed(self.data_files) from None
        seconds = sum(len(w) for w in waves) / SAMPLE_RATE
        return StepBatch(keys, "audio", text, waveforms=waves, paths=[r.path for r in records], audio_seconds=seconds)
