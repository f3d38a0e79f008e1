#!/usr/bin/env python3
"""The TASU study on egs/mini: which parts of TASU matter, measured on a finished ``./run.sh``.

    python3 local/study.py plan --workdir .          # the cells and their commands
    python3 local/study.py run --workdir .           # every cell not yet done, 2 at a time
    python3 local/study.py run --parts "gap compression"
    python3 local/study.py report --workdir . --out STUDY.md

(``local/study.sh`` runs ``run`` then ``report``.) Every cell starts from what the recipe made: the trained encoder and LLM,
the dumps, the text-only model (``exp/tasu_train_text``) and the configs of stages 3 and 4, and changes
one thing. The parts:

- ``gap``: the text-only model on test posteriors simulated from the test text (three simulation seeds)
  vs the encoder's real ones; ``tasu analyze`` of dev (how real rows differ from simulated ones);
- ``simulation``: text-only training with another simulation (alpha range, drop rate, insertions, a WER
  schedule with random or spelling confusions, i.i.d. substitutions at the encoder's rate): zero-shot
  WER, and WER on the model's own simulated test input; the recipe's own training with two more seeds
  is the yardstick (a change counts beyond twice their sd), and ``SEEDED_SIMULATIONS`` get two more
  seeds too;
- ``compression``: the text-only model decoding test audio with PSD off, another threshold, or another
  number of entries kept per row;
- ``projectors``: every registered projector, text-only and then the audio curriculum: WER, trainable
  parameters, seconds per training step; ``SEEDED_PROJECTORS`` get two more text-only training seeds;
- ``lowres``: audio fine-tuning on 50, 200 and 1,000 training utterances (and all) from the text-only
  model vs from scratch, the same steps: the low-resource curve; from the text-only model with three
  training seeds (the same utterances), as it is compared with the text-only model itself;
- ``textscale``: text-only training on 1k, 4k and 16k new grammar sentences (ASR text only), each
  with three training seeds (these models spread from seed to seed far more than stage 3's);
- ``learned``: the learned simulator (TASU2), trained on the encoder's posteriors of the training audio
  (``tasu train-simulator``): how well it hits the asked WER, how close its rows are to real dev rows
  (``tasu analyze --match-wer``) against the rules', and text-only training on its posteriors vs the
  rules' (i.i.d., as stage 3; WER-controlled with the same schedule): zero-shot WER (the learned one
  with three training seeds), and as the start of audio fine-tuning on 50 and 200 utterances (beside
  the low-resource curve's cells for them).

Each cell lives in ``exp/study/<cell>/``: its commands (``commands.json``), their log (``log``), one
marker per finished command, the model and the decodes. A killed run resumes where it stopped (a
training with ``--resume``, a decode where ``hyp.trn`` ends; SIGTERM or SIGHUP stops ``run``'s commands
with it, as Ctrl-C does, and a second ``run`` of one workdir stops at once); a cell whose commands have
changed since it ran is refused, not mixed, finished or not, and so is a finished cell whose model (the
one it decodes or starts from) was made again since (``changed``). Cells run ``--jobs`` at a time,
sharing the cores (one thread each on 2 cores with 2 jobs): the small models of this recipe keep about
one core busy each.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# the recipe's report, beside this script (its fmt formats a (mean, sd) cell; fmt here, one value)
from report import ReportError, fmt as fmt_cell, machine, mean_sd, read_score  # noqa: E402

from tasu.fileio import atomic_replace, file_sha256, write_atomic  # noqa: E402
from tasu.lock import DirLock, LockError  # noqa: E402
from tasu.results import git_hash  # noqa: E402

PARTS = ("gap", "simulation", "compression", "projectors", "lowres", "textscale", "learned")
DECODE = ["--beam", "1", "--batch-size", "32", "--max-new-tokens", "40"]   # as conf/decode_greedy.yaml
SIM_SEEDS = (1, 2, 3)
LOWRES_UTTS = (50, 200, 1000)
TEXT_SENTENCES = (1000, 4000, 16000)
# Projector sizes for this recipe's LLM (hidden 256); a projector registered later without an entry here
# runs with its own defaults.
MINI_PROJECTORS = {
    "linear-silu": {"hidden": 512},
    "concat-mlp": {"stack": 2, "hidden": 512},
    "conv1d": {"stride": 2, "width": 256, "hidden": 512},
    "cross-attention": {"hidden": 512, "topk": 16},
    "legoslm": {"hidden": 512},
    "qformer": {"num_queries": 16, "width": 256, "dim": 256, "num_layers": 2, "num_heads": 4},
}
SIMULATIONS = {   # cell -> changes to the text-only config's simulation section (the recipe's: U(0, 0.1), drop 0.05,
                  # insertions 0.3)
    "sim_alpha_none": {"alpha": [0.0, 0.0]},
    "sim_alpha_0.3": {"alpha": [0.0, 0.3]},
    "sim_drop_0": {"drop_prob": 0.0},
    "sim_drop_0.15": {"drop_prob": 0.15},
    "sim_insert_0": {"insert_ratio": 0.0},
    "sim_insert_0.6": {"insert_ratio": 0.6},
    "sim_wer_random": {"wer": {"start": [0.0, 0.0], "end": [0.3, 0.3]}, "confusion": "random"},
    "sim_wer_spelling": {"wer": {"start": [0.0, 0.0], "end": [0.3, 0.3]}, "confusion": "spelling"},
    # substitutions at about the encoder's rate on dev (7.8 %, the gap part's analysis), where the recipe's
    # simulation draws none: uniform, spelt alike, and spelt alike with half the inserted rows
    "sim_sub_0.08_random": {"sub_prob": 0.08, "confusion": "random"},
    "sim_sub_0.08_spelling": {"sub_prob": 0.08, "confusion": "spelling"},
    "sim_sub_0.08_spelling_insert_0.15": {"sub_prob": 0.08, "confusion": "spelling", "insert_ratio": 0.15},
}
# three training seeds: no insertions (the original's default, the largest effect), and the simulation
# closest to the encoder's errors on dev (substitutions at its rate, fewer inserted rows)
SEEDED_SIMULATIONS = ("sim_insert_0", "sim_sub_0.08_spelling_insert_0.15")
# three training seeds of the text-only stage: the projectors within a point of the recipe's (one seed
# each put them 0.4-0.5 behind it); the recipe's own gets its seeds from the simulation part
SEEDED_PROJECTORS = ("concat-mlp", "conv1d")
# The learned part: both WER-conditioned simulations follow this schedule over stage 3's steps (easy to
# hard, as TASU2's curriculum; the encoder's real test rows err at about 30 %). The learned simulator
# is trained with the defaults of tasu/train/simulator.py. Quick mode has no learned part: its 2-epoch
# encoder errs on every recording, so the simulator's trained range is [100 %, 100 %] and no schedule
# below it could be asked.
LEARNED_WER = {"start": [0.0, 0.05], "end": [0.1, 0.3]}
LEARNED_LOWRES_UTTS = (50, 200)
FIDELITY_ROWS = (   # tasu analyze of dev: (name, the config of its simulation (None: stage 3's), --match-wer)
    ("rules_iid", None, False),
    ("rules_wer", "learned_rules_wer.yaml", True),
    ("learned", "learned_text.yaml", True),
)
COMPRESSIONS = {  # cell -> tasu decode --set overrides (the recipe's: PSD on, threshold 0.9, top-16)
    "psd_default": [],
    "psd_off": ["compress.enabled=false"],
    "psd_threshold_0.99": ["compress.threshold=0.99"],
    "psd_top1": ["compress.topk=1"],
    "psd_top4": ["compress.topk=4"],
    "psd_all": ["compress.topk=null"],
}


class StudyError(RuntimeError):
    """The study cannot go on; the message says why and what to do."""


class Stopped(Exception):
    """``run`` was sent SIGTERM or SIGHUP (a kill, a batch system ending the job); its commands were stopped."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Cell:
    """One measurement: commands run in order in ``exp/study/<name>``, after the cells in ``after``."""

    name: str
    part: str
    commands: list[list[str]]
    after: tuple[str, ...] = ()
    info: dict = field(default_factory=dict)   # what the report needs to know (the setting, the sets decoded)
    # the models it decodes or starts from that it does not train itself: its commands name only their paths,
    # so a finished cell records what they held (``model_digest``) and is refused once one is made again
    models: tuple[Path, ...] = ()


class Recipe:
    """Where a finished run of the recipe keeps what the study starts from."""

    def __init__(self, workdir: Path):
        self.root = workdir
        self.exp, self.dump, self.data = workdir / "exp", workdir / "dump", workdir / "data"
        self.study = self.exp / "study"
        self.text_model = self.exp / "tasu_train_text"
        self.audio_model = self.exp / "tasu_train_text_then_train_audio_sft"
        self.scratch_model = self.exp / "train_audio_sft_from_scratch"
        for path in (self.text_model / "config.yaml", self.audio_model / "config.yaml",
                     self.scratch_model / "config.yaml", self.dump / "test" / "ASR.jsonl"):
            if not path.exists():
                raise StudyError(f"{path} does not exist: the study starts from a finished ./run.sh "
                                 f"(--workdir {workdir})")
        self.text_config = yaml.safe_load((self.text_model / "config.yaml").read_text(encoding="utf-8"))
        self.audio_config = yaml.safe_load((self.audio_model / "config.yaml").read_text(encoding="utf-8"))
        self.scratch_config = yaml.safe_load((self.scratch_model / "config.yaml").read_text(encoding="utf-8"))

    def test_input(self, test_set: str) -> list[str]:
        """``tasu decode`` options that decode ``test_set``'s ASR records: from the posterior dump stages
        4-5 made when there is one (the same hypotheses, without running the encoder), else from audio."""
        train_dump = Path(self.audio_config["data"]["train"][0]["path"])
        if self.audio_config["data"]["mode"] == "posteriors":
            dumped = train_dump.parent.parent / test_set / "ASR.jsonl"
            if dumped.exists():
                return ["--data", str(dumped), "--input", "posteriors"]
        return ["--data", str(self.dump / test_set / "ASR.jsonl"), "--input", "audio"]


def decode_and_score(model: Path, out: Path, data_input: list[str], *extra: str) -> list[list[str]]:
    return [["tasu", "decode", "--exp", str(model), "--out", str(out), "--checkpoint", "best", "--device", "cpu",
             *data_input, *DECODE, *extra],
            ["tasu", "score", "--ref", str(out / "ref.trn"), "--hyp", str(out / "hyp.trn"), "--metric", "wer",
             "--out", str(out)]]


def train(config: Path, exp: Path) -> list[str]:
    return ["tasu", "train", "--config", str(config), "--exp-dir", str(exp), "--allow-pipes"]


def with_changes(config: dict, **sections: dict) -> dict:
    """A copy of ``config`` with the given keys of its sections replaced."""
    new = json.loads(json.dumps(config))
    for section, changes in sections.items():
        new[section] = {**new.get(section, {}), **changes}
    return new


def trained_cell(r: Recipe, name: str, part: str, config: dict, after=(), sets=("test",), info=None) -> Cell:
    """A training with ``config`` (written to ``exp/study/conf/<name>.yaml``), then its decodes of ``sets``."""
    cell_dir = r.study / name
    conf = r.study / "conf" / f"{name}.yaml"
    text = yaml.safe_dump(config, sort_keys=False)
    if conf.exists() and conf.read_text(encoding="utf-8") != text and any(cell_dir.glob("done*")):
        # the same commands, another config (the run's configs changed): its results would be stale
        raise StudyError(f"{cell_dir} was trained with another {conf.name} than the run's configs give now: "
                         "remove it to run the cell again")
    write_text(conf, text)
    commands = [train(conf, cell_dir / "model")]
    for s in sets:
        commands += decode_and_score(cell_dir / "model", cell_dir / "decode" / s, r.test_input(s))
    starts_from = (config["train"].get("init_from"), (config.get("simulation") or {}).get("path"))
    return Cell(name, part, commands, after=tuple(after), info={"sets": list(sets), **(info or {})},
                models=tuple(Path(m) for m in starts_from if m))


def other_seeds(r: Recipe, name: str, part: str, config: dict, repeats: int = 2, after=(), sets=("test",),
                info=None) -> list[Cell]:
    """Cell ``name``'s training (``config``) again with ``repeats`` more training seeds, the ones after its
    own: ``<name>_seed<k>``, each marked as repeating it (the report gives their mean ± sd)."""
    seed = config["train"]["seed"]
    return [trained_cell(r, f"{name}_seed{seed + k}", part, with_changes(config, train={"seed": seed + k}),
                         after=after, sets=sets, info={**(info or {}), "repeat_of": name})
            for k in range(1, repeats + 1)]


def decoded_cell(r: Recipe, name: str, part: str, model: Path, sets=("test",), info=None) -> Cell:
    """The decodes of ``sets`` by a model the recipe made (no training)."""
    commands = []
    for s in sets:
        commands += decode_and_score(model, r.study / name / "decode" / s, r.test_input(s))
    return Cell(name, part, commands, info={"sets": list(sets), "model": str(model), **(info or {})},
                models=(model,))


# --- the cells of each part -----------------------------------------------------------------------------

def gap_cells(r: Recipe) -> list[Cell]:
    cells = [real_cell(r)]
    cells += [simulated_cell(r, f"gap_simulated_{seed}", "gap", r.text_model, seed) for seed in SIM_SEEDS]
    cells.append(Cell("gap_analyze", "gap", [[
        "tasu", "analyze", "--config", str(r.text_model / "config.yaml"), "--data", str(r.dump / "dev" / "ASR.jsonl"),
        "--out", str(r.study / "gap_analyze" / "analyze"), "--device", "cpu", "--allow-pipes"]],
        models=(r.text_model,)))   # its config's simulation
    return cells


def real_cell(r: Recipe) -> Cell:
    """Stage 3's model decoding the encoder's real test posteriors (its audio): the gap part's, and the first
    training seed of the simulation part's yardstick."""
    out = r.study / "gap_real" / "decode" / "test"
    return Cell("gap_real", "gap", decode_and_score(r.text_model, out, r.test_input("test")), info={"sets": ["test"]},
                models=(r.text_model,))


def simulated_cell(r: Recipe, name: str, part: str, model: Path, seed: int, info=None) -> Cell:
    """``model`` decoding posteriors simulated from the test text with its own training's simulation."""
    out = r.study / name / "decode" / "test"
    return Cell(name, part, decode_and_score(model, out, ["--data", str(r.dump / "test" / "ASR.jsonl"),
                                                          "--input", "simulated"], "--seed", str(seed)),
                after=() if model == r.text_model else (model.parent.name,),
                info={"sets": ["test"], "simulation_seed": seed, **(info or {})}, models=(model,))


def simulation_cells(r: Recipe) -> list[Cell]:
    """The recipe's text-only training again with two other seeds (the yardstick: a one-seed change
    smaller than twice their spread is noise), then each simulation change. Every model also decodes
    posteriors simulated from the test text as it was trained (``<cell>_simulated``; stage 3's model:
    the gap part's first seed), so that each row shows how much harder speech is than its training input.
    Stage 3's model is the yardstick's first seed: the gap part's cells of it are planned here too."""
    seed = r.text_config["train"]["seed"]
    cells = [real_cell(r), simulated_cell(r, f"gap_simulated_{SIM_SEEDS[0]}", "gap", r.text_model, SIM_SEEDS[0])]
    trained = [trained_cell(r, f"sim_recipe_seed{seed + k}", "simulation",
                            with_changes(r.text_config, train={"seed": seed + k}), info={"seed": seed + k})
               for k in (1, 2)]
    for name, changes in SIMULATIONS.items():
        sim = dict(changes)
        if "wer" in sim:   # the schedule spans the run: 0 % at the start, 30 % at the end
            sim["wer"] = {**sim["wer"], "total_steps": r.text_config["train"]["max_steps"]}
        config = with_changes(r.text_config, simulation=sim)
        trained.append(trained_cell(r, name, "simulation", config, info={"setting": changes}))
        if name in SEEDED_SIMULATIONS:
            trained += other_seeds(r, name, "simulation", config)
    for c in trained:
        cells += [c, simulated_cell(r, f"{c.name}_simulated", "simulation", r.study / c.name / "model",
                                    SIM_SEEDS[0], info={"simulated_of": c.name})]
    return cells


def compression_cells(r: Recipe) -> list[Cell]:
    cells = []
    for name, sets in COMPRESSIONS.items():
        extra = [a for s in sets for a in ("--set", s)]
        out = r.study / name / "decode" / "test"
        cells.append(Cell(name, "compression", decode_and_score(
            r.text_model, out, ["--data", str(r.dump / "test" / "ASR.jsonl"), "--input", "audio"], *extra),
            info={"sets": ["test"], "setting": sets}, models=(r.text_model,)))
    return cells


def projector_cells(r: Recipe) -> list[Cell]:
    from tasu.projectors import PROJECTORS

    cells = []
    for proj in sorted(PROJECTORS):
        projector = {"name": proj, "options": MINI_PROJECTORS.get(proj, {})}
        text_name, audio_name = f"proj_{proj}_text", f"proj_{proj}_curriculum"
        if projector == r.text_config["projector"]:   # the recipe's own: stage 3's and stage 4's models
            for name, model, stage in ((text_name, r.text_model, "text-only"), (audio_name, r.audio_model, "curriculum")):
                cells.append(decoded_cell(r, name, "projectors", model, info={"projector": proj, "stage": stage}))
            continue
        text_config = with_changes(r.text_config, projector=projector)
        text = trained_cell(r, text_name, "projectors", text_config, info={"projector": proj, "stage": "text-only"})
        audio_config = with_changes(r.audio_config, projector=projector,
                                    train={"init_from": str(r.study / text_name / "model")})
        audio = trained_cell(r, audio_name, "projectors", audio_config, after=(text_name,),
                           info={"projector": proj, "stage": "curriculum"})
        cells += [text, audio]
        if proj in SEEDED_PROJECTORS:
            cells += other_seeds(r, text_name, "projectors", text_config,
                                 info={"projector": proj, "stage": "text-only"})
    return cells


def utterance_keys(r: Recipe) -> list[str]:
    """The utterances of stage 4's audio training (the keys of its first training file)."""
    first = Path(r.audio_config["data"]["train"][0]["path"])
    return sorted({json.loads(line)["key"] for line in first.read_text(encoding="utf-8").splitlines() if line.strip()})


def lowres_subset(r: Recipe, n: int, seed: int) -> list[dict]:
    """The audio training files restricted to ``n`` utterances (every task of each), drawn with ``seed``."""
    files = [Path(t["path"]) for t in r.audio_config["data"]["train"]]
    keys = utterance_keys(r)
    if n > len(keys):
        raise StudyError(f"{files[0]}: {len(keys)} utterances, fewer than the {n} the low-resource curve needs")
    chosen = set(random.Random(f"lowres/{seed}/{n}").sample(keys, n))
    out = []
    named_alike = len({f.name for f in files}) < len(files)   # two tasks' files of one name, in two folders
    for i, f in enumerate(files):
        dest = r.study / "data" / f"lowres_{n}" / (f"{i}-{f.name}" if named_alike else f.name)
        lines = [line for line in f.read_text(encoding="utf-8").splitlines()
                 if line.strip() and json.loads(line)["key"] in chosen]
        write_input(dest, "".join(line + "\n" for line in lines))
        out.append({"path": str(dest), "weight": 1.0})
    return out


def lowres_cells(r: Recipe, sizes: tuple[int, ...], seed: int, repeats: int = 2) -> list[Cell]:
    """Audio fine-tuning on ``n`` utterances for each size, from the text-only model (and ``repeats`` more
    training seeds of it, ``lowres_text_<n>_seed<k>``) and from scratch, and the curve's two ends."""
    cells = []
    sets = ("test", "test_ood")
    subsets = {n: lowres_subset(r, n, seed) for n in sizes}   # the same utterances for both starts
    for init, model in (("text-only", r.text_model), ("scratch", None)):
        tag = "text" if model else "scratch"
        for n in sizes:   # each start with stage 4's config for it: the curriculum's, the baseline's
            config = with_changes(r.audio_config if model else r.scratch_config, data={"train": subsets[n]},
                                  train={"init_from": str(model) if model else None})
            cells.append(trained_cell(r, f"lowres_{tag}_{n}", "lowres", config, sets=sets,
                                    info={"init": init, "utterances": n}))
            if model:
                cells += other_seeds(r, f"lowres_{tag}_{n}", "lowres", config, repeats, sets=sets,
                                     info={"init": init, "utterances": n})
        if model:   # no audio at all: the text-only model as stage 3 left it, the curve's starting point
            cells.append(decoded_cell(r, "lowres_text_0", "lowres", model, sets, {"init": init, "utterances": 0}))
        full = r.audio_model if model else r.scratch_model
        cells.append(decoded_cell(r, f"lowres_{tag}_all", "lowres", full, sets, {"init": init, "utterances": "all"}))
    return cells


def new_sentences(r: Recipe, n: int, seed: int) -> list[str]:
    """``n`` grammar sentences that no set of the recipe holds (not even the text-only text)."""
    from grammar import Grammar

    used = set()
    for text in r.data.glob("*/text"):
        used.update(line.split(maxsplit=1)[1].strip() for line in text.read_text(encoding="utf-8").splitlines()
                    if len(line.split(maxsplit=1)) == 2)
    fresh = [s for s, _ in Grammar().sample_unique(n + len(used), random.Random(f"textscale/{seed}"))
             if s not in used]
    if len(fresh) < n:
        raise StudyError(f"the grammar gave {len(fresh)} new sentences, fewer than {n}")
    return fresh[:n]


def textscale_cells(r: Recipe, sizes: tuple[int, ...], seed: int, repeats: int = 2) -> list[Cell]:
    """Text-only training on the first n of one draw of new sentences, for each size n: stage 3's training
    seed, and ``repeats`` more training seeds (``text_<n>_seed<k>``, the same sentences)."""
    sentences = new_sentences(r, max(sizes), seed)
    cells = []
    for n in sizes:   # nested: the first n of one draw
        path = r.study / "data" / f"text_{n}" / "ASR.text_only.jsonl"
        write_input(path, "".join(json.dumps({"key": f"studytext-{i:05d}", "task": "ASR", "target": s}) + "\n"
                                 for i, s in enumerate(sentences[:n])))
        config = with_changes(r.text_config, data={"train": [{"path": str(path), "weight": 1.0}]})
        cells.append(trained_cell(r, f"text_{n}", "textscale", config, info={"sentences": n}))
        cells += other_seeds(r, f"text_{n}", "textscale", config, repeats, info={"sentences": n})
    return cells


def learned_cells(r: Recipe, lowres_sizes: tuple[int, ...], seed: int) -> list[Cell]:
    """The learned simulator, its fidelity against the rules', and text-only training on its rows."""
    s = r.study
    simulator = s / "learned_simulator" / "simulator"
    sim_conf = s / "conf" / "learned_simulator.yaml"
    training = {"encoder": {"type": r.text_config["encoder"]["type"], "path": r.text_config["encoder"]["path"]},
                "compress": r.audio_config["compress"], "train": {"seed": r.text_config["train"]["seed"]}}
    write_text(sim_conf, yaml.safe_dump(training, sort_keys=False))
    cells = [Cell("learned_simulator", "learned", [[
        "tasu", "train-simulator", "--config", str(sim_conf), "--data", str(r.dump / "train" / "ASR.jsonl"),
        "--out", str(simulator), "--allow-pipes"]])]

    wer = {**LEARNED_WER, "total_steps": r.text_config["train"]["max_steps"]}
    sets = ("test", "test_ood")
    learned = {"name": "learned", "path": str(simulator), "wer": wer, "temperature": 0.5}
    learned_config = with_changes(r.text_config, simulation=learned)
    cells.append(trained_cell(r, "learned_text", "learned", learned_config, after=("learned_simulator",),
                              sets=sets, info={"simulator": "learned"}))
    # two more training seeds: it is compared with the recipe's three
    cells += other_seeds(r, "learned_text", "learned", learned_config, after=("learned_simulator",), sets=sets,
                         info={"simulator": "learned"})
    cells.append(trained_cell(r, "learned_rules_wer", "learned",
                              with_changes(r.text_config, simulation={"wer": wer, "confusion": "random"}),
                              sets=sets, info={"simulator": "rules, WER-controlled"}))

    # fidelity on dev: the rules as stage 3 trained on them; both conditioned ones at each utterance's real
    # rate; three simulation seeds each
    analyze = []
    for name, config, matched in FIDELITY_ROWS:
        config = r.text_model / "config.yaml" if config is None else s / "conf" / config
        for sim_seed in SIM_SEEDS:   # not ``seed``: that one draws the fine-tuning utterances below
            analyze.append(["tasu", "analyze", "--config", str(config), "--data", str(r.dump / "dev" / "ASR.jsonl"),
                            "--out", str(s / "learned_fidelity" / f"{name}_seed{sim_seed}"), "--seed", str(sim_seed),
                            "--device", "cpu", "--allow-pipes", *(["--match-wer"] if matched else [])])
    cells.append(Cell("learned_fidelity", "learned", analyze, after=("learned_simulator",), models=(simulator,)))

    # audio fine-tuning from the learned-simulator model on few utterances; the rules' model and scratch
    # on the same utterances are the low-resource curve's cells (planned here too when that part is not)
    for n in lowres_sizes:
        config = with_changes(r.audio_config, data={"train": lowres_subset(r, n, seed)},
                              train={"init_from": str(s / "learned_text" / "model")})
        cells.append(trained_cell(r, f"learned_lowres_{n}", "learned", config, after=("learned_text",), sets=sets,
                                  info={"utterances": n}))
    cells += [c for c in lowres_cells(r, lowres_sizes, seed, repeats=0) if c.name != "lowres_text_all"
              and c.name != "lowres_scratch_all"]
    return cells


WRITES = True   # False for ``plan`` and ``report``: they compare their cells' inputs with what is there, write none


def write_input(path: Path, text: str) -> None:
    """Write a data file that cells train on (a drawn subset, new sentences); refuse to replace one that
    holds another draw (another ``--seed``), which would mix cells trained on either."""
    if path.exists() and path.read_text(encoding="utf-8") != text:
        raise StudyError(f"{path} holds another draw than this plan's (another --seed?): remove it and the "
                         "cells trained on it to draw again")
    write_text(path, text)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically, unless ``path`` holds it already (a re-run leaves inputs untouched)."""
    if WRITES and not (path.exists() and path.read_text(encoding="utf-8") == text):
        write_atomic(path, text)


def plan(r: Recipe, parts: list[str], quick: bool, seed: int) -> list[Cell]:
    """The cells of ``parts`` (quick: the smallest sizes, for the tests)."""
    cells: list[Cell] = []
    for part in parts:
        if part == "gap":
            cells += gap_cells(r)
        elif part == "simulation":
            cells += simulation_cells(r)
        elif part == "compression":
            cells += compression_cells(r)
        elif part == "projectors":
            cells += projector_cells(r)
        elif part == "lowres":
            cells += lowres_cells(r, (10,) if quick else LOWRES_UTTS, seed, repeats=0 if quick else 2)
        elif part == "textscale":
            cells += textscale_cells(r, (100,) if quick else TEXT_SENTENCES, seed, repeats=0 if quick else 2)
        elif part == "learned":
            if not quick:   # see LEARNED_WER
                cells += learned_cells(r, LEARNED_LOWRES_UTTS, seed)
        else:
            raise StudyError(f"unknown part {part!r}; the parts: {', '.join(PARTS)}")
    unique: dict[str, Cell] = {}
    for c in cells:   # a cell two parts need (the low-resource curve's, for the learned part) runs once
        if c.name in unique and unique[c.name].commands != c.commands:
            raise StudyError(f"two different cells are named {c.name}")
        unique.setdefault(c.name, c)
    return list(unique.values())


# --- running cells: resumable, a few at a time ---------------------------------------------------------

def model_digest(model: Path) -> str | None:
    """What identifies a model that cells decode or start from (None while there is none): the SHA-256 of
    the weights ``--checkpoint best`` picks and of the run's config (its simulation is what ``--input
    simulated`` draws), or of a learned simulator's files. A model made again keeps its path, not these."""
    from tasu.model_io import MODEL_DIR, WEIGHTS, resolve_checkpoint   # (slow to import: only where needed)

    if (model / "model.safetensors").exists():   # a learned simulator (its checkpoints hold no model/)
        files = [model / "model.safetensors", model / "config.json"]
    else:
        try:
            files = [resolve_checkpoint(model, "best") / MODEL_DIR / WEIGHTS, model / "config.yaml"]
        except FileNotFoundError:   # not trained (yet), or removed
            return None
    return "+".join(file_sha256(f) for f in files) if all(f.exists() for f in files) else None


def done_record(cell_dir: Path) -> dict:
    """What a finished cell's ``done`` marker records (its code, machine and models); {} where it records none."""
    try:
        made = json.loads((cell_dir / "done").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return made if isinstance(made, dict) else {}


def changed(cell: Cell, study: Path) -> str | None:
    """Why ``exp/study/<cell>`` holds another cell than the plan's (None: it holds this one, or nothing yet):
    other commands ran there, or a model it decoded or started from was made again after it finished.
    Its results, reused, would be reported as the plan's: such a cell is refused, finished or not."""
    cell_dir = study / cell.name
    recorded = cell_dir / "commands.json"
    if recorded.exists() and recorded.read_text(encoding="utf-8") != commands_json(cell):
        return f"{cell_dir} was made by other commands (see its commands.json)"
    used = done_record(cell_dir).get("models")
    if not isinstance(used, dict):   # not finished, or finished before cells recorded their models
        return None
    for model in cell.models:
        if used.get(str(model)) != model_digest(model):
            return f"{cell_dir} used another {model} than there is now (made again after the cell finished)"
    return None


def commands_json(cell: Cell) -> str:
    return json.dumps(cell.commands, indent=1) + "\n"


def run_cell(cell: Cell, study: Path, env: dict[str, str]) -> None:
    """Run the cell's commands not yet done; a finished command leaves ``done.<i>`` behind."""
    cell_dir = study / cell.name
    cell_dir.mkdir(parents=True, exist_ok=True)
    why = changed(cell, study)
    if why:
        raise StudyError(f"{why}: remove it to run the cell again")
    write_text(cell_dir / "commands.json", commands_json(cell))
    with open(cell_dir / "log", "a", encoding="utf-8") as log:
        for i, argv in enumerate(cell.commands):
            marker = cell_dir / f"done.{i}"
            if marker.exists():
                continue
            argv = list(argv)
            if argv[:2] in (["tasu", "train"], ["tasu", "train-simulator"]):
                exp = Path(argv[argv.index("--exp-dir" if argv[1] == "train" else "--out") + 1])
                if (exp / "checkpoints" / "last").exists():
                    argv.append("--resume")   # killed mid-training: go on from its last checkpoint
            log.write(f"# {datetime.now():%Y-%m-%dT%H:%M:%S} {' '.join(argv)}\n")
            log.flush()
            start = time.time()
            rc = run_command(argv, log, env)
            if rc != 0:
                raise StudyError(f"{cell.name}: '{' '.join(argv[:2])}' failed (exit {rc}): see {cell_dir / 'log'}")
            marker.write_text(f"{time.time() - start:.1f}\n", encoding="utf-8")
    # which code and machine made the cell (a study grows over sessions, and its report says so), and
    # from which models (``changed``)
    write_text(cell_dir / "done", json.dumps({"commit": git_hash(HERE), "machine": machine(),
                                              "models": {str(m): model_digest(m) for m in cell.models}}) + "\n")


# The commands running now, so that a signal that ends ``run`` stops them too: a re-run (how the study
# resumes) would otherwise start the same cells beside them.
CHILDREN: set[subprocess.Popen] = set()
CHILDREN_LOCK = threading.Lock()
STOPPING = threading.Event()


def run_command(argv: list[str], log, env: dict[str, str]) -> int:
    """Run one command of a cell (in a worker thread), its output to ``log``; its exit status."""
    with CHILDREN_LOCK:
        if STOPPING.is_set():   # a signal came between two commands
            return -signal.SIGTERM
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        CHILDREN.add(child)
    try:
        return child.wait()
    finally:
        with CHILDREN_LOCK:
            CHILDREN.discard(child)


def stop_commands(signum: int, frame) -> None:
    """SIGTERM or SIGHUP: stop the running commands, as Ctrl-C (sent to them too) does, then end ``run``."""
    with CHILDREN_LOCK:
        STOPPING.set()
        for child in CHILDREN:
            child.terminate()
    raise Stopped(signum)


@contextmanager
def commands_stopped_on_signal():
    """``stop_commands`` on SIGTERM and SIGHUP while cells run (not where nohup or a batch system set the
    signal to be ignored)."""
    STOPPING.clear()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig, handler in handlers.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, stop_commands)
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def made_by(cell_dir: Path) -> tuple[str, str]:
    """(commit, machine) a finished cell's ``done`` marker records; "unknown" where it records none."""
    made = done_record(cell_dir)
    return str(made.get("commit", "unknown")), str(made.get("machine", "unknown"))


def refused(cells: list[Cell], study: Path) -> dict[str, str]:
    """The finished cells that the plan cannot reuse (``changed``), each with the line that says why."""
    return {c.name: f"{why}: remove it to run the cell again" for c in cells
            if (study / c.name / "done").exists() and (why := changed(c, study))}


def run_cells(cells: list[Cell], study: Path, jobs: int) -> list[str]:
    """Run every cell not done, ``jobs`` at a time, each after the cells it needs; the failures."""
    names = {c.name for c in cells}
    for c in cells:
        missing = [a for a in c.after if a not in names]
        if missing:
            raise StudyError(f"{c.name} needs {', '.join(missing)}, which is not planned")
    # the cores (as nproc counts them) shared between the jobs, as utils/run_local.sh does, unless set
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, len(os.sched_getaffinity(0)) // jobs))
    env = dict(os.environ, OMP_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false")
    failed = refused(cells, study)
    done = {c.name for c in cells if (study / c.name / "done").exists() and c.name not in failed}
    pending = [c for c in cells if c.name not in done and c.name not in failed]
    print(f"study: {len(cells)} cell{'s' * (len(cells) != 1)}, {len(done)} done, {len(pending)} to run, "
          + (f"{len(failed)} refused, " if failed else "") + f"{jobs} at a time", flush=True)
    for why in failed.values():
        print(f"study: {why}", flush=True)
    with commands_stopped_on_signal(), ThreadPoolExecutor(max_workers=jobs) as pool:
        running = {}
        while pending or running:
            for c in [c for c in pending if any(a in failed for a in c.after)]:
                failed[c.name] = f"{c.name}: not run, it needs {', '.join(a for a in c.after if a in failed)}"
                pending.remove(c)
            ready = [c for c in pending if all(a in done for a in c.after)]
            for c in ready[:max(0, jobs - len(running))]:
                pending.remove(c)
                running[pool.submit(run_cell, c, study, env)] = c
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                c = running.pop(fut)
                try:
                    fut.result()
                    done.add(c.name)
                    print(f"study: {datetime.now():%H:%M:%S} {c.name} done ({len(done)}/{len(cells)})", flush=True)
                except StudyError as e:
                    failed[c.name] = str(e)
                    print(f"study: {datetime.now():%H:%M:%S} {e}", flush=True)
    return list(failed.values())


# --- the report ------------------------------------------------------------------------------------------

def wer(cell_dir: Path, test_set: str = "test") -> float | None:
    """The cell's WER, None until the cell has finished: a score.json of a cell that stopped (or of an
    earlier attempt) is no result of it."""
    if not (cell_dir / "done").exists():
        return None
    return read_score(cell_dir / "decode" / test_set / "score.json")


def train_figures(model: Path) -> tuple[int | None, float | None]:
    """Trainable parameters and seconds per training step (the median over the log intervals, so that
    the validation passes and checkpoint writes between two log lines do not count)."""
    log = model / "train.log"
    if not log.exists():
        return None, None
    params, points = None, []
    for line in log.read_text(encoding="utf-8").splitlines():
        m = re.search(r"(\d+) trainable parameters", line)
        if m:
            params = int(m.group(1))
        m = re.match(r"(\S+ \S+),\d+ .* step (\d+) epoch \d+:", line)
        if m:
            points.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"), int(m.group(2))))
    rates = sorted((t2 - t1).total_seconds() / (s2 - s1) for (t1, s1), (t2, s2) in zip(points, points[1:]) if s2 > s1)
    return params, (rates[len(rates) // 2] if rates else None)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cell_seconds(cell_dir: Path) -> float:
    return sum(float(p.read_text() or 0) for p in cell_dir.glob("done.*"))


def wall_seconds(cell_dirs: list[Path]) -> float:
    """How long the study ran: the union of its commands' running spans. A command's span starts at its
    last start in the cell's log and lasts what its ``done.<i>`` marker recorded, so neither the time
    between two runs of the study nor an attempt that was killed (and resumed later) counts."""
    spans = []
    for d in cell_dirs:
        if not ((d / "log").exists() and (d / "commands.json").exists()):
            continue
        commands = [" ".join(argv) for argv in json.loads((d / "commands.json").read_text(encoding="utf-8"))]
        starts: dict[int, float] = {}
        for m in re.finditer(r"^# (\S+) (.*)$", (d / "log").read_text(encoding="utf-8"), re.M):
            for i, command in enumerate(commands):
                if m.group(2) == command or m.group(2).startswith(command + " "):   # " --resume"
                    starts[i] = datetime.fromisoformat(m.group(1)).timestamp()
        for i, start in starts.items():
            marker = d / f"done.{i}"
            if marker.exists():
                spans.append((start, start + float(marker.read_text() or 0)))
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def report(r: Recipe, cells: list[Cell], out: Path, plot: Path, command: str) -> None:
    by_name = {c.name: c for c in cells}
    s = r.study
    baseline = wer(s / "gap_real")
    finished: dict[tuple[str, str], list[float]] = {}   # (commit, machine) -> when each of its cells finished
    for c in cells:
        if (s / c.name / "done").exists():
            finished.setdefault(made_by(s / c.name), []).append((s / c.name / "done").stat().st_mtime)
    hosts = {host for _, host in finished}
    if len(finished) <= 1:
        (code, host), = finished or [(git_hash(HERE), machine())]
        made = f"Made by `{command}` (study code at git {code}) from a finished `./run.sh` (`{r.root}`), on {host}."
    else:   # a study that grew over sittings: which code (and machine) made how many cells, in order
        parts = [f"{len(times)} cell{'s' * (len(times) != 1)} by the study code at git {code}"
                 + (f" on {host}" if len(hosts) > 1 else "")
                 for (code, host), times in sorted(finished.items(), key=lambda item: min(item[1]))]
        made = (f"Made by `{command}` from a finished `./run.sh` (`{r.root}`)"
                + (f", on {next(iter(hosts))}" if len(hosts) == 1 else "")
                + f": {', '.join(parts)} (this report: git {git_hash(HERE)}).")
    lines = ["# The TASU study on egs/mini", "",
             made + " Every cell changes "
             "one thing of the recipe's run and keeps the rest (the encoder, the LLM, the text-only model, "
             "stage 3's and stage 4's configs, greedy decoding as stage 5). WER in %, on `test` (in-domain "
             "voices) unless a column says `test_ood` (unseen voices). Cells that involve a training are one "
             "seed (each takes minutes), except the rows that say three; cells "
             "that take under a minute and depend on a seed are the mean ± sd of three; decoding with fixed "
             "settings is deterministic.", ""]
    total = sum(cell_seconds(s / c.name) for c in cells)
    wall = wall_seconds([s / c.name for c in cells])
    lines += [f"Time: {wall / 60:.0f} min while cells ran (neither the pauses between runs nor attempts that "
              f"were killed and resumed count), {total / 60:.0f} min of commands in all (cells ran side by side).", ""]
    unfinished = [c.name for c in cells if not (s / c.name / "done").exists()]
    if unfinished:   # their cells show '-': say why, rather than leave a '-' to read as "not part of the study"
        lines += [f"Not finished ({len(unfinished)} of {len(cells)} cells; '-' in their rows): "
                  f"{', '.join(unfinished)}.", ""]

    if all(f"gap_simulated_{k}" in by_name for k in SIM_SEEDS):   # the gap part (the simulation part: 2 cells)
        sims = [wer(s / f"gap_simulated_{k}") for k in SIM_SEEDS]
        lines += ["## The text-to-audio gap", "",
                  "The text-only model (stage 3) decoding posteriors simulated from the test text with its own "
                  "training settings, against the encoder's real posteriors of the test audio.", "",
                  "| input | WER test |", "|---|---:|",
                  f"| simulated from the transcript (3 simulation seeds) | {fmt_cell(mean_sd(sims))} |",
                  f"| the encoder's, from the audio | {fmt(baseline)} |", ""]
        if (s / "gap_analyze" / "done").exists() and (s / "gap_analyze" / "analyze" / "summary.json").exists():
            lines += ["`tasu analyze` of dev (real rows after compression vs rows simulated from the same "
                      "transcripts; `exp/study/gap_analyze/analyze/`):", "", "```",
                      (s / "gap_analyze" / "analyze" / "report.txt").read_text(encoding="utf-8").rstrip(), "```", ""]

    sim = [c for c in cells if c.part == "simulation" and "simulated_of" not in c.info]
    baseline_sd = None
    if sim:
        recipe_rows = [c.name for c in sim if "seed" in c.info]
        seeds = [baseline] + [wer(s / n) for n in recipe_rows]
        mean, sd = mean_sd(seeds)
        baseline_sd = sd
        lines += ["## Simulation settings (text-only training, zero-shot)", "",
                  f"The recipe's simulation: {describe_simulation(r.text_config.get('simulation', {}))}. "
                  "Each row below the first trains the text-only model with one change, the same steps and "
                  "seed as stage 3. The first row is stage 3's training with three seeds: its spread is the "
                  "yardstick, and a change is called an effect only when it moves the WER by more than twice "
                  "that standard deviation (twice the pooled one for a row of three seeds too). Each model also "
                  "decodes posteriors simulated from the test text as it was trained (one simulation seed): the "
                  "last column is how much harder speech is than the model's own training input (recipe target: "
                  "at most 1.5).", "",
                  "| simulation | WER test | Δ vs the recipe's mean | beyond 2 sd? | WER on simulated test input "
                  "| speech / simulated |", "|---|---:|---:|---|---:|---:|",
                  f"| the recipe's (3 training seeds) | {fmt_cell(mean_sd(seeds))} | | | "
                  + simulated_columns(s, seeds, [f"gap_simulated_{SIM_SEEDS[0]}"] + [f"{n}_simulated" for n in recipe_rows])]
        for c in sim:
            if "seed" in c.info or "repeat_of" in c.info:
                continue
            names = with_repeats(c.name, sim)
            values = [wer(s / n) for n in names]
            m, sd_c = mean_sd(values)
            delta = None if m is None or mean is None else m - mean
            verdict = beyond_two_sd(delta, sd, sd_c)
            label = describe(c.info["setting"]) + (f" ({len(values)} training seeds)" if len(values) > 1 else "")
            lines.append(f"| {label} | {fmt_cell(mean_sd(values))} | {signed(delta)} | {verdict} | "
                         + simulated_columns(s, values, [f"{n}_simulated" for n in names]))
        lines.append("")

    comp = [c for c in cells if c.part == "compression"]
    if comp:
        lines += ["## Compression at inference (the text-only model on test audio)", "",
                  "| compression | WER test |", "|---|---:|"]
        for c in comp:
            lines.append(f"| {'PSD on, threshold 0.9, top-16 (the recipe)' if not c.info['setting'] else ', '.join(c.info['setting'])} "
                         f"| {fmt(wer(s / c.name))} |")
        lines.append("")

    proj = sorted({c.info["projector"] for c in cells if c.part == "projectors"})
    if proj:
        lines += ["## Projectors", "",
                  "Text-only training (stage 3's settings) and the curriculum (stage 4's audio fine-tuning from "
                  "it), each projector sized for this LLM (`MINI_PROJECTORS` in local/study.py), one seed "
                  "unless the zero-shot column says three (the recipe's projector: stage 3's model and the "
                  "simulation table's two other seeds). A projector differs from the recipe's when the "
                  "zero-shot means are more than twice their pooled sd apart (the recipe's sd for a one-seed "
                  "row). Seconds per step: the median over the training's log intervals, one thread beside "
                  "another job." + yardstick_note(baseline_sd), "",
                  "| projector | options | trainable parameters | s / text step | zero-shot WER | Δ vs the recipe's "
                  "| beyond 2 sd? | curriculum WER |", "|---|---|---:|---:|---:|---:|---|---:|"]
        own = next((p for p in proj if "model" in by_name[f"proj_{p}_text"].info), None)

        recipe_seeds = [c.name for c in sim if "seed" in c.info]   # the recipe's projector, other seeds

        def zero_shot(p: str) -> list[float | None]:
            """The zero-shot WERs of projector p over its training seeds."""
            return [wer(s / n) for n in ([f"proj_{p}_text"] + recipe_seeds if p == own
                                         else with_repeats(f"proj_{p}_text", cells))]

        m0, sd0 = mean_sd(zero_shot(own)) if own else (None, None)
        for p in proj:
            is_own = p == own
            params, step = train_figures(s / f"proj_{p}_text" / "model")
            if is_own:   # stage 3's model; its step time from a study cell, which ran beside another job as
                params, _ = train_figures(r.text_model)   # every other cell did (stage 3 ran alone)
                for name in recipe_seeds:
                    step = train_figures(s / name / "model")[1]
            values = zero_shot(p)
            m, sd = mean_sd(values)
            seeds = f" ({len(values)} training seeds)" if len(values) > 1 else ""
            delta = None if is_own or m is None or m0 is None else m - m0
            compared = "| |" if is_own else f"{signed(delta)} | {beyond_two_sd(delta, sd0, sd)} |"
            lines.append(f"| {p} | {describe(MINI_PROJECTORS.get(p, {}))} | {params if params is not None else '-'} | "
                         f"{fmt(step, 2)} | {fmt_cell((m, sd))}{seeds} | {compared} "
                         f"{fmt(wer(s / f'proj_{p}_curriculum'))} |")
        lines.append("")

    low = [c for c in cells if c.part == "lowres"]
    if low:
        sizes = [c.info["utterances"] for c in low if c.info["init"] == "scratch"]

        def point(tag: str, n, test_set: str) -> tuple[float | None, float | None]:
            """One point of the curve: the mean and sd over the cell's training seeds."""
            return mean_sd([wer(s / name, test_set) for name in with_repeats(f"lowres_{tag}_{n}", low)])

        lines += ["## How much audio the text-only stage saves", "",
                  "Audio fine-tuning (stage 4's config and steps) on a random subset of the training "
                  "utterances, from the text-only model and from scratch. `all` is stage 4's own pair; 0 is the "
                  "text-only model with no audio at all (the dashed line of the plot). A mean ± sd is over "
                  "training seeds on the same utterances (the recipe's text-only model itself moves by the "
                  "simulation table's sd from seed to seed); other points are one seed.", "",
                  f"![low-resource curve]({Path(os.path.relpath(plot, out.parent)).as_posix()})", "",
                  "| audio utterances | from text-only: test | from scratch: test | from text-only: test_ood | from scratch: test_ood |",
                  "|---:|---:|---:|---:|---:|"]
        if "lowres_text_0" in by_name:
            lines.append("| 0 | " + " | ".join([fmt(wer(s / "lowres_text_0", "test")), "-",
                                                  fmt(wer(s / "lowres_text_0", "test_ood")), "-"]) + " |")
        for n in sizes:
            lines.append(f"| {n} | " + " | ".join(fmt_cell(point(tag, n, t)) for t in ("test", "test_ood")
                                                  for tag in ("text", "scratch")) + " |")
        lines.append("")
        lowres_plot(sizes, len(utterance_keys(r)), point, wer(s / "lowres_text_0", "test"),
                    wer(s / "lowres_text_0", "test_ood"), plot)

    text = [c for c in cells if c.part == "textscale" and "repeat_of" not in c.info]
    if text:
        rows = [(c.info["sentences"], [wer(s / n) for n in with_repeats(c.name, cells)]) for c in text]
        rows = [(n, mean_sd(values), len(values)) for n, values in rows]
        smallest, (m0, sd0), _ = rows[0]
        lines += ["## Text scaling (text-only training on new sentences, ASR text only)", "",
                  "New grammar sentences that no set of the recipe holds, nested (the 1k are the first of the "
                  "4k); the same steps as stage 3, so fewer sentences are seen more often. Not comparable "
                  "with stage 3's model, which also learns the scenario task. Each size is trained with the "
                  "training seeds its row says (the same sentences); a size differs from the smallest when "
                  "their means are more than twice their pooled sd apart (one seed each: the recipe's "
                  "yardstick)." + yardstick_note(baseline_sd), "",
                  f"| sentences | zero-shot WER test | Δ vs {smallest} | beyond 2 sd? |", "|---:|---:|---:|---|"]
        for n, (m, sd), seeds in rows:
            label = f"{n}" + (f" ({seeds} training seeds)" if seeds > 1 else "")
            if n == smallest:
                lines.append(f"| {label} | {fmt_cell((m, sd))} | | |")
                continue
            delta = None if m is None or m0 is None else m - m0
            verdict = beyond_two_sd(delta, sd0 if sd0 is not None else baseline_sd, sd)
            lines.append(f"| {label} | {fmt_cell((m, sd))} | {signed(delta)} | {verdict} |")
        lines.append("")

    if any(c.part == "learned" for c in cells):
        lines += learned_report(r, cells, [c.info["utterances"] for c in cells if c.name.startswith("learned_lowres_")],
                                baseline_sd)

    lines += ["## The commands", "",
              "Every cell's commands, as run (from egs/mini; `--resume` is added to a training that was "
              "killed). The configs are stage 3's or stage 4's `config.yaml` with the change, in "
              "`exp/study/conf/`.", "", "```"]
    for c in cells:
        lines += [f"# {c.name}"] + [" ".join(a) for a in c.commands]
    lines += ["```", ""]
    write_atomic(out, "\n".join(lines))


def learned_report(r: Recipe, cells: list[Cell], sizes: list[int], baseline_sd: float | None) -> list[str]:
    """The learned part's section: WER control, fidelity on dev, and text-only training on its rows."""
    s = r.study
    sim_dir = s / "learned_simulator" / "simulator"
    lines = ["## The learned simulator (TASU2)", "",
             "A small Transformer encoder-decoder (`tasu train-simulator`, `exp/study/learned_simulator/`) learns "
             "to write the encoder's own compressed posterior rows for a transcript and a target WER, from the "
             "encoder's rows of the training audio, clean and degraded (noise, low-pass, time masks), each "
             "labelled with its measured token error rate. No dev or test audio is seen.", ""]
    report_file, config_file = sim_dir / "report.json", sim_dir / "config.json"
    if report_file.exists() and config_file.exists():
        rep, cfg = json.loads(report_file.read_text()), json.loads(config_file.read_text())
        lo, hi = rep["wer_range"]
        off = [100 * (row["simulated"] - row["asked"]) for row in rep["rows"]]
        within = all(abs(o) <= 3.0 for o in off) and any(row["asked"] <= 0.0 for row in rep["rows"]) \
            and any(row["asked"] >= 0.3 for row in rep["rows"])
        lines += [f"Sizes: d_model {cfg['d_model']}, {cfg['encoder_layers']} + {cfg['decoder_layers']} layers, "
                  f"{cfg['heads']} heads, top-{cfg['topk']} rows. The teacher's token error rates span "
                  f"{100 * lo:.1f}-{100 * hi:.1f} % (mean {100 * rep['teacher_mean_ter']:.1f} %), the range the "
                  "simulator serves.", "",
                  f"**WER control**: the token error rate of its rows (each row's top-1 against the transcript), "
                  f"sampled at temperature {rep.get('temperature', 0.5):g}, at each asked WER, on {rep['utterances']} "
                  "training transcripts" + (" other than those its calibration was measured on (the asked "
                  "WER is read through that curve: `tasu/simulate/learned.py`)" if rep.get("held_out") else "") +
                  f"; the target is within ±3 points over 0-30 %: **{'met' if within else 'missed'}**.", "",
                  "| asked WER % | simulated token error rate % | off by (points) |", "|---:|---:|---:|"]
        lines += [f"| {100 * row['asked']:.0f} | {100 * row['simulated']:.1f} | {o:+.1f} |"
                  for row, o in zip(rep["rows"], off)]
        lines.append("")

    summaries = {name: [s / "learned_fidelity" / f"{name}_seed{k}" / "summary.json" for k in SIM_SEEDS]
                 for name, _, _ in FIDELITY_ROWS}
    if (s / "learned_fidelity" / "done").exists() and any(f.exists() for files in summaries.values() for f in files):
        lines += ["**Fidelity on dev** (`tasu analyze`): the encoder's real compressed rows of the dev audio "
                  "against rows simulated from the same transcripts. The conditioned simulators are asked, "
                  "utterance by utterance, for the real rows' token error rate (`--match-wer`), so they are "
                  "compared on *how* they err; the rules of stage 3 run as trained. The row divergence is the "
                  "fidelity measure (README, `tasu analyze`): the real and simulated rows aligned, each paired "
                  "row counting its Jensen-Shannon divergence, each unpaired one 1 bit; 0 = the same rows. "
                  f"Each simulated row: the mean ± sd over {len(SIM_SEEDS)} simulation seeds.", "",
                  "| rows | rows per token | blank rows % | token error rate % | top-1 agreement % | "
                  "JS divergence, paired rows (bits) | **row divergence (bits)** |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        real = None
        rows = []
        labels = {"rules_iid": "simulated: rules, i.i.d. (stage 3's)",
                  "rules_wer": "simulated: rules, WER-controlled, matched WER",
                  "learned": "simulated: learned, matched WER"}
        for name, files in summaries.items():
            runs = [json.loads(f.read_text()) for f in files if f.exists()]
            if not runs:
                continue
            real = real or runs[0]["real"]

            def over_seeds(get, digits=1, scale=1.0):
                m, sd = mean_sd([None if get(x) is None else scale * get(x) for x in runs])
                return "-" if m is None else f"{m:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")

            rows.append(f"| {labels[name]} | {over_seeds(lambda x: x['simulated']['rows_per_token'], 2)} | "
                        f"{over_seeds(lambda x: x['simulated']['blank_row_rate'], scale=100)} | "
                        f"{over_seeds(lambda x: x['simulated']['token_error_rate'], scale=100)} | "
                        f"{over_seeds(lambda x: x['top1_agreement'], scale=100)} | "
                        f"{over_seeds(lambda x: x['mean_js_divergence_bits'], 3)} | "
                        f"**{over_seeds(lambda x: x['row_divergence_bits'], 3)}** |")
        lines.append(f"| real: the encoder's, dev audio | {fmt(real['rows_per_token'], 2)} | "
                     f"{fmt(pct(real['blank_row_rate']))} | {fmt(pct(real['token_error_rate']))} | - | - | - |")
        lines += rows + [""]

    def cell(name: str, test_set: str) -> str:
        return fmt_cell(mean_sd([wer(s / n, test_set) for n in with_repeats(name, cells)]))

    head = "| text-only training on | zero-shot: test | zero-shot: test_ood |"
    rule = "|---|---:|---:|"
    for n in sizes:
        head += f" {n} utts: test | {n} utts: test_ood |"
        rule += "---:|---:|"
    lines += ["**Text-only training on each simulation** (stage 3's config and steps, one seed unless a cell is a "
              "mean ± sd over training seeds; both conditioned "
              f"ones follow the WER schedule {describe(LEARNED_WER)} over the run), decoded zero-shot and after "
              "audio fine-tuning (stage 4's config and steps) on a few training utterances, the same "
              "utterances as the low-resource curve's." + yardstick_note(baseline_sd), "", head, rule]
    for label, zero, tuned in (("rules, i.i.d. (stage 3's model)", "lowres_text_0", "lowres_text_{n}"),
                               ("rules, WER-controlled", "learned_rules_wer", None),
                               ("the learned simulator", "learned_text", "learned_lowres_{n}"),
                               ("nothing (audio fine-tuning from scratch)", None, "lowres_scratch_{n}")):
        row = f"| {label} | " + " | ".join(cell(zero, t) if zero else "-" for t in ("test", "test_ood"))
        for n in sizes:
            row += " | " + " | ".join(cell(tuned.format(n=n), t) if tuned else "-" for t in ("test", "test_ood"))
        lines.append(row + " |")
    lines.append("")
    return lines


def simulated_columns(study: Path, speech: list[float | None], simulated_cells: list[str]) -> str:
    """The last two columns of a simulation row: WER on simulated test input, and speech / simulated."""
    simulated = [wer(study / n) for n in simulated_cells]
    m_speech, m_sim = mean_sd(speech)[0], mean_sd(simulated)[0]
    ratio = None if m_speech is None or not m_sim else m_speech / m_sim
    return f"{fmt_cell(mean_sd(simulated))} | {fmt(ratio, 2)} |"


def pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def with_repeats(name: str, cells: list[Cell]) -> list[str]:
    """Cell ``name`` and the cells that repeat it with other training seeds."""
    return [name] + [c.name for c in cells if c.info.get("repeat_of") == name]


def signed(delta: float | None) -> str:
    """A difference to one decimal with its sign ("+0.0", never "-0.0"); "-" when unknown."""
    return "-" if delta is None else f"{round(delta, 1) + 0.0:+.1f}"


def beyond_two_sd(delta: float | None, sd_ref: float | None, sd_row: float | None = None) -> str:
    """Whether a difference of means is an effect: more than twice the pooled sd of the reference row and
    the row compared (the reference's alone for a one-seed row); "-" when the difference or the
    reference's sd is unknown."""
    if delta is None or sd_ref is None:
        return "-"
    sd = sd_ref if sd_row is None else math.sqrt((sd_ref ** 2 + sd_row ** 2) / 2)
    return "**yes**" if abs(delta) > 2 * sd else "no"


def yardstick_note(sd: float | None) -> str:
    if sd is None:
        return ""
    return (f" The recipe's text-only training moves its zero-shot WER by {sd:.1f} (sd) from seed to seed "
            f"(the simulation table): a one-seed zero-shot difference under {2 * sd:.1f} is no evidence.")


def describe_simulation(sim: dict) -> str:
    """The text-only config's simulation section in words (the keys the study changes)."""
    lo, hi = sim.get("alpha", [0.0, 0.0])
    words = [f"alpha ~ U({lo:g}, {hi:g}) smoothing", f"{100 * sim.get('drop_prob', 0.0):g} % of the tokens dropped i.i.d."]
    if sim.get("insert_ratio"):
        words.append(f"after each token Poisson({sim['insert_ratio']:g}) inserted rows (a repeat or a blank row)")
    if sim.get("wer"):
        words.append(f"a WER schedule {describe(sim['wer'])}")
    return ", ".join(words)


def describe(setting) -> str:
    if isinstance(setting, dict):
        return ", ".join(f"{k} {describe(v)}" for k, v in setting.items())
    if isinstance(setting, list):
        return "[" + ", ".join(describe(v) for v in setting) + "]"
    return str(setting)


def lowres_plot(sizes: list, total: int, point, zero_test: float | None, zero_ood: float | None,
                out: Path) -> None:
    """WER against the audio utterances fine-tuned on (``total`` for all): from text-only vs from scratch,
    test and test_ood; ``point(tag, n, test_set)`` gives each point's mean and sd (error bars where there
    is one), ``zero_*`` the text-only model's own WER (the dashed lines)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    seeded = False
    for ax, test_set, zero in zip(axes, ("test", "test_ood"), (zero_test, zero_ood)):
        for tag, label, colour in (("text", "from the text-only model", "tab:green"),
                                   ("scratch", "from scratch", "tab:grey")):
            xs, ys, sds = [], [], []
            for n in sizes:
                m, sd = point(tag, n, test_set)
                if m is None:
                    continue
                xs.append(total if n == "all" else n)
                ys.append(m)
                sds.append(sd or 0.0)
                seeded |= sd is not None
            ax.errorbar(xs, ys, yerr=sds, marker="o", label=label, color=colour, capsize=3)
        if zero is not None:
            ax.axhline(zero, color="tab:green", linestyle="--", linewidth=1, label="the text-only model, no audio")
        ax.set(xscale="log", xlabel="audio utterances in fine-tuning", title=f"WER (%) on {test_set}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("WER (%)")
    axes[0].legend()
    seeds = "error bars: sd over training seeds; points without one are one seed" if seeded else "one seed a point"
    fig.suptitle(f"audio fine-tuning on a subset of the training utterances, the same steps ({seeds})", fontsize=10)
    fig.tight_layout()
    with atomic_replace(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def main() -> int:
    # study.sh starts this in the background, where SIGINT is ignored (and so in every training started
    # here): Ctrl-C is to stop them all, as run in front
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["plan", "run", "report"],
                        help="plan: print the cells and their commands; run: run those not done; report: STUDY.md")
    parser.add_argument("--workdir", default=".", help="the finished run's --workdir (default: .)")
    parser.add_argument("--parts", default=" ".join(PARTS), help=f"which parts (default: all: {' '.join(PARTS)})")
    parser.add_argument("--jobs", type=int, default=2, help="cells at a time, one thread each (default: 2)")
    parser.add_argument("--seed", type=int, default=1, help="draws the low-resource subsets and the new sentences")
    parser.add_argument("--quick", action="store_true", help="the smallest sizes only (tests)")
    parser.add_argument("--out", default="STUDY.md", help="report: the Markdown file (default: STUDY.md)")
    parser.add_argument("--plot", default="STUDY.png", help="report: the low-resource plot (default: STUDY.png)")
    args = parser.parse_args()
    if not args.parts.split():   # nothing planned: a report of it replaced STUDY.md with an empty one
        parser.error(f"--parts is empty: name some of {' '.join(PARTS)}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, not {args.jobs}")
    global WRITES
    WRITES = args.action == "run"   # a plan with another --seed wrote its draws, and `run` then refused them
    lock = None
    try:
        recipe = Recipe(Path(args.workdir))
        if args.action == "run":   # one at a time: a second ran the first's cells again, beside them
            lock = DirLock(recipe.study, "local/study.py run").acquire()
        if args.quick and "learned" in args.parts.split():
            print("study: quick mode has no learned part (its encoder errs on every recording)", file=sys.stderr)
        cells = plan(recipe, args.parts.split(), args.quick, args.seed)
        stale = refused(cells, recipe.study)
        if args.action == "plan":
            for c in cells:
                state = "to run" if not (recipe.study / c.name / "done").exists() else \
                    "done" if c.name not in stale else "refused: " + stale[c.name]
                print(f"# {c.name} ({c.part}; {state}{'; after ' + ', '.join(c.after) if c.after else ''})")
                print("\n".join(" ".join(a) for a in c.commands))
        elif args.action == "run":
            failures = run_cells(cells, recipe.study, args.jobs)
            if failures:
                raise StudyError(f"{len(failures)} cell(s) failed; first: {failures[0]}")
        else:
            if not any((recipe.study / c.name / "done").exists() for c in cells):   # '-' in every cell, exit 0
                raise StudyError(f"no cell of --parts '{args.parts}' has finished in {recipe.study}: run them "
                                 f"first (local/study.sh); {args.out} is left as it is")
            if stale:   # its numbers are another cell's than the commands the report would list
                raise StudyError(f"{len(stale)} finished cell(s) are not the plan's; first: "
                                 f"{next(iter(stale.values()))}; {args.out} is left as it is")
            command = "local/study.sh" + (f" --workdir {args.workdir}" if args.workdir != "." else "")
            if set(args.parts.split()) != set(PARTS):   # a study of some parts says which
                command += f' --parts "{args.parts}"'
            report(recipe, cells, Path(args.out), Path(args.plot), command)
    except (StudyError, ReportError, LockError, OSError, ValueError) as e:   # ReportError: a score.json
        print(f"study.py: error: {e}", file=sys.stderr)
        return 1
    except Stopped as e:
        print(f"study.py: stopped by {e}, and so were the commands it ran: run it again to resume", file=sys.stderr)
        return 128 + e.signum
    finally:
        if lock is not None:
            lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
