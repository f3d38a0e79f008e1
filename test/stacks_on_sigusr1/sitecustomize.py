"""On PYTHONPATH of the tests' training launches: with STACKS_DIR set, SIGUSR1 makes a process write
every thread's Python stack into a file of its own there, so that a run a test gives up on as stalled
shows where each of its processes stood (one pipe for all would cut them short and mix their lines)."""
import faulthandler
import os
import signal
import sys

if os.environ.get("STACKS_DIR"):
    _stacks = open(os.path.join(os.environ["STACKS_DIR"], f"{os.getpid()}.txt"), "w")
    _stacks.write(f"process {os.getpid()}: {' '.join(sys.argv)}\n")
    _stacks.flush()
    faulthandler.register(signal.SIGUSR1, file=_stacks, all_threads=True)
