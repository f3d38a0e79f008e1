"""One Python process that runs ``tasu`` commands in turn, for test files with many short trainings.

Starting a process that imports torch, transformers and DeepSpeed costs about 5 s on 2 cores, more
than a 3-step training of the tiny models. ``TasuProcess()(argv)`` hands ``argv`` to
``tasu.cli.main`` in a process kept for the whole test file and returns what a ``subprocess.run``
of ``tasu ARGV`` would: the exit status and what the command wrote on stdout and stderr. Running
commands one after another in one process is also how the Python API and a notebook use tasu, so
state one command leaves behind (a lock, a log handler, a process group) shows in the next.

Only ``sys.stdout``/``sys.stderr`` are captured, and the status is what ``main`` returns: what a
library printed to a stream it bound at import (DeepSpeed's logger) or to file descriptor 2 goes to
the process's own log (shown when the process dies or stalls), and what happens at interpreter exit
is not seen. A test of what the ``tasu`` executable itself prints or exits with (a traceback let
through or not, a signal) starts its own process.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

# Commands come on stdin as JSON lines {"argv": [...], "umask": int|null} (null: the process's own, put back
# after each command); each answer goes as one JSON line to the stdout the process started with, which is
# then pointed at the log (fd 1 and 2), so nothing a library writes there can come between the answers.
_SERVE = """
import contextlib, io, json, os, sys
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
from tasu.cli import main
for line in sys.stdin:
    request = json.loads(line)
    own = os.umask(0)
    os.umask(own if request["umask"] is None else request["umask"])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(request["argv"])
        except SystemExit as e:
            status = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    os.umask(own)
    answers.write(json.dumps({"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}) + "\\n")
    answers.flush()
"""


class TasuProcess:
    def __init__(self, env: dict[str, str], log: Path):
        self.env, self.log = env, log
        self.proc: subprocess.Popen | None = None

    def __call__(self, argv: list[str], timeout: float = 600, umask: int | None = None) -> subprocess.CompletedProcess:
        """``tasu ARGV`` in the kept process (started first if none is running)."""
        if self.proc is None or self.proc.poll() is not None:
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen([sys.executable, "-c", _SERVE], env=self.env, stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        self.proc.stdin.write(json.dumps({"argv": argv, "umask": umask}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        answer = self.proc.stdout.readline() if ready else ""
        if not answer:
            self.close()
            raise AssertionError(f"tasu {' '.join(argv)}: the test's tasu process "
                                 f"{'died' if ready else f'gave no answer in {timeout} s'}; its log ends:\n"
                                 f"{self.log.read_text(errors='replace')[-4000:]}")
        result = json.loads(answer)
        return subprocess.CompletedProcess(["tasu", *argv], result["status"], result["stdout"], result["stderr"])

    def open_files(self) -> list[str]:
        """What the kept process holds open now (after a command: what it left open)."""
        fds = Path(f"/proc/{self.proc.pid}/fd")
        return [os.readlink(fd) for fd in fds.iterdir()]

    def close(self) -> None:
        if self.proc is not None:   # with what it started (DataLoader workers), should a command have stalled
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                stream.close()
            self.proc = None
