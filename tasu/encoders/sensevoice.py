"""SenseVoiceSmall (funasr) as a frozen CTC encoder, loaded offline from its released directory.

SenseVoice prepends four learned query embeddings to the LFR features before its encoder:
language, audio event, emotion and text normalisation, in that order (funasr's
``SenseVoiceSmall.inference``). The CTC head emits the rich-transcription tags (``<|en|>``,
``<|NEUTRAL|>``, ``<|Speech|>``, ``<|woitn|>``) on those four frames; they are not speech, so
:meth:`SenseVoiceEncoder.forward` cuts them off and returns one frame per LFR feature frame (60 ms).

The queries are the ones funasr's inference uses: event and emotion are always embedding rows 1 and
2; language defaults to ``"auto"`` (row 0) and text normalisation to ``"withitn"`` (row 14), because
the transcripts fed to the text-only simulation are normally cased and punctuated, and with ITN the
encoder's posteriors spell text the same way. (The original TASU code passed row 2, the emotion
query, in the text-norm slot; that is not reproduced.)

Blank: ``SenseVoiceSmall`` takes ``blank_id`` from ``model_conf`` with default 0, the released config
does not set it, and funasr's ``CTC`` uses ``torch.nn.CTCLoss()`` whose blank is 0; so blank = 0 =
the BPE model's ``<unk>`` slot. The head's size is the BPE piece count (funasr builds the model with
``vocab_size`` = the length of tokens.json / the SentencePiece model), ids map one to one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from tasu.encoders.base import CTCEncoder
from tasu.encoders.fbank import build_wav_frontend, wav_frontend_features
from tasu.encoders.layout import FunASRDir, funasr_model, load_weights
from tasu.encoders.registry import register
from tasu.encoders.tokenizers import SentencePieceTokenizer
from tasu.funasr_import import full_funasr, funasr_class

# config.yaml sections that are SenseVoiceSmall constructor arguments (funasr's AutoModel passes the
# whole merged config; the dataset/optimiser/training sections are irrelevant to the network).
_MODEL_SECTIONS = ("encoder", "encoder_conf", "ctc_conf", "normalize", "normalize_conf")


@register("sensevoice")
class SenseVoiceEncoder(CTCEncoder):
    """funasr's ``SenseVoiceSmall`` + ``WavFrontend``, giving CTC log-posteriors without the prefix."""

    prefix_frames = 4
    files = "config.yaml (model: SenseVoiceSmall) + model.pt + *.bpe.model + am.mvn"

    @classmethod
    def recognises(cls, root: Path) -> bool:
        return funasr_model(root) == "SenseVoiceSmall"

    @classmethod
    def load_tokenizer(cls, root: Path) -> SentencePieceTokenizer:
        FunASRDir(root).require_16k()   # a text-only model for an encoder tasu cannot feed is refused now
        return SentencePieceTokenizer.from_funasr_dir(root)

    def __init__(self, model: "SenseVoiceSmall", frontend, tokenizer: SentencePieceTokenizer,
                 language: str = "auto", text_norm: str = "withitn"):
        super().__init__()
        if language not in model.lid_dict:
            raise ValueError(f"language {language!r} is not one of {sorted(model.lid_dict)}")
        if text_norm not in model.textnorm_dict:
            raise ValueError(f"text_norm {text_norm!r} is not one of {sorted(model.textnorm_dict)}")
        self.model = model
        self.frontend = frontend
        self.tokenizer = tokenizer
        query_rows = [model.lid_dict[language], 1, 2, model.textnorm_dict[text_norm]]
        self.register_buffer("query_rows", torch.tensor(query_rows), persistent=False)

    @classmethod
    def from_dir(cls, path: str | Path, device: str | torch.device = "cpu", language: str = "auto",
                 text_norm: str = "withitn") -> "SenseVoiceEncoder":
        """Build the released model from its directory (see :mod:`tasu.encoders.layout`), offline.

        Mirrors what funasr's AutoModel does with a local directory, without its hub lookups:
        ``input_size`` from the frontend (80 x lfr_m), ``vocab_size`` from the tokenizer, the rest of
        the constructor arguments from ``model_conf`` and the encoder sections of config.yaml.
        """
        full_funasr()  # SenseVoiceSmall builds its encoder (and normalize) by registry name
        SenseVoiceSmall = funasr_class("funasr.models.sense_voice.model", "SenseVoiceSmall")

        d = FunASRDir(path)
        d.require_16k()
        tokenizer = SentencePieceTokenizer.from_funasr_dir(d.root)
        frontend = build_wav_frontend(d.section("frontend_conf"), d.cmvn_file)
        conf = dict(d.config.get("model_conf") or {})
        conf.update({k: d.config[k] for k in _MODEL_SECTIONS if k in d.config})
        conf.update(input_size=frontend.output_size(), vocab_size=tokenizer.vocab_size)
        model = SenseVoiceSmall(**conf)
        load_weights(model, d.weights)
        encoder = cls(model, frontend, tokenizer, language=language, text_norm=text_norm)
        return encoder.to(device).eval().requires_grad_(False)

    def extract_features(self, waveforms: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return wav_frontend_features(self.frontend, waveforms)

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LFR features [B, T, 560] -> log-posteriors [B, T, V] and lengths [B] (prefix removed)."""
        queries = self.model.embed(self.query_rows).expand(feats.shape[0], -1, -1)
        x = torch.cat([queries, feats.to(queries)], dim=1)
        lengths = feat_lengths.to(x.device) + self.prefix_frames
        out, out_lengths = self.model.encoder(x, lengths)
        log_probs = self.model.ctc.log_softmax(out[:, self.prefix_frames:])
        return log_probs, (out_lengths - self.prefix_frames).to(torch.long)
