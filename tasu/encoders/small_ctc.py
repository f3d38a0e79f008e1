"""A small trainable CTC encoder for self-contained recipes: SenseVoice's architecture, shrunk.

funasr's ``SenseVoiceEncoderSmall`` (SANM self-attention blocks: attention plus an FSMN memory
convolution) on SenseVoice's LFR fbank frontend, with a plain CTC head over its own SentencePiece
vocabulary (:func:`tasu.encoders.tokenizers.train_sentencepiece`, blank = 0). There are no
language/event/emotion/text-norm queries: a model trained on one task has nothing to condition.

Why this shape: on 2 CPU cores a 6-layer, 192-wide transformer on 4 stacked fbank frames (40 ms per
frame) trains an epoch of 2,000 short utterances in about 20 s, while convolutional subsampling was
3x slower; LFR stacking is SenseVoice's own cheap subsampling, so the defaults stack 4 frames every
4 (``lfr_m = lfr_n = 4``) instead of SenseVoice's 7/6, which leaves room for character-sized units.

It is saved in SenseVoice's released layout (config.yaml with ``model: TasuSmallCTC``, model.pt keyed
``encoder.*`` / ``ctc.ctc_lo.*`` like SenseVoiceSmall's, bpe.model, tokens.json, am.mvn,
configuration.json), so ``tasu.encoders.load_encoder`` / ``load_tokenizer`` read it through the
same code as SenseVoiceSmall. The training loop belongs to the recipe; this module gives the model,
:meth:`SmallCTCEncoder.ctc_loss`, CMVN estimation and save/load.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
import yaml

from tasu.encoders.base import CTCEncoder
from tasu.encoders.fbank import build_wav_frontend, estimate_cmvn, wav_frontend_features, write_cmvn
from tasu.encoders.layout import FunASRDir, funasr_model, load_weights, write_configuration_json
from tasu.encoders.registry import register
from tasu.encoders.tokenizers import SentencePieceTokenizer
from tasu.fileio import atomic_files
from tasu.funasr_import import funasr_class
from tasu.weights import ModelFilesError

MODEL_NAME = "TasuSmallCTC"
BPE_FILE = "bpe.model"

DEFAULT_CONFIG = {
    "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                      "frame_shift": 10, "lfr_m": 4, "lfr_n": 4},
    "encoder_conf": {"output_size": 192, "attention_heads": 4, "linear_units": 768, "num_blocks": 6,
                     "tp_blocks": 0, "kernel_size": 11, "sanm_shfit": 0, "dropout_rate": 0.1,
                     "attention_dropout_rate": 0.0},
}


def merge_config(config: dict | None) -> dict:
    """:data:`DEFAULT_CONFIG` with the entries of ``config`` (section by section) replacing it."""
    merged = copy.deepcopy(DEFAULT_CONFIG)
    for section, values in (config or {}).items():
        if section not in merged:
            raise ValueError(f"unknown small CTC config section {section!r}; known: {sorted(merged)}")
        merged[section].update(values)
    return merged


@register("small_ctc")
class SmallCTCEncoder(CTCEncoder):
    """LFR fbank -> ``SenseVoiceEncoderSmall`` -> linear CTC head, trainable from scratch.

    Args:
        tokenizer: its SentencePiece vocabulary; the head has ``tokenizer.vocab_size`` outputs.
        config: overrides of :data:`DEFAULT_CONFIG`, e.g. ``{"encoder_conf": {"num_blocks": 4}}``.
        cmvn_file: an ``am.mvn`` to normalise features with; else call :meth:`fit_cmvn` before use.
    """

    files = "config.yaml (model: TasuSmallCTC) + model.pt + bpe.model + am.mvn"

    def __init__(self, tokenizer: SentencePieceTokenizer, config: dict | None = None,
                 cmvn_file: str | Path | None = None):
        CTC = funasr_class("funasr.models.ctc.ctc", "CTC")
        SenseVoiceEncoderSmall = funasr_class("funasr.models.sense_voice.model", "SenseVoiceEncoderSmall")

        super().__init__()
        self.config = merge_config(config)
        self.tokenizer = tokenizer
        self.frontend = build_wav_frontend(self.config["frontend_conf"], cmvn_file)
        self.encoder = SenseVoiceEncoderSmall(input_size=self.frontend.output_size(),
                                              **self.config["encoder_conf"])
        self.ctc = CTC(odim=tokenizer.vocab_size, encoder_output_size=self.encoder.output_size())

    @classmethod
    def recognises(cls, root: Path) -> bool:
        return funasr_model(root) == MODEL_NAME

    @classmethod
    def load_tokenizer(cls, root: Path) -> SentencePieceTokenizer:
        FunASRDir(root).require_16k()   # a text-only model for an encoder tasu cannot feed is refused now
        return SentencePieceTokenizer.from_funasr_dir(root)

    @classmethod
    def from_dir(cls, path: str | Path, device: str | torch.device = "cpu") -> "SmallCTCEncoder":
        """A saved encoder, frozen (eval mode, no gradients); ``.train()`` it to train on."""
        d = FunASRDir(path)
        d.require_16k()
        if d.model != MODEL_NAME:
            raise ModelFilesError(f"{d.root}/config.yaml holds model {d.model!r}, not {MODEL_NAME}")
        config = {k: {n: v for n, v in d.section(k).items() if n != "cmvn_file"} for k in DEFAULT_CONFIG}
        model = cls(SentencePieceTokenizer.from_funasr_dir(d.root), config, cmvn_file=d.cmvn_file)
        load_weights(model, d.weights)
        return model.to(device).eval().requires_grad_(False)

    @property
    def has_cmvn(self) -> bool:
        return self.frontend.cmvn is not None

    def fit_cmvn(self, waveforms: Sequence[torch.Tensor]) -> None:
        """Estimate the global feature mean and deviation from ``waveforms`` and use them from now on."""
        self.frontend.cmvn = None
        feats, lengths = wav_frontend_features(self.frontend, waveforms)
        self.frontend.cmvn = estimate_cmvn([feats[b, :n] for b, n in enumerate(lengths.tolist())])

    def extract_features(self, waveforms: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.has_cmvn:
            raise RuntimeError("the small CTC encoder has no CMVN yet: call fit_cmvn(waveforms) first")
        return wav_frontend_features(self.frontend, waveforms)

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LFR features [B, T, D] -> CTC log-posteriors [B, T, V] and lengths [B] (no subsampling)."""
        # SenseVoiceEncoderSmall scales its input in place; a copy keeps the caller's (possibly
        # cached, reused every epoch) features intact.
        feats = feats.to(self.device, copy=True)
        out, out_lengths = self.encoder(feats, feat_lengths.to(self.device))
        # The CTC head stays float32 under autocast (bf16 training): log-posteriors rounded to bf16
        # are off by ~1 %, and the loss sums them over every frame. The head is a small part of a step.
        with torch.autocast(self.device.type, enabled=False):
            return self.ctc.log_softmax(out.float()), out_lengths.to(torch.long)

    def ctc_loss(self, feats: torch.Tensor, feat_lengths: torch.Tensor, targets: torch.Tensor,
                 target_lengths: torch.Tensor, inter_weight: float = 0.0, inter_block: int = 3) -> torch.Tensor:
        """CTC loss: the negative log-likelihood of each utterance's labels, averaged over the batch.

        ``targets`` [B, L] are padded label ids (any padding value), ``target_lengths`` [B] their
        lengths. Impossible alignments (more labels than frames) give zero loss instead of inf.

        Intermediate CTC (Lee and Watanabe, 2021; ESPnet's ``interctc_weight``): with
        ``inter_weight`` w > 0, the output of block ``inter_block`` (counted from 1) goes through the
        final layer norm and the same CTC head, and the loss is (1 - w) x the final CTC loss + w x
        that one. The lower blocks learn to spell the units themselves; a training regulariser that
        adds no parameter and changes neither the saved model nor its decoding.
        """
        self.check_inter_ctc(inter_weight, inter_block)
        if not inter_weight:
            return self._ctc(*self(feats, feat_lengths), targets, target_lengths)
        captured = []
        hook = self.blocks[inter_block - 1].register_forward_hook(lambda block, args, out: captured.append(out[0]))
        try:
            log_probs, lengths = self(feats, feat_lengths)
        finally:
            hook.remove()
        hidden = self.encoder.after_norm(captured[0])
        with torch.autocast(self.device.type, enabled=False):  # the head in float32, as in forward
            inter_log_probs = self.ctc.log_softmax(hidden.float())
        return ((1 - inter_weight) * self._ctc(log_probs, lengths, targets, target_lengths)
                + inter_weight * self._ctc(inter_log_probs, lengths, targets, target_lengths))

    @property
    def blocks(self) -> list[torch.nn.Module]:
        """The encoder's SANM blocks in order (funasr keeps the first, of another input width, apart)."""
        return [*self.encoder.encoders0, *self.encoder.encoders]

    def check_inter_ctc(self, weight: float, block: int) -> None:
        """Refuse an intermediate CTC that cannot train: a weight of 1 or more leaves the final head
        untrained, and the last block's output is the final CTC's own. Weight 0 is none at all."""
        n = len(self.blocks)
        if weight and not (0 < weight < 1 and 1 <= block < n):
            raise ValueError(f"intermediate CTC weight {weight:g} at block {block}: the weight must lie in "
                             f"(0, 1) and the block in 1..{n - 1} (the encoder has {n} blocks)")

    def _ctc(self, log_probs: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor) -> torch.Tensor:
        loss = F.ctc_loss(log_probs.transpose(0, 1), targets.to(self.device), lengths,
                          target_lengths.to(self.device), blank=self.blank_id, reduction="sum",
                          zero_infinity=True)
        return loss / log_probs.shape[0]

    def save(self, path: str | Path) -> None:
        """Write the directory :meth:`from_dir` (and ``tasu.encoders.load_encoder``) reads."""
        if not self.has_cmvn:
            raise RuntimeError("fit_cmvn before saving: the saved encoder must normalise its features")
        config = {
            "model": MODEL_NAME,
            "model_conf": {"blank_id": self.blank_id},
            "encoder": "SenseVoiceEncoderSmall",
            "encoder_conf": self.config["encoder_conf"],
            "frontend": "WavFrontend",
            "frontend_conf": {**self.config["frontend_conf"], "cmvn_file": None},
            "tokenizer": "SentencepiecesTokenizer",
            "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>"},
        }
        with atomic_files(path) as root:   # a save killed half-way leaves the files it was replacing
            with open(root / "config.yaml", "w", encoding="utf-8") as f:
                yaml.safe_dump(config, f, sort_keys=False)
            torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, root / "model.pt")
            shutil.copyfile(self.tokenizer.model_file, root / BPE_FILE)
            with open(root / "tokens.json", "w", encoding="utf-8") as f:
                json.dump([self.tokenizer.sp.id_to_piece(i) for i in range(self.vocab_size)], f,
                          ensure_ascii=False)
            write_cmvn(root / "am.mvn", self.frontend.cmvn)
            write_configuration_json(root, BPE_FILE)
