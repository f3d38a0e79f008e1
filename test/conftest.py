"""Shared test set-up: the commands of this environment come first on PATH.

The suite is run as ``tools/venv/bin/python -m pytest`` without activating the venv, so the
``tasu`` console script (and the venv's other tools) must be found next to this interpreter.
"""
import os
import sys
from pathlib import Path

os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
