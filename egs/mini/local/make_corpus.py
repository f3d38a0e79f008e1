#!/usr/bin/env python3
"""Make the mini corpus offline: grammar sentences spoken by espeak-ng and flite, as Kaldi data dirs.

Usage (from egs/mini):

    python local/make_corpus.py --data-dir data            # full: 6000/200/200/200 utts, 4000 text-only
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
- many voices, so that the encoder learns speech rather than one synthesizer: every English espeak-ng
  accent with ~70 voice variants, and flite's English voices (``IN_DOMAIN``); the train audio is
  augmented as Kaldi recipes do (speed perturbation 0.9/1.0/1.1 with sox, additive noise at 15-30 dB
  SNR); dev and test are spoken by the same voices, unaugmented;
- test_ood speaks the test sentences again with voices that no training or dev utterance uses (a
  flite voice, espeak-ng variants, espeak-ng rates outside the training range as spoken; the speed
  perturbation moves ~1 train utterance in 8 into those rates): comparing test with test_ood isolates
  the acoustic shift to an unseen voice;
- the sentence count a request needs is checked against the grammar's capacity, an upper bound on its
  distinct sentences (``local/grammar.py``), so an impossible request fails at once instead of looping.

Seeded (``--seed``): the sentences, their voices, rates, pitches and augmentation are fixed before synthesis, and
each utterance is synthesised independently, so the corpus is the same for any ``--nj``.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from multiprocessing import Pool
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grammar import Grammar  # noqa: E402  (the recipe-local grammar beside this script)

from tasu.data.kaldi_dir import write_data_dir  # noqa: E402
from tasu.data.records import Record  # noqa: E402
from tasu.fileio import write_atomic  # noqa: E402

SAMPLE_RATE = 16000
AUDIO_SETS = ("train", "dev", "test", "test_ood")

# Voices. Every English espeak-ng accent speaks in training, each with many voice variants; flite's
# English voices join them (kal is 8 kHz, resampled with the rest). test_ood is spoken by voices no
# training utterance uses: one flite voice (rms) and espeak-ng variants held out, at rates outside the
# training range on both sides. Variants that whisper, echo or sound robotic are left out everywhere.
ESPEAK_ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-us-nyc"]
ESPEAK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m8", "f1", "f2", "f3", "Alex", "Alicia", "Andrea",
                   "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo", "Jacky",
                   "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "Storm", "adam", "anika", "announcer",
                   "antonio", "aunty", "benjamin", "boris", "david", "ed", "edward2", "grandma", "grandpa",
                   "gustave", "iven", "iven2", "iven4", "john", "klatt", "klatt2", "klatt4", "linda", "marcelo",
                   "max", "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert",
                   "sandro", "shelby", "steph2", "steph3", "travis", "victor"]
ESPEAK_OOD_VARIANTS = ["m7", "f4", "f5", "Andy", "belinda", "edward", "iven3", "klatt3", "steph"]
FLITE_VOICES = ["kal", "kal16", "awb", "slt"]
FLITE_OOD_VOICES = ["rms"]
IN_DOMAIN = {
    "espeak": {"accents": ESPEAK_ACCENTS, "variants": ESPEAK_VARIANTS, "rates": [(135, 205)], "pitches": (30, 70)},
    "flite": {"voices": FLITE_VOICES, "stretch": (0.85, 1.2)},
    "flite_share": 0.3,
}
OUT_OF_DOMAIN = {
    "espeak": {"accents": ESPEAK_ACCENTS, "variants": ESPEAK_OOD_VARIANTS, "rates": [(115, 130), (210, 230)],
               "pitches": (20, 80)},
    "flite": {"voices": FLITE_OOD_VOICES, "stretch": (0.85, 1.2)},
    "flite_share": 0.5,
}
# Augmentation of the train set only (dev and test are as spoken): Kaldi's speed perturbation (sox
# "speed": tempo and pitch together), one factor per utterance, and additive noise of one colour.
SPEEDS = (0.9, 1.0, 1.1)
# 15-30 dB: at 5-30 dB the encoder learned slower (dev greedy CTC WER after 2 epochs 79.5 % vs 77.0 %).
NOISE = {"prob": 0.5, "snr_db": (15.0, 30.0), "colours": ("white", "pink", "brown")}
FULL = {"train": 6000, "dev": 200, "test": 200, "text_only": 4000}
QUICK = {"train": 300, "dev": 40, "test": 40, "text_only": 600}


class Utterance(NamedTuple):
    key: str
    text: str
    scenario: str
    speaker: str
    engine: str        # espeak-ng | flite
    voice: str         # espeak-ng: accent+variant; flite: the voice name
    rate: int          # espeak-ng: words per minute; flite: 100 x duration stretch
    pitch: int         # espeak-ng only
    speed: float       # sox speed perturbation (1.0: none)
    noise: str | None  # colour of the added noise, or None
    snr_db: float
    noise_seed: int
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
    """Fix each utterance's voice, rate, pitch and (train only) augmentation; keys start with the speaker."""
    domain = OUT_OF_DOMAIN if split == "test_ood" else IN_DOMAIN
    utts = []
    for i, (text, scenario) in enumerate(sentences):
        if rng.random() < domain["flite_share"]:
            flite = domain["flite"]
            engine, voice, pitch = "flite", rng.choice(flite["voices"]), 0
            rate = round(100 * rng.uniform(*flite["stretch"]))
            speaker = f"flite_{voice}"
        else:
            espeak = domain["espeak"]
            accent, variant = rng.choice(espeak["accents"]), rng.choice(espeak["variants"])
            engine, voice = "espeak-ng", f"{accent}+{variant}"
            rate = rng.randint(*rng.choice(espeak["rates"]))
            pitch = rng.randint(*espeak["pitches"])
            speaker = f"{accent}_{variant}"
        speed, noise, snr, noise_seed = 1.0, None, 0.0, rng.getrandbits(31)
        if split == "train":
            speed = rng.choice(SPEEDS)
            if rng.random() < NOISE["prob"]:
                noise, snr = rng.choice(NOISE["colours"]), rng.uniform(*NOISE["snr_db"])
        key = f"{speaker}-{split}{i:05d}"
        utts.append(Utterance(key, text, scenario, speaker, engine, voice, rate, pitch, speed, noise, snr,
                              noise_seed, str(wav_dir / split / f"{key}.wav")))
    return utts


def coloured_noise(colour: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """White noise, or pink / brown noise (power falling as 1/f, 1/f^2) shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    if colour == "pink":
        spectrum /= np.sqrt(f)
    elif colour == "brown":
        spectrum /= f
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


class SynthesisError(Exception):
    """A synthesizer or sox missing, lacking a voice, or failing on an utterance: one line says which."""


def check_synthesizers() -> None:
    """The tools and every voice the corpus names, before anything is drawn or written.

    Asked for a voice or variant they lack, espeak-ng and flite both speak in their default voice,
    exit 0 and say nothing: a machine with another espeak-ng release would then make a corpus whose
    "unseen" test_ood voices are the default one, which training hears. So the names are checked here
    against what the installed synthesizers list (the corpus of the recipe's reports: espeak-ng 1.51,
    flite 2.2).
    """
    missing = [tool for tool in ("espeak-ng", "flite", "sox") if shutil.which(tool) is None]
    if missing:
        raise SynthesisError(f"{', '.join(missing)} not found on PATH (tools/setup.sh installs espeak-ng, flite and "
                             "sox when run as root)")

    def listing(*cmd: str) -> list[list[str]]:
        return [line.split() for line in _run(list(cmd), "the voice check").decode(errors="replace").splitlines()]

    variants = {f.removeprefix("!v/") for row in listing("espeak-ng", "--voices=variant") for f in row
                if f.startswith("!v/")}
    accents = {row[1] for row in listing("espeak-ng", "--voices=en")[1:] if len(row) > 1}
    flite = {name for row in listing("flite", "-lv") for name in row[2:] if row[:2] == ["Voices", "available:"]}
    lacking = [("espeak-ng", "accents", sorted(set(ESPEAK_ACCENTS) - accents), "espeak-ng --voices=en"),
               ("espeak-ng", "voice variants", sorted(set(ESPEAK_VARIANTS + ESPEAK_OOD_VARIANTS) - variants),
                "espeak-ng --voices=variant"),
               ("flite", "voices", sorted(set(FLITE_VOICES + FLITE_OOD_VOICES) - flite), "flite -lv")]
    for tool, what, names, command in lacking:
        if names:
            raise SynthesisError(f"{tool} here lacks the {what} {', '.join(names)} ('{command}' lists those it "
                                 f"has): it would speak them in its default voice without a word, so the corpus "
                                 f"would not have the voices it claims")


def synthesizer_versions() -> dict[str, str]:
    """The releases that speak the corpus: another release speaks other audio, so a report made from
    it differs for more than the float sums (local/report.py names them)."""
    versions = {}
    for tool, cmd, pattern in (("espeak-ng", ["espeak-ng", "--version"], r"text-to-speech: (\S+)"),
                               ("flite", ["flite", "--version"], r"version: flite-(\S+)"),
                               ("sox", ["sox", "--version"], r"SoX v(\S+)")):
        text = subprocess.run(cmd, capture_output=True, text=True).stdout
        found = re.search(pattern, text)
        versions[tool] = found[1] if found else (text.strip().splitlines() or ["unknown"])[0]
    return versions


SILENT = 1e-3   # the peak below which a synthesized utterance is silence (-60 dBFS; speech peaks near -10)


def synthesize(utt: Utterance) -> float:
    """Speak one utterance, then sox: speed perturbation and resampling to 16 kHz; add noise; its duration."""
    if utt.engine == "flite":
        cmd = ["flite", "-voice", utt.voice, "--setf", f"duration_stretch={utt.rate / 100:.2f}", "-t", utt.text,
               "-o", "/dev/stdout"]
    else:
        cmd = ["espeak-ng", "-v", utt.voice, "-s", str(utt.rate), "-p", str(utt.pitch), "--stdout", utt.text]
    raw = _run(cmd, utt.key)
    if not raw:
        raise SynthesisError(f"{utt.key}: {cmd[0]} wrote no audio: {' '.join(cmd)}")
    effects = (["speed", f"{utt.speed:g}"] if utt.speed != 1.0 else []) + ["rate", "-h", str(SAMPLE_RATE)]
    # -D: no dither (sox dithers at random by default), so a seed always gives the same bytes
    _run(["sox", "-V1", "-D", "-t", "wav", "-", "-c", "1", "-b", "16", utt.wav, *effects], utt.key, raw)
    wave, rate = soundfile.read(utt.wav, dtype="float64")
    # no samples, or digital silence (peak below -60 dBFS): a synthesizer that failed without saying so
    if not len(wave) or np.max(np.abs(wave)) < SILENT:
        raise SynthesisError(f"{utt.key}: {cmd[0]} wrote {'no samples' if not len(wave) else 'silence'}: "
                             f"{' '.join(cmd)}")
    if utt.noise is not None:
        power = np.mean(wave ** 2)
        noise = coloured_noise(utt.noise, len(wave), np.random.default_rng(utt.noise_seed))
        wave = wave + noise * np.sqrt(power / 10 ** (utt.snr_db / 10))
        peak = np.max(np.abs(wave))
        if peak > 0.99:
            wave *= 0.99 / peak
        soundfile.write(utt.wav, wave, SAMPLE_RATE, subtype="PCM_16")
    return len(wave) / SAMPLE_RATE


def _run(cmd: list[str], what: str, stdin: bytes | None = None) -> bytes:
    """The command's output; a failure is a SynthesisError naming ``what`` (an utterance's key), the
    last line the command wrote to stderr and the command."""
    out = subprocess.run(cmd, input=stdin, capture_output=True)
    if out.returncode != 0:
        message = out.stderr.decode(errors="replace").strip() or f"exit {out.returncode}"
        raise SynthesisError(f"{what}: {cmd[0]} failed ({message.splitlines()[-1]}): {' '.join(cmd)}")
    return out.stdout


def synthesize_all(utts: list[Utterance], nj: int) -> list[float]:
    for d in {Path(u.wav).parent for u in utts}:
        shutil.rmtree(d, ignore_errors=True)  # wavs of an earlier, different run would linger
        d.mkdir(parents=True)
    # Ctrl-C is the main process's to handle (the workers' tracebacks were ~30 lines): it stops the pool
    with Pool(nj, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
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
    write_atomic(path, "".join(f"{k} {table[k]}\n" for k in sorted(table)))


def check_invariants(splits: dict[str, list[tuple[str, str]]], utts: dict[str, list[Utterance]]) -> None:
    """What the experiment relies on; a failure here is a bug in this script."""
    text = {name: {s for s, _ in pairs} for name, pairs in splits.items()}
    training = text["train"] | text["text_only"]
    assert not text["test"] & training and not text["dev"] & training and not text["dev"] & text["test"]
    assert not text["train"] & text["text_only"]
    seen = [u for name in ("train", "dev", "test") for u in utts[name]]
    assert not {u.speaker for u in utts["test_ood"]} & {u.speaker for u in seen}
    espeak_rates = {u.rate for u in seen if u.engine == "espeak-ng"}
    assert not {u.rate for u in utts["test_ood"] if u.engine == "espeak-ng"} & espeak_rates
    assert all(u.speed == 1.0 and u.noise is None for name in ("dev", "test", "test_ood") for u in utts[name])


def main() -> None:
    parser = get_parser()
    args = parser.parse_args()
    if args.nj < 1:
        parser.error(f"--nj must be at least 1, not {args.nj}")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    t0 = time.time()
    data_dir = Path(args.data_dir)
    rng = random.Random(args.seed)
    check_synthesizers()

    # 1. sentences: one pool of distinct sentences, dealt into disjoint splits
    grammar = Grammar()
    sizes = split_sizes(args)
    try:
        splits = draw_splits(grammar, sizes, rng)
    except ValueError as e:   # more sentences than the grammar can give (Grammar.sample_unique)
        raise SystemExit(f"make_corpus.py: {e}") from None

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
        "engines": {name: dict(Counter(u.engine for u in utts[name])) for name in AUDIO_SETS},
        "augmented": {"speed": dict(Counter(f"{u.speed:g}" for u in utts["train"])),
                      "noise": dict(Counter(u.noise or "none" for u in utts["train"]))},
        "seed": args.seed,
        "synthesizers": synthesizer_versions(),
    }
    write_atomic(data_dir / "local" / "corpus.json", json.dumps(summary, indent=1) + "\n")

    mean_dur = sum(durations) / len(durations)
    logging.info("grammar: %d templates, %d scenarios, %d distinct sentences, %d words",
                 len(grammar.templates), len(grammar.scenarios), grammar.capacity(), len(grammar.words()))
    logging.info("sentences: %s", summary["sentences"])
    logging.info("synthesised %d utterances (mean %.2f s, %.2f h) with %d jobs in %.1f s",
                 len(all_utts), mean_dur, sum(durations) / 3600, args.nj, t_synth)
    logging.info("make_corpus: done in %.1f s -> %s", time.time() - t0, data_dir)


if __name__ == "__main__":
    try:
        main()
    except SynthesisError as e:  # the workers' too: Pool.map raises the first one here
        raise SystemExit(f"make_corpus.py: {e}") from None
    except KeyboardInterrupt:
        print("make_corpus.py: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:   # a --data-dir that is a file, a full disk, no permission
        raise SystemExit(f"make_corpus.py: {e.filename or ''}: {e.strerror or e}") from None
