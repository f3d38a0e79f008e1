"""TASU training on DeepSpeed: text-only, audio, or mixed; resumable after a kill at any moment.

    deepspeed --num_gpus 8 --module tasu.cli train --config conf/train_text.yaml --exp-dir exp/text
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module tasu.cli train ...      # CPU, 2 processes
    tasu train --config conf/train_text.yaml --exp-dir exp/text                 # one process

One step: the DataLoader workers deliver a ``StepBatch`` (LLM tokens + encoder ids or waveforms);
the main process turns it into posteriors (simulation with the step's seed, or the frozen encoder +
compression), the model splices and scores, DeepSpeed steps. Only the trainable weights (projector,
LoRA) are in the optimizer and in checkpoints.

Exact resume: the data order is a function of (seed, epoch) and the checkpoint stores the batches
consumed; every step reseeds torch and the simulator from (seed, step, rank). So a run killed with
SIGKILL and resumed from its last checkpoint repeats the uninterrupted run's losses step for step.
"""
from __future__ import annotations

import logging
import math
import os
import random
import shutil
import socket
import sys
import time
from pathlib import Path

import torch

from tasu.config import to_dict
from tasu.data.batching import DataPosition, StreamingBatches
from tasu.data.prompts import load_prompts
from tasu.device import distributed_backend, resolve_device
from tasu.simulate import Simulator
from tasu.train.build import build_model
from tasu.train.checkpoint import (ENGINE_DIR, MODEL_DIR, atomic_write_text, checkpoint_name, dump_config,
                                   last_checkpoint, load_trainable, read_best, resolve_checkpoint, set_last,
                                   write_best, write_model)
from tasu.train.collate import Collator, StepBatch
from tasu.train.config import ExperimentConfig

log = logging.getLogger("tasu.train")

# DeepSpeed compiles its CPU ops (collectives, fused AdamW) into torch's extension cache: one cache
# per Python environment (tools/setup.sh builds them there), so two checkouts never rebuild each other's.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, a checkpoint that does not fit); the message says why."""


def step_seed(seed: int, step: int, rank: int) -> int:
    return random.Random(f"{seed}/step{step}/rank{rank}").getrandbits(63)


def _init_distributed(device: str) -> tuple[int, int, int]:
    """Rank, world size and local rank; a single process without a launcher gets a world of one."""
    import deepspeed

    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = distributed_backend(resolve_device(device, local_rank))
    deepspeed.init_distributed(dist_backend=backend)
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), local_rank


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


class Trainer:
    """Owns the engine, the data and the experiment directory of one run."""

    def __init__(self, cfg: ExperimentConfig, exp_dir: str | Path, resume: bool = False):
        for section in (cfg.encoder, cfg.llm):  # saved absolute: decoding may run from anywhere
            if section.path and Path(section.path).exists():
                section.path = str(Path(section.path).resolve())
        self.cfg, self.exp_dir = cfg, Path(exp_dir)
        self.ckpt_root = self.exp_dir / "checkpoints"
        self.rank, self.world, local_rank = _init_distributed(cfg.engine.device)
        self.device = resolve_device(cfg.engine.device, local_rank)
        self._setup_logging()
        if not resume and last_checkpoint(self.ckpt_root) is not None:
            raise TrainingError(f"{self.exp_dir} already holds checkpoints: pass --resume to continue "
                                "that run, or choose another --exp-dir")

        audio = cfg.data.mode != "text"
        torch.manual_seed(cfg.train.seed)  # the fresh projector (and LoRA) weights
        self.model = build_model(cfg, audio=audio, device=str(self.device))
        if cfg.train.init_from:
            self._init_from(cfg.train.init_from)
        self.prompts_path = cfg.data.prompts
        prompts = load_prompts(cfg.data.prompts)
        encoder_tokenizer = (self.model.encoder.tokenizer if self.model.encoder is not None
                             else _encoder_tokenizer(cfg))
        self.simulator = Simulator.from_tokenizer(encoder_tokenizer, cfg.simulation)
        self.collator = Collator(prompts, self.model.prompt_tokenizer, encoder_tokenizer, cfg.data.mode,
                                 cfg.data.audio_ratio)
        self.train_data = self._batches(cfg.data.train, order=cfg.data.order)
        self.valid_data = self._batches(cfg.data.valid, order="sequential") if cfg.data.valid else None

        import deepspeed

        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=self.model, model_parameters=trainable, config=deepspeed_config(cfg))
        self.step, self.position, self.best, self._last_valid = 0, DataPosition(), [], math.inf
        self.batches_by_mode = {"text": 0, "audio": 0}
        if resume:
            self._resume()
        elif self.rank == 0:
            atomic_write_text(self.exp_dir / "config.yaml", dump_config(cfg))

    # -- set-up --------------------------------------------------------------------------------

    def _setup_logging(self) -> None:
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        fmt = logging.Formatter(f"%(asctime)s [rank {self.rank}] %(levelname)s %(message)s")
        log.setLevel(logging.INFO)
        log.handlers.clear()
        log.propagate = False
        if self.rank == 0:
            for handler in (logging.FileHandler(self.exp_dir / "train.log"), logging.StreamHandler()):
                handler.setFormatter(fmt)
                log.addHandler(handler)

    def _init_from(self, path: str) -> None:
        """Curriculum: start from a previous stage's trained weights (new LoRA adapters stay fresh)."""
        ckpt = resolve_checkpoint(path)
        state = load_trainable(ckpt)
        own = {n for n, p in self.model.named_parameters() if p.requires_grad}
        unexpected = sorted(set(state) - own)
        if unexpected:
            raise TrainingError(f"init_from {ckpt}: weights this model does not train: {unexpected[:5]}")
        self.model.load_state_dict(state, strict=False)
        log.info("initialised %d of %d trained tensors from %s", len(state), len(own), ckpt)

    def _batches(self, sources: list, order: str) -> StreamingBatches:
        d, training = self.cfg.data, order != "sequential"
        return StreamingBatches(
            sources, self.collator.length, max_tokens=d.max_tokens, max_batch_size=d.max_batch_size,
            min_length=d.min_length, max_length=d.max_length, order=order,
            shuffle_buffer=d.shuffle_buffer, sort_window=d.sort_window if training else 0,
            seed=self.cfg.train.seed, rank=self.rank, world_size=self.world,
            read_kwargs={"prompts": self.collator.prompts, "require_transcript": d.mode == "text"},
            collate=self.collator)

    def _loader(self, data: StreamingBatches):
        from torch.utils.data import DataLoader

        workers = self.cfg.data.num_workers
        return DataLoader(data, batch_size=None, num_workers=workers, persistent_workers=False,
                          prefetch_factor=2 if workers else None)

    # -- one step ------------------------------------------------------------------------------

    def posteriors(self, batch: StepBatch, seed: int):
        if batch.mode == "text":
            generator = torch.Generator().manual_seed(seed)
            return self.simulator(batch.token_ids, generator=generator, step=self.step)
        c = self.cfg.compress
        waves = [w.to(self.device) for w in batch.waveforms]
        return self.model.encode_audio(waves, topk=c.topk, compress=c.enabled, threshold=c.threshold)

    def loss(self, batch: StepBatch, seed: int):
        """(loss output, number of input rows: prompt + speech + target tokens) of one batch."""
        post = self.posteriors(batch, seed).to(self.device)
        out = self.engine(post, batch.text.to(self.device))
        return out, int(batch.text.lengths.sum() + post.lengths.sum())

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> None:
        import torch.distributed as dist
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        t = self.cfg.train
        writer = SummaryWriter(str(self.exp_dir / "tensorboard")) if self.rank == 0 else None
        bar = tqdm(initial=self.step, total=t.max_steps, desc="train", disable=self.rank != 0 or not sys.stderr.isatty(), dynamic_ncols=True)
        log.info("training %s: %d trainable parameters, %s mode, %d process(es), from step %d",
                 self.exp_dir, sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                 self.cfg.data.mode, self.world, self.step)
        window = {"loss": 0.0, "acc": 0.0, "tokens": 0, "steps": 0, "start": time.time()}
        while self.position.epoch < t.epochs and not self._done():
            self.train_data.set_position(self.position)
            batches = iter(self._loader(self.train_data))
            while not self._done():
                batch = next(batches, None)
                have = torch.tensor([0 if batch is None else 1], dtype=torch.long)
                dist.all_reduce(have, op=dist.ReduceOp.MIN)  # every rank stops when one runs dry
                if int(have) == 0:
                    break
                self._train_step(batch, window)
                bar.update(1)
                if self.step % t.log_interval == 0:
                    self._log(window, writer, skipped=batch.skipped)
                if self.valid_data is not None and self.step % t.valid_interval == 0:
                    self._validate(writer)
                    self.save(validated=True)  # a validated step is always kept, to be ranked
                elif self.step % t.save_interval == 0:
                    self.save(validated=False)
            if not self._done():
                log.info("epoch %d done at step %d", self.position.epoch, self.step)
                self.position.next_epoch()
        if self.valid_data is not None and not self._saved_at_step():
            self._validate(writer)
            self.save(validated=True)
        elif not self._saved_at_step():
            self.save(validated=False)
        bar.close()
        if writer is not None:
            writer.close()
        log.info("done: %d steps (this run: %d text and %d audio batches per process); checkpoints in %s",
                 self.step, self.batches_by_mode["text"], self.batches_by_mode["audio"], self.ckpt_root)

    def _done(self) -> bool:
        t = self.cfg.train
        return (t.max_steps is not None and self.step >= t.max_steps) or self.position.epoch >= t.epochs

    def _saved_at_step(self) -> bool:
        last = last_checkpoint(self.ckpt_root)
        return last is not None and last.name == checkpoint_name(self.step)

    def _train_step(self, batch, window: dict) -> None:
        seed = step_seed(self.cfg.train.seed, self.step, self.rank)
        torch.manual_seed(seed)
        out, rows = self.loss(batch.data, seed)
        if not math.isfinite(out.loss.item()):
            raise TrainingError(f"non-finite loss {out.loss.item()} at step {self.step + 1} "
                                f"(batch {batch.data.keys[:3]}...); the last good checkpoint is kept in "
                                f"{self.ckpt_root}. Try precision fp32/bf16 or a lower lr.")
        self.engine.backward(out.loss)
        self.engine.step()
        self.step += 1
        self.position.advance(batch)
        self.batches_by_mode[batch.data.mode] += 1
        stats = torch.tensor([out.loss.item(), out.accuracy.item(), rows], dtype=torch.float64)
        torch.distributed.all_reduce(stats)  # the curve is the mean over ranks, the speed their sum
        loss, acc = stats[0].item() / self.world, stats[1].item() / self.world
        window["loss"] += loss
        window["acc"] += acc
        window["tokens"] += int(stats[2])
        window["steps"] += 1
        if self.rank == 0:
            with open(self.exp_dir / "loss.tsv", "a", encoding="utf-8") as f:
                f.write(f"{self.step}\t{loss:.6f}\n")

    def _log(self, window: dict, writer, skipped: int) -> None:
        n = max(window["steps"], 1)
        elapsed = max(time.time() - window["start"], 1e-9)
        stats = {"loss": window["loss"] / n, "accuracy": window["acc"] / n,
                 "lr": self.scheduler.get_last_lr()[0] if self.scheduler else self.cfg.optim.lr,
                 "tokens_per_s": window["tokens"] / elapsed, "memory_mb": _memory_mb(self.device)}
        log.info("step %d epoch %d: %s, skipped %d records (too long/short)", self.step, self.position.epoch,
                 ", ".join(f"{k} {v:.4g}" for k, v in stats.items()), skipped)
        if writer is not None:
            for k, v in stats.items():
                writer.add_scalar(f"train/{k}", v, self.step)
        window.update(loss=0.0, acc=0.0, tokens=0, steps=0, start=time.time())

    @torch.no_grad()
    def _validate(self, writer) -> float:
        import torch.distributed as dist

        self.engine.eval()
        total = torch.zeros(3, dtype=torch.float64)  # loss x tokens, correct tokens, tokens
        self.valid_data.set_position(DataPosition())
        for batch in self._loader(self.valid_data):
            seed = step_seed(self.cfg.train.seed, -1 - batch.index, self.rank)  # the same rows every time
            out, _ = self.loss(batch.data, seed)
            total += torch.tensor([out.loss.item() * out.num_tokens, out.accuracy.item() * out.num_tokens,
                                   out.num_tokens], dtype=torch.float64)
        dist.all_reduce(total)
        self.engine.train()
        loss, acc = (total[0] / total[2]).item(), (total[1] / total[2]).item()
        log.info("step %d validation: loss %.4f, accuracy %.4f over %d tokens", self.step, loss, acc, int(total[2]))
        if writer is not None:
            writer.add_scalar("valid/loss", loss, self.step)
            writer.add_scalar("valid/accuracy", acc, self.step)
        self._last_valid = loss
        return loss

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self, validated: bool) -> None:
        """Write checkpoint step_N atomically, point ``last`` at it, keep the best-k and the last."""
        import torch.distributed as dist

        name = checkpoint_name(self.step)
        final, partial = self.ckpt_root / name, self.ckpt_root / f".{name}.partial"
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            (partial / MODEL_DIR).mkdir(parents=True)
            (partial / ENGINE_DIR).mkdir()
        dist.barrier()
        if validated:
            self.best = sorted(self.best + [{"name": name, "step": self.step, "valid_loss": self._last_valid}],
                               key=lambda b: b["valid_loss"])[:self.cfg.train.keep_best]
        state = {"step": self.step, "position": to_dict(self.position), "best": self.best}
        self.engine.save_checkpoint(str(partial / ENGINE_DIR), tag="ds", client_state=state,
                                    exclude_frozen_parameters=True)
        torch.save(state, partial / ENGINE_DIR / f"state_rank{self.rank}.pt")
        if self.rank == 0:
            prompts_text = Path(self.collator.prompts.source).read_text(encoding="utf-8")
            write_model(partial / MODEL_DIR, self.model.trainable_state_dict(), self.cfg, prompts_text)
        dist.barrier()
        if self.rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            set_last(self.ckpt_root, name)
            write_best(self.ckpt_root, self.best)
            keep = {name} | {b["name"] for b in self.best}
            for old in self.ckpt_root.glob("step_*"):
                if old.name not in keep:
                    shutil.rmtree(old, ignore_errors=True)
            log.info("saved %s", final)
        dist.barrier()

    def _resume(self) -> None:
        ckpt = last_checkpoint(self.ckpt_root)
        if ckpt is None:
            log.info("--resume: no checkpoint in %s yet, starting from scratch", self.ckpt_root)
            return
        self.engine.load_checkpoint(str(ckpt / ENGINE_DIR), tag="ds", load_module_strict=False,
                                    load_optimizer_states=True, load_lr_scheduler_states=True)
        state = torch.load(ckpt / ENGINE_DIR / f"state_rank{self.rank}.pt", weights_only=True)
        self.step = state["step"]
        self.position = DataPosition(**state["position"])
        self.best = state["best"] or read_best(self.ckpt_root)
        curve = self.exp_dir / "loss.tsv"
        if self.rank == 0 and curve.exists():  # forget the steps after the checkpoint: they are redone
            lines = curve.read_text(encoding="utf-8").splitlines(keepends=True)
            complete = [ln for ln in lines if ln.endswith("\n") and ln.count("\t") == 1]
            atomic_write_text(curve, "".join(ln for ln in complete if int(ln.split("\t")[0]) <= self.step))
        log.info("resumed from %s: step %d, epoch %d, %d batches into it", ckpt, self.step,
                 self.position.epoch, self.position.consumed)


def _encoder_tokenizer(cfg: ExperimentConfig):
    from tasu.encoders import load_tokenizer

    return load_tokenizer(cfg.encoder.path, cfg.encoder.type)


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "npu":
        return torch.npu.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(cfg: ExperimentConfig, exp_dir: str | Path, resume: bool = False) -> None:
    Trainer(cfg, exp_dir, resume=resume).fit()
