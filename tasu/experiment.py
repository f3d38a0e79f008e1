"""The experiment config: every setting of a training run, checked before anything runs.

A recipe's ``conf/*.yaml`` fills ``ExperimentConfig``; ``tasu train --config X.yaml key=value ...``
overrides single keys. The resolved config is saved with every checkpoint, so decoding needs
nothing but the checkpoint and the base encoder/LLM paths (which may be overridden there, for a
model moved to another machine).
"""
from __future__ import annotations

import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from tasu.data.batching import Source
from tasu.compress import CompressConfig
from tasu.simulate import SimulationConfig


@dataclass
class EncoderConfig:
    """The frozen CTC encoder. The text-only stage reads only its tokenizer from ``path``."""

    path: str = ""
    type: str = "auto"      # a registered backend (tasu.encoders.registry), or auto: detected from the files
    options: dict = field(default_factory=dict)   # the backend's load options, e.g. SenseVoice's {language: en}

    def check(self) -> None:
        from tasu.encoders.registry import check_name

        check_name(self.type)


@dataclass
class LoRAConfig:
    """LoRA adapters (peft) on the LLM's Linear layers named in ``target_modules``: the ``llm.lora``
    section, and what ``tasu.llm.load_llm`` / ``SpeechLLM.from_pretrained`` take from code."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def check(self) -> None:
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha must be a number > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:   # NaN fails it too
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules or not all(name.strip() for name in self.target_modules):
            raise ValueError(f"target_modules must name the LLM's Linear layers to adapt (q_proj, ...), got "
                             f"{self.target_modules}")


@dataclass
class LLMConfig:
    """The frozen causal LLM (a Hugging Face directory) and its optional LoRA adapters."""

    path: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: Optional[LoRAConfig] = None
    # Keep only each layer's input during the forward pass and recompute the rest in the backward
    # pass: activation memory of one layer instead of all, for one more forward pass of the LLM. For big LLMs
    # (7B and up) with long batches; the same loss and gradients.
    gradient_checkpointing: bool = False


@dataclass
class ProjectorConfig:
    """A projector from the registry (``tasu.projectors``) and its options, e.g. ``{hidden: 2048}``."""

    name: str = "linear-silu"
    options: dict = field(default_factory=dict)

    def check(self) -> None:
        """The name and the option names, against the registry and the projector's constructor: either
        would otherwise stop only after the LLM has loaded, in a message that names no config key."""
        from tasu.projectors import PROJECTORS

        cls = PROJECTORS.lookup(self.name)
        params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
                  if n not in ("self", "vocab_size", "llm_dim", "llm_embedding")}
        known = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        unknown = sorted(set(map(str, self.options)) - set(known))
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())   # **kwargs: it checks its own
        if unknown and not takes_any:
            raise ValueError(f"options: {', '.join(unknown)}: not an option of projector {self.name!r} "
                             f"(its options: {', '.join(known) or 'none'})")
        hints = typing.get_type_hints(cls.__init__)
        for name, value in self.options.items():
            default = params[name].default if name in params else None
            problem = _option_problem(value, hints.get(name), default)
            if problem:
                raise ValueError(f"options.{name}: {value!r}: {problem}")
        defaults = {n: p.default for n, p in params.items() if p.default is not p.empty}
        try:
            cls.check_options({**defaults, **self.options})
        except ValueError as err:
            raise ValueError(f"options: {err}") from None


def _option_problem(value, hint, default=None) -> str | None:
    """Why ``value`` cannot be a projector option annotated ``hint`` (None when it can, or the hint
    says nothing checkable). A projector's whole-number options are sizes and counts: at least 1, or
    0 where that is the default (0 for "none"). A YAML typo such as ``sparse: flase`` is a string,
    which Python would take for true."""
    kinds = set(typing.get_args(hint)) or {hint}
    if value is None:
        return None if type(None) in kinds else "must be given (null is not one of its values)"
    if bool in kinds:
        return None if isinstance(value, bool) else "must be true or false"
    if int in kinds:
        least = 0 if default == 0 and type(default) is int else 1
        return None if type(value) is int and value >= least else f"must be a whole number, at least {least}"
    if float in kinds:
        return None if type(value) in (int, float) else "must be a number"
    return None


@dataclass
class DataConfig:
    """Where the records come from and how they are batched (see ``tasu.data.batching``).

    A ``train`` entry is a JSONL path, or ``{path: ..., weight: w}`` for a source an epoch should
    hold ``w`` times (up- or down-sampling it against the others); plain paths weigh 1.0, so sources
    are mixed in proportion to their sizes. ``order: shuffle`` permutes each whole epoch;
    ``order: stream`` is for sources too large to index (see the module doc), and only it uses
    ``shuffle_buffer``. ``valid`` files are read in order and batched as training is (``max_tokens``,
    ``sort_window``).
    """

    train: list[Union[str, Source]] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)
    prompts: Optional[str] = None            # prompts JSONL; null: the English set shipped with tasu
    mode: Literal["text", "audio", "mixed", "posteriors"] = "text"   # posteriors: read from dumps (tasu.dump)
    audio_ratio: float = 0.5                 # mixed mode: share of batches that are audio
    max_tokens: int = 3000                   # batch size x longest (prompt + speech + target) tokens
    max_batch_size: Optional[int] = None
    min_length: int = 1
    max_length: Optional[int] = None         # longer records are skipped and counted
    order: Literal["shuffle", "stream"] = "shuffle"
    shuffle_buffer: int = 2000               # order: stream only
    sort_window: int = 500
    num_workers: int = 2

    def __post_init__(self) -> None:
        self.train = [s if isinstance(s, Source) else Source(s) for s in self.train]

    def check(self) -> None:
        if not 0.0 <= self.audio_ratio <= 1.0:
            raise ValueError(f"audio_ratio must be in [0, 1], got {self.audio_ratio}")
        for name, paths in (("train", [s.path for s in self.train]), ("valid", self.valid)):
            for i, path in enumerate(paths):
                if not path.strip():   # read later as a file named '', in a message naming no key
                    raise ValueError(f"{name}[{i}] is an empty path: name a JSONL file")
        if self.prompts is not None and not self.prompts.strip():
            raise ValueError("prompts is empty: name a prompts JSONL, or null for the English set")
        for name, least in (("max_tokens", 1), ("max_batch_size", 1), ("min_length", 0), ("max_length", 1),
                            ("shuffle_buffer", 0), ("sort_window", 0), ("num_workers", 0)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")


# DeepSpeed's WarmupCosineLR, the schedule of every run, sets a rate of 0 before its first step and
# again at its iteration 0 (its warm-up starts at 0, one step late): the first two optimizer steps of a
# run train nothing. A run must take more of them, or it saves its initial weights as trained.
STEPS_AT_RATE_0 = 2


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay (the original's WarmupCosine). The warm-up counts
    from the run's first step, whose rate is 0 as its second's is (``STEPS_AT_RATE_0``); it takes at
    least 2 steps (``check_schedule``)."""

    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 200
    total_steps: int = 15000
    grad_clip: float = 1.0

    def check(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):   # a negative rate climbs the loss; NaN fails both
            raise ValueError(f"lr must be a number > 0, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):   # Adam's moments decay by them: 1 or more never forgets
            raise ValueError(f"betas must both be in [0, 1), got {list(self.betas)}")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps must be a number > 0, got {self.eps}")
        for name in ("weight_decay", "grad_clip"):   # grad_clip 0: no clipping
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)}")
        if not 1 <= self.warmup_steps < self.total_steps:
            raise ValueError(f"need 1 <= warmup_steps < total_steps, got {self.warmup_steps} and {self.total_steps}")


@dataclass
class EngineConfig:
    """DeepSpeed settings and the device kind."""

    device: Literal["auto", "cpu", "cuda", "npu"] = "auto"
    zero_stage: Literal[0, 1, 2] = 2
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"


@dataclass
class TrainConfig:
    """The loop: length, logging, validation, checkpoints, and the curriculum's starting point."""

    seed: int = 0
    epochs: int = 5
    max_steps: Optional[int] = None          # stop early after this many optimizer steps
    log_interval: int = 10
    valid_interval: int = 500                # and the last step: the final model is always ranked
    save_interval: int = 500
    keep_best: int = 3                       # checkpoints kept by validation loss (plus the last)
    init_from: Optional[str] = None          # a previous stage's checkpoint dir: its trained weights

    def check(self) -> None:
        """Zero steps or epochs would save an untrained checkpoint and exit 0 as if it had trained;
        an interval of 0 passes here but divides by zero after step 1. Both stop before anything runs
        (steps at a rate of 0 alone: ``check_schedule``)."""
        for name in ("epochs", "log_interval", "valid_interval", "save_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or null: as many as the epochs take), got {self.max_steps}")
        if self.keep_best < 0:   # 0 keeps the last checkpoint only
            raise ValueError(f"keep_best must be >= 0, got {self.keep_best}")
        if self.init_from is not None and not self.init_from.strip():   # an unset shell variable: not "from scratch"
            raise ValueError("init_from is empty: name a checkpoint or experiment directory, or null to start "
                             "from scratch")
        if not -2**63 <= self.seed < 2**63:   # torch's generators take a 64-bit seed
            raise ValueError(f"seed must fit in 64 bits, got {self.seed}")


@dataclass
class ExperimentConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> None:
        """The learning-rate schedule ends at ``optim.total_steps`` (a rate of 0 after it): steps past
        it would train nothing, with exit 0. A run limited by epochs alone is warned when it gets there."""
        if self.train.max_steps is not None and self.train.max_steps > self.optim.total_steps:
            raise ValueError(f"train.max_steps {self.train.max_steps} is past optim.total_steps "
                             f"{self.optim.total_steps}, where the learning rate has decayed to 0: raise "
                             "optim.total_steps with it")


def check_schedule(cfg: ExperimentConfig) -> None:
    """What a run about to train needs of its learning-rate schedule (``STEPS_AT_RATE_0``): checked when
    a training starts and by ``tasu train --dry-run``, not whenever a config is read, so that the saved
    config of a run an older tasu trained still decodes, exports and is ranked."""
    from tasu.config import ConfigError

    if cfg.train.max_steps is not None and cfg.train.max_steps <= STEPS_AT_RATE_0:
        raise ConfigError(f"train.max_steps {cfg.train.max_steps}: the first {STEPS_AT_RATE_0} steps run at a "
                          "learning rate of 0, so the run would save its initial weights as trained: take "
                          f"{STEPS_AT_RATE_0 + 1} or more")
    if cfg.optim.warmup_steps < 2:
        raise ConfigError(f"optim.warmup_steps {cfg.optim.warmup_steps}: DeepSpeed's warm-up takes at least 2 steps "
                          "(it would make it 2 unasked): set 2 or more")
