"""egs/mini's study driver (local/study.py) on a made-up finished run: what each cell changes, resuming,
failures, and the report. The real commands run in test_mini_recipe (quick mode)."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from fixtures import score_json
from tasu.lock import DirLock

MINI = Path(__file__).resolve().parents[1] / "egs" / "mini"
sys.path.insert(0, str(MINI / "local"))
import study  # noqa: E402

TEXT_CONFIG = {
    "encoder": {"type": "small_ctc", "path": "exp/encoder"},
    "projector": {"name": "linear-silu", "options": {"hidden": 512}},
    "simulation": {"alpha": [0.0, 0.1], "drop_prob": 0.05, "insert_ratio": 0.3, "wer": None, "confusion": "random"},
    "data": {"train": [{"path": "dump/train/ASR.text_only.jsonl", "weight": 1.0}], "mode": "text"},
    "train": {"seed": 1, "max_steps": 400, "init_from": None},
}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """The parts of a finished ./run.sh that the study reads."""
    root = tmp_path / "run"
    post = root / "dump" / "posteriors" / "abc"
    for task in ("ASR", "SLU_scenario"):
        records = [{"key": f"u{i:04d}", "task": task, "target": f"sentence {i}", "posteriors": f"p.ark:{i}"}
                   for i in range(1200)]
        write(post / "train" / f"{task}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    for test_set in ("test", "test_ood"):
        write(post / test_set / "ASR.jsonl", "")
        write(root / "dump" / test_set / "ASR.jsonl", "")
    write(root / "data" / "train" / "text", "u000 what time is it\nu001 set an alarm for six am\n")
    audio = {**TEXT_CONFIG, "compress": {"enabled": True, "threshold": 0.9, "topk": 16},
             "data": {"mode": "posteriors", "train": [
        {"path": str(post / "train" / "ASR.jsonl"), "weight": 1.0},
        {"path": str(post / "train" / "SLU_scenario.jsonl"), "weight": 1.0}]},
        "train": {"seed": 1, "max_steps": 200, "init_from": str(root / "exp" / "tasu_train_text")}}
    for name, config in (("tasu_train_text", TEXT_CONFIG), ("tasu_train_text_then_train_audio_sft", audio),
                         ("train_audio_sft_from_scratch", {**audio, "train": {**audio["train"], "init_from": None}})):
        write(root / "exp" / name / "config.yaml", yaml.safe_dump(config))
    return root


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def conf(cell: study.Cell) -> dict:
    return yaml.safe_load(Path(cell.commands[0][cell.commands[0].index("--config") + 1]).read_text())


def test_every_cell_changes_one_thing_of_the_run(run_dir):
    r = study.Recipe(run_dir)
    cells = {c.name: c for c in study.plan(r, list(study.PARTS), quick=False, seed=1)}
    assert len(cells) == len(study.plan(r, list(study.PARTS), quick=False, seed=1))   # names are unique

    # simulation: only the simulation section differs; a WER schedule spans the whole run
    for name, changes in study.SIMULATIONS.items():
        config = conf(cells[name])
        assert {k: v for k, v in config.items() if k != "simulation"} == \
               {k: v for k, v in TEXT_CONFIG.items() if k != "simulation"}
    assert conf(cells["sim_wer_spelling"])["simulation"]["wer"] == {"start": [0.0, 0.0], "end": [0.3, 0.3],
                                                                    "total_steps": 400}
    assert conf(cells["sim_drop_0"])["simulation"]["drop_prob"] == 0.0
    # decoding reads the posterior dump of stages 4-5 when there is one; compression needs the audio
    assert cells["sim_drop_0"].commands[1][cells["sim_drop_0"].commands[1].index("--input") + 1] == "posteriors"
    assert "compress.topk=1" in cells["psd_top1"].commands[0] and "audio" in cells["psd_top1"].commands[0]
    assert "--seed" in cells["gap_simulated_2"].commands[0]
    # each text-only model of the part also decodes simulated test input, once it is trained
    simulated = cells["sim_drop_0_simulated"]
    assert simulated.after == ("sim_drop_0",)
    decode = simulated.commands[0]
    assert decode[decode.index("--exp") + 1].endswith("study/sim_drop_0/model")
    assert decode[decode.index("--input") + 1] == "simulated" and decode[decode.index("--data") + 1].endswith(
        "dump/test/ASR.jsonl")
    # stage 3's model: the gap part's first simulation seed, planned by this part alone too
    alone = {c.name: c for c in study.plan(r, ["simulation"], quick=False, seed=1)}
    assert alone["gap_simulated_1"].commands == cells["gap_simulated_1"].commands
    assert alone["gap_real"].commands == cells["gap_real"].commands   # the yardstick's first seed
    assert alone["gap_simulated_1"].after == ()

    # projectors: the recipe's own is decoded, not trained again; each other one is trained, then its curriculum
    assert [c[:2] for c in cells["proj_linear-silu_text"].commands] == [["tasu", "decode"], ["tasu", "score"]]
    assert cells["proj_qformer_curriculum"].after == ("proj_qformer_text",)
    curriculum = conf(cells["proj_qformer_curriculum"])
    assert curriculum["projector"]["name"] == "qformer"
    for p in study.SEEDED_PROJECTORS:   # text-only again with two more training seeds; nothing else changes
        first = conf(cells[f"proj_{p}_text"])
        for k in (2, 3):
            again = conf(cells[f"proj_{p}_text_seed{k}"])
            assert again["train"] == {**first["train"], "seed": k} and again["projector"] == first["projector"]
    assert "proj_qformer_text_seed2" not in cells and "proj_linear-silu_text_seed2" not in cells
    assert curriculum["train"]["init_from"].endswith("study/proj_qformer_text/model")

    # low-resource: n utterances with every task of each; from the text-only model or from scratch
    for n in study.LOWRES_UTTS[:2]:
        files = [Path(t["path"]) for t in conf(cells[f"lowres_text_{n}"])["data"]["train"]]
        keys = [{json.loads(line)["key"] for line in f.read_text().splitlines()} for f in files]
        assert len(keys[0]) == n and keys[0] == keys[1]
        assert conf(cells[f"lowres_scratch_{n}"])["train"]["init_from"] is None
        assert conf(cells[f"lowres_text_{n}"])["train"]["init_from"].endswith("tasu_train_text")
    for n in study.LOWRES_UTTS:   # from the text-only model: two more training seeds on the same utterances
        first = conf(cells[f"lowres_text_{n}"])
        for k in (2, 3):
            assert conf(cells[f"lowres_text_{n}_seed{k}"]) == {**first, "train": {**first["train"], "seed": k}}
        assert f"lowres_scratch_{n}_seed2" not in cells
    assert not [c for c in study.plan(r, ["learned"], quick=False, seed=1) if c.name.startswith("lowres_") and
                "_seed" in c.name]   # the learned part borrows the curve's first seed alone
    zero = cells["lowres_text_0"]   # the curve's start: the text-only model decoded as it is, no training
    assert [c[:2] for c in zero.commands] == [["tasu", "decode"], ["tasu", "score"]] * 2
    assert zero.commands[0][zero.commands[0].index("--exp") + 1].endswith("exp/tasu_train_text")
    with pytest.raises(study.StudyError, match="1200 utterances, fewer than the 2000"):
        study.lowres_subset(r, 2000, seed=1)   # this made-up run has 1200 utterances

    # text scaling: new sentences, nested
    texts = [Path(conf(cells[f"text_{n}"])["data"]["train"][0]["path"]).read_text().splitlines()
             for n in study.TEXT_SENTENCES]
    assert [len(t) for t in texts] == list(study.TEXT_SENTENCES) and texts[1][:1000] == texts[0]
    sentences = [json.loads(line)["target"] for line in texts[2]]
    assert len(set(sentences)) == len(sentences) and "what time is it" not in sentences
    for k in (2, 3):   # each size again with two more training seeds, on the same sentences
        again = conf(cells[f"text_4000_seed{k}"])
        assert again["train"]["seed"] == k and again["data"] == conf(cells["text_4000"])["data"]
        assert {x: v for x, v in again["train"].items() if x != "seed"} == \
               {x: v for x, v in conf(cells["text_4000"])["train"].items() if x != "seed"}
    assert not [c for c in study.plan(r, ["textscale"], quick=True, seed=1) if "seed" in c.name]   # quick: one


def test_the_learned_part_trains_a_simulator_then_text_only_on_its_rows(run_dir):
    r = study.Recipe(run_dir)
    cells = {c.name: c for c in study.plan(r, ["learned"], quick=False, seed=1)}
    train_sim = cells["learned_simulator"].commands[0]
    assert train_sim[:2] == ["tasu", "train-simulator"]
    assert train_sim[train_sim.index("--data") + 1].endswith("dump/train/ASR.jsonl")   # training audio only
    sim_conf = yaml.safe_load(Path(train_sim[train_sim.index("--config") + 1]).read_text())
    assert sim_conf["encoder"] == TEXT_CONFIG["encoder"] and sim_conf["compress"]["topk"] == 16
    simulator = train_sim[train_sim.index("--out") + 1]

    # text-only training on the learned simulator's rows and on WER-controlled rules: the same schedule
    learned, rules = conf(cells["learned_text"]), conf(cells["learned_rules_wer"])
    assert cells["learned_text"].after == ("learned_simulator",)
    assert learned["simulation"]["name"] == "learned" and learned["simulation"]["path"] == simulator
    assert learned["simulation"]["wer"] == rules["simulation"]["wer"] == {**study.LEARNED_WER, "total_steps": 400}
    assert rules["simulation"].get("name", "rules") == "rules"
    for config in (learned, rules):
        assert {k: v for k, v in config.items() if k != "simulation"} == \
               {k: v for k, v in TEXT_CONFIG.items() if k != "simulation"}

    # fidelity: the rules as stage 3 trained on them, the conditioned ones at each utterance's real rate
    analyze = cells["learned_fidelity"].commands
    assert [("--match-wer" in a, a[a.index("--config") + 1].split("/")[-1], a[a.index("--seed") + 1])
            for a in analyze] == [(matched, config, str(seed))
                                  for matched, config in ((False, "config.yaml"), (True, "learned_rules_wer.yaml"),
                                                          (True, "learned_text.yaml")) for seed in study.SIM_SEEDS]
    assert all(a[a.index("--data") + 1].endswith("dump/dev/ASR.jsonl") for a in analyze)

    # few-utterance fine-tuning from the learned-simulator model, beside the curve's cells on the same utterances
    for n in study.LEARNED_LOWRES_UTTS:
        tuned = conf(cells[f"learned_lowres_{n}"])
        assert tuned["train"]["init_from"].endswith("study/learned_text/model")
        assert tuned["data"]["train"] == conf(cells[f"lowres_text_{n}"])["data"]["train"]
        assert f"lowres_scratch_{n}" in cells
    assert "lowres_text_0" in cells and "lowres_text_all" not in cells

    assert study.plan(r, ["learned"], quick=True, seed=1) == []   # quick mode: no learned part

    # planned with the low-resource part, the cells both need appear once
    both = study.plan(r, ["lowres", "learned"], quick=False, seed=1)
    assert len({c.name for c in both}) == len(both)
    assert {c.name for c in both} == {c.name for c in study.plan(r, ["lowres"], quick=False, seed=1)} | set(cells)

    # the study's --seed draws those utterances, whatever the training seed (here 1)
    def keys(cell: study.Cell) -> set[str]:
        first = Path(conf(cell)["data"]["train"][0]["path"])
        return {json.loads(line)["key"] for line in first.read_text().splitlines()}

    with pytest.raises(study.StudyError, match="lowres_50/ASR.jsonl holds another draw"):
        study.plan(r, ["learned"], quick=False, seed=5)   # cells of the seed-1 draw are not mixed with others
    shutil.rmtree(r.study / "data")
    drawn = keys({c.name: c for c in study.plan(r, ["learned"], quick=False, seed=5)}["learned_lowres_50"])
    assert drawn == keys({c.name: c for c in study.plan(r, ["lowres"], quick=False, seed=5)}["lowres_text_50"])
    assert drawn == set(random.Random("lowres/5/50").sample(study.utterance_keys(r), 50))


def test_the_learned_report_tables_wer_control_fidelity_and_training(run_dir, tmp_path):
    r = study.Recipe(run_dir)
    cells = study.plan(r, ["learned"], quick=False, seed=1)
    for i, c in enumerate(cells):
        for test_set in c.info.get("sets", []):
            write(r.study / c.name / "decode" / test_set / "score.json", score_json(10.0 + i))
        write(r.study / c.name / "done", json.dumps({"commit": "abc1234", "machine": "machine A"}))
    sim = r.study / "learned_simulator" / "simulator"
    write(sim / "config.json", json.dumps({"d_model": 128, "encoder_layers": 2, "decoder_layers": 2, "heads": 4,
                                           "topk": 10}))
    asked = [0.0, 0.1, 0.2, 0.3]
    write(sim / "report.json", json.dumps({"utterances": 200, "wer_range": [0.0, 0.9], "teacher_mean_ter": 0.25,
                                           "rows": [{"asked": a, "simulated": a + 0.02} for a in asked]}))
    side = {"rows_per_token": 1.2, "blank_row_rate": 0.1, "token_error_rate": 0.3}
    for k, name in enumerate(("rules_iid", "rules_wer", "learned")):
        for seed in study.SIM_SEEDS:   # row divergence 0.6, 0.5, 0.4 (+ 0.01 x seed: sd 0.01)
            write(r.study / "learned_fidelity" / f"{name}_seed{seed}" / "summary.json",
                  json.dumps({"real": side, "simulated": side, "top1_agreement": 0.5, "mean_js_divergence_bits": 0.4,
                              "row_divergence_bits": 0.58 - 0.1 * k + 0.01 * seed}))
    out = tmp_path / "STUDY.md"
    study.report(r, cells, out, tmp_path / "STUDY.png", "local/study.sh")
    text = out.read_text()
    assert "## The learned simulator (TASU2)" in text
    assert "within ±3 points over 0-30 %: **met**" in text and "| 30 | 32.0 | +2.0 |" in text
    assert ("| simulated: learned, matched WER | 1.20 ± 0.00 | 10.0 ± 0.0 | 30.0 ± 0.0 | 50.0 ± 0.0 | 0.400 ± 0.000 | "
            "**0.400 ± 0.010** |") in text
    names = [c.name for c in cells]
    score = {n: f"{10.0 + names.index(n):.1f}" for n in names}
    learned = [10.0 + names.index(f"learned_text{k}") for k in ("", "_seed2", "_seed3")]   # three training seeds
    zero = f"{statistics.mean(learned):.1f} ± {statistics.stdev(learned):.1f}"
    assert cells[names.index("learned_text_seed2")].after == ("learned_simulator",)
    assert (f"| the learned simulator | {zero} | {zero} | "
            f"{score['learned_lowres_50']} | {score['learned_lowres_50']} | "
            f"{score['learned_lowres_200']} | {score['learned_lowres_200']} |") in text
    assert f"| nothing (audio fine-tuning from scratch) | - | - | {score['lowres_scratch_50']} |" in text

    # a simulator off by more than 3 points somewhere: missed
    write(sim / "report.json", json.dumps({"utterances": 200, "wer_range": [0.0, 0.9], "teacher_mean_ter": 0.25,
                                           "rows": [{"asked": a, "simulated": a + 0.05 * (a == 0.2)} for a in asked]}))
    study.report(r, cells, out, tmp_path / "STUDY.png", "local/study.sh")
    assert "within ±3 points over 0-30 %: **missed**" in out.read_text()


def test_each_start_of_the_low_resource_curve_fine_tunes_with_its_own_stage_4_config(run_dir):
    scratch = run_dir / "exp" / "train_audio_sft_from_scratch" / "config.yaml"
    config = yaml.safe_load(scratch.read_text())
    write(scratch, yaml.safe_dump({**config, "optim": {"lr": 1e-3}}))   # the baseline's own learning rate
    cells = {c.name: c for c in study.plan(study.Recipe(run_dir), ["lowres"], quick=True, seed=1)}
    assert conf(cells["lowres_scratch_10"])["optim"] == {"lr": 1e-3}
    assert "optim" not in conf(cells["lowres_text_10"])   # the curriculum's config has none here


def test_a_cell_trained_with_another_config_than_the_run_gives_now_is_refused(run_dir):
    """Its commands are the same (the config's path), so only the config's content shows the change."""
    r = study.Recipe(run_dir)
    study.plan(r, ["simulation"], quick=False, seed=1)
    (r.study / "sim_drop_0" / "done.0").parent.mkdir(parents=True)
    (r.study / "sim_drop_0" / "done.0").write_text("60.0\n")
    study.plan(r, ["simulation"], quick=False, seed=1)   # the same configs: fine
    config = yaml.safe_load((run_dir / "exp" / "tasu_train_text" / "config.yaml").read_text())
    config["train"]["max_steps"] = 800   # the run was made again with another stage-3 config
    write(run_dir / "exp" / "tasu_train_text" / "config.yaml", yaml.safe_dump(config))
    with pytest.raises(study.StudyError, match="sim_drop_0 was trained with another sim_drop_0.yaml"):
        study.plan(study.Recipe(run_dir), ["simulation"], quick=False, seed=1)


def fake_cell(tmp_path: Path, name: str, *codes: str, after=()) -> study.Cell:
    """A cell whose commands are Python snippets that count their runs in ``tmp_path/<name>.runs``."""
    counter = tmp_path / f"{name}.runs"
    return study.Cell(name, "gap", [[sys.executable, "-c",
                                     f"import pathlib; p = pathlib.Path({str(counter)!r}); "
                                     f"p.write_text(p.read_text() + '{i}' if p.exists() else '{i}'); {code}"]
                                    for i, code in enumerate(codes)], after=tuple(after))


def test_cells_resume_and_a_failure_stops_only_what_needs_it(tmp_path):
    flag = tmp_path / "fixed"
    fail_until_fixed = f"import sys; sys.exit(0 if pathlib.Path({str(flag)!r}).exists() else 3)"
    cells = [fake_cell(tmp_path, "a", "pass", fail_until_fixed), fake_cell(tmp_path, "b", "pass", after=["a"]),
             fake_cell(tmp_path, "c", "pass")]
    failures = study.run_cells(cells, tmp_path / "study", jobs=2)
    assert len(failures) == 2 and "exit 3" in failures[0] and "b: not run, it needs a" in failures[1]
    assert (tmp_path / "a.runs").read_text() == "01" and not (tmp_path / "b.runs").exists()
    assert study.made_by(tmp_path / "study" / "c") == (study.git_hash(study.HERE), study.machine())

    flag.touch()   # run again: a's first command is not repeated, c is not run again, b runs now
    assert study.run_cells(cells, tmp_path / "study", jobs=2) == []
    assert (tmp_path / "a.runs").read_text() == "011" and (tmp_path / "b.runs").read_text() == "0"
    assert (tmp_path / "c.runs").read_text() == "0"

    # a cell whose commands changed since it ran is refused, not mixed with the old outputs: finished
    # (it was skipped, and its old numbers reported under the new commands) or not
    changed = [fake_cell(tmp_path, "c", "print('other')"), fake_cell(tmp_path, "e", "pass", after=["c"])]
    for finished in (True, False):
        if not finished:
            (tmp_path / "study" / "c" / "done").unlink()
        failures = study.run_cells(changed, tmp_path / "study", jobs=1)
        assert len(failures) == 2 and "c was made by other commands" in failures[0]
        assert "e: not run, it needs c" in failures[1]
        assert (tmp_path / "c.runs").read_text() == "0"
    with pytest.raises(study.StudyError, match="needs x, which is not planned"):
        study.run_cells([fake_cell(tmp_path, "d", "pass", after=["x"])], tmp_path / "study", jobs=1)


def test_a_finished_cell_is_refused_once_a_model_it_used_is_made_again(tmp_path):
    """Its commands name the model's path alone: a decode of a model trained (or simulated) anew since
    was kept, and reported as the new model's."""
    model = tmp_path / "model"
    weights = model / "checkpoints" / "step_000020" / "model" / "trainable.safetensors"
    write(weights, "the first training")
    write(model / "checkpoints" / "last", "step_000020\n")
    write(model / "config.yaml", "simulation: {drop_prob: 0.05}\n")
    cell = study.Cell(**{**vars(fake_cell(tmp_path, "decoded", "pass")), "models": (model,)})
    assert study.run_cells([cell], tmp_path / "study", jobs=1) == []
    assert study.run_cells([cell], tmp_path / "study", jobs=1) == []   # the same model: kept, not run again
    for change in (lambda: write(weights, "another training"), lambda: write(model / "config.yaml", "{}\n"),
                   lambda: shutil.rmtree(model)):
        saved = {f: f.read_bytes() for f in model.rglob("*") if f.is_file()}
        change()
        assert study.run_cells([cell], tmp_path / "study", jobs=1) == [
            f"{tmp_path / 'study' / 'decoded'} used another {model} than there is now (made again after the cell "
            "finished): remove it to run the cell again"]
        for f, data in saved.items():
            write(f, data.decode())
    assert study.run_cells([cell], tmp_path / "study", jobs=1) == [] and (tmp_path / "decoded.runs").read_text() == "0"
    simulator = tmp_path / "simulator"   # a learned simulator: its model beside checkpoints that hold no model/
    write(simulator / "checkpoints" / "step_000010" / "optimizer.safetensors", "moments")
    write(simulator / "checkpoints" / "last", "step_000010\n")
    write(simulator / "model.safetensors", "the simulator")
    write(simulator / "config.json", "{}")
    assert study.model_digest(simulator) is not None
    # a cell finished before cells recorded their models is kept
    write(tmp_path / "study" / "decoded" / "done", json.dumps({"commit": "abc1234", "machine": "machine A"}))
    write(weights, "another training")
    assert study.run_cells([cell], tmp_path / "study", jobs=1) == []


@pytest.mark.parametrize("stale", ["commands", "model"])
def test_plan_and_report_name_a_finished_cell_the_plan_cannot_reuse(run_dir, tmp_path, monkeypatch, capsys,
                                                                     stale):
    monkeypatch.setattr(study, "WRITES", True)   # main() sets it; restored after the test
    gap_real = study.Recipe(run_dir).study / "gap_real"
    cell = next(c for c in study.plan(study.Recipe(run_dir), ["gap"], quick=True, seed=1) if c.name == "gap_real")
    commands = [["tasu", "decode", "--max-new-tokens", "8"]] if stale == "commands" else cell.commands
    write(gap_real / "commands.json", json.dumps(commands, indent=1) + "\n")
    write(gap_real / "decode" / "test" / "score.json", score_json(10.0))
    model = "the model before" if stale == "model" else None   # this made-up run's model has no weights
    write(gap_real / "done", json.dumps({"commit": "abc1234", "machine": "machine A",
                                         "models": {str(run_dir / "exp" / "tasu_train_text"): model}}))
    why = f"{gap_real} {'was made by other commands' if stale == 'commands' else 'used another'}"
    args = ["--workdir", str(run_dir), "--parts", "gap", "--out", str(tmp_path / "STUDY.md")]
    monkeypatch.setattr(sys, "argv", ["study.py", "plan", *args])
    assert study.main() == 0 and f"# gap_real (gap; refused: {why}" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["study.py", "report", *args, "--plot", str(tmp_path / "STUDY.png")])
    assert study.main() == 1
    assert f"study.py: error: 1 finished cell(s) are not the plan's; first: {why}" in capsys.readouterr().err
    assert not (tmp_path / "STUDY.md").exists()


def test_a_signal_that_ends_the_run_stops_its_commands(tmp_path):
    """SIGTERM (a kill, a batch system ending the job) ended study.py alone: its trainings ran on, orphaned,
    beside the re-run that resumes the study, and wrote into the cells it finished."""
    pid = tmp_path / "pid"
    cell = fake_cell(tmp_path, "long", f"import os, time; pathlib.Path({str(pid)!r}).write_text(str(os.getpid())); "
                                       "time.sleep(600)")

    def kill_once_started():
        while not (pid.exists() and pid.read_text()):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    def before(signum, frame):   # this process's own handler (not the default, which would end the tests)
        raise AssertionError("study.py's handler was not installed")

    previous = signal.signal(signal.SIGTERM, before)
    try:
        threading.Thread(target=kill_once_started, daemon=True).start()
        with pytest.raises(study.Stopped, match="SIGTERM"):
            study.run_cells([cell], tmp_path / "study", jobs=1)
        assert signal.getsignal(signal.SIGTERM) is before   # restored
    finally:
        signal.signal(signal.SIGTERM, previous)
    with pytest.raises(ProcessLookupError):   # stopped and reaped, not orphaned
        os.kill(int(pid.read_text()), 0)
    assert not (tmp_path / "study" / "long" / "done").exists()


def test_a_second_run_of_one_study_is_refused(run_dir, monkeypatch, capsys):
    """It ran the first's cells again beside them (each cell's own commands lock only their own output)."""
    monkeypatch.setattr(study, "WRITES", True)   # main() sets it; restored after the test
    monkeypatch.setattr(sys, "argv", ["study.py", "run", "--workdir", str(run_dir), "--parts", "gap"])
    with DirLock(run_dir / "exp" / "study", "local/study.py run"):
        assert study.main() == 1
    assert f"study.py: error: {run_dir / 'exp' / 'study'} is in use: local/study.py run by pid {os.getpid()} " \
           in capsys.readouterr().err
    assert not (run_dir / "exp" / "study" / "gap_real").exists()


def test_a_killed_training_resumes_from_its_checkpoint(tmp_path):
    exp = tmp_path / "model"
    (exp / "checkpoints" / "last").mkdir(parents=True)
    args = tmp_path / "args"
    tasu = tmp_path / "bin" / "tasu"   # a stand-in for the tasu command that notes its arguments
    write(tasu, f"#!/bin/sh\necho \"$@\" > {args}\n")
    tasu.chmod(0o755)
    cell = study.Cell("t", "simulation", [study.train(tmp_path / "c.yaml", exp)])
    env_path = f"{tasu.parent}:{study.os.environ['PATH']}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", env_path)
        assert study.run_cells([cell], tmp_path / "study", jobs=1) == []
    assert args.read_text().split()[-1] == "--resume"


def test_the_report_tables_every_part_and_plots_the_low_resource_curve(run_dir, tmp_path):
    r = study.Recipe(run_dir)
    cells = study.plan(r, list(study.PARTS), quick=False, seed=1)
    for i, c in enumerate(cells):
        for test_set in c.info.get("sets", []):
            write(r.study / c.name / "decode" / test_set / "score.json", score_json(10.0 + i))
        write(r.study / c.name / "done.0", "60.0\n")
        made = ("def5678", "machine B") if c.info.get("repeat_of", "").startswith("text_") else ("abc1234", "machine A")
        write(r.study / c.name / "done", json.dumps(dict(zip(("commit", "machine"), made))))
    write(r.study / "proj_qformer_text" / "model" / "train.log",
          "2026-12-02 00:43:05,279 [rank 0] INFO training x: 1234 trainable parameters, text mode\n"
          "2026-12-02 00:43:10,000 [rank 0] INFO step 20 epoch 0: loss 1.6\n"
          "2026-12-02 00:43:20,000 [rank 0] INFO step 40 epoch 0: loss 1.2\n"
          "2026-12-02 00:43:40,000 [rank 0] INFO step 60 epoch 0: loss 1.0\n"     # a validation pass between
          "2026-12-02 00:43:50,000 [rank 0] INFO step 80 epoch 0: loss 0.9\n")
    out = tmp_path / "STUDY.md"
    study.report(r, cells, out, tmp_path / "STUDY.png", "local/study.sh")
    text = out.read_text()
    for title in ("## The text-to-audio gap", "## Simulation settings", "## Compression at inference",
                  "## Projectors", "## How much audio the text-only stage saves", "## Text scaling", "## The commands"):
        assert title in text
    value = {c.name: 10.0 + i for i, c in enumerate(cells)}
    assert [value[f"gap_simulated_{k}"] for k in (1, 2, 3)] == [11, 12, 13]
    assert "| simulated from the transcript (3 simulation seeds) | 12.0 ± 1.0 |" in text
    # the yardstick: stage 3's model (gap_real) and two more seeds, each beside its simulated input
    assert [value[n] for n in ("gap_real", "sim_recipe_seed2", "sim_recipe_seed3")] == [10, 15, 17]
    assert [value[n] for n in ("gap_simulated_1", "sim_recipe_seed2_simulated", "sim_recipe_seed3_simulated")] == \
           [11, 16, 18]
    assert "| the recipe's (3 training seeds) | 14.0 ± 3.6 | | | 15.0 ± 3.6 | 0.93 |" in text
    assert value["sim_alpha_none"] == 19 and value["sim_alpha_none_simulated"] == 20
    assert "| alpha [0.0, 0.0] | 19.0 | +5.0 | no | 20.0 | 0.95 |" in text        # within 2 sd (7.2)
    # three seeds against three: beyond twice the pooled sd (3.6 and 4.0)
    names = ["sim_insert_0", "sim_insert_0_seed2", "sim_insert_0_seed3"]
    assert [value[n] for n in names] == [27, 29, 31]
    assert [value[f"{n}_simulated"] for n in names] == [28, 30, 32]
    assert "| insert_ratio 0.0 (3 training seeds) | 29.0 ± 2.0 | +15.0 | **yes** | 30.0 ± 2.0 | 0.97 |" in text
    assert "| qformer |" in text and "| 1234 | 0.50 |" in text   # the median step time: 0.5 s
    # the projectors next to the recipe's get three training seeds, judged against the recipe's three
    own = [value[n] for n in ("proj_linear-silu_text", "sim_recipe_seed2", "sim_recipe_seed3")]
    conv = [value[f"proj_conv1d_text{k}"] for k in ("", "_seed2", "_seed3")]
    delta = statistics.mean(conv) - statistics.mean(own)
    pooled = ((statistics.stdev(own) ** 2 + statistics.stdev(conv) ** 2) / 2) ** 0.5
    assert (f"| {statistics.mean(own):.1f} ± {statistics.stdev(own):.1f} (3 training seeds) | | | "
            f"{value['proj_linear-silu_curriculum']:.1f} |") in text
    assert (f"| {statistics.mean(conv):.1f} ± {statistics.stdev(conv):.1f} (3 training seeds) | {delta:+.1f} | "
            f"{'**yes**' if abs(delta) > 2 * pooled else 'no'} | {value['proj_conv1d_curriculum']:.1f} |") in text
    assert ("The recipe's simulation: alpha ~ U(0, 0.1) smoothing, 5 % of the tokens dropped i.i.d., after each "
            "token Poisson(0.3) inserted rows (a repeat or a blank row).") in text   # from stage 3's config
    zero = 10.0 + [c.name for c in cells].index("lowres_text_0")   # no audio: the text-only model itself
    assert f"| 0 | {zero:.1f} | - | {zero:.1f} | - |" in text
    assert "| all |" in text and "![low-resource curve](STUDY.png)" in text
    fifty = [value[f"lowres_text_50{k}"] for k in ("", "_seed2", "_seed3")]   # test and test_ood: the same value
    row = f"{statistics.mean(fifty):.1f} ± {statistics.stdev(fifty):.1f}"
    assert f"| 50 | {row} | {value['lowres_scratch_50']:.1f} | {row} | {value['lowres_scratch_50']:.1f} |" in text
    assert (tmp_path / "STUDY.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{len(cells)} min of commands in all" in text
    # text scaling: three training seeds a size, each size against the smallest
    assert [value[f"text_1000{k}"] for k in ("", "_seed2", "_seed3")] == [value["text_1000"] + i for i in range(3)]
    m = value["text_1000"] + 1
    assert f"| 1000 (3 training seeds) | {m:.1f} ± 1.0 | | |" in text
    assert f"| 4000 (3 training seeds) | {m + 3:.1f} ± 1.0 | +3.0 | **yes** |" in text   # 3 > 2 x 1.0
    # a study made in two sittings says which code and machine made how many cells
    assert (f"from a finished `./run.sh` (`{r.root}`): {len(cells) - 6} cells by the study code at git abc1234 on "
            f"machine A, 6 cells by the study code at git def5678 on machine B (this report: git ") in text
    for c in cells:   # the same machine: named once
        write(r.study / c.name / "done", json.dumps({"commit": "def5678" if c.name.startswith("text_") else "abc1234",
                                                      "machine": "machine A"}))
    study.report(r, cells, out, tmp_path / "STUDY.png", "local/study.sh")
    assert (f"from a finished `./run.sh` (`{r.root}`), on machine A: {len(cells) - 9} cells by the study code at "
            "git abc1234, 9 cells by the study code at git def5678 (this report: git ") in out.read_text()
    for c in cells:   # the code that finished its cells first is named first
        if c.name.startswith("text_"):
            study.os.utime(r.study / c.name / "done", (1.0e9, 1.0e9))
    study.report(r, cells, out, tmp_path / "STUDY.png", "local/study.sh")
    assert (f"on machine A: 9 cells by the study code at git def5678, {len(cells) - 9} cells by the study code at "
            "git abc1234 (this report: git ") in out.read_text()
    # the plot linked is the one written beside (or near) this report, not the committed STUDY.png
    mine = tmp_path / "mine" / "MINE.md"
    for plot, link in ((mine.with_suffix(".png"), "MINE.png"), (tmp_path / "plots" / "low.png", "../plots/low.png")):
        plot.parent.mkdir(exist_ok=True)
        study.report(r, cells, mine, plot, "local/study.sh")
        assert f"![low-resource curve]({link})" in mine.read_text() and plot.exists()
    assert [study.signed(d) for d in (-0.04, -0.06, 3.0, None)] == ["+0.0", "-0.1", "+3.0", "-"]   # never "-0.0"
    # a cell that has not finished shows no score (its score.json may be an earlier attempt's) and is named
    (r.study / "sim_alpha_none" / "done").unlink()
    study.report(r, cells, out, tmp_path / "STUDY.png", "local/study.sh")
    text = out.read_text()
    assert "| alpha [0.0, 0.0] | - |" in text
    assert f"Not finished (1 of {len(cells)} cells; '-' in their rows): sim_alpha_none." in text


def test_the_simulation_part_alone_has_its_yardstick(run_dir, tmp_path):
    """Its first row (and every delta and verdict) needs stage 3's model on test audio, a cell of the gap
    part: --parts simulation left them '-', and the 'Not finished' line did not say why."""
    r = study.Recipe(run_dir)
    cells = study.plan(r, ["simulation"], quick=False, seed=1)
    for c in cells:
        write(r.study / c.name / "decode" / "test" / "score.json", score_json(10.0))
        write(r.study / c.name / "done", "{}")
    study.report(r, cells, tmp_path / "STUDY.md", tmp_path / "STUDY.png", "local/study.sh")
    text = (tmp_path / "STUDY.md").read_text()
    assert "| the recipe's (3 training seeds) | 10.0 ± 0.0 | | | 10.0 ± 0.0 | 1.00 |" in text
    assert "| alpha [0.0, 0.0] | 10.0 | +0.0 | no |" in text
    assert "## The text-to-audio gap" not in text   # two of its cells, not the part


def test_a_report_stops_in_one_line_on_a_score_it_cannot_read(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "WRITES", True)   # main() sets it; restored after the test
    score = run_dir / "exp" / "study" / "psd_top4" / "decode" / "test" / "score.json"
    write(score, json.dumps({"value": "nan"}))   # (a hand edit: tasu results refuses it as well)
    write(score.parents[2] / "done", "{}")
    monkeypatch.setattr(sys, "argv", ["study.py", "report", "--workdir", str(run_dir), "--parts", "compression",
                                      "--out", str(tmp_path / "STUDY.md"), "--plot", str(tmp_path / "STUDY.png")])
    assert study.main() == 1
    assert capsys.readouterr().err == f"study.py: error: {score}: not a score.json written by 'tasu score' " \
                                      "(metric: must be one of wer, cer, bleu, acc, not null)\n"


def test_the_study_time_counts_overlapping_cells_once_and_no_pause(tmp_path):
    # command spans: each command's last start (the log) for as long as its done.<i> says it took
    cells = {"a": [("02:00:00", 600)],                      # 02:00-02:10
             "b": [("02:05:00", 300), ("02:10:00", 120)],   # 02:05-02:12, two commands
             "c": [("03:00:00", 60)]}                       # 03:00-03:01, after a pause
    for name, runs in cells.items():
        commands = [["tasu", "train", "--config", f"{name}{i}.yaml"] for i in range(len(runs))]
        write(tmp_path / name / "commands.json", json.dumps(commands))
        write(tmp_path / name / "log", "".join(f"# 2026-12-02T{start} {' '.join(argv)}\nsome output\n"
                                               for (start, _), argv in zip(runs, commands)))
        for i, (_, seconds) in enumerate(runs):
            write(tmp_path / name / f"done.{i}", f"{seconds}\n")
    assert study.wall_seconds([tmp_path / n for n in cells]) == (12 + 1) * 60
    # a training killed at 04:00 and resumed at 06:00 for 5 minutes counts 5 minutes, not the night
    write(tmp_path / "d" / "commands.json", json.dumps([["tasu", "train", "--config", "d.yaml"]]))
    write(tmp_path / "d" / "log", "# 2026-12-02T04:00:00 tasu train --config d.yaml\n"
                                  "# 2026-12-02T06:00:00 tasu train --config d.yaml --resume\n")
    write(tmp_path / "d" / "done.0", "300.0\n")
    assert study.wall_seconds([tmp_path / "d"]) == 300
    # an unfinished command (no done.<i>) counts nothing yet
    (tmp_path / "d" / "done.0").unlink()
    assert study.wall_seconds([tmp_path / "d"]) == 0


def test_plan_writes_nothing_so_a_plan_of_another_seed_does_not_block_the_run(run_dir, monkeypatch, capsys):
    monkeypatch.setattr(study, "WRITES", True)   # main() sets it; restored after the test
    monkeypatch.setattr(sys, "argv", ["study.py", "plan", "--workdir", str(run_dir), "--seed", "2",
                                      "--parts", "lowres textscale"])
    assert study.main() == 0 and "# lowres_text_50 " in capsys.readouterr().out
    assert not (run_dir / "exp" / "study").exists()
    study.WRITES = True
    cells = {c.name: c for c in study.plan(study.Recipe(run_dir), ["lowres"], quick=False, seed=1)}
    assert len(conf(cells["lowres_text_50"])["data"]["train"]) == 2


def test_low_resource_subsets_of_two_files_of_one_name_are_kept_apart(run_dir):
    config_file = run_dir / "exp" / "tasu_train_text_then_train_audio_sft" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    for source in config["data"]["train"]:   # dump/<task>/train.jsonl instead of dump/train/<task>.jsonl
        old = Path(source["path"])
        new = old.parent.parent / old.stem / "train.jsonl"
        write(new, old.read_text())
        source["path"] = str(new)
    config_file.write_text(yaml.safe_dump(config))
    subset = study.lowres_subset(study.Recipe(run_dir), 10, seed=1)
    tasks = [{json.loads(line)["task"] for line in Path(s["path"]).read_text().splitlines()} for s in subset]
    assert tasks == [{"ASR"}, {"SLU_scenario"}]


def test_a_report_of_nothing_is_refused_and_study_md_kept(run_dir, tmp_path, monkeypatch, capsys):
    """--parts '' reported 0 cells and replaced STUDY.md with an empty one, exit 0; a report of parts
    whose cells never ran wrote '-' in every cell, exit 0; --jobs 0 was a ZeroDivisionError."""
    out = tmp_path / "STUDY.md"
    out.write_text("the study of before\n")
    for args, error in ((["--parts", ""], "--parts is empty: name some of"),
                        (["--jobs", "0"], "--jobs must be at least 1, not 0"),
                        (["--parts", "gap"], "no cell of --parts 'gap' has finished in ")):
        monkeypatch.setattr(sys, "argv", ["study.py", "report", "--workdir", str(run_dir), "--out", str(out), *args])
        try:
            status = study.main()
        except SystemExit as e:   # argparse's own errors
            status = e.code
        assert status != 0 and error in capsys.readouterr().err
    assert out.read_text() == "the study of before\n"


def test_the_study_script_fails_as_study_py_does(tmp_path):
    """study.py's own status 127 (python3 not found) was taken for "collected already": exit 0."""
    import subprocess

    (tmp_path / "local").mkdir()
    shutil.copy(MINI / "local" / "study.sh", tmp_path / "local" / "study.sh")
    (tmp_path / "path.sh").write_text(f"PATH={Path(sys.executable).parent}:{MINI.parents[1] / 'utils'}:$PATH\n")
    (tmp_path / "local" / "study.py").write_text("import sys\nsys.exit(127)\n")
    out = subprocess.run(["bash", "local/study.sh", "--parts", "gap"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 127 and "wrote" not in out.stdout + out.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_study_script_reaches_study_py(tmp_path, sig):
    """SIGTERM to local/study.sh (a batch system ending the job) ended the script alone: study.py and its
    trainings ran on. The script now passes it on; Ctrl-C (SIGINT to the terminal's process group) reaches
    study.py itself, which takes SIGINT back from the background's "ignored", and the script waits for it."""
    import subprocess

    (tmp_path / "local").mkdir()
    shutil.copy(MINI / "local" / "study.sh", tmp_path / "local" / "study.sh")
    (tmp_path / "path.sh").write_text(f"PATH={Path(sys.executable).parent}:{MINI.parents[1] / 'utils'}:$PATH\n")
    (tmp_path / "local" / "study.py").write_text(   # stands in for study.py: says when it is asked to stop
        "import pathlib, signal, sys, time\n"
        "def stop(*_):\n"
        "    pathlib.Path('stopped').write_text('TERM')\n"
        "    sys.exit(3)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        "pathlib.Path('started').write_text(' '.join(sys.argv[1:]))\n"
        "time.sleep(60)\n")
    script = subprocess.Popen(["bash", "local/study.sh", "--parts", "gap"], cwd=tmp_path, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not (tmp_path / "started").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "started").read_text().startswith("run --workdir . --parts gap")
    if sig == signal.SIGINT:   # as a terminal sends it: to the whole process group
        os.killpg(script.pid, sig)
    else:
        script.send_signal(sig)
    assert script.wait(timeout=30) == 3   # study.py's status, once it has stopped
    assert (tmp_path / "stopped").read_text() == "TERM"
