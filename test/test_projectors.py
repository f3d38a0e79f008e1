"""Projectors: the registry, the exact sparse LayerNorm + Linear, and every projector on tiny sizes."""
from __future__ import annotations

import os
import re
import shutil

import pytest
import torch
from torch import nn

from tasu.posteriors import Posteriors
from tasu.projectors import DEFAULT_PROJECTOR, PROJECTORS, Projector, build_projector, register
from tasu.native import Kernels, torch_ops_only
from tasu.projectors import layernorm_linear_kernels as kernels
from tasu.projectors.layernorm_linear import coalesced_sum_of_squares, layernorm_linear

V = 61      # encoder vocabulary
D = 24      # LLM width
V_LLM = 40  # LLM vocabulary


def make_posteriors(k: int = 1, lengths=(5, 3, 1), vocab: int = V, seed: int = 0, dtype=torch.float32,
                    duplicates: bool = False) -> Posteriors:
    """Rows with a floor and K explicit entries; padding rows carry garbage, which must not matter."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    b, t = len(lengths), int(lengths.max())
    ids = torch.randint(0, vocab, (b, t, k), generator=gen)
    if duplicates:
        ids[:, :, -1] = ids[:, :, 0]
    weights = torch.rand(b, t, k, generator=gen, dtype=dtype)
    floor = torch.rand(b, t, generator=gen, dtype=dtype) * 0.1 / vocab
    return Posteriors(ids=ids, weights=weights, floor=floor, blank=torch.zeros(b, t, dtype=dtype),
                      lengths=lengths, vocab_size=vocab)


def trained_like(ln: nn.LayerNorm, seed: int = 1) -> None:
    """Non-trivial LayerNorm affine parameters, so that every gradient term is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.3 * torch.randn(ln.weight.shape, generator=gen))
        ln.bias.copy_(0.3 * torch.randn(ln.bias.shape, generator=gen))


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


def embedding(dtype=torch.float32) -> nn.Embedding:
    emb = nn.Embedding(V_LLM, D).to(dtype)
    emb.weight.requires_grad_(False)
    return emb


# --- the registry ---------------------------------------------------------------------------------

def test_registry_knows_every_family_and_the_default():
    assert {"linear-silu", "concat-mlp", "conv1d", "qformer", "cross-attention", "legoslm"} <= set(PROJECTORS)
    assert DEFAULT_PROJECTOR == "linear-silu"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown projector 'nope'.*linear-silu"):
        build_projector("nope", V, D)


def test_register_adds_a_projector_and_refuses_a_taken_name():
    @register("test-identity")
    class Identity(Projector):
        def forward(self, post):
            return post.to_dense(), post.lengths

    try:
        assert isinstance(build_projector("test-identity", V, D), Identity)
        with pytest.raises(ValueError, match="already taken"):
            register("test-identity")(Identity)
    finally:
        del PROJECTORS["test-identity"]


def test_projectors_reading_the_llm_table_require_it():
    with pytest.raises(ValueError, match="llm_embedding"):
        build_projector("legoslm", V, D)


# --- the exact sparse LayerNorm + Linear ---------------------------------------------------------

def run_layernorm_linear(post: Posteriors, sparse: bool, dtype) -> list[torch.Tensor]:
    torch.manual_seed(0)
    ln, linear = nn.LayerNorm(V).to(dtype), nn.Linear(V, 16).to(dtype)
    trained_like(ln)
    out = layernorm_linear(post, ln, linear, sparse=sparse)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=dtype))
    return [out.detach(), ln.weight.grad, ln.bias.grad, linear.weight.grad, linear.bias.grad]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k, duplicates", [(1, False), (4, False), (4, True)])
def test_sparse_layernorm_linear_equals_dense(k, duplicates, dtype):
    post = make_posteriors(k=k, duplicates=duplicates, dtype=dtype)
    sparse = run_layernorm_linear(post, True, dtype)
    dense = run_layernorm_linear(post, False, dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for name, s, d in zip(["output", "d_gamma", "d_beta", "d_weight", "d_bias"], sparse, dense):
        assert rel_diff(s, d) <= tol, name


def test_sparse_path_matches_simulated_rows_of_float32_posteriors_in_a_float64_module():
    # K = 1 smoothed one-hot rows, as simulation makes them; the module's dtype rules.
    post = make_posteriors(k=1, lengths=(4, 2))
    for s, d in zip(run_layernorm_linear(post, True, torch.float64), run_layernorm_linear(post, False, torch.float64)):
        assert s.dtype == torch.float64 and rel_diff(s, d) <= 1e-12


def test_padding_rows_do_not_matter():
    post = make_posteriors(k=2)
    other = make_posteriors(k=2, seed=5)
    mask = post.mask()
    mixed = Posteriors(ids=torch.where(mask[..., None], post.ids, other.ids),
                       weights=torch.where(mask[..., None], post.weights, other.weights),
                       floor=torch.where(mask, post.floor, other.floor), blank=post.blank, lengths=post.lengths,
                       vocab_size=V)
    for a, b in zip(run_layernorm_linear(post, True, torch.float64), run_layernorm_linear(mixed, True, torch.float64)):
        assert torch.allclose(a, b)


def test_coalesced_sum_of_squares_merges_repeated_ids():
    ids = torch.tensor([[3, 5, 3, 3], [1, 2, 3, 4]])
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    assert coalesced_sum_of_squares(ids, w).tolist() == [8.0 ** 2 + 2.0 ** 2, 30.0]


def test_dense_rows_and_rows_needing_gradients_take_the_dense_path():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, V, dtype=torch.float64), -1)
    full = Posteriors.from_dense(probs, torch.tensor([3, 2]))               # K == V
    ln, linear = nn.LayerNorm(V).double(), nn.Linear(V, 8).double()
    expected = linear(ln(full.to_dense()))
    assert torch.allclose(layernorm_linear(full, ln, linear), expected)

    post = make_posteriors(k=2, dtype=torch.float64)
    post.weights.requires_grad_(True)
    layernorm_linear(post, ln, linear).sum().backward()
    assert post.weights.grad is not None


# --- the CPU kernels of its passes over the weight -------------------------------------------------

@pytest.fixture
def fresh_kernels(monkeypatch, tmp_path):
    """The projector's kernels as in a new process, compiling into an empty cache."""
    monkeypatch.setenv("TASU_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(kernels, "KERNELS", Kernels(kernels.KERNELS.source, kernels.KERNELS.signatures))
    return tmp_path


def kernel_inputs(h: int = 18, v: int = 2501, n_ids: int = 40, seed: int = 0):
    """Sizes that leave a tail after every block of 4 rows, and rows (of 2,501 floats) that start at
    each of the 16 float offsets within a cache line; repeated ids, ids in a row's first and last line."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(h, v, generator=gen)
    ids = torch.randint(0, v, (n_ids,), generator=gen)
    ids[-5:] = ids[:5]
    if n_ids >= 14:
        ids[5:9] = torch.tensor([0, 3, v - 1, v - 5])
    vecs = [torch.randn(n, generator=gen) for n in (v, v, h, h)]
    return w, ids, vecs, torch.randn(n_ids, h, generator=gen)


def twin_outputs(w, ids, vecs, cols):
    x1, x2, y1, y2 = vecs
    return [*kernels.pair_matvec_and_gather(w, x1, x2, ids),
            *kernels.transposed_pair_and_weight_grad(w, y1, y2, x1, x2, ids, cols)]


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
@pytest.mark.parametrize("h, v, n_ids", [(18, 2501, 40), (5, 7, 3)], ids=["tails", "rows-shorter-than-a-line"])
def test_cpu_kernels_compile_once_and_equal_their_torch_twins(fresh_kernels, h, v, n_ids):
    w, ids, vecs, cols = kernel_inputs(h, v, n_ids)
    fast = twin_outputs(w, ids, vecs, cols)
    assert kernels.KERNELS.library() is not None and len(list(fresh_kernels.glob("*.so"))) == 1
    with torch_ops_only():
        slow = twin_outputs(w, ids, vecs, cols)
    x1, x2, y1, y2 = vecs
    expected = [w @ x1, w @ x2, w[:, ids].t(), w.t() @ y1, w.t() @ y2,
                torch.outer(y1, x1) + torch.outer(y2, x2) + torch.zeros_like(w).index_add_(1, ids, cols.t())]
    for f, s, e in zip(fast, slow, expected):
        assert f.shape == e.shape and rel_diff(f, e) <= 1e-6 and rel_diff(s, e) <= 1e-6


def test_backward_pass_computes_only_the_parts_asked_for(fresh_kernels):
    w, ids, vecs, cols = kernel_inputs()
    x1, x2, y1, y2 = vecs
    both = kernels.transposed_pair_and_weight_grad(w, y1, y2, x1, x2, ids, cols)
    z1, z2, none = kernels.transposed_pair_and_weight_grad(w, y1, y2, x1, x2, ids, None, grad=False)
    assert none is None and torch.equal(z1, both[0]) and torch.equal(z2, both[1])
    nothing, none, d_weight = kernels.transposed_pair_and_weight_grad(w, y1, y2, x1, x2, ids, cols, pair=False)
    assert nothing is None and none is None and torch.equal(d_weight, both[2])


def test_non_float32_or_strided_inputs_take_the_torch_ops(fresh_kernels):
    w, ids, vecs, cols = kernel_inputs(h=6, v=50, n_ids=4)
    x1, x2, y1, y2 = vecs
    for args in [(w.double(), x1.double(), x2.double(), ids), (w.t().contiguous().t(), x1, x2, ids)]:
        u1, u2, gathered = kernels.pair_matvec_and_gather(*args)
        assert rel_diff(u1, args[0] @ args[1]) <= 1e-6 and u1.dtype == args[0].dtype
    z1, _, d_weight = kernels.transposed_pair_and_weight_grad(w.double(), y1.double(), y2.double(), x1.double(),
                                                              x2.double(), ids, cols.double())
    assert z1.dtype == d_weight.dtype == torch.float64 and rel_diff(z1, w.double().t() @ y1.double()) <= 1e-12


# --- linear-silu -----------------------------------------------------------------------------------

def test_linear_silu_sparse_and_dense_agree_and_share_a_state_dict():
    post = make_posteriors(k=1, dtype=torch.float64)
    sparse = build_projector("linear-silu", V, D, hidden=32).double()
    trained_like(sparse.ln)
    dense = build_projector("linear-silu", V, D, hidden=32, sparse=False).double()
    dense.load_state_dict(sparse.state_dict())
    assert set(sparse.state_dict()) == {f"{m}.{p}" for m in ("ln", "linear1", "linear2") for p in ("weight", "bias")}
    outs = []
    for proj in (sparse, dense):
        out, lengths = proj(post)
        out.pow(2).sum().backward()
        outs.append([out] + [p.grad for p in proj.parameters()])
        assert lengths.tolist() == post.lengths.tolist()
        assert out.shape == (3, 5, D) and out[2, 1:].abs().max() == 0   # zero on padding
    for s, d in zip(*outs):
        assert rel_diff(s, d) <= 1e-12


# --- every projector on tiny sizes ---------------------------------------------------------------

TINY = {
    "linear-silu": dict(hidden=16),
    "concat-mlp": dict(stack=2, hidden=16),
    "conv1d": dict(stride=2, width=8, hidden=16),
    "qformer": dict(num_queries=4, width=8, dim=16, num_layers=2, num_heads=2),
    "cross-attention": dict(hidden=16, topk=8),
    "legoslm": dict(hidden=16),
}
LENGTHS = (5, 3, 1, 0)   # an utterance may lose all its rows to simulated deletions
EXPECTED_LENGTHS = {"concat-mlp": [3, 2, 1, 0], "conv1d": [3, 2, 1, 0], "qformer": [4, 4, 4, 4]}
REGISTERED = sorted(PROJECTORS)   # at collection, before any test registers a toy one


def test_every_registered_projector_has_a_tiny_config():
    """A new projector lands tested: the tests below run every registered one with its TINY options."""
    missing = sorted(set(REGISTERED) - set(TINY))
    assert not missing, f"add tiny constructor options for {missing} to TINY"


@pytest.mark.parametrize("name", REGISTERED)
def test_projector_shapes_lengths_and_gradients(name):
    torch.manual_seed(0)
    emb = embedding()
    proj = build_projector(name, V, D, llm_embedding=emb, **TINY[name])
    post = make_posteriors(k=2, lengths=LENGTHS)
    out, lengths = proj(post)
    assert lengths.tolist() == EXPECTED_LENGTHS.get(name, list(LENGTHS))
    assert out.shape == (len(LENGTHS), max(lengths.tolist()), D) and torch.isfinite(out).all()
    valid = torch.arange(out.shape[1])[None, :] < lengths[:, None]
    assert out[~valid].abs().sum() == 0 and out[valid].abs().sum() > 0
    out.pow(2).sum().backward()
    missing = [n for n, p in proj.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"
    assert all(torch.isfinite(p.grad).all() for p in proj.parameters())
    assert emb.weight.grad is None
    assert not any(p is emb.weight for p in proj.parameters()) and "weight" not in proj.state_dict()


@pytest.mark.parametrize("name", REGISTERED)
def test_an_utterance_gets_the_same_embeddings_alone_and_in_a_padded_batch(name):
    torch.manual_seed(0)
    proj = build_projector(name, V, D, llm_embedding=embedding(), **TINY[name]).eval()
    post, other = make_posteriors(k=2), make_posteriors(k=2, seed=9)
    mask = post.mask()   # garbage in the padding rows too: it must not matter either
    batch = Posteriors(ids=torch.where(mask[..., None], post.ids, other.ids),
                       weights=torch.where(mask[..., None], post.weights, other.weights),
                       floor=post.floor, blank=post.blank, lengths=post.lengths, vocab_size=V)
    with torch.no_grad():
        out, lengths = proj(batch)
        for i, n in enumerate(post.lengths.tolist()):
            alone = Posteriors(ids=post.ids[i:i + 1, :n], weights=post.weights[i:i + 1, :n],
                               floor=post.floor[i:i + 1, :n], blank=post.blank[i:i + 1, :n],
                               lengths=post.lengths[i:i + 1], vocab_size=V)
            out_alone, length_alone = proj(alone)
            assert length_alone.item() == lengths[i].item()
            assert torch.allclose(out[i, :lengths[i]], out_alone[0], atol=1e-5)


def test_frozen_llm_embedding_keeps_no_gradient_even_if_trainable():
    emb = nn.Embedding(V_LLM, D)          # requires_grad left on: the projector must still not train it
    for name in ("cross-attention", "legoslm"):
        out, _ = build_projector(name, V, D, llm_embedding=emb, **TINY[name])(make_posteriors())
        out.sum().backward()
        assert emb.weight.grad is None


def test_cross_attention_topk_covering_the_table_is_the_full_softmax():
    torch.manual_seed(0)
    emb = embedding(torch.float64)
    full = build_projector("cross-attention", V, D, llm_embedding=emb, hidden=16, topk=None).double()
    top = build_projector("cross-attention", V, D, llm_embedding=emb, hidden=16, topk=V_LLM).double()
    top.load_state_dict(full.state_dict())
    post = make_posteriors()
    out_full, out_top = full(post)[0], top(post)[0]
    assert torch.allclose(out_full, out_top, atol=1e-12)
    top.topk = 4
    assert not torch.allclose(out_full, top(post)[0], atol=1e-6)


def test_cross_attention_top_entries_scan_the_table_in_chunks(monkeypatch):
    from tasu.projectors import cross_attention
    q, table = torch.randn(6, D, dtype=torch.float64), torch.randn(V_LLM, D, dtype=torch.float64)
    monkeypatch.setattr(cross_attention, "CHUNK", 7)
    found = cross_attention.top_entries(q, table, 5)
    assert torch.equal(found.sort(1).values, (q @ table.t()).topk(5, dim=1).indices.sort(1).values)


def test_legoslm_top1_feeds_real_token_embeddings_and_still_trains():
    torch.manual_seed(0)
    emb = embedding()
    proj = build_projector("legoslm", V, D, llm_embedding=emb, hidden=16, top1=True)
    post = make_posteriors()
    out, lengths = proj(post)
    valid = out[post.mask()]
    assert all(any(torch.equal(row, e) for e in emb.weight) for row in valid)
    out.pow(2).sum().backward()
    assert proj.logits.linear2.weight.grad.abs().sum() > 0


class ScaledEmbedding(nn.Embedding):
    """As Gemma embeds: the table's row times sqrt(width), in the module's forward."""

    def forward(self, ids):
        return super().forward(ids) * D ** 0.5


def test_projectors_mixing_llm_rows_give_what_a_scaled_embedding_embeds():
    """Gemma's embedding scales its rows by sqrt(D) in forward: legoslm and cross-attention read the
    table's rows, so their speech rows were sqrt(D) times smaller than any text embedding."""
    torch.manual_seed(0)
    emb = ScaledEmbedding(V_LLM, D)
    post = make_posteriors()
    out, _ = build_projector("legoslm", V, D, llm_embedding=emb, hidden=16, top1=True)(post)
    embedded = emb(torch.arange(V_LLM)).detach()
    assert all(any(torch.allclose(row, e) for e in embedded) for row in out[post.mask()])
    attention = build_projector("cross-attention", V, D, llm_embedding=emb, hidden=16, topk=None)
    nn.init.zeros_(attention.query.linear2.weight)   # q = 0 (bias aside): uniform weights over the vocabulary
    nn.init.zeros_(attention.query.linear2.bias)
    out, _ = attention(post)
    torch.testing.assert_close(out[post.mask()], embedded.mean(0).expand(int(post.lengths.sum()), D))

    plain = nn.Embedding(V_LLM, D)
    nn.init.zeros_(plain.weight[:8])   # padding rows first: no scale to read from them
    assert build_projector("legoslm", V, D, llm_embedding=plain, hidden=16).llm_embedding_scale == 1.0

    class Shifted(nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) + 1.0
    with pytest.raises(ValueError, match=r"input embedding \(Shifted\) is not a table lookup times a positive"):
        build_projector("legoslm", V, D, llm_embedding=Shifted(V_LLM, D), hidden=16)


def test_an_id_outside_the_vocabulary_is_an_error_not_a_read_out_of_bounds():
    post = make_posteriors(k=2)
    post.ids[0, 0, 1] = V                                  # one past the end
    ln, linear = nn.LayerNorm(V), nn.Linear(V, 16)         # float32: the CPU kernel's path
    with pytest.raises(IndexError):
        layernorm_linear(post, ln, linear)


@pytest.mark.parametrize("name, options, problem", [
    ("linear-silu", {"sparse": "maybe"}, "options.sparse: 'maybe': must be true or false"),
    ("linear-silu", {"hidden": -4}, "options.hidden: -4: must be a whole number, at least 1"),
    ("linear-silu", {"hidden": 1.5}, "options.hidden: 1.5: must be a whole number, at least 1"),
    ("conv1d", {"stride": 0}, "options.stride: 0: must be a whole number, at least 1"),
    ("concat-mlp", {"stack": True}, "options.stack: True: must be a whole number, at least 1"),
    ("qformer", {"num_heads": None}, "options.num_heads: None: must be given (null is not one of its values)"),
])
def test_projector_option_values_are_checked_against_their_annotations(name, options, problem):
    """A YAML typo (sparse: flase) is a string, which the projector would take for true; a size of -4
    fails deep in torch, naming nothing. Both stop at the config, naming the option."""
    from tasu.experiment import ProjectorConfig

    with pytest.raises(ValueError, match=f"^{re.escape(problem)}$"):
        ProjectorConfig(name, options).check()
    ProjectorConfig("cross-attention", {"topk": None, "hidden": 8}).check()   # null where the option allows it
    ProjectorConfig("linear-silu", {"sparse": False, "hidden": 8}).check()


def test_a_qformer_whose_heads_do_not_divide_its_dim_is_refused_by_the_config_check():
    """It passed the check and failed after the LLM had loaded, in transformers' message naming no key."""
    from tasu.config import ConfigError, load_config
    from tasu.experiment import ExperimentConfig, ProjectorConfig

    with pytest.raises(ValueError, match=r"^options: dim 100 is not a multiple of num_heads 12$"):
        ProjectorConfig("qformer", {"dim": 100}).check()
    with pytest.raises(ConfigError, match=r"^override 'projector.options.num_heads=5': projector: options: dim 768 "
                                          r"is not a multiple of num_heads 5$"):
        load_config(ExperimentConfig, None, ["projector.name=qformer", "projector.options.num_heads=5"])
    ProjectorConfig("qformer", {"dim": 96, "num_heads": 8}).check()


def test_options_of_a_projector_of_ones_own_follow_its_signature():
    """A projector taking **kwargs was refused every option ("its options: kwargs"), and an int option
    whose own default is 0 (0 for none) could not be set to 0."""
    from tasu.experiment import ProjectorConfig

    @register("test-own-options")
    class Own(Projector):
        def __init__(self, vocab_size: int, llm_dim: int, extra_layers: int = 0, **kwargs):
            super().__init__(vocab_size, llm_dim)

        def forward(self, post):
            return post.to_dense(), post.lengths

    try:
        ProjectorConfig("test-own-options", {"extra_layers": 0, "anything": "x"}).check()
        with pytest.raises(ValueError, match=r"^options.extra_layers: -1: must be a whole number, at least 0$"):
            ProjectorConfig("test-own-options", {"extra_layers": -1}).check()
    finally:
        del PROJECTORS["test-own-options"]
