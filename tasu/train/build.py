"""Build a speech LLM from an experiment config, fresh or from a checkpoint.

Shared by training and decoding, so both construct exactly the same model from the same config.
``audio=False`` builds the text-only model: the encoder's tokenizer is read for its vocabulary size,
its weights are not loaded, and funasr is not imported.
"""
from __future__ import annotations

from pathlib import Path

from tasu.data.prompts import PromptSet, load_prompts
from tasu.encoders import load_encoder, load_tokenizer
from tasu.llm import LoRA
from tasu.model import SpeechLLM
from tasu.train.checkpoint import (MODEL_DIR, PROMPTS, CheckpointError, check_fits, load_trainable, read_model_config,
                                   resolve_checkpoint)
from tasu.train.config import ExperimentConfig


def build_model(cfg: ExperimentConfig, audio: bool, device: str = "cpu") -> SpeechLLM:
    """The speech LLM the config describes, with an untrained projector (and LoRA adapters)."""
    if not cfg.encoder.path:
        raise ValueError("encoder.path is not set: the encoder directory (its tokenizer at least) is needed")
    if not cfg.llm.path:
        raise ValueError("llm.path is not set: the directory of a Hugging Face causal LM is needed")
    encoder = load_encoder(cfg.encoder.path, cfg.encoder.type, device=device) if audio else None
    vocab_size = (encoder.tokenizer if encoder is not None
                  else load_tokenizer(cfg.encoder.path, cfg.encoder.type)).vocab_size
    lora = None
    if cfg.llm.lora is not None:
        lo = cfg.llm.lora
        lora = LoRA(r=lo.r, alpha=lo.alpha, dropout=lo.dropout, target_modules=tuple(lo.target_modules))
    model = SpeechLLM.from_pretrained(cfg.llm.path, cfg.projector.name, vocab_size, lora=lora,
                                      projector_options=cfg.projector.options, dtype=cfg.llm.dtype,
                                      encoder=encoder)
    return model.to(device)


def load_trained(path: str | Path, which: str = "best", audio: bool = True, device: str = "cpu",
                 overrides: tuple[str, ...] | list[str] = ()) -> tuple[SpeechLLM, ExperimentConfig, PromptSet, Path]:
    """A trained model from an experiment dir or checkpoint dir: (model, config, prompts, checkpoint).

    ``overrides`` change the saved config before building, e.g. ``llm.path=...`` for base models
    that live elsewhere on this machine.
    """
    ckpt = resolve_checkpoint(path, which)
    cfg = read_model_config(ckpt, overrides)
    model = build_model(cfg, audio=audio, device=device)
    trained = load_trainable(ckpt)
    check_fits({name: p.shape for name, p in model.named_parameters()}, trained, ckpt)
    try:
        model.load_trainable_state_dict({k: v.to(device) for k, v in trained.items()})
    except KeyError as e:  # other names: another projector or LoRA layout than the config's
        raise CheckpointError(f"{ckpt}: {e.args[0]}: the config differs from the one it was trained with") from None
    prompts = load_prompts(ckpt / MODEL_DIR / PROMPTS)
    return model.eval(), cfg, prompts, ckpt
