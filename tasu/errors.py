"""Every failure as one line: what ``tasu COMMAND`` and ``python -m tasu.recipe COMMAND`` print.

A user reading a failed recipe's log needs the bad file and line, not a traceback through DeepSpeed:
whatever goes wrong ends as ``PROG: error: ...`` on stderr and exit status 1 (130 on Ctrl-C).
``TASU_DEBUG=1`` in the environment (it reaches every process of a DeepSpeed launch and every helper
of the stage script), or the ``tasu`` command's ``--debug``, lets the traceback through instead.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

DEBUG_ENV = "TASU_DEBUG"
# How to see the traceback, for commands with a --debug flag and for those without one.
_TRACEBACK_HINTS = {True: f"--debug or {DEBUG_ENV}=1", False: f"{DEBUG_ENV}=1"}
# The text a DataLoader worker's exception carries to the main process, before the worker's traceback.
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"
# Errors whose message is written for the user (file, line, field, what to do).
_OWN_ERRORS = frozenset({"ConfigError", "DataError", "AudioError", "PromptError", "DeviceError", "TrainingError",
                         "DecodeError", "ScoreError", "LockError", "ModelFilesError",
                         "CheckpointError", "DumpError", "SimulatorError", "MetadataError", "ResumeError"})


def run_reporting(prog: str, call: Callable[[], int], debug: bool | None = False) -> int:
    """``call()``'s exit status; a failure printed as ``PROG: error: <one line>`` (status 1).

    ``debug``: the command's ``--debug`` flag, or None where the command has none (the hint then
    names the environment variable alone)."""
    if debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return call()
    try:
        return call()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error becomes one line, see the module doc
        print(f"{prog}: error: {describe_error(err, _TRACEBACK_HINTS[debug is not None])}", file=sys.stderr)
        return 1


def describe_error(err: BaseException, hint: str = _TRACEBACK_HINTS[True]) -> str:
    """One line saying what went wrong.

    tasu's own errors (and OSError) carry a message written for the user: it is the line. Anything
    else is named by its type, with ``hint``: how to see the traceback. An exception raised in a
    DataLoader worker reaches the main process with the worker's traceback as its message: its last
    line is the original error.
    """
    message = str(err)
    if _WORKER_TRACEBACK in message:
        last = [ln for ln in message.splitlines() if ln.strip()][-1]
        name, _, rest = last.partition(": ")
        return rest.strip() if name.rsplit(".", 1)[-1] in _OWN_ERRORS else last.strip()
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror}"
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    message = "; ".join(lines) if lines else "(no message)"
    if type(err).__name__ in _OWN_ERRORS or isinstance(err, OSError):
        return message
    return f"{type(err).__name__}: {message} ({hint} shows the traceback)"
