"""The three weight-wide passes of the sparse LayerNorm + Linear, with a CPU fast path.

Why: ``layernorm_linear``'s forward and backward touch the whole H x V weight in three places (a
pair of mat-vecs forward, a pair of transposed mat-vecs backward, the dense weight gradient). On
CPU these are memory-bound, and torch does each mat-vec and each rank-one update as its own pass
over 205 MB. ``layernorm_linear_kernels.c`` does each *pair* in one pass; on a 2-core machine the
three take ~21 ms instead of ~44 ms, most of what TASU's text-only step adds to plain fine-tuning.

The C file is compiled on first use with the system C compiler (``$CC``, else ``cc``; ~1 s) into
a cache keyed by its content (``$TASU_KERNEL_DIR``, else ``~/.cache/tasu/kernels``), and loaded
with ctypes. Without a compiler, on other devices or dtypes, or with ``TASU_CPU_KERNELS=0``, the
same functions run as torch ops; both give the same numbers to float rounding (tested).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".c")
FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")
_library: ctypes.CDLL | None = None
_tried = False
_torch_ops_only = False


def _cache_dir() -> Path:
    if os.environ.get("TASU_KERNEL_DIR"):
        return Path(os.environ["TASU_KERNEL_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tasu" / "kernels"


def _compile(compiler: str, target: Path) -> None:
    """Compile SOURCE into ``target`` atomically (concurrent ranks each write their own temp file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], check=True, capture_output=True, text=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load() -> ctypes.CDLL | None:
    """The compiled kernels, compiling them if needed; None (and one warning) when that fails."""
    global _library, _tried
    if _tried:
        return _library
    _tried = True
    if os.environ.get("TASU_CPU_KERNELS", "1") == "0":
        return None
    compiler = os.environ.get("CC", "cc")
    key = hashlib.sha256(SOURCE.read_bytes() + repr((compiler, FLAGS, platform.machine())).encode()).hexdigest()[:16]
    target = _cache_dir() / f"layernorm_linear_{key}.so"
    try:
        if not target.exists():
            _compile(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        log.warning("CPU kernels of the sparse projector not built (%s); using torch ops, which are "
                    "slower on CPU. %s", compiler, detail.strip()[-500:])
        return None
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.pair_matvec_and_gather.argtypes = [p, i64, i64, p, p, p, p, p, i64, p, c_int]
    lib.pair_matvec_transposed.argtypes = [p, i64, i64, p, p, p, p, c_int]
    lib.rank_two_plus_columns.argtypes = [p, i64, i64, p, p, p, p, p, i64, p, c_int]
    for fn in (lib.pair_matvec_and_gather, lib.pair_matvec_transposed, lib.rank_two_plus_columns):
        fn.restype = None
    _library = lib
    return lib


@contextlib.contextmanager
def torch_ops_only():
    """Inside this block the torch-op twins run even where the kernels would (for comparisons)."""
    global _torch_ops_only
    before, _torch_ops_only = _torch_ops_only, True
    try:
        yield
    finally:
        _torch_ops_only = before


def _native(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The library when every tensor is contiguous on CPU and float32 (ids: int64), else None."""
    if _torch_ops_only:
        return None
    for t in tensors:
        if t.device.type != "cpu" or not t.is_contiguous() or t.dtype not in (torch.float32, torch.int64):
            return None
    return load()


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def pair_matvec_and_gather(weight, x1, x2, ids):
    """(W x1, W x2, W[:, ids].T as [len(ids), H]) for W = ``weight`` [H, V]."""
    h, v = weight.shape
    lib = _native(weight, x1, x2, ids)
    if lib is None:
        return torch.mv(weight, x1), torch.mv(weight, x2), weight.index_select(1, ids).t().contiguous()
    u1, u2 = weight.new_empty(h), weight.new_empty(h)
    cols = weight.new_empty(ids.numel(), h)
    lib.pair_matvec_and_gather(_ptr(weight), h, v, _ptr(x1), _ptr(x2), _ptr(u1), _ptr(u2),
                               _ptr(ids), ids.numel(), _ptr(cols), torch.get_num_threads())
    return u1, u2, cols


def pair_matvec_transposed(weight, y1, y2):
    """(W^T y1, W^T y2) for W = ``weight`` [H, V]."""
    h, v = weight.shape
    lib = _native(weight, y1, y2)
    if lib is None:
        return torch.mv(weight.t(), y1), torch.mv(weight.t(), y2)
    z1, z2 = weight.new_empty(v), weight.new_empty(v)
    lib.pair_matvec_transposed(_ptr(weight), h, v, _ptr(y1), _ptr(y2), _ptr(z1), _ptr(z2), torch.get_num_threads())
    return z1, z2


def rank_two_plus_columns(a, gamma, c, beta, ids, cols):
    """outer(a, gamma) + outer(c, beta), plus ``cols`` [len(ids), H] added at columns ``ids``."""
    h, v = a.shape[0], gamma.shape[0]
    lib = _native(a, gamma, c, beta, ids, cols)
    if lib is None:
        out = torch.outer(a, gamma).addr_(c, beta)
        return out.index_add_(1, ids, cols.t())
    out = a.new_empty(h, v)
    lib.rank_two_plus_columns(_ptr(out), h, v, _ptr(a), _ptr(gamma), _ptr(c), _ptr(beta),
                              _ptr(ids), ids.numel(), _ptr(cols), torch.get_num_threads())
    return out
