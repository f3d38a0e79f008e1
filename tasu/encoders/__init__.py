"""Speech encoders behind one interface, and their tokenizers loadable on their own.

    tokenizer = load_tokenizer("exp/SenseVoiceSmall")       # text-only stage: no weights, no funasr
    encoder = load_encoder("exp/SenseVoiceSmall", device="cuda")   # audio stage
    feats, lengths = encoder.extract_features(waveforms)
    log_probs, frame_lengths = encoder(feats.to("cuda"), lengths)

The layout of a directory (``sensevoice``, ``small_ctc``, ``hf_ctc``; see
:mod:`tasu.encoders.layout`) is detected from its files. The encoder modules import funasr or
transformers' models at their top, so they are imported only inside :func:`load_encoder`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tasu.encoders.base import CTCEncoder, EncoderTokenizer
from tasu.encoders.layout import LAYOUTS, detect_layout, resolve_layout
from tasu.encoders.tokenizers import HFCTCTokenizer, SentencePieceTokenizer, train_sentencepiece

__all__ = ["CTCEncoder", "EncoderTokenizer", "LAYOUTS", "detect_layout", "load_encoder",
           "load_tokenizer", "train_sentencepiece"]


def load_tokenizer(path: str | Path, encoder_type: str = "auto") -> EncoderTokenizer:
    """The tokenizer of the encoder in directory ``path``, reading no weights.

    ``encoder_type``: ``"auto"`` (detect from the files) or one of :data:`LAYOUTS`.
    """
    if resolve_layout(path, encoder_type) == "hf_ctc":
        return HFCTCTokenizer.from_pretrained(path)
    return SentencePieceTokenizer.from_funasr_dir(path)


def load_encoder(path: str | Path, encoder_type: str = "auto", device: str | torch.device = "cpu",
                 **options) -> CTCEncoder:
    """The frozen encoder in directory ``path`` (eval mode, no gradients), on ``device``.

    ``options`` go to the layout's loader; only SenseVoice has any: ``language`` (default
    ``"auto"``) and ``text_norm`` (``"withitn"`` or ``"woitn"``, default ``"withitn"``), the values
    of its language and text-normalisation query embeddings.
    """
    layout = resolve_layout(path, encoder_type)
    if layout == "sensevoice":
        from tasu.encoders.sensevoice import SenseVoiceEncoder

        return SenseVoiceEncoder.from_dir(path, device=device, **options)
    if layout == "small_ctc":
        from tasu.encoders.small_ctc import SmallCTCEncoder

        return SmallCTCEncoder.from_dir(path, device=device, **options)
    from tasu.encoders.hf_ctc import HFCTCEncoder

    return HFCTCEncoder.from_pretrained(path, device=device, **options)
