"""The learned simulator and ``tasu train-simulator``, with a tiny SenseVoice teacher and tiny models.

A random tiny encoder's posteriors are far from the transcripts (token error rates near 100 %), so
these tests check the mechanics -- files, resume, conditions, errors, the interface -- not how well
the simulator hits a WER; ``test_the_condition_is_learned_from_a_rule_teacher`` checks that it
learns to follow its condition on a teacher whose error rates are known.

Costs: the ``setup`` fixture trains the one simulator the interface tests share; the killed run and
its uninterrupted twin reuse its teacher (same encoder, data and teacher settings), so only their
loops run; the one-line errors of ``tasu simulate`` are checked through the console script once and
in-process (``tasu.cli.main``, the same code under the script) for the rest, as are those of
``tasu train-simulator``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from fixtures import SENTENCES, waveform, write_hf_ctc_dir, write_sensevoice_dir
from tasu.simulate import SimulationConfig, WERSchedule, build_simulator, row_tokens, token_error_rate

BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
TINY = ["teacher.copies=2", "compress.threshold=0.99", "compress.topk=4", "model.topk=4", "model.d_model=32",
        "model.heads=2", "model.ffn=64", "model.encoder_layers=1", "model.decoder_layers=1",
        "train.log_interval=5", "train.report_utterances=4", "train.report_wers=[0.9, 1.0]"]


def tasu(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([str(BIN / "tasu"), *args], env=ENV, capture_output=True, text=True, timeout=300)
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out


def tasu_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """``tasu ARGS`` through tasu.cli.main in this process (no interpreter and torch start-up)."""
    from tasu.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["tasu", *args], code, out.out, out.err)


def one_line_error(out: subprocess.CompletedProcess, *expected: str) -> str:
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    line, = [ln for ln in out.stderr.splitlines() if "error:" in ln]
    for part in expected:
        assert part in line, line
    return line


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("learned")
    write_sensevoice_dir(root / "enc")
    (root / "wav").mkdir()
    records = []
    for i, text in enumerate(SENTENCES[:6]):
        wav = root / "wav" / f"u{i}.wav"
        sf.write(wav, waveform(0.5 + 0.1 * i, seed=i).numpy(), 16000)
        records.append({"key": f"u{i}", "task": "ASR", "target": text, "path": str(wav)})
    (root / "asr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    tasu("train-simulator", "--encoder", str(root / "enc"), "--data", str(root / "asr.jsonl"),
         "--out", str(root / "sim"), *TINY, "train.max_steps=10", "train.save_interval=5")
    return root


def tokenizer(root: Path):
    from tasu.encoders import load_tokenizer

    return load_tokenizer(root / "enc")


def learned(root: Path, lo: float, hi: float) -> SimulationConfig:
    return SimulationConfig(name="learned", path=str(root / "sim"), wer=WERSchedule(start=(lo, hi), end=(lo, hi)))


def test_a_simulator_directory_is_config_and_safetensors(setup):
    sim = setup / "sim"
    config = json.loads((sim / "config.json").read_text())
    tok = tokenizer(setup)
    assert (config["vocab_size"], config["blank_id"], config["topk"]) == (tok.vocab_size, tok.blank_id, 4)
    lo, hi = config["wer_range"]
    assert 0.0 <= lo <= hi <= 1.0
    assert set(load_file(sim / "model.safetensors")) and not list(sim.rglob("*.pt"))
    teacher = json.loads((sim / "teacher.json").read_text())
    assert teacher["examples"] == 6 * 3 and sum(teacher["bins"].values()) == 18
    # 6 transcripts: the first 4 calibrate, the report reads the other 2
    report = json.loads((sim / "report.json").read_text())
    assert report["utterances"] == 2 and report["held_out"] and all(row["asked"] >= lo for row in report["rows"])
    cal = config["calibration"]
    assert cal["temperature"] == 0.5 and len(cal["condition"]) == len(cal["wer"]) == 21
    assert cal["condition"][0] == lo and cal["condition"][-1] == pytest.approx(hi)
    assert cal["wer"] == sorted(cal["wer"])
    assert (sim / "checkpoints" / "last").read_text().strip() == "step_000010"


def test_bad_weights_in_a_simulator_directory_are_refused_by_name(setup, tmp_path):
    """Cut short, whole numbers or NaN: each names the file and the tensor, where they would have
    loaded into the float model without a word (or, cut short, with safetensors' message alone)."""
    import shutil

    from safetensors.torch import save_file
    from tasu.simulate.learned import SimulatorError, read_simulator_dir

    sim = tmp_path / "sim"
    shutil.copytree(setup / "sim", sim, ignore=shutil.ignore_patterns("checkpoints"))
    weights = sim / "model.safetensors"
    state = load_file(weights)
    name = sorted(state)[0]
    read_simulator_dir(sim)
    for bad, message in ((state[name].long(), f"{weights}: {name} holds int64 values, where a trained simulator"),
                         (torch.full_like(state[name], float("nan")), f"{weights}: {name} holds NaN or infinite")):
        save_file({**state, name: bad}, str(weights))
        with pytest.raises(SimulatorError, match=re.escape(message)):
            read_simulator_dir(sim)
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SimulatorError, match=re.escape(f"{weights}: damaged: truncated, or not a safetensors file")):
        read_simulator_dir(sim)


def test_new_weights_beside_the_old_config_are_refused(setup, tmp_path):
    """A resumed train-simulator killed between writing model.safetensors and config.json left the new
    model beside the old config (another model's calibration and wer_range), read without a word."""
    import shutil

    from tasu.simulate.learned import SimulatorError, read_simulator_dir, write_simulator_dir

    sim = tmp_path / "sim"
    shutil.copytree(setup / "sim", sim, ignore=shutil.ignore_patterns("checkpoints"))
    config, state = read_simulator_dir(sim)
    old_config = (sim / "config.json").read_bytes()
    write_simulator_dir(sim, config, {k: v * 0.5 for k, v in state.items()})
    read_simulator_dir(sim)   # the pair as written
    (sim / "config.json").write_bytes(old_config)   # as the kill between the two renames left them
    with pytest.raises(SimulatorError, match=re.escape(f"{sim / 'model.safetensors'} is not the model written "
                                                       f"with {sim / 'config.json'} (a run stopped between")):
        read_simulator_dir(sim)


@pytest.mark.parametrize("edit, problem", [
    ({"topk": "ten"}, "topk 'ten': not a whole number of at least 1"),
    ({"topk": 100}, "config.json: not a learned simulator's config: topk 100 exceeds vocab_size 60"),
    ({"d_model": 0}, "d_model 0: not a whole number of at least 1"),
    ({"dropout": 5}, "dropout 5: not a probability below 1"),
    ({"max_rows_per_token": -1}, "max_rows_per_token -1: not a number of at least 1"),
    ({"calibration": {"temperature": 0.5, "condition": [0.3, 0.1], "wer": [0.1, 0.2]}}, "calibration: not"),
    ({"calibration": {"temperature": 0.5, "condition": [0.1, 0.3], "wer": [0.1]}}, "calibration: not"),
    ({"d_model": 16}, "the weights do not fit its config.json"),
    ({"wer_range": "ab"}, "config.json: not a learned simulator's config: wer_range 'ab': not two rates"),
    ({"wer_range": [0.9]}, "wer_range [0.9]: not two rates 0 <= lo <= hi <= 1"),
    ({"wer_range": [0.95, 0.85]}, "wer_range [0.95, 0.85]: not two rates"),
    ({"wer_range": [0.0, 1.0]}, "wer_range [0.0, 1.0]: not the range its calibration was measured over"),   # widened
])
def test_an_edited_simulator_config_is_refused_by_name(setup, tmp_path, edit, problem):
    """config.json is checked field by field before a model is built of it: a type or range nothing
    would write fails in torch naming nothing, or, out of range, samples nonsense with exit 0."""
    import shutil

    from tasu.simulate.learned import LearnedSimulator, SimulatorError

    sim = tmp_path / "sim"
    shutil.copytree(setup / "sim", sim, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((sim / "config.json").read_text())
    (sim / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(SimulatorError, match=re.escape(problem)):
        LearnedSimulator.load(sim, tokenizer(setup))


@pytest.mark.parametrize("override, problem", [
    ("train.lr=0", "train: lr must be a number > 0, got 0.0"),   # trained nothing, wrote a simulator, exit 0
    ("train.lr=.nan", "train: lr must be a number > 0, got nan"),
    ("train.warmup_steps=-5", "train: warmup_steps and report_utterances must be >= 0"),
    ("train.weight_decay=-1", "train: weight_decay must be a number >= 0, got -1.0"),
    ("train.grad_clip=-1", "train: grad_clip must be a number >= 0, got -1.0"),
    ("train.report_wers=[.nan, 5]", "train: report_wers must be rates in [0, 1], got [nan, 5.0]"),
    ("train.temperature=.inf", "train: temperature must be a number > 0, got inf"),
    ("model.heads=3", "model: d_model 128 is not a multiple of heads 3"),   # found after the teacher was built
    ("model.d_model=0", "model: d_model 0: not a whole number of at least 1"),
    ("model.dropout=1.5", "model: dropout 1.5: not a probability below 1"),
    ("model.max_rows_per_token=-1", "model: max_rows_per_token -1.0: not a number of at least 1"),
    ("teacher.lowpass_hz=[0, 99999]", "teacher: lowpass_hz must be two cut-offs in (0, 8000) Hz, the lower first, "
                                      "got [0.0, 99999.0]"),
    ("teacher.snr_db=[.nan, .inf]", "teacher: snr_db must be two numbers, the lower first, got [nan, inf]"),
    ("teacher.time_mask_s=-1", "teacher: time_mask_s must be a number >= 0, got -1.0"),
])
def test_a_simulator_training_config_is_checked_field_by_field(override, problem):
    from tasu.config import ConfigError
    from tasu.train.simulator import load_simulator_training_config

    with pytest.raises(ConfigError) as e:
        load_simulator_training_config(None, [override])
    assert str(e.value) == f"override '{override}': {problem}"


def test_a_resume_on_damaged_or_other_files_is_one_line(setup, tmp_path, capsys):
    """What train-simulator --resume reads back (teacher.json, the teacher set, the checkpoint's state,
    moments and weights) names its file when damaged, and a resume with other settings than the run's
    says which (a changed train.lr or model.dropout was taken silently, as if the whole run had it)."""
    import logging
    import shutil

    from safetensors.torch import save_file

    moments = setup / "sim" / "checkpoints" / "step_000010" / "optimizer.safetensors"
    bad_moments = tmp_path / "bad_moments.safetensors"
    save_file({k: (v[:1] if k == "0.exp_avg" else v) for k, v in load_file(moments).items()}, bad_moments)
    cases = [   # (file, its new content, overrides, the message)
        ("teacher.json", '{"identity": ', [], "teacher.json: not JSON"),
        ("teacher.safetensors", b"\x00" * 300, [],
         "teacher.safetensors: damaged: truncated, or not a safetensors file"),
        ("checkpoints/step_000010/state.json", '{"stp": 10}', [], 'state.json: not a state.json ({"step": <steps'),
        ("checkpoints/step_000010/optimizer.safetensors", bad_moments.read_bytes(), [],
         "optimizer.safetensors: 0.exp_avg (shape [1, "),
        (None, None, ["model.dropout=0.5", "train.lr=0.5"], "trained with other settings (model.dropout: 0.1 then, "
                                                             "0.5 now; train.lr: 0.001 then, 0.5 now); only "),
        (None, None, ["train.max_steps=5"], "it is at step 10, past train.max_steps 5"),
    ]
    try:
        for i, (name, content, overrides, message) in enumerate(cases):
            out = tmp_path / f"sim{i}"
            shutil.copytree(setup / "sim", out)
            if name is not None:
                (out / name).write_bytes(content if isinstance(content, bytes) else content.encode())
            one_line_error(tasu_in_process(capsys, "train-simulator", "--encoder", str(setup / "enc"), "--data",
                                           str(setup / "asr.jsonl"), "--out", str(out), "--resume", *TINY,
                                           "train.max_steps=12", *overrides), message)
    finally:
        log = logging.getLogger("tasu.train_simulator")
        for handler in log.handlers:
            handler.close()
        log.handlers.clear()


def test_the_factory_builds_it_and_it_samples_batched_seeded_rows(setup):
    tok = tokenizer(setup)
    lo, hi = json.loads((setup / "sim" / "config.json").read_text())["wer_range"]
    sim = build_simulator(learned(setup, lo, hi), tok)
    ids = [tok.encode(s) for s in SENTENCES[:3]] + [[]]
    a = sim(ids, torch.Generator().manual_seed(1))
    b = sim(ids, torch.Generator().manual_seed(1))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.weights, b.weights)
    assert a.batch_size == 4 and a.topk == 4 and bool((a.lengths >= 1).all())
    dense = a.to_dense()
    assert torch.allclose(dense.sum(-1)[a.mask()], torch.ones(int(a.lengths.sum())), atol=1e-4)
    assert float(dense[~a.mask()].abs().sum()) == 0.0
    # an empty transcript: one blank row, as the rules give (the model wrote 8 confident tokens of nothing)
    assert int(a.lengths[3]) == 1 and int(a.ids[3, 0, 0]) == tok.blank_id and float(dense[3, 0, tok.blank_id]) == 1.0
    alone = sim([[]], torch.Generator().manual_seed(1))
    assert alone.lengths.tolist() == [1] and alone.ids.shape[1] == 1
    # the interface: a WER per utterance instead of the schedule's
    c = sim(ids, torch.Generator().manual_seed(1), wer=[hi] * 4)
    assert c.batch_size == 4 and all(token_error_rate(r, h) >= 0 for r, h in zip(ids[:3], row_tokens(c)))


def test_tasu_simulate_reports_the_asked_wer_and_the_rate(setup):
    lo, hi = json.loads((setup / "sim" / "config.json").read_text())["wer_range"]
    out = tasu("simulate", "--encoder", str(setup / "enc"), "--simulator", "learned", "--simulator-path",
               str(setup / "sim"), "--wer", str(hi), str(hi), "--samples", "3", "--text", SENTENCES[0])
    lines = out.stdout.splitlines()
    assert lines[-3] == f"asked WER (learned simulator, step 0): {100 * hi:.1f}-{100 * hi:.1f} %"
    assert lines[-2].startswith("token error rate (top-1 of each row vs the transcript): ")
    assert lines[-1].startswith("mean over 3 draws: ")


@pytest.mark.slow
def test_text_only_training_and_simulated_decoding_use_the_learned_simulator(setup, tmp_path):
    from fixtures import save_tiny_llm

    save_tiny_llm(tmp_path / "llm")
    lo, hi = json.loads((setup / "sim" / "config.json").read_text())["wer_range"]
    (tmp_path / "text.yaml").write_text(f"""
encoder: {{path: {setup}/enc}}
llm: {{path: {tmp_path}/llm}}
projector: {{name: linear-silu, options: {{hidden: 16}}}}
compress: {{threshold: 0.99, topk: 4}}
simulation: {{name: learned, path: {setup}/sim, wer: {{start: [{lo}, {lo}], end: [{hi}, {hi}], total_steps: 2}}}}
data: {{mode: text, train: [{setup}/asr.jsonl], max_tokens: 400, num_workers: 0}}
optim: {{lr: 1.0e-3, warmup_steps: 2, total_steps: 3}}
engine: {{device: cpu, zero_stage: 0}}
train: {{epochs: 2, max_steps: 3, log_interval: 1, save_interval: 3}}
""", encoding="utf-8")
    # other compression than the simulator's teacher had: its rows are not what decoding will meet. Said
    # before the models load (an LLM without its weights here: the check came after loading it)
    (tmp_path / "unloadable").mkdir()
    shutil.copy(tmp_path / "llm" / "config.json", tmp_path / "unloadable")
    one_line_error(tasu("train", "--config", str(tmp_path / "text.yaml"), "--exp-dir", str(tmp_path / "other"),
                        "compress.threshold=0.5", f"llm.path={tmp_path / 'unloadable'}", check=False),
                   "was trained on rows compressed with threshold 0.99, topk 4, but this training config "
                   "compresses with threshold 0.5, topk 4")
    tasu("train", "--config", str(tmp_path / "text.yaml"), "--exp-dir", str(tmp_path / "exp"))
    assert "simulated_ter" in (tmp_path / "exp" / "train.log").read_text()
    tasu("decode", "--exp", str(tmp_path / "exp"), "--data", str(setup / "asr.jsonl"), "--out",
         str(tmp_path / "dec"), "--input", "simulated", "--beam", "1", "--max-new-tokens", "3")
    assert len((tmp_path / "dec" / "hyp.trn").read_text().splitlines()) == 6
    assert json.loads((tmp_path / "dec" / "decode.json").read_text())["simulation"]["name"] == "learned"


def test_tasu_simulate_says_when_the_encoder_is_not_the_simulator_s_teacher(setup, tmp_path, capsys, caplog):
    """A simulator trained on another encoder's posteriors (same vocabulary, other files: a fine-tuned
    one, say) was used without a word; it may be meant, so it is one warning, not a refusal."""
    import shutil

    common = ["simulate", "--text", SENTENCES[0], "--simulator", "learned", "--simulator-path", str(setup / "sim"),
              "--wer", "1.0", "1.0"]
    caplog.set_level("WARNING", "tasu.simulate")
    assert tasu_in_process(capsys, *common, "--encoder", str(setup / "enc")).returncode == 0
    assert "another encoder" not in caplog.text
    shutil.copytree(setup / "enc", tmp_path / "enc")
    (tmp_path / "enc" / "fine_tuned.txt").write_text("other weights\n")   # another file: other encoder files
    assert tasu_in_process(capsys, *common, "--encoder", str(tmp_path / "enc")).returncode == 0
    assert "was trained on another encoder's posteriors than this encoder's (files sha256 " in caplog.text


def test_tasu_analyze_says_when_the_config_is_not_the_simulator_s_teacher(setup, tmp_path, caplog):
    """tasu analyze compared a learned simulator's rows with rows of another compression than it learned
    from, without a word (tasu simulate and tasu train say so)."""
    from tasu.analyze import run_analyze
    from tasu.config import load_config
    from tasu.experiment import ExperimentConfig

    caplog.set_level("WARNING", "tasu.simulate")
    lo, hi = json.loads((setup / "sim" / "config.json").read_text())["wer_range"]
    common = [f"encoder.path={setup / 'enc'}", "simulation.name=learned", f"simulation.path={setup / 'sim'}",
              f"simulation.wer={{start: [{lo}, {hi}], end: [{lo}, {hi}]}}", "compress.topk=4"]
    for threshold, said in (("0.99", False), ("0.5", True)):
        cfg = load_config(ExperimentConfig, None, [*common, f"compress.threshold={threshold}"])
        run_analyze(cfg, [str(setup / "asr.jsonl")], str(tmp_path / threshold), limit=2)
        assert ("was trained on rows compressed with threshold 0.99, topk 4, but this config compresses with "
                "threshold 0.5, topk 4" in caplog.text) == said


def test_asked_wers_the_calibration_does_not_reach_are_said_once(setup, caplog):
    """Asked outside what the calibrated rows reach, the nearest end was served without a word."""
    from tasu.simulate.learned import LearnedSimulator

    caplog.set_level("WARNING", "tasu.simulate")
    sim = LearnedSimulator.load(setup / "sim", tokenizer(setup))
    lo, hi = sim.wer_range
    assert hi - lo > 0.01
    reached = [hi + 0.02, hi + 0.5]   # its rows err more than asked everywhere (as a random encoder's)
    sim.c.calibration = {"temperature": 0.5, "condition": [lo, hi], "wer": reached}
    sim([[5, 6]], torch.Generator().manual_seed(0), wer=hi)   # within 3 points: nothing said
    assert "err at" not in caplog.text
    for _ in range(2):
        sim([[5, 6]], torch.Generator().manual_seed(0), wer=lo)
    assert caplog.text.count(f"asked WER {100 * lo:.1f}-{100 * lo:.1f} %, but its sampled rows err at "
                             f"{100 * reached[0]:.1f}-{100 * reached[1]:.1f} % only") == 1


def test_an_uncalibrated_simulator_directory_is_said_to_be(setup, caplog):
    """A checkpoint directory loads as a simulator, but reads asked WERs as raw conditions."""
    from tasu.simulate.learned import LearnedSimulator

    caplog.set_level("WARNING", "tasu.simulate")
    LearnedSimulator.load(setup / "sim", tokenizer(setup))
    assert "not calibrated" not in caplog.text
    checkpoint = setup / "sim" / "checkpoints" / "step_000010"
    LearnedSimulator.load(checkpoint, tokenizer(setup))
    assert f"{checkpoint} is not calibrated: an asked WER is its raw condition" in caplog.text


def test_bad_conditions_are_one_line_errors(setup, tmp_path, capsys):
    lo, hi = json.loads((setup / "sim" / "config.json").read_text())["wer_range"]
    common = ["simulate", "--encoder", str(setup / "enc"), "--text", SENTENCES[0], "--simulator", "learned"]
    below = max(lo - 0.2, 0.0) if lo > 0.0 else None
    if below is not None:
        one_line_error(tasu_in_process(capsys, *common, "--simulator-path", str(setup / "sim"), "--wer", "0",
                                       str(below)), "simulation.wer.start", "outside the range", "trained on")
    # the console script: exit status 1 and one line, no traceback
    one_line_error(tasu(*common, "--wer", "0.1", "0.1", check=False), "simulation: path:")
    one_line_error(tasu_in_process(capsys, *common, "--simulator-path", str(setup / "sim")), "simulation: wer:")
    one_line_error(tasu_in_process(capsys, *common, "--simulator-path", str(tmp_path), "--wer", str(hi), str(hi)),
                   "not a learned simulator's directory")
    other = tmp_path / "other"   # the same weights, declared for another encoder vocabulary
    other.mkdir()
    config = json.loads((setup / "sim" / "config.json").read_text())
    (other / "model.safetensors").write_bytes((setup / "sim" / "model.safetensors").read_bytes())
    (other / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 5}))
    one_line_error(tasu_in_process(capsys, *common, "--simulator-path", str(other), "--wer", str(hi), str(hi)),
                   f"vocabulary of {config['vocab_size'] + 5} ids", "this encoder has")
    (other / "config.json").write_text(json.dumps({**config, "vocab_digest": "0" * 64}))
    one_line_error(tasu_in_process(capsys, *common, "--simulator-path", str(other), "--wer", str(hi), str(hi)),
                   "same size, other pieces")
    outside = 0.0 if lo > 0.01 else 1.0   # a tiny random encoder's range is near 100 %
    if not lo <= outside <= hi:
        with pytest.raises(ValueError, match="outside the range"):
            build_simulator(learned(setup, lo, hi), tokenizer(setup))([[5, 6]], wer=outside)


def test_a_run_into_a_trained_directory_needs_resume_and_bad_data_is_one_line(setup, tmp_path, capsys):
    """In-process (tasu.cli.main): each case fails before any training; the log handlers the command
    sets up are closed afterwards, so nothing of it outlives the test."""
    import logging

    common = ["train-simulator", "--encoder", str(setup / "enc")]
    try:
        one_line_error(tasu_in_process(capsys, *common, "--data", str(setup / "asr.jsonl"), "--out",
                                       str(setup / "sim"), *TINY), "pass --resume")
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"key": "a", "task": "ASR", "target": "turn on the lights"}) + "\n")
        one_line_error(tasu_in_process(capsys, *common, "--data", str(bad), "--out", str(tmp_path / "x")),
                       f"{bad}:1: path: missing")
        wave = waveform(0.5).numpy()
        wave[10] = np.nan   # a whole header: found where the teacher's audio is read, named at its line
        sf.write(tmp_path / "nan.wav", wave, 16000, subtype="FLOAT")
        nan = tmp_path / "nan.jsonl"
        nan.write_text((setup / "asr.jsonl").read_text()
                       + json.dumps({"key": "n", "task": "ASR", "target": "hi", "path": str(tmp_path / "nan.wav")}))
        one_line_error(tasu_in_process(capsys, *common, "--data", str(nan), "--out", str(tmp_path / "n"), *TINY),
                       f"{nan}:7: path: 1 samples are not finite numbers")
        write_hf_ctc_dir(tmp_path / "hf", "wav2vec2")   # 15 ms: past the reader's 10 ms, short of wav2vec2's 25
        sf.write(tmp_path / "short.wav", waveform(0.015).numpy(), 16000)
        short = tmp_path / "short.jsonl"
        short.write_text(json.dumps({"key": "s", "task": "ASR", "target": "hi", "path": str(tmp_path / "short.wav")}))
        one_line_error(tasu_in_process(capsys, "train-simulator", "--encoder", str(tmp_path / "hf"), "--data",
                                       str(short), "--out", str(tmp_path / "s"), *TINY),
                       f"{short}:1: path: 240 samples at 16 kHz: shorter than the encoder's receptive field")
        one_line_error(tasu_in_process(capsys, *common, "--data", str(setup / "asr.jsonl"), "--out",
                                       str(tmp_path / "y"), "model.topk=8", "compress.topk=4"),
                       "model.topk 8 exceeds compress.topk 4")
        one_line_error(tasu_in_process(capsys, *common, "--data", str(setup / "asr.jsonl"), "--out",
                                       str(tmp_path / "z"), "train.temperature=0"), "temperature must be a number > 0")
    finally:
        log = logging.getLogger("tasu.train_simulator")
        for handler in log.handlers:
            handler.close()
        log.handlers.clear()
    assert (setup / "sim" / "checkpoints" / "last").read_text().strip() == "step_000010"   # left as it was


def test_a_lost_last_pointer_is_not_a_fresh_start(setup, tmp_path, capsys):
    """Without checkpoints/last, --resume would start at step 0 and delete the checkpoint at its first save."""
    import logging
    import shutil

    out = tmp_path / "sim"
    shutil.copytree(setup / "sim" / "checkpoints", out / "checkpoints")
    (out / "checkpoints" / "last").unlink()
    try:
        one_line_error(tasu_in_process(capsys, "train-simulator", "--encoder", str(setup / "enc"), "--data",
                                       str(setup / "asr.jsonl"), "--out", str(out), "--resume", *TINY),
                       f"{out}/checkpoints holds step_000010, but {out}/checkpoints/last is missing")
    finally:
        log = logging.getLogger("tasu.train_simulator")
        for handler in log.handlers:
            handler.close()
        log.handlers.clear()
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_000010"]


@pytest.mark.parametrize("kept", [("teacher.safetensors", "teacher.json"), ("teacher.json",), ()])
def test_a_resume_on_other_data_than_the_teacher_set_s_is_refused(setup, tmp_path, capsys, kept):
    """A resumed run whose --data has changed since its teacher set was made would go on from the old
    run's weights on another set; it stops with one line instead, and leaves the run as it was. So it
    does when the teacher set is gone but its record (teacher.json) is there (it was rebuilt from the
    new data), and when the record is gone too (nothing can say the data is the run's)."""
    import logging
    import shutil

    out = tmp_path / "sim"
    shutil.copytree(setup / "sim" / "checkpoints", out / "checkpoints")   # step_000010
    for name in kept:
        shutil.copy(setup / "sim" / name, out / name)
    data = tmp_path / "asr.jsonl"
    data.write_text((setup / "asr.jsonl").read_text().replace('"target": "', '"target": "please ', 1))
    try:
        one_line_error(tasu_in_process(capsys, "train-simulator", "--encoder", str(setup / "enc"), "--data",
                                       str(data), "--out", str(out), "--resume", *TINY),
                       f"cannot resume {out}: changed since its run's teacher set was made ({out}/teacher.json): "
                       "--data (its files or their contents); train into a new --out" if kept else
                       f"cannot resume {out}: {out}/teacher.json is gone, so its run's inputs cannot be checked "
                       "against these: put it back, or train into a new --out")
    finally:
        log = logging.getLogger("tasu.train_simulator")
        for handler in log.handlers:
            handler.close()
        log.handlers.clear()
    if kept:
        assert (out / "teacher.json").read_text() == (setup / "sim" / "teacher.json").read_text()
    else:
        assert not (out / "teacher.json").exists() and not (out / "teacher.safetensors").exists()
    assert (out / "checkpoints" / "last").read_text().strip() == "step_000010"


def test_the_teacher_set_is_made_anew_when_its_audio_changed(setup, tmp_path, monkeypatch, caplog):
    """The data files' digests do not see audio replaced under the same paths: the cached teacher set of
    the old audio was reused. The audio's contents are part of its identity now (not its times: a touched
    file, or a copy, is the same audio)."""
    import logging
    import shutil

    from tasu.dump import identity
    from tasu.simulate.learned import SimulatorError
    from tasu.train import simulator as training

    shutil.copytree(setup / "wav", tmp_path / "wav")
    data = tmp_path / "asr.jsonl"
    data.write_text((setup / "asr.jsonl").read_text().replace(str(setup / "wav"), str(tmp_path / "wav")))
    cfg = training.load_simulator_training_config(None, [f"encoder.path={setup / 'enc'}", *TINY])
    recordings = training._recordings([str(data)], tokenizer(setup), allow_pipes=False)
    ident = identity(cfg.encoder.path, cfg.encoder.type, cfg.compress)
    out = tmp_path / "sim"
    out.mkdir()
    shutil.copy(setup / "sim" / "teacher.safetensors", out)   # as a run on this data and audio left them
    teacher_json = {"identity": training._teacher_identity(cfg, [str(data)], recordings, ident), "examples": 18}
    (out / "teacher.json").write_text(json.dumps(teacher_json))

    def build(*args):
        raise AssertionError("built anew")

    monkeypatch.setattr(training, "build_teacher", build)
    caplog.set_level("INFO", "tasu.train_simulator")
    monkeypatch.setattr(logging.getLogger("tasu.train_simulator"), "propagate", True)
    load = [cfg, [str(data)], out, recordings, "cpu", ident]
    assert len(training.load_or_build_teacher(*load)) == 18   # the same audio: reused
    wav = tmp_path / "wav" / "u0.wav"
    os.utime(wav, ns=(0, 0))
    assert len(training.load_or_build_teacher(*load, resuming=True)) == 18   # touched, the same bytes
    sf.write(wav, 0 * waveform(0.5, seed=0).numpy(), 16000)   # new audio under the same path
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10 ** 9))
    with pytest.raises(AssertionError, match="built anew"):
        training.load_or_build_teacher(*load)
    with pytest.raises(SimulatorError, match="the audio the records name"):
        training.load_or_build_teacher(*load, resuming=True)


def test_a_resumed_run_drops_the_loss_lines_a_crash_garbled(setup, tmp_path, capsys):
    """On resuming, the curve's steps after the checkpoint are dropped (they are redone), and so are
    lines a crash left unreadable (a blank line, NUL bytes where the disk lost a block), rather than
    the run stopping on them. In-process, as above."""
    import shutil

    out = tmp_path / "sim"
    shutil.copytree(setup / "sim" / "checkpoints", out / "checkpoints")   # step_000010
    for name in ("teacher.safetensors", "teacher.json"):   # the same inputs and settings: reused
        shutil.copy(setup / "sim" / name, out / name)
    lines = (setup / "sim" / "loss.tsv").read_text().splitlines(keepends=True)
    assert [int(line.split("\t")[0]) for line in lines] == list(range(1, 11))
    (out / "loss.tsv").write_text("".join(lines[:4]) + "\n" + "\0\0\0\0" + "".join(lines[4:]) + "11\t0.5")
    result = tasu_in_process(capsys, "train-simulator", "--encoder", str(setup / "enc"), "--data",
                             str(setup / "asr.jsonl"), "--out", str(out), "--resume", *TINY, "train.max_steps=11",
                             "train.report_utterances=0")
    assert result.returncode == 0, result.stderr[-2000:]
    curve = (out / "loss.tsv").read_text().splitlines(keepends=True)
    assert curve[:-1] == lines[:4] + lines[5:] and curve[-1].startswith("11\t")   # step 5's line was garbled
    assert (out / "checkpoints" / "last").read_text() == "step_000011\n"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last", "step_000011"]   # 10 removed


def test_a_report_on_the_calibration_transcripts_says_so(setup, tmp_path, capsys, monkeypatch):
    """With too few transcripts for a held-out report, its lines read as a held-out check; they say so."""
    import shutil

    from tasu.train import simulator as training

    def calibrate(sim, transcripts):   # its 21 sampled points took a minute; the label is what is tested
        lo, hi = sim.c.wer_range
        return {"temperature": sim.temperature, "condition": [lo, hi], "wer": [lo, hi]}

    monkeypatch.setattr(training, "calibrate", calibrate)
    out = tmp_path / "sim"
    shutil.copytree(setup / "sim" / "checkpoints", out / "checkpoints")   # step_000010: rows that end (one step's
    for name in ("teacher.safetensors", "teacher.json"):                   # rows ran to their length limit, slowly)
        shutil.copy(setup / "sim" / name, out / name)
    result = tasu_in_process(capsys, "train-simulator", "--encoder", str(setup / "enc"), "--data",
                             str(setup / "asr.jsonl"), "--out", str(out), "--resume", *TINY, "train.max_steps=11",
                             "train.report_utterances=6", "train.report_wers=[1.0]")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not json.loads((out / "report.json").read_text())["held_out"]
    assert result.stdout.splitlines()[-1].endswith("% (on the calibration transcripts: too few others)")
    assert "% (on the calibration transcripts: too few others)" in (out / "train.log").read_text()


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_weights(setup, tmp_path):
    options = [*TINY, "train.max_steps=60", "train.save_interval=3", "train.report_utterances=0"]
    args = ["train-simulator", "--encoder", str(setup / "enc"), "--data", str(setup / "asr.jsonl")]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for out in (straight, killed):   # setup's teacher (the same inputs and teacher settings): only the loops run
        out.mkdir()
        for name in ("teacher.safetensors", "teacher.json"):
            (out / name).write_bytes((setup / "sim" / name).read_bytes())
    tasu(*args, "--out", str(straight), *options)
    assert "teacher: 18 examples from" in (straight / "train.log").read_text()   # reused, not rebuilt
    proc = subprocess.Popen([str(BIN / "tasu"), *args, "--out", str(killed), *options], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (killed / "checkpoints" / "last").exists():
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (killed / "model.safetensors").exists(), "the run finished before the kill: make it longer"
    out = tasu(*args, "--out", str(killed), "--resume", *options)
    assert "resumed from" in out.stderr
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [int(ln.split("\t")[0]) for ln in (killed / "loss.tsv").read_text().splitlines()]
    assert steps == list(range(1, 61))
    assert (killed / "loss.tsv").read_text() == (tmp_path / "straight" / "loss.tsv").read_text()


def test_training_loading_and_analyzing_leave_torch_s_random_stream_as_it_was(setup, tmp_path, capsys):
    """train-simulator seeded torch's global stream for its steps, and building an encoder or a
    simulator's model (tasu analyze, a learned simulator's load) drew from it: a caller's own draws
    after the call came out other than without it."""
    from tasu.simulate.learned import LearnedSimulator

    out = tmp_path / "sim"
    out.mkdir()
    for name in ("teacher.safetensors", "teacher.json"):   # setup's teacher: only the loop runs
        (out / name).write_bytes((setup / "sim" / name).read_bytes())
    lo, hi = json.loads((setup / "sim" / "config.json").read_text())["wer_range"]

    def load() -> int:
        LearnedSimulator.load(setup / "sim", tokenizer(setup))
        return 0

    calls = {
        "train-simulator": lambda: tasu_in_process(
            capsys, "train-simulator", "--encoder", str(setup / "enc"), "--data", str(setup / "asr.jsonl"),
            "--out", str(out), *TINY, "train.max_steps=3", "train.report_utterances=0").returncode,
        "load": load,
        "analyze": lambda: tasu_in_process(
            capsys, "analyze", "--encoder", str(setup / "enc"), "--data", str(setup / "asr.jsonl"), "--out",
            str(tmp_path / "analysis"), "--limit", "2", "simulation.name=learned",
            f"simulation.path={setup / 'sim'}", f"simulation.wer={{start: [{lo}, {hi}], end: [{lo}, {hi}]}}",
            "compress.threshold=0.99", "compress.topk=4").returncode,
    }
    for name, call in calls.items():
        torch.manual_seed(123)
        before = torch.get_rng_state()
        assert call() == 0, capsys.readouterr().err[-2000:]
        assert torch.equal(torch.get_rng_state(), before), name


def test_degraded_copies_are_seeded_and_grow_with_severity():
    from tasu.train.simulator import TeacherConfig, degrade

    wave = waveform(1.0)
    t = TeacherConfig()
    a = degrade(wave, 1.0, t, torch.Generator().manual_seed(0))
    b = degrade(wave, 1.0, t, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == wave.shape and float(a.abs().max()) <= 1.0
    mild = [float((degrade(wave, 0.1, t, torch.Generator().manual_seed(s)) - wave).pow(2).mean()) for s in range(8)]
    hard = [float((degrade(wave, 1.0, t, torch.Generator().manual_seed(s)) - wave).pow(2).mean()) for s in range(8)]
    assert sum(hard) > 3 * sum(mild)


def test_the_condition_is_learned_from_a_rule_teacher(monkeypatch, caplog):
    """A teacher whose error rates are known -- the rules' exact-count substitutions, four copies of
    each transcript at rates drawn from [0, 0.3], as the real teacher has copies at rising severity --
    and a tiny model: on transcripts it never saw, asking for more errors gives more errors.

    Measured (600 steps, 14 s on one core): asked 0 / 10 / 20 / 30 % -> 10.6 / 15.6 / 21.1 / 25.2 % at
    temperature 0.5; the offset at 0 % is the tiny model's own copying error. Calibrated on 64 of the
    fresh transcripts, asked rates inside what the model reaches are hit on the other 64; that it does
    not reach the bottom of the teacher's range is said (asked there, the curve's end was served silently).
    """
    import logging

    from tasu.simulate import RuleSimulator
    from tasu.simulate.learned import LearnedSimulator, LearnedSimulatorConfig, SimulatorModel
    from tasu.train.simulator import SimulatorLoopConfig, Teacher, batch_index, calibrate, learning_rate, wer_report

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        V, n = 24, 512
        g = torch.Generator().manual_seed(0)
        base = [torch.randint(1, V, (int(torch.randint(6, 12, (1,), generator=g)),), generator=g).tolist()
                for _ in range(n // 4 + 128)]
        texts, fresh = [x for x in base[:n // 4] for _ in range(4)], base[n // 4:]
        rates = torch.rand(n, generator=g, dtype=torch.float64) * 0.3
        rules = RuleSimulator(SimulationConfig(alpha=(0.0, 0.0), wer_split=(1.0, 0.0, 0.0)), V)
        post = rules(texts, g, wer=rates.tolist())
        ter = [token_error_rate(r, h) for r, h in zip(texts, row_tokens(post))]
        rows = [post.ids[i, :int(post.lengths[i])] for i in range(n)]
        offsets = torch.tensor([0] + [len(r) for r in rows]).cumsum(0)
        teacher = Teacher(torch.tensor([t for x in texts for t in x]), torch.tensor([0] + [len(x) for x in texts]).cumsum(0),
                          torch.cat(rows), torch.ones(int(offsets[-1]), 1), offsets, torch.tensor(ter, dtype=torch.float32))
        c = LearnedSimulatorConfig(vocab_size=V, blank_id=0, topk=1, d_model=64, heads=2, encoder_layers=1,
                                   decoder_layers=1, ffn=128, dropout=0.0, wer_range=(0.0, 0.3))
        torch.manual_seed(0)
        model = SimulatorModel(c)
        loop = SimulatorLoopConfig(max_steps=600, lr=5e-3, warmup_steps=20, batch_size=32)
        opt = torch.optim.AdamW(model.parameters(), lr=loop.lr)
        for step in range(loop.max_steps):
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, loop)
            loss = model.loss(*teacher.batch(batch_index(step, n, loop.batch_size, 0)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        sim = LearnedSimulator(model, temperature=0.5)
        measured = []
        for asked in (0.0, 0.1, 0.2, 0.3):
            out = sim(fresh, torch.Generator().manual_seed(1), wer=asked)
            errors = sum(token_error_rate(r, h) * len(r) for r, h in zip(fresh, row_tokens(out)))
            measured.append(errors / sum(len(r) for r in fresh))
        monkeypatch.setattr(logging.getLogger("tasu.train_simulator"), "propagate", True)
        caplog.set_level("WARNING", "tasu.train_simulator")
        c.calibration = calibrate(sim, fresh[:64])
        report = wer_report(sim, fresh[64:], SimulatorLoopConfig(report_wers=[0.15, 0.2]))
    finally:
        torch.set_num_threads(threads)
    assert measured == sorted(measured) and measured[-1] > measured[0] + 0.08, measured
    for row in report["rows"]:
        assert abs(row["simulated"] - row["asked"]) < 0.04, report
    reached = c.calibration["wer"][0]
    assert reached > 0.03 and (f"calibration: the sampled rows err at {100 * reached:.1f}-" in caplog.text
                               and "not over all of the teacher's 0.0-30.0 %" in caplog.text), caplog.text


def test_asked_wers_are_read_backwards_through_the_calibration_curve():
    from tasu.simulate.learned import invert_calibration

    condition, wer = [0.0, 0.25, 0.5, 0.75, 1.0], [0.02, 0.05, 0.05, 0.20, 0.40]   # flat from 0.25 to 0.5
    got = invert_calibration(torch.tensor([0.0, 0.02, 0.035, 0.05, 0.125, 0.3, 0.4, 0.9], dtype=torch.float64),
                             condition, wer)
    # below the curve: its first condition; 3.5 % halfway up the first segment; the flat stretch's own rate
    # at its first condition; 12.5 % halfway from 5 to 20 % in WER -> halfway from the stretch's *last*
    # condition 0.5 to 0.75 (not 0.5, inside the stretch, where the curve gives 5 %); beyond: the end
    assert got.tolist() == pytest.approx([0.0, 0.0, 0.125, 0.25, 0.625, 0.875, 1.0, 1.0])
    assert invert_calibration(torch.tensor([0.3]), [0.0, 1.0], [0.1, 0.1]).tolist() == [0.0]   # a flat curve
    # 0 % errors up to 0.2 (rows sharpened by sampling): 7.5 % is halfway up the rise from 0.2 to 0.3
    assert invert_calibration(torch.tensor([0.075]), [0.0, 0.1, 0.2, 0.3], [0.0, 0.0, 0.0, 0.15]).tolist() \
        == pytest.approx([0.25])


def test_the_calibration_curve_gives_back_the_asked_wer_at_the_inverted_condition():
    """On random curves with flat stretches (calibrate's running maximum makes them), the condition an
    asked rate inside the curve's range is inverted to is one where the curve errs at that rate."""
    from tasu.simulate.learned import invert_calibration

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 12))
        condition = np.sort(rng.choice(np.linspace(0.0, 1.0, 41), n, replace=False))
        wer = np.maximum.accumulate(rng.choice(np.linspace(0.0, 0.5, 6), n))   # few values: flat stretches
        asked = np.concatenate([rng.uniform(wer[0], wer[-1], 20), wer])
        got = invert_calibration(torch.tensor(asked), condition.tolist(), wer.tolist()).numpy()
        assert np.interp(got, condition, wer) == pytest.approx(asked, abs=1e-9), (condition, wer)


@pytest.fixture(scope="module")
def dump(setup, tmp_path_factory) -> Path:
    """A posterior dump of setup's records, made as the teacher's clean rows are: one recording per batch
    (the encoder's last bits depend on the batch), on one thread as the subprocesses run. It is made
    in-process (tasu dump-posteriors' own function; test_dump.py runs the command)."""
    from tasu.compress import CompressConfig
    from tasu.dump import dump_posteriors

    out = tmp_path_factory.mktemp("dump")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dump_posteriors([str(setup / "asr.jsonl")], str(out), str(setup / "enc"),
                        compress=CompressConfig(threshold=0.99, topk=4), batch_size=1)
    finally:
        torch.set_num_threads(threads)
    return out


DUMP_OPTIONS = [*TINY, "teacher.copies=0", "teacher.batch_size=1", "train.max_steps=1", "train.report_utterances=0"]


def same_teacher(a: Path, b: Path) -> bool:
    a, b = load_file(a / "teacher.safetensors"), load_file(b / "teacher.safetensors")
    return (torch.equal(a["row_ids"], b["row_ids"]) and torch.equal(a["row_offsets"], b["row_offsets"])
            and torch.allclose(a["row_probs"], b["row_probs"], atol=1e-6) and torch.equal(a["ter"], b["ter"]))


@pytest.mark.slow
def test_the_clean_teacher_rows_come_from_a_posterior_dump_when_given(setup, dump, tmp_path):
    """A dump holds what the live encoder computes, so the teacher made from it is the teacher made
    from audio."""
    for name, data in (("audio", setup / "asr.jsonl"), ("dump", dump / "asr.jsonl")):
        tasu("train-simulator", "--encoder", str(setup / "enc"), "--data", str(data), "--out", str(tmp_path / name),
             *DUMP_OPTIONS)
    assert same_teacher(tmp_path / "audio", tmp_path / "dump")

    # Records from a dump alone (no audio) beside records with audio only: without degraded copies
    # neither needs more, and the teacher is the same.
    dumped = [json.loads(line) for line in (dump / "asr.jsonl").read_text().splitlines()]
    audio = (setup / "asr.jsonl").read_text().splitlines(keepends=True)
    for record in dumped[:3]:
        del record["path"]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dumped[:3]) + "".join(audio[3:]))
    tasu("train-simulator", "--encoder", str(setup / "enc"), "--data", str(tmp_path / "mixed.jsonl"), "--out",
         str(tmp_path / "mixed"), *DUMP_OPTIONS)
    assert same_teacher(tmp_path / "audio", tmp_path / "mixed")

    # a record of an earlier dump made at the same path: its offset holds another recording's rows
    dumped[1]["posteriors_dump"] = "0" * 16
    (tmp_path / "stale.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dumped))
    out = tasu("train-simulator", "--encoder", str(setup / "enc"), "--data", str(tmp_path / "stale.jsonl"), "--out",
               str(tmp_path / "stale"), *DUMP_OPTIONS, check=False)
    assert out.returncode == 1 and f"{tmp_path / 'stale.jsonl'}:2: posteriors: " in out.stderr \
        and "written by an earlier dump made at" in out.stderr, out.stderr[-2000:]
