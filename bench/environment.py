"""Benchmarks run in the environment the recipes train in: ``tools/activate_python.sh``'s.

That script sets how CPU memory is allocated (huge pages, glibc keeping freed memory), which
changes step times by tens of ms on CPU, and glibc reads its settings only when a process starts.
So a benchmark started without them re-executes itself once with them; both sides of every ratio
run under the same settings, and the header line prints them.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ACTIVATE = Path(__file__).resolve().parents[1] / "tools" / "activate_python.sh"
MARK = "TASU_BENCH_RECIPE_ENV"


def enter_recipe_environment() -> None:
    """Re-execute this script under ``tools/activate_python.sh`` (no-op once inside it)."""
    if os.environ.get(MARK):
        return
    shell = subprocess.run(["bash", "-c", f'. "{ACTIVATE}" >/dev/null && env -0'], capture_output=True)
    if shell.returncode != 0:
        print(f"# {ACTIVATE.name} failed ({shell.stderr.decode().strip()}): running in the current environment")
        return
    env = dict(item.split("=", 1) for item in shell.stdout.decode().split("\0") if "=" in item)
    env[MARK] = "1"
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def header() -> str:
    import torch

    settings = ", ".join(f"{name}={os.environ.get(name, '')}" for name in ("THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES"))
    return f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {settings}"
