"""funasr's classes, imported without running funasr's package ``__init__`` when tasu's programs ask.

``from funasr.models.ctc.ctc import CTC`` first runs ``funasr/__init__.py``, which imports every one
of funasr's ~400 submodules to fill the registry its ``AutoModel`` builds models from. That is most
of the start-up of each process that computes fbank features or builds a small CTC encoder (the
posterior dumps, audio training, decoding audio), while the few classes tasu builds directly need
none of it (``bench/startup.py`` prints the ratio).

tasu's own programs (the ``tasu`` command, the recipes' training scripts) call
:func:`use_lean_import`. From then on :func:`funasr_class` imports only the module that defines the
class (and what that module imports), with ``funasr`` in ``sys.modules`` as a package whose
``__init__`` has not run. The first use of anything else of the package (``funasr.AutoModel``,
``from funasr import ...``, ``funasr.__version__``) or a call of :func:`full_funasr` runs funasr's
own ``__init__`` in that same module object, so every module imported lean stays what a plain import
gives, and the registry is then complete. :class:`tasu.encoders.sensevoice.SenseVoiceEncoder` calls
:func:`full_funasr`: SenseVoiceSmall finds its parts by registry name. A library that imports tasu
gets funasr's plain import unless it opts in.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import sys
from types import ModuleType

_lean = False


def use_lean_import(enabled: bool = True) -> None:
    """Import funasr's classes lean in this process (see the module doc); for programs, not libraries."""
    global _lean
    _lean = enabled


def funasr_class(module: str, name: str) -> type:
    """``from <module> import <name>``, a funasr module: lean after :func:`use_lean_import`."""
    if _lean and "funasr" not in sys.modules:
        _install_uninitialised_package()
    with _root_logging_kept():
        return getattr(importlib.import_module(module), name)


def full_funasr() -> ModuleType:
    """funasr as its own import makes it (every submodule, the registry complete), whatever came before."""
    package = sys.modules.get("funasr")
    with _root_logging_kept():
        if package is not None and package.__dict__.get("__getattr__") is _initialise_then_get:  # not yet run
            del package.__getattr__
            try:
                package.__spec__.loader.exec_module(package)
            except BaseException:
                del sys.modules["funasr"]  # as a failed import leaves it: the next import starts again
                raise
        return importlib.import_module("funasr")


@contextlib.contextmanager
def _root_logging_kept():
    """funasr's ``__init__`` (one of its submodules) calls ``logging.basicConfig(level=INFO)``: the root
    logger then printed every library's INFO messages, and kept a handler on the stderr of the command that
    loaded the encoder, where a later command's warnings went (the Python API, a notebook). Its level and
    handlers are put back."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def _install_uninitialised_package() -> None:
    spec = importlib.util.find_spec("funasr")
    if spec is None:
        raise ModuleNotFoundError("No module named 'funasr'", name="funasr")
    package = importlib.util.module_from_spec(spec)  # __path__ and __spec__ set, __init__ not run
    package.__getattr__ = _initialise_then_get  # a module __getattr__ (PEP 562): what the package lacks
    sys.modules["funasr"] = package


def _initialise_then_get(name: str):
    return getattr(full_funasr(), name)
