"""The weight-wide passes of the sparse LayerNorm + Linear, with a CPU fast path.

Why: ``layernorm_linear``'s forward and backward touch the whole H x V weight in three places (a
pair of mat-vecs forward, a pair of transposed mat-vecs backward, the dense weight gradient). On
CPU these are memory-bound, and torch does each mat-vec and each rank-one update as its own pass
over 205 MB. ``layernorm_linear_kernels.c`` (see ``tasu.native``) reads W once in the forward pass
and once in the backward pass, which also writes the gradient, past the caches; on a 2-core
machine the sparse layer's forward and backward take ~12-17 ms instead of ~44-50 ms. Elsewhere
(GPUs, other dtypes, no C compiler) the same functions run as torch ops.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tasu.native import Kernels

KERNELS = Kernels(Path(__file__).with_suffix(".c"), {
    # W, H, V, x1, x2, u1, u2, ids, len(ids), cols, threads
    "pair_matvec_and_gather": "piipppppipt",
    # W, H, V, y1, y2, z1, z2, partials, dW, gamma, beta, ids, len(ids), cols, threads
    "transposed_pair_and_weight_grad": "piipppppppppipt",
})


def pair_matvec_and_gather(weight, x1, x2, ids):
    """(W x1, W x2, W[:, ids].T as [len(ids), H]) for W = ``weight`` [H, V]."""
    lib = KERNELS.usable(weight, x1, x2, ids)
    if lib is None:
        return torch.mv(weight, x1), torch.mv(weight, x2), weight.index_select(1, ids).t().contiguous()
    h, v = weight.shape
    u1, u2, cols = weight.new_empty(h), weight.new_empty(h), weight.new_empty(h, ids.numel())
    lib.pair_matvec_and_gather(weight.data_ptr(), h, v, x1.data_ptr(), x2.data_ptr(), u1.data_ptr(),
                               u2.data_ptr(), ids.data_ptr(), ids.numel(), cols.data_ptr(), torch.get_num_threads())
    return u1, u2, cols.t().contiguous()


def transposed_pair_and_weight_grad(weight, y1, y2, gamma, beta, ids, cols, pair: bool = True, grad: bool = True):
    """The backward pass over W = ``weight`` [H, V], in one read of W and one write of its gradient:

    - (W^T y1, W^T y2) when ``pair``, else (None, None);
    - outer(y1, gamma) + outer(y2, beta) with ``cols`` [len(ids), H] added at columns ``ids``
      (repeated ids add up) when ``grad``, else None.
    """
    if not (pair or grad):
        return None, None, None
    lib = KERNELS.usable(weight, y1, y2, gamma, beta, ids, *([cols] if grad else []))
    if lib is None:
        z1, z2 = (torch.mv(weight.t(), y1), torch.mv(weight.t(), y2)) if pair else (None, None)
        d_weight = torch.outer(y1, gamma).addr_(y2, beta).index_add_(1, ids, cols.t()) if grad else None
        return z1, z2, d_weight
    h, v = weight.shape
    threads = torch.get_num_threads()
    z1 = z2 = partials = d_weight = None
    if pair:
        z1, z2, partials = weight.new_empty(v), weight.new_empty(v), weight.new_empty(threads, 2, v)
    if grad:
        ids, order = ids.sort()
        cols = cols[order].t().contiguous()    # [H, len(ids)], in the order of the sorted ids
        d_weight = weight.new_empty(h, v)
    pointers = [None if t is None else t.data_ptr() for t in (z1, z2, partials, d_weight)]  # NULL: skip that part
    lib.transposed_pair_and_weight_grad(weight.data_ptr(), h, v, y1.data_ptr(), y2.data_ptr(), *pointers,
                                        gamma.data_ptr(), beta.data_ptr(), ids.data_ptr(), ids.numel(),
                                        cols.data_ptr() if grad else None, threads)
    return z1, z2, d_weight
