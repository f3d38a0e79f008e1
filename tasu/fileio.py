"""Writing a file so that no reader ever sees half of it: ``write_atomic`` and ``atomic_replace``.

Checkpoint pointers (``last``, ``best.json``), configs, decode settings, references and score
reports are read by other processes (a resumed run, ``tasu results``, a decode of the next stage)
that may start while the writer is killed. Writing to a temporary file in the same directory and
renaming it over the target leaves either the old file or the new one, never a mix: a rename within
a directory is atomic on POSIX file systems. ``atomic_replace`` is that for any writer (a library's
``save`` that takes a file name, a compiler's ``-o``); ``write_atomic`` is the common case of text;
``atomic_files`` is it for a writer that fills a directory (``save_pretrained``, a model's ``save``).
``read_json`` reads such a small file back, a damaged one (edited by hand, cut short by an older
writer, another program's) one ``MetadataError`` naming it rather than a bare ``JSONDecodeError``.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

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


def _flush(path: Path) -> None:
    """Put the file at ``path`` on disk, so that a crash after its rename cannot leave it empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS)   # a write's errors, no file named


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
        readable_by_others(tmp)
        _flush(tmp)   # by name: the writer may have replaced the file
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        # the temporary file's own failure (its name: ".x.a8f2k1"), or a full disk (no name): name the file meant
        if e.strerror and (e.filename == name or (e.filename is None and e.errno in _DISK_FULL)):
            raise type(e)(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def readable_by_others(path: str | Path) -> None:
    """Give ``path`` the mode an ordinary ``open`` would (0666 less the umask). Temporary files and the
    files safetensors writes (weights: ``save_file``, ``save_pretrained``) are private (0600), but
    outputs are meant to be read by others: a colleague decoding with a model, a web server."""
    os.chmod(path, 0o666 & ~_umask())


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through ``atomic_replace``; missing parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_replace(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_files(directory: str | Path) -> Iterator[Path]:
    """A fresh directory to write files in, each then moved into ``directory`` whole when the block ends.

    A model saved in place (``save_pretrained(exp/llm)``) and killed half-way leaves a truncated
    weights file beside the config that names it. Written here instead, every file lands by a rename
    (flushed first and readable by others, as ``atomic_replace`` does), replacing its namesake; files
    of ``directory`` the writer does not write (a training log still open) stay. On an exception
    nothing is moved. The scratch directory sits inside ``directory``, so the renames never cross a
    file system.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=directory, prefix=".partial."))
    try:
        yield scratch
        files = sorted(p for p in scratch.rglob("*") if p.is_file())
        for file in files:
            readable_by_others(file)
            _flush(file)
        for file in files:
            target = directory / file.relative_to(scratch)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class MetadataError(ValueError):
    """A small JSON file tasu writes beside its outputs that does not read as one."""


_WRITTEN_BY_TASU = ("tasu writes this file; was it edited, or cut short? Remove it (with what it describes) to make "
                    "it again")


def read_json(path: str | Path, check: Callable[[Any], bool] = lambda value: isinstance(value, dict),
              expected: str = "a JSON object", remedy: str = _WRITTEN_BY_TASU) -> Any:
    """The JSON document in ``path`` (``best.json``, ``decode.json``, ``dump.json``, a model's
    ``config.json``), which ``check`` accepts; else a ``MetadataError`` naming the file and what is
    wrong, with ``expected`` (what ``check`` looks for) and ``remedy`` (what to do) in the message. A
    missing file is the caller's case (``FileNotFoundError``)."""
    path = Path(path)
    problem = None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except json.JSONDecodeError as e:
        problem = f"not JSON ({e.msg}, line {e.lineno} column {e.colno})"
    except (ValueError, RecursionError):   # a number of over 4300 digits; nesting deeper than the stack
        problem = "not JSON that can be read (a number of more than 4300 digits, or nested too deeply)"
    else:
        try:
            accepted = check(value)
        except (KeyError, TypeError, AttributeError):
            accepted = False
        if not accepted:
            problem = f"not {expected}"
    if problem:
        raise MetadataError(f"{path}: {problem}: {remedy}")
    return value


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex: how dumps, decodes and resumed runs tell a file changed."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def files_digest(files: Iterable[Path]) -> str:
    """One SHA-256 over ``files``' names, sizes and contents, in the order given: what a model made of
    several files (an encoder's, an LLM's) is known by."""
    return combined_digest(file_entry(file) for file in files)


def file_entry(file: Path) -> bytes:
    """What ``files_digest`` takes of one file (its name, size and contents' SHA-256)."""
    with open(file, "rb") as f:
        return f"{file.name}\0{os.fstat(f.fileno()).st_size}\0".encode() + hashlib.file_digest(f, "sha256").digest()


def combined_digest(entries: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(entry)
    return digest.hexdigest()
