"""``tasu train`` on bad inputs and in bad situations: one clear line, exit status 1, nothing half-done.

Each case is a user's mistake or accident: bad data (checked before step 1), missing model files,
an experiment directory in use, a crafted checkpoint. The commands run in one Python process kept for
the file (conftest.py's ``tasu`` fixture), because starting DeepSpeed costs seconds each
time; a test of what only a process of its own shows (a signal, a traceback let through) starts one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from fixtures import (SENTENCES, lock_held_elsewhere, save_llm_without_tokenizer, save_tiny_llm, waveform,
                      write_hf_ctc_dir, write_sensevoice_dir)

from tasu.experiment import STEPS_AT_RATE_0

BIN = Path(sys.executable).parent
ENV = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
ENV.pop("TASU_DEBUG", None)



@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_failures")
    write_sensevoice_dir(root / "enc")
    save_llm_without_tokenizer(save_tiny_llm(root / "llm"), root / "llm_no_tokenizer")
    wavs = [root / f"u{i}.wav" for i in range(12)]
    for i, wav in enumerate(wavs):
        sf.write(wav, waveform(0.6, seed=i).numpy(), 16000)
    data_file(root, "train.jsonl", *(record(wav.stem, target=SENTENCES[i % len(SENTENCES)], path=str(wav))
                                     for i, wav in enumerate(wavs)))
    config = {"encoder": {"path": str(root / "enc")}, "llm": {"path": str(root / "llm")},
              "projector": {"name": "linear-silu", "options": {"hidden": 16}},
              "data": {"train": [str(root / "train.jsonl")], "max_tokens": 400, "num_workers": 0},
              "optim": {"lr": 1.0e-3, "warmup_steps": 2, "total_steps": 10},
              "engine": {"device": "cpu", "zero_stage": 2},
              "train": {"epochs": 1, "max_steps": 3, "log_interval": 1, "valid_interval": 100, "save_interval": 3}}
    (root / "train.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return root


def data_file(root: Path, name: str, *lines: str | dict, raw: bytes = b"") -> str:
    path = root / name
    path.write_bytes(raw + "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines).encode())
    return str(path)


def last_step(exp: Path) -> int:
    """The step of an experiment's last checkpoint; 0 before its first."""
    try:
        return int((exp / "checkpoints" / "last").read_text().split("_")[1])
    except (FileNotFoundError, IndexError, ValueError):
        return 0




@contextlib.contextmanager
def caplog_of(name: str):
    """The messages logger ``name`` emits inside the block (tasu's loggers do not propagate to pytest's)."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: messages.append(r.getMessage())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def record(key: str, **fields) -> dict:
    return {"key": key, "task": "ASR", "target": "turn on the lights", **fields}


@pytest.mark.slow
def test_bad_inputs_stop_with_one_line_before_step_one(setup, tmp_path, tasu):
    good = (setup / "train.jsonl").read_text().splitlines()
    wav = setup / "u0.wav"
    (tmp_path / "cut.wav").write_bytes(wav.read_bytes()[:2000])
    (tmp_path / "zero.wav").write_bytes(b"")
    with kaldiio.WriteHelper(f"ark:{tmp_path}/a.ark") as writer:
        writer["k"] = (16000, np.zeros(8000, np.int16))
    past_end = f"{tmp_path}/a.ark:{os.path.getsize(tmp_path / 'a.ark') + 10}"
    marker = tmp_path / "pipe_ran"
    many = [json.dumps(record(f"m{i}")) for i in range(299)] + ['{"key": "m299", "task": "ASR", "target": }']
    files = {
        "utf8": data_file(tmp_path, "utf8.jsonl", raw=b'{"key": "a", "task": "ASR", "target": "caf\xe9"}\n'),
        "json": data_file(tmp_path, "json.jsonl", good[0], '{"key": "x", "task": "ASR",'),
        "task": data_file(tmp_path, "task.jsonl", record("a", task="NOPE")),
        "late": data_file(tmp_path, "late.jsonl", *many),
        "empty": data_file(tmp_path, "empty.jsonl"),
        "blank": data_file(tmp_path, "blank.jsonl", record("a", target="   ")),
        "missing": data_file(tmp_path, "missing.jsonl", record("a", path=str(tmp_path / "gone.wav"))),
        "cut": data_file(tmp_path, "cut.jsonl", good[0], record("a", path=str(tmp_path / "cut.wav"))),
        "zero": data_file(tmp_path, "zero.jsonl", record("a", path=str(tmp_path / "zero.wav"))),
        "ark": data_file(tmp_path, "ark.jsonl", record("a", path=past_end)),
        "pipe": data_file(tmp_path, "pipe.jsonl", record("a", path=f"touch {marker}; cat {wav} |")),
        "special": data_file(tmp_path, "special.jsonl", good[0], record("h", task="hotword", hotword="b<|im_end|>")),
    }

    def case(name: str, *overrides: str) -> list[str]:
        return ["--config", str(setup / "train.yaml"), "--exp-dir", str(tmp_path / f"exp_{name}"), *overrides]

    audio = "data.mode=audio"
    cases = {  # name: (argv, what the one line must say)
        "utf8": (case("utf8", f"data.train=[{files['utf8']}]"),
                 f"{files['utf8']}:1: encoding: byte 0xe9 at column "),
        "json": (case("json", f"data.train=[{files['json']}]"), f"{files['json']}:2: json: "),
        "task": (case("task", f"data.train=[{files['task']}]"), f"{files['task']}:1: task: unknown task 'NOPE'"),
        "late": (case("late", f"data.train=[{files['late']}]"), f"{files['late']}:300: json: "),
        "empty": (case("empty", f"data.train=[{files['empty']}]"), f"{files['empty']} holds no records"),
        "beside": (case("beside", f"data.train=[{setup / 'train.jsonl'}, {files['empty']}]"),   # was trained, exit 0
                   f"data.train: {files['empty']} holds no records"),
        "blank": (case("blank", f"data.train=[{files['blank']}]"),
                  f"{files['blank']}:1: target: blank (whitespace only)"),
        "encoder": (case("encoder", f"encoder.path={tmp_path}/no_encoder"),
                    f"encoder.path '{tmp_path}/no_encoder' is not a directory"),
        "llm": (case("llm", f"llm.path={tmp_path}/no_llm"), f"llm.path '{tmp_path}/no_llm' is not a directory"),
        "missing": (case("missing", audio, f"data.train=[{files['missing']}]"),
                    f"{files['missing']}:1: path: no such file"),
        "cut": (case("cut", audio, f"data.train=[{files['cut']}]"), f"{files['cut']}:2: path: truncated"),
        "zero": (case("zero", audio, f"data.train=[{files['zero']}]"), f"{files['zero']}:1: path: "),
        "ark": (case("ark", audio, f"data.train=[{files['ark']}]"), f"{files['ark']}:1: path: "),
        "pipe": (case("pipe", audio, f"data.train=[{files['pipe']}]"),
                 f"{files['pipe']}:1: path: 'touch {marker}; cat {wav} |' is a shell command"),
        "tokenizer": (case("tokenizer", f"llm.path={setup}/llm_no_tokenizer"), "the LLM tokenizer is empty"),
        "special": (case("special", f"data.train=[{files['special']}]"),   # at its batch, naming a key only
                    f"{files['special']}:2: hotword: spells the LLM's special token '<|im_end|>' (the hotword prompts"),
    }
    results = [tasu(["train", *argv]) for argv, _ in cases.values()]
    assert len(results) == len(cases)
    for (name, (_, expected)), result in zip(cases.items(), results):
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("tasu train: error: ")]
        assert result.returncode == 1, (name, result)
        assert "Traceback" not in result.stderr, (name, result.stderr)
        assert len(errors) == 1 and expected in errors[0], (name, result.stderr)
        exp = tmp_path / f"exp_{name}"
        assert not (exp / "loss.tsv").exists() and not (exp / "checkpoints").exists(), name
    assert not marker.exists()


def test_audio_unreadable_past_its_header_stops_the_step_at_its_record_line(setup, tmp_path, tasu):
    """NaN samples pass the header check before step 1 and fail where a batch reads them: the one line
    named KEY: PATH alone, and a user had to search every data file for the record. In the main
    process and through a DataLoader worker."""
    wave = waveform(0.6).numpy()
    wave[100] = np.nan
    sf.write(tmp_path / "nan.wav", wave, 16000, subtype="FLOAT")
    good = [json.loads(ln) for ln in (setup / "train.jsonl").read_text().splitlines()[:3]]
    train = data_file(tmp_path, "train.jsonl", *good, record("bad", path=str(tmp_path / "nan.wav")))
    cases = [["--config", str(setup / "train.yaml"), "--exp-dir", str(tmp_path / f"exp{workers}"),
              "data.mode=audio", f"data.train=[{train}]", f"data.num_workers={workers}", "train.max_steps=10"]
             for workers in (0, 1)]
    for workers, argv in zip((0, 1), cases):
        result = tasu(["train", *argv])
        assert result.returncode == 1 and "Traceback" not in result.stderr, result
        assert f"tasu train: error: {train}:4: path: 1 samples are not finite numbers (NaN or infinite) " \
               f"({tmp_path / 'nan.wav'})" in result.stderr.splitlines(), (workers, result.stderr)
        last = (tmp_path / f"exp{workers}" / "train.log").read_text().splitlines()[-1]
        assert f"{train}:4: path: 1 samples" in last and "stopped at step" in last, last


def test_a_clip_too_short_for_the_encoder_stops_the_step_at_its_record_line(setup, tmp_path, tasu):
    """15 ms passes the 10 ms check of the audio reader, not a wav2vec2 front end's 25 ms: training
    stopped with "waveform(s) [0] of the batch are shorter ...", naming no record."""
    write_hf_ctc_dir(tmp_path / "hf", "wav2vec2")
    sf.write(tmp_path / "short.wav", waveform(0.015).numpy(), 16000)
    good = [json.loads(ln) for ln in (setup / "train.jsonl").read_text().splitlines()[:2]]
    train = data_file(tmp_path, "train.jsonl", *good, record("short", path=str(tmp_path / "short.wav")))
    result = tasu(["train", "--config", str(setup / "train.yaml"), "--exp-dir", str(tmp_path / "exp"),
                           "data.mode=audio", f"data.train=[{train}]", f"encoder.path={tmp_path / 'hf'}",
                           "train.max_steps=10"])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result
    assert f"tasu train: error: {train}:3: path: 240 samples at 16 kHz: shorter than the encoder's receptive " \
           f"field (325 samples, 20.3 ms): no frame ({tmp_path / 'short.wav'})" in result.stderr.splitlines()


def test_a_start_refused_after_taking_the_lock_frees_the_directory(setup, tmp_path, tasu):
    """In one process (the Python API, a notebook), a refused start kept the experiment's lock: the next,
    correct run into the same directory was 'in use: training by pid <its own>'."""
    case = ["--config", str(setup / "train.yaml"), "--exp-dir", str(tmp_path / "exp")]
    refused = tasu(["train", *case, f"train.init_from={tmp_path / 'no_such_exp'}"])
    trained = tasu(["train", *case])
    assert refused.returncode == 1 and "no_such_exp" in refused.stderr, refused
    assert trained.returncode == 0, trained.stderr[-2000:]


def test_validation_says_how_many_records_its_loss_leaves_out(setup, tmp_path, tasu):
    """A validation record past data.max_length was skipped without a word: the loss that ranks the
    checkpoints covered the others only."""
    long = " ".join([SENTENCES[0]] * 40)
    valid = data_file(tmp_path, "valid.jsonl", record("v0"), record("v1", target=long), record("v2"))
    result = tasu(["train", "--config", str(setup / "train.yaml"), "--exp-dir", str(tmp_path / "exp"),
                           f"data.valid=[{valid}]", "data.max_length=200", "train.valid_interval=2"])
    assert result.returncode == 0, result.stderr[-2000:]
    log = (tmp_path / "exp" / "train.log").read_text()
    assert re.search(r"step 2 validation: loss \S+, accuracy \S+ over \d+ tokens \(1 of 3 records skipped as too "
                     r"long/short\)", log), log


def test_the_last_step_is_validated_when_it_falls_on_a_save_step(setup, tmp_path, tasu):
    """max_steps on a save_interval step that is no valid_interval step: the final model was saved
    unvalidated and never ranked, so decoding 'best' took an earlier one."""
    valid = data_file(tmp_path, "valid.jsonl", record("v0"), record("v1"))
    result = tasu(["train", "--config", str(setup / "train.yaml"), "--exp-dir", str(tmp_path / "exp"),
                           f"data.valid=[{valid}]", "train.max_steps=3", "train.valid_interval=2",
                           "train.save_interval=3", "train.keep_best=2"])
    assert result.returncode == 0, result.stderr[-2000:]
    best = json.loads((tmp_path / "exp" / "checkpoints" / "best.json").read_text())
    assert sorted(b["step"] for b in best) == [2, 3], best


def test_a_validation_over_no_token_stops_rather_than_rank_a_nan_loss(setup, tmp_path, tasu):
    """Every validation record too long for data.max_length: 'loss nan over 0 tokens', ranked best by
    keep_best (sorting keeps a NaN first), so decoding 'best' used step 2's model, exit 0."""
    long = " ".join([SENTENCES[0]] * 40)
    valid = data_file(tmp_path, "valid.jsonl", *(record(f"v{i}", target=long) for i in range(3)))
    result = tasu(["train", "--config", str(setup / "train.yaml"), "--exp-dir", str(tmp_path / "exp"),
                           f"data.valid=[{valid}]", "data.max_length=200", "train.valid_interval=2"])
    assert result.returncode == 1 and "step 2 validation covered no token: every validation record was skipped" \
        in result.stderr, result.stderr
    assert not (tmp_path / "exp" / "checkpoints" / "best.json").exists()


@pytest.mark.slow
def test_a_started_run_restarts_cleanly_and_a_crafted_checkpoint_is_refused(setup, tmp_path, tasu):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "loss.tsv").write_text("1\t9.0\n2\t9.0\n3\t9.0\n4\t9.0\n")  # a start killed before its first checkpoint
    cmd = ["train", "--config", str(setup / "train.yaml"), "--exp-dir", str(exp)]
    out = tasu(cmd, umask=0o022)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [line.split("\t")[0] for line in (exp / "loss.tsv").read_text().splitlines()] == ["1", "2", "3"]
    # the rate each step trained at (the log said the next step's): DeepSpeed's warm-up gives the first
    # STEPS_AT_RATE_0 steps none, the next 1/warmup_steps of optim.lr
    rates = re.findall(r"step \d+ epoch 0: .*?, lr (\S+),", (exp / "train.log").read_text())
    assert rates == ["0"] * STEPS_AT_RATE_0 + ["0.0005"], rates
    for written in (exp / "config.yaml", exp / "checkpoints" / "last", exp / "checkpoints" / "best.json"):
        assert stat.S_IMODE(written.stat().st_mode) == 0o644, written  # the umask's mode, not mkstemp's 0600

    # DeepSpeed's optimizer state (ZeRO 2) loads through the allow-list ...
    from tasu.train.checkpoint import load_engine_file
    from tasu.model_io import CheckpointError

    ds_dir = exp / "checkpoints" / "step_000003" / "engine" / "ds"
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        assert isinstance(load_engine_file(ds_dir / name), dict)

    # ... and a payload in its place runs nothing: the resume is refused with one line.
    marker = tmp_path / "payload_ran"
    torch.save({"module": Payload(marker)}, ds_dir / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointError, match="refused to load.*it names posix.system"):
        load_engine_file(ds_dir / "mp_rank_00_model_states.pt")
    resumed = tasu(cmd + ["--resume", "train.max_steps=4"])
    assert resumed.returncode == 1 and not marker.exists()
    assert "Traceback" not in resumed.stderr
    assert "tasu train: error: " in resumed.stderr and "refused to load" in resumed.stderr

    # ... and so is a damaged state file (a copy cut short), named, not an EOFError without a message.
    state = exp / "checkpoints" / "step_000003" / "engine" / "state_rank0.pt"
    state.write_bytes(b"")
    resumed = tasu(cmd + ["--resume"])
    assert resumed.returncode == 1 and "Traceback" not in resumed.stderr
    assert "state_rank0.pt: damaged: truncated, or not a torch.save file (0 bytes)" in resumed.stderr

    # A plain re-run of a started experiment says what to do, in one line.
    again = tasu(cmd)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert f"tasu train: error: {exp} already holds checkpoints: pass --resume" in again.stderr


@pytest.mark.slow
def test_a_resume_onto_other_data_or_settings_is_refused_and_moved_data_resumes(setup, tmp_path, tasu):
    """Exact resume holds only for the run that wrote the checkpoint. A training file remade since (as
    stage 2 remakes one), or a setting changed since, stops the resume with one line that names it: a
    finished run would otherwise end at once with its old model and exit 0. The run's length may
    change, and data moved elsewhere (the same bytes) resumes (test_train.py resumes a killed run)."""
    from tasu.config import load_config
    from tasu.experiment import ExperimentConfig
    from tasu.fileio import MetadataError
    from tasu.train.same_run import ResumeError, check_same_run, data_record

    train = tmp_path / "train.jsonl"
    train.write_bytes((setup / "train.jsonl").read_bytes())
    exp = tmp_path / "exp"
    cmd = ["train", "--config", str(setup / "train.yaml"), "--exp-dir", str(exp)]
    out = tasu(cmd + [f"data.train=[{train}]"])
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = exp / "checkpoints" / "step_000003"
    recorded = json.loads((ckpt / "engine" / "data.json").read_text())
    assert recorded["train"][0]["sha256"] == hashlib.sha256(train.read_bytes()).hexdigest()
    prompts = (ckpt / "model" / "prompts.jsonl").read_text()

    def check(*overrides: str) -> None:
        cfg = load_config(ExperimentConfig, setup / "train.yaml", [f"data.train=[{train}]", *overrides])
        for section in (cfg.encoder, cfg.llm):   # as the trainer saves them
            section.path = str(Path(section.path).resolve())
        check_same_run(ckpt, cfg, prompts, data_record(cfg))

    check("train.max_steps=5", "train.save_interval=1", "data.num_workers=1")   # the same run, longer
    with pytest.raises(ResumeError, match=r"optim.lr: 0.001 then, 0.0005 now.*Train into a new --exp-dir"):
        check("optim.lr=5e-4")
    with pytest.raises(ResumeError, match=r"data.train weights: \[1.0\] then, \[2.0\] now"):
        check(f"data.train=[{{path: {train}, weight: 2.0}}]")
    with pytest.raises(ResumeError, match=r"data.train: 1 file\(s\) then, 2 now"):
        check(f"data.train=[{train}, {train}]")
    with pytest.raises(ResumeError, match="the prompt set .* is not the one the run read"):
        check_same_run(ckpt, load_config(ExperimentConfig, ckpt / "model" / "config.yaml"), prompts + "\n",
                       recorded)

    # written by 2 processes, resumed by 1: its batch count was of a 2-process plan (ZeRO-0 went on, exit 0)
    shutil.copy(ckpt / "engine" / "state_rank0.pt", ckpt / "engine" / "state_rank1.pt")
    out = tasu(cmd + [f"data.train=[{train}]", "--resume", "train.max_steps=4"])
    assert out.returncode == 1 and (f"{ckpt} was written by 2 process(es) and this run has 1: resume with as many"
                                    in out.stderr), out.stderr[-2000:]
    (ckpt / "engine" / "state_rank1.pt").unlink()

    # encoder.path may move, but not to another vocabulary of the same size: a resume (or a curriculum's
    # init_from) trained on, exit 0, and its checkpoints then recorded the new vocabulary
    import sentencepiece as spm

    from fixtures import SENSEVOICE_BPE

    other = tmp_path / "enc"
    shutil.copytree(setup / "enc", other)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([s[::-1] for s in SENTENCES]), model_prefix=str(tmp_path / "bpe"),
        vocab_size=60, model_type="bpe", character_coverage=1.0, minloglevel=2)
    (tmp_path / "bpe.model").replace(other / SENSEVOICE_BPE)
    for argv in ([f"data.train=[{train}]", f"encoder.path={other}", "--resume", "train.max_steps=4"],
                 [f"data.train=[{train}]", f"encoder.path={other}", f"train.init_from={exp}", "--exp-dir",
                  str(tmp_path / "next")]):
        out = tasu(cmd + argv)
        assert out.returncode == 1 and f"{ckpt} was trained on the ids of another encoder vocabulary than " \
            f"encoder.path {other}'s" in out.stderr, out.stderr[-2000:]
    assert (exp / "checkpoints" / "last").read_text().strip() == "step_000003"

    # llm.path may move, but not to another LLM of the same shapes (a base release for its instruct one): a
    # resume or a curriculum's next stage trained on, half one model and half the other, exit 0
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    moved_llm, other_llm = tmp_path / "llm_copy", tmp_path / "llm_other"
    shutil.copytree(setup / "llm", moved_llm)
    shutil.copytree(setup / "llm", other_llm)
    weights = load_file(other_llm / "model.safetensors")
    save_file({k: v * 0.5 for k, v in weights.items()}, other_llm / "model.safetensors", metadata={"format": "pt"})
    check(f"llm.path={moved_llm}")
    with pytest.raises(ResumeError, match=rf"llm.path: the run trained for the LLM {setup / 'llm'} \(sha256 "
                                          rf"[0-9a-f]{{12}}\.\.\.\); it is {other_llm} \(sha256"):
        check(f"llm.path={other_llm}")
    out = tasu(cmd + [f"data.train=[{train}]", f"llm.path={other_llm}", f"train.init_from={exp}", "--exp-dir",
                      str(tmp_path / "next")])
    assert out.returncode == 1 and f"train.init_from {ckpt}: it was trained for the LLM {setup / 'llm'} " \
        f"(sha256" in out.stderr and "a projector is trained for one LLM" in out.stderr, out.stderr[-2000:]
    # nor at decoding (tasu decode and transcribe, Speech2Text and tasu export load through load_trained)
    from tasu.model_io import CheckpointError, load_trained

    load_trained(exp, audio=False, overrides=[f"llm.path={moved_llm}"])
    with pytest.raises(CheckpointError, match=rf"{ckpt} was trained for another LLM than llm.path {other_llm} "):
        load_trained(exp, audio=False, overrides=[f"llm.path={other_llm}"])
    # an export's LLM is its own llm/ (re-saved, LoRA merged in): a next stage from it on the base LLM lost
    # the adapters and ran the projector on another LLM, exit 0
    from tasu.export import export
    from tasu.lock import DirLock
    from tasu.train.same_run import init_llm_difference
    from tasu.train.trainer import Trainer, init_from_running

    from tasu.model_io import LLM_KEY, VOCAB_KEY, WEIGHTS

    def llm_config(llm: Path):
        return load_config(ExperimentConfig, setup / "train.yaml", [f"data.train=[{train}]", f"llm.path={llm}"])

    exported = export(exp, tmp_path / "exported")   # no adapters to merge: its llm/ re-saves the base LLM
    for llm in (setup / "llm", exported / "llm"):   # either one decodes it and may be started from it
        assert init_llm_difference(exported, data_record(llm_config(llm))) is None
        load_trained(exported, audio=False, overrides=[f"llm.path={llm}"])
    assert f"it was trained for the LLM {exported / 'llm'} (sha256" in init_llm_difference(
        exported, data_record(llm_config(other_llm)))
    # an export into the encoder's directory copied the copy into itself, and named a link loop
    from unittest import mock

    with pytest.raises(ValueError, match=rf"{setup / 'enc' / 'exported'} is inside encoder.path {setup / 'enc'}, "
                                         "which export copies: write it elsewhere"), \
            mock.patch("tasu.model_io.build_model", side_effect=AssertionError("loaded first")):
        export(exp, setup / "enc" / "exported")
    assert not (setup / "enc" / ".exported.partial").exists()
    # an export of that export records the base LLM still (it recorded the first export's llm/ as its base)
    load_trained(export(exported, tmp_path / "again"), audio=False, overrides=[f"llm.path={setup / 'llm'}"])
    # another chat template alone (transformers saves it as chat_template.jinja) prompts otherwise
    template_llm = tmp_path / "llm_template"
    shutil.copytree(setup / "llm", template_llm)
    assert (template_llm / "chat_template.jinja").is_file()
    (template_llm / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    with pytest.raises(CheckpointError, match="was trained for another LLM than llm.path"):
        load_trained(exp, audio=False, overrides=[f"llm.path={template_llm}"])
    # a checkpoint that recorded its LLM before the chat template files were digested still loads on it
    from tasu.model_io import _llm_digests, is_llm, llm_digest

    weights = exported / "model" / WEIGHTS
    with safe_open(str(weights), "pt") as f:
        metadata = f.metadata()
    full, without_template = _llm_digests(exported / "llm")
    for legacy in (without_template, full.removeprefix("v2:")):   # as the two versions before the mark recorded it
        save_file(load_file(weights), weights, metadata={**metadata, LLM_KEY: legacy})
        load_trained(exported, audio=False)
    (template_llm / "chat_template.jinja").unlink()   # and a digest of now of an LLM without a template...
    without = llm_digest(template_llm)
    (template_llm / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")   # ...is not one with
    assert not is_llm(template_llm, (without, None)) and is_llm(template_llm, (llm_digest(template_llm), None))
    weights = exported / "model" / WEIGHTS   # as an export that merged LoRA adapters records it: its llm/ only
    with safe_open(str(weights), "pt") as f:
        kept = {k: f.metadata()[k] for k in (VOCAB_KEY, LLM_KEY)}
    save_file(load_file(weights), weights, metadata=kept)
    assert f"it was trained for the LLM {exported / 'llm'} (sha256" in init_llm_difference(
        exported, data_record(llm_config(setup / "llm")))
    # nor from an experiment whose training is running: its "finished" model may train on (a --resume)
    with DirLock(exp, "training"):
        assert init_from_running(str(exp)).startswith(f"train.init_from {exp}: its training is running (pid "
                                                      f"{os.getpid()} ")
    assert init_from_running(str(exp)) is None and Trainer._init_checkpoint(str(exp)) == ckpt

    # stage 2 remakes the file: one target changed, the same path; the same bytes elsewhere would resume
    moved = tmp_path / "elsewhere" / "train.jsonl"
    moved.parent.mkdir()
    moved.write_bytes(train.read_bytes())
    check(f"data.train=[{moved}]")
    train.write_text(train.read_text().replace("turn on the", "turn off the", 1))
    out = tasu(cmd + [f"data.train=[{train}]", "--resume"])
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert (f"tasu train: error: cannot resume {exp} from step_000003: its run read other data or settings: "
            f"{train}: not the file the run read ({train}, {moved.stat().st_size} bytes") in out.stderr
    assert (exp / "checkpoints" / "last").read_text().strip() == "step_000003"

    # a damaged record is refused, not trusted; a checkpoint of an older tasu has none: that is said, not refused
    for damaged in ("{", '{"train": [{"path": 1}], "valid": []}', "[]"):
        (ckpt / "engine" / "data.json").write_text(damaged)
        with pytest.raises(MetadataError, match=r"data.json: not (JSON|the record of the files a run read)"):
            check()
    (ckpt / "engine" / "data.json").unlink()
    with caplog_of("tasu.train") as records:
        check()
    assert any("did not record the run's data" in r for r in records)


# Builds the trainer (the prompts are read), edits the prompts file as a user preparing the next run
# would, touches the training file (the same bytes) and trains; after step 3 it appends a record to the
# training file, as a data-preparation stage writing the next corpus into it would: argv[1] the config,
# argv[2] the experiment dir, argv[3] the prompts file, argv[4] the training file.
EDIT_FILES_WHILE_TRAINING = """
import os, sys
from pathlib import Path
from tasu.config import load_config
from tasu.experiment import ExperimentConfig
from tasu.train.trainer import Trainer, TrainingError

config, exp, prompts, data = sys.argv[1:]
trainer = Trainer(load_config(ExperimentConfig, config, [f"data.prompts={prompts}", f"data.train=[{data}]",
                                                        "data.max_batch_size=2", "train.max_steps=6"]), exp)
Path(prompts).write_text('{"task": "ASR", "prompt": "Edited for another run."}\\n', encoding="utf-8")
os.utime(data, ns=(0, 0))
step = trainer._train_step


def append_after_step_4(batch, window):   # after the first save (step 3), before the next
    step(batch, window)
    if trainer.step == 4:
        with open(data, "a", encoding="utf-8") as f:
            f.write(open(data, encoding="utf-8").readline())


trainer._train_step = append_after_step_4
try:
    trainer.fit()
except TrainingError as e:
    print(e)
finally:
    trainer.lock.release()
"""


def test_a_data_file_replaced_with_its_old_size_and_mtime_is_seen(tmp_path):
    """rsync -a or cp -p of a new version as long as the old one puts its mtime back: size and mtime
    alone said 'unchanged', and the next epochs trained on records never checked, exit 0."""
    import types

    from tasu.data.batching import Source
    from tasu.experiment import ExperimentConfig
    from tasu.fileio import file_sha256
    from tasu.train.trainer import Trainer, TrainingError, _file_stats

    data = Path(data_file(tmp_path, "train.jsonl", *(record(f"k{i}", target="kitchen lights") for i in range(4))))
    cfg = ExperimentConfig()
    cfg.data.train, cfg.data.valid = [Source(str(data))], []
    run = types.SimpleNamespace(cfg=cfg, rank=0, data_stats=_file_stats(cfg),
                                data_record={"train": [{"path": str(data), "sha256": file_sha256(data)}], "valid": []})
    run._same_bytes = lambda path: Trainer._same_bytes(run, path)
    os.chmod(data, 0o600)   # the same bytes, other status: a look at them, and on
    Trainer._check_data_unchanged(run)
    then = data.stat()
    new = Path(data_file(tmp_path, "new.jsonl", *(record(f"k{i}", target="bedroom lights") for i in range(4))))
    os.replace(new, data)
    os.utime(data, ns=(then.st_atime_ns, then.st_mtime_ns))
    with pytest.raises(TrainingError, match=r"train.jsonl changed while this run was training \(rewritten, as long\)"):
        Trainer._check_data_unchanged(run)


@pytest.mark.slow
def test_a_checkpoint_records_the_files_the_run_read_and_a_data_file_changed_stops_it(setup, tmp_path):
    """The prompts are read once, at the start. The training files are read again each epoch: one appended
    to during a run trained its next epoch on records never checked, and its checkpoints recorded the file
    as it was."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"task": "ASR", "prompt": "Transcribe the audio."}\n', encoding="utf-8")
    read = prompts.read_text(encoding="utf-8")
    data = tmp_path / "train.jsonl"
    shutil.copy(setup / "train.jsonl", data)
    size = data.stat().st_size
    out = subprocess.run([sys.executable, "-c", EDIT_FILES_WHILE_TRAINING, str(setup / "train.yaml"),
                          str(tmp_path / "exp"), str(prompts), str(data)], env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Edited" in prompts.read_text(encoding="utf-8")
    assert (tmp_path / "exp" / "checkpoints" / "step_000003" / "model" / "prompts.jsonl").read_text() == read
    # touched (the same bytes): trained on; appended to: no checkpoint records it as it was
    assert sorted(p.name for p in (tmp_path / "exp" / "checkpoints").glob("step_*")) == ["step_000003"]
    assert out.stdout.splitlines()[-1] == (f"{data} changed while this run was training ({size} bytes then, "
                                           f"{data.stat().st_size} now): keep a run's data files as they are until "
                                           "it ends; put the file back to --resume, or train a new experiment")


def test_a_damaged_engine_file_is_named_and_not_unpickled(tmp_path):
    from tasu.model_io import CheckpointError
    from tasu.train.checkpoint import load_engine_file

    good = tmp_path / "good.pt"
    torch.save({"step": 2, "position": {"epoch": 0, "consumed": 2}, "best": []}, good)
    whole = good.read_bytes()
    assert load_engine_file(good)["step"] == 2
    for name, content in (("empty", b""), ("cut", whole[:len(whole) // 2]), ("text", b"hello world\n"),
                          ("bytes", bytes(range(256)))):
        path = tmp_path / f"{name}.pt"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: damaged: truncated, or not a "
                                                  rf"torch.save file \({len(content)} bytes\); resume from"):
            load_engine_file(path)


class Payload:
    """What an attacker would put in a checkpoint: unpickling it runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.slow
def test_a_second_run_into_one_experiment_is_refused_with_the_first_ones_pid(setup, tmp_path, tasu):
    exp = tmp_path / "exp"
    with lock_held_elsewhere(exp, "training") as pid:
        result = tasu(["train", "--config", str(setup / "train.yaml"), "--exp-dir", str(exp)])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{exp} is in use: training by pid {pid} on " in result.stderr
    assert not (exp / "checkpoints").exists()


def test_a_file_where_the_checkpoints_go_stops_the_run_before_step_one(setup, tmp_path, tasu):
    """It trained until its first save and failed there with '.step_000004.partial/model: Not a directory'."""
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "checkpoints").write_text("")
    result = tasu(["train", "--config", str(setup / "train.yaml"), "--exp-dir", str(exp)])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{exp / 'checkpoints'}: a file, not a directory: checkpoints are written into it" in result.stderr
    assert not (exp / "loss.tsv").exists()


def test_a_run_ended_in_a_process_that_goes_on_leaves_its_train_log_closed(setup, tmp_path, tasu):
    """The API, a notebook and this file's kept process run commands one after another: a run, finished
    or failed, left its train.log open and its loggers writing into it, the next command's messages too.
    A start refused once train.log was open said why on stderr alone."""
    finished = tasu(["train", "--config", str(setup / "train.yaml"), "--exp-dir", str(tmp_path / "finished")])
    refused = tasu(["train", "--config", str(setup / "train.yaml"), "--exp-dir", str(tmp_path / "refused"),
                    f"train.init_from={tmp_path / 'no_such_exp'}"])   # refused after train.log was opened
    assert finished.returncode == 0 and refused.returncode == 1, refused.stderr[-2000:]
    last = (tmp_path / "refused" / "train.log").read_text().splitlines()[-1]   # why, as stderr says it too
    assert re.search(r"\] ERROR did not start: train.init_from: \S*no_such_exp is neither", last), last
    assert not [f for f in tasu.open_files() if f.startswith(str(tmp_path))], tasu.open_files()


def test_debug_lets_the_traceback_through(setup, tmp_path):
    argv = [str(BIN / "tasu"), "train", "--config", str(setup / "train.yaml"), "--exp-dir", str(tmp_path / "x"),
            f"llm.path={tmp_path}/none"]
    plain = subprocess.run(argv, env=ENV, capture_output=True, text=True)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    debug = subprocess.run(argv + ["--debug"], env=ENV, capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    env = subprocess.run(argv, env=dict(ENV, TASU_DEBUG="1"), capture_output=True, text=True)
    assert env.returncode == 1 and "Traceback (most recent call last)" in env.stderr


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 40 kB file system: room for the logs of a run, not for its first checkpoint."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_checkpoint(setup, small_disk, tasu):
    result = tasu(["train", "--config", str(setup / "train.yaml"), "--exp-dir", str(small_disk / "exp")])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert (f"tasu train: error: cannot write checkpoint step_000003 in {small_disk / 'exp' / 'checkpoints'}: "
            "0.0 MiB free on that disk") in result.stderr
    assert "no checkpoint was written" in result.stderr
    assert not list((small_disk / "exp" / "checkpoints").iterdir())  # no partial checkpoint left behind


def test_transcripts_the_encoder_cannot_spell_are_warned_of(setup, tmp_path):
    """Transcripts the vocabulary cannot spell trained on rows of word boundaries alone (upper-case text
    for a lower-case vocabulary did: 'TURN ON THE LIGHTS' -> 4 ids of one piece), with no word of warning.
    Upper case is now mapped to the vocabulary's; a script it lacks (Greek letters here) is not."""
    from tasu.data.prompts import load_prompts
    from tasu.encoders.tokenizers import SentencePieceTokenizer
    from tasu.train.trainer import warn_unspelled

    def greek(text: str) -> str:
        return "".join(chr(0x3b1 + ord(c) % 24) if c.isalpha() else c for c in text)

    tokenizer = SentencePieceTokenizer.from_funasr_dir(setup / "enc")
    upper = data_file(tmp_path, "upper.jsonl", *(record(f"u{i}", target=s.upper()) for i, s in enumerate(SENTENCES)))
    other = data_file(tmp_path, "greek.jsonl", *(record(f"g{i}", target=greek(s)) for i, s in enumerate(SENTENCES)))
    with caplog_of("tasu.train") as messages:
        warn_unspelled([upper, other, str(setup / "train.jsonl")], tokenizer, load_prompts())
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"{len(SENTENCES)} of the first {len(SENTENCES)} transcripts of {other} lose over "
                                  f"half their characters to the encoder's vocabulary (e.g. {other}:1 ")
    # digits the vocabulary lacks: "7 am" trained on "am", the target keeping "7", with no word
    digits = data_file(tmp_path, "digits.jsonl", record("d0", target=SENTENCES[0]),
                       record("d1", target=SENTENCES[1] + " at 7 am"))
    with caplog_of("tasu.train") as messages:
        warn_unspelled([digits], tokenizer, load_prompts())
    assert messages == [f"1 of the first 2 transcripts of {digits} hold characters the encoder's vocabulary cannot "
                        f"spell (e.g. {digits}:2 {(SENTENCES[1] + ' at 7 am')[:40]!r} loses '7'): their simulated "
                        "speech lacks them while the target keeps them, and the model learns to write what it never "
                        "heard; write the text as the encoder spells it (numbers as words)"]


def test_an_epoch_limited_run_says_when_its_rate_schedule_ends(setup, tmp_path, tasu):
    """No max_steps and more batches than optim.total_steps: the rest of the epochs train at rate 0."""
    result = tasu(["train", "--config", str(setup / "train.yaml"), "--exp-dir", str(tmp_path / "exp"),
                           "train.max_steps=null", "train.epochs=2", "optim.total_steps=3", "train.save_interval=100"])
    logged = result.stderr + "".join(p.read_text() for p in (tmp_path / "exp").rglob("train.log"))
    assert result.returncode == 0 and "step 3 is optim.total_steps: the learning rate is 0 from here on" in logged


def test_an_epoch_limited_run_of_steps_at_rate_0_alone_trained_nothing_and_says_so(setup, tmp_path, tasu):
    """Two batches in all, no max_steps: both ran at DeepSpeed's warm-up rate of 0, and the run saved its
    initial weights as finished, exit 0."""
    train = data_file(tmp_path, "two.jsonl", *(json.loads(line) for line in
                                               (setup / "train.jsonl").read_text().splitlines()[:2]))
    exp = tmp_path / "exp"
    result = tasu(["train", "--config", str(setup / "train.yaml"), "--exp-dir", str(exp), f"data.train=[{train}]",
                           "data.max_batch_size=1", "train.max_steps=null"])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert ("the 1 epoch(s) held 2 batch(es) per process: the first 2 steps run at a learning rate of 0, so nothing "
            "was trained; raise train.epochs or give more data") in result.stderr
    assert not (exp / "checkpoints").exists() or last_step(exp) == 0


def test_make_corpus_says_a_bad_option_in_one_line(tmp_path):
    local = Path(__file__).resolve().parents[1] / "egs" / "mini" / "local"
    (tmp_path / "afile").write_text("")
    for args, error in ((["--nj", "0"], "--nj must be at least 1, not 0"),
                        (["--data-dir", str(tmp_path / "afile"), "--num-train", "2", "--num-dev", "1", "--num-test",
                          "1", "--num-text-only", "2"], "make_corpus.py: ")):
        out = subprocess.run([sys.executable, str(local / "make_corpus.py"), *args], capture_output=True, text=True,
                             cwd=tmp_path)
        assert out.returncode != 0 and "Traceback" not in out.stderr and error in out.stderr, out.stderr


def test_init_from_may_lack_only_the_lora_adapters_of_layers_it_had_none_on():
    """A checkpoint missing trained tensors started from random ones with exit 0; a curriculum stage
    that adds LoRA, or widens it to more layers, starts those adapters fresh."""
    from tasu.train.trainer import not_restorable

    q, v = "llm.layers.0.q_proj", "llm.layers.0.v_proj"
    own = {"projector.w", f"{q}.lora_A.default.weight", f"{q}.lora_B.default.weight", f"{v}.lora_A.default.weight"}
    assert not_restorable(own, {"projector.w"}) == []                                   # LoRA added
    assert not_restorable(own, {"projector.w", f"{q}.lora_A.default.weight", f"{q}.lora_B.default.weight"}) == []
    assert not_restorable(own, {"projector.w", f"{q}.lora_A.default.weight"}) == [f"{q}.lora_B.default.weight"]
    assert not_restorable(own, set()) == ["projector.w"]


def test_a_training_stopped_by_sigterm_says_so_in_train_log_and_resumes(setup, tmp_path, tasu):
    """SIGTERM (a batch system's time limit) ended the process where it stood: train.log, which a run
    under nohup or a batch system is read by, stopped at a step line, and nothing said why."""
    import signal
    import time

    exp = tmp_path / "exp"
    cmd = [str(BIN / "tasu"), "train", "--config", str(setup / "train.yaml"), "--exp-dir", str(exp),
           "train.epochs=100000", "train.max_steps=100000", "optim.total_steps=100000"]   # runs until stopped
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while last_step(exp) < 6:   # past the resume's max_steps below
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:   # a run that did not stop would train on for good
        proc.kill()
        proc.wait()
    assert proc.returncode == 143 and "Traceback" not in err, err[-3000:]
    last = (exp / "train.log").read_text().splitlines()[-1]
    assert re.search(r"\] ERROR stopped at step \d+: terminated \(SIGTERM\)$", last), last
    # a resume asked for fewer steps than trained went on to train none, without a word
    out = tasu(["train", *cmd[2:-2], "--resume", "train.max_steps=4", "optim.total_steps=100000"])
    assert out.returncode == 0 and "resumed from" in (exp / "train.log").read_text(), out.stderr[-3000:]
    assert re.search(r"train.max_steps 4: the checkpoint has trained \d+ steps already, so nothing is trained",
                     out.stderr), out.stderr[-2000:]
