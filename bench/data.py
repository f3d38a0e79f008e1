"""Benchmark of ``tasu validate`` without audio checks: records per second on one core.

    python bench/data.py

Writes a 200,000-line JSONL file of typical records (ASR, translation and SLU, some with GT or
pass-through fields) to a temporary directory, validates it several times in this process with
the output discarded, and prints ``validate_records_per_s: N`` (from the median run). The target
is at least 50,000 records/s, so checking a million-line training set takes seconds.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing import median_ms  # noqa: E402

from tasu.data.validate import run_validate  # noqa: E402

NUM_RECORDS = 200_000
WORDS = "the a turn on off kitchen lights what is weather like tomorrow in play some music please".split()


def write_records(path: str, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text = " ".join(rng.choices(WORDS, k=rng.randint(4, 20)))
            kind = i % 4
            if kind == 0 or kind == 1:
                record = {"key": f"cv_en_{i:08d}", "task": "ASR", "target": text,
                          "path": f"clips/cv_en_{i:08d}.wav"}
            elif kind == 2:
                record = {"key": f"covost_{i:08d}", "task": "EN2DE", "target": "Das ist ein Satz.",
                          "path": f"data/wav.{i % 8}.ark:{i * 32044}", "GT": text}
            else:
                record = {"key": f"slurp_{i:08d}", "task": "SLU_scenario", "target": "iot",
                          "path": f"slurp_real/audio-{i}.flac", "GT": text, "intent": "iot_hue_lightoff"}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.jsonl")
        write_records(path, NUM_RECORDS)

        def validate() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                assert run_validate([path]) == 0

        ms = median_ms(validate, repeats=5, warmup=1)
    print(f"validate_records_per_s: {NUM_RECORDS / (ms / 1000):.0f}")


if __name__ == "__main__":
    main()
