"""Where a training's loggers write while it runs (its train.log and the terminal), undone when it ends.

A training started from Python (the API, a notebook, a test's kept process) is followed by other
commands in the same process. Left attached, its handlers held train.log open (a disk that held it
could not be unmounted) and wrote the next command's messages into that run's train.log.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence


class RunLog:
    """Points ``loggers`` at ``path`` and stderr (nowhere when ``path`` is None: a rank other than 0)
    until ``close()`` (or the end of a ``with`` block), which puts back what they had."""

    def __init__(self, path: Path | None, loggers: Sequence[logging.Logger], fmt: str):
        self.loggers = list(loggers)
        self._before = [(logger.level, logger.handlers[:], logger.propagate) for logger in self.loggers]
        self.handlers: list[logging.Handler] = [] if path is None else \
            [logging.FileHandler(path, encoding="utf-8"), logging.StreamHandler()]
        for handler in self.handlers:
            handler.setFormatter(logging.Formatter(fmt))
        for logger in self.loggers:
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
        for logger, (level, handlers, propagate) in zip(self.loggers, self._before):
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate = propagate
        for handler in self.handlers:
            handler.close()
        self.handlers = []
