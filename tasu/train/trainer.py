"""TASU training on DeepSpeed: text-only, audio, or mixed; resumable after a kill at any moment.

    deepspeed --num_gpus 8 --module tasu.cli train --config conf/train_text.yaml --exp-dir exp/text
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module tasu.cli train ...      # CPU, 2 processes
    tasu train --config conf/train_text.yaml --exp-dir exp/text                 # one process

One step: the DataLoader workers deliver a ``StepBatch`` (LLM tokens + encoder ids or waveforms);
the main process turns it into posteriors (the configured simulator, from ``build_simulator``, with
the step's seed; or the frozen encoder + compression), the model splices and scores, DeepSpeed
steps. Only the trainable weights (projector, LoRA) are in the optimizer and in checkpoints.

Exact resume: the data order is a function of (seed, epoch) and the checkpoint stores the batches
consumed; every step reseeds torch and the simulator from (seed, step, rank). So a run killed with
SIGKILL and resumed from its last checkpoint repeats the uninterrupted run's losses step for step:
the same batches in the same order, and bit for bit from some checkpoints. From others, validated
or not, the first resumed step's update differs in the last float digit (measured on CPU: weights,
optimizer moments, learning rate and step count equal before it; 6e-8 to 1.2e-7 apart 20 steps
on), for a cause not yet found, a difference that grows: 4.2468 against 4.2458 valid loss 1000 steps
on, enough to reorder near-tied best checkpoints.
That holds for the run that wrote the checkpoint only: ``--resume`` first compares its data files (by
content), prompt set and settings with the checkpoint's, and stops on a difference (``tasu.train.same_run``).

Before the engine starts, the run takes the experiment directory's lock (a second run into it
stops, naming the first one's pid) and reads every training and validation record once with the
strict reader (in audio modes also every audio header, in posteriors mode every dump entry's), so bad
data stops the run at step 0 with ``FILE:LINE: FIELD: message`` rather than hours in.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import signal
import socket
import sys
import threading
import time
import unicodedata
from pathlib import Path
from typing import Iterable

import torch

from tasu.config import to_dict
from tasu.data.audio import AudioError, audio_info, command_refused, is_command
from tasu.data.batching import DataPosition, StreamingBatches
from tasu.data.prompts import PromptSet, load_prompts
from tasu.data.records import DataError, iter_records_with_lines
from tasu.device import distributed_backend, resolve_device
from tasu.dump import DumpReader, identity
from tasu.dump import check_records as check_dump_records
from tasu.encoders.base import ShortWaveformError
from tasu.errors import describe_error
from tasu.fileio import file_sha256, write_atomic
from tasu.llm import FieldSpelling
from tasu.lock import DirLock, holder
from tasu.model_io import (MODEL_DIR, CheckpointError, build_model, check_fits, check_model_dirs, check_vocab,
                           checkpoint_name, dump_config, encoder_tokenizer, last_checkpoint, load_trainable,
                           read_best, refuse_lost_pointer, resolve_checkpoint, write_model)
from tasu.simulate import build_simulator, edit_distance, row_tokens
from tasu.simulate.base import vocab_digest
from tasu.train.checkpoint import (ENGINE_DIR, finalize_checkpoint, load_engine_file, mark_finished, partial_dir,
                                   training_finished, truncate_curve, use_safe_engine_loads)
from tasu.train.collate import Collator, StepBatch
from tasu.train.run_log import RunLog
from tasu.train.same_run import ResumeError, check_same_run, data_record, init_llm_difference, write_data_record
from tasu.experiment import STEPS_AT_RATE_0, ExperimentConfig, check_schedule

log = logging.getLogger("tasu.train")

# DeepSpeed compiles its CPU ops (collectives, fused AdamW) into torch's extension cache: one cache
# per Python environment (tools/setup.sh builds them there), so two checkouts never rebuild each other's.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
# torch's extension loader takes a ``lock`` file in an op's build directory while it checks or builds
# the op (seconds; a build ~1-2 min) and removes it after; a process killed meanwhile leaves it, and
# every later load then waits for it forever, silently. Older than this, a lock is such a leftover.
STALE_BUILD_LOCK_S = 600


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, a checkpoint that does not fit); the message says why."""


def init_from_running(path: str) -> str | None:
    """Why ``train.init_from`` cannot start from experiment ``path`` now (its training is running: the
    model it ended with may be one it trains on from, a --resume with more steps), or None."""
    exp = Path(path)
    last = last_checkpoint(exp / "checkpoints")
    running = holder(exp) if last is not None and not (exp / MODEL_DIR).is_dir() else None
    if running:
        return (f"train.init_from {path}: its training is running ({running}): start from it when it has "
                f"ended, or name a checkpoint to start from that one on purpose (train.init_from={last})")
    return None


def step_seed(seed: int, step: int, rank: int) -> int:
    return random.Random(f"{seed}/step{step}/rank{rank}").getrandbits(63)


def clear_stale_build_locks(root: str | Path, max_age_s: float = STALE_BUILD_LOCK_S) -> list[Path]:
    """Remove the build locks under ``root`` (``<op>/lock``) older than ``max_age_s``: left by a killed
    run, they would make this one hang while loading DeepSpeed's ops. Returns what was removed."""
    removed = []
    for lock in Path(root).glob("*/lock"):
        with contextlib.suppress(FileNotFoundError):  # another process may release or clear it meanwhile
            age = time.time() - lock.stat().st_mtime
            if age > max_age_s:
                lock.unlink()
                removed.append(lock)
                log.warning("removed %s, a build lock left %.0f min ago by a killed run (loading "
                            "DeepSpeed's ops would have waited for it forever)", lock, age / 60)
            else:   # torch waits for it without a word
                log.warning("waiting for %s: another run is building DeepSpeed's %s op (if none is, a killed "
                            "run left the lock: remove it)", lock, lock.parent.name)
    return removed


def _put_own_ninja_first(env_set: dict[str, tuple[str | None, str]]) -> None:
    """Make ``ninja`` on PATH this Python environment's own for the run (noted in ``env_set``).

    torch builds DeepSpeed's ops with the ``ninja`` it finds on PATH, and runs it at every load to
    check them. tools/setup.sh built them with the environment's (the pip package DeepSpeed requires).
    ``tools/venv/bin/tasu`` run without the environment activated found another one (Debian's
    ninja-build, an older version that cannot read the newer one's build log) and rebuilt both ops,
    a minute or two without a word, and the next run with the environment's rebuilt them back; where
    there was none, it stopped: "Unable to JIT load the deepspeed_shm_comm op due to ninja not being
    installed". What goes first on PATH is a directory of the op cache holding a link to that ninja
    alone: the environment's other programs (``python3``, ``pip``) stay behind the caller's for what
    the run starts, such as a wav.scp pipe's command."""
    try:
        import ninja
    except ImportError:   # an environment made without it: torch looks on PATH as it is
        return
    own = os.path.join(ninja.BIN_DIR, "ninja")
    if not (os.path.isabs(own) and os.access(own, os.X_OK)):   # a package without its program
        return
    found = shutil.which("ninja")
    if found is not None and os.path.samefile(found, own):
        return
    alone = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / ".ninja"
    try:
        if not ((alone / "ninja").exists() and os.path.samefile(alone / "ninja", own)):
            alone.mkdir(parents=True, exist_ok=True)
            link = alone / f".ninja.{os.getpid()}"   # made aside, then renamed: the ranks make it at once
            link.unlink(missing_ok=True)
            link.symlink_to(own)
            link.replace(alone / "ninja")
    except OSError:   # an op cache this process cannot write (torch could not build there either)
        return
    before = os.environ.get("PATH")
    # (unset, PATH means the system's default; an empty entry would mean the current directory)
    rest = os.defpath if before is None else before
    env_set["PATH"] = (before, f"{alone}{os.pathsep}{rest}" if rest else str(alone))
    os.environ["PATH"] = env_set["PATH"][1]


def _init_distributed(device: str, env_set: dict[str, tuple[str | None, str]]) -> tuple[int, int, int]:
    """Rank, world size and local rank.

    A launcher (deepspeed, torchrun, slurm-exec) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
    MASTER_PORT for each rank; a single process without one sets them for a world of one, and notes
    each in ``env_set`` (name -> (value before, value set)) before anything can fail, for
    ``Trainer.close`` to take back (as PATH, should the environment's ``ninja`` have to be put first).
    A process group made earlier in this process is joined."""
    try:
        import deepspeed
    except ImportError:   # tasu without its [train] extra: it decodes, it does not train
        raise TrainingError("training runs on DeepSpeed, which is not installed: pip install 'tasu[train]' "
                            "(tools/setup.sh installs it)") from None

    clear_stale_build_locks(os.environ["TORCH_EXTENSIONS_DIR"])
    _put_own_ninja_first(env_set)
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        own = dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env_set.update((name, (os.environ.get(name), value)) for name, value in own.items())
        os.environ.update(own)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch_device = resolve_device(device, local_rank)
    ops = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    if torch_device.type == "cpu" and not all((ops / op / f"{op}.so").is_file()
                                              for op in ("deepspeed_shm_comm", "fused_adam")):
        # (tools/setup.sh builds them; in an environment made otherwise the run was silent for minutes)
        log.warning("DeepSpeed builds its CPU ops into %s first: a minute or two, once", ops)
    deepspeed.init_distributed(dist_backend=distributed_backend(torch_device))
    rank = int(os.environ["RANK"])
    _unlink_shared_memory(rank)
    return rank, int(os.environ["WORLD_SIZE"]), local_rank


def _unlink_shared_memory(rank: int) -> None:
    """Remove the name of this rank's DeepSpeed CPU all-reduce buffer from /dev/shm at once.

    On CPU, DeepSpeed's collectives share one /dev/shm buffer per rank (66 MB) and never unlink
    them, so every run left its buffers behind. Every rank maps all buffers while DeepSpeed
    initialises; after a barrier the names are no longer needed and the mappings stay valid, so
    unlinking here frees the memory when the run ends, even when it is killed.
    """
    import torch.distributed as dist

    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank}")
    if dist.get_world_size() > 1:  # the same condition on every rank: all or none reach the barrier
        dist.barrier()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path("/dev/shm", name))


def _file_stats(cfg: ExperimentConfig) -> dict[str, tuple[int, int, int, int]]:
    """Size, modification and status-change times and inode of each training and validation file, by
    path: a file put in place with its old mtime (``rsync -a``, ``cp -p``) changes the last two."""
    stats = {}
    for path in [*(s.path for s in cfg.data.train), *cfg.data.valid]:
        try:
            st = os.stat(path)
        except OSError as e:
            raise TrainingError(f"{path}: cannot read it ({e.strerror})") from None
        stats[str(path)] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return stats


def deepspeed_config(cfg: ExperimentConfig) -> dict:
    """The DeepSpeed config of a run: ZeRO stage, precision, AdamW and warm-up + cosine decay."""
    o = cfg.optim
    ds = {
        "train_micro_batch_size_per_gpu": 1,  # batches are dynamic; DeepSpeed only books this number
        "gradient_accumulation_steps": 1,
        "gradient_clipping": o.grad_clip,
        "optimizer": {"type": "AdamW", "params": {"lr": o.lr, "betas": list(o.betas), "eps": o.eps,
                                                  "weight_decay": o.weight_decay}},
        "scheduler": {"type": "WarmupCosineLR", "params": {
            "total_num_steps": o.total_steps, "warmup_num_steps": o.warmup_steps,
            "warmup_type": "linear", "cos_min_ratio": 0.0}},
        "zero_optimization": {"stage": cfg.engine.zero_stage},
        "steps_per_print": 1 << 30,
    }
    if cfg.engine.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif cfg.engine.precision == "fp16":
        ds["fp16"] = {"enabled": True, "initial_scale_power": 16}
    return ds


def not_restorable(own: set[str], state: Iterable[str]) -> list[str]:
    """The trained tensors ``own`` that a checkpoint's ``state`` lacks and that cannot start fresh: all
    but the LoRA adapters of layers it had none on (a curriculum stage that adds or widens LoRA)."""
    state = set(state)
    adapted = {name.split(".lora_")[0] for name in state if ".lora_" in name}
    return sorted(n for n in own - state if ".lora_" not in n or n.split(".lora_")[0] in adapted)


# The step text validation batches are simulated at: past any WER schedule's end, so that every
# validation reads the same rows (keep_best ranks checkpoints on one set, not on rows that get harder
# as a schedule rises), as hard as those training ends on.
VALIDATION_STEP = sys.maxsize


# One run at a time in a process: a run seeds torch's global stream, joins the process's one process
# group and points the shared loggers at its train.log, so a second alive beside it (another thread,
# a Trainer not yet closed) trained from other weights, and the two logs mixed in one train.log.
_ONE_RUN = threading.Lock()


class Trainer:
    """Owns the engine, the data and the experiment directory of one run; ``close`` ends it."""

    def __init__(self, cfg: ExperimentConfig, exp_dir: str | Path, resume: bool = False,
                 allow_pipes: bool = False):
        self.lock: DirLock | None = None
        self.run_log: RunLog | None = None
        self.env_set: dict[str, tuple[str | None, str]] = {}   # the variables _init_distributed sets
        self.engine = None
        self.running = False
        try:
            self.running = _ONE_RUN.acquire(blocking=False)
            if not self.running:
                raise TrainingError("another training is running in this process (another thread, or a Trainer "
                                    "not closed): one at a time; start this one in a process of its own")
            self._start(cfg, exp_dir, resume, allow_pipes)
        except BaseException as e:   # a start refused after taking the lock: the directory is free again
            if self.run_log is not None:   # train.log is open: it says why (a run under nohup is read there)
                self.run_log.to_file(logging.ERROR, f"did not start: {stop_reason(e)}")
            self.close()
            raise

    def _start(self, cfg: ExperimentConfig, exp_dir: str | Path, resume: bool, allow_pipes: bool) -> None:
        # Checks that give every process the same answer come first: no process has started yet.
        check_schedule(cfg)
        check_model_dirs(cfg)
        for section in (cfg.encoder, cfg.llm):  # saved absolute: decoding may run from anywhere
            section.path = str(Path(section.path).resolve())
        self.cfg, self.exp_dir = cfg, Path(exp_dir)
        self.ckpt_root = self.exp_dir / "checkpoints"
        prompts = load_prompts(cfg.data.prompts)
        # What every checkpoint records as the run's prompts: the file as the run read it, not as an
        # edit made while it runs would leave it.
        self.prompts_text = Path(prompts.source).read_text(encoding="utf-8")
        counts = check_training_records(cfg.data, prompts, allow_pipes, FieldSpelling(cfg.llm.path, prompts))

        self.rank, self.world, local_rank = _init_distributed(cfg.engine.device, self.env_set)
        self.device = resolve_device(cfg.engine.device, local_rank)
        self.lock = DirLock(self.exp_dir, "training")
        self._on_all_ranks(self._take_lock, "the experiment directory is in use")
        self._setup_logging()
        if self.ckpt_root.exists() and not self.ckpt_root.is_dir():   # found at the first save, steps later
            raise TrainingError(f"{self.ckpt_root}: a file, not a directory: checkpoints are written into it; "
                                "move it away")
        refuse_lost_pointer(self.ckpt_root)
        if self.rank == 0:   # a killed run's half-written checkpoints (the lock says no run writes them now)
            for stale in self.ckpt_root.glob(".*.partial"):
                shutil.rmtree(stale, ignore_errors=True)
        last = last_checkpoint(self.ckpt_root)
        if not resume and last is not None:
            raise TrainingError(f"{self.exp_dir} already holds checkpoints: pass --resume to continue "
                                "that run, or choose another --exp-dir")
        self.init_ckpt = self._init_checkpoint(cfg.train.init_from) if cfg.train.init_from else None
        self.data_stats = _file_stats(cfg)   # before data_record reads them: a change from here on is seen
        self.data_record = data_record(cfg, self.init_ckpt) if self.rank == 0 else None   # kept in every checkpoint
        if self.init_ckpt is not None:
            self._on_all_ranks(self._check_init_from, "train.init_from's model cannot be used")
        if resume and last is not None:  # before anything loads: a stale run must not go on, nor finish at once
            self._on_all_ranks(lambda: self._check_same_run(last), "the checkpoint is of another run")
        tokenizer = encoder_tokenizer(cfg)   # (no weights)
        self.encoder_vocab = vocab_digest(tokenizer)   # what its checkpoints record (write_model)
        for earlier in (self.init_ckpt, last if resume else None):   # encoder.path may move, not its vocabulary
            if earlier is not None:
                check_vocab(earlier, cfg, tokenizer)
        dumps = None
        if cfg.data.mode == "posteriors":
            dumps = DumpReader(identity(cfg.encoder.path, cfg.encoder.type, cfg.compress, cfg.encoder.options))
            self._on_all_ranks(lambda: self._check_dumps(prompts, dumps), "the posterior dump check failed")
        elif cfg.data.mode != "text":
            self._on_all_ranks(lambda: self._check_audio(prompts), "the audio check failed")
        log.info("data checked: %d training and %d validation records", counts["train"], counts["valid"])
        self.valid_records = counts["valid"]

        # before the models load (minutes for a large LLM): a learned simulator of another compression is refused
        self.simulator = build_simulator(cfg.simulation, tokenizer, device=self.device)
        if cfg.simulation.name == "learned":   # its teacher: this encoder and compression?
            made_for = dumps.expected if dumps is not None else identity(cfg.encoder.path, cfg.encoder.type,
                                                                         cfg.compress, cfg.encoder.options)
            self.simulator.check_teacher(made_for, "this training config", refuse_compression=True,
                                         say=log.warning if self.rank == 0 else lambda message: None)
        torch.manual_seed(cfg.train.seed)  # the fresh projector (and LoRA) weights
        self.model = build_model(cfg, audio=cfg.data.mode in ("audio", "mixed"), device=str(self.device))
        if self.init_ckpt is not None:
            self._init_from(self.init_ckpt)
        enc_tokenizer = self.model.encoder.tokenizer if self.model.encoder is not None else tokenizer
        self.collator = Collator(prompts, self.model.prompt_tokenizer, enc_tokenizer, cfg.data.mode,
                                 cfg.data.audio_ratio, dumps=dumps, data_files=_data_files(cfg.data))
        if cfg.data.mode in ("text", "mixed") and self.rank == 0:
            warn_unspelled([*cfg.data.train, *cfg.data.valid], enc_tokenizer, prompts)
        self.train_data = self._batches(cfg.data.train, order=cfg.data.order)
        self.valid_data = self._batches(cfg.data.valid, order="sequential") if cfg.data.valid else None

        import deepspeed

        trainable = [p for p in self.model.parameters() if p.requires_grad]
        # Under bf16/fp16 DeepSpeed casts every parameter of the module it is given. The frozen encoder
        # stays float32, as its features are and as decoding runs it: it is out of the module meanwhile.
        encoder, self.model.encoder = self.model.encoder, None
        try:
            self.engine, _, _, _ = deepspeed.initialize(
                model=self.model, model_parameters=trainable, config=deepspeed_config(cfg))
        finally:
            self.model.encoder = encoder
        self.step, self.position, self.best, self._last_valid = 0, DataPosition(), [], math.inf
        self.batches_by_mode = {"text": 0, "audio": 0}
        if resume:
            self._resume()
        else:
            self._start_fresh()

    # -- set-up --------------------------------------------------------------------------------

    def _on_all_ranks(self, check, what: str) -> None:
        """Run ``check`` on every rank; when it fails on any, every rank stops.

        A rank that raised alone would leave the others waiting forever in the next collective;
        the rank that found the problem raises it, the others say where to look.
        """
        error = None
        try:
            check()
        except Exception as e:  # noqa: BLE001 - whatever it is, the other ranks must not wait for this one
            error = e
        failed = torch.tensor([0 if error is None else 1], dtype=torch.long, device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MAX)
        if error is not None:
            raise error
        if int(failed):
            raise TrainingError(f"{what} on another process (its message says why)")

    def _over_ranks(self, values: list[float], op=None) -> list[float]:
        """``values`` summed (or reduced by ``op``) over every process.

        The tensor is on this process's device: a NCCL (GPU) or HCCL (Ascend) process group reduces
        no CPU tensor. float64 keeps token counts exact; HCCL reduces no float64, so there float32.
        """
        import torch.distributed as dist

        dtype = torch.float32 if self.device.type == "npu" else torch.float64
        reduced = torch.tensor(values, dtype=dtype, device=self.device)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM if op is None else op)
        return reduced.tolist()

    def _check_data_unchanged(self) -> None:
        """Every epoch reads the training files again, and every validation the validation files: one
        changed during the run would train on records the start of the run never checked, under a
        checkpoint that records the file as it was."""
        for path, stats in _file_stats(self.cfg).items():
            then = self.data_stats[path]
            if stats == then:
                continue
            if stats[0] == then[0]:   # touched, replaced or rewritten as long: rank 0 recorded the bytes, and decides
                if self.rank != 0:
                    continue
                if self._same_bytes(path):
                    self.data_stats[path] = stats
                    continue
            change = f"{then[0]} bytes then, {stats[0]} now" if stats[0] != then[0] else "rewritten, as long"
            raise TrainingError(f"{path} changed while this run was training ({change}): keep a run's data files "
                                "as they are until it ends; put the file back to --resume, or train a new experiment")

    def _same_bytes(self, path: str) -> bool:
        """Whether ``path`` still has the sha256 the run recorded for it (rank 0 only)."""
        recorded = {e["path"]: e["sha256"] for role in ("train", "valid") for e in self.data_record[role]}
        return file_sha256(path) == recorded[path]

    def _take_lock(self) -> None:
        if self.rank == 0:  # one run, one holder: rank 0 stands for all its processes
            self.lock.acquire()

    def _check_same_run(self, ckpt: Path) -> None:
        if self.rank == 0:   # the files are the same for every process: one reads them
            check_same_run(ckpt, self.cfg, self.prompts_text, self.data_record)
            # each process saved its own state (and ZeRO its share of the optimizer); the data position
            # counts batches of a plan for that many processes (the recipe checks it too: check-resume)
            written = len(list((ckpt / ENGINE_DIR).glob("state_rank*.pt")))
            if written and written != self.world:
                raise ResumeError(f"{ckpt} was written by {written} process(es) and this run has {self.world}: "
                                  "resume with as many, or train into a new experiment")

    def _check_audio(self, prompts: PromptSet) -> None:
        """Every audio header of this rank's share of the records: there, whole, within its segment.

        A header costs what batching pays anyway for each record's length, once per epoch; the
        ranks share the reading.
        """
        d = self.cfg.data
        index = 0
        for path in _data_files(d):
            for line, record in iter_records_with_lines(path, prompts):
                if index % self.world == self.rank:
                    try:
                        audio_info(record.path, record.key, record.start, record.end)
                    except AudioError as e:
                        raise e.located(path, line) from None
                index += 1

    def _check_dumps(self, prompts: PromptSet, dumps: DumpReader) -> None:
        """Every dump entry of this rank's share of the records: made for this experiment's encoder
        and compression, there and whole (a header each, as ``_check_audio`` reads audio headers)."""
        index = 0
        for path in _data_files(self.cfg.data):
            mine = []
            for line, record in iter_records_with_lines(path, prompts):
                if index % self.world == self.rank:
                    mine.append((line, record))
                index += 1
            check_dump_records(path, mine, dumps)

    def _start_fresh(self) -> None:
        """Step 0 of a new run: its config, and no curve left by an earlier start that saved nothing."""
        if self.rank == 0:
            write_atomic(self.exp_dir / "config.yaml", dump_config(self.cfg))
            with contextlib.suppress(FileNotFoundError):
                (self.exp_dir / "loss.tsv").unlink()

    def _setup_logging(self) -> None:
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        # the trainer's, its data's (batching) and its simulation's (a learned simulator's warnings)
        self.run_log = RunLog(self.exp_dir / "train.log" if self.rank == 0 else None,
                              [log, logging.getLogger("tasu.data"), logging.getLogger("tasu.simulate")],
                              f"%(asctime)s [rank {self.rank}] %(levelname)s %(message)s")

    def close(self) -> None:
        """Frees what the run holds in its process, as it ends or fails: the directory, train.log, the
        engine (DeepSpeed keeps a reference to each: every in-process run's model stayed in memory),
        and the variables it set (PATH, the launch variables of a run without a launcher). The launch
        variables, left set, made a process started later from this one (``tasu train`` from a notebook
        that trained in-process) a rank of a launch whose port this process holds: "address already in
        use". (The process group stays: a later training in this process joins it.)"""
        try:
            if self.run_log is not None:
                self.run_log.close()
            if self.lock is not None:
                self.lock.release()
            if self.engine is not None:
                engine, self.engine = self.engine, None
                engine.destroy()
        finally:   # whatever failed above (a device error, a signal): else no run could start here again
            for name, (before, value) in self.env_set.items():
                if os.environ.get(name) != value:   # set anew since by the caller: theirs now
                    continue
                if before is None:
                    os.environ.pop(name)
                else:
                    os.environ[name] = before
            self.env_set = {}
            if self.running:
                self.running = False
                _ONE_RUN.release()

    @staticmethod
    def _init_checkpoint(path: str) -> Path:
        """The checkpoint ``train.init_from`` names: an experiment's trained model, or a checkpoint.

        An experiment dir names the model its training ended with, so that training must have
        finished: a stage killed half-way would otherwise hand on a half-trained model, and the next
        stage would report its results as the curriculum's, with exit 0. A checkpoint named directly
        is taken as it is, finished or not."""
        exp = Path(path)
        last = last_checkpoint(exp / "checkpoints")
        if last is not None and not (exp / MODEL_DIR).is_dir() and not training_finished(exp / "checkpoints", last):
            raise TrainingError(
                f"train.init_from {path}: its training has not finished (its last checkpoint is {last.name}): "
                f"finish it (run it again with --resume), or name a checkpoint to start from that one on purpose "
                f"(train.init_from={last})")
        try:
            return resolve_checkpoint(path)
        except FileNotFoundError as e:
            raise TrainingError(f"train.init_from: {e}") from None

    def _check_init_from(self) -> None:
        """Rank 0's checks of ``train.init_from`` (run through ``_on_all_ranks``: a lock can change hands
        between two ranks' looks): an experiment still training, a model of another LLM."""
        if self.rank != 0:
            return
        running = init_from_running(self.cfg.train.init_from)
        if running:
            raise TrainingError(running)
        other_llm = init_llm_difference(self.init_ckpt, self.data_record)
        if other_llm:
            raise TrainingError(f"train.init_from {self.init_ckpt}: {other_llm}: a projector is trained for one "
                                "LLM; start from a model of this one, or train from scratch")

    def _init_from(self, ckpt: Path) -> None:
        """Curriculum: start from a previous stage's trained weights (new LoRA adapters stay fresh)."""
        state = load_trainable(ckpt)
        own = {n for n, p in self.model.named_parameters() if p.requires_grad}
        unexpected = sorted(set(state) - own)
        if unexpected:
            raise TrainingError(f"init_from {ckpt}: weights this model does not train: {unexpected[:5]}")
        missing = not_restorable(own, state)
        if missing:
            raise TrainingError(f"init_from {ckpt}: it lacks {len(missing)} of the {len(own)} tensors this model "
                                f"trains (e.g. {missing[:3]}): cut short, or another model's")
        check_fits({n: p.shape for n, p in self.model.named_parameters()}, state, ckpt)
        self.model.load_state_dict(state, strict=False)
        log.info("initialised %d of %d trained tensors from %s", len(state), len(own), ckpt)

    def _batches(self, sources: list, order: str) -> StreamingBatches:
        d = self.cfg.data
        return StreamingBatches(
            sources, self.collator.length, max_tokens=d.max_tokens, max_batch_size=d.max_batch_size,
            min_length=d.min_length, max_length=d.max_length, order=order,
            shuffle_buffer=d.shuffle_buffer, sort_window=d.sort_window,
            seed=self.cfg.train.seed, rank=self.rank, world_size=self.world,
            read_kwargs={"prompts": self.collator.prompts, "require_transcript": d.mode == "text"},
            collate=self.collator)

    def _loader(self, data: StreamingBatches):
        from torch.utils.data import DataLoader

        workers = self.cfg.data.num_workers
        return DataLoader(data, batch_size=None, num_workers=workers, persistent_workers=False,
                          prefetch_factor=2 if workers else None)

    # -- one step ------------------------------------------------------------------------------

    def posteriors(self, batch: StepBatch, seed: int, step: int | None = None):
        """The speech rows of a batch: simulated (text) at training step ``step`` (default: this one), or
        the encoder's."""
        if batch.mode == "text":
            generator = torch.Generator().manual_seed(seed)
            return self.simulator(batch.token_ids, generator=generator, step=self.step if step is None else step)
        if batch.posteriors is not None:   # the encoder ran when the dump was made
            return batch.posteriors
        try:
            return self.model.encode_audio([w.to(self.device) for w in batch.waveforms], self.cfg.compress)
        except ShortWaveformError as e:   # at its record's line, as audio that cannot be read
            raise AudioError(batch.paths[e.first], e.problem, batch.keys[e.first]).placed(self.collator.data_files) \
                from None

    def loss(self, batch: StepBatch, seed: int, step: int | None = None):
        """(loss output, input rows: prompt + speech + target tokens, simulation (errors, tokens)) of a batch;
        ``step`` as ``posteriors`` takes it.

        For a text batch the simulated rows' token errors (each row's top-1 id against the
        transcript's ids) are counted, so the log shows what the simulation does; (0, 0) for audio.
        """
        post = self.posteriors(batch, seed, step)
        errors = (0, 0)
        if batch.mode == "text":
            errors = (sum(edit_distance(r, h) for r, h in zip(batch.token_ids, row_tokens(post))),
                      sum(len(r) for r in batch.token_ids))
        post = post.to(self.device)
        out = self.engine(post, batch.text.to(self.device))
        return out, int(batch.text.lengths.sum() + post.lengths.sum()), errors

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        t = self.cfg.train
        # purge_step: events a killed run logged after its last checkpoint are redone, so hidden
        writer = SummaryWriter(str(self.exp_dir / "tensorboard"), purge_step=self.step + 1) if self.rank == 0 else None
        bar = tqdm(initial=self.step, total=t.max_steps, desc="train", disable=self.rank != 0 or not sys.stderr.isatty(), dynamic_ncols=True)
        stopped = True
        try:
            self._fit(writer, bar)
            stopped = False
        finally:   # a stopped run's too (its thread stayed alive), saying why it stopped, not what closing met
            bar.close()
            if writer is not None:
                with contextlib.suppress(Exception) if stopped else contextlib.nullcontext():
                    writer.close()
        log.info("done: %d steps (this run: %d text and %d audio batches per process); checkpoints in %s",
                 self.step, self.batches_by_mode["text"], self.batches_by_mode["audio"], self.ckpt_root)

    def _fit(self, writer, bar) -> None:
        """fit's epochs: steps, logs, validations and saves, to the finished mark."""
        import torch.distributed as dist

        t = self.cfg.train
        log.info("training %s: %d trainable parameters, %s mode, %d process(es), from step %d",
                 self.exp_dir, sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                 self.cfg.data.mode, self.world, self.step)
        window = {"loss": 0.0, "acc": 0.0, "tokens": 0, "sim_errors": 0, "sim_tokens": 0, "steps": 0,
                  "lr": 0.0, "start": time.time()}
        while self.position.epoch < t.epochs and not self._done():
            self._on_all_ranks(self._check_data_unchanged, "a data file changed")
            self.train_data.set_position(self.position)
            batches = iter(self._loader(self.train_data))
            empty_epoch = self.position.consumed == 0
            while not self._done():
                batch = next(batches, None)
                have, = self._over_ranks([0 if batch is None else 1], dist.ReduceOp.MIN)
                if have == 0:   # every rank stops when one runs dry
                    if empty_epoch:
                        raise TrainingError(
                            f"epoch {self.position.epoch} held no batch for this process: every record was "
                            "skipped as too long or too short (data.min_length, data.max_length, "
                            "data.max_tokens), the data.train weights drew none (a weight far below 1), or "
                            "there are fewer records than processes; nothing was trained")
                    break
                empty_epoch = False
                self._train_step(batch, window)
                bar.update(1)
                if self.step == self.cfg.optim.total_steps and not self._done() and self.rank == 0:
                    log.warning("step %d is optim.total_steps: the learning rate is 0 from here on, and the %d "
                                "epochs go on without training (raise optim.total_steps, or set train.max_steps)",
                                self.step, t.epochs)
                if self.step % t.log_interval == 0:
                    self._log(window, writer, skipped=batch.skipped)
                # the last step too: saved unvalidated (a save_interval step), the final model was never ranked
                if self.valid_data is not None and (self.step % t.valid_interval == 0 or self._done()):
                    self._validate(writer)
                    self.save(validated=True)  # a validated step is always kept, to be ranked
                elif self.step % t.save_interval == 0:
                    self.save(validated=False)
            if not self._done():
                log.info("epoch %d done at step %d", self.position.epoch, self.step)
                self.position.next_epoch()
        if self.step <= STEPS_AT_RATE_0:   # a run bound by its epochs (check_schedule saw to max_steps)
            raise TrainingError(f"the {t.epochs} epoch(s) held {self.step} batch(es) per process: the first "
                                f"{STEPS_AT_RATE_0} steps run at a learning rate of 0, so nothing was trained; "
                                "raise train.epochs or give more data")
        if self.valid_data is not None and not self._saved_at_step():
            self._validate(writer)
            self.save(validated=True)
        elif not self._saved_at_step():
            self.save(validated=False)
        if self.rank == 0:   # what train.init_from of a later stage checks: this model is the run's last
            mark_finished(self.ckpt_root, checkpoint_name(self.step))

    def _done(self) -> bool:
        t = self.cfg.train
        return (t.max_steps is not None and self.step >= t.max_steps) or self.position.epoch >= t.epochs

    def _saved_at_step(self) -> bool:
        last = last_checkpoint(self.ckpt_root)
        return last is not None and last.name == checkpoint_name(self.step)

    def _train_step(self, batch, window: dict) -> None:
        seed = step_seed(self.cfg.train.seed, self.step, self.rank)
        torch.manual_seed(seed)
        out, rows, (sim_errors, sim_tokens) = self.loss(batch.data, seed)
        if not math.isfinite(out.loss.item()):
            last = last_checkpoint(self.ckpt_root)
            kept = (f"the last good checkpoint, {last}, is kept" if last is not None
                    else "no checkpoint was written yet")
            raise TrainingError(f"non-finite loss {out.loss.item()} at step {self.step + 1} "
                                f"(batch {batch.data.keys[:3]}...); {kept}. Try precision fp32/bf16 or a lower lr.")
        self.engine.backward(out.loss)
        window["lr"] = self.engine.get_lr()[0]   # this step's: the scheduler's is the next one's after it
        self.engine.step()
        self.step += 1
        self.position.advance(batch)
        self.batches_by_mode[batch.data.mode] += 1
        # the curve is the mean over ranks, the speed and counts their sums
        stats = self._over_ranks([out.loss.item(), out.accuracy.item(), rows, sim_errors, sim_tokens])
        loss, acc = stats[0] / self.world, stats[1] / self.world
        window["loss"] += loss
        window["acc"] += acc
        window["tokens"] += int(stats[2])
        window["sim_errors"] += int(stats[3])
        window["sim_tokens"] += int(stats[4])
        window["steps"] += 1
        if self.rank == 0:
            with open(self.exp_dir / "loss.tsv", "a", encoding="utf-8") as f:
                f.write(f"{self.step}\t{loss:.6f}\n")

    def _log(self, window: dict, writer, skipped: int) -> None:
        n = max(window["steps"], 1)
        elapsed = max(time.time() - window["start"], 1e-9)
        stats = {"loss": window["loss"] / n, "accuracy": window["acc"] / n,
                 "lr": window["lr"],
                 "tokens_per_s": window["tokens"] / elapsed, "memory_mb": _memory_mb(self.device)}
        if window["sim_tokens"]:   # text batches: the simulated posteriors' token error rate
            stats["simulated_ter"] = window["sim_errors"] / window["sim_tokens"]
        log.info("step %d epoch %d: %s, skipped %d records (too long/short)", self.step, self.position.epoch,
                 ", ".join(f"{k} {v:.4g}" for k, v in stats.items()), skipped)
        if writer is not None:
            for k, v in stats.items():
                writer.add_scalar(f"train/{k}", v, self.step)
        window.update(loss=0.0, acc=0.0, tokens=0, sim_errors=0, sim_tokens=0, steps=0, start=time.time())

    @torch.no_grad()
    def _validate(self, writer) -> float:
        self.engine.eval()
        total = [0.0, 0.0, 0, 0]  # loss x tokens, correct tokens, tokens, records
        self.valid_data.set_position(DataPosition())
        for batch in self._loader(self.valid_data):
            seed = step_seed(self.cfg.train.seed, -1 - batch.index, self.rank)
            out, _, _ = self.loss(batch.data, seed, VALIDATION_STEP)   # the same rows every time
            n = out.num_tokens
            total = [total[0] + out.loss.item() * n, total[1] + out.accuracy.item() * n, total[2] + n,
                     total[3] + len(batch.data.keys)]
        total = self._over_ranks(total)
        self.engine.train()
        if total[2] == 0:   # a NaN loss would be ranked, and keep_best keep a checkpoint by it
            raise TrainingError(f"step {self.step} validation covered no token: every validation record was "
                                "skipped as too long or too short (data.min_length, data.max_length, "
                                "data.max_tokens); change them or the validation files")
        loss, acc = total[0] / total[2], total[1] / total[2]
        skipped = self.valid_records - int(total[3])   # the loss ranks checkpoints: say what it leaves out
        log.info("step %d validation: loss %.4f, accuracy %.4f over %d tokens%s", self.step, loss, acc, int(total[2]),
                 f" ({skipped} of {self.valid_records} records skipped as too long/short)" if skipped else "")
        if writer is not None:
            writer.add_scalar("valid/loss", loss, self.step)
            writer.add_scalar("valid/accuracy", acc, self.step)
        self._last_valid = loss
        return loss

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self, validated: bool) -> None:
        """Write checkpoint step_N atomically, point ``last`` at it, keep the best-k and the last."""
        import torch.distributed as dist

        self._on_all_ranks(self._check_data_unchanged, "a data file changed")   # what the checkpoint records
        name = checkpoint_name(self.step)
        partial = partial_dir(self.ckpt_root, name)
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            (partial / MODEL_DIR).mkdir(parents=True)
            (partial / ENGINE_DIR).mkdir()
        dist.barrier()
        if validated:
            # a non-finite loss (a diverged model) ranks last: sorted() leaves a NaN wherever it stands
            self.best = sorted(self.best + [{"name": name, "step": self.step, "valid_loss": self._last_valid}],
                               key=lambda b: (not math.isfinite(b["valid_loss"]), b["valid_loss"]))
            self.best = self.best[:self.cfg.train.keep_best]
        state = {"step": self.step, "position": to_dict(self.position), "best": self.best}
        try:
            self.engine.save_checkpoint(str(partial / ENGINE_DIR), tag="ds", client_state=state,
                                        exclude_frozen_parameters=True)
            torch.save(state, partial / ENGINE_DIR / f"state_rank{self.rank}.pt")
            if self.rank == 0:
                write_model(partial / MODEL_DIR, self.model.trainable_state_dict(), self.cfg, self.prompts_text,
                            self.encoder_vocab, self.data_record["llm"]["sha256"], step=self.step)
                write_data_record(partial / ENGINE_DIR, self.data_record)
        except (OSError, RuntimeError) as e:  # a full disk: torch's writer says "basic_ios::clear" or so
            message = self._save_failure(name, e)  # the free space before the partial files are removed
            shutil.rmtree(partial, ignore_errors=True)
            raise TrainingError(message) from e
        dist.barrier()
        if self.rank == 0:
            log.info("saved %s", finalize_checkpoint(self.ckpt_root, name, self.best))
        dist.barrier()

    def _save_failure(self, name: str, error: BaseException) -> str:
        free = shutil.disk_usage(self.ckpt_root).free if self.ckpt_root.exists() else 0
        last = last_checkpoint(self.ckpt_root)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return (f"cannot write checkpoint {name} in {self.ckpt_root}: {free / 2**20:.1f} MiB free on that disk "
                f"({first_line}); " + (f"the last complete checkpoint, {last.name}, is kept" if last is not None
                                      else "no checkpoint was written"))

    def _resume(self) -> None:
        ckpt = last_checkpoint(self.ckpt_root)
        if ckpt is None:
            log.info("--resume: no checkpoint in %s yet, starting from scratch", self.ckpt_root)
            self._start_fresh()
            return
        use_safe_engine_loads(self.engine)
        state = load_engine_file(ckpt / ENGINE_DIR / f"state_rank{self.rank}.pt")
        try:
            self.engine.load_checkpoint(str(ckpt / ENGINE_DIR), tag="ds", load_module_strict=False,
                                        load_optimizer_states=True, load_lr_scheduler_states=True)
        except (AssertionError, OSError, KeyError) as e:   # DeepSpeed asserts, with no message, on a file gone
            held = sorted(str(f.relative_to(ckpt)) for f in (ckpt / ENGINE_DIR).rglob("*") if f.is_file())
            others = sorted(p.name for p in self.ckpt_root.glob("step_*") if p != ckpt)
            raise CheckpointError(
                f"{ckpt}: DeepSpeed cannot load its engine state ({type(e).__name__}: {str(e) or 'no message'}), so "
                f"a file of it is missing or damaged (it holds {', '.join(held) or 'nothing'}): resume from "
                f"another checkpoint ({', '.join(others) or 'there is none'}: write its name into "
                f"{self.ckpt_root / 'last'}), or train into a new --exp-dir") from None
        self.step = state["step"]
        if self.cfg.train.max_steps is not None and self.step > self.cfg.train.max_steps and self.rank == 0:
            log.warning("train.max_steps %d: the checkpoint has trained %d steps already, so nothing is trained "
                        "(a model is never cut back; train into a new --exp-dir for a shorter run)",
                        self.cfg.train.max_steps, self.step)
        self.position = DataPosition(**state["position"])
        self.best = state["best"] or read_best(self.ckpt_root)
        if self.rank == 0:  # forget the steps after the checkpoint: they are redone
            truncate_curve(self.exp_dir / "loss.tsv", self.step)
        log.info("resumed from %s: step %d, epoch %d, %d batches into it", ckpt, self.step,
                 self.position.epoch, self.position.consumed)


SPELLING_SAMPLE = 2000   # records read of each training and validation file for warn_unspelled,
SPELLING_BUDGET = 20000  # and of them all (a corpus in 1000 shards: 20 of each, not minutes before step 1)


def warn_unspelled(sources: list, tokenizer, prompts: PromptSet) -> None:
    """Warn where the encoder's vocabulary cannot spell the transcripts. Text it cannot spell is dropped
    from the simulated speech (a CTC head never emits it) while the LLM's target keeps it, so the model
    learns to write what it never heard: "TURN ON THE LIGHTS" for a lower-case vocabulary trains on
    nearly empty rows, "7 am" on "am". The first ``SPELLING_SAMPLE`` records of each file (fewer for
    many files: ``SPELLING_BUDGET`` in all): counted are transcripts whose spelling keeps under half
    their characters, and those that lose a letter or digit."""
    sample = min(SPELLING_SAMPLE, max(50, SPELLING_BUDGET // max(len(sources), 1)))
    for source in sources:
        path = str(getattr(source, "path", source))
        poor, lossy, example, lost_example, n = 0, 0, None, None, -1
        for n, (line, record) in enumerate(iter_records_with_lines(path, prompts)):
            if n == sample:
                break
            text = record.transcript or ""
            kept = "".join(tokenizer.decode(tokenizer.encode(text)).split())
            if len(kept) < len("".join(text.split())) / 2:
                poor += 1
                example = example or f"{path}:{line} {text[:40]!r} is spelt {kept[:40]!r}"
                continue
            spelt = set(unicodedata.normalize("NFKC", kept).casefold())
            lost = sorted({c for c in unicodedata.normalize("NFKC", text).casefold() if c.isalnum()} - spelt)
            if lost:
                lossy += 1
                lost_example = lost_example or f"{path}:{line} {text[:40]!r} loses {''.join(lost[:10])!r}"
        seen = min(n + 1, sample)
        if poor:
            log.warning("%d of the first %d transcripts of %s lose over half their characters to the encoder's "
                        "vocabulary (e.g. %s): its case or script may not be the vocabulary's", poor, seen, path,
                        example)
        if lossy:
            log.warning("%d of the first %d transcripts of %s hold characters the encoder's vocabulary cannot "
                        "spell (e.g. %s): their simulated speech lacks them while the target keeps them, and "
                        "the model learns to write what it never heard; write the text as the encoder spells it "
                        "(numbers as words)", lossy, seen, path, lost_example)


def _data_files(d) -> list[str]:
    return [str(getattr(source, "path", source)) for source in (*d.train, *d.valid)]


def check_training_records(d, prompts: PromptSet, allow_pipes: bool = False,
                           spelling: FieldSpelling | None = None) -> dict[str, int]:
    """Read every training and validation record once with the strict reader; the counts.

    Bad data stops the run here, at step 0, as ``FILE:LINE: FIELD: message`` (one JSON parse a
    record: seconds for a million). Text and mixed runs need each record's transcript, audio and
    mixed runs its ``path``, which may not be a shell command unless ``allow_pipes`` (posteriors runs
    read dump entries instead: checked with the dumps, see ``_check_dumps``); given ``spelling``, no
    prompt field may spell one of the LLM's special tokens. No file, or no record, is an error too: a
    run on nothing would write an untrained checkpoint.
    """
    if not d.train:
        raise TrainingError("data.train lists no files: there is nothing to train on")
    counts = {}
    for role, sources in (("train", d.train), ("valid", d.valid)):
        counts[role] = 0
        files = [str(getattr(source, "path", source)) for source in sources]
        for path in files:
            before = counts[role]
            for line, record in iter_records_with_lines(path, prompts,
                                                        require_transcript=d.mode in ("text", "mixed")):
                if d.mode in ("audio", "mixed") and record.path is None:
                    raise DataError(path, line, "path", f"missing: {d.mode}-mode training reads every record's audio")
                if d.mode in ("audio", "mixed") and is_command(record.path) and not allow_pipes:
                    raise DataError(path, line, "path", command_refused(record.path))
                problem = spelling.problem(record) if spelling is not None else None
                if problem:
                    raise DataError(path, line, *problem)
                counts[role] += 1
            if counts[role] == before:   # each file: an empty one beside others is a stage that made nothing
                raise TrainingError(f"data.{role}: {path} holds no records: a file listed to "
                                    f"{'train' if role == 'train' else 'validate'} on must hold some")
    return counts


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "npu":
        return torch.npu.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(cfg: ExperimentConfig, exp_dir: str | Path, resume: bool = False, allow_pipes: bool = False) -> None:
    """Train into ``exp_dir``; ``allow_pipes`` lets audio paths that are shell commands be run.

    A training that stops, or a start refused once train.log is open, says why in train.log too (its
    last line), not on stderr alone: a run under nohup or a batch system is read there. SIGTERM (kill,
    a job's time limit) stops a run of one process as Ctrl-C does, with status 143; its last checkpoint
    is where ``--resume`` goes on."""
    with _terminated_as_exit():
        trainer = Trainer(cfg, exp_dir, resume=resume, allow_pipes=allow_pipes)
        try:
            trainer.fit()
        except BaseException as e:
            trainer.run_log.to_file(logging.ERROR, f"stopped at step {trainer.step}: {stop_reason(e)}")
            raise
        finally:
            trainer.close()


class Terminated(SystemExit):
    """SIGTERM, raised where the training is: its exit status is the one the signal would give."""


def stop_reason(err: BaseException) -> str:
    """Why a run stopped, as its train.log's last line says it (stderr says it in its own words)."""
    return {KeyboardInterrupt: "interrupted", Terminated: "terminated (SIGTERM)"}.get(type(err)) or describe_error(err)


@contextlib.contextmanager
def _terminated_as_exit():
    """SIGTERM as ``Terminated`` in a run of one process. A rank of several keeps the default (ends at
    once): blocked in a collective, it would not run a Python handler, and would wait for ranks that
    ended. Only the main thread takes signals."""
    if threading.current_thread() is not threading.main_thread() or os.environ.get("WORLD_SIZE", "1") != "1":
        yield
        return
    pid = os.getpid()

    def stop(signum, frame):
        if os.getpid() != pid:   # a forked DataLoader worker: it ends as it would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
