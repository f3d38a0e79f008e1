"""The DeepSpeed engine on CPU with tiny real models: 2-process training, SIGKILL + resume, curriculum.

These run ``tasu train`` the way a user does (the deepspeed launcher, subprocesses), so they are the
slowest tests of the suite. One uninterrupted two-process text-only run (the ``straight`` fixture) is
shared: the resume test compares its loss curve with a killed and resumed run's, and the curriculum
test starts its audio stage from it, instead of training a text-only model of its own.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import soundfile as sf
from safetensors.torch import load_file

from fixtures import SENTENCES, save_tiny_llm, waveform, write_sensevoice_dir
from tasu.config import load_config
from tasu.experiment import ExperimentConfig
from tasu.train.trainer import clear_stale_build_locks, deepspeed_config

BIN = Path(sys.executable).parent
STACKS = Path(__file__).parent / "stacks_on_sigusr1"   # its sitecustomize: on SIGUSR1, stacks into $STACKS_DIR
ENV = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
           PYTHONPATH=os.pathsep.join(filter(None, [str(STACKS), os.environ.get("PYTHONPATH")])))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    save_tiny_llm(root / "llm")
    write_sensevoice_dir(root / "enc")
    (root / "wav").mkdir()
    for name, count in (("train", 48), ("valid", 6)):
        with open(root / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for i in range(count):
                wav = root / "wav" / f"{name}{i}.wav"
                sf.write(wav, waveform(0.8 + 0.2 * (i % 3), seed=i).numpy(), 16000)
                f.write(json.dumps({"key": f"{name}{i}", "task": "ASR", "target": SENTENCES[i % len(SENTENCES)],
                                    "path": str(wav)}) + "\n")
    (root / "text.yaml").write_text(f"""
encoder: {{path: {root}/enc}}
llm: {{path: {root}/llm}}
projector: {{name: linear-silu, options: {{hidden: 64}}}}
data: {{train: [{root}/train.jsonl], valid: [{root}/valid.jsonl], max_tokens: 400, num_workers: 1,
        shuffle_buffer: 16, sort_window: 16}}
optim: {{lr: 1.0e-3, warmup_steps: 2, total_steps: 40}}
engine: {{device: cpu}}
train: {{epochs: 3, max_steps: 12, log_interval: 4, valid_interval: 5, save_interval: 4, keep_best: 1}}
""", encoding="utf-8")
    return root


PORTS: list[str] = []


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        PORTS.append(str(s.getsockname()[1]))
        return PORTS[-1]


@pytest.fixture(autouse=True)
def _remove_shared_memory():
    """DeepSpeed's CPU collectives leave a shared-memory buffer per rank in /dev/shm, named after the
    launch's port, when a run ends (or is killed); each launch here has its own port, so remove them."""
    yield
    while PORTS:
        for buffer in Path("/dev/shm").glob(f"deepspeed_*_{PORTS.pop()}_*"):
            buffer.unlink(missing_ok=True)


def train_cmd(root: Path, exp: Path, *extra: str, procs: int = 2) -> list[str]:
    """A DeepSpeed launch on its own port: no two runs share a rendezvous (or, on CPU, the shared-memory
    buffers DeepSpeed names after it), whatever an earlier run left behind."""
    return [str(BIN / "deepspeed"), "--num_gpus", str(procs), "--master_port", free_port(),
            "--module", "tasu.cli", "train", "--config", str(root / "text.yaml"), "--exp-dir", str(exp), *extra]


def curve(exp: Path) -> list[tuple[int, float]]:
    return [(int(s), float(v)) for s, v in (ln.split("\t") for ln in (exp / "loss.tsv").read_text().splitlines())]


def stop_stalled(proc: subprocess.Popen, stacks: Path) -> str:
    """Every process of a launch that stalled writes its threads' stacks (SIGUSR1) into a file of its
    own in ``stacks``, then all are killed (a stray rank would hold its port and memory for the next
    tests). Returns the stacks, process by process."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGUSR1)
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = [f.read_text(errors="replace") for f in sorted(stacks.glob("*.txt"))]
    return "\n".join(text for text in written if text.count("\n") > 1)   # (not those that had ended: a header)


def start(cmd: list[str], stacks: Path, env: dict[str, str] = ENV, **popen) -> subprocess.Popen:
    """``cmd`` (a launcher and its ranks) in a session of its own, its processes' stacks to go to ``stacks``."""
    stacks.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, env=env | {"STACKS_DIR": str(stacks)}, start_new_session=True, **popen)


def launch(cmd: list[str], timeout: float = 300, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    """``cmd`` as ``subprocess.run`` would run it, in a session of its own; one that has not ended in
    ``timeout`` s fails the test with what it printed and where each of its processes stood."""
    stacks = Path(tempfile.mkdtemp(prefix="stacks_"))
    try:
        proc = start(cmd, stacks, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            where = stop_stalled(proc, stacks)
            out, err = proc.communicate()
            pytest.fail(f"{shlex.join(cmd)}: no end in {timeout} s; it printed:\n{out[-3000:]}\n{err[-5000:]}\n"
                        f"and its processes stood at:\n{where}")
    finally:
        shutil.rmtree(stacks, ignore_errors=True)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    out = launch(cmd)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


OPS = ("deepspeed_shm_comm", "fused_adam")  # the CPU ops tools/setup.sh builds
OP_CACHE = Path(sys.prefix) / "torch_extensions"
STRAIGHT_BUILDS: dict[str, dict[str, list[str]]] = {}


def op_builds() -> dict[str, list[str]]:
    """What ninja has run in each op's build dir so far (its log: one line per compile or link)."""
    return {op: (OP_CACHE / op / ".ninja_log").read_text().splitlines()[1:]
            if (OP_CACHE / op / ".ninja_log").exists() else [] for op in OPS}


@pytest.fixture(scope="module")
def straight(setup, tmp_path_factory) -> Path:
    """The uninterrupted two-process text-only run of text.yaml (12 steps); ``STRAIGHT_BUILDS`` holds
    the ops' build logs before and after it."""
    exp = tmp_path_factory.mktemp("straight") / "exp"
    before = op_builds()
    run(train_cmd(setup, exp))
    STRAIGHT_BUILDS.update(before=before, after=op_builds())
    return exp


@pytest.mark.slow
def test_killed_two_process_run_resumes_on_the_uninterrupted_loss_curve(setup, straight, tmp_path):
    expected = curve(straight)
    assert [s for s, _ in expected] == list(range(1, 13))

    killed = tmp_path / "killed"
    cmd = train_cmd(setup, killed)
    output = tmp_path / "killed.log"   # what the run said, should it stop or stall before step 7

    def said() -> str:
        return output.read_text(errors="replace")[-3000:]

    with open(output, "wb") as sink:
        proc = start(cmd, tmp_path / "stacks", stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while not ((killed / "loss.tsv").exists() and len(curve(killed)) >= 7):
            assert proc.poll() is None, f"training ended before it could be killed:\n{said()}"
            if time.time() > deadline:
                where = stop_stalled(proc, tmp_path / "stacks")
                pytest.fail(f"training did not reach step 7 in 240 s; it printed:\n{said()}\nand its processes "
                            f"stood at:\n{where}")
            time.sleep(0.02)
    finally:  # killed in any case: a stray run would hold its port and memory for the next tests
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (killed / "checkpoints" / "last").read_text().strip() == "step_000005"

    # (a re-run without --resume is refused in one line: test_train_failures.py checks it; that the
    # launcher passes a failing run's status on is checked by the diverging run below)
    (killed / "checkpoints" / ".step_000099.partial" / "model").mkdir(parents=True)   # killed mid-save
    out = run(train_cmd(setup, killed, "--resume"))
    assert "resumed from" in out.stdout + out.stderr
    assert not list((killed / "checkpoints").glob(".*.partial"))   # a finished run leaves no half checkpoint
    resumed = curve(killed)
    assert [s for s, _ in resumed] == list(range(1, 13))
    for (step, a), (_, b) in zip(expected, resumed):
        assert a == pytest.approx(b, rel=1e-5), f"step {step}: {a} uninterrupted, {b} resumed"

    # A checkpoint holds the trained weights only, the resolved config and the prompt set.
    ckpt = killed / "checkpoints" / "step_000012"
    weights = load_file(ckpt / "model" / "trainable.safetensors")
    assert weights and all(k.startswith("projector.") for k in weights)
    assert load_config(ExperimentConfig, ckpt / "model" / "config.yaml").projector.options == {"hidden": 64}
    assert (ckpt / "model" / "prompts.jsonl").read_text().count('"task": "ASR"') >= 1
    engine_bytes = sum(f.stat().st_size for f in (ckpt / "engine").rglob("*") if f.is_file())
    assert engine_bytes < 2_000_000  # optimizer states of the projector, no frozen LLM weights
    best = json.loads((killed / "checkpoints" / "best.json").read_text())
    assert len(best) == 1 and {p.name for p in (killed / "checkpoints").glob("step_*")} == {best[0]["name"], "step_000012"}
    # Each run unlinked its shared-memory buffers, the SIGKILLed one included.
    assert not [b for port in PORTS for b in Path("/dev/shm").glob(f"deepspeed_*_{port}_*")]


@pytest.mark.slow
def test_curriculum_text_then_audio_starts_from_a_finished_stage_and_resumes_from_the_same_model(
        setup, straight, tmp_path, tasu):
    """The audio stage starts from the text stage's model, and only from a finished one: a text stage
    killed half-way leaves a half-trained model, and a resume after that stage has trained on would go
    on from one model and report another. Both used to end with exit 0 and another model's results."""
    from safetensors.torch import save_file

    text_exp, audio_exp = tmp_path / "text", tmp_path / "audio"   # a copy of the shared 12-step text run
    shutil.copytree(straight, text_exp)
    ckpts = text_exp / "checkpoints"
    assert (ckpts / "finished").read_text() == "step_000012\n"   # the run ended with its last checkpoint
    audio = ["data.mode=audio", "train.max_steps=3", "train.valid_interval=100"]
    out = run(train_cmd(setup, audio_exp, *audio, f"train.init_from={text_exp}", procs=1))
    log = out.stdout + out.stderr
    assert "audio mode" in log and "initialised 6 of 6 trained tensors" in log
    assert len(curve(audio_exp)) == 3
    before = load_file(ckpts / "step_000012" / "model" / "trainable.safetensors")
    after = load_file(audio_exp / "checkpoints" / "step_000003" / "model" / "trainable.safetensors")
    assert before.keys() == after.keys()
    assert any(not (before[k] == after[k]).all() for k in before)  # the audio stage trained them further

    def refused(exp: Path, *extra: str) -> str:   # one process, no launcher: both stop before the engine starts
        out = tasu(["train", "--config", str(setup / "text.yaml"), "--exp-dir", str(exp), *audio, *extra])
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
        return out.stderr

    killed = tmp_path / "killed"   # as a kill leaves a run resumed for more steps: "finished" at an older step
    shutil.copytree(text_exp, killed)
    earlier = json.loads((ckpts / "best.json").read_text())[0]["name"]
    (killed / "checkpoints" / "last").write_text(earlier + "\n")
    (killed / "checkpoints" / "finished").write_text("step_000005\n")
    assert (f"train.init_from {killed}: its training has not finished (its last checkpoint is {earlier}): finish "
            f"it (run it again with --resume), or name a checkpoint to start from that one on purpose "
            f"(train.init_from={killed}/checkpoints/{earlier})") in refused(tmp_path / "a", f"train.init_from={killed}")
    assert not (tmp_path / "a" / "checkpoints").exists()

    cut = tmp_path / "cut"   # weights missing from its best checkpoint: it started from random ones, exit 0
    shutil.copytree(text_exp, cut)
    cut_weights = cut / "checkpoints" / earlier / "model" / "trainable.safetensors"
    kept = load_file(cut_weights)
    dropped = sorted(kept)[0]
    save_file({k: v for k, v in kept.items() if k != dropped}, cut_weights)
    assert (f"it lacks 1 of the 6 tensors this model trains (e.g. ['{dropped}']): cut short, or another model's"
            in refused(tmp_path / "b", f"train.init_from={cut}"))

    weights = ckpts / earlier / "model" / "trainable.safetensors"   # what init_from resolves to: the best
    save_file({k: v + 1 for k, v in load_file(weights).items()}, weights)   # that experiment trained on
    err = refused(audio_exp, f"train.init_from={text_exp}", "train.max_steps=4", "--resume")
    assert f"its run read other data or settings: train.init_from: the run started from {weights} (sha256 " in err
    assert "; it names" in err

@pytest.mark.slow
def test_a_checkpoint_missing_an_engine_file_is_named(setup, straight, tmp_path):
    """DeepSpeed asserts, with no message, when a file of its state is gone; the resume says which
    checkpoint and what it holds, and how to resume from another."""
    exp = tmp_path / "exp"
    shutil.copytree(straight, exp)
    shutil.copytree(exp / "checkpoints" / "step_000012", exp / "checkpoints" / "step_000010")   # one to go back to
    (exp / "checkpoints" / "step_000012" / "engine" / "ds" / "mp_rank_00_model_states.pt").unlink()
    out = launch(train_cmd(setup, exp, "--resume"))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert (f"{exp}/checkpoints/step_000012: DeepSpeed cannot load its engine state (AssertionError: no message), "
            "so a file of it is missing or damaged (it holds engine/") in out.stdout + out.stderr
    assert (f"resume from another checkpoint (step_000010: write its name into {exp}/checkpoints/last), or train "
            "into a new --exp-dir") in out.stdout + out.stderr

@pytest.mark.parametrize("pointer", [None, "step_0000I2"])
def test_checkpoints_without_a_last_pointer_are_not_taken_for_an_empty_directory(setup, straight, tmp_path, pointer,
                                                                                  tasu):
    """A lost or mistyped checkpoints/last would make the run start at step 0 and delete the checkpoints
    at its first save; it stops instead, with and without --resume, and leaves them as they were."""
    exp = tmp_path / "exp"
    shutil.copytree(straight / "checkpoints", exp / "checkpoints")
    (exp / "checkpoints" / "last").unlink()
    if pointer:
        (exp / "checkpoints" / "last").write_text(pointer + "\n")
    steps = sorted(p.name for p in (exp / "checkpoints").glob("step_*"))
    for resume in ([], ["--resume"]):
        out = tasu(["train", "--config", str(setup / "text.yaml"), "--exp-dir", str(exp), *resume])
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert (f"{exp}/checkpoints holds {', '.join(steps)}, but {exp}/checkpoints/last is missing or names none "
                f"of them: write the name of the one to continue from into it (e.g. echo {steps[-1]} > "
                f"{exp}/checkpoints/last) and pass --resume") in out.stderr
        assert sorted(p.name for p in (exp / "checkpoints").glob("step_*")) == steps


@pytest.mark.slow
def test_mixed_mode_and_a_diverging_run(setup, tmp_path):
    # under bf16, which DeepSpeed casts its module to: the frozen encoder stays float32, as its input features
    # are (it stopped at the first audio batch: "Input type (torch.FloatTensor) and weight type ... BFloat16")
    out = run(train_cmd(setup, tmp_path / "mixed", "data.mode=mixed", "data.audio_ratio=0.5", "train.max_steps=6",
                        "train.valid_interval=3", "engine.precision=bf16", procs=1))
    assert "6 steps (this run: 3 text and 3 audio batches per process)" in out.stdout + out.stderr
    assert "step 6 validation: loss" in out.stdout + out.stderr

    diverging = launch(train_cmd(setup, tmp_path / "nan", "optim.lr=1e30", "optim.warmup_steps=2", "train.max_steps=6",
                                 procs=1))
    assert diverging.returncode != 0
    log = diverging.stdout + diverging.stderr
    assert "non-finite loss" in log and "Traceback" not in log
    saved = (tmp_path / "nan" / "checkpoints" / "last").exists()  # the message says whether one was kept
    assert ("no checkpoint was written yet" in log) != saved and ("the last good checkpoint" in log) == saved


def test_validation_simulates_the_same_rows_whatever_the_step_of_a_wer_schedule(setup, tmp_path):
    """Under a rising WER schedule, validation simulated at the training step: later checkpoints were
    scored on harder rows, and keep_best (and decoding 'best') favoured early ones."""
    driver = """
import json, sys
from tasu.cli import main
from tasu.simulate import rules
steps, call = [], rules.RuleSimulator.__call__
def recorded(self, token_ids, generator=None, step=0, wer=None):
    steps.append(step)
    return call(self, token_ids, generator, step, wer)
rules.RuleSimulator.__call__ = recorded
status = main(["train", *sys.argv[1:]])
print(json.dumps({"status": status, "steps": steps}))
"""
    out = launch([sys.executable, "-c", driver, "--config", str(setup / "text.yaml"), "--exp-dir",
                  str(tmp_path / "exp"), "data.num_workers=0", "train.max_steps=4", "train.valid_interval=2",
                  "train.save_interval=2", "simulation.wer={start: [0.0, 0.1], end: [0.2, 0.3], total_steps: 4}"])
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["status"] == 0, out.stderr[-3000:]
    from tasu.train.trainer import VALIDATION_STEP

    validation = [s for s in result["steps"] if s == VALIDATION_STEP]
    assert [s for s in result["steps"] if s != VALIDATION_STEP] == [0, 1, 2, 3]   # training: each its own step
    assert len(validation) == 2 * 2   # two validations of the two batches of 6 records


def test_deepspeed_config_follows_the_experiment_config():
    cfg = load_config(ExperimentConfig, None, ["engine.precision=bf16", "engine.zero_stage=1", "optim.lr=2e-4",
                                               "optim.total_steps=100", "optim.warmup_steps=10"])
    ds = deepspeed_config(cfg)
    assert ds["bf16"] == {"enabled": True} and "fp16" not in ds
    assert ds["zero_optimization"] == {"stage": 1}
    assert ds["optimizer"]["params"]["lr"] == 2e-4
    assert ds["scheduler"]["params"]["total_num_steps"] == 100
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 10


def test_train_dry_run_checks_the_config(setup):
    ok = subprocess.run([str(BIN / "tasu"), "train", "--config", str(setup / "text.yaml"), "--dry-run",
                         "optim.lr=0.01"], capture_output=True, text=True)
    assert ok.returncode == 0 and "lr: 0.01" in ok.stdout
    bad = subprocess.run([str(BIN / "tasu"), "train", "--config", str(setup / "text.yaml"), "--dry-run",
                          "data.mode=speech"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert ("override 'data.mode=speech': data.mode: expected one of 'text', 'audio', 'mixed', 'posteriors', "
            "got 'speech'") in bad.stderr


def test_the_environment_s_ninja_alone_goes_first_on_path(tmp_path, monkeypatch):
    """How a run puts this environment's ninja first (the runs themselves: the in-process test below).
    PATH unset meant the system's default for every program the run starts, and kept so; a ninja
    package without its program put the current directory ("" + ":...") on PATH; nothing changes
    where the environment's ninja is found first already."""
    import ninja

    from tasu.train.trainer import _put_own_ninja_first

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ops"))
    alone = tmp_path / "ops" / ".ninja"
    monkeypatch.delenv("PATH")
    env_set: dict = {}
    _put_own_ninja_first(env_set)
    assert env_set == {"PATH": (None, f"{alone}{os.pathsep}{os.defpath}")} and os.environ["PATH"] == env_set["PATH"][1]
    assert sorted(p.name for p in alone.iterdir()) == ["ninja"]   # a link to it alone
    assert os.path.samefile(alone / "ninja", Path(ninja.BIN_DIR) / "ninja")

    env_set = {}
    _put_own_ninja_first(env_set)   # found first now
    assert env_set == {}
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(ninja, "BIN_DIR", "")   # a package without its program
    (tmp_path / "ninja").write_text("")
    monkeypatch.chdir(tmp_path)
    _put_own_ninja_first(env_set)
    assert env_set == {} and os.environ["PATH"] == "/usr/bin:/bin"


def test_deepspeed_ops_are_cached_in_this_environment():
    """tools/setup.sh builds DeepSpeed's CPU ops into <env>/torch_extensions; the trainer looks there."""
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    out = subprocess.run([sys.executable, "-c", "import os, tasu.train.trainer; print(os.environ['TORCH_EXTENSIONS_DIR'])"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == os.path.join(sys.prefix, "torch_extensions")


def test_a_run_uses_the_ops_setup_built(straight):
    """A training launched as users launch it loads the ops tools/setup.sh compiled: torch recompiles an
    op whenever its compile command differs (other flags, include paths, compiler), which costs minutes
    at the start of a run."""
    before, after = STRAIGHT_BUILDS["before"], STRAIGHT_BUILDS["after"]
    for op in OPS:
        assert before[op], f"{OP_CACHE / op} holds no build: tools/setup.sh builds the CPU ops"
        assert after[op] == before[op], f"the run compiled {op} again:\n" + "\n".join(after[op][len(before[op]):])


def test_a_run_log_puts_back_what_its_loggers_had_and_closes_its_file(tmp_path):
    import logging

    from tasu.train.run_log import RunLog

    logger, before = logging.getLogger("tasu.test_run_log"), logging.NullHandler()
    logger.addHandler(before)
    with RunLog(tmp_path / "train.log", [logger], "%(levelname)s %(message)s") as run:
        logger.info("during the run")
        run.to_file(logging.ERROR, "stopped")
        handlers = run.handlers
    logger.warning("after the run")
    assert (tmp_path / "train.log").read_text() == "INFO during the run\nERROR stopped\n"
    assert logger.handlers == [before] and logger.propagate and logger.level == logging.NOTSET
    assert handlers[0].stream is None   # closed

    # two runs alive in one process (two Trainers of the API), the first ended first; a close called twice
    first = RunLog(tmp_path / "first.log", [logger], "%(message)s")
    second = RunLog(tmp_path / "second.log", [logger], "%(message)s")
    first.close()
    logger.info("the second still runs")
    first.close()
    first.to_file(logging.ERROR, "a late line")   # goes nowhere, and opens no file again
    logger.info("and still")
    second.close()
    logger.info("after both")
    assert (tmp_path / "first.log").read_text() == ""
    assert (tmp_path / "second.log").read_text() == "the second still runs\nand still\n"
    assert logger.handlers == [before] and logger.propagate and logger.level == logging.NOTSET
    logger.removeHandler(before)


def test_runs_in_one_process_leave_it_as_they_found_it(setup, tmp_path):
    """What trainings in one process (a notebook, a Python driver) left behind for the next.

    The launch variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) a run of one process
    sets for torch.distributed stayed set: a ``tasu train`` started later from that process took itself
    for a launched rank and failed on the port its parent holds. A second run alive beside the first
    (another thread) trained from other weights, the two logs mixed in one train.log: it is refused,
    and a run whose end fails (a device error) must not leave it refused for good. Every run's
    DeepSpeed engine (its model) stayed in memory, and a run stopped in its loop left its TensorBoard
    writer's thread running (closing it must not hide why the run stopped).

    The environment is not activated here, and another ``ninja`` comes first on PATH (one that fails, as
    none at all or an older version that rebuilds the ops would): the runs use the environment's own,
    which built the ops (and none of its other programs), and PATH is as it was after them."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    launched = ["0", "1", "0", "127.0.0.1", free_port()]
    code = f"""
import gc, json, os, subprocess, sys, threading
from unittest import mock
from deepspeed.runtime.engine import DeepSpeedEngine
from torch.utils.tensorboard.writer import FileWriter
from tasu.cli import main
from tasu.config import load_config
from tasu.experiment import ExperimentConfig
from tasu.train.trainer import Trainer, TrainingError
names = {names!r}
config, overrides = {str(setup / "text.yaml")!r}, ["train.max_steps=3", "train.save_interval=3"]
args = ["train", "--config", config, *overrides, "--exp-dir"]
env = lambda: [os.environ.get(n) for n in names]
tasu = os.path.join(os.path.dirname(sys.executable), "tasu")
# in-process, then in a process it started, then in-process again (joining its process group)
seen = [main([*args, {str(tmp_path / "a")!r}]), env(),
        subprocess.run([tasu, *args, {str(tmp_path / "b")!r}]).returncode,
        main([*args, {str(tmp_path / "c")!r}]), env()]
first = Trainer(load_config(ExperimentConfig, config, overrides), {str(tmp_path / "d")!r})
seen.append(os.environ["PATH"])   # during a run
try:
    Trainer(load_config(ExperimentConfig, config, overrides), {str(tmp_path / "e")!r})
except TrainingError as e:
    seen.append(str(e).split(":")[0])
first.close()
del first   # (what a caller keeps, its model, stays)
seen += [env(), main([*args, {str(tmp_path / "e")!r}])]
diverging = ["optim.lr=1e30", "train.max_steps=6"]
seen.append(main([*args, {str(tmp_path / "nan")!r}, *diverging]))   # stops in its loop
gc.collect()
seen += [sum(isinstance(o, DeepSpeedEngine) for o in gc.get_objects()),
         [type(t).__name__ for t in threading.enumerate() if "Writer" in type(t).__name__]]
def full(*args):
    raise OSError(28, "No space left on device")
with mock.patch.object(FileWriter, "flush", full):   # why it stopped, not what closing the writer met
    seen.append(main([*args, {str(tmp_path / "nan2")!r}, *diverging]))
with open({str(tmp_path / "nan2" / "train.log")!r}) as log:
    seen.append("non-finite loss" in log.read().splitlines()[-1])
with mock.patch.object(DeepSpeedEngine, "destroy", side_effect=RuntimeError("device lost")):
    seen += [main([*args, {str(tmp_path / "lost")!r}]), env()]
os.environ.update(zip(names, {launched!r}))   # a launcher's: they stay
seen += [main([*args, {str(tmp_path / "f")!r}]), env(), os.environ["PATH"]]
print(json.dumps(seen))
"""
    other_ninja = tmp_path / "bin" / "ninja"
    other_ninja.parent.mkdir()
    other_ninja.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'ninja_calls'}\nexit 1\n")
    other_ninja.chmod(0o755)
    path = f"{other_ninja.parent}{os.pathsep}/usr/bin{os.pathsep}/bin"   # (not the environment's bin/)
    env = {k: v for k, v in ENV.items() if k not in names} | {"PATH": path}
    builds = op_builds()
    out = launch([sys.executable, "-c", code], env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    unset = [None] * 5
    assert json.loads(out.stdout.splitlines()[-1]) == [
        0, unset, 0, 0, unset, f"{OP_CACHE / '.ninja'}{os.pathsep}{path}", "another training is running in this "
        "process (another thread, or a Trainer not closed)", unset, 0, 1, 0, [], 1, True, 1, unset, 0, launched,
        path], out.stderr[-3000:]
    import ninja
    assert os.path.samefile(OP_CACHE / ".ninja" / "ninja", Path(ninja.BIN_DIR) / "ninja")   # (not python3, pip)
    assert not (tmp_path / "ninja_calls").exists() and op_builds() == builds


def test_a_build_lock_left_by_a_killed_run_is_removed_a_live_one_kept(tmp_path, caplog):
    """torch's extension loader waits forever for a lock a killed process left in an op's build dir;
    for a young one (a build going on, or just killed) it waited without a word."""
    stale, live = tmp_path / "fused_adam" / "lock", tmp_path / "deepspeed_shm_comm" / "lock"
    for lock in (stale, live):
        lock.parent.mkdir()
        lock.touch()
    old = time.time() - 3600
    os.utime(stale, (old, old))
    with caplog.at_level("WARNING", logger="tasu.train"):
        assert clear_stale_build_locks(tmp_path) == [stale]
    assert not stale.exists() and live.exists()
    assert f"waiting for {live}: another run is building DeepSpeed's deepspeed_shm_comm op" in caplog.text
    assert clear_stale_build_locks(tmp_path / "no such dir") == []


def test_a_checkpoint_is_put_in_place_and_the_curve_cut_back_to_it(tmp_path):
    """What both training loops do at a save and a resume (tasu.train.checkpoint)."""
    from tasu.train.checkpoint import finalize_checkpoint, partial_dir, truncate_curve

    root = tmp_path / "checkpoints"
    for name in ("step_000002", "step_000004", "step_000006"):   # step 6: left by a run that was resumed
        (root / name).mkdir(parents=True)
    partial_dir(root, "step_000006").mkdir()
    (partial_dir(root, "step_000006") / "weights").write_text("new")
    best = [{"name": "step_000002", "step": 2, "valid_loss": 1.0}]
    assert finalize_checkpoint(root, "step_000006", best) == root / "step_000006"
    assert sorted(p.name for p in root.iterdir()) == ["best.json", "last", "step_000002", "step_000006"]
    assert (root / "step_000006" / "weights").read_text() == "new" and (root / "last").read_text() == "step_000006\n"
    assert json.loads((root / "best.json").read_text()) == best
    partial_dir(root, "step_000008").mkdir()
    finalize_checkpoint(root, "step_000008")   # no ranking (the learned simulator's loop): the newest only
    assert sorted(p.name for p in root.iterdir()) == ["best.json", "last", "step_000008"]

    curve = tmp_path / "loss.tsv"
    curve.write_text("1\t2.0\n2\t1.5\n\n\0\0\0\x003\t1.2\n4\tgarbled\n4\t1.1\n5\t1.0\n6\t0.9\n7\t0.")
    truncate_curve(curve, 5)   # after the checkpoint of step 5: later steps, blank and garbled lines go
    assert curve.read_text() == "1\t2.0\n2\t1.5\n4\t1.1\n5\t1.0\n"
    truncate_curve(tmp_path / "none.tsv", 5)   # no curve yet: nothing to do
    assert not (tmp_path / "none.tsv").exists()


@pytest.mark.parametrize("killed", ["before", "after"])
def test_a_run_killed_around_its_first_checkpoints_rename_resumes(tmp_path, monkeypatch, killed):
    """Killed after the first checkpoint was renamed into place and before ``last`` named it, the run
    left a whole checkpoint that a rerun and --resume refused ("last is missing"), the recipe's stage too."""
    from tasu.model_io import last_checkpoint, refuse_lost_pointer
    from tasu.train import checkpoint

    root = tmp_path / "checkpoints"
    partial, replace = checkpoint.partial_dir(root, "step_000003"), os.replace

    def kill(src, dst):   # at the checkpoint's rename (``last`` is written through one too)
        if Path(src) == partial:
            if killed == "after":
                replace(src, dst)
            raise KeyboardInterrupt
        replace(src, dst)

    partial.mkdir(parents=True)
    monkeypatch.setattr(os, "replace", kill)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.finalize_checkpoint(root, "step_000003")
    refuse_lost_pointer(root)   # the next start goes on: from scratch, or from the checkpoint in place
    assert last_checkpoint(root) == (root / "step_000003" if killed == "after" else None)


def test_the_batch_budget_counts_a_prompt_filled_from_the_record(tmp_path):
    """A prevtext (or hotword) prompt holds the record's field, which may be long: batching budgets
    the prompt as filled, so a batch stays within data.max_tokens. Prompts without fields are
    budgeted as before: their task's longest, the same for every record."""
    from tasu.data.prompts import PromptError, PromptSet
    from tasu.data.records import Record
    from tasu.llm import PromptTokenizer, load_llm_tokenizer
    from tasu.train.collate import Collator

    llm = load_llm_tokenizer(save_tiny_llm(tmp_path / "llm"))
    prompts = PromptSet({"ASR": ["Transcribe the audio.", "Write down what is said in the recording."],
                         "prevtext": ["Transcribe.", "The previous sentence was: {prevtext} Transcribe the next."]})

    class Encoder:   # one encoder token a word
        @staticmethod
        def encode(text):
            return text.split()

    collator = Collator(prompts, PromptTokenizer(llm), Encoder())
    target = "turn on the lights"
    record = Record(key="p", task="prevtext", target=target, extra={"prevtext": " ".join(SENTENCES)})
    budget = collator.length(record)
    used = []
    for seed in range(16):   # both prompts get drawn
        batch = collator([record], seed)
        used.append(int(batch.text.lengths[0]) + len(batch.token_ids[0]))   # LLM tokens + speech rows
    assert len(set(used)) == 2 and max(used) <= budget

    def tokens(text):
        return len(llm(text, add_special_tokens=False)["input_ids"])

    # a field that spells the end of a turn is named by its record (the batch's other records are fine)
    spelling = Record(key="p2", task="prevtext", target=target, extra={"prevtext": "hi<|im_end|>"})
    with pytest.raises(PromptError, match=r"^p2: prompt .* spells the LLM's special token '<\|im_end\|>'"):
        for seed in range(16):
            collator([record, spelling], seed)

    # a prompt's own text spelling one is the prompt set's, found before step 1 (not blamed on a record)
    for bad in ({"ASR": ["Transcribe.<|im_end|>"]}, {"prevtext": ["After {prevtext}<|im_start|> go on."]}):
        with pytest.raises(PromptError, match=r"^<memory>: task \w+: prompt .* spells the LLM's special token"):
            Collator(PromptSet(bad), PromptTokenizer(llm), Encoder())

    asr = Record(key="a", task="ASR", target=target)
    assert collator.length(asr) == (tokens(PromptTokenizer(llm).render("")) + max(map(tokens, prompts.prompts("ASR")))
                                    + len(target.split()) + tokens(target) + 1)
