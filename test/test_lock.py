"""One writer per output directory: the second is refused with the first one's pid; dead holders lose it."""
import os
import subprocess
import sys

import pytest

from fixtures import lock_held_elsewhere
from tasu.lock import DirLock, LockError


def test_a_second_writer_is_refused_with_the_first_ones_pid(tmp_path):
    with lock_held_elsewhere(tmp_path, "x") as pid:
        with pytest.raises(LockError, match=f"in use: tasu decode by pid {pid} on "):
            DirLock(tmp_path, "tasu decode").acquire()
    with DirLock(tmp_path, "tasu decode"):  # the holder has ended: free again
        assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} on ")


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; from tasu.lock import DirLock; "
                               f"DirLock({str(tmp_path)!r}, 'x').acquire(); print('held', flush=True); "
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    holder.kill()
    holder.wait()
    assert f"pid {holder.pid} " in (tmp_path / ".lock").read_text()  # what a dead run leaves behind
    with DirLock(tmp_path, "training"):
        assert f"pid {os.getpid()} " in (tmp_path / ".lock").read_text()


def test_a_waiting_lock_waits_for_the_holder_instead_of_stopping(tmp_path):
    """``wait=True`` (a dump's claim, written in a moment) blocks until the holder lets go."""
    import threading
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from tasu.lock import DirLock; "
                               f"DirLock({str(tmp_path)!r}, 'x').acquire(); print('held', flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    waiter = DirLock(tmp_path, "a claim", wait=True)
    taken = threading.Event()
    thread = threading.Thread(target=lambda: (waiter.acquire(), taken.set()))
    thread.start()
    try:
        assert not taken.wait(0.5), "took a lock another process holds"
        holder.stdin.close()  # the holder ends, and with it its lock
        assert taken.wait(30)
        assert f"pid {os.getpid()} " in (tmp_path / ".lock").read_text()
    finally:
        holder.kill()
        holder.wait()
        thread.join(30)
        waiter.release()


def test_holder_names_the_process_holding_a_directory_and_only_reads(tmp_path):
    """train.init_from asks whether the experiment it starts from is still training: another's directory,
    maybe not writable, so it must not take the lock (which writes its own pid into the file)."""
    import socket

    from tasu.lock import holder

    assert holder(tmp_path / "nothing") is None and holder(tmp_path) is None
    with DirLock(tmp_path, "training"):
        assert holder(tmp_path) == f"pid {os.getpid()} on {socket.gethostname()}"
    assert holder(tmp_path) is None
    assert (tmp_path / ".lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
