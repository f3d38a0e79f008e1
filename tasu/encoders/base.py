"""What every speech encoder offers the rest of tasu: a tokenizer, a frontend and CTC posteriors.

The text-only stage needs only the tokenizer (to turn transcripts into encoder token ids), so a
tokenizer is loadable on its own, without the encoder's weights or its framework (funasr,
transformers' audio models). The audio stage needs the frontend and ``forward``.
"""
from __future__ import annotations

import abc
import shutil
from pathlib import Path
from typing import ClassVar, Sequence

import torch
from torch import nn

from tasu.weights import ModelFilesError


class EncoderTokenizer(abc.ABC):
    """The encoder's own output vocabulary: text <-> CTC label ids (blank included in the ids)."""

    vocab_size: int
    blank_id: int

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Label ids of ``text`` as the CTC head would emit them (no blank)."""

    @abc.abstractmethod
    def id_to_piece(self, i: int) -> str:
        """The printable unit of id ``i`` (a BPE piece, a character, ``<blank>``)."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of a label sequence (blanks and repeats already removed by the caller)."""


class CTCEncoder(nn.Module, abc.ABC):
    """A frozen CTC speech encoder: 16 kHz waveforms -> features -> frame posteriors.

    A backend (a kind of encoder directory) is a subclass registered with
    ``tasu.encoders.registry.register``: the class methods find, tokenise and load its directories.
    """

    # What every caller feeds (tasu.data.audio's output); a backend refuses a model made for another
    # rate (require_16k) rather than give it samples it would read at the wrong speed.
    sample_rate: ClassVar[int] = 16000
    tokenizer: EncoderTokenizer
    files: ClassVar[str]   # what a directory of this kind holds, for messages
    # The Python environment under tools/ that loads this backend's models, when it is not the main
    # one (its framework cannot install beside the main torch): recipes run ``tasu dump-posteriors``
    # there and train and decode from the dumps.
    environment: ClassVar[str | None] = None

    # A backend (a kind of encoder directory, registered by name) overrides these three; an encoder
    # built in code (a test double, a wrapper) needs none of them.
    @classmethod
    def recognises(cls, root: Path) -> bool:
        """Whether directory ``root`` holds this kind of encoder, judged from its small files."""
        return False

    @classmethod
    def load_tokenizer(cls, root: Path) -> EncoderTokenizer:
        """The tokenizer of directory ``root``, reading no weights and importing no model framework."""
        raise NotImplementedError(f"{cls.__name__} loads no directories")

    @classmethod
    def model_files(cls, root: Path) -> list[Path]:
        """The files of ``root`` that the model is made from: what a posterior dump's identity hashes.

        By default every top-level file except hidden ones (markers such as ``.done``); a backend whose
        directories hold more (checkpoints, logs) names its own.
        """
        return sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))

    @classmethod
    def copy_model(cls, root: Path, dest: Path) -> None:
        """Make ``dest`` (new) a copy of ``root`` that loads the same model (``tasu export``).

        By default the whole directory, subdirectories included: a backend copies less only when its
        :meth:`model_files` lists every file its loaders read (:func:`copy_flat`).
        """
        shutil.copytree(root, dest)

    @classmethod
    def from_dir(cls, root: Path, device: str | torch.device = "cpu", **options) -> "CTCEncoder":
        """The frozen encoder of directory ``root`` (eval mode, no gradients), on ``device``."""
        raise NotImplementedError(f"{cls.__name__} loads no directories")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def blank_id(self) -> int:
        return self.tokenizer.blank_id

    @property
    def device(self) -> torch.device:
        """Where the encoder's weights are; ``forward`` moves its inputs there."""
        return next(self.parameters()).device

    @abc.abstractmethod
    def extract_features(self, waveforms: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frontend: mono float waveforms at 16 kHz -> padded features [B, F, ...], lengths [B].

        Runs on the CPU. Features are frames x dims for fbank frontends, samples for waveform models.
        """

    @abc.abstractmethod
    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (any device) -> CTC log-posteriors [B, T, V] over ``tokenizer``'s ids, and frame
        lengths [B], both on :attr:`device`."""


class ShortWaveformError(ValueError):
    """Waveforms of a batch too short for the encoder to give one frame.

    ``indices`` are their places in the batch, ``samples`` their lengths and ``reason`` what is wrong
    with each, so a caller that read them from records names the first (``first``, its ``problem``) by
    its record (key and path) rather than by a place in a batch.
    """

    def __init__(self, indices: list[int], samples: list[int], reason: str):
        self.indices, self.reason = indices, reason
        self.first, self.problem = indices[0], f"{samples[0]} samples at 16 kHz: {reason}"
        super().__init__(f"waveform(s) {indices} of the batch are {reason}")


def require_16k(rate: int, where: str) -> None:
    """Refuse a model made for audio at another rate than the 16 kHz every caller feeds.

    Nothing resamples for the encoder (``load_audio`` and ``Speech2Text`` convert everything to
    16 kHz), so an 8 kHz model would silently read 16 kHz samples as if they were its own rate.
    """
    if rate != CTCEncoder.sample_rate:
        raise ModelFilesError(f"{where}: the model takes {rate} Hz audio, and tasu feeds encoders "
                              f"{CTCEncoder.sample_rate} Hz audio only: use a {CTCEncoder.sample_rate} Hz model")


def copy_flat(files: list[Path], dest: Path) -> None:
    """Copy ``files`` (from wherever they are) side by side into new directory ``dest``.

    Two of them with one name would need two places; that is refused rather than one silently lost.
    """
    dest.mkdir(parents=True)
    sources: dict[str, Path] = {}
    for file in files:
        if file.name in sources:
            raise ModelFilesError(f"{file} and {sources[file.name]} are both named {file.name}: "
                                  f"a copy of the model cannot hold both side by side")
        sources[file.name] = file
        shutil.copy2(file, dest / file.name)
