"""Checkpoints on disk: what decoding needs, what resuming needs, and writing both atomically.

An experiment directory::

    exp/<tag>/
      config.yaml                    the resolved config of the run
      train.log, tensorboard/
      checkpoints/
        step_000500/
          model/                     all that decoding needs, with the base encoder and LLM:
            trainable.safetensors      the trained weights only (projector, LoRA adapters)
            config.yaml                the resolved config
            prompts.jsonl              the prompt set it was trained with
          engine/                    what --resume needs (DeepSpeed: optimizer, scheduler; our state)
        last                         name of the newest complete checkpoint
        best.json                    the kept checkpoints by validation loss

A checkpoint is written under a temporary name and renamed into place when complete, and ``last``
is replaced atomically afterwards, so a run killed at any moment leaves either the previous or the
new checkpoint, never a half-written one that resuming would trust.

Nothing read back from a checkpoint can run code: the weights are safetensors, and the ``engine/``
files (DeepSpeed writes them with ``torch.save``, i.e. pickle) are read by ``load_engine_file``,
which lets through tensors, containers and the few plain classes DeepSpeed's optimizer state holds,
and refuses anything else. A checkpoint copied from elsewhere, or altered, cannot run a payload.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import yaml

from tasu.config import load_config, to_dict
from tasu.fileio import write_atomic
from tasu.train.config import ExperimentConfig

MODEL_DIR, ENGINE_DIR = "model", "engine"
WEIGHTS, CONFIG, PROMPTS = "trainable.safetensors", "config.yaml", "prompts.jsonl"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as it is: refused (unsafe) or not fitting the model."""


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def write_model(model_dir: Path, trainable: dict, cfg: ExperimentConfig, prompts_text: str) -> None:
    """Fill ``model_dir`` (a fresh directory) with the decoding part of a checkpoint."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(model_dir / WEIGHTS))
    (model_dir / CONFIG).write_text(dump_config(cfg), encoding="utf-8")
    (model_dir / PROMPTS).write_text(prompts_text, encoding="utf-8")


def set_last(ckpt_root: Path, name: str) -> None:
    write_atomic(ckpt_root / "last", name + "\n")


def last_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint, or None when there is none yet."""
    pointer = ckpt_root / "last"
    if not pointer.exists():
        return None
    path = ckpt_root / pointer.read_text(encoding="utf-8").strip()
    return path if path.is_dir() else None


def read_best(ckpt_root: Path) -> list[dict]:
    path = ckpt_root / "best.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def write_best(ckpt_root: Path, best: list[dict]) -> None:
    write_atomic(ckpt_root / "best.json", json.dumps(best, indent=1) + "\n")


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A checkpoint directory from an experiment dir (``which``: best, last or step_N) or itself.

    ``best`` falls back to ``last`` when the run never validated.
    """
    path = Path(path)
    if (path / MODEL_DIR / WEIGHTS).exists():
        return path
    if (path / WEIGHTS).exists() and path.name == MODEL_DIR:
        return path.parent
    root = path / "checkpoints"
    if not root.is_dir():
        raise FileNotFoundError(f"{path} is neither an experiment dir (no checkpoints/) nor a checkpoint")
    if which == "best":
        best = read_best(root)
        if best:
            return root / best[0]["name"]
        which = "last"
    if which == "last":
        last = last_checkpoint(root)
        if last is None:
            raise FileNotFoundError(f"{root} holds no complete checkpoint yet")
        return last
    step = re.fullmatch(r"step_(\d+)", which)
    candidate = root / (checkpoint_name(int(step.group(1))) if step else which)   # step_2 = step_000002
    if not (candidate / MODEL_DIR / WEIGHTS).exists():
        have = sorted(p.name for p in root.glob("step_*") if (p / MODEL_DIR / WEIGHTS).exists())
        raise FileNotFoundError(f"no checkpoint {which} in {root} (it has best, last"
                                f"{', ' + ', '.join(have) if have else ''})")
    return candidate


def read_model_config(ckpt: Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The config a checkpoint was trained with; ``overrides`` such as ``llm.path=/models/qwen``."""
    return load_config(ExperimentConfig, ckpt / MODEL_DIR / CONFIG, overrides)


def load_trainable(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(ckpt / MODEL_DIR / WEIGHTS))


def check_fits(model_shapes: dict, state: dict, source: Path) -> None:
    """Raise ``CheckpointError`` when a tensor of ``state`` has another shape than the model's.

    ``model_shapes`` maps parameter names to shapes. A checkpoint read with a changed config
    (another projector size, LoRA rank) would otherwise stop in ``load_state_dict`` with a
    multi-line traceback.
    """
    wrong = [f"{name}: {tuple(t.shape)} in the checkpoint, {tuple(model_shapes[name])} in the model"
             for name, t in state.items() if name in model_shapes and tuple(t.shape) != tuple(model_shapes[name])]
    if wrong:
        raise CheckpointError(f"{source}: the trained weights do not fit the model its config builds "
                              f"({'; '.join(wrong[:3])}{'; ...' if len(wrong) > 3 else ''}): "
                              "the projector, LoRA or LLM settings differ from the ones it was trained with")


def _engine_safe_globals() -> list:
    """The classes DeepSpeed pickles into its optimizer state besides tensors and containers.

    Plain data (a loss scaler's settings, an enum, a named tuple): unpickling them only sets
    attributes, it calls nothing else. Everything not named here is refused.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_engine_file(path: str | Path, map_location=None):
    """``torch.load`` of a file of ``engine/``, refusing any object that could run code when loaded."""
    import torch

    with torch.serialization.safe_globals(_engine_safe_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            found = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch names the first object it refused
            what = f"it names {found.group(1)}" if found else "see --debug"
            raise CheckpointError(
                f"{path}: refused to load: it holds Python objects that a checkpoint written by tasu does "
                f"not ({what}), and loading them could run code. Resume from a checkpoint you trust, "
                "or train again in a new --exp-dir") from None


def use_safe_engine_loads(engine) -> None:
    """Make DeepSpeed's ``load_checkpoint`` read every file through ``load_engine_file``.

    DeepSpeed's own checkpoint engine calls ``torch.load(..., weights_only=False)``; all its reads
    of model, optimizer and ZeRO files go through ``engine.checkpoint_engine.load``, which this
    replaces on the instance.
    """
    if engine.checkpoint_engine is None:
        raise CheckpointError("DeepSpeed has no checkpoint engine to guard: refusing to load a checkpoint")
    engine.checkpoint_engine.load = load_engine_file
