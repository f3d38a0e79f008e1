"""On PYTHONPATH of the tests' launched trainings: SIGUSR1 makes a process print every thread's Python
stack to stderr, so that a run a test gives up on as stalled shows where each of its processes stood."""
import faulthandler
import signal

faulthandler.register(signal.SIGUSR1, all_threads=True)
