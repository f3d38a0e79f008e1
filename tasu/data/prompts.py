"""Prompt sets: the instruction text the LLM sees before the speech, several per task.

A prompt set is a JSONL file of ``{"task": ..., "prompt": ...}`` lines. Each task has several
prompts and training draws one per utterance (from a ``random.Random`` the caller seeds, so a run
is reproducible), which keeps the projector from overfitting one phrasing. Adding a task is adding
lines to a prompts file.

A prompt may be a template filled from the record: ``{prevtext}`` is replaced by the record's
``prevtext`` field, ``{hotword}`` by its ``hotword`` field (any field name works; write literal
braces as ``{{`` and ``}}``). Every field a task's prompts use must be a non-empty string in each
record of that task; ``tasu validate`` checks it.

Two sets ship with the package (``tasu/data/prompt_sets/``):

- ``en.jsonl`` (the default): English prompts for ASR, EN2ZH, EN2DE, ZH2EN, QA, SLU_scenario
  (listing SLURP's 18 scenarios), SLU_action (SLURP has 46 action labels, too many for a prompt,
  so it asks for the label and gives a few examples), sentiment (positive / neutral / negative),
  prevtext and hotword;
- ``zh.jsonl``: the same tasks in Chinese, as the original TASU recipes prompted.
"""
from __future__ import annotations

import json
import logging
import random
import string
import unicodedata
from pathlib import Path
from typing import Any, Protocol

from tasu.data.records import DataError

log = logging.getLogger(__name__)

SPEECH_TOKEN = "<speech>"   # where the speech goes in the LLM's input, after the prompt (tasu.llm)
PROMPTS_DIR = Path(__file__).resolve().parent / "prompt_sets"
DEFAULT_PROMPTS = PROMPTS_DIR / "en.jsonl"


class PromptError(ValueError):
    """A prompt that cannot be built for a record (unknown task, missing template field)."""


class _HasFields(Protocol):
    key: str
    task: str

    def get(self, name: str, default: Any = None) -> Any: ...


class PromptSet:
    """Prompts by task, with the record fields each task's templates are filled from."""

    def __init__(self, prompts: dict[str, list[str]], source: str = "<memory>"):
        self.source = source
        self._prompts = {task: tuple(texts) for task, texts in prompts.items()}
        self._names = {text: _template_fields(text) for texts in self._prompts.values() for text in texts}
        self._fields = {task: frozenset(name for text in texts for name in self._names[text])
                        for task, texts in self._prompts.items()}
        self.tasks = frozenset(self._prompts)

    def prompts(self, task: str) -> tuple[str, ...]:
        """Every prompt (template) of ``task``."""
        self._check_task(task)
        return self._prompts[task]

    def fields(self, task: str) -> frozenset[str]:
        """Names of the record fields the prompts of ``task`` are filled from (often none)."""
        self._check_task(task)
        return self._fields[task]

    def render(self, record: _HasFields, rng: random.Random) -> str:
        """A prompt for ``record``: one of its task's prompts drawn with ``rng``, filled in."""
        return self.fill(rng.choice(self.prompts(record.task)), record)

    def fill(self, template: str, record: _HasFields) -> str:
        """``template`` (one of the prompts of ``record``'s task) filled from ``record``'s fields."""
        values = {}
        for name in self._names[template]:
            value = record.get(name)
            if type(value) is not str or not value:
                raise PromptError(f"{record.key}: the {record.task} prompt needs field {name!r}, "
                                  "which this record does not have as a non-empty string")
            values[name] = value
        return template.format_map(values)

    def _check_task(self, task: str) -> None:
        if task not in self._prompts:
            raise PromptError(f"no prompt for task {task!r} in {self.source} "
                              f"(it has {', '.join(sorted(self.tasks))})")


def load_prompts(path: str | Path | None = None) -> PromptSet:
    """Read a prompts JSONL file (default: the English set shipped with tasu).

    Raises ``DataError`` (``FILE:LINE: FIELD: message``) for a malformed line, a template that is
    not a plain ``{field}`` substitution, or a file with no prompts.
    """
    path = DEFAULT_PROMPTS if path is None else Path(path)
    by_task: dict[str, list[str]] = {}
    ignored: set[str] = set()
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(str(path), None, None, f"cannot open prompts: {e.strerror or e}") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(str(path), lineno, "encoding",
                                f"byte 0x{raw[e.start]:02x} at column {e.start + 1} is not valid UTF-8"
                                ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(str(path), lineno, "json", f"{e.msg} (column {e.pos + 1})") from None
            if type(obj) is not dict:
                raise DataError(str(path), lineno, "json", "expected an object {...}")
            names = [name for name, _ in json.loads(line, object_pairs_hook=list)]
            for name in names:
                if names.count(name) > 1:
                    raise DataError(str(path), lineno, name, "named twice")
                if name not in ("task", "prompt") and name not in ignored:   # said, not refused: a checkpoint
                    ignored.add(name)   # keeps its run's prompt file, which must stay loadable
                    log.warning("%s:%d: %s: not a field of a prompt line (task, prompt), ignored: prompts are "
                                "chosen by task alone, whatever the record's language", path, lineno, name)
            for name in ("task", "prompt"):
                if type(obj.get(name)) is not str or not obj[name].strip():
                    raise DataError(str(path), lineno, name, "must be a non-empty string")
                try:
                    obj[name].encode("utf-8")
                except UnicodeEncodeError:
                    raise DataError(str(path), lineno, name, "holds half of a UTF-16 surrogate pair (\\ud800-"
                                                             "\\udfff), not a character") from None
            if obj["task"] != obj["task"].strip():   # "ASR " is another task than ASR, which records never name
                raise DataError(str(path), lineno, "task", f"{obj['task']!r} begins or ends in whitespace")
            if any(unicodedata.category(c) == "Cc" for c in obj["task"]):   # (a NUL went into every message)
                raise DataError(str(path), lineno, "task", f"{obj['task']!r} holds a control character")
            if SPEECH_TOKEN in obj["prompt"]:   # the LLM's input would hold two places for the speech
                raise DataError(str(path), lineno, "prompt", f"holds {SPEECH_TOKEN}, which marks where the speech "
                                                             "goes (after the prompt): write it otherwise")
            try:
                _template_fields(obj["prompt"])
            except ValueError as e:
                raise DataError(str(path), lineno, "prompt", str(e)) from None
            by_task.setdefault(obj["task"], []).append(obj["prompt"])
    if not by_task:
        raise DataError(str(path), None, None, "no prompts in this file")
    return PromptSet(by_task, source=str(path))


def _template_fields(template: str) -> list[str]:
    """Field names of a ``{name}`` template; ValueError for anything but plain substitutions."""
    names = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"placeholder {{{name}{'!' + conversion if conversion else ''}"
                             f"{':' + spec if spec else ''}}} must be a plain {{field_name}} "
                             "(write literal braces as {{ and }})")
        names.append(name)
    return names
