"""LayerNorm(V) followed by Linear(V, H), computed from sparse posterior rows without V-wide rows.

Why: the first layer of the TASU projector reads rows of V = 25,055 entries, yet a simulated row is a
smoothed one-hot, ``floor`` everywhere plus ``w`` at one id, and a real compressed row has a few
explicit entries. Materialising those rows and multiplying them densely costs B*T*V*H per step
three times (forward, input and weight gradients); this module computes the same numbers exactly
from the K explicit entries and a handful of V- and H-sized vectors.

The math, for one row x = f*1 + sum_k w_k e_{i_k} (ids may repeat; c_v = sum of the w_k at id v):

    mean   mu    = f + S/V                      S = sum_k w_k
    var    s2    = Q/V - (S/V)^2                Q = sum_v c_v^2   (duplicates merged before squaring)
    rstd         = 1 / sqrt(s2 + eps)
    LN(x)_v      = a*gamma_v + beta_v + rstd*c_v*gamma_v,   a = (f - mu)*rstd = -(S/V)*rstd
    y = W LN(x) + b = a*(W gamma) + (W beta + b) + sum_k p_k W[:, i_k],   p_k = rstd*w_k*gamma_{i_k}

The floor f cancels (LayerNorm is shift-invariant), so it is not even read. The forward pass costs two
mat-vecs over W and a gather of K columns per row. The gradients, for upstream g_r per row r:

    db     = G                    G  = sum_r g_r
    dbeta  = W^T G
    dgamma = W^T Ga + sparse      Ga = sum_r a_r g_r;  sparse: rstd_r*w_rk*(g_r . W[:, i_rk]) at i_rk
    dW     = Ga (x) gamma + G (x) beta + sparse columns g_r*p_rk at column i_rk

dW is dense (the constant part of every row reaches every column), so writing it once is the floor
of any exact method. The passes over W are ``layernorm_linear_kernels``: on CPU, the forward pass
reads W once (its pair of mat-vecs and the gathered columns) and the backward pass reads it once
(the transposed pair) while writing dW with its N*K sparse columns; torch ops elsewhere. The
posteriors themselves get no gradient (they come from a frozen encoder or from simulation);
``layernorm_linear`` takes the dense path when they require one.
"""
from __future__ import annotations

import torch
from torch import nn

from tasu.posteriors import Posteriors
from tasu.projectors import layernorm_linear_kernels as kernels


def coalesced_sum_of_squares(ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_v c_v^2 per row, c_v = sum of ``weights`` whose ``ids`` equal v (ids [..., K] may repeat)."""
    if ids.shape[-1] == 1:
        return weights[..., 0] ** 2
    sorted_ids, order = ids.sort(dim=-1)
    w = weights.gather(-1, order)
    starts = torch.ones_like(sorted_ids, dtype=torch.bool)
    starts[..., 1:] = sorted_ids[..., 1:] != sorted_ids[..., :-1]
    run = starts.long().cumsum(-1) - 1  # index of the run of equal ids each entry belongs to
    c = torch.zeros_like(w).scatter_add_(-1, run, w)
    return (c * c).sum(-1)


class SparseLayerNormLinear(torch.autograd.Function):
    """Exact Linear(LayerNorm(rows)) for rows given as ids [N, K] and weights [N, K] (see module doc)."""

    @staticmethod
    def forward(ctx, ids, weights, gamma, beta, weight, bias, eps: float):
        n, k = ids.shape
        v = gamma.shape[0]
        # Row statistics in at least float32 (and float64 when either input is), whatever the
        # parameter dtype: they are a few numbers per row, and rstd scales everything.
        w = weights.to(torch.promote_types(torch.promote_types(weights.dtype, weight.dtype), torch.float32))
        s = w.sum(-1)
        var = (coalesced_sum_of_squares(ids, w) / v - (s / v) ** 2).clamp_min(0.0)
        rstd = (var + eps).rsqrt()
        a = (-(s / v) * rstd).to(weight.dtype)
        q = (rstd[:, None] * w).to(weight.dtype)          # rstd_r * w_rk
        p = q * gamma[ids]                                  # rstd_r * w_rk * gamma_{i_rk}

        # W gamma, W beta and the columns W[:, i_rk] as [N, K, H], in one pass over W.
        u, w_beta, cols = kernels.pair_matvec_and_gather(weight, gamma, beta, ids.reshape(-1))
        cols = cols.view(n, k, -1)
        out = torch.addr((w_beta + bias).expand(n, -1), a, u)    # a_r * W gamma + W beta + b
        for j in range(k):                                        # + sum_k p_rk * W[:, i_rk]
            out.addcmul_(p[:, j:j + 1], cols[:, j])
        ctx.save_for_backward(ids, a, q, p, cols, gamma, beta, weight)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        ids, a, q, p, cols, gamma, beta, weight = ctx.saved_tensors
        _, _, need_gamma, need_beta, need_weight, need_bias, _ = ctx.needs_input_grad
        g = g.contiguous()
        flat = ids.reshape(-1)
        big_g = g.sum(0)                                     # sum_r g_r
        g_a = torch.mv(g.t(), a)                             # sum_r a_r g_r
        sparse_cols = None
        if need_weight:
            sparse_cols = (p.unsqueeze(2) * g.unsqueeze(1)).reshape(-1, g.shape[1])   # [N*K, H]
        d_gamma, d_beta, d_weight = kernels.transposed_pair_and_weight_grad(   # W^T Ga, W^T G, dW
            weight, g_a, big_g, gamma, beta, flat, sparse_cols, pair=need_gamma or need_beta, grad=need_weight)
        if need_gamma:
            dots = (cols * g.unsqueeze(1)).sum(2)                  # g_r . W[:, i_rk]
            d_gamma.index_add_(0, flat, (q * dots).reshape(-1))
        return (None, None, d_gamma if need_gamma else None, d_beta if need_beta else None, d_weight,
                big_g if need_bias else None, None)


def layernorm_linear(post: Posteriors, ln: nn.LayerNorm, linear: nn.Linear, sparse: bool = True) -> torch.Tensor:
    """``linear(ln(post.to_dense()))`` as [B, T, out_features]; padding rows are all-zero rows.

    The sparse path (see the module doc) is taken when ``sparse`` is true, the rows have fewer
    explicit entries than the vocabulary (K < V) and the posteriors need no gradient; otherwise the
    rows are materialised and go through the modules themselves. Both paths give the same numbers,
    and the parameters are the modules' own, so a checkpoint does not depend on the path. The
    sparse path keeps a [N*K, out] gather of weight columns for the backward pass: with a large
    top-K (hundreds) on long batches, the dense path may be the cheaper one in memory.
    """
    needs_grad = post.weights.requires_grad or post.floor.requires_grad
    if not sparse or post.topk >= post.vocab_size or needs_grad:
        return linear(ln(post.to(dtype=linear.weight.dtype).to_dense()))
    b, t, k = post.ids.shape
    weights = (post.weights * post.mask()[:, :, None].to(post.weights.dtype)).reshape(b * t, k)
    out = SparseLayerNormLinear.apply(post.ids.reshape(b * t, k), weights, ln.weight, ln.bias,
                                      linear.weight, linear.bias, ln.eps)
    return out.view(b, t, -1)
