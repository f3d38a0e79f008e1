"""Kaldi data directories <-> JSONL records, so any Kaldi/ESPnet corpus preparation can feed tasu.

    python -m tasu.data.kaldi_dir to-jsonl data/train --task ASR > data/train/asr.jsonl
    python -m tasu.data.kaldi_dir to-jsonl data/train --task SLU_scenario --target-file scenario
    python -m tasu.data.kaldi_dir to-jsonl data/train --task ASR --text-only > train_text.jsonl
    python -m tasu.data.kaldi_dir to-dir data/train/asr.jsonl data/train_copy

(``utils/data2jsonl.sh`` and ``utils/jsonl2data.sh`` are the shell front ends.)

A data dir holds ``wav.scp`` (recording -> file, ``ark:offset`` or command ``|``), ``text``
(utterance -> the target text) and optionally ``segments`` (utterance -> recording, start, end;
end -1 means the end of the recording) and ``utt2spk``. Each utterance becomes one record: ``key``
the utterance id, ``target`` its text, ``path`` its recording's wav.scp entry. A segment becomes
``start``/``end`` (seconds; ``end`` left out for -1), which the audio reader cuts, plus the
recording id in ``recording``; the speaker (from ``utt2spk``) goes to ``speaker``.

A task whose target is not the transcript reads it from another per-utterance file of the dir
(``--target-file scenario``: ``utt label`` lines, as ``text``); the transcript in ``text`` then
becomes the record's ``GT``. ``--text-only`` writes records without ``path`` for the text-only stage:
only ``text`` (and the target file) is read, line by line, so a language-model corpus of millions of
lines converts in constant memory.

What is an error and what is skipped:

- a malformed line is an error reported as ``FILE:LINE: message`` (an id with nothing after it, e.g.
  a ``text`` line without a transcript; a ``segments`` line without 4 fields, with a time that is
  not a number or an end not after its start; a repeated id; an id that is not a valid key). All
  errors of a dir are reported together and nothing is written. ``--text-only`` streams ``text``, so
  it stops at the first malformed line (the only one reported); the output file is then not written
  either, but on standard output the records before that line have gone out;
- an utterance that is not in every file it needs (``text`` and its audio in ``wav.scp``, through
  ``segments`` when there is one, and ``utt2spk`` when there is one) is skipped, and each kind of
  mismatch is logged once with a count and examples, as Kaldi's ``fix_data_dir.sh`` would do.

Writing goes the other way: files sorted by id (C-locale order), ``spk2utt`` derived from
``utt2spk`` (the speaker is the utterance itself when a record has none), ``segments`` written when
any record has a segment (a record without one covers its whole recording: ``0.000 -1``); times
are written with millisecond precision. Fields a data dir cannot hold (``GT``, pass-through fields)
are dropped with a log message. The command refuses to write over what it converts: ``to-jsonl`` an
output that is a table of its dir, ``to-dir`` a directory that holds a data dir (``--overwrite``).
Each table is replaced whole; while ``to-dir`` writes them, the dir holds ``.partial``: a dir that a
killed ``to-dir`` left half-written is refused as input and written again by the next ``to-dir``.
Converting no utterance at all (every one skipped, or no records) is an error, not an empty result.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Iterable, Iterator

from tasu.data.records import (MAX_SECONDS, DataError, Record, iter_records, key_problem, without_bom,
                               write_records)
from tasu.fileio import atomic_replace

logger = logging.getLogger(__name__)

_EXAMPLES = 3  # ids quoted in a "skipped" message
PARTIAL = ".partial"   # in a data dir while to-dir writes its tables (see the module doc)


class DataDirError(ValueError):
    """Every malformed line of a data dir (or of records that cannot make one), one per line."""

    def __init__(self, problems: list[DataError]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def read_data_dir(data_dir: str | Path, task: str = "ASR", target_file: str | None = None) -> list[Record]:
    """The utterances of a Kaldi data dir as records of ``task``, sorted by key.

    With ``target_file`` (a file name in the dir) the targets come from that file and the
    transcripts in ``text`` become ``GT``. Raises ``DataDirError`` listing every malformed line;
    utterances missing from a file they need are skipped and logged (see the module docstring).
    """
    data_dir = Path(data_dir)
    _refuse_partial(data_dir)
    problems: list[DataError] = []
    wav = _read_table(data_dir / "wav.scp", problems, "a path or command")
    text = _read_table(data_dir / "text", problems, "a transcript")
    targets = None
    if target_file is not None:
        targets = _read_table(data_dir / target_file, problems, "a target")
    segments = None
    if (data_dir / "segments").exists():
        segments = {utt: _parse_segment(data_dir / "segments", line, rest, problems)
                    for utt, (line, rest) in _read_table(data_dir / "segments", problems,
                                                         "recording, start and end").items()}
    utt2spk = None
    if (data_dir / "utt2spk").exists():
        utt2spk = _read_table(data_dir / "utt2spk", problems, "a speaker id", one_word=True)
    for utt, (line, _) in text.items():
        message = key_problem(utt)
        if message:
            problems.append(DataError(str(data_dir / "text"), line, None, f"utterance id {message}"))
    if problems:
        raise DataDirError(problems)

    utts = set(text)
    if segments is None:
        _skip(utts - set(wav), data_dir / "text", "with no entry in wav.scp")
        _skip(set(wav) - utts, data_dir / "wav.scp", "with no entry in text")
        utts &= set(wav)
    else:
        _skip(utts - set(segments), data_dir / "text", "with no entry in segments")
        _skip(set(segments) - utts, data_dir / "segments", "with no entry in text")
        utts &= set(segments)
        no_audio = {u for u in utts if segments[u][0] not in wav}
        _skip(no_audio, data_dir / "segments", "whose recording is not in wav.scp")
        utts -= no_audio
    if utt2spk is not None:
        _skip(utts - set(utt2spk), data_dir / "text", "with no entry in utt2spk")
        utts &= set(utt2spk)
    if targets is not None:
        _skip(utts - set(targets), data_dir / "text", f"with no entry in {target_file}")
        utts &= set(targets)

    records = []
    for utt in sorted(utts):
        extra = {}
        if segments is None:
            path, start, end = wav[utt][1], None, None
        else:
            recording, start, end = segments[utt]
            path = wav[recording][1]
            extra["recording"] = recording
        if utt2spk is not None:
            extra["speaker"] = utt2spk[utt][1]
        if targets is None:
            records.append(Record(utt, task, text[utt][1], path, None, start, end, extra))
        else:
            records.append(Record(utt, task, targets[utt][1], path, text[utt][1], start, end, extra))
    return records


def iter_text_records(data_dir: str | Path, task: str = "ASR",
                      target_file: str | None = None) -> Iterator[Record]:
    """Text-only records (no ``path``) of a data dir, streamed from ``text`` in its order.

    Only ``text`` is needed (and ``target_file`` when given, which is read into memory: labels and
    translations of a training set, not an LM corpus). A malformed line raises ``DataDirError``
    naming it; an utterance without a target is skipped and logged.
    """
    data_dir = Path(data_dir)
    _refuse_partial(data_dir)
    targets = None
    if target_file is not None:
        problems: list[DataError] = []
        targets = _read_table(data_dir / target_file, problems, "a target")
        if problems:
            raise DataDirError(problems)
    path = data_dir / "text"
    missing: set[str] = set()
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataDirError([DataError(str(path), None, None, f"cannot open: {e.strerror or e}")]) from None
    first_line: dict[str, int] = {}
    with f:
        for lineno, raw in enumerate(f, 1):
            problems = []
            parsed = _parse_line(path, lineno, raw, problems, "a transcript")
            if parsed is None and not problems:
                continue
            if parsed is not None:
                message = key_problem(parsed[0])
                if message:
                    problems.append(DataError(str(path), lineno, None, f"utterance id {message}"))
                elif parsed[0] in first_line:
                    problems.append(DataError(str(path), lineno, None, f"duplicate id {parsed[0]!r} "
                                              f"(first on line {first_line[parsed[0]]})"))
                first_line.setdefault(parsed[0], lineno)
            if problems:
                raise DataDirError(problems)
            utt, transcript = parsed
            if targets is None:
                yield Record(utt, task, transcript)
            elif utt in targets:
                yield Record(utt, task, targets[utt][1], None, transcript)
            else:
                missing.add(utt)
    _skip(missing, path, f"with no entry in {target_file}")


# Tables of the utterances, speakers or recordings a data dir held before: written over, it drops them
# (Kaldi tools would read them as the new ones', a speaker's cmvn or gender for another speaker).
STALE_TABLES = ("utt2dur", "feats.scp", "reco2dur", "utt2num_frames", "cmvn.scp", "spk2gender", "utt2lang",
                "utt2uniq", "utt2warp", "spk2warp", "vad.scp", "utt2category", "reco2file_and_channel",
                "reco2num_spk", "frame_shift")


def write_data_dir(records: Iterable[Record], data_dir: str | Path) -> int:
    """Write records as a Kaldi data dir (created if needed); returns the number of utterances.

    Raises ``DataDirError`` (and writes nothing) for records a data dir cannot hold: no ``path``,
    a target spanning lines, a repeated key, one recording id with two different paths.
    """
    data_dir = Path(data_dir)
    records = sorted(records, key=lambda r: r.key)
    problems: list[DataError] = []
    where = str(data_dir)
    has_segments = any(r.start is not None or r.end is not None for r in records)
    wav: dict[str, str] = {}
    dropped: set[str] = set()
    for i, r in enumerate(records):
        if i and records[i - 1].key == r.key:
            problems.append(DataError(where, None, "key", f"duplicate key {r.key!r}"))
        if r.path is None:
            problems.append(DataError(where, None, "path", f"{r.key}: missing (a data dir needs audio)"))
            continue
        if "\n" in r.target or "\r" in r.target:
            problems.append(DataError(where, None, "target", f"{r.key}: a line break cannot go into text"))
        recording = r.extra.get("recording", r.key) if has_segments else r.key
        for field, value in (("speaker", r.extra.get("speaker", r.key)), ("recording", recording)):
            why = _table_entry_problem(r.key, value, one_word=True)   # each is one word of a table line
            if why:
                problems.append(DataError(where, None, field, f"{r.key}: {why.replace('speaker id', field)}"))
        if "\n" in r.path or "\r" in r.path:
            problems.append(DataError(where, None, "path", f"{r.key}: a line break cannot go into wav.scp"))
        elif r.path != r.path.strip():   # wav.scp's reader strips it: another file
            problems.append(DataError(where, None, "path", f"{r.key}: {r.path!r} begins or ends in whitespace"))
        if has_segments and r.end is not None and round(r.end, 3) <= round(r.start or 0, 3):
            problems.append(DataError(where, None, "end", f"{r.key}: the segment {r.start or 0}-{r.end} s is "
                                      "empty at the millisecond segments are written in"))
        if wav.setdefault(recording, r.path) != r.path:
            problems.append(DataError(where, None, "path", f"{r.key}: recording {recording!r} is "
                                      f"{wav[recording]!r} in another record, {r.path!r} here"))
        if r.GT is not None:
            dropped.add("GT")
        dropped.update(name for name in r.extra if name not in ("recording", "speaker"))
    if problems:
        raise DataDirError(problems)
    if dropped:
        logger.warning("%s: fields a data dir cannot hold were dropped: %s", data_dir,
                       ", ".join(sorted(dropped)))
    tasks = sorted({r.task for r in records})
    if len(tasks) > 1:
        logger.warning("%s: records of %d tasks (%s) went into one text file", data_dir, len(tasks),
                       ", ".join(tasks))

    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / PARTIAL).write_text("a killed to-dir left this data dir half-written: make it again\n")
    speaker = {r.key: str(r.extra.get("speaker", r.key)) for r in records}
    _write_lines(data_dir / "wav.scp", (f"{rec} {path}" for rec, path in sorted(wav.items())))
    _write_lines(data_dir / "text", (f"{r.key} {r.target}" for r in records))
    _write_lines(data_dir / "utt2spk", (f"{utt} {speaker[utt]}" for utt in speaker))
    _write_spk2utt(data_dir, speaker)
    if has_segments:
        _write_lines(data_dir / "segments",
                     (f"{r.key} {r.extra.get('recording', r.key)} {r.start or 0:.3f} "
                      f"{-1 if r.end is None else format(r.end, '.3f')}" for r in records))
    elif (data_dir / "segments").exists():
        os.remove(data_dir / "segments")  # a stale one would re-cut the new recordings
    stale = [name for name in STALE_TABLES if (data_dir / name).exists()]
    for name in stale:   # of the utterances written before: Kaldi tools would read them as these ones'
        os.remove(data_dir / name)
    if stale:
        logger.warning("%s: removed %s, made for the data dir written there before", data_dir, ", ".join(stale))
    os.remove(data_dir / PARTIAL)
    return len(records)


def wav_scp_entry(audio: str | Path, reader: str = "soundfile") -> str:
    """The ``wav.scp`` entry of an audio file: its absolute path (``reader="soundfile"``), or, for a
    format this machine's libsndfile cannot read (MP3 before libsndfile 1.1), an ffmpeg pipe that
    decodes it to 16 kHz mono wav (``reader="ffmpeg"``).

    A corpus names its files, so a name is data: one that the entry's readers would take for
    something else is a ``DataError`` naming the file. A name ending in ``|`` would be run as a shell
    command (recipes read their own ``wav.scp`` with ``--allow-pipes``), one ending in ``:123`` read
    as an offset into a Kaldi archive, and a line break or whitespace at either end cannot survive a
    table line. The ffmpeg pipe quotes the name, so only the line break matters there."""
    from tasu.data.audio import path_kind   # audio libraries load only where audio is prepared

    path = str(Path(audio).resolve())
    why = None
    if "\n" in path or "\r" in path:
        why = "a line break in a file name cannot go into a wav.scp line"
    elif reader == "soundfile":
        if path != path.strip():
            why = "whitespace at the end of a file name is lost in a wav.scp line"
        elif path_kind(path) == "pipe":
            why = "a wav.scp entry ending in '|' is a shell command, which the readers of wav.scp would run"
        elif path_kind(path) == "ark":
            why = "a wav.scp entry ending in ':<digits>' is read as an offset into a Kaldi archive"
    elif reader != "ffmpeg":
        raise ValueError(f"reader must be soundfile or ffmpeg, not {reader!r}")
    if why is not None:
        raise DataError(path, None, None, f"{why}: rename the file")
    if reader == "ffmpeg":
        return f"ffmpeg -nostdin -loglevel error -i {shlex.quote(path)} -ac 1 -ar 16000 -f wav - |"
    return path


def write_tables(data_dir: str | Path, tables: dict[str, dict[str, str]]) -> int:
    """Write per-utterance tables (``wav.scp``, ``text``, ``utt2spk``, label files...) as a data dir.

    Every table is written sorted, holding the utterances of ``text`` that it has; ``spk2utt`` is
    derived from ``utt2spk`` (each utterance its own speaker when there is none). With ``segments``
    (utterance -> "recording start end"), ``wav.scp`` is keyed by recording and holds the recordings
    those utterances are cut from. This is the last step of every recipe's ``local/data.sh``.
    Returns the number of utterances.

    A table may hold more than the set (one label table for all sets) or less (what a stage skips
    and counts), but not other keys in place of the set's: a wav.scp keyed by recording without
    segments, or a label file keyed by the corpus's own ids, was written empty, and the dir marked
    done. A table that shares no key with the set is refused.

    The tables come from a corpus's own files, so they are checked before anything is written: an
    utterance id must be a record key, a value must be there and on one line, and a speaker id one
    word. Otherwise the dir would be made, marked done, and refused by the JSONL stage, naming a line
    of a file tasu wrote instead of the corpus's. Raises ``DataDirError``: one line per bad table, its
    first bad utterance and how many more.
    """
    data_dir = Path(data_dir)
    utts = sorted(tables["text"])
    speaker = tables.get("utt2spk") or {u: u for u in utts}
    segments = tables.get("segments")
    recordings = None if segments is None else \
        sorted({v.split()[0] for u in utts if isinstance(v := segments.get(u), str) and v.split()})
    problems = []
    for name, table in tables.items():
        bad = [(u, why) for u, value in table.items()
               if (why := _table_entry_problem(u, value, one_word=name == "utt2spk"))]
        if bad:
            more = f" ({len(bad) - 1} more utterances of this table have problems)" if len(bad) > 1 else ""
            problems.append(DataError(str(data_dir / name), None, None, f"utterance {bad[0][0]!r}: {bad[0][1]}{more}"))
            continue
        keys, of, remedy = (recordings, "a recording of segments", "key it by the recordings segments names") \
            if name == "wav.scp" and recordings is not None else (utts, "an utterance of text", "key it as text is")
        if table and keys and set(table).isdisjoint(keys):
            hint = "" if name != "wav.scp" or segments is not None else \
                " (a wav.scp of recordings needs a segments table: utterance -> recording start end)"
            problems.append(DataError(str(data_dir / name), None, None,
                                      f"none of its {len(table)} keys is {of} (e.g. {next(iter(table))!r} is not, "
                                      f"and {keys[0]!r} has no entry): {remedy}{hint}"))
    if problems:
        raise DataDirError(problems)
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, table in {**tables, "utt2spk": speaker}.items():
        keys = recordings if name == "wav.scp" and recordings is not None else utts
        _write_lines(data_dir / name, (f"{k} {table[k]}" for k in keys if k in table))
    _write_spk2utt(data_dir, {u: speaker[u] for u in utts})
    return len(utts)


def _table_entry_problem(utt: str, value: object, one_word: bool) -> str | None:
    """Why ``utt value`` cannot be a line of a Kaldi table, or None."""
    if not utt:
        return "an empty utterance id"
    why = key_problem(utt)
    if why:
        return why
    if not isinstance(value, str):
        return f"{value!r} is not text"
    if not value.strip():
        return "an empty value"
    if "\n" in value or "\r" in value:
        return f"{value!r} spans lines"
    if one_word and len(value.split()) != 1:
        return f"speaker id {value!r} is not one word"
    return None


def _read_table(path: Path, problems: list[DataError], what: str,
                one_word: bool = False) -> dict[str, tuple[int, str]]:
    """``id -> (line number, rest of the line)`` of a Kaldi table file; problems appended."""
    table: dict[str, tuple[int, str]] = {}
    try:
        f = open(path, "rb")
    except OSError as e:
        problems.append(DataError(str(path), None, None, f"cannot open: {e.strerror or e}"))
        return table
    with f:
        for lineno, raw in enumerate(f, 1):
            fields = _parse_line(path, lineno, raw, problems, what, one_word)
            if fields is None:
                continue
            if fields[0] in table:
                problems.append(DataError(str(path), lineno, None, f"duplicate id {fields[0]!r} "
                                          f"(first on line {table[fields[0]][0]})"))
                continue
            table[fields[0]] = (lineno, fields[1])
    return table


def _parse_line(path: Path, lineno: int, raw: bytes, problems: list[DataError], what: str,
                one_word: bool = False) -> tuple[str, str] | None:
    """``(id, rest)`` of one table line; None for a blank line or a problem (appended). A BOM opening
    the file (an editor on Windows) is dropped: it would join the first id."""
    try:
        line = (without_bom(raw) if lineno == 1 else raw).decode("utf-8").strip()
    except UnicodeDecodeError as e:
        problems.append(DataError(str(path), lineno, None, f"byte 0x{raw[e.start]:02x} at "
                                  f"column {e.start + 1} is not valid UTF-8"))
        return None
    if not line:
        return None
    if "\r" in line:   # CR-only line ends: the whole file was one line, its other utterances gone
        problems.append(DataError(str(path), lineno, None, "a carriage return inside the line (lines must end "
                                  "in '\\n' or '\\r\\n')"))
        return None
    fields = line.split(maxsplit=1)
    if len(fields) == 1 or (one_word and len(fields[1].split()) != 1):
        problems.append(DataError(str(path), lineno, None, f"{fields[0]!r} must be followed "
                                  f"by {what}"))
        return None
    return fields[0], fields[1]


def _parse_segment(path: Path, line: int, rest: str,
                   problems: list[DataError]) -> tuple[str, float, float | None] | None:
    """``(recording, start, end)`` of a segments line (end None for -1); None when malformed."""
    fields = rest.split()
    if len(fields) != 3:
        problems.append(DataError(str(path), line, None, "needs recording, start and end after the "
                                  f"utterance id, not {len(fields)} fields"))
        return None
    try:
        start, end = float(fields[1]), float(fields[2])
    except ValueError:
        problems.append(DataError(str(path), line, None, "start and end must be numbers of seconds, "
                                  f"not {fields[1]!r} and {fields[2]!r}"))
        return None
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or (end != -1 and end <= start):
        problems.append(DataError(str(path), line, None, f"start {fields[1]} and end {fields[2]} do "
                                  "not make a segment (0 <= start < end, or end -1)"))
        return None
    if max(start, end) > MAX_SECONDS:   # samples or milliseconds written as seconds
        problems.append(DataError(str(path), line, None, f"start {fields[1]} and end {fields[2]} are seconds past "
                                  f"a day ({MAX_SECONDS}): samples or milliseconds?"))
        return None
    return fields[0], start, None if end == -1 else end


def _skip(ids: set[str], path: Path, why: str) -> None:
    if ids:
        examples = ", ".join(sorted(ids)[:_EXAMPLES])
        logger.warning("%s: skipped %d utterance%s %s (e.g. %s)", path, len(ids),
                       "" if len(ids) == 1 else "s", why, examples)


def _refuse_partial(data_dir: Path) -> None:
    if (data_dir / PARTIAL).exists():
        raise DataDirError([DataError(str(data_dir), None, None, f"half-written ({PARTIAL}: a to-dir was killed "
                                                                  "while writing it): make it again")])


def _write_spk2utt(data_dir: Path, speaker: dict[str, str]) -> None:
    """``spk2utt``, the inverse of ``utt2spk`` (``speaker``, in utterance order): speakers sorted, each
    with its utterances in that order."""
    spk2utt: dict[str, list[str]] = {}
    for utt, spk in speaker.items():
        spk2utt.setdefault(spk, []).append(utt)
    _write_lines(data_dir / "spk2utt", (f"{spk} {' '.join(utts)}" for spk, utts in sorted(spk2utt.items())))


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    """One table, whole or not at all: a writer killed half-way leaves the table it was replacing."""
    with atomic_replace(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasu.data.kaldi_dir", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("to-jsonl", help="Kaldi data dir -> JSONL records")
    p.add_argument("data_dir")
    p.add_argument("output", nargs="?", default="-", help="JSONL file to write (default: stdout)")
    p.add_argument("--task", default="ASR", help="task of every record (default: ASR)")
    p.add_argument("--target-file", default=None,
                   help="file of the dir holding the targets (e.g. scenario, translation_de); the "
                        "transcripts in text then become GT (default: the targets are in text)")
    p.add_argument("--text-only", action="store_true",
                   help="records without path, streamed from text (no wav.scp needed)")
    p = sub.add_parser("to-dir", help="JSONL records -> Kaldi data dir")
    p.add_argument("input", help="JSONL file")
    p.add_argument("data_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the data dir that data_dir holds (refused without it: its text, or the "
                        "labels a task's records carry in their target, would be lost)")
    return parser


_TABLES = ("wav.scp", "text", "segments", "utt2spk")   # what to-jsonl reads (with --target-file's file)


def _check_paths(args: argparse.Namespace) -> None:
    """Refuse to write over the files being converted: a JSONL named after a table of its data dir, or
    a data dir that already holds one (``--overwrite`` to replace it; a half-written one is replaced)."""
    if args.command == "to-jsonl" and args.task.split() != [args.task]:
        raise DataDirError([DataError(args.data_dir, None, None, f"--task {args.task!r}: a task is one word "
                                                                  "(ASR, SLU_scenario, ...)")])
    if args.command == "to-jsonl" and args.output != "-":
        read = [*_TABLES, *([args.target_file] if args.target_file else [])]
        out = Path(args.output).resolve()
        if any(out == (Path(args.data_dir) / name).resolve() for name in read):
            raise DataDirError([DataError(args.output, None, None, f"is a table of {args.data_dir} that this "
                                                                     "conversion reads: write the records elsewhere")])
    if args.command == "to-dir" and not args.overwrite and not (Path(args.data_dir) / PARTIAL).exists():
        held = [name for name in _TABLES if (Path(args.data_dir) / name).exists()]
        if held:
            raise DataDirError([DataError(args.data_dir, None, None, f"holds a data dir already ({', '.join(held)}): "
                                                                      "write to a new directory, or --overwrite it")])


def _nothing(data_dir: str) -> DataDirError:
    return DataDirError([DataError(data_dir, None, None, "no utterance to convert (the messages above say why "
                                                          "each was skipped, if any)")])


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        _check_paths(args)
        if args.command == "to-jsonl":
            read = iter_text_records if args.text_only else read_data_dir
            records = read(args.data_dir, args.task, args.target_file)
            if args.output == "-":
                if not write_records(records, sys.stdout):
                    raise _nothing(args.data_dir)
            else:   # --text-only streams: a bad line late in text must not leave the lines before it behind
                with atomic_replace(args.output) as tmp, open(tmp, "w", encoding="utf-8") as f:
                    if not write_records(records, f):   # raised inside: the empty file is not put in place
                        raise _nothing(args.data_dir)
        else:
            problems: list[DataError] = []
            records = list(iter_records(args.input, on_error=problems.append))
            if problems:
                raise DataDirError(problems)
            if not records:
                raise DataDirError([DataError(args.input, None, None, "no records: a data dir of no utterance "
                                                                       "is not made")])
            write_data_dir(records, args.data_dir)
    except DataDirError as e:
        print(e, file=sys.stderr)
        return 1
    except OSError as e:   # an output directory that cannot be made or written: one line, no traceback
        print(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
