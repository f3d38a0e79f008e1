"""egs/mini end to end in quick mode: ``./run.sh --quick true`` runs every stage as the README's main
job does (corpus, encoder, LLM, JSONL, text-only TASU, curriculum and audio-only training, decoding,
scoring, RESULTS.md and the plot), on a tiny corpus with tiny models; then the exp dir decodes speech
it has never seen, from another directory, as a user would.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recipe_fixtures import copy_recipe

pytestmark = [pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
              pytest.mark.slow]

SYSTEMS = ["tasu_train_text", "tasu_train_text_then_train_audio_sft", "train_audio_sft_from_scratch"]


def sh(cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    if ok:
        assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}"
    return out


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    recipe = copy_recipe("mini", tmp_path_factory.mktemp("repo"))
    return recipe, sh(recipe, "./run.sh", "--quick", "true")


def test_every_stage_runs_and_the_table_is_printed(mini):
    recipe, out = mini
    for n in range(1, 8):
        assert f"Stage {n}" in out.stderr
    assert "## Summary (egs/mini)" in out.stdout and "Quick mode" in out.stdout
    exp = recipe / "exp"
    for system in SYSTEMS:
        for test_set in ("test", "test_ood"):
            for task, metric in (("ASR", "wer"), ("SLU_scenario", "acc")):
                # quick mode's --decode_args (a shorter length limit) are part of the directory's name
                decode, = (exp / system).glob("decode_greedy_best*")
                score = json.loads((decode / test_set / task / "score.json").read_text())
                assert score["metric"] == metric and score["snt"] == 40
    for test_set in ("test", "test_ood"):
        assert (exp / "encoder" / "ctc_greedy" / test_set / "wer" / "score.json").exists()
    # The curriculum started from the text-only model; the baseline from scratch.
    assert "train.init_from=exp/tasu_train_text" in (exp / SYSTEMS[1] / "log" / "train.log").read_text()
    assert "init_from" not in (exp / SYSTEMS[2] / "log" / "train.log").read_text().splitlines()[0]
    assert "train: " not in (exp / SYSTEMS[0] / "log" / "train.log").read_text()  # no progress bar in logs


def test_a_second_run_of_one_workdir_stops_at_once(mini):
    """Two runs of one workdir would remake the corpus under each other (and mark it done over missing
    audio); the second stops before it touches anything."""
    import fcntl

    recipe, _ = mini
    lock = recipe / "exp" / ".run.lock"
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write_text("pid 1 on elsewhere\n")
        out = sh(recipe, "./run.sh", "--quick", "true", "--stage", "7", ok=False)
        # another seed's run is told the same, not to remove the directories the live run writes
        other = sh(recipe, "./run.sh", "--quick", "true", "--seed", "2", "--stage", "7", ok=False)
    in_use = ("./run.sh: . is in use by another ./run.sh (pid 1 on elsewhere): wait for it to end "
              "(or stop it), or give this one another --workdir")
    assert out.returncode == other.returncode == 1
    assert out.stderr.strip() == other.stderr.strip() == in_use


def test_results_md_holds_the_summary_the_targets_and_the_resources(mini):
    recipe, _ = mini
    results = (recipe / "RESULTS.md").read_text()
    summary = results[results.index("## Summary"):results.index("## encoder")]
    rows = {line.split("|")[1]: line.split("|")[2:6] for line in summary.splitlines() if line.startswith("|")}
    assert rows["encoder CTC greedy"][:2] != ["-", "-"]
    for name in ("TASU text-only (zero-shot)", "curriculum: text-only, then audio", "audio-only (same steps, from scratch)"):
        assert "-" not in rows[name], rows[name]  # every system scored on every set and task
    assert summary.count(": **met**") + summary.count(": **missed**") == 8
    steps = [line.split("\t")[0] for line in (recipe / "exp" / "usage.tsv").read_text().splitlines()]
    assert steps == ["stage 1", "stage 1: encoder and LLM, at once", "stage 2", "stage 3", "stage 4", "stage 5",
                     "stage 5: simulated input", "stage 6", "stage 7"]
    # the rows that explain the table: the LLM's ceiling, simulated vs real input, the encoder on every set
    assert rows["TASU text-only, on posteriors simulated from the text"][1] != "-"  # test
    # ... the mean of its draws (two in quick mode), scored together over keys made unique per draw
    simulated = recipe / "exp" / "tasu_train_text" / "decode_simulated" / "test" / "ASR"
    pooled = json.loads((simulated / "score.json").read_text())
    draws = [json.loads((simulated / f"draw{k}" / "score.json").read_text()) for k in (0, 1)]
    assert pooled["snt"] == sum(d["snt"] for d in draws) == 80 and not pooled["missing_keys"]
    assert pooled["value"] == pytest.approx(sum(d["value"] for d in draws) / 2)
    for k in (0, 1):  # each draw a job of cmd.sh's decode_cmd, with its own log
        assert (simulated / "log" / f"draw.{k}.log").read_text().splitlines()[-1].startswith("# Ended (code 0)")
    assert "(2 draws, scored together" in summary
    assert "-" not in rows["LLM reading the clean encoder units of the text (its ceiling)"][:2]  # dev, test
    assert "-" not in rows["encoder CTC greedy"][:3]  # dev, test, test_ood (the explaining table's row)
    assert "|**all**|" in summary
    assert "Text-only training loss, mean of each tenth of the run" in summary  # a climb at the end shows
    assert "![training loss and scores](RESULTS.png)" in summary
    assert results.index("## Environments") < results.index("## Summary") < results.index("## tasu_train_text")
    assert (recipe / "RESULTS.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


WHOLE = "expected a whole number from 0 to 999999999, without leading zeros"


@pytest.mark.parametrize("args,error", [
    (["--seeds", "1 a"], f"seed 'a': {WHOLE}"),
    (["--seed", "-5"], f"seed '-5': {WHOLE}"),
    (["--seeds", "01 1"], f"seed '01': {WHOLE}"),   # the same seed 1 twice, as Python and YAML read it
    (["--seed", "18446744073709551616"], f"seed '18446744073709551616': {WHOLE}"),   # torch failed, later
    (["--seeds", " "], "--seeds is blank: name the seeds, e.g. \"1 2 3\""),
    (["--seeds", "2 1 2"], "--seeds '2 1 2' names a seed twice: each would count as another run in the mean and sd"),
    (["--stage", "6", "--stop_stage", "5"], "--stage 6 comes after --stop_stage 5: nothing to run"),
    (["--stage", "8", "--stop_stage", "9"], "stage 8: there is no such stage (the stages are 1-7)"),   # exit 0 before
    (["--stage", "08"], "stage 08: there is no such stage (the stages are 1-7)"),   # not "comes after --stop_stage 7"
    (["--seeds", "*"], f"seed '*': {WHOLE}"),   # it named the files of the recipe ('NOTES.md')
    (["--tasu_opts", "--config opts.sh"], "--tasu_opts: --config is not taken here: give tasu.sh's options one by one"),
    (["--workdir", ""], "--workdir is empty: name a directory (default: .)"),   # '' would write /data, /exp
    # the jobs' commands would name /data/my1s: other files read and written
    (["--workdir", "myJOBs"], "--workdir myJOBs: the job runner makes every JOB of a job's command its number "
                              "(utils/run_local.sh): a path with JOB in it would name another directory"),
    # last on tasu.sh's command line, it would drop the seed that run.sh's own --train_text_args carry
    (["--tasu_opts", "--ngpu 0 --train-text-args optim.lr=3e-3"], "--tasu_opts: --train-text-args is set by "
     "run.sh itself (the seed and quick settings ride on it, or the later stages read it): edit conf/ or "
     "run.sh instead"),
])
def test_bad_seeds_and_stages_stop_before_anything_runs(tmp_path, args, error):
    """A bad seed late in --seeds would otherwise stop the run after the good ones (an hour later)."""
    recipe = copy_recipe("mini", tmp_path)
    before = sorted(p.name for p in recipe.iterdir())
    out = sh(recipe, "./run.sh", *args, ok=False)
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr.splitlines() == [f"./run.sh: {error}"]
    assert sorted(p.name for p in recipe.iterdir()) == before  # no data/, exp/ or seeds/


def test_seeds_go_under_the_workdir(mini, tmp_path):
    """--seeds with --workdir W: each seed in W/seeds/seed<N>/, the report in W/RESULTS.md, nothing in
    the recipe's own directory (the finished quick run stands in for seed 1234's, so only stage 7 runs)."""
    recipe, _ = mini
    work = tmp_path / "work"
    for name in ("data", "dump", "exp"):
        shutil.copytree(recipe / name, work / "seeds" / "seed1234" / name, symlinks=True)
    before = (recipe / "RESULTS.md").read_bytes()
    sh(recipe, "./run.sh", "--quick", "true", "--seeds", "1234", "--stage", "7", "--workdir", str(work))
    assert f"{work}/seeds/seed1234/exp" in (work / "RESULTS.md").read_text()
    assert (work / "RESULTS.png").exists() and (work / "seeds" / "seed1234" / "RESULTS.md").exists()
    assert (recipe / "RESULTS.md").read_bytes() == before and not (recipe / "seeds").exists()


def test_rerun_skips_what_is_done_and_another_setting_is_refused(mini):
    recipe, _ = mini
    usage = recipe / "exp" / "usage.tsv"
    def stage_1_lines():   # the corpus and the models: seconds to skip, a minute to make
        return [line for line in usage.read_text().splitlines() if line.startswith("stage 1")]
    before = stage_1_lines()
    again = sh(recipe, "./run.sh", "--quick", "true", "--stop_stage", "2")
    assert "already made" in again.stderr and "already trained" in again.stderr
    # a re-run that finds the work done keeps the figures of the run that did it
    assert stage_1_lines() == before and len(before) == 2
    assert "--quick" in sh(recipe, "./run.sh", "--help").stdout
    refused = sh(recipe, "./run.sh", "--stop_stage", "1", ok=False)  # full mode over quick-mode data
    assert refused.returncode != 0 and "rm -r data dump exp RESULTS.md)" in refused.stderr


def test_the_exp_dir_decodes_other_speech_from_anywhere(mini, tmp_path):
    """Any JSONL of 16 kHz speech: new sentences, FLAC, read from outside the recipe directory."""
    recipe, _ = mini
    wav = tmp_path / "new.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), "turn off the kitchen lights"], check=True)
    audio, rate = sf.read(wav, dtype="float32")
    import soxr
    sf.write(tmp_path / "new.flac", soxr.resample(audio, rate, 16000).astype(np.float32), 16000)
    data = tmp_path / "other.jsonl"
    data.write_text("".join(json.dumps({"key": f"utt{i}", "task": task, "target": target,
                                        "path": str(tmp_path / "new.flac")}) + "\n"
                            for i, (task, target) in enumerate([("ASR", "turn off the kitchen lights"),
                                                                ("SLU_scenario", "iot")])))
    tasu = str(Path(sys.executable).parent / "tasu")  # the console script a user calls
    sh(tmp_path, tasu, "decode", "--exp", str(recipe / "exp" / "tasu_train_text"), "--data", str(data),
       "--out", str(tmp_path / "out"), "--beam", "1", "--max-new-tokens", "8")
    keys = [line.split("\t")[0] for line in (tmp_path / "out" / "hyp.trn").read_text().splitlines()]
    assert sorted(keys) == ["utt0", "utt1"]


def test_report_warns_when_a_time_cap_made_the_table_machine_dependent(mini):
    recipe, _ = mini
    info = recipe / "exp" / "encoder" / "train_info.json"
    original = info.read_text()
    info.write_text(json.dumps({**json.loads(original), "stopped_early": True}))
    try:
        out = sh(recipe, sys.executable, "local/report.py").stdout
    finally:
        info.write_text(original)
    assert "**Warning**: the encoder stopped at its --max-minutes cap" in out
    assert "Warning" not in sh(recipe, sys.executable, "local/report.py").stdout
    assert (recipe / "RESULTS.md").read_text().count("## Summary") == 1  # replaced, not appended


def test_the_study_runs_on_the_finished_run_and_resumes(mini):
    """local/study.sh's real commands on the quick run (one part: a text-only training on new sentences
    and its decode; test_study.py covers the other parts' cells and the report); a second run finds
    every cell done."""
    recipe, _ = mini
    out = sh(recipe, "local/study.sh", "--quick", "true", "--parts", "textscale")
    assert "1 cell, 0 done, 1 to run" in out.stdout
    study = (recipe / "STUDY.md").read_text()
    assert 'Made by `local/study.sh --parts "textscale"`' in study   # a study of some parts says which
    row = study[study.index("| 100 |"):].splitlines()[0]
    assert row.split("|")[2].strip() != "-"   # trained, decoded and scored
    assert (recipe / "exp" / "study" / "text_100" / "model" / "checkpoints" / "last").exists()
    assert "1 cell, 1 done, 0 to run" in sh(recipe, "local/study.sh", "--quick", "true", "--parts",
                                              "textscale").stdout
