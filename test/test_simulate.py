"""CTC posterior simulation: row values, i.i.d. errors, confusion tables, WER control, schedule, display."""
import math
import os
import subprocess
import sys
from typing import Sequence

import pytest
import torch

import tasu.encoders
from tasu.encoders.base import EncoderTokenizer
from tasu.simulate import (Confusion, RuleSimulator, SimulationConfig, Vocabulary, WERSchedule, edit_distance,
                           row_tokens, show_simulation, simulate, token_error_rate)

V = 1000


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_batch(g, n, max_len=30, low=1, high=V):
    return [torch.randint(low, high, (int(torch.randint(0, max_len + 1, (1,), generator=g)),),
                          generator=g).tolist() for _ in range(n)]


def test_defaults_are_the_original():
    cfg = SimulationConfig()
    assert (cfg.alpha, cfg.drop_prob, cfg.insert_ratio, cfg.sub_prob, cfg.wer) == ((0.0, 0.1), 0.05, 0.0, 0.0, None)


def test_rows_are_smoothed_one_hots():
    post = simulate([[5, 7, 7], [9]], 20, SimulationConfig(alpha=(0.2, 0.2), drop_prob=0.0), generator=gen())
    assert post.lengths.tolist() == [3, 1] and post.topk == 1
    assert post.ids[..., 0].tolist() == [[5, 7, 7], [9, 0, 0]]
    dense = post.to_dense()
    assert torch.allclose(dense[0, 0], torch.full((20,), 0.01).index_fill(0, torch.tensor([5]), 0.81))
    assert torch.allclose(dense.sum(-1), torch.tensor([[1.0, 1, 1], [1, 0, 0]]))
    assert torch.allclose(post.blank, torch.tensor([[0.01, 0.01, 0.01], [0.01, 0, 0]]))
    assert post.weights[1, 1:].abs().sum() == 0 and post.floor[1, 1:].abs().sum() == 0


def test_alpha_is_per_utterance_and_in_range():
    post = simulate(random_batch(gen(), 64, low=1), V, SimulationConfig(alpha=(0.0, 0.1)), generator=gen(1))
    alpha = 1.0 - post.weights[:, 0, 0]
    assert alpha.min() >= 0 and alpha.max() <= 0.1 and alpha.std() > 0.02
    assert torch.allclose(post.floor[:, 0], alpha / V)


def test_seeded():
    batch = random_batch(gen(), 8)
    cfg = SimulationConfig(insert_ratio=0.3, sub_prob=0.2)
    a, b, c = (simulate(batch, V, cfg, generator=gen(s)) for s in (3, 3, 4))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.weights, b.weights)
    assert not torch.equal(a.weights[:, 0], c.weights[:, 0])


def test_drop_rate_and_never_all_dropped():
    batch = [list(range(1, 41))] * 50
    post = simulate(batch, V, SimulationConfig(drop_prob=0.25), generator=gen())
    dropped = 1.0 - post.lengths.sum().item() / 2000
    assert 0.22 < dropped < 0.28
    post = simulate([[3, 4, 5], [6], []], V, SimulationConfig(drop_prob=1.0), generator=gen())
    assert post.lengths.tolist() == [1, 1, 1]  # one token put back; an empty transcript is one blank row
    assert post.ids[0, 0, 0].item() in (3, 4, 5) and post.ids[1, 0, 0].item() == 6
    assert post.ids[2, 0, 0].item() == 0 and post.blank[2, 0] == post.weights[2, 0, 0] + post.floor[2, 0]


def test_insertions_are_repeats_or_blanks():
    batch = random_batch(gen(), 40, low=1)
    post = simulate(batch, V, SimulationConfig(drop_prob=0.0, insert_ratio=1.0), generator=gen(1))
    rows = [r[:n] for r, n in zip(post.ids[..., 0].tolist(), post.lengths.tolist())]
    tokens = sum(map(len, batch))
    inserted = post.lengths.sum().item() - tokens - sum(1 for x in batch if not x)
    assert 0.85 < inserted / tokens < 1.15
    blanks = sum(r.count(0) for r, x in zip(rows, batch) if x)
    assert 0.4 < blanks / inserted < 0.6
    for r, x in zip(rows, batch):  # dropping blank rows and the repeats inserted after a token gives x back
        if x:
            assert r[0] == x[0]
            kept, k = [], 0
            for i in r:
                if k < len(x) and i == x[k]:
                    kept.append(i)
                    k += 1
                else:
                    assert i == 0 or i == kept[-1]
            assert kept == x
    is_blank_row = post.ids[..., 0] == 0
    assert torch.equal(post.blank > 0.5, is_blank_row & post.mask())


class ToyTokenizer(EncoderTokenizer):
    """Characters of a tiny word list; id 0 is blank, 1-2 are special."""

    def __init__(self, pieces):
        self.pieces = ["<blank>", "<unk>", "<|en|>"] + list(pieces)
        self.vocab_size, self.blank_id = len(self.pieces), 0

    def encode(self, text: str) -> list[int]:
        return [self.pieces.index(w) if w in self.pieces else 1 for w in text.split()]

    def id_to_piece(self, i: int) -> str:
        return self.pieces[i]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.pieces[i] for i in ids)


WORDS = ["cat", "bat", "cart", "at", "▁cat", "dog", "dig", "zebra", "xylophone"]


def test_substitution_is_never_the_same_nor_special():
    tok = ToyTokenizer(WORDS)
    sim = RuleSimulator.from_tokenizer(tok, SimulationConfig(drop_prob=0.0, sub_prob=1.0, alpha=(0.0, 0.0)))
    batch = [list(range(1, tok.vocab_size))] * 200
    rows = sim(batch, gen()).ids[..., 0]
    assert (rows != torch.tensor(batch)).all()
    assert rows.min() >= 3  # neither blank nor <unk> nor <|en|>
    assert set(rows.flatten().tolist()) == set(range(3, tok.vocab_size))


def test_uniform_confusion_is_uniform_over_the_others():
    c = Confusion.uniform(6, blank_id=0, exclude=[5])
    draws = c.sample(torch.full((6000,), 2), gen())
    counts = torch.bincount(draws, minlength=6).tolist()
    assert counts[0] == counts[2] == counts[5] == 0
    assert all(1800 < n < 2200 for n in (counts[1], counts[3], counts[4]))
    other = c.sample(torch.full((3000,), 5), gen())  # an id outside the candidates: any candidate
    assert set(other.tolist()) == {1, 2, 3, 4}


def test_spelling_confusion_neighbours():
    tok = ToyTokenizer(WORDS)
    conf = Confusion.from_tokenizer(tok, "spelling")
    ids = {w: tok.pieces.index(w) for w in WORDS}
    draws = conf.sample(torch.full((2000,), ids["cat"]), gen())
    got = {tok.pieces[i] for i in draws.tolist()}
    assert got == {"bat", "cart", "at", "▁cat"}  # every piece at distance 1 (none further here)
    assert {tok.pieces[i] for i in conf.sample(torch.full((500,), ids["dog"]), gen()).tolist()} == {"dig"}
    lonely = conf.sample(torch.full((500,), ids["xylophone"]), gen())  # no neighbour: uniform fallback
    assert (lonely != ids["xylophone"]).all() and lonely.min() >= 3 and len(set(lonely.tolist())) > 5
    for w in WORDS:
        for i in conf.sample(torch.full((200,), ids[w]), gen()).tolist():
            assert i != ids[w] and i >= 3
            if w not in ("zebra", "xylophone"):
                assert edit_distance(w, tok.pieces[i]) <= 2


def test_spelling_confusion_draws_the_same_in_every_process():
    """The buckets were numbered in a set's order, which follows the process's string hashing: a seed drew
    other substitutes in each process (a resumed run, the study's seeds)."""
    script = ("import torch\nfrom tasu.simulate import Confusion\n"
              "pieces = ['<blank>'] + [a + b + c for a in 'abcdef' for b in 'ghij' for c in 'klm']\n"
              "g = torch.Generator().manual_seed(0)\n"
              "ids = torch.randint(1, len(pieces), (300,), generator=g)\n"
              "print(Confusion.spelling(pieces).sample(ids, g).tolist())")
    draws = {subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONHASHSEED=str(seed)),
                            capture_output=True, text=True, check=True).stdout for seed in (1, 2, 3)}
    assert len(draws) == 1


def test_spelling_confusion_scales_to_a_real_vocabulary():
    g = torch.Generator().manual_seed(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = {"".join(letters[j] for j in torch.randint(0, 26, (int(n),), generator=g).tolist())
              for n in torch.randint(1, 7, (20000,), generator=g)}
    pieces = ["<blank>"] + sorted(pieces) + [chr(0x4E00 + i) for i in range(25055 - 1 - len(pieces))]
    conf = Confusion.spelling(pieces)  # ~0.3 s; cached for the next call
    assert conf is Confusion.spelling(pieces)
    x = torch.randint(1, 25055, (2000,), generator=g)
    y = conf.sample(x, g)
    assert (y != x).all() and (y > 0).all()


def test_owners_is_repeat_interleave():
    from tasu.simulate.rules import _owners

    for counts in ([2, 0, 3], [0, 0], [1], [0, 4, 0], []):
        c = torch.tensor(counts, dtype=torch.long)
        assert torch.equal(_owners(c), torch.repeat_interleave(torch.arange(len(c)), c))


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], [1, 2]) == 2 and edit_distance([1, 2, 3], []) == 3 and edit_distance([], []) == 0
    assert edit_distance([1, 2, 3, 4], [2, 3, 4, 1]) == 2
    assert edit_distance([1, 1, 2], [1, 2, 2]) == 1
    assert token_error_rate([1, 2, 3, 4], [1, 3, 4]) == 0.25
    assert token_error_rate([], []) == 0.0 and token_error_rate([], [1]) == math.inf


def measured(post, batch):
    return [(token_error_rate(r, h), len(r)) for r, h in zip(batch, row_tokens(post)) if r]


@pytest.mark.parametrize("split", [(0.6, 0.2, 0.2), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1)])
def test_wer_control_hits_the_range(split):
    """Over many utterances the measured token error rate is in [lo, hi] whenever a count of edits can
    be (some n with lo <= n / L <= hi), else it is the nearest achievable rate (within 0.5 / L)."""
    lo, hi = 0.1, 0.3
    cfg = SimulationConfig(wer=WERSchedule(start=(lo, hi), end=(lo, hi)), wer_split=split)
    g = gen()
    sim = RuleSimulator(cfg, V)
    rates = []
    for _ in range(25):
        batch = random_batch(g, 16, max_len=40)
        batch += [[7] * 6 + [8] * 5, [3, 4] * 9]  # repeated tokens
        for rate, n in measured(sim(batch, g), batch):
            if math.ceil(lo * n - 1e-9) <= math.floor(hi * n + 1e-9):
                assert lo - 1e-9 <= rate <= hi + 1e-9, (rate, n)
            else:
                assert min(abs(rate - lo), abs(rate - hi)) <= 0.5 / n + 1e-9
            rates.append(rate)
    mean = sum(rates) / len(rates)
    assert 0.17 < mean < 0.23


def test_wer_edit_kinds_follow_the_split():
    batch = [list(range(1, 21))] * 8
    for split, length in (((1, 0, 0), 20), ((0, 1, 0), 15), ((0, 0, 1), 25)):
        cfg = SimulationConfig(wer=WERSchedule(start=(0.25, 0.25), end=(0.25, 0.25)), wer_split=split)
        post = RuleSimulator(cfg, V)(batch, gen())
        assert post.lengths.tolist() == [length] * 8
        assert all(edit_distance(r, h) == 5 for r, h in zip(batch, row_tokens(post)))


@pytest.mark.parametrize("split", [(1, 0, 0), (1, 1, 0), (1, 0, 1)])
def test_wer_distance_is_exact_with_a_small_alphabet(split):
    # references use ids 1-4 of V = 8: a substitute or insertion reusing one of them could make a
    # cheaper alignment (e.g. delete x, substitute its neighbour by x); fresh ids keep it exact
    cfg = SimulationConfig(wer=WERSchedule(start=(0.3, 0.3), end=(0.3, 0.3)), wer_split=split)
    g, sim = gen(), RuleSimulator(cfg, 8)
    for _ in range(30):
        batch = torch.randint(1, 5, (16, 10), generator=g).tolist()
        assert [edit_distance(r, h) for r, h in zip(batch, row_tokens(sim(batch, g)))] == [3] * 16


@pytest.mark.parametrize("split", [(1, 0, 0), (0, 0, 1), (0.6, 0.2, 0.2)])
def test_wer_distance_is_exact_when_a_reference_holds_every_id(split):
    """A character vocabulary and a long utterance: no fresh substitute or insertion exists, and the
    distance fell short of the asked edits (asked 100 %, measured 90 %); they become deletions."""
    cfg = SimulationConfig(wer=WERSchedule(start=(0.5, 1.0), end=(0.5, 1.0)), wer_split=split)
    g, sim = gen(), RuleSimulator(cfg, 8)
    for _ in range(10):
        batch = [list(range(1, 8)) * 6 + torch.randint(1, 8, (20,), generator=g).tolist(), [1, 2, 3, 4] * 3]
        wers = [1.0, 0.5]
        for r, h, rate in zip(batch, row_tokens(sim(batch, g, wer=wers)), wers):
            assert edit_distance(r, h) == round(rate * len(r))


def test_wer_exact_at_full_rate_and_empty():
    cfg = SimulationConfig(wer=WERSchedule(start=(1.0, 1.0), end=(1.0, 1.0)), wer_split=(0, 1, 0))
    post = RuleSimulator(cfg, V)([[4, 4, 5], []], gen())
    assert post.lengths.tolist() == [1, 1] and row_tokens(post) == [[], []]  # one blank row each


def test_schedule():
    s = WERSchedule(start=(0.0, 0.1), end=(0.2, 0.3), warmup_steps=100, total_steps=300)
    assert s.at(0) == (0.0, 0.1) and s.at(100) == (0.0, 0.1)
    assert s.at(200) == pytest.approx((0.1, 0.2)) and s.at(300) == pytest.approx((0.2, 0.3))
    assert s.at(10_000) == pytest.approx((0.2, 0.3))
    c = WERSchedule(start=(0.0, 0.0), end=(0.4, 0.4), total_steps=100, shape="cosine")
    assert c.at(50) == pytest.approx((0.2, 0.2)) and c.at(25)[0] == pytest.approx(0.2 * (1 - math.sqrt(0.5)))
    assert WERSchedule(start=(0.1, 0.2), end=(0.3, 0.4), warmup_steps=5, total_steps=5).at(6) == (0.3, 0.4)
    with pytest.raises(ValueError):
        WERSchedule(start=(0.3, 0.2))
    with pytest.raises(ValueError):
        WERSchedule(warmup_steps=10, total_steps=5)


def test_simulator_follows_the_schedule_step():
    cfg = SimulationConfig(wer=WERSchedule(start=(0.0, 0.0), end=(0.5, 0.5), total_steps=10), wer_split=(1, 0, 0))
    sim, batch = RuleSimulator(cfg, V), [list(range(1, 11))] * 4
    assert [edit_distance(r, h) for r, h in zip(batch, row_tokens(sim(batch, gen(), step=0)))] == [0] * 4
    assert [edit_distance(r, h) for r, h in zip(batch, row_tokens(sim(batch, gen(), step=10)))] == [5] * 4


def test_config_validation():
    with pytest.raises(ValueError):
        SimulationConfig(alpha=(0.2, 0.1))
    with pytest.raises(ValueError):
        SimulationConfig(drop_prob=1.5)
    # NaN inserted nothing with exit 0, inf was a RuntimeError of torch, 1e7 never ended
    for ratio in (float("nan"), float("inf"), 1e7, -0.1):
        with pytest.raises(ValueError, match=r"insert_ratio must be in \[0, 10\] \(rows per token\)"):
            SimulationConfig(insert_ratio=ratio)
    for split in ((float("nan"), 0.2, 0.2), (0.6, 0.2, float("inf")), (1e308, 1e308, 1)):   # the last: all inserts
        with pytest.raises(ValueError, match="must be non-negative with a positive, finite sum"):
            SimulationConfig(wer_split=split)
    post = RuleSimulator(SimulationConfig(insert_ratio=2), V)([[3, 4, 5]], gen())   # an int: torch.poisson failed
    assert post.lengths.item() >= 3
    with pytest.raises(ValueError):
        RuleSimulator(SimulationConfig(confusion="spelling"), V)
    with pytest.raises(ValueError):
        simulate([[V]], V)


def test_show_simulation():
    tok = ToyTokenizer(WORDS)
    assert isinstance(tok, Vocabulary)   # an encoder's tokenizer is what simulation asks for
    table = show_simulation(tok, "cat dog zebra", SimulationConfig(alpha=(0.12, 0.12), drop_prob=0.0), topk=3)
    floor = 0.12 / tok.vocab_size
    assert table.splitlines() == [
        "text: cat dog zebra",
        "tokens (3): cat dog zebra",
        f"rows: 3, V = {tok.vocab_size}; every id not listed has the row's floor",
        " row      floor  top-3 (piece:prob)",
        f"   0  {floor:>9.3g}  cat:{0.88 + floor:.4f}",
        f"   1  {floor:>9.3g}  dog:{0.88 + floor:.4f}",
        f"   2  {floor:>9.3g}  zebra:{0.88 + floor:.4f}",
        "token error rate (top-1 of each row vs the transcript): 0.0 %",
    ]
    with pytest.raises(ValueError, match="the text '' spells no token of the encoder's vocabulary"):
        show_simulation(tok, "")   # printed one blank row and a token error rate of 0.0 %, exit 0
    dropped = show_simulation(tok, "cat dog zebra", SimulationConfig(drop_prob=1.0), seed=3)
    assert dropped.splitlines()[2].startswith("rows: 1,")
    assert dropped.splitlines()[-1].endswith(": 66.7 %")   # two of three tokens dropped (one is put back)
    # a WER schedule at its step: the exact-count edits give the asked rate on average
    wer = SimulationConfig(wer=WERSchedule(start=(0.3, 0.3), end=(0.3, 0.3)))
    many = show_simulation(tok, "cat dog zebra cat dog zebra cat dog zebra cat", wer, samples=50, step=7)
    assert many.splitlines()[-1] == "mean over 50 draws: 30.0 %"


def test_tasu_simulate_takes_every_simulation_option_or_a_config(monkeypatch, tmp_path, capsys):
    from tasu.cli import main

    tok = ToyTokenizer(WORDS)
    asked = []
    monkeypatch.setattr(tasu.encoders, "load_tokenizer",
                        lambda path, encoder_type="auto": asked.append((path, encoder_type)) or tok, raising=False)
    text = "cat dog zebra cat dog zebra cat dog zebra cat"
    assert main(["simulate", "--encoder", "unused", "--text", text, "--wer", "0.2", "0.2", "--confusion",
                 "spelling", "--samples", "10"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "mean over 10 draws: 20.0 %"
    (tmp_path / "enc").mkdir()
    (tmp_path / "other").mkdir()
    config = tmp_path / "train.yaml"
    config.write_text(f"encoder:\n  path: {tmp_path / 'enc'}\n  type: small_ctc\n"
                      "simulation:\n  drop_prob: 0.0\n  alpha: [0.0, 0.0]\n")
    # the config's encoder, unless --encoder (and --encoder-type) replace it
    assert main(["simulate", "--text", text, "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(": 0.0 %")
    assert main(["simulate", "--encoder", str(tmp_path / "other"), "--encoder-type", "hf_ctc", "--text", text,
                 "--config", str(config), "simulation.wer={start: [0.5, 0.5], end: [0.5, 0.5]}", "--samples", "4"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "mean over 4 draws: 50.0 %"
    assert asked[1:] == [(str(tmp_path / "enc"), "small_ctc"), (str(tmp_path / "other"), "hf_ctc")]
    assert main(["simulate", "--text", text, "--config", str(config), "--drop-prob", "0.1"]) == 1
    assert "override it as simulation.KEY=VALUE, not --drop-prob" in capsys.readouterr().err
    # no encoder anywhere: one line, before any tokenizer is looked for
    config.write_text("simulation:\n  drop_prob: 0.0\n")
    assert main(["simulate", "--text", text, "--config", str(config)]) == 1
    assert "encoder.path is not set: pass --encoder DIR" in capsys.readouterr().err
    assert main(["simulate", "--text", text]) == 1
    assert "--encoder DIR is needed" in capsys.readouterr().err
    assert len(asked) == 3


def test_an_unknown_simulator_is_refused_in_one_wording():
    """The config check and the registry's lookup name the simulators the same way."""
    from tasu.simulate import lookup

    with pytest.raises(ValueError) as by_lookup:
        lookup("nope")
    with pytest.raises(ValueError) as by_config:
        SimulationConfig(name="nope")
    assert str(by_lookup.value) == "unknown simulator 'nope'; known simulators: learned, rules"
    assert str(by_config.value) == f"name: {by_lookup.value}"
