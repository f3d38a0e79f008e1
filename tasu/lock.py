"""One writer per output directory: an experiment directory, a decode ``--out`` directory.

Two runs writing into one directory do not fail, they interleave: two decodes append every key
twice to one ``hyp.trn``, two trainings overwrite each other's checkpoints. ``DirLock`` makes the
second one stop at once with a message naming the first one's process.

The lock is ``flock`` on ``DIR/.lock``, which holds the owner's pid and host for that message. The
kernel drops an flock when its process dies, however it dies (SIGKILL included), so a lock left by
a dead run is simply taken over: there is no stale-lock cleanup to get wrong. The file itself is
never deleted (deleting a locked file would let a third process lock a new file of the same name).
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"


class LockError(RuntimeError):
    """The directory is in use by another process; the message names it."""


class DirLock:
    """An exclusive lock on a directory, held from ``acquire`` until ``release`` or process exit."""

    def __init__(self, directory: str | Path, what: str, name: str = LOCK_NAME, wait: bool = False):
        """``name``: the lock file's, for locks of parts of a directory (one job of several); ``wait``:
        wait for the holder instead of stopping (for a moment's work, such as writing a claim)."""
        self.directory, self.what, self.wait = Path(directory), what, wait
        self.path = self.directory / name
        self._fd: int | None = None

    def acquire(self) -> "DirLock":
        """Take the lock or raise ``LockError`` naming the holder; a no-op when already held."""
        if self._fd is not None:
            return self
        if self.directory.exists() and not self.directory.is_dir():
            raise LockError(f"{self.directory}: a file, not a directory: {self.what} writes into a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LockError(f"{self.directory} is in use: {self.what} by {holder} is writing into it; "
                            "wait for it to end (or stop it), or choose another directory") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(directory: str | Path, name: str = LOCK_NAME) -> str | None:
    """Who holds ``directory``'s lock ("pid N on HOST"), or None when no process does; it only reads (a
    shared flock for a moment), so a directory of someone else's may be asked."""
    try:
        fd = os.open(Path(directory) / name, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:   # never locked, or not ours to read: nothing to tell
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "another process"
    finally:
        os.close(fd)
    return None
