"""JSONL data records: the one format every tasu stage reads and writes.

One JSON object per line::

    {"key": "utt1", "task": "ASR", "target": "hello world", "path": "wav/utt1.wav"}

``key``, ``task`` and ``target`` are required non-empty strings (decoding also reads records
without ``target``: unlabelled audio); ``path`` (audio), ``GT`` (the
transcript the text-only stage simulates posteriors from) and ``start``/``end`` (a segment of
``path``, in seconds, at most a day; ``end`` absent means "to the end of the audio") are optional.
Every other field is kept in ``Record.extra`` and passed through untouched (SLU labels,
``prevtext``, ``hotword``, ...).

The reader streams (a training set of millions of lines is never held in memory) and turns every
problem in the data into a ``FILE:LINE: FIELD: message`` line instead of a traceback. It has two
modes sharing one code path:

- strict (``on_error=None``): the first problem raises ``DataError``, for training code that must
  not start on bad data;
- collecting (``on_error=callback``): each problem is handed to the callback, the bad line is
  skipped and reading goes on, for ``tasu validate``, which reports every problem at once.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TextIO

if TYPE_CHECKING:
    from tasu.data.prompts import PromptSet

# Tasks whose target *is* the transcript of the audio, so a record needs no GT to be simulated:
# plain ASR and the two contextual ASR tasks (the context lives in the prompt, not the target).
ASR_LIKE_TASKS = frozenset({"ASR", "prevtext", "hotword"})

_FIELDS = ("key", "task", "target", "path", "GT", "start", "end")
_BOM = b"\xef\xbb\xbf"
_GZIP = b"\x1f\x8b"


class _NotJSON(ValueError):
    """NaN or Infinity: Python's JSON reader takes them, no other does, and writing them back would
    make a file that other tools refuse."""


def _refuse_constant(name: str):
    raise _NotJSON(f"{name}, which is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):   # 1e400 reads as inf, and is written back as Infinity
        raise _NotJSON(f"{text}, beyond the range of a double")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)   # json.loads' but these
# a NUL cannot be in a file name, nor any in a Kaldi table; the invisible format characters (a BOM, a
# zero-width space, direction marks) would make two keys that print alike differ
_BAD_KEY_CHAR = re.compile(r"[\s/\x00-\x1f\x7f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
# The latest a segment may start or end, in seconds: a day. Corpora segment recordings of minutes to
# hours; a time past a day is a unit mistake (milliseconds or samples written as seconds), and
# JSON's Infinity or 1e308 would overflow the sample offsets computed from it when the audio is read.
MAX_SECONDS = 24 * 3600


class DataError(ValueError):
    """A problem in a data file, located by file, line (1-based) and field.

    ``line`` is None for problems with the file as a whole (it cannot be opened); ``field`` names
    the JSON field at fault, or what was wrong with the line itself (``json``, ``encoding``).
    """

    def __init__(self, file: str, line: int | None, field: str | None, message: str):
        self.file, self.line, self.field, self.message = str(file), line, field, message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def located(self, file: str, line: int | None) -> "DataError":
        """The same problem, placed in ``file`` at ``line``."""
        return DataError(file, line, self.field, self.message)


@dataclass(slots=True)
class Record:
    """One line of a data file. Field names follow the JSON format (hence ``GT``)."""

    key: str
    task: str
    target: str
    path: str | None = None
    GT: str | None = None
    start: float | None = None
    end: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def transcript(self) -> str | None:
        """What was said in the audio: ``GT``, else ``target`` for ASR-like tasks, else None.

        None means the record cannot be used by the text-only stage (there is nothing to simulate
        posteriors from): e.g. an ``EN2DE`` record whose target is the German translation and
        which carries no English ``GT``.
        """
        if self.GT is not None:
            return self.GT
        return self.target if self.task in ASR_LIKE_TASKS and self.target else None

    def get(self, name: str, default: Any = None) -> Any:
        """The value of JSON field ``name`` (a fixed field or a pass-through one)."""
        if name in _FIELDS:
            value = getattr(self, name)
            return default if value is None else value
        return self.extra.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this record: fixed fields first (absent ones left out), then extra."""
        out: dict[str, Any] = {"key": self.key, "task": self.task, "target": self.target}
        for name in ("path", "GT", "start", "end"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update(self.extra)
        return out


def write_records(records: Iterable[Record], out: TextIO) -> int:
    """Write records as JSON Lines (UTF-8 text, not escaped to ASCII); returns how many."""
    n = 0
    for record in records:
        out.write(json.dumps(record.to_dict(), ensure_ascii=False))
        out.write("\n")
        n += 1
    return n


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid record key, or None when it is."""
    bad = _BAD_KEY_CHAR.search(key)
    if bad is None:
        return None
    c = bad.group()
    what = ("'/'" if c == "/" else f"whitespace ({c!r})" if c.isspace() else f"a control character ({c!r})"
            if c < "\x80" else f"an invisible format character (U+{ord(c):04X})")
    return f"{key!r} contains {what}; keys may not contain '/', whitespace, control or format characters"


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)  # bool is an int subclass but not a time


def iter_records(path: str, prompts: PromptSet | None = None,
                 on_error: Callable[[DataError], None] | None = None,
                 require_transcript: bool = False, require_target: bool = True) -> Iterator[Record]:
    """Records of the JSONL file ``path``, streamed; see ``iter_records_with_lines``."""
    for _, record in iter_records_with_lines(path, prompts, on_error, require_transcript, require_target):
        yield record


def iter_records_with_lines(path: str, prompts: PromptSet | None = None,
                            on_error: Callable[[DataError], None] | None = None,
                            require_transcript: bool = False,
                            require_target: bool = True) -> Iterator[tuple[int, Record]]:
    """``(line number, Record)`` for each good line of the JSONL file ``path``, streamed.

    Checks every line: UTF-8, a JSON object, the fixed fields' presence and types, the key
    (no '/' or whitespace, unique in the file), and, given ``prompts``, that the task has prompts
    and that the record carries every field its prompts are filled from (``{prevtext}``...).
    ``require_transcript`` also asks for a transcript (see ``Record.transcript``): the text-only
    stage sets it. ``require_target=False`` accepts records without a target (or with ``""``),
    read with ``target == ""``: unlabelled audio to decode. A UTF-8 BOM, CRLF line ends and blank
    lines are accepted.

    With ``on_error=None`` the first problem raises ``DataError``; otherwise every problem is
    passed to ``on_error`` and the line is skipped.
    """
    def report(line: int | None, field_name: str | None, message: str) -> None:
        error = DataError(path, line, field_name, message)
        if on_error is None:
            raise error
        on_error(error)

    try:
        f = open(path, "rb")
    except OSError as e:
        report(None, None, f"cannot open: {e.strerror or e}")
        return

    seen: dict[str, int] = {}
    with f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                raw = without_bom(raw)
            key, record, problems = _parse_line(raw, prompts, require_transcript, require_target)
            if key is not None:
                first = seen.setdefault(key, lineno)
                if first != lineno:
                    problems.insert(0, ("key", f"duplicate key {key!r} (first on line {first})"))
            for field_name, message in problems:
                report(lineno, field_name, message)
            if record is not None and not problems:
                yield lineno, record


def without_bom(first_line: bytes) -> bytes:
    """A file's first line without its UTF-8 byte order mark, if it has one (editors on Windows write
    it): for every reader of JSONL files, streaming or jumping to offsets."""
    return first_line[len(_BOM):] if first_line.startswith(_BOM) else first_line


def parse_record(raw: bytes, prompts: PromptSet | None = None,
                 require_transcript: bool = False) -> Record | None:
    """The record on one JSONL line (bytes, line end included), or None for a blank line.

    For readers that jump from line to line (an epoch's shuffled order) instead of streaming a
    file: it checks everything ``iter_records_with_lines`` checks but key uniqueness, which needs
    the whole file. A problem raises ``DataError`` with the file and line left empty: the caller
    knows them (``DataError.located``).
    """
    _, record, problems = _parse_line(raw, prompts, require_transcript, True)
    if problems:
        raise DataError("", None, *problems[0])
    return record


def _lone_surrogate(value) -> str | None:
    """The first lone surrogate (U+D800-U+DFFF) in a JSON value's strings, keys included, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return value[e.start]
        return None
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value if isinstance(value, list) else []
    return next(filter(None, map(_lone_surrogate, items)), None)


def _parse_line(raw: bytes, prompts: PromptSet | None,
                require_transcript: bool,
                require_target: bool) -> tuple[str | None, Record | None, list[tuple[str, str]]]:
    """``(key, record, problems)`` of one line.

    The key is there whenever the line has a usable one (even when other fields are bad: the
    duplicate check counts it); the record only when the line is good.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        hint = " (the file is gzip-compressed: gunzip it first)" if raw.startswith(_GZIP) else ""
        return None, None, [("encoding", f"byte 0x{raw[e.start]:02x} at column {e.start + 1} is not valid UTF-8"
                                         + hint)]
    if not text or text.isspace():
        return None, None, []
    try:
        obj = _DECODER.decode(text)
    except json.JSONDecodeError as e:
        return None, None, [("json", f"{e.msg} (column {e.pos + 1})")]
    except _NotJSON as e:
        return None, None, [(_constant_field(text), f"holds {e}: a number must be finite "
                                                    "(write null, or the value as a string)")]
    except ValueError:   # int() refuses to read a number of more than 4300 digits
        return None, None, [("json", "holds a number of more than 4300 digits, which cannot be read")]
    except RecursionError:
        return None, None, [("json", "nested too deeply to be read")]
    if type(obj) is not dict:
        return None, None, [("json", f"expected an object {{...}}, got {_json_type(obj)}")]
    if "\\u" in text:   # only an escape can write half of a UTF-16 pair, which no text can hold
        for name, value in obj.items():
            half = _lone_surrogate(name) or _lone_surrogate(value)
            if half:
                field = name.encode("utf-8", "backslashreplace").decode("utf-8")   # printable, whatever it holds
                return None, None, [(field, f"holds \\u{ord(half):04x}, half of a UTF-16 surrogate pair without "
                                            "its other half: not a character (was the text cut or converted badly?)")]
    repeated = _repeated_name(text, obj)
    if repeated is not None:
        return None, None, [(repeated, "named twice in the line's object: which value is meant? "
                                       "(JSON readers keep the last one silently)")]
    key = obj.get("key")
    key = key if type(key) is str and key else None
    if not require_target and obj.get("target", "") == "":
        obj["target"] = ""     # unlabelled audio: decoded, not scored
        problems = _check(obj, prompts, ("key", "task"))
    else:
        problems = _check(obj, prompts)
    if problems:
        return key, None, problems
    record = Record(obj.pop("key"), obj.pop("task"), obj.pop("target"), obj.pop("path", None),
                    obj.pop("GT", None), obj.pop("start", None), obj.pop("end", None), obj)
    if require_transcript and record.transcript is None:
        return key, None, [("GT", f"missing: this {record.task} record needs a GT transcript "
                                  "for the text-only stage")]
    return key, record, []


def _constant_field(text: str) -> str:
    """The name of the first field of the line's object that holds a NaN, an Infinity or a number
    beyond a double ("json" when it is not an object's)."""
    marker = object()
    obj = json.loads(text, parse_constant=lambda _: marker,
                     parse_float=lambda t: float(t) if math.isfinite(float(t)) else marker)

    def holds(value) -> bool:
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        return value is marker or (isinstance(value, (dict, list)) and any(map(holds, items)))

    if isinstance(obj, dict):
        name = next((name for name, value in obj.items() if holds(value)), None)
        if name is not None:
            return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return "json"


_SPACED_COLON = re.compile(r'"[ \t\r\n]+:')   # a name written '"name" :' (or a quote and colon in a value)


def _repeated_name(text: str, obj: dict[str, Any]) -> str | None:
    """A name the object ``text`` holds twice (``json.loads`` keeps its last value), or None.

    Cheap for the usual line: every name is followed by a colon, so a line with no more colons than
    the object has names holds no name twice; nor does one (a value with a colon: an ark offset, a
    time) where ``":`` occurs exactly as often as the object has names and no name is written with
    space before its colon. Only other lines (nested objects, an escaped quote before a colon in a
    value, a space before a colon) are parsed again, pair by pair.
    """
    if text.count(":") == len(obj):
        return None
    if text.count('":') == len(obj) and _SPACED_COLON.search(text) is None:
        return None
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [name for name, _ in items]
        repeated.extend(name for i, name in enumerate(names) if name in names[:i])
        return dict(items)

    json.loads(text, object_pairs_hook=pairs)
    return repeated[0] if repeated else None


def _check(obj: dict[str, Any], prompts: PromptSet | None,
           required: tuple[str, ...] = ("key", "task", "target")) -> list[tuple[str, str]]:
    """Problems of one JSON object as ``(field, message)`` pairs; empty when it is a good record."""
    problems = []
    for name in required:
        value = obj.get(name)
        if type(value) is not str or not value.strip():
            problems.append((name, _bad_string(obj, name)))
        elif name == "key":
            message = key_problem(value)
            if message:
                problems.append(("key", message))
    for name in ("path", "GT"):
        if name in obj and (type(obj[name]) is not str or not obj[name].strip()):
            problems.append((name, _bad_string(obj, name)))
    if "start" in obj or "end" in obj:
        problems.extend(_check_segment(obj))

    task = obj.get("task")
    if prompts is not None and type(task) is str and task:
        if task not in prompts.tasks:
            problems.append(("task", f"unknown task {task!r}: the prompt set has "
                                     f"{', '.join(sorted(prompts.tasks))} (another task needs its prompts "
                                     "in a prompts file: --prompts, data.prompts)"))
        else:
            from tasu.data.prompts import SPEECH_TOKEN   # (prompts.py imports this module)

            for name in prompts.fields(task):
                value = obj.get(name)
                if type(value) is not str or not value:
                    problems.append((name, _bad_string(obj, name)
                                     + f" (the {task} prompts are filled from it)"))
                elif SPEECH_TOKEN in value:   # the prompt would hold two places for the speech
                    problems.append((name, f"holds {SPEECH_TOKEN}, which marks where the speech goes (the {task} "
                                           "prompts are filled from it): write it otherwise"))
    return problems


def _check_segment(obj: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    start, end = obj.get("start"), obj.get("end")
    if "path" not in obj:
        problems.append(("path", "missing: start/end select a segment of path"))
    if start is not None and not (_is_number(start) and start >= 0):   # NaN fails every comparison
        problems.append(("start", f"must be a number of seconds >= 0, not {json.dumps(start)}"))
    elif end is not None and not (_is_number(end) and end > (start or 0)):
        problems.append(("end", f"must be a number of seconds > start ({start or 0}), "
                                f"not {json.dumps(end)}"))
    else:
        for name, value in (("start", start), ("end", end)):
            if value is not None and not value <= MAX_SECONDS:
                problems.append((name, f"must be at most {MAX_SECONDS} seconds (a day), not {json.dumps(value)}"))
                break
    return problems


def _bad_string(obj: dict[str, Any], name: str) -> str:
    """Why ``obj[name]`` is not the non-empty string it must be."""
    if name not in obj:
        return "missing"
    if obj[name] == "":
        return "empty"
    if type(obj[name]) is str:  # a target of spaces would train the model to say nothing
        return "blank (whitespace only)"
    return f"must be a non-empty string, not {_json_type(obj[name])}"


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
