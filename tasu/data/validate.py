"""``tasu validate``: check data files before a training run finds their problems hours in.

    tasu validate data/train/asr.jsonl data/train/slu.jsonl --check-audio

Every record of every file is checked (streaming, so the size of a file does not matter): the
record rules of ``tasu.data.records``, the task against the prompt set, and, with
``--check-audio``, that its audio exists, is whole and contains its segment, which costs one
header read per record (an ark entry: the header at its offset; a ``|`` command must be run, which
is refused unless ``allow_pipes``: see ``tasu.data.audio``). ``--read-audio`` reads every sample
as well (``load_audio``: what a training step reads), which finds what a header cannot show: a
compressed file damaged inside, NaN or infinite samples, int16 values stored as floats.

Each problem is one line on stdout, ``FILE:LINE: FIELD: message``, and the exit status is 1 if
there was any; a file without a single record (empty, or blank lines only) is one too, ``FILE: no
records``, since training on it would stop on it. A problem that recurs word for word (a task
missing from the prompt set: every record of a corpus) is printed at its first line and then
counted, ``FILE: N more lines with the problem of line L``, and a file prints at most
``SHOWN_PER_FILE`` different problems (audio missing names each file) and counts the rest: a
million-line file never floods the terminal. A clean run prints one summary line: records per
task and, with audio checked, hours of audio. Records that the text-only stage cannot use (no
transcript: a non-ASR task without ``GT``) are not an error, but the summary counts them.
``--unlabelled`` accepts records without a target, audio to transcribe as ``tasu decode`` reads it.
"""
from __future__ import annotations

from collections import Counter

from tasu.data.audio import SAMPLE_RATE, AudioError, audio_info, command_refused, is_command, load_audio
from tasu.data.prompts import load_prompts
from tasu.data.records import DataError, iter_records_with_lines


SHOWN_PER_FILE = 20


def run_validate(paths: list[str], prompts: str | None = None, check_audio: bool = False,
                 allow_pipes: bool = False, read_audio: bool = False, unlabelled: bool = False) -> int:
    """Check the JSONL files ``paths``; print problems and a summary; return the exit status.

    ``read_audio`` (with ``check_audio``) reads every sample, not the headers alone. ``unlabelled``
    accepts records without a target, as ``tasu decode`` reads them (audio to transcribe)."""
    try:
        prompt_set = load_prompts(prompts)
    except DataError as e:
        print(e)
        return 1

    problems = 0
    first: dict[tuple, int | None] = {}   # a problem of the file being read (field, message) -> its first line
    again: Counter[tuple] = Counter()    # ... -> how many more lines have it
    unshown = 0                          # problems of kinds past the file's SHOWN_PER_FILE

    def report(error: DataError) -> None:
        nonlocal problems, unshown
        problems += 1
        kind = (error.field, error.message)
        if kind in first:
            again[kind] += 1
        elif len(first) < SHOWN_PER_FILE:
            first[kind] = error.line
            print(error)
        else:
            unshown += 1

    def summarise(path: str) -> None:   # the problems of ``path`` that were counted, not printed
        nonlocal unshown
        for kind, n in again.items():
            print(f"{path}: {_count(n, 'more line')} with the problem of line {first[kind]}")
        if unshown:
            print(f"{path}: {_count(unshown, 'more problem')} not shown "
                  f"(the first {SHOWN_PER_FILE} different ones are)")
        first.clear()
        again.clear()
        unshown = 0

    tasks: Counter[str] = Counter()
    no_transcript = no_target = 0
    seconds = 0.0
    for path in paths:
        before = (problems, sum(tasks.values()))
        for line, record in iter_records_with_lines(path, prompt_set, on_error=report,
                                                    require_target=not unlabelled):
            if check_audio and record.path is not None:
                if is_command(record.path) and not allow_pipes:
                    report(DataError(path, line, "path", command_refused(record.path)))
                    continue
                try:
                    if read_audio:   # (a command runs once)
                        seconds += len(load_audio(record.path, record.key, record.start, record.end)) / SAMPLE_RATE
                    else:
                        seconds += audio_info(record.path, record.key, record.start, record.end).duration
                except AudioError as e:
                    report(e.located(path, line))
                    continue
            tasks[record.task] += 1
            if not record.target:
                no_target += 1
            elif record.transcript is None:
                no_transcript += 1
        if (problems, sum(tasks.values())) == before:   # not one line, good or bad: training would find nothing
            report(DataError(path, None, None, "no records (the file is empty or holds blank lines only)"))
        summarise(path)

    records = sum(tasks.values())
    summary = f"{_count(len(paths), 'file')}, {_count(records, 'good record')}"
    if records:
        summary += " (" + ", ".join(f"{task} {n}" for task, n in sorted(tasks.items())) + ")"
    if check_audio:
        summary += f", {seconds / 3600:.2f} h of audio" if seconds >= 36 else f", {seconds:.1f} s of audio"
    if no_target:
        summary += f"; {_count(no_target, 'record')} without a target (decoded, not scored)"
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
