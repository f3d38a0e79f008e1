"""tasu analyze: fidelity measures checked against hand-computed cases, and a run on audio."""
import json
import math

import pytest
import soundfile as sf
import torch

from fixtures import SENTENCES, waveform, write_sensevoice_dir
from tasu.analyze import Fidelity, Rows, js_divergence, report, rows_of, run_analyze
from tasu.config import load_config
from tasu.data.records import DataError
from tasu.posteriors import Posteriors
from tasu.experiment import ExperimentConfig

V = 8


def sparse(rows: list[list[tuple[int, float]]], floor: float = 0.0) -> Posteriors:
    """One utterance whose rows have the given explicit (id, probability) entries and ``floor`` elsewhere."""
    k = max(len(r) for r in rows)
    ids = torch.zeros(1, len(rows), k, dtype=torch.long)
    weights = torch.zeros(1, len(rows), k)
    for t, row in enumerate(rows):
        used = {i for i, _ in row}
        spare = iter(i for i in range(V) if i not in used)
        for j in range(k):
            i, p = row[j] if j < len(row) else (next(spare), floor)
            ids[0, t, j], weights[0, t, j] = i, p - floor
    blank = torch.tensor([[dict(r).get(0, floor) for r in rows]])
    return Posteriors(ids, weights, torch.full((1, len(rows)), floor), blank, torch.tensor([len(rows)]), V)


def test_rows_give_top1_and_exact_entropy_over_the_whole_vocabulary():
    uniform = sparse([[(3, 1 / V)]], floor=1 / V)
    half = sparse([[(5, 0.5), (2, 0.5)]])
    (u,), (h,) = rows_of(uniform), rows_of(half)
    assert u.entropy[0] == pytest.approx(math.log2(V)) and u.top1_mass[0] == pytest.approx(1 / V)
    assert h.entropy[0] == pytest.approx(1.0) and h.top1_mass[0] == pytest.approx(0.5)
    smoothed = sparse([[(4, 0.93)]], floor=0.01)   # 0.93 + 7 x 0.01 = 1
    (s,) = rows_of(smoothed)
    assert s.top1 == [4]
    assert s.entropy[0] == pytest.approx(-(0.93 * math.log2(0.93) + 7 * 0.01 * math.log2(0.01)))


def test_js_divergence_of_sparse_rows():
    assert js_divergence({1: 1.0}, 0.0, {1: 1.0}, 0.0, V) == pytest.approx(0.0)
    assert js_divergence({1: 1.0}, 0.0, {2: 1.0}, 0.0, V) == pytest.approx(1.0)
    # half overlap: P = (1/2, 1/2, 0), Q = (1/2, 0, 1/2): JS = 1/2 bit
    assert js_divergence({1: 0.5, 2: 0.5}, 0.0, {1: 0.5, 3: 0.5}, 0.0, V) == pytest.approx(0.5)
    # a floor row against one-hot: by hand over all 8 entries
    p, q = [0.3] + [0.1] * 7, [1.0] + [0.0] * 7
    def kl(a, b):
        return sum(x * math.log2(x / y) for x, y in zip(a, b) if x > 0)
    m = [(x + y) / 2 for x, y in zip(p, q)]
    assert js_divergence({0: 0.3}, 0.1, {0: 1.0}, 0.0, V) == pytest.approx((kl(p, m) + kl(q, m)) / 2)


def test_fidelity_counts_rows_errors_and_row_agreement_by_hand():
    # transcript 5 6 7; real rows: 5, blank, 9, 7 (one blank row, 6 -> 9 substituted);
    # simulated rows: 5, 7 (6 deleted)
    real = rows_of(sparse([[(5, 1.0)], [(0, 0.8), (6, 0.2)], [(9 % V, 1.0)], [(7, 1.0)]]))[0]
    simulated = rows_of(sparse([[(5, 1.0)], [(7, 1.0)]]))[0]
    f = Fidelity()
    f.add([5, 6, 7], real, simulated)
    s = f.summary()
    assert s["tokens"] == 3 and s["utterances"] == 1
    assert s["real"]["rows_per_token"] == pytest.approx(4 / 3) and s["simulated"]["rows_per_token"] == pytest.approx(2 / 3)
    assert s["real"]["blank_row_rate"] == pytest.approx(1 / 4) and s["simulated"]["blank_row_rate"] == 0
    # real emits 5 1 7 against 5 6 7: one substitution; simulated emits 5 7: one deletion
    assert (s["real"]["substitution_rate"], s["real"]["deletion_rate"], s["real"]["insertion_rate"]) == (1 / 3, 0, 0)
    assert (s["simulated"]["substitution_rate"], s["simulated"]["deletion_rate"]) == (0, 1 / 3)
    # rows 5 0 1 7 vs 5 7: 5 and 7 pair and agree, the other two real rows are unpaired
    assert s["paired_rows"] == 2 and s["top1_agreement"] == 1.0
    assert s["mean_js_divergence_bits"] == pytest.approx(0.0)
    # the row divergence counts the two unpaired rows as 1 bit each: (0 + 0 + 1 + 1) / 4
    assert s["unpaired_rows"] == 2 and s["row_divergence_bits"] == pytest.approx(0.5)
    assert sum(s["real"]["entropy_histogram"]["counts"]) == 4
    assert sum(s["simulated"]["top1_mass_histogram"]["counts"]) == 2
    text = report(s)
    assert "rows per token" in text and "133" not in text and "1.33" in text and "0.67" in text
    assert "row divergence (unpaired rows count 1 bit): 0.500 bits" in text


def test_matched_wer_asks_the_simulator_for_each_utterances_real_error_rate(monkeypatch):
    """--match-wer: each utterance simulated at its real rows' token error rate, clipped to what the
    simulator serves; without it the simulator gets no rate (the config's own condition)."""
    from tasu.analyze import analyze
    from tasu.compress import CompressConfig

    class Encoder:   # "audio" = the transcript's ids; real rows: all but the last token, then blanks
        blank_id, device = 0, "cpu"

        class tokenizer:
            @staticmethod
            def encode(text):
                return [int(t) for t in text.split()]

        def extract_features(self, waves):
            return waves, None

        def __call__(self, feats, _):
            logp = torch.full((len(feats), 4, V), -30.0)
            logp[:, :, 0] = 0.0
            for b, wave in enumerate(feats):
                for t, tok in enumerate(wave.long().tolist()[:-1]):
                    logp[b, t, 0], logp[b, t, tok] = -30.0, 0.0
            return logp, torch.full((len(feats),), 4)

    class Simulator:
        wer_range = (0.0, 0.4)

        def __init__(self):
            self.asked = []

        def __call__(self, token_ids, generator=None, wer=None):
            self.asked.append(wer)
            return sparse([[(t, 1.0)] for t in token_ids[0]])

    class Record:
        def __init__(self, transcript):
            self.path, self.key, self.start, self.end, self.transcript = "x", transcript, None, None, transcript

    monkeypatch.setattr("tasu.data.audio.load_audio",
                        lambda path, key, start, end: torch.tensor([float(t) for t in key.split()]).numpy())
    compress = CompressConfig(threshold=0.9, topk=2)
    for transcript, match, asked in (("5 6", True, 0.4),        # 1 of 2 tokens missing: 0.5, clipped to 0.4
                                     ("1 2 3 4", True, 0.25),   # 1 of 4
                                     ("5 6", False, None)):     # no rate: the simulator's own condition
        sim = Simulator()
        analyze(Encoder(), sim, [Record(transcript)], compress_cfg=compress, batch_size=1, match_wer=match)
        assert sim.asked == [None if asked is None else [asked]]


def test_analyze_runs_on_audio_and_writes_summary_report_and_plots(tmp_path):
    enc = write_sensevoice_dir(tmp_path / "enc")
    data = tmp_path / "dev.jsonl"
    with open(data, "w") as f:
        for i in range(5):
            wav = tmp_path / f"d{i}.wav"
            sf.write(wav, waveform(0.6 + 0.1 * i, seed=i).numpy(), 16000)
            f.write(json.dumps({"key": f"d{i}", "task": "ASR", "target": SENTENCES[i], "path": str(wav)}) + "\n")
    cfg = load_config(ExperimentConfig, None, [f"encoder.path={enc}", "simulation.drop_prob=0.0",
                                               "simulation.alpha=[0.0, 0.0]"])
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")   # a caller's own (a notebook's inline one): the plots are drawn without changing it
    try:
        summary = run_analyze(cfg, [str(data)], str(tmp_path / "out"), batch_size=2)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert summary["utterances"] == 5 and summary["tokens"] > 5
    # exact one-hot simulation without drops: one row per token, no errors, zero entropy
    assert summary["simulated"]["rows_per_token"] == 1.0 and summary["simulated"]["token_error_rate"] == 0.0
    assert summary["simulated"]["mean_entropy_bits"] == pytest.approx(0.0, abs=1e-9)
    assert summary["real"]["rows"] == sum(summary["real"]["entropy_histogram"]["counts"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["entropy.png", "report.txt", "summary.json",
                                                                    "top1_mass.png"]
    for name in ("entropy.png", "top1_mass.png"):
        assert (tmp_path / "out" / name).read_bytes().startswith(b"\x89PNG"), name
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["tokens"] == summary["tokens"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"key": "x", "task": "ASR", "target": "hello"}) + "\n"
                   + json.dumps({"key": "y", "task": "ASR", "target": "hi", "path": "gen.sh |"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: path: missing"):
        run_analyze(cfg, [str(bad)], str(tmp_path / "o2"))
    bad.write_text(json.dumps({"key": "y", "task": "ASR", "target": "hi", "path": "gen.sh |"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: path: .*shell command"):
        run_analyze(cfg, [str(bad)], str(tmp_path / "o2"))
    bad.write_text(data.read_text() + json.dumps({"key": "z", "task": "ASR", "target": "hi", "path": "gone.wav"}) + "\n")
    with pytest.raises(DataError) as e:   # an audio error names the record's file and line
        run_analyze(cfg, [str(bad)], str(tmp_path / "o2"))
    assert str(e.value) == f"{bad}:6: path: no such file (gone.wav)"
    assert not (tmp_path / "o2").exists()


def test_paired_rows_follow_the_alignment():
    from tasu.analyze import paired_rows

    assert paired_rows([5, 0, 1, 7], [5, 7]) == [(0, 0, True), (3, 1, True)]
    pairs = paired_rows([1, 2, 3], [1, 4, 3, 3])   # one insertion and one substitution, in some order
    assert len(pairs) == 3 and sum(same for _, _, same in pairs) == 2
    assert [i for i, _, _ in pairs] == [0, 1, 2] and all(j1 < j2 for (_, j1, _), (_, j2, _) in zip(pairs, pairs[1:]))
    assert paired_rows([], [1]) == [] and paired_rows([2], [3]) == [(0, 0, False)]


def test_tasu_analyze_from_the_command_line(tmp_path, capsys):
    from tasu.cli import main

    enc = write_sensevoice_dir(tmp_path / "enc")
    wav = tmp_path / "a.wav"
    sf.write(wav, waveform(0.7).numpy(), 16000)
    data = tmp_path / "dev.jsonl"
    data.write_text(json.dumps({"key": "a", "task": "ASR", "target": SENTENCES[0], "path": str(wav)}) + "\n")
    assert main(["analyze", "--encoder", str(enc), "--data", str(data), "--out", str(tmp_path / "out"),
                 "simulation.drop_prob=0.0"]) == 0
    assert "1 utterances" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["settings"]["simulation"]["drop_prob"] == 0.0
    assert main(["analyze", "--encoder", str(enc), "--data", str(data), "--out", str(tmp_path / "matched"),
                 "--match-wer", "--device", "auto"]) == 0   # auto: whatever this machine has, as decode takes it
    assert json.loads((tmp_path / "matched" / "summary.json").read_text())["settings"]["match_wer"] is True
    assert "row divergence" in capsys.readouterr().out
    assert main(["analyze", "--encoder", str(enc), "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 1
    assert "none.jsonl" in capsys.readouterr().err


def test_no_encoder_or_an_unusable_device_is_one_line_and_writes_nothing(tmp_path, capsys):
    """Without --encoder (nor encoder.path) the encoder is not looked for in the working directory;
    a device this torch cannot drive is tasu.device's message, as for decode and dump-posteriors."""
    from tasu.cli import main

    data = tmp_path / "dev.jsonl"
    data.write_text(json.dumps({"key": "a", "task": "ASR", "target": "hello", "path": "a.wav"}) + "\n")
    assert main(["analyze", "--data", str(data), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == ("tasu analyze: error: encoder.path is not set: pass --encoder DIR "
                                       "(or set it in the config)\n")
    (tmp_path / "enc").mkdir()
    if not torch.cuda.is_available():
        assert main(["analyze", "--encoder", str(tmp_path / "enc"), "--data", str(data), "--out",
                     str(tmp_path / "out"), "--device", "cuda"]) == 1
        assert capsys.readouterr().err == ("tasu analyze: error: device 'cuda' was asked for but torch sees no "
                                           f"CUDA GPU (torch {torch.__version__}; CPU-only build or no driver?)\n")
    assert not (tmp_path / "out").exists()


def test_a_limit_below_one_or_no_utterance_writes_nothing(tmp_path, capsys, monkeypatch):
    import tasu.analyze
    import tasu.encoders
    import tasu.simulate
    from tasu.cli import main
    from tasu.config import ConfigError

    data = tmp_path / "dev.jsonl"
    data.write_text(json.dumps({"key": "a", "task": "ASR", "target": "hello", "path": "a.wav"}) + "\n")
    cfg = load_config(ExperimentConfig)
    for limit in (0, -1):
        with pytest.raises(ConfigError, match=f"^--limit must be at least 1, got {limit}$"):
            run_analyze(cfg, [str(data)], str(tmp_path / "out"), limit=limit)
        assert main(["analyze", "--data", str(data), "--out", str(tmp_path / "out"), "--limit", str(limit)]) == 1
        assert capsys.readouterr().err == f"tasu analyze: error: --limit must be at least 1, got {limit}\n"
    # records that yield no utterance (a file changed between the count and the run): no empty summary
    (tmp_path / "enc").mkdir()
    monkeypatch.setattr(tasu.encoders, "load_encoder", lambda *a, **k: type("Encoder", (), {"tokenizer": None}))
    monkeypatch.setattr(tasu.simulate, "build_simulator", lambda *a, **k: None)
    monkeypatch.setattr(tasu.analyze, "analyze", lambda *a, **k: Fidelity())
    with pytest.raises(DataError, match="dev.jsonl: no utterance was analyzed: nothing written"):
        run_analyze(load_config(ExperimentConfig, None, [f"encoder.path={tmp_path}/enc"]), [str(data)],
                    str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
