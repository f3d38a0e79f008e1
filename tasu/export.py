"""A trained speech LLM as one self-contained directory: ``tasu export``.

    tasu export --exp exp/tasu_train_text --out exported/mini_asr
    Speech2Text.from_pretrained("exported/mini_asr")

The directory holds everything decoding needs, and of training only its settings::

    llm/        the LLM with its LoRA adapters merged into its weights (Hugging Face layout:
                config.json, model.safetensors, tokenizer files), loadable by any transformers code
    encoder/    the frozen encoder's files (the backend's ``copy_model``: for ESPnet and Hugging Face
                models the files the model is made from, not an experiment's checkpoints and decodes;
                for the funasr layouts the whole directory)
    model/      trainable.safetensors (the projector), config.yaml (llm.path: llm, encoder.path:
                encoder, no LoRA section: the adapters are in llm/; the training settings, without the
                paths of the training and validation data, which name files of the machine it was
                trained on), prompts.jsonl

so it is a checkpoint directory whose base models travel with it; ``Speech2Text.from_pretrained``
reads it wherever it is moved (the config's model paths are relative to it). It is written under a
temporary name and renamed when complete.
"""
from __future__ import annotations

import dataclasses
import shutil
import typing
from pathlib import Path

from torch import nn

from tasu.config import ConfigError, require_dir
from tasu.fileio import readable_by_others

LLM_DIR, ENCODER_DIR = "llm", "encoder"


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by :func:`export`."""
    path = Path(path)
    return all((path / name).is_dir() for name in (LLM_DIR, ENCODER_DIR, "model"))


def merge_lora(llm: nn.Module) -> int:
    """Fold every LoRA adapter into its base layer's weight and put the base layer back; the count."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(llm.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(llm.get_submodule(parent_name) if parent_name else llm, child, module.get_base_layer())
            merged += 1
    return merged


def base_llm(ckpt: Path, cfg) -> str:
    """The digest of the LLM an export that merges no adapters re-saves: the one ``ckpt`` was trained
    for, or, when ``ckpt`` is such an export itself, the base LLM it records (its ``llm/`` re-saves it)."""
    from tasu.model_io import llm_digest, recorded_llm

    own, base = recorded_llm(ckpt)
    return base or own or llm_digest(cfg.llm.path)


def export(exp: str | Path, out: str | Path, checkpoint: str = "best", overrides: typing.Sequence[str] = ()) -> Path:
    """Write the model of experiment (or checkpoint) ``exp`` to directory ``out``; returns ``out``.

    ``overrides`` change the saved config as decoding's do, e.g. ``llm.path=DIR`` for base models that
    moved since training: those are the ones copied, and the export's config names its own copies."""
    from transformers import AutoTokenizer

    from tasu.encoders.registry import backend
    from tasu.model_io import (MODEL_DIR, PROMPTS, checkpoint_step, encoder_tokenizer, llm_digest, load_trained,
                               read_model_config, resolve_checkpoint, trained_vocab, write_model)
    from tasu.simulate.base import vocab_digest

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: export writes a new directory")
    cfg = read_model_config(resolve_checkpoint(exp, checkpoint), overrides)   # before the models load (minutes)
    for name, source in (("encoder.path", cfg.encoder.path), ("llm.path", cfg.llm.path)):
        require_dir(name, source, f"the checkpoint's config names it: pass --set {name}=DIR with the directory "
                                  "on this machine")
        if out.resolve().is_relative_to(Path(source).resolve()):   # copying it would copy the copy into itself
            raise ConfigError(f"{out} is inside {name} {source}, which export copies: write it elsewhere")
    model, cfg, prompts, ckpt = load_trained(exp, checkpoint, audio=False, overrides=overrides)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        merged = merge_lora(model.llm) if cfg.llm.lora is not None else 0
        model.llm.requires_grad_(False)
        model.llm.save_pretrained(tmp / LLM_DIR)
        AutoTokenizer.from_pretrained(cfg.llm.path).save_pretrained(tmp / LLM_DIR)   # without <speech>
        released = Path(cfg.llm.path) / "generation_config.json"   # (tasu sets it aside; other tools read it)
        if released.is_file():
            shutil.copyfile(released, tmp / LLM_DIR / released.name)
        for file in (tmp / LLM_DIR).rglob("*.safetensors"):   # safetensors writes them 0600
            readable_by_others(file)
        try:
            backend(cfg.encoder.path, cfg.encoder.type).copy_model(Path(cfg.encoder.path), tmp / ENCODER_DIR)
        except (shutil.Error, RecursionError) as e:   # a link loop in it: copytree's own errors name no link
            first = e.args[0][0] if isinstance(e, shutil.Error) and e.args and e.args[0] else None
            why = f"cannot copy {first[0]} ({first[2]})" if first else "a symbolic link in it loops"
            raise OSError(f"encoder.path {cfg.encoder.path}: {why}: export copies the encoder's files, "
                          "and links that loop or lead out of the directory cannot be copied") from None
        exported = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, path=LLM_DIR, lora=None),
                                       encoder=dataclasses.replace(cfg.encoder, path=ENCODER_DIR),
                                       data=dataclasses.replace(cfg.data, train=[], valid=[]))
        (tmp / MODEL_DIR).mkdir()
        write_model(tmp / MODEL_DIR, model.trainable_state_dict(), exported,
                    (ckpt / MODEL_DIR / PROMPTS).read_text(encoding="utf-8"),
                    trained_vocab(ckpt) or vocab_digest(encoder_tokenizer(cfg)), llm_digest(tmp / LLM_DIR),
                    None if merged else base_llm(ckpt, cfg), step=checkpoint_step(ckpt))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
