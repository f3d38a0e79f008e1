"""The simulator interface, the registry of simulators, and the one factory that builds them.

A simulator turns a batch of transcripts, as the encoder's token ids, and a condition into the
``Posteriors`` the projector reads::

    simulator = build_simulator(cfg.simulation, encoder_tokenizer)   # the config's name, e.g. rules
    post = simulator(token_ids, generator, step=step)                # the schedule's WER at this step
    post = simulator(token_ids, generator, wer=0.15)                 # or a target WER per utterance

The trainer, ``tasu decode --input simulated``, ``tasu simulate`` and ``tasu analyze`` all call
``build_simulator``, so a simulator added to the registry is usable everywhere at once. Simulators
whose code needs more than torch (the learned one) are registered lazily: their module is imported
the first time their name is built, so ``import tasu.simulate`` stays as light as the rules.
"""
from __future__ import annotations

import abc
import hashlib
import importlib
import math
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

import torch

from tasu.posteriors import Posteriors
from tasu.registry import Registry

if TYPE_CHECKING:
    from tasu.simulate.config import SimulationConfig

SIMULATORS = Registry("simulator")
# name -> module that registers it when imported (heavier code, imported on first use)
LAZY_SIMULATORS = {"learned": "tasu.simulate.learned"}


@runtime_checkable
class Vocabulary(Protocol):
    """What simulation needs of the encoder's tokenizer: its units, the blank among them, and text -> ids.

    Declared here rather than imported from ``tasu.encoders``, so that simulation depends on
    nothing but ``Posteriors``: every encoder's tokenizer (``tasu.encoders.base.EncoderTokenizer``)
    has these members, and so can any stand-in a test or a tool builds.
    """

    vocab_size: int
    blank_id: int

    def encode(self, text: str) -> list[int]: ...

    def id_to_piece(self, i: int) -> str: ...



class PosteriorSimulator(abc.ABC):
    """Transcript token ids + a condition -> a ``Posteriors`` batch over the encoder's vocabulary.

    The condition is the target token error rate of each utterance: given as ``wer`` (one float for
    the batch, or one per utterance), or, when ``wer`` is None, what the config says at training step
    ``step`` (a WER schedule's range, or a simulator's own default). ``generator`` seeds every
    random decision, so the same generator state gives the same rows (the trainer reseeds it every
    step: a resumed run simulates what the uninterrupted one did).
    """

    vocab_size: int
    blank_id: int
    wer_range: tuple[float, float] = (0.0, 1.0)   # the target WERs it serves (a learned one: what it was trained on)

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: "SimulationConfig", tokenizer: Vocabulary,
                    device: str | torch.device = "cpu") -> "PosteriorSimulator":
        """The simulator the config describes, for the encoder whose tokenizer is given."""

    @abc.abstractmethod
    def __call__(self, token_ids: Sequence[Sequence[int]], generator: torch.Generator | None = None,
                 step: int = 0, wer: float | Sequence[float] | None = None) -> Posteriors:
        """Simulate one batch (see the class doc for the condition)."""

    def check_teacher(self, ident: dict, where: str, refuse_compression: bool, say=None) -> None:
        """Say when the rows of ``ident``'s encoder and compression (``tasu.dump.identity``) are not what
        this simulator learned from; the rules learned from nothing, so nothing to say."""


def register(name: str):
    """Class decorator: make a ``PosteriorSimulator`` available as ``simulation.name: <name>``."""
    return SIMULATORS.register(name)


def simulator_names() -> list[str]:
    return sorted(set(SIMULATORS) | set(LAZY_SIMULATORS))


def unknown_simulator(name: str) -> str:
    """Why ``name`` is refused, with the names there are: one wording for the config check and ``lookup``."""
    return f"unknown simulator {name!r}; known simulators: {', '.join(simulator_names())}"


def lookup(name: str) -> type[PosteriorSimulator]:
    """The class registered as ``name``, importing its module first if it is a lazy one."""
    if name not in SIMULATORS and name in LAZY_SIMULATORS:
        importlib.import_module(LAZY_SIMULATORS[name])
    if name not in SIMULATORS:
        raise ValueError(unknown_simulator(name))
    return SIMULATORS[name]


def vocab_digest(tokenizer: Vocabulary) -> str:
    """SHA-256 of the encoder's pieces, one per line (its ``id_to_piece``): what a model trained on the
    encoder's ids (a projector, a learned simulator) records, so that another vocabulary of the same
    size is refused rather than read as this one."""
    text = "\n".join(tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_simulator(config: "SimulationConfig", tokenizer: Vocabulary,
                    device: str | torch.device = "cpu") -> PosteriorSimulator:
    """The one factory: the simulator ``config.name`` names, built for the encoder's ``tokenizer``."""
    return lookup(config.name).from_config(config, tokenizer, device)


def target_rates(token_ids: Sequence[Sequence[int]], wer: float | Sequence[float] | None,
                 rate_range: tuple[float, float] | None, generator: torch.Generator | None) -> torch.Tensor | None:
    """Per-utterance target WERs [B] (float64): ``wer`` as given, else ``U(rate_range)`` drawn with
    ``generator``; None when neither is given (no condition: the i.i.d. rules)."""
    b = len(token_ids)
    if wer is not None:
        rates = torch.as_tensor(wer, dtype=torch.float64).flatten()
        if rates.numel() == 1:
            rates = rates.expand(b).clone()
        if rates.numel() != b:
            raise ValueError(f"wer: {rates.numel()} target rates for a batch of {b}")
        if not bool(((rates >= 0) & (rates <= 1)).all()):
            raise ValueError(f"wer: target rates must be in [0, 1], got {rates.tolist()}")
        return rates
    if rate_range is None:
        return None
    lo, hi = rate_range
    return lo + (hi - lo) * torch.rand(b, generator=generator, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# Error rates


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (unit substitution, deletion and insertion costs) of two sequences."""
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.distance(ref, hyp)


def row_tokens(post: Posteriors) -> list[list[int]]:
    """The token each valid row emits (its largest entry), blank rows emitting nothing.

    Rows are label-synchronous (one row per emitted label), so repeated ids are *not* merged.
    """
    best = post.ids.gather(2, post.weights.argmax(2, keepdim=True)).squeeze(2)
    return [[i for i in row[:n] if i != post.blank_id] for row, n in zip(best.tolist(), post.lengths.tolist())]


def token_error_rate(ref: Sequence[int], hyp: Sequence[int]) -> float:
    """Edit distance over the reference length (an empty reference: 0 if ``hyp`` is empty, else inf)."""
    d = edit_distance(ref, hyp)
    return d / len(ref) if ref else (0.0 if d == 0 else math.inf)
