"""Shared test set-up: the commands of this environment come first on PATH, the long runs start first.

The suite is run as ``tools/venv/bin/python -m pytest`` without activating the venv, so the
``tasu`` console script (and the venv's other tools) must be found next to this interpreter.

It runs on two workers (pytest-xdist, ``-n 2 --dist loadfile`` in pyproject.toml): each test file stays
on one worker, so a module's fixture (a recipe run, a trained model) is made once. Files with
``slow`` tests are handed out first, so that the end-to-end runs overlap each other and the many short
tests fill the gaps, instead of one long run starting last on an otherwise idle machine.
"""
import os
import sys
from pathlib import Path

import pytest

from tasu_process import TasuProcess

os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def pytest_collection_modifyitems(config, items):
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)   # stable: the files' own order otherwise


@pytest.fixture(scope="module")
def tasu(tmp_path_factory):
    """``tasu(["train", ...])``: a tasu command run in one process kept for the test file, as the Python API
    runs one after another (see tasu_process.py); on the CPU, one thread, not in debug mode."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("TASU_DEBUG", None)
    process = TasuProcess(env, tmp_path_factory.mktemp("tasu_process") / "log")
    yield process
    process.close()
