"""Posterior dumps: a frozen encoder's compressed posteriors, computed once, kept as Kaldi ark/scp.

Audio training runs the frozen encoder on every batch of every epoch, and every decode runs it
again, though its output never changes. ``tasu dump-posteriors`` runs it once over JSONL files and
keeps each recording's compressed top-k rows, computed by the live path's own function
(``tasu.compress.encoder_posteriors``); ``data.mode: posteriors`` and ``tasu decode --input
posteriors`` then read them instead of the audio. A dump directory::

    DIR/
      dump.json            what made it: the encoder (backend and SHA-256 of its files), the
                           compression settings, vocabulary size, blank id; the inputs (with the
                           size and modification time of their audio files) and --nj; "made", a
                           random id of this dump
      post.J.ark           job J's rows: one Kaldi float matrix per recording (kaldiio)
      post.J.scp, utt2dur.J    job J's index and durations; the scp, written last, marks J done
      posteriors.scp, utt2dur  all jobs' (Kaldi style, for other tools)
      <input>.jsonl        each input file's records, each with "posteriors": "/.../DIR/post.J.ark:OFFSET"
                           (absolute: a relative path, read from another directory, named another dump
                           there), "audio_seconds" (its duration, so batches are cut as from audio)
                           and "posteriors_dump" (dump.json's "made": a copy of the file kept from
                           an earlier dump made at the same path read another recording's rows at
                           its offsets; it is refused)
      .done                the dump is complete

A recording's matrix is ``[rows, 2K + 2]``: K ids, K weights, the floor and the blank probability
of each row (``tasu.posteriors.Posteriors``); ids are exact in float32 below 2^24, far above any
CTC vocabulary. Records that share audio (the ASR and SLU records of one utterance: same ``path``,
``start``, ``end``) share one entry, so the encoder runs once per recording.

Resuming: recordings are dealt round-robin to ``nj`` jobs; a job writes its ark under a temporary
name and renames it when complete, then its utt2dur and scp (atomically), so a killed run redoes only
unfinished jobs (and removes the temporary ark the killed one left). ``job=J`` runs one job (parallel
jobs through a job runner); without it every missing job runs, then the merge writes the JSONL files
and ``.done``. A job, and the merge, is run by one process at a time (``.lock.J``, ``.lock``): a
second run into the directory stops at once, naming the first one's pid.

A dump is refused by an experiment whose encoder files or compression settings are not the ones it
was made with (``DumpError`` says which differ). Entries are untrusted input: the bytes at an offset
must be a Kaldi float-matrix header of the dump's width before kaldiio reads them (kaldiio would
unpickle an entry that starts with ``PKL``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from tasu.compress import CompressConfig, encoder_posteriors
from tasu.data.audio import audio_file, is_command
from tasu.data.records import DataError, Record, iter_records_with_lines
from tasu.fileio import atomic_replace, file_sha256, files_digest, read_json, write_atomic
from tasu.lock import LOCK_NAME, DirLock, holder
from tasu.posteriors import Posteriors

INFO, DONE, SCP, DURATIONS = "dump.json", ".done", "posteriors.scp", "utt2dur"
FIELD, SECONDS, MADE = "posteriors", "audio_seconds", "posteriors_dump"   # the fields a dump adds to each record
_EXACT_IDS = 1 << 24
_ENTRY = re.compile(r"(.+):(\d+)")
_HEADER = struct.Struct("<2s3sBiBi")   # \0B, "FM ", \4, rows, \4, cols
_JOB_FILE = re.compile(rf"post\.\d+\.(ark|scp)|{DURATIONS}\.\d+")


class DumpError(ValueError):
    """A dump that cannot be used (another encoder's, missing, corrupt) or made; the message says why."""


# --------------------------------------------------------------------------------------------------
# What made a dump


def encoder_digest(path: str | Path, encoder_type: str = "auto") -> str:
    """SHA-256 of the files the encoder is made from (names, sizes, contents).

    The backend names the files (``CTCEncoder.model_files``): by default the directory's top-level
    files, leaving out hidden ones (markers such as ``.done``) and subdirectories (outputs a recipe may
    put beside the model, such as its own decodes).
    """
    from tasu.encoders.registry import backend

    return files_digest(backend(path, encoder_type).model_files(Path(path)))


def identity(encoder_path: str | Path, encoder_type: str, compress: CompressConfig,
             encoder_options: dict | None = None) -> dict:
    """What a dump's numbers depend on: the encoder's backend, files and load options (say, SenseVoice's
    language), and the compression. Options appear only when given, so a dump made before they could be
    keeps its identity."""
    from tasu.encoders.registry import detect

    name = detect(encoder_path) if encoder_type == "auto" else encoder_type
    encoder = {"type": name, "sha256": encoder_digest(encoder_path, name)}
    if encoder_options:
        encoder["options"] = dict(sorted(encoder_options.items()))
    return {"encoder": encoder,
            "compress": {"enabled": compress.enabled, "threshold": compress.threshold, "topk": compress.topk}}


def identity_tag(ident: dict) -> str:
    """A short name for an identity: recipes keep each encoder's and setting's dumps apart by it."""
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]


def read_info(path: Path) -> dict:
    """A dump's ``dump.json``, with every field a reader of the dump uses."""
    def whole(info: dict) -> bool:
        ident = info["identity"]
        return (isinstance(ident["encoder"]["type"], str) and isinstance(ident["encoder"]["sha256"], str)
                and isinstance(ident["compress"], dict)
                and all(type(info[k]) is int for k in ("topk", "vocab_size", "blank_id"))
                and info["topk"] >= 1 and 0 <= info["blank_id"] < info["vocab_size"]
                and isinstance(info.get("made", ""), str))

    return read_json(path, whole, "a dump.json (identity: encoder, compress; topk >= 1, vocab_size, blank_id "
                                  "below it)")


def _differences(made: dict, wanted: dict) -> str:
    out = []
    if made["encoder"]["type"] != wanted["encoder"]["type"]:
        out.append(f"encoder type {made['encoder']['type']} (dump) vs {wanted['encoder']['type']}")
    if made["encoder"]["sha256"] != wanted["encoder"]["sha256"]:
        out.append(f"encoder files sha256 {made['encoder']['sha256'][:12]}... (dump) vs "
                   f"{wanted['encoder']['sha256'][:12]}...")
    if made["encoder"].get("options", {}) != wanted["encoder"].get("options", {}):
        out.append(f"encoder options {json.dumps(made['encoder'].get('options', {}))} (dump) vs "
                   f"{json.dumps(wanted['encoder'].get('options', {}))}")
    if made["compress"] != wanted["compress"]:
        out.append(f"compress {json.dumps(made['compress'])} (dump) vs {json.dumps(wanted['compress'])}")
    return "; ".join(out)


# --------------------------------------------------------------------------------------------------
# Reading


def _parse_entry(entry: str) -> tuple[str, int]:
    match = _ENTRY.fullmatch(entry) if isinstance(entry, str) else None
    if match is None:
        raise DumpError(f"{entry!r} is not a dump entry ARK:OFFSET")
    return match.group(1), int(match.group(2))


class DumpReader:
    """Reads dump entries for one experiment: each dump directory's ``dump.json`` is read once and
    checked against ``expected`` (``identity(...)`` of the experiment), then entries are checked and read."""

    def __init__(self, expected: dict):
        self.expected = expected
        self._infos: dict[Path, dict] = {}

    def info(self, entry: str) -> dict:
        """The ``dump.json`` of the dump that holds ``entry``, if it was made for this experiment."""
        ark, _ = _parse_entry(entry)
        directory = Path(ark).parent
        if directory not in self._infos:
            try:
                info = read_info(directory / INFO)
            except FileNotFoundError:
                raise DumpError(f"{ark} is not in a posterior dump (no {directory / INFO}): was the dump moved, "
                                "or its entries written relative to another directory?") from None
            except OSError as e:
                raise DumpError(f"{directory / INFO}: unreadable ({e})") from None
            differ = _differences(info["identity"], self.expected)
            if differ:
                raise DumpError(f"{directory} holds posteriors of another encoder or compression than this "
                                f"experiment's ({differ}): make them again with tasu dump-posteriors")
            self._infos[directory] = info
        return self._infos[directory]

    def check(self, entry: str, made: str | None = None) -> tuple[int, int]:
        """``(rows, cols)`` of ``entry`` from its header, after checking that it is whole and of the dump's
        width, and that the dump there is the one the record was written by (``made``: its MADE field)."""
        info = self.info(entry)
        ark, offset = _parse_entry(entry)
        if made is not None and info.get("made") not in (None, made):
            raise DumpError(f"{entry}: written by an earlier dump made at {Path(ark).parent} (its dump.json is now "
                            f"of another, made since), whose offsets hold other recordings: use the JSONL files "
                            "of the dump there now")
        try:
            size = os.path.getsize(ark)
            if offset >= size:   # before seeking: an offset of 20 digits is no file position at all
                raise DumpError(f"{entry}: no entry there: the ark has {size} bytes")
            with open(ark, "rb") as f:
                f.seek(offset)
                head = f.read(_HEADER.size)
        except OSError as e:
            raise DumpError(f"{entry}: cannot read: {e.strerror or e}") from None
        if head[:5] != b"\0BFM ":
            raise DumpError(f"{entry}: not a float matrix (starts with {head[:5]!r}): a corrupt ark or a wrong offset")
        if len(head) < _HEADER.size:
            raise DumpError(f"{entry}: truncated: the ark ends inside the matrix header")
        _, _, _, rows, _, cols = _HEADER.unpack(head)
        width = 2 * info["topk"] + 2
        if cols != width or rows < 0:
            raise DumpError(f"{entry}: a {rows}x{cols} matrix, not rows x {width} as this dump's rows are")
        if offset + _HEADER.size + 4 * rows * cols > size:
            raise DumpError(f"{entry}: truncated: the {rows}x{cols} matrix does not fit in the ark ({size} bytes)")
        return rows, cols

    def load(self, entry: str, made: str | None = None) -> Posteriors:
        """The posteriors of one recording, a batch of one (``made``: as for ``check``)."""
        from kaldiio.matio import read_kaldi

        self.check(entry, made)
        info = self.info(entry)
        k, vocab = info["topk"], info["vocab_size"]
        ark, offset = _parse_entry(entry)
        with open(ark, "rb") as f:   # opened here: kaldiio.load_mat would run a name that begins or ends in '|'
            f.seek(offset)
            mat = torch.from_numpy(np.array(read_kaldi(f), dtype=np.float32))   # a copy: the ark may be read-only memory
        ids, probs = mat[:, :k], mat[:, k:]
        if not bool(torch.isfinite(mat).all()) or bool(((ids != ids.round()) | (ids < 0) | (ids >= vocab)).any()):
            raise DumpError(f"{entry}: corrupt: its ids are not integers below {vocab}, or a value is not finite")
        if bool(((probs < -1e-3) | (probs > 1 + 1e-3)).any()):   # probabilities, to float rounding (-1e-10 occurs)
            raise DumpError(f"{entry}: corrupt: a weight, floor or blank value is not a probability (0 to 1)")
        rows = mat.shape[0]
        return Posteriors(ids=ids.long()[None], weights=mat[None, :, k:2 * k].contiguous(),
                          floor=mat[None, :, 2 * k].contiguous(), blank=mat[None, :, 2 * k + 1].contiguous(),
                          lengths=torch.tensor([rows]), vocab_size=vocab, blank_id=info["blank_id"])


def check_records(path: str, records: Sequence[tuple[int, Record]], reader: DumpReader) -> None:
    """Every record's dump entry there, whole and made for this experiment, else ``DataError`` at its line."""
    for line, record in records:
        entry, seconds = record.get(FIELD), record.get(SECONDS)
        if not isinstance(entry, str):
            raise DataError(path, line, FIELD, "missing: reading posteriors needs each record's dump entry "
                                               "(the JSONL files tasu dump-posteriors writes have it)")
        if type(seconds) not in (int, float) or not seconds >= 0:
            raise DataError(path, line, SECONDS, f"must be the audio's duration in seconds, not {seconds!r}")
        try:
            reader.check(entry, record.get(MADE))
        except DumpError as e:
            raise DataError(path, line, FIELD, str(e)) from None


# --------------------------------------------------------------------------------------------------
# Writing


def dump_posteriors(data: Sequence[str], out: str, encoder_path: str, encoder_type: str = "auto",
                    compress: CompressConfig | None = None, nj: int = 1, job: int | None = None,
                    batch_size: int = 8, device: str = "cpu", allow_pipes: bool = False,
                    encoder_options: dict | None = None, remake_stale: bool = False) -> str:
    """Dump the posteriors of the records of ``data`` (JSONL files) into ``out``; a report line.

    ``job``: run only that job (1..nj) and merge nothing; otherwise run every job not yet done, then
    merge. A directory already made from other inputs, ``nj`` or another encoder is refused; with
    ``remake_stale``, one made from other inputs or ``nj`` (a recipe's set remade) is made anew.
    """
    from tasu.data.audio import AudioError, audio_info, require_audio_path
    from tasu.encoders import load_tokenizer

    compress = compress or CompressConfig()
    if nj < 1 or (job is not None and not 1 <= job <= nj):
        raise DumpError(f"need nj >= 1 and 1 <= job <= nj, got nj {nj}, job {job}")
    if batch_size < 1:
        raise DumpError(f"batch size must be at least 1, got {batch_size}")
    names = [Path(p).name for p in data]
    if len(set(names)) < len(names):
        raise DumpError(f"input files must have distinct names (each becomes DIR/<name>): {' '.join(data)}")
    for path, name in zip(data, names):   # DIR/<name> is written: it may be neither the dump's own file nor an input
        if name in (INFO, DONE, SCP, DURATIONS) or _JOB_FILE.fullmatch(name):
            raise DumpError(f"{path}: an input file may not be named {name}, a file of the dump itself: rename it")
        if (Path(out) / name).resolve() == Path(path).resolve():
            raise DumpError(f"{path} is in --out {out}, where its records with their entries would replace it: "
                            "choose another --out")
    inputs = {path: list(iter_records_with_lines(path, require_target=False)) for path in data}
    recordings: dict[tuple, str] = {}   # (path, start, end) -> its ark key
    where: dict[str, tuple[str, int]] = {}   # ark key -> the file and line of its first record
    taken: set[str] = set()
    for path, records in inputs.items():
        for line, r in records:
            require_audio_path(r.path, path, line, allow_pipes, "posteriors are computed from the audio")
            if (r.path, r.start, r.end) not in recordings:   # another file's key may name other audio
                key = r.key if r.key not in taken else next(f"{r.key}-{n}" for n in range(2, len(taken) + 3)
                                                            if f"{r.key}-{n}" not in taken)
                recordings[(r.path, r.start, r.end)] = key
                where[key] = (path, line)
                taken.add(key)
    if not recordings:
        raise DumpError(f"{', '.join(data)}: no records: nothing to dump")

    tokenizer = load_tokenizer(encoder_path, encoder_type)
    if tokenizer.vocab_size > _EXACT_IDS:
        raise DumpError(f"a vocabulary of {tokenizer.vocab_size} ids does not fit the dump's float32 ids")
    topk = tokenizer.vocab_size if compress.topk is None else min(compress.topk, tokenizer.vocab_size)
    info = {"identity": identity(encoder_path, encoder_type, compress, encoder_options),
            "encoder_path": str(Path(encoder_path).resolve()),
            "vocab_size": tokenizer.vocab_size, "blank_id": tokenizer.blank_id, "topk": topk,
            "columns": f"ids[{topk}] weights[{topk}] floor blank", "nj": nj,
            "inputs": [_input(p, inputs[p]) for p in data], "made": secrets.token_hex(8)}
    root = Path(out)
    with DirLock(root, "the claim of tasu dump-posteriors", name=f"{LOCK_NAME}.claim", wait=True):
        made = _claim(root, info, remake_stale)   # two runs' claims one after the other: a moment each
    if (root / DONE).exists():
        return f"{out}: already complete ({len(recordings)} recordings), nothing to do"

    todo = [j for j in ([job] if job else range(1, nj + 1)) if not (root / f"post.{j}.scp").exists()]
    if todo:
        from tasu.device import resolve_device
        from tasu.encoders import load_encoder

        dev = resolve_device(device)
        encoder = load_encoder(encoder_path, encoder_type, device=str(dev), **(encoder_options or {}))
        items = list(recordings.items())
        try:
            for j in todo:
                with DirLock(root, f"job {j} of tasu dump-posteriors", name=f"{LOCK_NAME}.{j}"):
                    _still_claimed(root, made)
                    if (root / f"post.{j}.scp").exists():   # done meanwhile by another run
                        continue
                    for stale in root.glob(f".post.{j}.ark.*"):   # a killed run's temporary ark
                        stale.unlink()
                    mine = items[j - 1::nj]
                    seconds = {key: audio_info(p, key=key, start=s, end=e).duration for (p, s, e), key in mine}
                    _run_job(root, j, sorted(mine, key=lambda it: -seconds[it[1]]), seconds, encoder, dev,
                             compress, batch_size)
        except AudioError as e:   # placed at its record's line, as training places it
            if e.key not in where:
                raise
            raise e.located(*where[e.key]) from None
    if job is not None:
        return f"{out}: job {job} of {nj} done ({len(todo)} run now)"
    with DirLock(root, "the merge of tasu dump-posteriors"):
        _still_claimed(root, made)
        _merge(root, nj, inputs, recordings, made)
    return f"{out}: {len(recordings)} recordings of {sum(map(len, inputs.values()))} records dumped ({len(todo)} of {nj} jobs run now)"


def _claim(root: Path, info: dict, remake_stale: bool = False) -> str | None:
    """Write ``dump.json``, or check that the one there describes this same dump (``remake_stale``:
    one of the same encoder and settings from other inputs or ``nj`` is removed, and this one begun).
    Returns the dump's ``made``: a job or merge checks it again under its own lock (``_still_claimed``)."""
    path = root / INFO
    if path.exists():
        before = read_info(path)
        differ = _differences(before["identity"], info["identity"])
        if differ:
            raise DumpError(f"{root} holds a dump made with {differ}: remove it or choose another --out")
        why = _stale(before, info["inputs"], info["nj"])
        if why is None:
            return before.get("made")
        if not remake_stale:
            raise DumpError(f"{root} holds a dump {why}: remove it or choose another --out")
        # every job and merge lock of the old dump until the new is claimed, by name: a job that claimed it
        # and has not run yet has no lock file
        names = {LOCK_NAME, *(f"{LOCK_NAME}.{j}" for j in range(1, int(before.get("nj") or 1) + 1)),
                 *(f.name for f in root.glob(f"{LOCK_NAME}.*"))} - {f"{LOCK_NAME}.claim"}
        with contextlib.ExitStack() as held:
            for name in sorted(names):
                if who := holder(root, name):
                    raise DumpError(f"{root}: a dump of other inputs or --nj is being made there by {who}: "
                                    "wait for it to end (or stop it), or choose another --out")
                held.enter_context(DirLock(root, "the remaking of a stale dump", name=name))
            _remove_dump(root, before)
            write_atomic(path, json.dumps(info, indent=1) + "\n")
        return info["made"]
    write_atomic(path, json.dumps(info, indent=1) + "\n")
    return info["made"]


def _remove_dump(root: Path, info: dict) -> None:
    """The files of the dump ``info`` describes (``dump.json`` last), not others beside them (logs)."""
    merged = {Path(i["path"]).name for i in info.get("inputs", [])}   # its inputs' records with their entries
    for f in root.iterdir():
        if f.name in (DONE, SCP, DURATIONS) or f.name in merged or _JOB_FILE.fullmatch(f.name) or \
                f.name.startswith(".post."):
            f.unlink()
    (root / INFO).unlink()


def _still_claimed(root: Path, made: str | None) -> None:
    """Stop a job or merge whose dump was made anew (``--remake-stale``) after it claimed it: its split
    of the old inputs would be written into the new dump."""
    if read_info(root / INFO).get("made") != made:
        raise DumpError(f"{root}: the dump this run started was made anew from other inputs meanwhile by another "
                        "run: run this one again")


def why_stale(out: str | Path, data: Sequence[str], nj: int) -> str | None:
    """Why the complete dump in ``out`` is not the one of ``data`` and ``nj`` (None when it is, or when
    ``out`` holds no complete dump): a recipe sends a stale one to its job runner to be made anew."""
    root = Path(out)
    if not (root / DONE).exists() or not (root / INFO).exists():
        return None
    return _stale(read_info(root / INFO),
                  [_input(p, list(iter_records_with_lines(p, require_target=False))) for p in data], nj)


def _input(path: str, records: list[tuple[int, Record]]) -> dict:
    """What ``dump.json`` keeps of an input file: its name and SHA-256, and a digest of the size and
    modification time of every audio file its records read (an archive once; a command by its text).
    A corpus re-extracted or resampled under the same names leaves the JSONL as it was: by its digest
    alone, the dump of the old audio was decoded as the new one's, exit 0."""
    stamps = []
    for name in sorted({audio_file(r.path) or r.path for _, r in records if r.path}):
        try:
            st = os.stat(name) if not is_command(name) else None
            stamps.append([name, st.st_size, st.st_mtime_ns] if st else [name])
        except OSError:   # reading it fails, naming it, where the dump is made
            stamps.append([name, None])
    audio = hashlib.sha256(json.dumps(stamps, ensure_ascii=False).encode()).hexdigest()
    return {"path": path, "sha256": file_sha256(path), "audio": audio}


def _stale(info: dict, inputs: list[dict], nj: int) -> str | None:
    """How the dump ``info`` describes differs from one of ``inputs`` and ``nj``; None when it does not.
    (A dump of an older tasu recorded no audio digest: its inputs are compared without it.)"""
    if info.get("nj") != nj:
        return f"made with --nj {info.get('nj')}, not {nj}"
    before = info.get("inputs")
    if not isinstance(before, list) or len(before) != len(inputs) or \
            any(not isinstance(b, dict) or (b.get("path"), b.get("sha256")) != (i["path"], i["sha256"])
                for b, i in zip(before, inputs)):
        return "made from other input files (or contents)"
    changed = [i["path"] for b, i in zip(before, inputs) if "audio" in b and b["audio"] != i["audio"]]
    if changed:
        return f"made from audio that changed since (the size or modification time of a file that {changed[0]} reads)"
    return None


def _run_job(root: Path, j: int, mine: list, seconds: dict, encoder, device, compress: CompressConfig,
             batch_size: int) -> None:
    import kaldiio

    from tasu.data.audio import AudioError, load_audio
    from tasu.encoders.base import ShortWaveformError

    ark = str((root / f"post.{j}.ark").resolve())   # read from anywhere: a relative one names another dump there
    scp = []
    with atomic_replace(root / f"post.{j}.ark") as tmp, open(tmp, "wb") as f:
        for first in range(0, len(mine), batch_size):
            batch = mine[first:first + batch_size]
            waves = [torch.from_numpy(load_audio(p, key=key, start=s, end=e)).to(device)
                     for (p, s, e), key in batch]
            try:
                post = encoder_posteriors(encoder, waves, compress).to("cpu", torch.float32)
            except ShortWaveformError as e:   # named by its record, as load_audio names audio under 10 ms
                (path, _, _), key = batch[e.first]
                raise AudioError(path, e.problem, key) from None
            for b, (_, key) in enumerate(batch):
                n = int(post.lengths[b])
                mat = torch.cat([post.ids[b, :n].float(), post.weights[b, :n], post.floor[b, :n, None],
                                 post.blank[b, :n, None]], 1)
                offset = f.tell() + len(key.encode()) + 1   # the value starts after "key "
                kaldiio.save_ark(f, {key: mat.numpy()})
                scp.append(f"{key} {ark}:{offset}\n")
    write_atomic(root / f"{DURATIONS}.{j}", "".join(f"{key} {seconds[key]!r}\n" for _, key in mine))
    write_atomic(root / f"post.{j}.scp", "".join(scp))


def _merge(root: Path, nj: int, inputs: dict, recordings: dict, made: str | None) -> None:
    entries, seconds = {}, {}
    for j in range(1, nj + 1):
        scp = root / f"post.{j}.scp"
        if not scp.exists():
            raise DumpError(f"{scp} is missing: job {j} has not finished; run it (--job {j}) or run without --job")
        if not (root / f"post.{j}.ark").is_file():
            raise DumpError(f"{root / f'post.{j}.ark'} is missing beside {scp}: remove {scp} to run job {j} again")
        for table, values in ((scp, entries), (root / f"{DURATIONS}.{j}", seconds)):
            try:
                values.update(_read_job_table(table, float if values is seconds else str))
            except OSError as e:
                raise DumpError(f"{table}: cannot read ({e.strerror or e}): remove {scp} to run job {j} "
                                "again") from None
    lost = [key for key in recordings.values() if key not in entries or key not in seconds]
    if lost:
        raise DumpError(f"{root}: the jobs' post.J.scp or utt2dur.J lack {len(lost)} recordings (e.g. {lost[0]}): "
                        "damaged; remove the dump and make it again")
    for path, records in inputs.items():
        lines = []
        for _, r in records:
            key = recordings[(r.path, r.start, r.end)]
            mark = {FIELD: entries[key], SECONDS: seconds[key], **({MADE: made} if made else {})}
            lines.append(json.dumps({**r.to_dict(), **mark}, ensure_ascii=False) + "\n")
        write_atomic(root / Path(path).name, "".join(lines))
    write_atomic(root / SCP, "".join(f"{k} {v}\n" for k, v in entries.items()))
    write_atomic(root / DURATIONS, "".join(f"{k} {v!r}\n" for k, v in seconds.items()))
    write_atomic(root / DONE, "")


def _read_job_table(path: Path, kind) -> dict:
    """A job's ``key value`` lines (its scp or utt2dur), each checked: a damaged one is named by line."""
    values = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        key, _, value = line.partition(" ")
        try:
            values[key] = kind(value)
        except ValueError:   # not seconds
            value = ""
        if not key or not value or (kind is str and _ENTRY.fullmatch(value) is None):
            raise DumpError(f"{path}:{n}: not 'KEY {'ARK:OFFSET' if kind is str else 'SECONDS'}': damaged; "
                            "remove the dump and make it again")
    return values
