"""Encoder backends by name: each kind of encoder directory tasu reads is one class, one ``@register``.

    @register("my_ctc")
    class MyCTCEncoder(CTCEncoder):
        files = "config.json + weights.bin + tokens.txt"

        @classmethod
        def recognises(cls, root):                 # from small files: is this directory mine?
            return (root / "tokens.txt").is_file()

        @classmethod
        def load_tokenizer(cls, root):             # the text-only stage: no weights, no framework
            ...

        @classmethod
        def from_dir(cls, root, device="cpu", **options):   # imports its framework here, not above
            ...

A directory's backend is found from its files (:func:`detect`), never from its name; a config may
also name it (``encoder.type``). Backends are modules of ``tasu.encoders`` that register on import;
they import their frameworks (funasr, transformers' models) inside ``from_dir`` only, so finding a
backend and loading its tokenizer stay cheap.
"""
from __future__ import annotations

from pathlib import Path

from tasu.config import read_mapping
from tasu.encoders.base import CTCEncoder
from tasu.registry import Registry
from tasu.weights import ModelFilesError

ENCODERS = Registry("encoder type")
register = ENCODERS.register   # class decorator: @register("name")


def detect(path: str | Path) -> str:
    """The name of the one backend that recognises directory ``path``."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"encoder directory {root} does not exist")
    found = [name for name, cls in ENCODERS.items() if cls.recognises(root)]
    if len(found) == 1:
        return found[0]
    if found:
        raise ModelFilesError(f"{root} looks like several encoder kinds ({', '.join(found)}): "
                              "say which with encoder.type (tasu simulate: --encoder-type)")
    expected = "; ".join(f"{name}: {cls.files}" for name, cls in ENCODERS.items())
    named = ""
    if (root / "config.yaml").is_file():
        named = f"; its config.yaml names model {read_mapping(root / 'config.yaml').get('model')!r}"
    raise ModelFilesError(f"{root} matches no encoder layout tasu reads ({expected}){named}; "
                          f"found {sorted(p.name for p in root.iterdir())}")


def backend(path: str | Path, encoder_type: str = "auto") -> type[CTCEncoder]:
    """The backend for directory ``path``: ``encoder_type``, or the one detected when it is ``"auto"``."""
    if encoder_type == "auto":
        return ENCODERS[detect(path)]
    return ENCODERS.lookup(encoder_type)


def check_name(encoder_type: str) -> None:
    """A ValueError unless ``encoder_type`` is ``auto`` or a registered backend."""
    if encoder_type != "auto":
        ENCODERS.lookup(encoder_type)
