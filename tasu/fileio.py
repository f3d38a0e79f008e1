"""Writing a text file so that no reader ever sees half of it: ``write_atomic``.

Checkpoint pointers (``last``, ``best.json``), configs, decode settings, references and score
reports are read by other processes (a resumed run, ``tasu results``, a decode of the next stage)
that may start while the writer is killed. Writing to a temporary file in the same directory and
renaming it over the target leaves either the old file or the new one, never a mix: a rename within
a directory is atomic on POSIX file systems.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)   # the only way to read it is to set it: put it back at once
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same directory and a rename.

    The data is flushed to disk before the rename, so a crash cannot leave the new name pointing at
    an empty file. The file gets the mode an ordinary ``open`` would give it (0666 less the umask),
    not the private 0600 of the temporary file: results are meant to be read by others. Missing
    parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
