"""Label-synchronous compression: hand-checked cases, and bit-identity with the frame loop."""
import contextlib

import pytest
import torch

from tasu.compress import _compress_loop, _kept_runs, compress, compress_posteriors
from tasu.compress_kernels import kept_runs, segment_means
from tasu.native import torch_ops_only

# every bit-identity test runs both ways: with the CPU kernels (float32) and with torch ops only
BOTH_PATHS = pytest.mark.parametrize("path", [contextlib.nullcontext, torch_ops_only], ids=["kernels", "torch-ops"])


def frames(rows):
    """Probability rows from (argmax id, its probability) pairs over V = 4; the rest goes to the others."""
    out = []
    for label, p in rows:
        r = torch.full((4,), (1.0 - p) / 3, dtype=torch.float64)
        r[label] = p
        out.append(r)
    return torch.stack(out)


def test_hand_example():
    # a a | blank(.95) | b | blank(.6) | b b | (padding: b)
    x = frames([(1, .8), (1, .6), (0, .95), (2, .7), (0, .6), (2, .9), (2, .5), (2, .9)])[None]
    c = compress(x, torch.tensor([7]))
    assert c.lengths.tolist() == [4]
    assert c.starts.tolist() == [[0, 3, 4, 5]]
    assert c.counts.tolist() == [[2, 1, 1, 2]]  # the run of b stops at the length, not at frame 8
    assert torch.equal(c.probs[0, 0], (x[0, 0] + x[0, 1]) / 2)
    assert torch.equal(c.probs[0, 1], x[0, 3])
    assert torch.equal(c.probs[0, 2], x[0, 4])  # a blank frame under the threshold stays, on its own
    assert torch.equal(c.probs[0, 3], (x[0, 5] + x[0, 6]) / 2)


def test_threshold_edge():
    # blank-argmax frames are never merged; a row is kept only if its blank probability is < threshold
    x = torch.tensor([[[0.5, 0.25, 0.25, 0.0], [0.75, 0.25, 0.0, 0.0], [0.25, 0.0, 0.0, 0.75]]], dtype=torch.float64)
    assert compress(x, torch.tensor([3]), threshold=0.5).starts.tolist() == [[2]]
    assert compress(x, torch.tensor([3]), threshold=0.5 + 1e-12).starts.tolist() == [[0, 2]]
    assert compress(x, torch.tensor([3]), threshold=0.75 + 1e-12).starts.tolist() == [[0, 1, 2]]


def test_mean_blank_threshold_is_on_merged_run():
    y = torch.tensor([[[0.45, 0.55, 0.0], [0.05, 0.95, 0.0]]], dtype=torch.float64)  # mean blank 0.25
    assert compress(y, torch.tensor([2]), threshold=0.25).lengths.tolist() == [0]
    assert compress(y, torch.tensor([2]), threshold=0.26).lengths.tolist() == [1]
    assert compress(y, torch.tensor([2]), threshold=0.4).counts.tolist() == [[2]]  # frame 0 alone would be dropped


def test_a_blank_id_outside_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="blank id 5 is outside the vocabulary of 5"):
        compress(torch.rand(1, 3, 5).softmax(-1), torch.tensor([3]), blank_id=5)


def test_edge_batches():
    v = 5
    strong_blank = torch.zeros(2, 4, v)
    strong_blank[..., 0] = 1.0
    c = compress(strong_blank, torch.tensor([4, 2]))
    assert c.probs.shape == (2, 0, v) and c.lengths.tolist() == [0, 0]
    weak_blank = torch.full((2, 4, v), 0.1)
    weak_blank[..., 0] = 0.6
    c = compress(weak_blank, torch.tensor([4, 1]))
    assert c.lengths.tolist() == [4, 1] and c.counts.tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    assert torch.equal(c.probs[1, 1:], torch.zeros(3, v))
    no_blank = torch.zeros(1, 5, v)
    no_blank[0, torch.arange(5), torch.tensor([1, 1, 2, 2, 2])] = 1.0
    c = compress(no_blank, torch.tensor([5]))
    assert c.counts.tolist() == [[2, 3]]
    empty = compress(torch.rand(0, 3, v).softmax(-1), torch.zeros(0, dtype=torch.long))
    assert empty.probs.shape == (0, 0, v)


def random_posteriors(g, b, t, v, blank_id):
    """Softmax rows with runs and blank streaks of every strength (so both kinds of segment occur)."""
    logits = torch.randn(b, t, v, generator=g) * 3
    peak = torch.randint(0, v, (b, t), generator=g)
    peak = torch.where(torch.rand(b, t, generator=g) < 0.5, peak.roll(1, 1), peak)  # repeat runs
    logits.scatter_add_(2, peak[..., None], torch.rand(b, t, 1, generator=g) * 6)
    logits[..., blank_id] += torch.rand(b, t, generator=g) * 8 * (torch.rand(b, t, generator=g) < 0.5)
    return logits.softmax(-1)


@BOTH_PATHS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_to_frame_loop(dtype, path):
    g = torch.Generator().manual_seed(0)
    for trial in range(150):
        b, t, v = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(1, 14, (1,), generator=g)), 6
        blank_id = trial % 3
        x = random_posteriors(g, b, t, v, blank_id).to(dtype)
        lengths = torch.randint(0, t + 1, (b,), generator=g)
        lengths[0] = t
        threshold = [0.9, 0.5, 0.7, 0.99][trial % 4]
        with path():
            got = compress(x, lengths, threshold, blank_id)
        want, want_len = _compress_loop(x, lengths, threshold, blank_id)
        assert torch.equal(got.lengths, want_len)
        assert torch.equal(got.probs, want), (trial, (got.probs - want).abs().max())


@BOTH_PATHS
def test_large_vocabulary_matches_loop(path):
    # rows wider than a gather chunk's worth (4 MB) and than many argmax blocks still agree
    g = torch.Generator().manual_seed(1)
    x = random_posteriors(g, 2, 9, 300_000, 0)
    lengths = torch.tensor([9, 6])
    with path():
        got = compress(x, lengths)
    want, want_len = _compress_loop(x, lengths)
    assert torch.equal(got.lengths, want_len) and torch.equal(got.probs, want)


def test_compress_posteriors_on_and_off():
    g = torch.Generator().manual_seed(2)
    x = random_posteriors(g, 3, 10, 7, 0).double()
    lengths = torch.tensor([10, 4, 7])
    c = compress(x, lengths)
    post = compress_posteriors(x, lengths, topk=None)
    assert torch.equal(post.lengths, c.lengths)
    assert torch.allclose(post.to_dense(), c.probs, atol=1e-15)
    assert torch.equal(post.blank, c.probs[..., 0])
    off = compress_posteriors(x, lengths, topk=None, enabled=False)
    assert off.lengths.tolist() == [10, 4, 7]
    mask = (torch.arange(10)[None, :] < lengths[:, None]).double()[..., None]
    assert torch.allclose(off.to_dense(), x * mask, atol=1e-15)
    top = compress_posteriors(x, lengths, topk=2)
    assert top.ids.shape[-1] == 2
    assert torch.allclose(top.to_dense().sum(-1), c.probs.sum(-1), atol=1e-12)


@BOTH_PATHS
def test_argmax_ties_and_nan_follow_torch(path):
    # the first maximum wins a tie (across the kernel's blocks of 1,024 or inside one), a NaN counts
    # as the maximum: the frame loop (torch.argmax) decides which frames merge
    v = 2500
    x = torch.full((1, 7, v), 0.1 / v)
    x[0, :, 0] = 0.2                                                     # blank never wins
    x[0, 0, [1500, 2100]] = 0.3                                          # tie: 1500 ...
    x[0, 1, 1500] = 0.3                                                  # ... so frames 0-1 merge
    x[0, 2, [3, 700]] = 0.3                                              # tie inside a block: 3
    x[0, 3, [700, 3]] = 0.31                                             # 3 again: frames 2-3 merge
    x[0, 4, [10, 2499]] = float("nan")
    x[0, 5, 11] = 0.5                                                    # NaN at 10 beats it: no merge
    x[0, 6, 2499] = 0.5                                                  # the tail block
    lengths = torch.tensor([7])
    with path():
        got = compress(x, lengths)
    want, want_len = _compress_loop(x, lengths)
    assert got.counts.tolist() == [[2, 2, 1, 1, 1]] and torch.equal(got.lengths, want_len)
    torch.testing.assert_close(got.probs, want, rtol=0, atol=0, equal_nan=True)


@BOTH_PATHS
def test_a_nan_blank_leaves_the_argmax_to_the_whole_row(path):
    """The torch ops took a frame whose blank (id 4) probability is NaN as blank without reading its row;
    the C kernel and the frame loop read it: its first NaN, at id 2, joins the frames around it into one
    run, whose NaN blank mean drops it (two rows kept against none)."""
    x = torch.full((1, 3, 6), 0.05)
    x[0, :, 2] = 0.75
    x[0, 1, [2, 4]] = float("nan")
    lengths = torch.tensor([3])
    with path():
        got = compress(x, lengths, 0.9, blank_id=4)
    want, want_len = _compress_loop(x, lengths, 0.9, 4)
    assert got.lengths.tolist() == want_len.tolist() == [0]
    torch.testing.assert_close(got.probs, want, rtol=0, atol=0, equal_nan=True)


def test_kept_runs_kernel_equals_its_torch_version():
    g = torch.Generator().manual_seed(4)
    x = random_posteriors(g, 5, 40, 1300, 1)
    lengths = torch.tensor([40, 0, 17, 1, 33])
    runs = kept_runs(x, lengths, 0.8, 1)
    if runs is None:
        pytest.skip("no C compiler")
    for got, want in zip(runs, _kept_runs(x, lengths, 0.8, 1)):
        assert torch.equal(got, want)


@BOTH_PATHS
def test_segment_means_sum_in_row_order_and_zero_empty_segments(path):
    g = torch.Generator().manual_seed(3)
    src = torch.rand(20, 1300, generator=g) ** 4      # float32 sums whose order matters
    starts, counts = torch.tensor([0, 3, 7, 7, 12, 0, 19]), torch.tensor([1, 2, 3, 5, 4, 0, 1])
    with path():
        got = segment_means(src, starts, counts)
    for row, (s, c) in enumerate(zip(starts.tolist(), counts.tolist())):
        want = torch.zeros(1300)
        for f in range(s, s + c):
            want = want + src[f]
        assert torch.equal(got[row], want / c if c else want)
