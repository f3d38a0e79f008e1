"""Where the files of an encoder directory are, in the layouts of the built-in backends.

Each backend (``tasu.encoders.registry``) recognises its layout from these files, never from the
directory's name:

``sensevoice``  funasr's released SenseVoiceSmall::

    config.yaml           model: SenseVoiceSmall, encoder_conf, model_conf, frontend_conf, ...
    model.pt              state dict: embed.*, encoder.*, ctc.ctc_lo.*
    *.bpe.model           SentencePiece BPE (chn_jpn_yue_eng_ko_spectok.bpe.model), ids = CTC ids
    am.mvn                CMVN of the 560-dim LFR features (Kaldi nnet text format)
    tokens.json           optional: the piece list, checked against the BPE model
    configuration.json    optional: file_path_metas naming the BPE model and am.mvn

``small_ctc``  tasu's small trainable encoder, the same files with ``model: TasuSmallCTC``.

``hf_ctc``  a Hugging Face CTC model saved with ``save_pretrained``::

    config.json  model.safetensors  vocab.json  tokenizer_config.json  preprocessor_config.json

Nothing here imports funasr or transformers, and only :func:`load_weights` (called by the encoder
loaders) reads more than small text files, so the text-only stage can find and load a tokenizer
without paying for (or having) the encoder.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from tasu.config import read_mapping
from tasu.encoders.base import require_16k
from tasu.encoders.fbank import check_frontend_conf
from tasu.fileio import read_json
from tasu.weights import ModelFilesError, load_into, load_state_file


def funasr_model(root: Path) -> str | None:
    """The ``model:`` entry of ``root/config.yaml`` (what marks the funasr-style layouts), or None."""
    if not (root / "config.yaml").is_file():
        return None
    return read_mapping(root / "config.yaml").get("model")


_RELEASE_FILE = "a file of the model's release: copy it again"


def release_json(path: Path, kind: type[dict] | type[list]):
    """The JSON value (a ``kind``) of a model release's file ``path``, or one line naming the file."""
    return read_json(path, lambda value: isinstance(value, kind), f"a JSON {'object' if kind is dict else 'list'}",
                     remedy=_RELEASE_FILE)


def require(path: Path, what: str) -> Path:
    """``path`` itself, or a FileNotFoundError that says which file of which layout is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path.name} is missing from {path.parent}")
    return path


class FunASRDir:
    """A directory in funasr's released layout (SenseVoiceSmall, or tasu's small CTC encoder).

    funasr itself finds the BPE model and the CMVN file through ``configuration.json``'s
    ``file_path_metas`` (config.yaml holds ``bpemodel: null`` and ``cmvn_file: null``); this class
    does the same, and falls back to the conventional names when that file is absent.
    """

    def __init__(self, path: str | Path):
        self.root = Path(path)
        self.config = read_mapping(require(self.root / "config.yaml", "config file"))
        metas = {}
        if (self.root / "configuration.json").is_file():
            metas = read_json(self.root / "configuration.json",
                              lambda v: isinstance(v, dict) and isinstance(v.get("file_path_metas") or {}, dict),
                              "a JSON object whose file_path_metas is one", _RELEASE_FILE).get("file_path_metas") or {}
        self._metas = metas
        conf = self.config.get("model_conf")
        blank = conf.get("blank_id", 0) if isinstance(conf, dict) else 0
        if blank != 0:   # tasu's simulation, compression and CTC loss take id 0 as blank, as funasr's CTC loss does
            raise ModelFilesError(f"{self.root}/config.yaml: model_conf.blank_id is {blank!r}: tasu reads CTC "
                                  "models whose blank is id 0")
        if isinstance(self.config.get("frontend_conf"), dict):   # its absence is named where it is read
            check_frontend_conf(self.config["frontend_conf"], f"{self.root}/config.yaml")

    def section(self, name: str) -> dict:
        """The config's ``name`` section; its absence is named (a KeyError named no file)."""
        value = self.config.get(name)
        if not isinstance(value, dict):
            raise ModelFilesError(f"{self.root}/config.yaml: no {name} section (a mapping): not the config of a "
                                  f"{self.config.get('model', 'funasr')} release, or an edited one")
        return value

    @property
    def model(self) -> str:
        return self.config["model"]

    def require_16k(self) -> None:
        """Refuse a model whose front-end takes another rate than the 16 kHz tasu feeds (funasr's
        ``WavFrontend`` reads ``frontend_conf.fs``, 16000 when absent; see :func:`require_16k`)."""
        fs = (self.config.get("frontend_conf") or {}).get("fs", 16000)
        where = f"{self.root}/config.yaml (frontend_conf.fs)"
        if isinstance(fs, bool) or not isinstance(fs, (int, float)) or fs != int(fs):
            raise ModelFilesError(f"{where}: {fs!r} is not a sample rate in Hz")
        require_16k(int(fs), where)

    def _named(self, section: str, key: str) -> str | None:
        return (self._metas.get(section) or {}).get(key)

    @property
    def bpe_model(self) -> Path:
        """The SentencePiece model: from configuration.json, else the one ``*.bpe.model`` here."""
        name = self._named("tokenizer_conf", "bpemodel")
        if name is not None:
            return require(self.root / name, "BPE model")
        found = sorted(self.root.glob("*bpe.model"))
        if len(found) != 1:
            raise FileNotFoundError(f"expected one SentencePiece model *.bpe.model in {self.root}, "
                                    f"found {[p.name for p in found]}")
        return found[0]

    @property
    def cmvn_file(self) -> Path:
        return require(self.root / (self._named("frontend_conf", "cmvn_file") or "am.mvn"), "CMVN file")

    @property
    def weights(self) -> Path:
        return require(self.root / (self._metas.get("init_param") or "model.pt"), "weights file")

    @property
    def token_list(self) -> list[str] | None:
        """tokens.json when present (funasr sizes the CTC head by it), else None."""
        path = self.root / "tokens.json"
        if not path.is_file():
            return None
        return release_json(path, list)


def load_weights(module: nn.Module, path: Path) -> None:
    """Load a funasr ``model.pt`` into ``module``: every parameter must be there.

    funasr saves either a bare state dict or one wrapped under ``state_dict`` / ``model_state_dict``
    / ``model``. Extra entries are ignored, as funasr does; a missing one is an error (funasr only
    prints a warning and keeps the random initialisation). Read onto the CPU: the loaders move the
    whole encoder to its device afterwards.
    """
    state = load_state_file(path)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    load_into(module, state, path)


def write_configuration_json(root: Path, bpe_name: str) -> None:
    """The ``configuration.json`` funasr releases carry, naming the files config.yaml leaves null."""
    meta = {"framework": "pytorch", "task": "auto-speech-recognition", "model": {"type": "funasr"},
            "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                                "tokenizer_conf": {"bpemodel": bpe_name},
                                "frontend_conf": {"cmvn_file": "am.mvn"}}}
    with open(root / "configuration.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
