"""Hugging Face CTC models (``Wav2Vec2ForCTC``, ``HubertForCTC``, ...) as frozen CTC encoders.

Loaded with ``AutoModelForCTC`` from a local ``save_pretrained`` directory. The frontend is the
model's ``Wav2Vec2FeatureExtractor``: features are the waveform itself, normalised per utterance to
zero mean and unit variance when the extractor says so, so ``extract_features`` returns [B, S]
samples rather than frames. Output frames are the convolutional feature encoder's (20 ms for
wav2vec2/HuBERT); blank is ``config.pad_token_id``, as in the models' own CTC loss.

Padding: models with group-norm feature encoders (``feat_extract_norm == "group"``, e.g.
wav2vec2-base) are used, as Hugging Face documents, without an attention mask on zero-padded input,
so a padded utterance's posteriors can differ slightly from the same utterance alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from tasu.encoders.base import CTCEncoder, ShortWaveformError, copy_flat, require_16k
from tasu.encoders.layout import require
from tasu.encoders.registry import register
from tasu.encoders.tokenizers import HFCTCTokenizer
from tasu.weights import ModelFilesError, from_pretrained


@register("hf_ctc")
class HFCTCEncoder(CTCEncoder):
    """A ``*ForCTC`` model with its feature extractor and CTC tokenizer."""

    files = "config.json + vocab.json + model.safetensors + preprocessor_config.json"

    @classmethod
    def recognises(cls, root: Path) -> bool:
        return (root / "config.json").is_file() and (root / "vocab.json").is_file()

    @classmethod
    def load_tokenizer(cls, root: Path) -> HFCTCTokenizer:
        return HFCTCTokenizer.from_pretrained(root)

    @classmethod
    def copy_model(cls, root: Path, dest: Path) -> None:
        """The directory's own files: ``from_pretrained`` reads no subdirectory, so a training run's
        ``checkpoint-*/`` folders (optimizer states) stay behind."""
        copy_flat(cls.model_files(root), dest)

    def __init__(self, model, feature_extractor, tokenizer: HFCTCTokenizer):
        super().__init__()
        if model.config.vocab_size != tokenizer.vocab_size:
            raise ModelFilesError(f"CTC head has {model.config.vocab_size} outputs, "
                                  f"tokenizer {tokenizer.vocab_size}")
        self.model = model
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self._use_attention_mask = bool(feature_extractor.return_attention_mask)
        self.min_samples = _receptive_field(model)

    @classmethod
    def from_dir(cls, path: str | Path, device: str | torch.device = "cpu") -> "HFCTCEncoder":
        from transformers import AutoFeatureExtractor, AutoModelForCTC

        root = Path(path)
        require(root / "preprocessor_config.json", "feature extractor config")
        tokenizer = HFCTCTokenizer.from_pretrained(root)
        feature_extractor = AutoFeatureExtractor.from_pretrained(str(root))
        require_16k(feature_extractor.sampling_rate, f"{root}/preprocessor_config.json (sampling_rate)")
        model = from_pretrained(AutoModelForCTC, root, "CTC encoder")
        return cls(model, feature_extractor, tokenizer).to(device).eval().requires_grad_(False)

    def extract_features(self, waveforms: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms -> normalised, zero-padded samples [B, S] and lengths [B].

        A waveform shorter than the convolutional front-end's receptive field gives no frame: alone it
        failed in torch, beside a longer one it was dumped with 0 frames; it is refused instead."""
        waves = [torch.as_tensor(w, dtype=torch.float32).reshape(-1) for w in waveforms]
        short = [i for i, w in enumerate(waves) if w.numel() < self.min_samples]
        if short:
            raise ShortWaveformError(short, [waves[i].numel() for i in short],
                                     f"shorter than the encoder's receptive field ({self.min_samples} samples, "
                                     f"{1000 * self.min_samples / self.sample_rate:.3g} ms): no frame")
        batch = self.feature_extractor(
            [w.numpy() for w in waves],
            sampling_rate=self.sample_rate, padding=True, return_attention_mask=True,
            return_tensors="pt")
        return batch["input_values"], batch["attention_mask"].sum(-1).to(torch.long)

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, feat_lengths = feats.to(self.device), feat_lengths.to(self.device)
        mask = None
        if self._use_attention_mask:
            mask = (torch.arange(feats.shape[1], device=self.device)[None, :] < feat_lengths[:, None]).long()
        logits = self.model(input_values=feats, attention_mask=mask).logits
        lengths = self.model._get_feat_extract_output_lengths(feat_lengths).to(torch.long)
        return logits.float().log_softmax(-1), lengths.clamp_max(logits.shape[1])


def _receptive_field(model) -> int:
    """The fewest samples that give ``model`` one output frame (400, 25 ms, for wav2vec2 and HuBERT)."""
    low, high = 1, CTCEncoder.sample_rate
    while low < high:   # the frame count grows with the samples: bisect for the first that gives one
        mid = (low + high) // 2
        if int(model._get_feat_extract_output_lengths(torch.tensor(mid))) >= 1:
            high = mid
        else:
            low = mid + 1
    return low
