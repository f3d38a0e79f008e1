#!/usr/bin/env python3
"""Make the mini corpus offline: grammar sentences spoken by espeak-ng, as Kaldi data dirs.

Usage (from egs/mini):

    python local/make_corpus.py --data-dir data            # full: 2000/200/200/200 utts, 4000 text-only
    python local/make_corpus.py --data-dir data --quick    # tests: 300/40/40/40 utts, 600 text-only
    python local/make_corpus.py --data-dir data --num-train 16 --num-dev 4 --num-test 4 --num-text-only 20

What it writes (``<set>`` = train, dev, test, test_ood)::

    data/<set>/{wav.scp,text,utt2spk,spk2utt,utt2dur,scenario}   scenario: utt -> SLURP scenario label
    data/text_only/{text,scenario}                               text for the text-only stage, no audio
    data/wav/<set>/<utt>.wav                                     16 kHz mono 16-bit (absolute paths in wav.scp)
    data/local/corpus.json                                       counts, voices, grammar size

Why the splits look as they do (they are what the TASU claim is tested on):

- every sentence is drawn once from one pool of distinct sentences, then dealt out, so train, dev,
  test and text_only share no sentence: the test sentences are in no training text at all, neither
  the audio transcripts nor the (larger) text-only text;
- test_ood speaks the test sentences again, with espeak-ng accents, variants and speaking rates that
  no training or dev utterance uses: comparing test with test_ood isolates the acoustic shift;
- the sentence count a request needs is checked against the grammar's exact capacity
  (``local/grammar.py``), so an impossible request fails at once instead of looping.

Seeded (``--seed``): the sentences, their voices, rates and pitches are fixed before synthesis, and
each utterance is synthesised independently, so the corpus is the same for any ``--nj``.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import random
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path
from typing import NamedTuple

import soundfile
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grammar import Grammar  # noqa: E402  (the recipe-local grammar beside this script)

from tasu.data.kaldi_dir import write_data_dir  # noqa: E402
from tasu.data.records import Record  # noqa: E402

SAMPLE_RATE = 16000
AUDIO_SETS = ("train", "dev", "test", "test_ood")

# espeak-ng accents x voice variants. In-domain voices speak train, dev and test; test_ood gets
# other accents, other variants and rates outside the in-domain range on both sides.
IN_DOMAIN = {
    "accents": ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp"],
    "variants": ["m1", "m2", "m3", "m4", "f1", "f2", "f3"],
    "rates": [(140, 200)],
    "pitches": (30, 70),
}
OUT_OF_DOMAIN = {
    "accents": ["en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc"],
    "variants": ["m5", "m6", "m7", "f4", "f5"],
    "rates": [(120, 130), (210, 230)],
    "pitches": (20, 80),
}
FULL = {"train": 2000, "dev": 200, "test": 200, "text_only": 4000}
QUICK = {"train": 300, "dev": 40, "test": 40, "text_only": 600}


class Utterance(NamedTuple):
    key: str
    text: str
    scenario: str
    speaker: str
    voice: str
    rate: int
    pitch: int
    wav: str


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="where the data dirs and wavs go (default: data)")
    parser.add_argument("--quick", action="store_true", help=f"small sizes for tests: {QUICK}")
    for name in FULL:
        parser.add_argument(f"--num-{name.replace('_', '-')}", type=int, default=None,
                            help=f"sentences in {name} (default {FULL[name]}, --quick {QUICK[name]})")
    parser.add_argument("--nj", type=int, default=2, help="parallel synthesis processes (default: 2)")
    parser.add_argument("--seed", type=int, default=1234)
    return parser


def split_sizes(args) -> dict[str, int]:
    sizes = dict(QUICK if args.quick else FULL)
    for name in sizes:
        value = getattr(args, f"num_{name}")
        if value is not None:
            sizes[name] = value
    if min(sizes.values()) < 1:
        raise SystemExit(f"every split needs at least one sentence: {sizes}")
    return sizes


def draw_splits(grammar: Grammar, sizes: dict[str, int], rng: random.Random) -> dict[str, list[tuple[str, str]]]:
    """Distinct (sentence, scenario) pairs dealt into disjoint splits; test_ood repeats test."""
    pool = grammar.sample_unique(sum(sizes.values()), rng)
    splits, start = {}, 0
    for name in ("train", "dev", "test", "text_only"):
        splits[name] = pool[start:start + sizes[name]]
        start += sizes[name]
    splits["test_ood"] = list(splits["test"])
    return splits


def assign_voices(split: str, sentences: list[tuple[str, str]], wav_dir: Path,
                  rng: random.Random) -> list[Utterance]:
    """Fix each utterance's voice, rate and pitch; keys start with the speaker (Kaldi sorting)."""
    domain = OUT_OF_DOMAIN if split == "test_ood" else IN_DOMAIN
    utts = []
    for i, (text, scenario) in enumerate(sentences):
        accent, variant = rng.choice(domain["accents"]), rng.choice(domain["variants"])
        rate = rng.randint(*rng.choice(domain["rates"]))
        pitch = rng.randint(*domain["pitches"])
        speaker = f"{accent}_{variant}"
        key = f"{speaker}-{split}{i:05d}"
        utts.append(Utterance(key, text, scenario, speaker, f"{accent}+{variant}", rate, pitch,
                              str(wav_dir / split / f"{key}.wav")))
    return utts


def synthesize(utt: Utterance) -> float:
    """Speak one utterance with espeak-ng, resample to 16 kHz with soxr, write it; its duration."""
    cmd = ["espeak-ng", "-v", utt.voice, "-s", str(utt.rate), "-p", str(utt.pitch), "--stdout", utt.text]
    out = subprocess.run(cmd, capture_output=True, check=True).stdout
    wave, rate = soundfile.read(io.BytesIO(out), dtype="float32")
    if wave.ndim > 1:
        wave = wave.mean(axis=1)
    if rate != SAMPLE_RATE:
        wave = soxr.resample(wave, rate, SAMPLE_RATE)
    soundfile.write(utt.wav, wave, SAMPLE_RATE, subtype="PCM_16")
    return len(wave) / SAMPLE_RATE


def synthesize_all(utts: list[Utterance], nj: int) -> list[float]:
    for d in {Path(u.wav).parent for u in utts}:
        shutil.rmtree(d, ignore_errors=True)  # wavs of an earlier, different run would linger
        d.mkdir(parents=True)
    with Pool(nj) as pool:
        return pool.map(synthesize, utts, chunksize=16)


def write_audio_set(data_dir: Path, split: str, utts: list[Utterance], durations: list[float]) -> None:
    d = data_dir / split
    write_data_dir([Record(u.key, "ASR", u.text, u.wav, extra={"speaker": u.speaker}) for u in utts], d)
    write_table(d / "scenario", {u.key: u.scenario for u in utts})
    write_table(d / "utt2dur", {u.key: f"{dur:.3f}" for u, dur in zip(utts, durations)})


def write_text_only(data_dir: Path, sentences: list[tuple[str, str]]) -> None:
    keys = [f"textonly-{i:06d}" for i in range(len(sentences))]
    write_table(data_dir / "text_only" / "text", {k: s for k, (s, _) in zip(keys, sentences)})
    write_table(data_dir / "text_only" / "scenario", {k: sc for k, (_, sc) in zip(keys, sentences)})


def write_table(path: Path, table: dict[str, str]) -> None:
    """A Kaldi table (``key value`` lines, sorted by key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} {table[k]}\n" for k in sorted(table)), encoding="utf-8")


def check_invariants(splits: dict[str, list[tuple[str, str]]], utts: dict[str, list[Utterance]]) -> None:
    """What the experiment relies on; a failure here is a bug in this script."""
    text = {name: {s for s, _ in pairs} for name, pairs in splits.items()}
    training = text["train"] | text["text_only"]
    assert not text["test"] & training and not text["dev"] & training and not text["dev"] & text["test"]
    assert not text["train"] & text["text_only"]
    seen = {(u.voice, u.rate) for name in ("train", "dev", "test") for u in utts[name]}
    assert not {u.voice.split("+")[0] for u in utts["test_ood"]} & {v.split("+")[0] for v, _ in seen}
    assert not {u.rate for u in utts["test_ood"]} & {r for _, r in seen}


def main() -> None:
    args = get_parser().parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    t0 = time.time()
    data_dir = Path(args.data_dir)
    rng = random.Random(args.seed)

    # 1. sentences: one pool of distinct sentences, dealt into disjoint splits
    grammar = Grammar()
    sizes = split_sizes(args)
    splits = draw_splits(grammar, sizes, rng)

    # 2. voices, rates and pitches, fixed here so that synthesis order does not matter
    wav_dir = (data_dir / "wav").resolve()  # wav.scp holds absolute paths, as Kaldi dirs should
    utts = {name: assign_voices(name, splits[name], wav_dir, rng) for name in AUDIO_SETS}
    check_invariants(splits, utts)

    # 3. synthesis, in parallel
    all_utts = [u for name in AUDIO_SETS for u in utts[name]]
    durations = synthesize_all(all_utts, args.nj)
    t_synth = time.time() - t0
    by_key = dict(zip((u.key for u in all_utts), durations))

    # 4. Kaldi data dirs, the text-only text, a summary
    for name in AUDIO_SETS:
        write_audio_set(data_dir, name, utts[name], [by_key[u.key] for u in utts[name]])
    write_text_only(data_dir, splits["text_only"])
    summary = {
        "grammar": {"templates": len(grammar.templates), "scenarios": grammar.scenarios,
                    "sentences": grammar.capacity(), "words": len(grammar.words())},
        "sentences": {name: len(pairs) for name, pairs in splits.items()},
        "hours": {name: round(sum(by_key[u.key] for u in utts[name]) / 3600, 3) for name in AUDIO_SETS},
        "speakers": {name: sorted({u.speaker for u in utts[name]}) for name in AUDIO_SETS},
        "seed": args.seed,
    }
    (data_dir / "local").mkdir(parents=True, exist_ok=True)
    (data_dir / "local" / "corpus.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")

    mean_dur = sum(durations) / len(durations)
    logging.info("grammar: %d templates, %d scenarios, %d distinct sentences, %d words",
                 len(grammar.templates), len(grammar.scenarios), grammar.capacity(), len(grammar.words()))
    logging.info("sentences: %s", summary["sentences"])
    logging.info("synthesised %d utterances (mean %.2f s, %.2f h) with %d jobs in %.1f s",
                 len(all_utts), mean_dur, sum(durations) / 3600, args.nj, t_synth)
    logging.info("make_corpus: done in %.1f s -> %s", time.time() - t0, data_dir)


if __name__ == "__main__":
    main()
