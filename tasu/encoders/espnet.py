"""ESPnet2 ASR models with a CTC branch as frozen CTC encoders.

The directory is an ESPnet2 experiment (``exp/asr_*``) or an unpacked model-zoo archive::

    config.yaml   the training config ESPnet writes: token_list, token_type, bpemodel, frontend,
                  normalize (+ stats_file), encoder, ctc_conf, model_conf, ...
    *.pth         the model's state dict: valid.acc.ave.pth (what ESPnet's recipes decode with),
                  or valid.acc.best.pth, valid.loss.ave.pth, ..., or the only .pth besides
                  checkpoint.pth (which holds the optimizer too)

Posteriors are the model's CTC softmax over its token list (blank = 0, as ESPnet's CTC has it) after
its own front-end, normalisation and encoder (``ESPnetASRModel.encode``), so the features are the
waveform itself and ``encode`` makes the frames, as in ESPnet's ``Speech2Text``.

Paths inside config.yaml (the BPE model, the token list when it is a file, the normalisation
statistics) are relative to the recipe directory that trained the model; they are looked up by file
name in the model directory (a copy holds them there), then under the model directory and its two
parents (``<recipe>/exp/asr_x``, or ``<archive>/exp/asr_x`` for a model-zoo archive); an absolute
path also as written. A relative one is never looked up in the current directory, where it would
name another model's file.

The tokenizer needs only config.yaml, the token list and the BPE model (read with sentencepiece), so
the text-only stage runs without espnet. Loading the model imports espnet, which lives in its own
environment (espnet needs torchaudio, which cannot load beside every torch build):
``tools/setup.sh --with espnet`` makes ``tools/espnet-venv``, whose ``tasu dump-posteriors`` writes
the posterior dumps that the main environment trains and decodes from.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Sequence

import torch

from tasu.config import read_mapping
from tasu.encoders.base import CTCEncoder, EncoderTokenizer, copy_flat, require_16k
from tasu.encoders.layout import require
from tasu.encoders.registry import register
from tasu.encoders.tokenizers import vocabulary_case
from tasu.weights import ModelFilesError, load_into, load_state_file

# In the order ESPnet's recipes prefer them for decoding.
MODEL_FILES = ("valid.acc.ave.pth", "valid.acc.best.pth", "valid.loss.ave.pth", "valid.loss.best.pth")
TOKEN_TYPES = ("bpe", "char", "word")
SPECIAL = ("<blank>", "<unk>", "<sos/eos>")


class ESPnetDir:
    """An ESPnet2 ASR model directory: its config, and the files the config names, found."""

    def __init__(self, path: str | Path):
        self.root = Path(path)
        self.config = read_mapping(require(self.root / "config.yaml", "ESPnet config"))
        if "token_list" not in self.config:
            raise ModelFilesError(f"{self.root}/config.yaml has no token_list: not an ESPnet2 ASR config")

    def find(self, key: str, value: str) -> Path:
        """The file ``value`` (the config's ``key``), relative to the recipe that wrote the config."""
        written = Path(value)
        # The model's own directory first: a copy (``tasu export``) holds the files beside config.yaml,
        # and a path as written may name another model's file when run from inside another recipe.
        candidates = [self.root / written.name]
        if written.is_absolute():
            candidates.append(written)
        else:   # never the current directory: there it names whatever model's file the caller stands beside
            candidates += [self.root / written, self.root.parent / written, self.root.parent.parent / written]
        for c in candidates:
            if c.is_file():
                return c
        raise FileNotFoundError(f"{self.root}/config.yaml: {key} {value} not found (looked in {self.root}, "
                                f"and its two parents)")

    @property
    def token_list(self) -> list[str]:
        tokens = self.config["token_list"]
        if isinstance(tokens, str):   # a file of tokens, one a line
            with open(self.find("token_list", tokens), encoding="utf-8") as f:
                tokens = [line.rstrip("\n") for line in f if line.strip()]
        if not isinstance(tokens, list) or len(tokens) < 2:
            raise ModelFilesError(f"{self.root}/config.yaml: token_list must list the model's tokens")
        return [str(t) for t in tokens]

    @property
    def bpe_model(self) -> Path | None:
        name = self.config.get("bpemodel")
        return self.find("bpemodel", name) if name else None

    @property
    def model_file(self) -> Path:
        """The state dict to load: the first of MODEL_FILES present, else the only other .pth."""
        for name in MODEL_FILES:
            if (self.root / name).is_file():
                return self.root / name
        found = sorted(p for p in self.root.glob("*.pth") if p.name != "checkpoint.pth")
        if len(found) == 1:
            return found[0]
        raise FileNotFoundError(
            f"{self.root}: which model file? expected one of {', '.join(MODEL_FILES)} or a single other .pth "
            f"(checkpoint.pth is not a model file), found {[p.name for p in found]}")

    @property
    def sample_rate(self) -> int:
        """The rate of the audio the model's front-end was trained on (ESPnet's default: 16 kHz)."""
        return _sample_rate((self.config.get("frontend_conf") or {}).get("fs", 16000), f"{self.root}/config.yaml")

    def require_16k(self) -> None:
        """Refuse a model of another rate: tasu's audio is 16 kHz (see :func:`require_16k`)."""
        require_16k(self.sample_rate, f"{self.root}/config.yaml (frontend_conf.fs)")

    @property
    def stats_file(self) -> Path | None:
        """The feature statistics global_mvn normalises with (other normalisations read no file)."""
        stats = (self.config.get("normalize_conf") or {}).get("stats_file")
        if self.config.get("normalize") != "global_mvn" or not stats:
            return None
        return self.find("normalize_conf.stats_file", stats)

    def files(self) -> list[Path]:
        """Every file the model is made from (what a posterior dump's identity hashes)."""
        token_file = self.config["token_list"]
        named = [self.bpe_model, self.find("token_list", token_file) if isinstance(token_file, str) else None,
                 self.stats_file]
        return [self.root / "config.yaml", self.model_file, *(p for p in named if p is not None)]

    def resolved_config(self) -> dict:
        """config.yaml with the files it names made findable from anywhere (absolute paths)."""
        config = dict(self.config, token_list=self.token_list)
        if self.bpe_model is not None:
            config["bpemodel"] = str(self.bpe_model.resolve())
        if self.stats_file is not None:
            config["normalize_conf"] = {**config["normalize_conf"], "stats_file": str(self.stats_file.resolve())}
        return config


class ESPnetTokenizer(EncoderTokenizer):
    """The model's token list, with its ``token_type``'s splitting (bpe, char or word).

    Ids are positions in the token list, which are the CTC head's outputs; ``<blank>`` (id 0),
    ``<unk>`` and ``<sos/eos>`` are never labels, and text the list cannot spell is dropped, as the
    other tokenizers do. Case: when every letter in the list (control tokens such as ``<space>``
    aside) has one case (ESPnet's LibriSpeech models are upper-case), text is mapped to that case
    first. ESPnet's text ``cleaner`` is not applied: recipes normalise transcripts themselves.
    """

    blank_id = 0

    def __init__(self, token_list: Sequence[str], token_type: str, bpe_model: str | Path | None = None,
                 where: str = "ESPnet model"):
        if token_type not in TOKEN_TYPES:
            raise ModelFilesError(f"{where}: token_type {token_type!r} is not one tasu reads "
                                  f"({', '.join(TOKEN_TYPES)}; phoneme token lists need ESPnet's g2p)")
        if token_type == "bpe" and bpe_model is None:
            raise ModelFilesError(f"{where}: token_type bpe without a bpemodel")
        self.token_list = list(token_list)
        self.token_type = token_type
        self.bpe_model = None if bpe_model is None else Path(bpe_model)
        self.vocab_size = len(self.token_list)
        self._index = {t: i for i, t in enumerate(self.token_list)}
        self._not_labels = {self.blank_id} | {self._index[t] for t in SPECIAL if t in self._index}
        # Control tokens (<blank>, <unk>, <space>, <sos/eos>, <noise>...) are lower-case words that say
        # nothing about the case of the units: an upper-case char list holds <space>.
        self._case = vocabulary_case(t for t in self.token_list if not _is_control(t))
        self._sp = None
        if token_type == "bpe":
            import sentencepiece as spm
            self._sp = spm.SentencePieceProcessor(model_file=str(self.bpe_model))

    @classmethod
    def from_dir(cls, d: ESPnetDir) -> "ESPnetTokenizer":
        return cls(d.token_list, d.config.get("token_type", "bpe"), d.bpe_model, where=f"{d.root}/config.yaml")

    def pieces(self, text: str) -> list[str]:
        text = " ".join(text.split())
        if self._case is not None:
            text = self._case(text)
        if self.token_type == "bpe":
            return self._sp.encode(text, out_type=str)
        if self.token_type == "char":
            return ["<space>" if c == " " else c for c in text]
        return text.split()

    def encode(self, text: str) -> list[int]:
        ids = (self._index.get(p) for p in self.pieces(text))
        return [i for i in ids if i is not None and i not in self._not_labels]

    def id_to_piece(self, i: int) -> str:
        return self.token_list[int(i)]

    def decode(self, ids: Sequence[int]) -> str:
        pieces = [self.token_list[int(i)] for i in ids if int(i) not in self._not_labels]
        if self.token_type == "bpe":
            return self._sp.decode_pieces(pieces)
        if self.token_type == "char":
            return "".join(" " if p == "<space>" else p for p in pieces).strip()
        return " ".join(pieces)

    def __getstate__(self):  # picklable for data-loader workers: reload the BPE model from its file
        return {"token_list": self.token_list, "token_type": self.token_type, "bpe_model": self.bpe_model}

    def __setstate__(self, state):
        self.__init__(state["token_list"], state["token_type"], state["bpe_model"])


def _is_control(token: str) -> bool:
    return len(token) > 2 and token.startswith("<") and token.endswith(">")


def _sample_rate(fs, where: str) -> int:
    """ESPnet writes the front-end's rate as 16000 or "16k"."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kK]?)\s*", str(fs))
    if not match:
        raise ModelFilesError(f"{where}: frontend_conf.fs {fs!r} is not a sample rate")
    return int(float(match.group(1)) * (1000 if match.group(2) else 1))


@register("espnet")
class ESPnetCTCEncoder(CTCEncoder):
    """An ``ESPnetASRModel``'s front-end, normalisation, encoder and CTC head."""

    files = "config.yaml (ESPnet2 ASR: token_list, ctc_conf) + valid.acc.ave.pth (or another model .pth)"
    environment = "espnet-venv"

    @classmethod
    def recognises(cls, root: Path) -> bool:
        if not (root / "config.yaml").is_file():
            return False
        config = read_mapping(root / "config.yaml")
        return "token_list" in config and "ctc_conf" in config

    @classmethod
    def load_tokenizer(cls, root: Path) -> ESPnetTokenizer:
        d = ESPnetDir(root)
        d.require_16k()   # config.yaml is read anyway: a text-only model for an unusable encoder is refused now
        return ESPnetTokenizer.from_dir(d)

    @classmethod
    def model_files(cls, root: Path) -> list[Path]:
        return ESPnetDir(root).files()

    @classmethod
    def copy_model(cls, root: Path, dest: Path) -> None:
        """config.yaml and the files it names, side by side: not the checkpoints, logs and decodes of the
        experiment, nor the recipe around it. config.yaml's paths are kept as written (the copy hashes as
        the original, so posterior dumps of one serve the other); they are found by file name."""
        copy_flat(cls.model_files(root), dest)

    def __init__(self, model, tokenizer: ESPnetTokenizer, where: str = "ESPnet model"):
        super().__init__()
        if getattr(model, "ctc", None) is None:
            raise ModelFilesError(f"{where}: the model has no CTC branch (ctc_weight 0): tasu needs CTC posteriors")
        outputs = model.ctc.ctc_lo.out_features
        if outputs != tokenizer.vocab_size:
            raise ModelFilesError(f"{where}: the CTC head has {outputs} outputs but token_list has "
                                  f"{tokenizer.vocab_size} tokens")
        if getattr(model, "frontend", None) is None:
            raise ModelFilesError(f"{where}: frontend null: the model reads features extracted outside it; "
                                  "tasu feeds it waveforms")
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_dir(cls, path: str | Path, device: str | torch.device = "cpu") -> "ESPnetCTCEncoder":
        d = ESPnetDir(path)
        where = f"{d.root}/config.yaml"
        d.require_16k()
        try:
            from espnet2.tasks.asr import ASRTask
        except ImportError as e:
            raise RuntimeError(
                f"{d.root} is an ESPnet model and this Python has no espnet ({e}); espnet lives in its own "
                "environment: make it with tools/setup.sh --with espnet, run tasu dump-posteriors with "
                "tools/espnet-venv/bin/tasu, and train and decode from the dumps (recipes do this with "
                "--posterior_dumps true)") from None
        config = d.resolved_config()
        tokenizer = ESPnetTokenizer(config["token_list"], config.get("token_type", "bpe"),
                                    config.get("bpemodel"), where=where)
        model = ASRTask.build_model(argparse.Namespace(**config))
        load_into(model, load_state_file(d.model_file), d.model_file)
        encoder = cls(model, tokenizer, where=where)
        return encoder.to(device).eval().requires_grad_(False)

    def extract_features(self, waveforms: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms -> zero-padded samples [B, S] and lengths [B]: the model's front-end makes frames."""
        waves = [torch.as_tensor(w, dtype=torch.float32).reshape(-1) for w in waveforms]
        lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
        return torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, feat_lengths = feats.to(self.device), feat_lengths.to(self.device)
        out, out_lengths = self.model.encode(feats, feat_lengths)
        if isinstance(out, tuple):   # intermediate CTC: (final output, intermediate outputs)
            out = out[0]
        return self.model.ctc.log_softmax(out).float(), out_lengths.to(torch.long)
