"""Small C kernels for the CPU hot spots of the TASU core, compiled on first use, called via ctypes.

Why: a few steps of the core are memory-bound passes over V-wide data (V = 25,055) that torch does
as several passes, or gathers into temporaries first. Each such step has a short C twin next to
its module (``<module>.c``): plain C with OpenMP and no torch headers, so it compiles in about a
second with the system C compiler (``$CC``, else ``cc``) and needs nothing at install time. The
shared library is cached under ``$TASU_KERNEL_DIR`` (default ``~/.cache/tasu/kernels``), keyed by
the source's content. Every caller keeps the torch-op version of each kernel, which runs on GPUs
and NPUs, for other dtypes, without a compiler (after one warning) and with ``TASU_CPU_KERNELS=0``;
both give the same numbers (tested).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import subprocess
from pathlib import Path

import torch

from tasu.fileio import atomic_replace

log = logging.getLogger(__name__)

FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")
_torch_ops_only = False


def cache_dir() -> Path:
    if os.environ.get("TASU_KERNEL_DIR"):
        return Path(os.environ["TASU_KERNEL_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tasu" / "kernels"


@contextlib.contextmanager
def torch_ops_only():
    """Inside this block every caller runs its torch-op version (benchmarks compare the two)."""
    global _torch_ops_only
    before, _torch_ops_only = _torch_ops_only, True
    try:
        yield
    finally:
        _torch_ops_only = before


class Kernels:
    """The C functions of one source file, with their ctypes argument types (``i`` int64,
    ``f`` float, ``p`` pointer, ``t`` the thread count as a C int); compiled and loaded on first use."""

    _CTYPES = {"i": ctypes.c_int64, "f": ctypes.c_float, "p": ctypes.c_void_p, "t": ctypes.c_int}

    def __init__(self, source: Path, signatures: dict[str, str]):
        self.source = source
        self.signatures = signatures
        self._library: ctypes.CDLL | None = None
        self._tried = False

    def _compile(self, compiler: str, target: Path) -> None:
        """Write the library to ``target`` atomically: concurrent ranks each compile to a temp file."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_replace(target) as tmp:
            subprocess.run([compiler, *FLAGS, str(self.source), "-o", str(tmp)], check=True, capture_output=True,
                           text=True)

    def library(self) -> ctypes.CDLL | None:
        """The loaded library, compiling it if needed; None (after one warning) when that fails."""
        if self._tried:
            return self._library
        self._tried = True
        if os.environ.get("TASU_CPU_KERNELS", "1") == "0":
            return None
        compiler = os.environ.get("CC", "cc")
        key = repr((compiler, FLAGS, platform.machine())).encode() + self.source.read_bytes()
        target = cache_dir() / f"{self.source.stem}_{hashlib.sha256(key).hexdigest()[:16]}.so"
        try:
            if not target.exists():
                self._compile(compiler, target)
            lib = ctypes.CDLL(str(target))
        except (OSError, subprocess.CalledProcessError) as err:
            detail = (getattr(err, "stderr", "") or str(err)).strip()[-500:]
            log.warning("C kernels %s not built with %s; using torch ops, which are slower on CPU. %s",
                        self.source.name, compiler, detail)
            return None
        for name, signature in self.signatures.items():
            fn = getattr(lib, name)
            fn.argtypes = [self._CTYPES[c] for c in signature]
            fn.restype = None
        self._library = lib
        return lib

    def usable(self, *tensors: torch.Tensor) -> ctypes.CDLL | None:
        """The library when every tensor is contiguous on CPU and float32 or int64, else None."""
        if _torch_ops_only:
            return None
        for t in tensors:
            if t.device.type != "cpu" or not t.is_contiguous() or t.dtype not in (torch.float32, torch.int64):
                return None
        return self.library()
