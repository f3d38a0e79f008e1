"""``tasu validate``: check data files before a training run finds their problems hours in.

    tasu validate data/train/asr.jsonl data/train/slu.jsonl --check-audio

Every record of every file is checked (streaming, so the size of a file does not matter): the
record rules of ``tasu.data.records``, the task against the prompt set, and, with
``--check-audio``, that its audio exists, is whole and contains its segment, which costs one
header read per record (an ark entry: the header at its offset; a ``|`` command must be run, which
is refused unless ``allow_pipes``: see ``tasu.data.audio``).

Each problem is one line on stdout, ``FILE:LINE: FIELD: message``, and the exit status is 1 if
there was any; a file without a single record (empty, or blank lines only) is one too, ``FILE: no
records``, since training on it would stop on it. A clean run prints one summary line: records per
task and, with audio checked, hours of audio. Records that the text-only stage cannot use (no
transcript: a non-ASR task without ``GT``) are not an error, but the summary counts them.
"""
from __future__ import annotations

from collections import Counter

from tasu.data.audio import AudioError, audio_info, command_refused, is_command
from tasu.data.prompts import load_prompts
from tasu.data.records import DataError, iter_records_with_lines


def run_validate(paths: list[str], prompts: str | None = None, check_audio: bool = False,
                 allow_pipes: bool = False) -> int:
    """Check the JSONL files ``paths``; print problems and a summary; return the exit status."""
    try:
        prompt_set = load_prompts(prompts)
    except DataError as e:
        print(e)
        return 1

    problems = 0

    def report(error: DataError) -> None:
        nonlocal problems
        problems += 1
        print(error)

    tasks: Counter[str] = Counter()
    no_transcript = 0
    seconds = 0.0
    for path in paths:
        before = (problems, sum(tasks.values()))
        for line, record in iter_records_with_lines(path, prompt_set, on_error=report):
            if check_audio and record.path is not None:
                if is_command(record.path) and not allow_pipes:
                    report(DataError(path, line, "path", command_refused(record.path)))
                    continue
                try:
                    seconds += audio_info(record.path, record.key, record.start, record.end).duration
                except AudioError as e:
                    report(e.located(path, line))
                    continue
            tasks[record.task] += 1
            if record.transcript is None:
                no_transcript += 1
        if (problems, sum(tasks.values())) == before:   # not one line, good or bad: training would find nothing
            report(DataError(path, None, None, "no records (the file is empty or holds blank lines only)"))

    records = sum(tasks.values())
    summary = f"{_count(len(paths), 'file')}, {_count(records, 'good record')}"
    if records:
        summary += " (" + ", ".join(f"{task} {n}" for task, n in sorted(tasks.items())) + ")"
    if check_audio:
        summary += f", {seconds / 3600:.2f} h of audio" if seconds >= 36 else f", {seconds:.1f} s of audio"
    if no_transcript:
        summary += (f"; {_count(no_transcript, 'record')} without a transcript (no GT), "
                    "which the text-only stage cannot use")
    if problems:
        print(f"validate: {_count(problems, 'problem')}; {summary}")
        return 1
    print(f"validate: ok: {summary}")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
