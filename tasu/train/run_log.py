"""Where a training's loggers write while it runs (its train.log and the terminal), undone when it ends.

A training started from Python (the API, a notebook, a test's kept process) is followed by other
commands in the same process. Left attached, its handlers held train.log open (a disk that held it
could not be unmounted) and wrote the next command's messages into that run's train.log.

Two runs may be alive in one process (a training beside a simulator's, in two threads; a second
training is refused, ``tasu.train.trainer``): a logger writes to the latest one started of those still
running, and goes back to what it had before the first once none is.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

_running: dict[str, list[RunLog]] = {}   # logger name -> the runs writing through it, oldest first
_before: dict[str, tuple[int, list[logging.Handler], bool]] = {}   # its level, handlers, propagate before them


class RunLog:
    """Points ``loggers`` at ``path`` and stderr (nowhere when ``path`` is None: a rank other than 0)
    until ``close()`` (or the end of a ``with`` block). What else is set on them meanwhile (a handler, a
    level) goes with the run."""

    def __init__(self, path: Path | None, loggers: Sequence[logging.Logger], fmt: str):
        self.loggers, self.closed = list(loggers), False
        self.handlers: list[logging.Handler] = [] if path is None else \
            [logging.FileHandler(path, encoding="utf-8"), logging.StreamHandler()]
        for handler in self.handlers:
            handler.setFormatter(logging.Formatter(fmt))
        for logger in self.loggers:
            runs = _running.setdefault(logger.name, [])
            if not runs:
                _before[logger.name] = (logger.level, logger.handlers[:], logger.propagate)
            runs.append(self)
            self._point(logger)

    def _point(self, logger: logging.Logger) -> None:
        logger.setLevel(logging.INFO)
        logger.handlers[:] = self.handlers
        logger.propagate = False

    def to_file(self, level: int, message: str) -> None:
        """``message`` into the file alone (what stderr shows in its own words)."""
        record = self.loggers[0].makeRecord(self.loggers[0].name, level, __file__, 0, message, (), None)
        for handler in self.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Once: the loggers go back to the latest run still running, or to what they had before."""
        if self.closed:
            return
        self.closed = True
        for logger in self.loggers:
            runs = _running[logger.name]
            runs.remove(self)
            if runs:
                runs[-1]._point(logger)
            else:
                level, handlers, propagate = _before.pop(logger.name)
                logger.setLevel(level)
                logger.handlers[:] = handlers
                logger.propagate = propagate
        for handler in self.handlers:
            handler.close()
        self.handlers = []   # a closed FileHandler would open its file again for a later to_file
