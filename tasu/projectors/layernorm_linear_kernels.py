"""The three weight-wide passes of the sparse LayerNorm + Linear, with a CPU fast path.

Why: ``layernorm_linear``'s forward and backward touch the whole H x V weight in three places (a
pair of mat-vecs forward, a pair of transposed mat-vecs backward, the dense weight gradient). On
CPU these are memory-bound, and torch does each mat-vec and each rank-one update as its own pass
over 205 MB. ``layernorm_linear_kernels.c`` does each *pair* in one pass (see ``tasu.native``); on
a 2-core machine the sparse layer's forward and backward take ~22 ms instead of ~49 ms. Elsewhere
(GPUs, other dtypes, no C compiler) the same functions run as torch ops.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tasu.native import Kernels

KERNELS = Kernels(Path(__file__).with_suffix(".c"), {
    "pair_matvec_and_gather": "piipppppipt",    # W, H, V, x1, x2, u1, u2, ids, len(ids), cols, threads
    "pair_matvec_transposed": "piippppt",       # W, H, V, y1, y2, z1, z2, threads
    "rank_two_plus_columns": "piipppppipt",     # dW, H, V, a, gamma, c, beta, ids, len(ids), cols, threads
})


def pair_matvec_and_gather(weight, x1, x2, ids):
    """(W x1, W x2, W[:, ids].T as [len(ids), H]) for W = ``weight`` [H, V]."""
    lib = KERNELS.usable(weight, x1, x2, ids)
    if lib is None:
        return torch.mv(weight, x1), torch.mv(weight, x2), weight.index_select(1, ids).t().contiguous()
    h, v = weight.shape
    u1, u2, cols = weight.new_empty(h), weight.new_empty(h), weight.new_empty(ids.numel(), h)
    lib.pair_matvec_and_gather(weight.data_ptr(), h, v, x1.data_ptr(), x2.data_ptr(), u1.data_ptr(),
                               u2.data_ptr(), ids.data_ptr(), ids.numel(), cols.data_ptr(), torch.get_num_threads())
    return u1, u2, cols


def pair_matvec_transposed(weight, y1, y2):
    """(W^T y1, W^T y2) for W = ``weight`` [H, V]."""
    lib = KERNELS.usable(weight, y1, y2)
    if lib is None:
        return torch.mv(weight.t(), y1), torch.mv(weight.t(), y2)
    h, v = weight.shape
    z1, z2 = weight.new_empty(v), weight.new_empty(v)
    lib.pair_matvec_transposed(weight.data_ptr(), h, v, y1.data_ptr(), y2.data_ptr(), z1.data_ptr(),
                               z2.data_ptr(), torch.get_num_threads())
    return z1, z2


def rank_two_plus_columns(a, gamma, c, beta, ids, cols):
    """outer(a, gamma) + outer(c, beta), plus ``cols`` [len(ids), H] added at columns ``ids``."""
    lib = KERNELS.usable(a, gamma, c, beta, ids, cols)
    if lib is None:
        return torch.outer(a, gamma).addr_(c, beta).index_add_(1, ids, cols.t())
    h, v = a.shape[0], gamma.shape[0]
    out = a.new_empty(h, v)
    lib.rank_two_plus_columns(out.data_ptr(), h, v, a.data_ptr(), gamma.data_ptr(), c.data_ptr(), beta.data_ptr(),
                              ids.data_ptr(), ids.numel(), cols.data_ptr(), torch.get_num_threads())
    return out
