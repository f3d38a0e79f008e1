"""Using a trained speech LLM from Python, the way ESPnet's ``Speech2Text`` is used.

    from tasu import Speech2Text

    s2t = Speech2Text.from_pretrained("egs/mini/exp/tasu_train_text")   # experiment, checkpoint or export dir
    s2t("recording.flac")                                    # 'turn on the kitchen lights'
    s2t(samples, sample_rate=8000)                           # a numpy/torch waveform, any rate, mono or [T, C]
    s2t("/data/an4/wav/cen1.ark:44")                         # a Kaldi ark entry, as a wav.scp gives it
    s2t("recording.flac", task="SLU_scenario")               # any task of the model's prompt set
    s2t("recording.flac", nbest=3)                           # [Hypothesis(text=..., score=...), ...]

Audio goes through the frozen encoder and label-synchronous compression into the projector and the
LLM, with the prompt set the model was trained with (a task's first prompt, as ``tasu decode``
uses) and the decoding settings given to ``from_pretrained``. Prompts filled from record fields
(``prevtext``, ``hotword``) take them as keyword arguments: ``s2t(audio, task="hotword",
hotword="Qwen")``.

A file name is read as ``tasu.data.audio.load_audio`` reads a record's ``path``. One ending in ``|``
is a shell command there, and a name from a folder listing can end in ``|`` (``"x; rm y |"``), so it
is refused, as ``tasu transcribe`` refuses it, unless the model was loaded with
``from_pretrained(..., allow_pipes=True)``: then ``s2t("sox in.sph -t wav - |")`` runs the command.

Loading leaves the process as it was (torch's random stream, the loggers) but for one setting: on
the CPU, this process then treats denormal floats as zero (``tasu.device.flush_denormals``: up to
twice as fast), as every CPU command of tasu does.
"""
from __future__ import annotations

import os
import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

import numpy as np
import torch

Audio = Union[str, os.PathLike, np.ndarray, torch.Tensor]


class Hypothesis(NamedTuple):
    text: str
    score: float   # log-probability per generated token: higher is better


@dataclass
class _Fields:
    """What a prompt is filled from: the task and any fields its templates name."""

    task: str
    key: str
    extra: dict[str, Any]

    def get(self, name: str, default: Any = None) -> Any:
        return self.task if name == "task" else self.extra.get(name, default)


class Speech2Text:
    """A trained model, ready to transcribe (or translate, classify...) audio; see the module doc."""

    def __init__(self, model, cfg, prompts, beam: int = 4, max_new_tokens: int = 200,
                 no_repeat_ngram_size: int = 0, repetition_penalty: float = 1.0, allow_pipes: bool = False):
        self.model, self.cfg, self.prompts, self.allow_pipes = model, cfg, prompts, allow_pipes
        self.beam, self.max_new_tokens = beam, max_new_tokens
        self.no_repeat_ngram_size, self.repetition_penalty = no_repeat_ngram_size, repetition_penalty

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, checkpoint: str = "best", device: str = "cpu",
                        overrides: tuple[str, ...] = (), allow_pipes: bool = False, **decoding) -> "Speech2Text":
        """Load an experiment dir (its ``best`` or ``last`` checkpoint, or ``step_N``), a checkpoint dir
        or a directory written by ``tasu export``.

        ``overrides`` change the saved config (``llm.path=...`` for base models moved elsewhere);
        ``allow_pipes``: run file names ending in ``|`` as shell commands (``--allow-pipes``; only for
        names you wrote yourself, see the module doc); ``decoding``: ``beam``, ``max_new_tokens``,
        ``no_repeat_ngram_size``, ``repetition_penalty``.
        """
        from tasu.decode import DecodeOptions
        from tasu.device import resolve_device
        from tasu.model_io import load_trained

        if isinstance(overrides, str):   # read letter by letter: "override 'c' is not of the form KEY=VALUE"
            raise TypeError(f"overrides is a list of KEY=VALUE strings: overrides=[{overrides!r}]")
        takes = [f.name for f in dataclasses.fields(DecodeOptions) if f.name not in ("input", "batch_size", "seed")]
        unknown = sorted(set(decoding) - set(takes))   # batch_size, input, seed are tasu decode's: not for one call
        if unknown:
            raise TypeError(f"Speech2Text takes the decoding options {', '.join(takes)}, not {', '.join(unknown)}")
        DecodeOptions(**decoding)   # a beam of 0 and the like: refused before the model loads
        model, cfg, prompts, _ = load_trained(path, checkpoint, audio=True, device=str(resolve_device(device)),
                                              overrides=overrides)
        return cls(model, cfg, prompts, allow_pipes=allow_pipes, **decoding)

    @property
    def tasks(self) -> list[str]:
        """The tasks this model has prompts for."""
        return sorted(self.prompts.tasks)

    def __call__(self, audio: Audio, task: str = "ASR", sample_rate: int | None = None, nbest: int | None = None,
                 **fields: str) -> str | list[Hypothesis]:
        """The model's answer for one recording: text, or the ``nbest`` best hypotheses with scores."""
        if isinstance(audio, (list, tuple)) and any(isinstance(a, (str, os.PathLike, np.ndarray, torch.Tensor,
                                                                  list, tuple)) for a in audio):
            raise TypeError("a call takes one recording (a list of samples is one); for several, use .batch([...])")
        return self.batch([audio], task=task, sample_rate=sample_rate, nbest=nbest, **fields)[0]

    def batch(self, audios: list[Audio], task: str = "ASR", sample_rate: int | None = None,
              nbest: int | None = None, **fields: str) -> list[str] | list[list[Hypothesis]]:
        """``__call__`` for several recordings at once (one padded batch through the model)."""
        if isinstance(audios, (str, os.PathLike, np.ndarray, torch.Tensor)):   # a path was read letter by letter
            raise TypeError("batch takes a list of recordings; for one, call the model itself")
        if not audios:
            return []
        from tasu.data.prompts import PromptError
        from tasu.decode import first_prompt
        from tasu.encoders.base import ShortWaveformError
        from tasu.llm import FieldSpelling

        unused = sorted(set(fields) - self.prompts.fields(task))   # a misspelt hotword= was dropped silently
        if unused:
            named = ", ".join(sorted(self.prompts.fields(task))) or "none"
            raise PromptError(f"the {task} prompts are filled from no field {', '.join(map(repr, unused))} "
                              f"(their fields: {named})")
        for name, value in fields.items():   # 123 was "needs field 'hotword': give it as a keyword"
            if type(value) is not str:
                raise PromptError(f"field {name}={value!r}: the {task} prompts are filled from text (a str), "
                                  f"not a {type(value).__name__}")
        spelling = FieldSpelling(None, self.prompts, self.model.prompt_tokenizer)
        spelled = spelling.problem(_Fields(task, "<input>", fields))
        if spelled:   # (the prompt's own check names no field)
            raise PromptError(f"field {spelled[0]} {spelled[1]}")
        waves = [waveform(a, sample_rate, self.allow_pipes) for a in audios]

        try:
            prompt = first_prompt(self.prompts, _Fields(task, "<input>", fields))
        except PromptError as e:   # it spoke of a record, which a caller of the API never gave
            raise PromptError(f"{str(e).split(': ', 1)[1].split(', which')[0]}: give it as a keyword "
                              f"(s2t(audio, task={task!r}, NAME=...); tasu transcribe: --field NAME=VALUE)") from None
        device = self.model.llm.device
        try:
            post = self.model.encode_audio([w.to(device) for w in waves], self.cfg.compress)
        except ShortWaveformError as e:   # named as the caller gave it, as load_audio names audio under 10 ms
            from tasu.data.audio import AudioError

            i = e.first
            given = os.fspath(audios[i]) if isinstance(audios[i], (str, os.PathLike)) else f"recording {i} of the batch"
            raise AudioError(given, e.problem) from None
        options = dict(num_beams=self.beam, max_new_tokens=self.max_new_tokens,
                       no_repeat_ngram_size=self.no_repeat_ngram_size, repetition_penalty=self.repetition_penalty)
        if nbest is None:
            return self.model.generate(post, [prompt] * len(waves), **options)
        hyps = self.model.generate_nbest(post, [prompt] * len(waves), nbest, **options)
        return [[Hypothesis(text, score) for text, score in h] for h in hyps]


def waveform(audio: Audio, sample_rate: int | None = None, allow_pipes: bool = False) -> torch.Tensor:
    """16 kHz mono float32 samples of a file (any ``path`` that ``load_audio`` reads; a shell command
    only with ``allow_pipes``) or of an array at ``sample_rate``, converted as ``load_audio`` converts
    a file's samples (``to_16k_mono``), so an int16 array and the WAV file it came from agree."""
    from tasu.data.audio import NOT_RUN, AudioError, is_command, load_audio, to_16k_mono

    if isinstance(audio, (str, os.PathLike)):
        if sample_rate is not None:
            raise ValueError("sample_rate is for arrays: a file says its own")
        path = os.fspath(audio)   # as given: pathlib folds '//' (a command's "https://", "a//b")
        if is_command(path) and not allow_pipes:
            raise AudioError(path, NOT_RUN)
        return torch.from_numpy(load_audio(path))
    if sample_rate is None:
        raise ValueError("an array needs its sample_rate (e.g. sample_rate=16000)")
    if isinstance(audio, torch.Tensor):   # numpy has no bfloat16: a tensor of it is widened first
        audio = audio.detach().cpu()
        samples = (audio.float() if audio.dtype in (torch.bfloat16, torch.float16) else audio).numpy()
    else:
        samples = np.asarray(audio)
    if samples.ndim not in (1, 2) or samples.size == 0:
        raise ValueError(f"expected a non-empty waveform of shape [T] or [T, C], got {tuple(samples.shape)}")
    if samples.ndim == 2 and samples.shape[0] < samples.shape[1]:   # read as 1 or 2 samples of 12800 channels
        raise ValueError(f"a waveform of shape {tuple(samples.shape)} is channels first ([C, T], as torchaudio.load "
                         "gives it): pass it transposed ([T, C]) or one channel ([T])")
    return torch.from_numpy(to_16k_mono(samples, sample_rate, f"array of shape {tuple(samples.shape)}"))
