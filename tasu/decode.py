"""Batched beam-search decoding of a JSONL file with a trained model: ``hyp.trn`` and ``ref.trn``.

    tasu decode --exp exp/asr_text --data data/test_clean.jsonl --out exp/asr_text/decode_beam4/test_clean
    tasu decode --exp exp/asr_text --data data/test_clean.jsonl --out DIR --input simulated
    tasu score --ref DIR/ref.trn --hyp DIR/hyp.trn --metric wer

What is decoded, and how:

- Every record of the JSONL file, of any task the checkpoint's prompt set knows (the file is read and
  checked in full before the model is loaded, so bad data stops with ``FILE:LINE: FIELD: message``).
- Each record is prompted with the *first* prompt of its task in the checkpoint's prompt set, filled
  from the record. Training draws a prompt at random; decoding takes a fixed one so that two decodes of
  the same checkpoint, or of two checkpoints, are comparable.
- ``input="audio"``: the record's audio -> the frozen encoder -> label-synchronous compression with the
  experiment's ``compress`` settings. ``input="simulated"``: the record's transcript (``GT``, or the
  target of an ASR-like task) -> posteriors simulated with the experiment's ``simulation`` settings (the
  simulator ``simulation.name`` names, built by ``tasu.simulate.build_simulator`` as training builds
  it; a WER schedule at the checkpoint's step), seeded by the record's key (and ``--seed``) so that the rows do not
  depend on the batch. No encoder weights are loaded and funasr is not imported. ``input="posteriors"``: the
  encoder's compressed posteriors read from a dump (``tasu dump-posteriors``; records from the JSONL
  files it writes), made with the experiment's encoder and ``compress`` settings (another dump is
  refused): the audio decode's batches and hypotheses without running the encoder. Against the audio decode, this
  separates what the projector + LLM get wrong from what the encoder gets wrong; for error-free rows
  pass ``--set simulation.drop_prob=0 --set simulation.alpha=[0,0]`` (and ``simulation.wer=null``).
- Records are sorted by length (audio seconds read from headers, or transcript tokens), longest first,
  and decoded ``batch_size`` at a time: little padding, and an out-of-memory error shows at once.
- Generation is guarded against looping by ``max_new_tokens`` always and, when set,
  ``no_repeat_ngram_size`` and ``repetition_penalty`` (see ``SpeechLLM.generate``).

Files in the output directory:

- ``ref.trn``: ``key<TAB>target`` for every record that has a target (records without one are
  unlabelled audio: decoded, not scored), in data order, written atomically at the start; absent
  when no record has a target;
- ``hyp.trn``: ``key<TAB>hypothesis``, in decoding order, appended and flushed one line at a time;
- ``decode.json``: what determines the hypotheses: the model (checkpoint, its weights' SHA-256, the
  base models), each record (a digest of its audio, task and fields), the input, beam and guards,
  compression or simulation settings;
- ``decode.log``: one block per run: checkpoint, settings, ``--set`` overrides, counts, speed.

In both ``.trn`` files every run of whitespace (a newline in a target or an output) becomes one space,
so that one line is always one utterance; an empty hypothesis is ``key<TAB>``.

A record whose ``path`` is a shell command (ends in ``|``) is refused unless ``allow_pipes`` (see
``tasu.data.audio``). One decode at a time writes into an output directory: a second one stops at
once, naming the first one's pid (``tasu.lock``). ``hyp.trn`` is created with its first hypothesis,
so a decode that fails before it leaves no empty file for scoring to mistake for a result.

Resuming: run the same command again. Keys already in ``hyp.trn`` are skipped; a partial last line (a
run killed in the middle of writing it) is cut off first, so its utterance is decoded again. A run whose
settings differ from the ``decode.json`` of the hypotheses already there, whose data lacks keys that
``hyp.trn`` holds (another file's decode), or that finds a ``hyp.trn`` without ``decode.json`` (not a
decode's, or its settings removed) stops with an error rather than mix two decodes in one file, and
leaves that file as it was. Nothing is lost when a run is killed: every finished line is on disk.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import random
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Literal, Sequence

import torch

from tasu.config import flat_keys, require_dir, to_dict
from tasu.data.audio import SAMPLE_RATE, AudioError, audio_info, load_audio, require_audio_path
from tasu.data.prompts import PromptSet, load_prompts
from tasu.data.records import DataError, Record, iter_records_with_lines
from tasu.device import resolve_device
from tasu.dump import FIELD, MADE, SECONDS, DumpReader, check_records, identity
from tasu.fileio import file_sha256, read_json, write_atomic
from tasu.lock import DirLock
from tasu.model_io import (MODEL_DIR, PROMPTS, WEIGHTS, CheckpointError, checkpoint_step, encoder_tokenizer,
                           read_model_config, resolve_checkpoint)
from tasu.posteriors import stack
from tasu.simulate import build_simulator

if TYPE_CHECKING:
    from tasu.model import SpeechLLM
    from tasu.model_io import ExperimentConfig   # the schema of a checkpoint's config

INPUTS = ("audio", "simulated", "posteriors")
HYP, REF, SETTINGS, LOG = "hyp.trn", "ref.trn", "decode.json", "decode.log"
log = logging.getLogger(__name__)


class DecodeError(ValueError):
    """Decoding cannot start: a bad option, or an output directory decoded with other settings."""


@dataclass
class DecodeOptions:
    """How hypotheses are searched for; everything but ``batch_size`` changes what they are."""

    input: Literal["audio", "simulated", "posteriors"] = "audio"
    beam: int = 4
    batch_size: int = 8
    max_new_tokens: int = 200
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0   # simulated input: which draw of the simulation (0: the one every earlier decode made)

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise DecodeError(f"input must be one of {', '.join(INPUTS)}, got {self.input!r}")
        # a beam of 2.5 failed in torch's generate; numpy's numbers are kept as Python's (decode.json is JSON)
        for name in ("beam", "batch_size", "max_new_tokens", "no_repeat_ngram_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise DecodeError(f"{name} must be a whole number, got {value!r}")
            setattr(self, name, int(value))
        if isinstance(self.repetition_penalty, bool) or not isinstance(self.repetition_penalty, numbers.Real):
            raise DecodeError(f"repetition_penalty must be a number, got {self.repetition_penalty!r}")
        self.repetition_penalty = float(self.repetition_penalty)
        for name in ("beam", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise DecodeError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.no_repeat_ngram_size < 0:
            raise DecodeError(f"no_repeat_ngram_size must be >= 0 (0: off), got {self.no_repeat_ngram_size}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):   # NaN fails both
            raise DecodeError(f"repetition_penalty must be > 0 (1: off), got {self.repetition_penalty}")
        if self.seed != 0 and self.input != "simulated":   # taken and ignored: nothing else is drawn
            raise DecodeError(f"seed {self.seed} chooses a draw of simulated input (--input simulated); "
                              f"{self.input} input has nothing random to seed")


@dataclass
class DecodeStats:
    """What ``decode_records`` has done so far; the caller's time between hypotheses is not counted."""

    utterances: int = 0
    audio_seconds: float = 0.0   # audio decoded (0 for simulated input)
    seconds: float = 0.0         # wall time: sorting, reading audio, encoding or simulating, generating
    empty: int = 0               # hypotheses that are empty after stripping
    no_speech: int = 0           # utterances with no row after compression: decoded from the prompt alone

    @property
    def real_time_factor(self) -> float:
        return self.seconds / self.audio_seconds if self.audio_seconds else float("nan")

    @property
    def utterances_per_second(self) -> float:
        return self.utterances / self.seconds if self.seconds else float("nan")


class _FirstChoice(random.Random):
    """Makes ``PromptSet.render``'s random draw take the first prompt: decoding is deterministic."""

    def choice(self, seq):
        return seq[0]


def first_prompt(prompts: PromptSet, record: Record) -> str:
    """The prompt a record is decoded with: its task's first prompt, filled from the record."""
    return prompts.render(record, _FirstChoice())


# --------------------------------------------------------------------------------------------------
# The library function


def decode_records(model: "SpeechLLM", cfg: "ExperimentConfig", prompts: PromptSet, records: Iterable[Record],
                   options: DecodeOptions | None = None, stats: DecodeStats | None = None,
                   simulation_step: int = 0, dumps: DumpReader | None = None) -> Iterator[tuple[str, str]]:
    """``(key, hypothesis)`` for every record, longest records first, in batches (see the module doc).

    ``model``, ``cfg`` and ``prompts`` are what ``load_trained`` returns (``audio=False`` is enough for
    simulated and posteriors input). ``cfg.compress`` steers compression of audio posteriors,
    ``cfg.simulation`` (at ``simulation_step``) the simulated ones. ``dumps`` reads posteriors input
    (default: a reader for ``cfg``'s encoder and compression). ``stats``, when given, is updated after
    every batch.
    """
    from tasu.encoders.base import ShortWaveformError

    options = options or DecodeOptions()
    stats = stats if stats is not None else DecodeStats()
    timer = time.perf_counter()
    device = model.llm.device
    records = list(records)
    if options.input == "simulated":
        tokenizer = model.encoder.tokenizer if model.encoder is not None else encoder_tokenizer(cfg)
        simulator = build_simulator(cfg.simulation, tokenizer, device=device)
        token_ids = {r.key: tokenizer.encode(_transcript(r)) for r in records}
        length = {key: len(ids) for key, ids in token_ids.items()}
    elif options.input == "posteriors":
        dumps = dumps or DumpReader(identity(cfg.encoder.path, cfg.encoder.type, cfg.compress,
                                             cfg.encoder.options))
        length = {r.key: r.get(SECONDS) for r in records}   # the audio's duration: the audio decode's order
    else:
        length = {r.key: _audio_seconds(r) for r in records}
    order = sorted(records, key=lambda r: length[r.key], reverse=True)

    for first in range(0, len(order), options.batch_size):
        batch = order[first:first + options.batch_size]
        try:
            if options.input == "simulated":
                post = stack([simulator([token_ids[r.key]], _key_generator(r.key, options.seed),
                                        step=simulation_step)
                              for r in batch])
            elif options.input == "posteriors":
                post = stack([dumps.load(r.get(FIELD)) for r in batch])
                stats.audio_seconds += sum(length[r.key] for r in batch)
            else:
                waves = [torch.from_numpy(load_audio(r.path, key=r.key, start=r.start, end=r.end)) for r in batch]
                stats.audio_seconds += sum(len(w) for w in waves) / SAMPLE_RATE
                try:
                    post = model.encode_audio([w.to(device) for w in waves], cfg.compress)
                except ShortWaveformError as e:   # named by its record, as load_audio names audio under 10 ms
                    r = batch[e.first]
                    raise AudioError(r.path, e.problem, r.key) from None
            hyps = model.generate(post.to(device), [first_prompt(prompts, r) for r in batch], num_beams=options.beam,
                                  max_new_tokens=options.max_new_tokens,
                                  no_repeat_ngram_size=options.no_repeat_ngram_size,
                                  repetition_penalty=options.repetition_penalty)
        except (RuntimeError, MemoryError) as e:
            if not out_of_memory(e):
                raise
            longest = batch[0].key   # the batches go longest first
            size = f"{length[longest]:.0f} s of audio" if options.input != "simulated" else f"{length[longest]} tokens"
            raise DecodeError(f"out of memory decoding a batch of {len(batch)}, the longest {longest} ({size}): "
                              "lower --batch-size, or cut long recordings into segments (start/end in the JSONL, "
                              "or a Kaldi segments file); the encoder attends over a whole recording at once") from None
        stats.utterances += len(batch)
        stats.empty += sum(not h for h in hyps)
        stats.no_speech += int((post.lengths == 0).sum())
        stats.seconds += time.perf_counter() - timer
        yield from zip((r.key for r in batch), hyps)
        timer = time.perf_counter()


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is the allocator giving up: torch's CPU "can't allocate memory", a device's
    out-of-memory error, Python's MemoryError (they carry no record, so the caller names it)."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" \
        or "can't allocate memory" in str(e) or "out of memory" in str(e).lower()


def _transcript(record: Record) -> str:
    if record.transcript is None:
        raise ValueError(f"{record.key}: a {record.task} record without GT has no transcript to simulate from")
    return record.transcript


def _audio_seconds(record: Record) -> float:
    """Duration from the headers only: enough to sort by, and a missing file is found before decoding."""
    if record.path is None:
        raise ValueError(f"{record.key}: a record without path cannot be decoded from audio")
    return audio_info(record.path, key=record.key, start=record.start, end=record.end).duration


def _cannot_write(path: Path, e: OSError) -> DecodeError:
    return DecodeError(f"{path}: cannot write ({e.strerror or e}); run the same command again to go on from the "
                       "hypotheses it holds")


def _key_generator(key: str, seed: int = 0) -> torch.Generator:
    """A generator seeded by the key (and the decode's seed) alone: the rows do not depend on the batch
    (string seeds go through SHA-512: stable across runs)."""
    name = f"decode/{key}" if seed == 0 else f"decode/{seed}/{key}"
    return torch.Generator().manual_seed(random.Random(name).getrandbits(63))


# --------------------------------------------------------------------------------------------------
# ``tasu decode``: files, resuming, the report


def trn_line(key: str, text: str) -> str:
    """``key<TAB>text\\n`` with every whitespace run of ``text`` made one space."""
    return f"{key}\t{' '.join(text.split())}\n"


def decoded_keys(hyp_path: Path) -> tuple[set[str], int]:
    """Keys of the complete lines of ``hyp_path`` and their length in bytes; the file is only read
    (whether it may be resumed is decided after, by ``_decode``'s checks)."""
    if not hyp_path.exists():
        return set(), 0
    data = hyp_path.read_bytes()
    end = data.rfind(b"\n") + 1
    try:
        return {line.split(b"\t", 1)[0].decode("utf-8") for line in data[:end].splitlines() if line.strip()}, end
    except UnicodeDecodeError:
        raise DecodeError(f"{hyp_path} is not UTF-8: not a tasu decode's hypotheses; use another --out, "
                          "or remove it") from None


def keep_complete_lines(hyp_path: Path, end: int) -> None:
    """Cut off a partial last line of ``hyp_path`` (a run killed while writing it: its utterance is decoded
    again) from byte ``end`` on; a file with no complete line is removed (no empty file, no false result)."""
    if not hyp_path.exists():
        return
    if end == 0:
        hyp_path.unlink()
        return
    with open(hyp_path, "rb+") as f:
        f.truncate(end)


def _settings(ckpt: Path, cfg: "ExperimentConfig", options: DecodeOptions, records: Sequence[Record]) -> dict:
    """What determines the hypotheses (``batch_size`` only changes padding, so it may differ): the
    model (the checkpoint's name is the same in a copied or retrained experiment: its weights' digest
    is not), the records (other audio under the same keys) and the options."""
    base = {name: {**to_dict(section), "path": str(Path(section.path).resolve())}
            for name, section in (("llm", cfg.llm), ("encoder", cfg.encoder))}
    model = {"weights_sha256": file_sha256(ckpt / MODEL_DIR / WEIGHTS), **base}
    settings = {"checkpoint": ckpt.name, "model": model, **asdict(options),
                "records": _record_digests(records, options.input == "simulated")}
    del settings["batch_size"]
    if options.input != "simulated":
        del settings["seed"]   # nothing random to seed
        settings["compress"] = to_dict(cfg.compress)
    else:
        settings["simulation"] = to_dict(cfg.simulation)
        settings["simulation_step"] = checkpoint_step(ckpt)
    return json.loads(json.dumps(settings))  # as read back from decode.json (tuples become lists)


def _record_digests(records: Sequence[Record], simulated: bool) -> dict[str, str]:
    """Each record's key -> a digest of what its hypothesis depends on: not its target, which only
    ref.trn holds (a corrected reference is scored without decoding again), but the transcript it
    simulates; not its dump entry either (a dump made again, with the same encoder, holds the same rows
    elsewhere; the encoder is checked with the dump). Per record, so that records added to the data
    resume the decode."""
    return {r.key: hashlib.sha256(json.dumps([r.task, r.path, r.start, r.end,
                                              {k: v for k, v in r.extra.items() if k not in (FIELD, SECONDS, MADE)},
                                              r.transcript if simulated else None],
                                             sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
            for r in records}


def _check_settings(out: Path, settings: dict, done: set[str]) -> None:
    """Refuse a resume whose settings, or whose records of the keys already decoded, are not those of
    the hypotheses there; then write this run's ``decode.json``."""
    path = out / SETTINGS
    if done and path.exists():
        before = read_json(path)
        if "model" not in before or not isinstance(before.get("records"), dict):
            log.warning("%s was written by an older tasu, without the model's and the records' digests: the "
                        "hypotheses there are resumed without comparing them", path)
            before.update(model=settings["model"], records=settings["records"])
        records = before.pop("records")
        changed = [f"{k}: {before.get(k)!r} before, {settings.get(k)!r} now"
                   for k in sorted((set(before) | set(settings)) - {"records", "model"})
                   if before.get(k) != settings.get(k)]
        was, now = flat_keys(before["model"]), flat_keys(settings["model"])
        model = [f"{k} {was.get(k)!r} before, {now.get(k)!r} now" for k in sorted(set(was) | set(now))
                 if was.get(k) != now.get(k)]
        if model:
            changed.append(f"another model: {'; '.join(model)}")
        moved = sorted(k for k in done if records.get(k) != settings["records"][k])
        if moved:
            changed.append(f"other records under {len(moved)} of the keys decoded (e.g. {moved[0]}: other audio, "
                           "segments, tasks or fields)")
        if changed:
            raise DecodeError(f"{out / HYP} holds hypotheses decoded with other settings ({'; '.join(changed)}): "
                              "choose another --out, or delete hyp.trn to decode again")
    write_atomic(path, json.dumps(settings, indent=1) + "\n")


def run_decode(exp: str, data: str, out: str, checkpoint: str = "best", input_kind: str = "audio", beam: int = 4,
               batch_size: int = 8, max_new_tokens: int = 200, no_repeat_ngram_size: int = 0,
               repetition_penalty: float = 1.0, device: str = "auto", overrides: Sequence[str] = (),
               allow_pipes: bool = False, seed: int = 0) -> int:
    """``tasu decode``: decode ``data`` into ``out`` (resuming) and print the report; the exit status.

    A failure raises (its message names the file, line or setting): ``tasu.cli.main`` makes it the
    one line ``tasu decode: error: ...``, or shows the traceback under ``--debug``.
    ``allow_pipes`` lets audio paths that are shell commands be run (data you trust only)."""
    options = DecodeOptions(input=input_kind, beam=beam, batch_size=batch_size, max_new_tokens=max_new_tokens,
                            no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty,
                            seed=seed)
    ckpt = resolve_checkpoint(Path(exp), checkpoint)   # before the lock makes --out: a wrong --exp leaves none behind
    for inside in (ckpt, ckpt.parent if ckpt.parent.name == "checkpoints" else ckpt):   # its model, its siblings
        if Path(out).resolve().is_relative_to(inside.resolve()):
            raise CheckpointError(f"--out {out} is inside {inside}: decoding writes beside a model, not into it "
                             "(training replaces and removes checkpoints)")
    with DirLock(out, "tasu decode"):
        report = _decode(Path(exp), data, Path(out), checkpoint, options, device, list(overrides), allow_pipes)
    print(report, end="")
    return 0


def _check_prompt_fields(data: str, lines: Sequence[int], records: Sequence[Record], prompts: PromptSet,
                         llm_path: str) -> None:
    """Refuse, at its line, a record whose prompt field spells one of the LLM's special tokens
    (``tasu.llm.FieldSpelling``); only the LLM's tokenizer is read."""
    from tasu.llm import FieldSpelling

    spelling = FieldSpelling(llm_path, prompts)
    for line, r in zip(lines, records):
        problem = spelling.problem(r)
        if problem:
            raise DataError(data, line, *problem)


def _decode(exp: Path, data: str, out: Path, which: str, options: DecodeOptions, device_name: str,
            overrides: list[str], allow_pipes: bool = False) -> str:
    from tqdm import tqdm

    from tasu.model_io import load_trained

    # 1. What will be decoded, checked before any model is loaded.
    ckpt = resolve_checkpoint(exp, which)
    cfg = read_model_config(ckpt, overrides)
    prompts = load_prompts(ckpt / MODEL_DIR / PROMPTS)
    for key, path in (("llm.path", cfg.llm.path), ("encoder.path", cfg.encoder.path)):
        # typically: the base models live elsewhere on this machine
        require_dir(key, path, f"the checkpoint's config names it: pass --set {key}=DIR with the directory "
                               "on this machine")
    simulated, audio = options.input == "simulated", options.input == "audio"
    records, lines = [], []
    for line, record in iter_records_with_lines(data, prompts=prompts, require_transcript=simulated,
                                                require_target=False):
        if audio:
            require_audio_path(record.path, data, line, allow_pipes,
                               "decoding audio needs it (or use --input simulated)")
        records.append(record)
        lines.append(line)
    if not records:   # an empty run would exit 0 with no hyp.trn, which scoring then misses
        raise DataError(data, None, None, "no records: nothing to decode")
    _check_prompt_fields(data, lines, records, prompts, cfg.llm.path)
    dumps = None
    if options.input == "posteriors":   # every entry there and made for this model, before it is loaded
        dumps = DumpReader(identity(cfg.encoder.path, cfg.encoder.type, cfg.compress, cfg.encoder.options))
        check_records(data, list(zip(lines, records)), dumps)
    device = resolve_device(device_name)

    # 2. The output directory: settings, references, and what an earlier run has done.
    out.mkdir(parents=True, exist_ok=True)
    # Nothing in it is changed before these checks: a hyp.trn that is not this decode's stays as it was.
    done, complete = decoded_keys(out / HYP)
    line_of = dict(zip((r.key for r in records), lines))   # key -> its line in data
    foreign = sorted(done - line_of.keys())
    if foreign:   # another file's decode: its ref.trn would be replaced by this one's, hyp.trn mixed
        raise DecodeError(f"{out / HYP} holds {len(foreign)} hypotheses of keys that are not in {data} (e.g. "
                          f"{foreign[0]}): another data file was decoded there; use another --out, or remove it")
    if (out / HYP).exists() and (out / HYP).stat().st_size and not (out / SETTINGS).exists():
        raise DecodeError(f"{out / HYP} is there without {SETTINGS}, which says how a decode made it: its "
                          "settings cannot be checked against this run's; use another --out, or remove it")
    _check_settings(out, _settings(ckpt, cfg, options, records), done)
    keep_complete_lines(out / HYP, complete)
    labelled = [r for r in records if r.target]   # records without a target are decoded, not scored
    if labelled:
        write_atomic(out / REF, "".join(trn_line(r.key, r.target) for r in labelled))
    else:
        (out / REF).unlink(missing_ok=True)
    todo = [r for r in records if r.key not in done]

    # 3. Decode the rest, one flushed line per hypothesis.
    stats = DecodeStats()
    if todo:
        model, cfg, prompts, _ = load_trained(ckpt, audio=audio, device=str(device), overrides=overrides)
        hyp_file = None  # opened with the first hypothesis: a failure before it leaves no empty hyp.trn
        try:
            with tqdm(total=len(todo), desc="decode", unit="utt", dynamic_ncols=True,
                      disable=not sys.stderr.isatty()) as bar:
                for key, hyp in decode_records(model, cfg, prompts, todo, options, stats,
                                               simulation_step=checkpoint_step(ckpt), dumps=dumps):
                    try:
                        hyp_file = hyp_file or open(out / HYP, "a", encoding="utf-8")
                        hyp_file.write(trn_line(key, hyp))
                        hyp_file.flush()
                    except OSError as e:   # a full disk: ENOSPC names no file
                        raise _cannot_write(out / HYP, e) from None
                    bar.update(1)
        except AudioError as e:   # placed at its record's line, as training places it
            if e.key not in line_of:
                raise
            raise e.located(data, line_of[e.key]) from None
        except BaseException:
            if hyp_file is not None:
                try:
                    hyp_file.close()
                except OSError:   # the failed write's buffer again: the error on its way says what failed
                    pass
                if not (out / HYP).stat().st_size:   # no hypothesis written: no empty file to score
                    (out / HYP).unlink()
            raise
        if hyp_file is not None:
            try:
                hyp_file.close()   # NFS reports a full disk or quota here
            except OSError as e:
                raise _cannot_write(out / HYP, e) from None

    # 4. The report, on stdout and appended to decode.log.
    o = options
    lines = [f"# {datetime.now().isoformat(timespec='seconds')} tasu decode",
             f"checkpoint: {ckpt.resolve()} (--checkpoint {which})",
             f"data: {data}: {len(records)} records; {len(done & line_of.keys())} already in {HYP}, "
             f"{stats.utterances} decoded now",
             f"input: {o.input}; device: {device}; beam {o.beam}, batch size {o.batch_size}, max new tokens "
             f"{o.max_new_tokens}, no-repeat n-gram {o.no_repeat_ngram_size}, repetition penalty "
             f"{o.repetition_penalty}",
             f"overrides: {' '.join(overrides) if overrides else 'none'}"]
    if stats.utterances and simulated:
        lines.append(f"speed: {stats.utterances} utterances in {stats.seconds:.2f} s: "
                     f"{stats.utterances_per_second:.3g} utterances/s")
    elif stats.utterances:
        lines.append(f"speed: {stats.audio_seconds:.2f} s of audio in {stats.seconds:.2f} s: "
                     f"real-time factor {stats.real_time_factor:.4g}")
    if stats.utterances:
        lines.append(f"empty hypotheses: {stats.empty}")
    if stats.no_speech:   # every frame blank to the encoder (silence, or audio it cannot hear): said, not hidden
        lines.append(f"no speech: {stats.no_speech} utterances kept no posterior row after compression; their "
                     "hypotheses come from the prompt alone")
    if len(labelled) < len(records):
        lines.append(f"unlabelled: {len(records) - len(labelled)} records have no target: in {HYP}, not in {REF}")
    lines.append(f"output: {out / HYP}" + (f", {out / REF}" if labelled else " (no targets: nothing to score)"))
    report = "\n".join(lines) + "\n"
    with open(out / LOG, "a", encoding="utf-8") as log_file:
        log_file.write(report + "\n")
    return report
