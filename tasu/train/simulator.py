"""``tasu train-simulator``: the learned simulator, trained on a frozen encoder's own posteriors.

    tasu train-simulator --config conf/simulator.yaml --encoder exp/encoder --data dump/train/ASR.jsonl \
        --out exp/simulator
    tasu train-simulator ... --out exp/simulator --resume        # after a kill
    tasu simulate --encoder exp/encoder --simulator learned --simulator-path exp/simulator \
        --wer 0.1 0.1 --samples 50 --text "turn on the lights"

Steps, each named in the log:

1. **teacher**: every recording of the data (records with audio and a transcript; records sharing
   audio count once) goes through the frozen encoder and compression (``encoder_posteriors``, the
   audio path's own function), clean and as ``teacher.copies`` degraded copies made on the fly
   (noise, low-pass, time masks; copy j of n at severity j / n), each kept as top-k rows with its
   token error rate against the transcript: the condition the model learns. A record that points
   into a posterior dump (``tasu dump-posteriors``) takes its clean rows from there instead of
   running the encoder again; degraded copies always need the audio. The examples are cached in
   ``OUT/teacher.safetensors`` (+ ``teacher.json``) and reused while the data, its audio files (their
   contents), encoder and settings are the same; the log tabulates them by
   error-rate bin (< 5, 5-10, 10-20, >= 20 %).
2. **train**: teacher forcing, soft cross-entropy (``SimulatorModel.loss``), AdamW with linear warm-up
   and cosine decay, gradient clipping; checkpoints ``OUT/checkpoints/step_N/`` (weights, optimizer
   moments, step; all safetensors and JSON) every ``save_interval`` steps, written under a
   temporary name and renamed, with ``OUT/checkpoints/last`` pointing at the newest.
3. **calibration**: the sampled rows' token error rate at 21 conditions over the trained range, at
   ``train.temperature``, on the first ``report_utterances`` distinct transcripts of the data; the
   curve goes into the model's config, and asked WERs are read through it (see
   ``tasu.simulate.learned``: sampling at temperature 0.5 makes fewer errors than the condition says).
4. **the model**: ``OUT/config.json`` + ``OUT/model.safetensors`` (what ``simulation.path`` names),
   and ``OUT/report.json``: the simulated token error rate at a grid of asked WERs, on the next
   ``report_utterances`` distinct transcripts (not those of the calibration), beside the teacher's own.

Exact resume: the batches of a step are a function of (seed, step) (a seeded permutation per
epoch), dropout is reseeded from (seed, step) every step, and the learning rate is computed from
the step, so weights + optimizer moments + the step are everything; a killed run resumed with
``--resume`` ends with the uninterrupted run's weights, bit for bit (tested). A run resumed on
other inputs than its teacher set's (``teacher.json`` keeps the data files' sha256, a stamp of their
audio files, the encoder's identity and the teacher settings; checked even when the teacher set itself
is gone) stops instead of training the old weights on another set, and so does one with other
settings than its checkpoint records (all but ``RESUMABLE``: the run's length, logging and report,
the device; a longer ``train.max_steps`` stretches the rest of the cosine).

Why a plain torch loop and not the DeepSpeed engine of ``tasu train``: the simulator is a few
million parameters trained in one process, where DeepSpeed adds start-up time and nothing else (no
ZeRO partitioning to gain, no multi-device data to shard), and its checkpoints are pickles that
resuming must guard, while this loop's state is three kinds of tensors that safetensors holds.
"""
from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch

from tasu.compress import CompressConfig
from tasu.config import flat_keys, require_dir, to_dict
from tasu.experiment import EncoderConfig
from tasu.fileio import file_sha256, read_json, write_atomic
from tasu.simulate.base import edit_distance, row_tokens, token_error_rate
from tasu.simulate.learned import (REACH, LearnedSimulator, LearnedSimulatorConfig, SimulatorArchitecture,
                                   SimulatorError, SimulatorModel, read_safetensors, save_safetensors_atomic,
                                   vocab_digest, write_simulator_dir)
from tasu.train.run_log import RunLog

log = logging.getLogger("tasu.train_simulator")
RESTART = "; remove the run's directory to train anew"   # what a damaged file of a training run leaves

TEACHER, TEACHER_INFO, REPORT = "teacher.safetensors", "teacher.json", "report.json"
OPTIMIZER = "optimizer.safetensors"
BINS = (0.05, 0.10, 0.20)   # the error-rate bins the teacher is tabulated by


@dataclass
class TeacherConfig:
    """Degraded copies of each recording: copy j of ``copies`` at severity j / copies."""

    copies: int = 3
    snr_db: tuple[float, float] = (0.0, 30.0)          # white noise: SNR from 30 dB (mild) to 0 dB
    lowpass_hz: tuple[float, float] = (500.0, 4000.0)  # cut-off from 4 kHz (mild) to 500 Hz
    time_masks: int = 4                                # masks at full severity
    time_mask_s: float = 0.25                          # the longest mask
    batch_size: int = 8                                # recordings per encoder batch
    seed: int = 0

    def check(self) -> None:
        if self.copies < 0 or self.batch_size < 1 or self.time_masks < 0:
            raise ValueError("copies and time_masks must be >= 0, batch_size >= 1")
        if not all(math.isfinite(x) for x in self.snr_db) or self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"snr_db must be two numbers, the lower first, got {list(self.snr_db)}")
        if not 0 < self.lowpass_hz[0] <= self.lowpass_hz[1] < 8000:   # below the Nyquist frequency of 16 kHz audio
            raise ValueError(f"lowpass_hz must be two cut-offs in (0, 8000) Hz, the lower first, got "
                             f"{list(self.lowpass_hz)}")
        if not 0 <= self.time_mask_s < math.inf:
            raise ValueError(f"time_mask_s must be a number >= 0, got {self.time_mask_s}")


@dataclass
class SimulatorLoopConfig:
    seed: int = 0
    max_steps: int = 2000
    batch_size: int = 32                # teacher examples per step
    lr: float = 1.0e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_interval: int = 50
    save_interval: int = 200
    report_utterances: int = 200        # transcripts of the calibration, and as many others of the report
                                        # (0: neither: asked WER = the raw condition)
    temperature: float = 0.5            # the sampling temperature the calibration is measured at
                                        # (simulation.temperature's default)
    report_wers: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3])

    def check(self) -> None:
        """A rate of 0 trained nothing and wrote a 'learned simulator' with exit 0: every field is checked."""
        if self.max_steps < 1 or self.batch_size < 1 or self.save_interval < 1 or self.log_interval < 1:
            raise ValueError("max_steps, batch_size, save_interval and log_interval must be >= 1")
        if self.warmup_steps < 0 or self.report_utterances < 0:
            raise ValueError("warmup_steps and report_utterances must be >= 0")
        for name in ("lr", "temperature"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a number > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)}")
        if not all(0 <= w <= 1 for w in self.report_wers):   # rates: 0.1 is 10 %; NaN fails
            raise ValueError(f"report_wers must be rates in [0, 1], got {self.report_wers}")


@dataclass
class SimulatorTrainingConfig:
    """``tasu train-simulator --config``: the encoder (teacher), compression, copies, model, loop."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    model: SimulatorArchitecture = field(default_factory=SimulatorArchitecture)
    train: SimulatorLoopConfig = field(default_factory=SimulatorLoopConfig)
    device: Literal["auto", "cpu", "cuda", "npu"] = "cpu"

    def check(self) -> None:
        if self.compress.topk is not None and self.compress.topk < self.model.topk:
            raise ValueError(f"model.topk {self.model.topk} exceeds compress.topk {self.compress.topk}: the teacher "
                             "rows keep fewer entries than the model is trained on")


# --------------------------------------------------------------------------------------------------
# Teacher examples


def degrade(wave: torch.Tensor, severity: float, t: TeacherConfig, g: torch.Generator,
            sample_rate: int = 16000) -> torch.Tensor:
    """A degraded copy of ``wave``: each of noise, low-pass and time masks with probability 1/2 (at
    least one), at a strength drawn from ``U(severity / 2, severity)``."""
    x = wave.float().clone()
    n = x.numel()
    use = torch.rand(3, generator=g) < 0.5
    if not bool(use.any()):
        use[int(torch.randint(3, (1,), generator=g))] = True
    strength = severity * (0.5 + 0.5 * torch.rand(3, generator=g))
    if use[1] and n > 1:   # low-pass
        hi, lo = t.lowpass_hz[1], t.lowpass_hz[0]
        cutoff = hi - (hi - lo) * float(strength[1])
        spec = torch.fft.rfft(x)
        spec[torch.fft.rfftfreq(n, 1.0 / sample_rate) > cutoff] = 0
        x = torch.fft.irfft(spec, n)
    if use[2]:             # time masks
        for _ in range(math.ceil(t.time_masks * float(strength[2]))):
            width = int(float(torch.rand(1, generator=g)) * t.time_mask_s * sample_rate)
            start = int(torch.randint(max(n - width, 1), (1,), generator=g))
            x[start:start + width] = 0
    if use[0]:             # noise last: masks and filtering do not remove it
        hi, lo = t.snr_db[1], t.snr_db[0]
        snr = hi - (hi - lo) * float(strength[0])
        rms = x.pow(2).mean().sqrt().clamp_min(1e-4)
        x = x + torch.randn(n, generator=g) * rms / 10 ** (snr / 20)
    return x.clamp(-1.0, 1.0)


@dataclass
class Teacher:
    """Examples, flat: ``src`` ids by ``src_offsets``, rows (ids, probabilities) by ``row_offsets``."""

    src: torch.Tensor
    src_offsets: torch.Tensor
    row_ids: torch.Tensor
    row_probs: torch.Tensor
    row_offsets: torch.Tensor
    ter: torch.Tensor

    def __len__(self) -> int:
        return len(self.ter)

    def batch(self, index: Sequence[int]):
        """Padded (src, src_len, wer, row_ids, row_probs, row_len) of examples ``index``."""
        srcs = [self.src[self.src_offsets[i]:self.src_offsets[i + 1]] for i in index]
        ids = [self.row_ids[self.row_offsets[i]:self.row_offsets[i + 1]] for i in index]
        probs = [self.row_probs[self.row_offsets[i]:self.row_offsets[i + 1]] for i in index]
        pad = torch.nn.utils.rnn.pad_sequence
        src_len = torch.tensor([len(s) for s in srcs])
        row_len = torch.tensor([len(r) for r in ids])
        src = pad(srcs, batch_first=True) if int(src_len.max()) else torch.zeros(len(index), 1, dtype=torch.long)
        k = self.row_ids.shape[1]
        if int(row_len.max()) == 0:
            return (src, src_len, self.ter[list(index)], torch.zeros(len(index), 0, k, dtype=torch.long),
                    torch.zeros(len(index), 0, k), row_len)
        return src, src_len, self.ter[list(index)], pad(ids, batch_first=True), pad(probs, batch_first=True), row_len

    def tensors(self) -> dict:
        return {name: getattr(self, name) for name in ("src", "src_offsets", "row_ids", "row_probs", "row_offsets", "ter")}


def _offsets(parts: list) -> torch.Tensor:
    return torch.tensor([0] + [len(p) for p in parts]).cumsum(0)


def _recordings(data: Sequence[str], tokenizer, allow_pipes: bool) -> list[dict]:
    """One entry per recording: its key, transcript ids, audio (path, start, end) and/or dump entry."""
    from tasu.data.audio import command_refused, is_command
    from tasu.data.records import DataError, iter_records_with_lines
    from tasu.dump import FIELD, MADE

    seen, out = set(), []
    for path in data:
        for line, r in iter_records_with_lines(path, require_transcript=True):
            entry = r.get(FIELD)
            if r.path is None and entry is None:
                raise DataError(path, line, "path", "missing: the teacher's posteriors come from the audio "
                                                    "(or from a posterior dump's entry)")
            if r.path is not None and is_command(r.path) and not allow_pipes:
                raise DataError(path, line, "path", command_refused(r.path))
            ident = (r.path, r.start, r.end) if r.path is not None else entry
            if ident in seen:
                continue
            seen.add(ident)
            ids = tokenizer.encode(r.transcript)
            if ids:
                out.append({"key": r.key, "ids": ids, "path": r.path, "start": r.start, "end": r.end,
                            "dump": entry, "made": r.get(MADE), "where": (path, line)})
    if not out:
        raise SimulatorError(f"{', '.join(data)}: no record with a transcript: nothing to learn from")
    return out


def build_teacher(cfg: SimulatorTrainingConfig, recordings: list[dict], device,
                  encoder_identity: dict) -> tuple[Teacher, list[float]]:
    """The teacher examples of every recording (clean + copies) and their rates; see the module doc.

    ``encoder_identity`` is ``tasu.dump.identity`` of the config's encoder and compression: what a
    posterior dump's entries must have been made with (a digest of every encoder file, computed once
    a run)."""
    from tasu.compress import encoder_posteriors
    from tasu.data.audio import AudioError, load_audio
    from tasu.data.records import DataError
    from tasu.dump import DumpReader
    from tasu.encoders import load_encoder
    from tasu.encoders.base import ShortWaveformError
    from tasu.posteriors import stack

    t, k = cfg.teacher, cfg.model.topk
    needs_audio = t.copies > 0 or any(r["dump"] is None for r in recordings)
    if t.copies > 0:
        for r in recordings:
            if r["path"] is None:
                path, line = r["where"]
                raise DataError(path, line, "path", f"missing: teacher.copies = {t.copies} degraded copies "
                                                    "are made from the audio (or set teacher.copies=0)")
    encoder = None
    if needs_audio:
        encoder = load_encoder(cfg.encoder.path, cfg.encoder.type, device=str(device), **cfg.encoder.options)
    dumps = DumpReader(encoder_identity)

    def audio_of(r: dict) -> torch.Tensor:
        try:
            return torch.from_numpy(load_audio(r["path"], key=r["key"], start=r["start"], end=r["end"]))
        except AudioError as e:
            raise e.located(*r["where"]) from None

    def run(waves, records):
        try:
            return encoder_posteriors(encoder, [w.to(device) for w in waves], cfg.compress).to("cpu", torch.float32)
        except ShortWaveformError as e:   # at its record's line, as audio that cannot be read
            r = records[e.first]
            raise AudioError(r["path"], e.problem, r["key"]).located(*r["where"]) from None

    src, row_ids, row_probs, ter = [], [], [], []
    started = time.time()
    for first in range(0, len(recordings), t.batch_size):
        chunk = recordings[first:first + t.batch_size]
        # the audio of every recording when copies are made; else only of those without a dump entry
        # (a record from a dump alone may have no audio)
        waves = [audio_of(r) if t.copies > 0 or r["dump"] is None else None for r in chunk]
        clean = [None] * len(chunk)
        for i, r in enumerate(chunk):
            if r["dump"] is not None:
                try:
                    clean[i] = dumps.load(r["dump"], r["made"])   # an earlier dump's record at this path: refused
                except ValueError as e:
                    path, line = r["where"]
                    raise DataError(path, line, "posteriors", str(e)) from None
        todo = [i for i, p in enumerate(clean) if p is None]
        if todo:
            live = run([waves[i] for i in todo], [chunk[i] for i in todo])
            for j, i in enumerate(todo):
                n = int(live.lengths[j])
                clean[i] = _one(live, j, n)
        batches = [stack(clean)]
        for copy in range(1, t.copies + 1):
            degraded = []
            for r, w in zip(chunk, waves):
                g = torch.Generator().manual_seed(random.Random(f"{t.seed}/{r['key']}/{copy}").getrandbits(63))
                degraded.append(degrade(w, copy / t.copies, t, g))
            batches.append(run(degraded, chunk))
        for post in batches:
            if post.topk < k:
                raise SimulatorError(f"the teacher rows keep {post.topk} entries, fewer than model.topk = {k}")
            hyps = row_tokens(post)
            for j, r in enumerate(chunk):
                n = int(post.lengths[j])
                src.append(torch.tensor(r["ids"], dtype=torch.long))
                row_ids.append(post.ids[j, :n, :k])
                row_probs.append((post.weights[j, :n, :k] + post.floor[j, :n, None]).clamp_min(0.0))
                ter.append(min(token_error_rate(r["ids"], hyps[j]), 1.0))
        log.info("teacher: %d of %d recordings (%.0f s)", min(first + t.batch_size, len(recordings)),
                 len(recordings), time.time() - started)
    teacher = Teacher(torch.cat(src), _offsets(src), torch.cat(row_ids).reshape(-1, k),
                      torch.cat(row_probs).reshape(-1, k), _offsets(row_ids), torch.tensor(ter, dtype=torch.float32))
    return teacher, ter


def _one(post, j: int, n: int):
    from tasu.posteriors import Posteriors

    return Posteriors(ids=post.ids[j:j + 1, :n], weights=post.weights[j:j + 1, :n], floor=post.floor[j:j + 1, :n],
                      blank=post.blank[j:j + 1, :n], lengths=torch.tensor([n]), vocab_size=post.vocab_size,
                      blank_id=post.blank_id)


def bin_counts(rates: Sequence[float]) -> dict[str, int]:
    names = [f"< {100 * BINS[0]:.0f} %"] + [f"{100 * a:.0f}-{100 * b:.0f} %" for a, b in zip(BINS, BINS[1:])] + \
            [f">= {100 * BINS[-1]:.0f} %"]
    counts = dict.fromkeys(names, 0)
    for r in rates:
        counts[names[sum(r >= edge for edge in BINS)]] += 1
    return counts


def _teacher_identity(cfg: SimulatorTrainingConfig, data: Sequence[str], recordings: list[dict],
                      encoder_identity: dict) -> dict:
    digests = []
    for path in data:
        digests.append({"path": str(path), "sha256": file_sha256(path)})
    return {"encoder": encoder_identity, "data": digests, "audio": _audio_stamp(recordings),
            "teacher": to_dict(cfg.teacher), "topk": cfg.model.topk}


def _audio_stamp(recordings: list[dict]) -> str:
    """SHA-256 of each audio file's path and bytes: audio replaced under the same paths is another
    teacher set (the data files' digests do not see it); a touched or copied file is the same. The
    files are read once more (the teacher's encoder passes read them all anyway); a command's output
    cannot be stamped."""
    import hashlib

    from tasu.data.audio import audio_file

    digest = hashlib.sha256()
    for path in sorted({audio_file(r["path"]) or "" for r in recordings if r["path"] is not None} - {""}):
        try:
            digest.update(f"{path}\0{file_sha256(path)}\n".encode())
        except OSError:   # gone since the records were read: the teacher's build will say so
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def load_or_build_teacher(cfg, data, out: Path, recordings: list[dict], device, encoder_identity: dict,
                          resuming: bool = False) -> Teacher:
    """The cached teacher set of ``out`` when it was made from the same inputs and settings, else a new
    one made from ``recordings`` (``_recordings`` of ``data``). A run ``resuming`` on other inputs than
    its teacher's would go on training on another set from the old run's weights: it stops instead."""
    ident = json.loads(json.dumps(_teacher_identity(cfg, data, recordings, encoder_identity)))
    info_path = out / TEACHER_INFO
    if info_path.exists():   # the record of the inputs: checked on resuming even if the teacher set is gone
        info = read_json(info_path, lambda i: isinstance(i, dict) and type(i.get("examples")) is int,
                         "a teacher.json (identity, examples)")
        then = info.get("identity") or {}
        now = {k: v for k, v in ident.items() if k in then or k != "audio"}   # an older tasu stamped no audio
        if then == now and (out / TEACHER).exists():
            log.info("teacher: %d examples from %s", info["examples"], out / TEACHER)
            return Teacher(**read_safetensors(out / TEACHER, RESTART))
        if resuming and then != now:
            changed = [name for name in now if then.get(name) != now[name]]
            what = {"data": "--data (its files or their contents)", "teacher": "teacher.*", "topk": "model.topk",
                    "encoder": "the encoder (--encoder, encoder.options, compress.*)",
                    "audio": "the audio the records name (its contents)"}
            raise SimulatorError(f"cannot resume {out}: changed since its run's teacher set was made "
                                 f"({info_path}): {', '.join(what[n] for n in changed) or 'its inputs'}; train "
                                 "into a new --out (or remove this one) to use them, or put back what the run read")
    elif resuming:   # made before the first checkpoint: without it, nothing says what the run was trained on
        raise SimulatorError(f"cannot resume {out}: {info_path} is gone, so its run's inputs cannot be checked "
                             "against these: put it back, or train into a new --out")
    teacher, rates = build_teacher(cfg, recordings, device, encoder_identity)
    save_safetensors_atomic(out / TEACHER, teacher.tensors())
    counts = bin_counts(rates)
    write_atomic(info_path, json.dumps({"identity": ident, "examples": len(teacher), "bins": counts,
                                        "wer_range": [min(rates), max(rates)]}, indent=1) + "\n")
    log.info("teacher: %d examples (%d recordings x %d), token error rate by bin: %s", len(teacher),
             len(teacher) // (cfg.teacher.copies + 1), cfg.teacher.copies + 1,
             ", ".join(f"{k} {v}" for k, v in counts.items()))
    return teacher


# --------------------------------------------------------------------------------------------------
# The loop


def _seed(seed: int, what: str) -> int:
    return random.Random(f"{seed}/{what}").getrandbits(63)


def _seed_streams(seed: int, what: str, device: torch.device) -> None:
    """Seed torch's random streams of the CPU and of ``device`` with ``_seed(seed, what)``: the two that
    train_simulator puts back when it ends (``torch.manual_seed`` would seed every GPU's)."""
    value = _seed(seed, what)
    torch.random.default_generator.manual_seed(value)
    if device.type != "cpu":
        module = torch.get_device_module(device.type)
        with module.device(device):
            module.manual_seed(value)


def batch_index(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Examples of step ``step`` (0-based): consecutive slices of a seeded permutation per epoch."""
    size = min(batch_size, n)
    per_epoch = n // size
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, f"epoch{epoch}")))
    return order[i * size:(i + 1) * size].tolist()


def learning_rate(step: int, c: SimulatorLoopConfig) -> float:
    """Linear warm-up to ``lr``, then a half cosine to 0 at ``max_steps`` (``step`` is 0-based)."""
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    f = (step - c.warmup_steps) / max(c.max_steps - c.warmup_steps, 1)
    return c.lr * 0.5 * (1.0 + math.cos(math.pi * min(f, 1.0)))


# What a resumed run may change: its length and logging, the report made at its end, the device, and
# where the encoder is (its files are compared by content, with the teacher set). The rest shapes the
# steps: a resume with another value would continue another run's weights and moments.
RESUMABLE = frozenset({"train.max_steps", "train.log_interval", "train.save_interval", "train.report_utterances",
                       "train.temperature", "train.report_wers", "device", "encoder.path"})


def _run_settings(cfg: SimulatorTrainingConfig) -> dict:
    """The settings a checkpoint records and a resume must match (all but ``RESUMABLE``), flattened."""
    settings = flat_keys(json.loads(json.dumps(to_dict(cfg))))
    return {k: v for k, v in settings.items() if k not in RESUMABLE}


def _save_checkpoint(root: Path, step: int, model, optimizer, sim_config: LearnedSimulatorConfig,
                     settings: dict) -> None:
    from tasu.model_io import checkpoint_name
    from tasu.train.checkpoint import finalize_checkpoint, partial_dir

    name = checkpoint_name(step)
    partial = partial_dir(root, name)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_simulator_dir(partial, sim_config, model.state_dict())
    moments = {}
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            moments[f"{i}.{key}"] = torch.as_tensor(value)
    save_safetensors_atomic(partial / OPTIMIZER, moments)
    write_atomic(partial / "state.json", json.dumps({"step": step, "settings": settings}) + "\n")
    finalize_checkpoint(root, name)


def _load_checkpoint(ckpt: Path, model, optimizer, settings: dict, max_steps: int) -> int:
    """Weights, optimizer moments and step of ``ckpt``, after checking that this run's settings are its
    run's (see ``RESUMABLE``) and that each moment fits its parameter; the step."""
    from tasu.simulate.learned import read_simulator_dir

    state = read_json(ckpt / "state.json", lambda s: isinstance(s, dict) and type(s.get("step")) is int
                      and s["step"] >= 0 and isinstance(s.get("settings", {}), dict),
                      'a state.json ({"step": <steps trained>, "settings": {...}})')
    before = state.get("settings")
    if before is None:
        log.warning("%s was written by an older tasu, without its settings: they cannot be compared", ckpt)
    else:
        changed = [f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now" for k in sorted(set(before) | set(settings))
                   if before.get(k) != settings.get(k)]
        if changed:
            raise SimulatorError(f"cannot resume from {ckpt}: the run was trained with other settings "
                                 f"({'; '.join(changed)}); only {', '.join(sorted(RESUMABLE))} may change: "
                                 "resume with the run's settings, or train into another directory")
    if state["step"] > max_steps:
        raise SimulatorError(f"cannot resume from {ckpt}: it is at step {state['step']}, past train.max_steps "
                             f"{max_steps}: raise train.max_steps, or use the simulator written at the run's end")
    _, weights = read_simulator_dir(ckpt)
    try:
        model.load_state_dict(weights)
    except RuntimeError:   # torch lists every mismatched tensor, over many lines
        raise SimulatorError(f"cannot resume from {ckpt}: its weights do not fit this model (model.* settings "
                             "other than the run's?): resume with the run's settings, or train into another "
                             "directory") from None
    moments = read_safetensors(ckpt / OPTIMIZER, RESTART)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    per_param: dict[int, dict] = {}
    for key, value in moments.items():
        i, _, name = key.partition(".")
        shape = () if name == "step" else tuple(params[int(i)].shape) if i.isdigit() and int(i) < len(params) else None
        if name not in ("step", "exp_avg", "exp_avg_sq") or shape is None or tuple(value.shape) != shape:
            raise SimulatorError(f"{ckpt / OPTIMIZER}: {key} (shape {list(value.shape)}) is no AdamW moment of this "
                                 f"model's {len(params)} parameters" + RESTART)
        per_param.setdefault(int(i), {})[name] = value
    if any(set(m) != {"step", "exp_avg", "exp_avg_sq"} for m in per_param.values()):
        raise SimulatorError(f"{ckpt / OPTIMIZER}: a parameter's moments are incomplete (step, exp_avg, exp_avg_sq)"
                             + RESTART)
    optimizer_state = optimizer.state_dict()
    optimizer_state["state"] = per_param
    optimizer.load_state_dict(optimizer_state)
    return state["step"]


def train_simulator(cfg: SimulatorTrainingConfig, data: Sequence[str], out: str | Path, resume: bool = False,
                    allow_pipes: bool = False) -> dict:
    """Train into ``out`` (see the module doc); the report (asked WER -> simulated token error rate)."""
    from tasu.device import resolve_device
    from tasu.lock import DirLock

    require_dir("encoder.path", cfg.encoder.path, "the teacher encoder is needed (--encoder DIR)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    lock = DirLock(out, "simulator training")
    lock.acquire()
    try:
        # its steps seed torch's streams of the CPU and the device (_seed_streams): the caller's are put back
        with RunLog(out / "train.log", [log], "%(asctime)s %(levelname)s %(message)s"), torch.random.fork_rng(
                devices=[] if device.type == "cpu" else [device.index], device_type=device.type):
            return _train(cfg, data, out, resume, allow_pipes, device)
    finally:
        lock.release()


def _train(cfg, data, out: Path, resume: bool, allow_pipes: bool, device) -> dict:
    from tasu.dump import identity
    from tasu.encoders import load_tokenizer
    from tasu.model_io import last_checkpoint, refuse_lost_pointer
    from tasu.train.checkpoint import truncate_curve

    ckpt_root = out / "checkpoints"
    refuse_lost_pointer(ckpt_root)
    last = last_checkpoint(ckpt_root)
    if last is not None and not resume:
        raise SimulatorError(f"{out} already holds checkpoints: pass --resume to continue that run, or choose "
                             "another --out")
    tokenizer = load_tokenizer(cfg.encoder.path, cfg.encoder.type)
    recordings = _recordings(data, tokenizer, allow_pipes)   # every record checked before anything runs
    encoder_identity = identity(cfg.encoder.path, cfg.encoder.type, cfg.compress,   # reads every encoder file
                                cfg.encoder.options)
    teacher = load_or_build_teacher(cfg, data, out, recordings, device, encoder_identity, resuming=last is not None)
    rates = teacher.ter
    sim_config = LearnedSimulatorConfig(
        **asdict(cfg.model), vocab_size=tokenizer.vocab_size, blank_id=tokenizer.blank_id,
        vocab_digest=vocab_digest(tokenizer), wer_range=(float(rates.min()), float(rates.max())),
        encoder=encoder_identity)
    c = cfg.train
    _seed_streams(c.seed, "init", device)
    model = SimulatorModel(sim_config).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                                   {"params": other, "weight_decay": 0.0}], lr=c.lr)
    step = 0
    curve = out / "loss.tsv"
    if last is not None:
        step = _load_checkpoint(last, model, optimizer, _run_settings(cfg), c.max_steps)
        truncate_curve(curve, step)   # the steps after the checkpoint are redone
        log.info("resumed from %s: step %d", last, step)
    elif curve.exists():
        curve.unlink()
    log.info("training %s: %d parameters, %d teacher examples, WER range %.3f-%.3f, from step %d",
             out, sum(p.numel() for p in model.parameters()), len(teacher), *sim_config.wer_range, step)
    model.train()
    window, started = [], time.time()
    while step < c.max_steps:
        _seed_streams(c.seed, f"step{step}", device)
        src, src_len, wer, ids, probs, row_len = teacher.batch(batch_index(step, len(teacher), c.batch_size, c.seed))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, c)
        loss = model.loss(src.to(device), src_len.to(device), wer.to(device), ids.to(device), probs.to(device),
                          row_len.to(device))
        if not math.isfinite(loss.item()):
            raise SimulatorError(f"non-finite loss at step {step + 1}; the last checkpoint is kept. "
                                 "Try a lower train.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        optimizer.step()
        step += 1
        window.append(loss.item())
        with open(curve, "a", encoding="utf-8") as f:
            f.write(f"{step}\t{loss.item():.6f}\n")
        if step % c.log_interval == 0:
            log.info("step %d: loss %.4f, lr %.3g, %.1f steps/s", step, sum(window) / len(window),
                     learning_rate(step - 1, c), len(window) / max(time.time() - started, 1e-9))
            window, started = [], time.time()
        if step % c.save_interval == 0 or step == c.max_steps:
            _save_checkpoint(ckpt_root, step, model, optimizer, sim_config, _run_settings(cfg))
    report = {}
    sim = LearnedSimulator(model.eval(), temperature=c.temperature, source=str(out))   # its config is sim_config
    if c.report_utterances > 0:
        transcripts = distinct_transcripts(teacher, 2 * c.report_utterances)
        calibrating, held_out = transcripts[:c.report_utterances], transcripts[c.report_utterances:]
        sim_config.calibration = calibrate(sim, calibrating)   # from here on, sim reads asked WERs through it
    write_simulator_dir(out, sim_config, model.state_dict())
    log.info("wrote the learned simulator: %s (%s, %s)", out, "config.json", "model.safetensors")
    if c.report_utterances > 0:
        report = wer_report(sim, held_out or calibrating, c)
        report.update(held_out=bool(held_out), teacher_mean_ter=float(teacher.ter.mean()))
        write_atomic(out / REPORT, json.dumps(report, indent=1) + "\n")
        on = "" if held_out else " (on the calibration transcripts: too few others)"
        for row in report["rows"]:
            log.info("asked WER %5.1f %%: simulated token error rate %5.1f %%%s", 100 * row["asked"],
                     100 * row["simulated"], on)
        missed = [f"{100 * row['asked']:.1f} -> {100 * row['simulated']:.1f} %" for row in report["rows"]
                  if abs(row["simulated"] - row["asked"]) > REACH]
        if missed:
            log.warning("report: the simulated token error rate misses the asked WER by more than %.0f points (%s): "
                        "ask for WERs it hits, or train the simulator longer", 100 * REACH, ", ".join(missed))
    return report


def distinct_transcripts(teacher: Teacher, n: int) -> list[list[int]]:
    """The first ``n`` distinct transcripts (token ids) of the teacher's examples, in their order."""
    seen, transcripts = set(), []
    for i in range(len(teacher)):
        ids = teacher.src[teacher.src_offsets[i]:teacher.src_offsets[i + 1]].tolist()
        if tuple(ids) not in seen:
            seen.add(tuple(ids))
            transcripts.append(ids)
            if len(transcripts) >= n:
                break
    return transcripts


def measured_ter(sim: LearnedSimulator, transcripts: list[list[int]], what: str, **condition) -> float:
    """The token error rate (edits over tokens) of the rows ``sim`` samples for ``transcripts``, with a
    generator seeded from ``what`` (the measurement's name)."""
    g = torch.Generator().manual_seed(_seed(0, what))
    errors = tokens = 0
    for first in range(0, len(transcripts), 32):
        batch = transcripts[first:first + 32]
        for ref, hyp in zip(batch, row_tokens(sim(batch, g, **condition))):
            errors += edit_distance(ref, hyp)
            tokens += len(ref)
    return errors / max(tokens, 1)


def calibrate(sim: LearnedSimulator, transcripts: list[list[int]], points: int = 21) -> dict:
    """The sampled rows' token error rate at ``points`` conditions spanning the trained range, at the
    simulator's temperature, made nondecreasing (a running maximum): the curve that asked WERs are read
    through (``LearnedSimulator.condition``). ``sim`` must not be calibrated yet: it is asked for raw
    conditions."""
    if sim.c.calibration:
        raise ValueError("calibrate() measures an uncalibrated simulator")
    lo, hi = sim.c.wer_range
    conditions = [lo + (hi - lo) * i / (points - 1) for i in range(points)]
    wer, top = [], 0.0
    for i, x in enumerate(conditions):
        top = max(top, measured_ter(sim, transcripts, f"calibrate{i}", wer=x))
        wer.append(top)
    log.info("calibration at temperature %g on %d transcripts: %s", sim.temperature, len(transcripts),
             ", ".join(f"{100 * x:.0f} -> {100 * w:.1f} %" for x, w in zip(conditions[::4], wer[::4])))
    if wer[0] > lo + REACH or wer[-1] < hi - REACH:   # asked there, the simulator serves the curve's nearest end
        log.warning("calibration: the sampled rows err at %.1f-%.1f %%, not over all of the teacher's %.1f-%.1f %%: "
                    "a WER asked outside the first range gets rows at its nearest end; ask inside it, or train "
                    "longer or on a teacher that covers the rest", 100 * wer[0], 100 * wer[-1], 100 * lo, 100 * hi)
    return {"temperature": sim.temperature, "condition": conditions, "wer": wer}


def wer_report(sim: LearnedSimulator, transcripts: list[list[int]], c: SimulatorLoopConfig) -> dict:
    """Asked WER -> the sampled rows' token error rate on ``transcripts``, at each of ``c.report_wers``
    inside the trained range."""
    lo, hi = sim.c.wer_range
    rows = [{"asked": asked, "simulated": measured_ter(sim, transcripts, f"report{asked}", wer=asked)}
            for asked in c.report_wers if lo <= asked <= hi]
    return {"utterances": len(transcripts), "temperature": sim.temperature, "wer_range": list(sim.c.wer_range),
            "rows": rows}


def load_simulator_training_config(path: Optional[str], overrides: Sequence[str]) -> SimulatorTrainingConfig:
    from tasu.config import load_config

    return load_config(SimulatorTrainingConfig, path, overrides)
