"""Where each line of a JSONL file starts: 8 bytes a record, built once, cached beside the file.

    offsets = line_offsets("dump/train/ASR.jsonl")      # numpy uint64, one per non-empty line
    with open("dump/train/ASR.jsonl", "rb") as f:
        record = read_line(f, offsets[41])                # one seek, one read

An epoch in a shuffled order jumps from line to line; with the offsets that is one seek and one
read per record, and the whole index of a million-record file is 8 MB. The index is stored as
``<file>.idx`` (a header with the file's size, modification and change times and inode, then
the offsets) and rebuilt whenever one differs, so an edited or replaced file is never read through
a stale index: not even one rewritten to the same size with its modification time put back (``cp -p``,
``rsync -a``, ``touch -r``), whose inode or change time differs. Where the file's folder is
read-only the index is built in memory every time (a pass over the file at disk speed).
"""
from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

import numpy as np

from tasu.fileio import atomic_replace

_MAGIC = b"TASUIDX2"
_HEADER = struct.Struct("<8sQQQQQ")  # magic, the file's size, mtime and ctime in ns, inode; number of offsets
_CHUNK = 1 << 24


def line_offsets(path: str | os.PathLike) -> np.ndarray:
    """Byte offsets of the lines of ``path`` that hold anything but a line end (uint64)."""
    path = Path(path)
    stat = path.stat()
    cache = path.with_name(path.name + ".idx")
    offsets = _read_cache(cache, stat)
    if offsets is None:
        offsets = _scan(path)
        _write_cache(cache, stat, offsets)
    return offsets


def read_line(file, offset: int) -> bytes:
    """The line starting at byte ``offset`` of the open binary ``file`` (its line end included)."""
    file.seek(offset)
    return file.readline()


def line_number(path: str | os.PathLike, offset: int) -> int:
    """The 1-based number of the line starting at byte ``offset``: for error messages only."""
    count = 0
    with open(path, "rb") as f:
        while offset > 0:
            chunk = f.read(min(_CHUNK, offset))
            if not chunk:
                break
            count += chunk.count(b"\n")
            offset -= len(chunk)
    return count + 1


def _scan(path: Path) -> np.ndarray:
    parts, base = [np.zeros(1, dtype=np.uint64)], 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 0x0A)
            parts.append((ends + base + 1).astype(np.uint64))
            base += len(chunk)
    starts = np.concatenate(parts)
    lengths = np.diff(np.append(starts, np.uint64(base)))
    # a start is a line unless nothing follows it (the end of the file) or only its line end does
    empty = lengths == 0
    empty[:-1] |= lengths[:-1] == 1
    return np.ascontiguousarray(starts[~empty])


def _read_cache(cache: Path, stat: os.stat_result) -> np.ndarray | None:
    try:
        with open(cache, "rb") as f:
            magic, *made_of, count = _HEADER.unpack(f.read(_HEADER.size))
            if magic != _MAGIC or made_of != _identity(stat):
                return None
            offsets = np.fromfile(f, dtype="<u8", count=count)
    except (OSError, struct.error):
        return None
    return offsets.astype(np.uint64, copy=False) if len(offsets) == count else None


def _identity(stat: os.stat_result) -> list[int]:
    """What an index is valid for: this file's size, times and inode."""
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _write_cache(cache: Path, stat: os.stat_result, offsets: np.ndarray) -> None:
    """Write the index atomically (readers never see half of one); skip quietly where we cannot."""
    with contextlib.suppress(OSError), atomic_replace(cache) as tmp, open(tmp, "wb") as f:
        f.write(_HEADER.pack(_MAGIC, *_identity(stat), len(offsets)))
        f.write(offsets.astype("<u8", copy=False).tobytes())
