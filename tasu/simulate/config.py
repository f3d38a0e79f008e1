"""How transcripts become posteriors: the ``simulation`` section of an experiment config.

Kept apart from the simulators so that the config tree (``tasu.experiment``) reads it without
importing any simulator, and every simulator reads the same section.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

MAX_INSERT_RATIO = 10.0   # inserted rows per token: speech's compressed rows hold ~0.1 to 0.3



@dataclass
class WERSchedule:
    """A curriculum for the target token error rate: the range ``[lo, hi]`` as a function of the step.

    The range stays at ``start`` for ``warmup_steps``, moves to ``end`` until ``total_steps`` (linearly,
    or along a half cosine that starts and ends slowly) and stays at ``end`` afterwards. A fixed range
    is ``start == end``.
    """

    start: tuple[float, float] = (0.0, 0.05)
    end: tuple[float, float] = (0.2, 0.3)
    warmup_steps: int = 0
    total_steps: int = 15000
    shape: Literal["linear", "cosine"] = "linear"

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"WERSchedule.{name} = {(lo, hi)} must satisfy 0 <= lo <= hi <= 1")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError("WERSchedule needs 0 <= warmup_steps <= total_steps")
        if self.shape not in ("linear", "cosine"):
            raise ValueError(f"WERSchedule.shape must be 'linear' or 'cosine', got {self.shape!r}")

    def progress(self, step: int) -> float:
        """0 before and at ``warmup_steps``, 1 from ``total_steps`` on."""
        if step <= self.warmup_steps:
            f = 0.0
        elif step >= self.total_steps:
            f = 1.0
        else:
            f = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 - math.cos(math.pi * f)) if self.shape == "cosine" else f

    def at(self, step: int) -> tuple[float, float]:
        f = self.progress(step)
        return tuple(a + (b - a) * f for a, b in zip(self.start, self.end))  # type: ignore[return-value]


@dataclass
class SimulationConfig:
    """How transcripts become posteriors. The defaults are the original TASU's.

    ``drop_prob``, ``insert_ratio`` and ``sub_prob`` are the i.i.d. errors; when ``wer`` is set they
    are replaced by exact-count edits whose rate follows the schedule, split into substitutions,
    deletions and insertions in the proportions ``wer_split`` (S, D, I). ``confusion`` says where
    substitutes (and WER-controlled insertions) come from: any ordinary id, or ids spelt alike.

    ``name`` chooses the simulator from the registry (``tasu.simulate.SIMULATORS``): ``rules`` (the
    above: i.i.d., or WER-controlled when ``wer`` is set) or ``learned`` (a model trained by ``tasu
    train-simulator``, read from the directory ``path``, conditioned on a target WER drawn from the
    ``wer`` schedule, sampling with ``temperature``; it ignores the rule settings). The new keys
    default to the rules, so every config written before them means what it meant.
    """

    alpha: tuple[float, float] = (0.0, 0.1)
    drop_prob: float = 0.05
    insert_ratio: float = 0.0
    sub_prob: float = 0.0
    confusion: Literal["random", "spelling"] = "random"
    wer: WERSchedule | None = None
    wer_split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    name: str = "rules"
    path: Optional[str] = None
    temperature: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = self.alpha
        if not 0.0 <= lo <= hi < 1.0:
            raise ValueError(f"alpha = {self.alpha} must satisfy 0 <= lo <= hi < 1")
        for name in ("drop_prob", "sub_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if not 0.0 <= self.insert_ratio <= MAX_INSERT_RATIO:   # NaN inserted nothing; 1e7 never ended
            raise ValueError(f"insert_ratio must be in [0, {MAX_INSERT_RATIO:g}] (rows per token), "
                             f"got {self.insert_ratio}")
        if self.confusion not in ("random", "spelling"):
            raise ValueError(f"confusion must be 'random' or 'spelling', got {self.confusion!r}")
        if not all(0.0 <= x < math.inf for x in self.wer_split) or not 0.0 < sum(self.wer_split) < math.inf:
            raise ValueError(f"wer_split = {self.wer_split} must be non-negative with a positive, finite sum")
        self.insert_ratio = float(self.insert_ratio)   # an int (from Python) made torch.poisson fail on a long tensor
        from tasu.simulate.base import simulator_names, unknown_simulator

        if self.name not in simulator_names():
            raise ValueError(f"name: {unknown_simulator(self.name)}")
        if not 0.0 < self.temperature < math.inf:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.name == "learned" and not self.path:
            raise ValueError("path: the learned simulator needs its directory (tasu train-simulator's --out)")
        if self.name == "learned" and self.wer is None:
            raise ValueError("wer: the learned simulator is conditioned on a target WER: give a range or a "
                             "schedule, e.g. wer: {start: [0.0, 0.1], end: [0.1, 0.3]}")
