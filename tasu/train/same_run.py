"""What ``--resume`` checks first: that the run it continues is this one, on the same data and settings.

Exact resume replays the data order from (seed, epoch) and the batches the checkpoint consumed, and
the optimizer from its saved state. That holds only for the run that wrote the checkpoint. Resumed on
a JSONL file that has been remade since (stage 2 remakes one whose ``data/<set>`` changed), or with a
config edited since, it would go on from the old run's position on other records and with other
settings, and a run that had already finished would stop at once: an old model, exit 0, nothing said.

So every checkpoint keeps what its run read (``engine/data.json``: each training and validation
file's size and sha256) beside the resolved config and prompt set it already keeps, and a resumed run
compares them with its own before it loads anything; a difference stops it with one line that names
it. Files are compared by content, not by path, so an experiment moved with its data resumes.

A run that starts from another's model (``train.init_from``, the curriculum) records that model
too, the checkpoint and the sha256 of its weights: resumed after that experiment trained on (its
stage had been killed, then finished), it would go on from one model and report another. And every
run records the frozen LLM's files by content (``llm_digest``): a resume, or a later stage's
``train.init_from``, with another LLM of the same shapes is refused.

Some settings may change on resume because they leave what is already trained as it is:
``RESUMABLE`` (the run's length, its logging and checkpoint intervals, the data loader's processes,
the device, where ``train.init_from`` is: its model is compared by content) and the locations of the
models and the prompt file (logged when they differ). A
checkpoint an older tasu wrote has no ``data.json``: its data cannot be checked, and the log says so.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from tasu.config import ConfigError, flat_keys, load_config, to_dict
from tasu.experiment import ExperimentConfig
from tasu.fileio import read_json, write_atomic
from tasu.model_io import CONFIG, MODEL_DIR, PROMPTS, WEIGHTS, is_llm, llm_digest, recorded_llm
from tasu.train.checkpoint import ENGINE_DIR

log = logging.getLogger("tasu.train")

DATA_RECORD = "data.json"   # in a checkpoint's engine/ directory
RESUMABLE = frozenset({"train.max_steps", "train.epochs", "train.log_interval", "train.valid_interval",
                       "train.save_interval", "train.keep_best", "train.init_from", "data.num_workers",
                       "engine.device"})
MOVABLE = frozenset({"encoder.path", "llm.path", "data.prompts"})   # locations: logged when they differ
SHOWN = 3   # differences named in the message; the rest are counted


class ResumeError(RuntimeError):
    """A resume onto other data or settings than the checkpoint's run; the message names the difference."""


def data_record(cfg: ExperimentConfig, init_ckpt: Path | None = None) -> dict:
    """Each training and validation file of ``cfg`` as the run reads it (path, size and sha256), the
    checkpoint it starts from (``init_ckpt``, ``train.init_from`` resolved), its weights' sha256, and
    the frozen LLM it trains for (``llm_digest``)."""
    def entry(path: str | Path) -> dict:
        with open(path, "rb") as f:
            return {"path": str(path), "bytes": os.fstat(f.fileno()).st_size,
                    "sha256": hashlib.file_digest(f, "sha256").hexdigest()}

    return {"train": [entry(s.path) for s in cfg.data.train], "valid": [entry(p) for p in cfg.data.valid],
            "init_from": None if init_ckpt is None else entry(init_ckpt / MODEL_DIR / WEIGHTS),
            "llm": {"path": str(cfg.llm.path), "sha256": llm_digest(cfg.llm.path)}}


def init_llm_difference(init_ckpt: Path, data: dict) -> str | None:
    """How the LLM of the run that trained ``init_ckpt`` differs from this run's (``data``: its
    ``data_record``), or None: the same, or not recorded (an older tasu).

    An export has no run record: its weights record its own ``llm/`` (LoRA adapters merged in: its
    projector was trained for that LLM, and the adapters are not in its weights) and, when it merged
    none, the base LLM too (``LLM_KEY``, ``BASE_LLM_KEY``)."""
    from tasu.export import LLM_DIR

    recorded = init_ckpt / ENGINE_DIR / DATA_RECORD
    then = read_json(recorded, _whole_record, "the record of the files a run read") if recorded.is_file() else {}
    if "llm" not in then:
        own, base = recorded_llm(init_ckpt)
        if own is None or is_llm(data["llm"]["path"], (own, base), data["llm"]["sha256"]):
            return None
        then = {"llm": {"path": str(init_ckpt / LLM_DIR), "sha256": own}}
    if is_llm(data["llm"]["path"], (then["llm"]["sha256"],), data["llm"]["sha256"]):
        return None
    return f"it was trained for the LLM {_model(then['llm'])}, and llm.path is {_model(data['llm'])}"


def write_data_record(engine_dir: Path, record: dict) -> None:
    write_atomic(engine_dir / DATA_RECORD, json.dumps(record, indent=1) + "\n")


def _settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as dotted keys; the data files are compared by content (``data_record``), so only
    each training file's weight stays here."""
    tree = to_dict(cfg)
    weights = [source["weight"] for source in tree["data"].pop("train")]
    tree["data"].pop("valid")
    return {**flat_keys(tree), "data.train weights": weights}


def _whole_entry(e: dict) -> bool:
    return isinstance(e["path"], str) and isinstance(e["bytes"], int) and isinstance(e["sha256"], str)


def _whole_record(record: dict) -> bool:
    init = record.get("init_from")   # absent: a record of an older tasu (as "llm")
    llm = record.get("llm", {"path": "", "sha256": ""})
    return all(_whole_entry(e) for role in ("train", "valid") for e in record[role]) and (
        init is None or _whole_entry(init)) and isinstance(llm["path"], str) and isinstance(llm["sha256"], str)


def _data_differences(then: dict, now: dict) -> list[str]:
    found = []
    for role in ("train", "valid"):
        if len(then[role]) != len(now[role]):
            found.append(f"data.{role}: {len(then[role])} file(s) then, {len(now[role])} now")
            continue
        for old, new in zip(then[role], now[role]):
            if old["sha256"] != new["sha256"]:
                found.append(f"{new['path']}: not the file the run read ({old['path']}, {old['bytes']} bytes, "
                             f"sha256 {old['sha256'][:12]}...; now {new['bytes']} bytes, {new['sha256'][:12]}...)")
    if "init_from" in then:   # older records did not say
        old, new = then["init_from"], now["init_from"]
        if (old and old["sha256"]) != (new and new["sha256"]):
            found.append(f"train.init_from: the run started from {_model(old)}; it names {_model(new)} now")
    if "llm" in then and not is_llm(now["llm"]["path"], (then["llm"]["sha256"],), now["llm"]["sha256"]):
        found.append(f"llm.path: the run trained for the LLM {_model(then['llm'])}; it is {_model(now['llm'])} now")
    return found


def _model(entry: dict | None) -> str:
    return "no model" if entry is None else f"{entry['path']} (sha256 {entry['sha256'].split(':')[-1][:12]}...)"


def check_same_run(ckpt: Path, cfg: ExperimentConfig, prompts_text: str, data: dict) -> None:
    """Raise ``ResumeError`` unless ``ckpt``'s run read the same data, prompts and settings as this one.

    ``data`` is this run's ``data_record``; ``prompts_text`` the prompt file as this run read it.
    """
    try:
        then = load_config(ExperimentConfig, ckpt / MODEL_DIR / CONFIG)
    except (ConfigError, OSError) as e:
        raise ResumeError(f"cannot resume from {ckpt}: its config cannot be read, so nothing can be compared "
                          f"with it ({e})") from None
    old, new = _settings(then), _settings(cfg)
    found = [f"{key}: {old.get(key)!r} then, {new.get(key)!r} now" for key in sorted(old.keys() | new.keys())
             if key not in RESUMABLE | MOVABLE and old.get(key) != new.get(key)]
    if (ckpt / MODEL_DIR / PROMPTS).read_text(encoding="utf-8") != prompts_text:
        found.append(f"the prompt set ({cfg.data.prompts or 'the one shipped with tasu'}) is not the one the run "
                     f"read ({ckpt / MODEL_DIR / PROMPTS})")
    recorded = ckpt / ENGINE_DIR / DATA_RECORD
    if recorded.is_file():
        found += _data_differences(read_json(recorded, _whole_record, "the record of the files a run read"), data)
    else:
        log.warning("%s was written by an older tasu, which did not record the run's data: resuming without "
                    "checking that the data files are the ones it read", ckpt)
    if found:
        more = f"; and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
        raise ResumeError(
            f"cannot resume {ckpt.parent.parent} from {ckpt.name}: its run read other data or settings: "
            f"{'; '.join(found[:SHOWN])}{more}. Train into a new --exp-dir (or remove this one) to use them, "
            "or put back what the run read to resume it")
    for key in sorted(MOVABLE):
        if old.get(key) != new.get(key):
            log.info("resuming with %s %s (the checkpoint's run: %s)", key, new.get(key), old.get(key))
