"""Speech encoders behind one interface, and their tokenizers loadable on their own.

    tokenizer = load_tokenizer("exp/SenseVoiceSmall")       # text-only stage: no weights, no funasr
    encoder = load_encoder("exp/SenseVoiceSmall", device="cuda")   # audio stage
    feats, lengths = encoder.extract_features(waveforms)
    log_probs, frame_lengths = encoder(feats.to("cuda"), lengths)

Each kind of encoder directory is a backend registered by name (:mod:`tasu.encoders.registry`):
``sensevoice`` (funasr's SenseVoiceSmall), ``small_ctc`` (tasu's small trainable encoder), ``hf_ctc``
(a Hugging Face ``*ForCTC`` model) and ``espnet`` (an ESPnet2 ASR model with a CTC branch, whose
weights load in espnet's own environment). A directory's backend is detected from its files.
Backends import their frameworks only when a model is loaded, so importing this package and
loading a tokenizer stay cheap.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch

from tasu.encoders import espnet, hf_ctc, sensevoice, small_ctc  # noqa: F401  (each registers its backend)
from tasu.encoders.base import CTCEncoder, EncoderTokenizer
from tasu.encoders.registry import ENCODERS, backend, detect, register
from tasu.encoders.tokenizers import train_sentencepiece

__all__ = ["CTCEncoder", "ENCODERS", "EncoderTokenizer", "check_options", "detect", "load_encoder", "load_tokenizer",
           "register", "train_sentencepiece"]


def load_tokenizer(path: str | Path, encoder_type: str = "auto") -> EncoderTokenizer:
    """The tokenizer of the encoder in directory ``path``, reading no weights.

    ``encoder_type``: ``"auto"`` (detect from the files) or a registered backend's name.
    """
    return backend(path, encoder_type).load_tokenizer(Path(path))


def load_encoder(path: str | Path, encoder_type: str = "auto", device: str | torch.device = "cpu",
                 **options) -> CTCEncoder:
    """The frozen encoder in directory ``path`` (eval mode, no gradients), on ``device``.

    ``options`` go to the backend's ``from_dir`` (an experiment's ``encoder.options``); only SenseVoice
    has any: ``language`` (default ``"auto"``) and ``text_norm`` (``"withitn"`` or ``"woitn"``, default
    ``"withitn"``), the values of its language and text-normalisation query embeddings.

    Torch's global random stream is left as it was: building the modules draws from it before the
    weights load over what was drawn, and what a caller draws next (a training's fresh projector, a
    notebook's own numbers) must not depend on whether, or which, encoder was loaded.
    """
    check_options(path, encoder_type, options)
    with torch.random.fork_rng(devices=[]):   # (every backend builds on the CPU, then moves to ``device``)
        return backend(path, encoder_type).from_dir(Path(path), device=device, **options)


def check_options(path: str | Path, encoder_type: str, options: dict) -> None:
    """A ValueError naming the options of ``options`` that the backend of ``path`` does not take, and
    those it takes; before a model is built, so a misspelt option costs no load."""
    name = detect(path) if encoder_type == "auto" else encoder_type
    params = list(inspect.signature(ENCODERS.lookup(name).from_dir).parameters.values())[1:]   # after the directory
    if any(p.kind is p.VAR_KEYWORD for p in params):   # it takes any option and checks its own
        return
    known = [p.name for p in params if p.name != "device"]
    unknown = sorted(set(map(str, options)) - set(known))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not an option of the {name} encoder "
                         f"(its options: {', '.join(known) or 'none'})")
