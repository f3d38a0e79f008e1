"""Checkpoints as training writes them: the pointers, and what ``--resume`` reads back safely.

The layout of an experiment directory, and everything decoding reads (``model/``), is in
``tasu.model_io``; training writes ``model/`` with its ``write_model``. Here: ``engine/`` (what
``--resume`` needs: DeepSpeed's optimizer and scheduler state, our own state, and ``data.json``, the
files the run read, which ``tasu.train.same_run`` checks before resuming), the ``last`` and
``best.json`` pointers, ``finished`` (the checkpoint a run ended with: what a later stage's
``train.init_from`` checks), and the steps both training loops (``tasu train``, ``tasu train-simulator``)
take to put a checkpoint in place and to forget, on resuming, the loss curve's steps after it.

A checkpoint is written under a temporary name (``partial_dir``) and renamed into place when
complete, and ``last`` is replaced atomically afterwards (``finalize_checkpoint``; a directory's
first is named just before), so a run killed at any moment leaves either the previous or the new
checkpoint, never a half-written one that resuming would trust.

Nothing read back from a checkpoint can run code: the weights are safetensors, and the ``engine/``
files (DeepSpeed writes them with ``torch.save``, i.e. pickle) are read by ``load_engine_file``,
which lets through tensors, containers and the few plain classes DeepSpeed's optimizer state holds,
and refuses anything else. A checkpoint copied from elsewhere, or altered, cannot run a payload.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

from tasu.fileio import write_atomic
from tasu.model_io import CheckpointError, last_checkpoint

ENGINE_DIR = "engine"
FINISHED = "finished"   # in checkpoints/: the name of the checkpoint the run ended with


def set_last(ckpt_root: Path, name: str) -> None:
    write_atomic(ckpt_root / "last", name + "\n")


def mark_finished(ckpt_root: Path, name: str) -> None:
    write_atomic(ckpt_root / FINISHED, name + "\n")


def training_finished(ckpt_root: Path, last: Path) -> bool:
    """Whether the run that wrote ``ckpt_root`` ended with ``last``, its newest checkpoint.

    A run records that when it ends (``mark_finished``); one resumed for more steps and stopped again
    has moved on from the checkpoint it names. A run of an older tasu recorded nothing: then the last
    checkpoint's own state and config say it (its step reached ``max_steps``, or its epochs ran out).
    """
    marker = ckpt_root / FINISHED
    if marker.is_file():
        return marker.read_text(encoding="utf-8").strip() == last.name
    from tasu.model_io import read_model_config

    state = load_engine_file(last / ENGINE_DIR / "state_rank0.pt")
    t = read_model_config(last).train
    return (t.max_steps is not None and state["step"] >= t.max_steps) or state["position"]["epoch"] >= t.epochs


def write_best(ckpt_root: Path, best: list[dict]) -> None:
    write_atomic(ckpt_root / "best.json", json.dumps(best, indent=1) + "\n")


def partial_dir(ckpt_root: Path, name: str) -> Path:
    """Where checkpoint ``name`` is written before ``finalize_checkpoint`` renames it into place (a
    hidden name: ``step_*`` globs and ``last`` never see a half-written checkpoint)."""
    return ckpt_root / f".{name}.partial"


def finalize_checkpoint(ckpt_root: Path, name: str, best: list[dict] | None = None) -> Path:
    """Put the complete ``partial_dir(ckpt_root, name)`` in place as ``name``, point ``last`` at it,
    write ``best`` (when the run ranks checkpoints), and remove every other ``step_*`` but the best.

    The order is what makes a kill at any moment harmless: the new checkpoint is whole before
    ``last`` names it, ``best.json`` never names a checkpoint that is not there, and old ones go last.
    A directory's first checkpoint is named before it is in place: killed between the rename and the
    pointer, it was a checkpoint no ``last`` names, which a rerun and ``--resume`` refuse; a pointer to a
    name not yet there reads as no checkpoint at all.
    """
    final = ckpt_root / name
    if last_checkpoint(ckpt_root) is None:
        set_last(ckpt_root, name)
    shutil.rmtree(final, ignore_errors=True)   # a checkpoint of this step from a run that was resumed
    os.replace(partial_dir(ckpt_root, name), final)
    set_last(ckpt_root, name)
    keep = {name}
    if best is not None:
        write_best(ckpt_root, best)
        keep |= {b["name"] for b in best}
    for old in ckpt_root.glob("step_*"):
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    return final


def truncate_curve(curve: Path, step: int) -> None:
    """Keep the lines of a loss curve (``STEP<TAB>LOSS`` a line) up to ``step``: on resuming from the
    checkpoint of ``step``, the steps after it are redone and appended again.

    A line that is not whole (a run killed while writing it) or not of that form (a disk that kept
    garbage after a crash) is dropped too, rather than stopping the resume with a parse error.
    """
    if not curve.exists():
        return
    kept = []
    for line in curve.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        at = _curve_step(line)
        if at is not None and at <= step:
            kept.append(line)
    write_atomic(curve, "".join(kept))


def _curve_step(line: str) -> int | None:
    """The step of a whole ``STEP<TAB>LOSS`` line, else None."""
    fields = line.split("\t")
    if not line.endswith("\n") or len(fields) != 2 or not (fields[0].isascii() and fields[0].isdigit()):
        return None
    try:
        float(fields[1])
    except ValueError:
        return None
    return int(fields[0])


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
    """``torch.load`` of a file of ``engine/``, refusing any object that could run code when loaded.

    A file torch cannot parse (empty or cut short by a full disk or a killed copy, or another kind
    of file) is a ``CheckpointError`` naming it too: torch says ``EOFError`` with no message, or
    that its zip reader failed, and names no file.
    """
    import torch

    with torch.serialization.safe_globals(_engine_safe_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            found = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch names the first object it refused
            if found is None and "Unsupported operand" in str(e):   # bytes that are no pickle at all
                raise _damaged(path) from e
            what = f"it names {found.group(1)}" if found else "see --debug"
            raise CheckpointError(
                f"{path}: refused to load: it holds Python objects that a checkpoint written by tasu does "
                f"not ({what}), and loading them could run code. Use a checkpoint you trust, or train "
                "again in a new --exp-dir") from None
        except OSError:
            raise   # missing or unreadable: its own message names the file
        except Exception as e:  # noqa: BLE001 - EOFError, the zip reader's RuntimeError, a KeyError...
            raise _damaged(path) from e


def _damaged(path: str | Path) -> CheckpointError:
    """The error for an ``engine/`` file that torch cannot parse. Its size tells empty from cut short;
    torch's own error (chained: ``--debug`` shows it) depends on where the bytes stop making sense."""
    return CheckpointError(f"{path}: damaged: truncated, or not a torch.save file ({Path(path).stat().st_size} "
                           "bytes); resume from another checkpoint, or train again in a new --exp-dir")


def use_safe_engine_loads(engine) -> None:
    """Make DeepSpeed's ``load_checkpoint`` read every file through ``load_engine_file``.

    DeepSpeed's own checkpoint engine calls ``torch.load(..., weights_only=False)``; all its reads
    of model, optimizer and ZeRO files go through ``engine.checkpoint_engine.load``, which this
    replaces on the instance.
    """
    if engine.checkpoint_engine is None:
        raise CheckpointError("DeepSpeed has no checkpoint engine to guard: refusing to load a checkpoint")
    engine.checkpoint_engine.load = load_engine_file
