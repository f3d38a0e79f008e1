"""Writing a file so that no reader ever sees half of it: ``write_atomic`` and ``atomic_replace``.

Checkpoint pointers (``last``, ``best.json``), configs, decode settings, references and score
reports are read by other processes (a resumed run, ``tasu results``, a decode of the next stage)
that may start while the writer is killed. Writing to a temporary file in the same directory and
renaming it over the target leaves either the old file or the new one, never a mix: a rename within
a directory is atomic on POSIX file systems. ``atomic_replace`` is that for any writer (a library's
``save`` that takes a file name, a compiler's ``-o``); ``write_atomic`` is the common case of text.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

# Where Linux (4.7 and later) shows a process's umask without it having to be changed to be read.
_PROC_STATUS = "/proc/self/status"


def _umask() -> int:
    """The process's umask, read from /proc where the system has it: elsewhere the only way to read it
    is to set it and put it back, and a thread creating a file in between would get the wrong mode."""
    with contextlib.suppress(OSError, ValueError):
        with open(_PROC_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_replace(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new file at, renamed over ``path`` when the block ends.

    On a clean exit the file (which the block must have closed) is flushed to disk before the rename, so
    a crash cannot leave the new name pointing at an empty file, and it gets the mode an ordinary
    ``open`` would give it (0666 less the umask), not the private 0600 of the temporary file: outputs are
    meant to be read by others. On an exception the temporary file is removed and ``path`` is left as it
    was. The directory must exist.
    """
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:   # say which file could not be written, not which temporary name
        raise type(e)(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        fd = os.open(tmp, os.O_RDONLY)   # the writer may have replaced the file: flush what is there now
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through ``atomic_replace``; missing parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_replace(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
