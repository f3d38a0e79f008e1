"""The corpus recipes (egs/): every stage run for real on tiny copies of the release layouts.

For each corpus, ``test/recipe_fixtures.py`` writes a few utterances in the exact layout of the
release and ``./run.sh --stage 1 --stop_stage 2`` parses it into data/ and the JSONL of its tasks:
that is what differs per recipe. Stages 3-7 (train, decode, score, RESULTS.md) are the shared
``egs/TEMPLATE/tasu.sh`` code, driven by the tasks and configs stage 2 and run.sh name, so they run for
real, with tiny models (``fixtures.save_tiny_llm``, ``fixtures.write_sensevoice_dir``) in quick
settings, on two recipes that cover their cases: librispeech (one task, a separate text-only corpus)
and slurp (three tasks decoded jointly and split back, WER and accuracy, posterior dumps).
commonvoice and covost stop after stage 2 (their configs pass the dry run below; BLEU's per-language
tokenisation is checked in test_score.py), which saves about 40 s each. The shared parts are checked
once: ``--help``, unknown options, the up-front check of the model paths, every shipped config (a
broken one fails here), identical ``cmd.sh`` copies.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fixtures import save_tiny_llm, write_sensevoice_dir
from recipe_fixtures import (ROOT, copy_recipe, stand_in_for_stage_2, write_commonvoice, write_covost,
                             write_librispeech, write_slurp, write_template_corpus)
from tasu.cli import main as tasu_main

EGS = ROOT / "egs"
# every corpus recipe (a db.sh says where its corpus is; egs/mini makes its own), a new one included
RECIPES = sorted(p.parent.name for p in EGS.glob("*/db.sh") if p.parent.name != "TEMPLATE")
QUICK_TRAIN = " ".join([
    "llm.dtype=float32", "engine.precision=fp32", "engine.zero_stage=0", "projector.options.hidden=16",
    "data.max_tokens=400", "data.num_workers=0", "data.shuffle_buffer=8", "data.sort_window=8",
    "train.max_steps=3", "train.epochs=3", "train.log_interval=1", "train.valid_interval=3",
    "train.save_interval=3", "optim.warmup_steps=2", "optim.total_steps=4"])
QUICK_DECODE = "--beam 1 --max-new-tokens 4 --batch-size 8"
DECODE_ARGS = "_beam1_max-new-tokens4_batch-size8"   # QUICK_DECODE names the decode directory too
DECODE = f"decode_beam4_best{DECODE_ARGS}"


def sh(cwd: Path, *args: str, env: dict | None = None, ok: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
    out = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}"
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {"encoder": str(write_sensevoice_dir(root / "SenseVoiceSmall")),
            "llm": str(save_tiny_llm(root / "llm"))}


def prepare(recipe: Path, env: dict, *options: str) -> None:
    """Stages 1-2: the corpus's data/ directories and the JSONL of its tasks."""
    first = sh(recipe, "./run.sh", "--stage", "1", "--stop_stage", "2", *options, env=env)
    assert "Stage 1" in first.stderr and "Stage 2" in first.stderr


def run_all_stages(recipe: Path, env: dict, models: dict, *options: str) -> str:
    """Stages 1-2, then 1-2 again (a no-op), then 3-7; returns the log of the last run."""
    prepare(recipe, env, *options)
    done = {p: p.stat().st_mtime_ns for p in [*recipe.glob("data/*/*"), *recipe.glob("dump/*/*")]}
    again = sh(recipe, "./run.sh", "--stage", "1", "--stop_stage", "2", *options, env=env)
    assert "already prepared" in again.stderr and "already made" in again.stderr
    assert "validate:" not in again.stderr, again.stderr  # no file made or checked again
    assert {p: p.stat().st_mtime_ns for p in done} == done
    out = sh(recipe, "./run.sh", "--stage", "3", "--stop_stage", "7", *options,
             "--encoder_path", models["encoder"], "--llm_path", models["llm"],
             "--train_text_args", QUICK_TRAIN, "--decode_args", QUICK_DECODE, env=env)
    return out.stderr


def analyzed(recipe: Path, jsonl: str, encoder: str) -> dict:
    """``tasu analyze`` on a JSONL file of the recipe: its audio format and where its transcript is."""
    from tasu.analyze import run_analyze
    from tasu.config import load_config
    from tasu.experiment import ExperimentConfig

    cfg = load_config(ExperimentConfig, None, [f"encoder.path={encoder}"])
    summary = run_analyze(cfg, [str(recipe / "dump" / jsonl)], str(recipe / "exp" / "analyze" / jsonl), batch_size=2)
    assert summary["utterances"] == len(lines(recipe / "dump" / jsonl)) and summary["tokens"] > 0
    assert summary["real"]["rows"] > 0 and (recipe / "exp" / "analyze" / jsonl / "report.txt").exists()
    return summary


def scores(recipe: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(recipe / "exp")): json.loads(p.read_text())
            for p in (recipe / "exp").rglob("score.json")}


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# --------------------------------------------------------------------------------------------------
# The corpora, end to end


@pytest.mark.slow
def test_librispeech(tmp_path, models):
    corpus = write_librispeech(tmp_path / "corpora")
    recipe = copy_recipe("librispeech", tmp_path)
    env = {"LIBRISPEECH": str(corpus), "LIBRISPEECH_LM_NORM": str(tmp_path / "corpora" / "librispeech-lm-norm.txt")}
    # only train-clean-100, dev-clean and test-clean exist: the run's sets are all stage 1 prepares
    log = run_all_stages(recipe, env, models, "--test_sets", "test_clean")
    assert lines(recipe / "data" / "train" / "wav.scp")[0].startswith("100-2000-0000 ")
    assert lines(recipe / "data" / "train" / "text")[0] == "100-2000-0000 TURN ON THE KITCHEN LIGHTS"
    assert lines(recipe / "data" / "train" / "utt2spk")[0] == "100-2000-0000 100-2000"
    assert len(lines(recipe / "dump" / "lm_norm" / "ASR.text_only.jsonl")) == 8
    text_only = [json.loads(x) for x in lines(recipe / "dump" / "train" / "ASR.text_only.jsonl")]
    assert len(text_only) == 6 and all("path" not in r for r in text_only)

    exp = recipe / "exp" / "tasu_train_text"
    assert "lm_norm/ASR.text_only.jsonl" in lines(exp / "log" / "train.log")[0]
    assert "--stage 3 --stop_stage 3" in (exp / "run.sh").read_text()
    assert set(scores(recipe)) == {f"tasu_train_text/{DECODE}/test_clean/ASR"}
    hyp = recipe / "exp" / "tasu_train_text" / DECODE / "test_clean" / "ASR" / "hyp.trn"
    assert [x.split("\t")[0] for x in lines(hyp)] == ["120-2002-0000", "121-2002-0001"]
    results = (recipe / "RESULTS.md").read_text()
    assert f"|{DECODE}/test_clean/ASR|2|" in results and "## Environments" in results
    assert "tasu train --config conf/train_text.yaml" in results and "tasu decode --exp" in results
    assert "Stage 7" in log
    analyzed(recipe, "test_clean/ASR.jsonl", models["encoder"])   # flac

    # another --inference_nj splits the records otherwise: the jobs decode anew (tasu decode refused
    # to resume an output.J holding keys its new split lacks, and the run stopped); another --dump_nj
    # makes the set's posterior dump anew (it was refused as "made with other input files or --nj")
    again = sh(recipe, "./run.sh", "--stage", "5", "--stop_stage", "6", "--test_sets", "test_clean",
               "--inference_nj", "2", "--dump_nj", "2", "--encoder_path", models["encoder"],
               "--llm_path", models["llm"], "--decode_args", QUICK_DECODE, env=env)
    assert "output.1: decoded from other records (test sets, tasks, data or --inference_nj changed)" in again.stderr
    assert "test_clean: made with --nj 1, not 2: making it anew" in again.stderr
    assert "records dumped (0 of 2 jobs run now)" in again.stderr   # the job runner's jobs made it
    assert [x.split("\t")[0] for x in lines(hyp)] == ["120-2002-0000", "121-2002-0001"]

    # a training refused since (a resume with other settings) did not make the model: RESULTS.md showed its command
    models_opts = ("--encoder_path", models["encoder"], "--llm_path", models["llm"])
    refused = sh(recipe, "./run.sh", "--stage", "3", "--stop_stage", "3", "--test_sets", "test_clean", *models_opts,
                 "--train_text_args", QUICK_TRAIN + " optim.lr=0.5", env=env, ok=False)
    assert refused.returncode == 1 and "optim.lr" in refused.stderr
    sh(recipe, "./run.sh", "--stage", "7", "--stop_stage", "7", "--test_sets", "test_clean", *models_opts,
       "--decode_args", QUICK_DECODE, env=env)
    results = (recipe / "RESULTS.md").read_text()
    assert "tasu train --config conf/train_text.yaml" in results and "optim.lr=0.5" not in results

    # a table that cannot be made (a hypothesis changed after its score) leaves RESULTS.md as it was
    hyp.write_text(hyp.read_text() + "\n")
    stale = sh(recipe, "./run.sh", "--stage", "7", "--stop_stage", "7", "--test_sets", "test_clean", *models_opts,
               "--decode_args", QUICK_DECODE, env=env, ok=False)
    assert stale.returncode == 1 and "hyp.trn" in stale.stderr
    assert (recipe / "RESULTS.md").read_text() == results and not (recipe / "RESULTS.md.tmp").exists()

    # a set of records without targets (hypotheses only) has an empty ref.trn: stage 6 stopped on it
    # with "no references"; it is left unscored
    (hyp.parent / "ref.trn").write_text("")
    unlabelled = sh(recipe, "./run.sh", "--stage", "6", "--stop_stage", "6", "--test_sets", "test_clean",
                    *models_opts, "--decode_args", QUICK_DECODE, env=env)
    assert "test_clean/ASR: its records have no targets (hypotheses only): not scored" in unlabelled.stderr
    assert not (hyp.parent / "score.json").exists()   # of the references before


@pytest.mark.slow
def test_slurp(tmp_path, models):
    corpus = write_slurp(tmp_path / "corpora")
    recipe = copy_recipe("slurp", tmp_path)
    run_all_stages(recipe, {"SLURP": str(corpus)}, models)
    train = recipe / "data" / "train"
    assert len(lines(train / "text")) == 3 * 2 + 1  # two real recordings per prompt, one synthetic
    assert lines(train / "scenario")[0] == "4000-audio-1490000000-far alarm"
    assert lines(train / "action")[0] == "4000-audio-1490000000-far set"
    record = json.loads(lines(recipe / "dump" / "test" / "SLU_scenario.jsonl")[0])
    assert record["target"] == "datetime" and record["GT"] == "what time is it in dublin" and "path" in record
    text_only = json.loads(lines(recipe / "dump" / "train" / "SLU_action.text_only.jsonl")[0])
    assert "path" not in text_only and text_only["GT"] == "wake me up at seven in the morning"

    # stage 5 read the encoder's posteriors from a dump of the test set, made once (--posterior_dumps true)
    assert len(list((recipe / "dump" / "posteriors").glob("*/test/.done"))) == 1
    found = scores(recipe)
    greedy = f"decode_greedy_best{DECODE_ARGS}"
    assert set(found) == {f"tasu_train_text/{greedy}/test/{t}" for t in ("ASR", "SLU_scenario", "SLU_action")}
    assert found[f"tasu_train_text/{greedy}/test/SLU_action"]["metric"] == "acc"
    assert found[f"tasu_train_text/{greedy}/test/ASR"]["metric"] == "wer"
    for task in ("ASR", "SLU_scenario", "SLU_action"):  # the joint decode split back per task
        ref = lines(recipe / "exp" / "tasu_train_text" / greedy / "test" / task / "ref.trn")
        assert [x.split("\t")[0] for x in ref] == ["4005-audio-1490000005-far", "4005-audio-1490000005-headset",
                                                  "4006-audio-1490000006-far", "4006-audio-1490000006-headset"]
    assert "Intent Classification" in (recipe / "RESULTS.md").read_text() or "Accuracy" in (recipe / "RESULTS.md").read_text()
    analyzed(recipe, "test/SLU_scenario.jsonl", models["encoder"])   # the transcript in GT, the target a label


def test_commonvoice(tmp_path, models):
    """Stages 1-2 only: stages 3-7 for one ASR task are librispeech's (the same shared code)."""
    corpus = write_commonvoice(tmp_path / "corpora")
    recipe = copy_recipe("commonvoice", tmp_path)
    # --datadir moves the data dirs: stage 1 writes them there, stage 2 reads them there
    prepare(recipe, {"COMMONVOICE": str(corpus)}, "--test_sets", "test", "--datadir", "prepared")
    assert not (recipe / "data").exists()
    assert lines(recipe / "prepared" / "train" / "text")[0] == "common_voice_en_1000 Turn on the kitchen lights?"
    assert lines(recipe / "prepared" / "train" / "wav.scp")[0].endswith("clips/common_voice_en_1000.mp3")
    assert lines(recipe / "prepared" / "train" / "utt2spk")[0] == f"common_voice_en_1000 {0:064x}"
    record = json.loads(lines(recipe / "dump" / "test" / "ASR.jsonl")[0])
    assert record["task"] == "ASR" and record["path"].endswith(".mp3")
    analyzed(recipe, "test/ASR.jsonl", models["encoder"])   # mp3


def test_covost(tmp_path, models):
    """Stages 1-2 only: stages 3-7 decode and score each task of the run the same way for any task list
    (slurp runs them on three); BLEU's zh and 13a tokenisation is checked in test_score.py."""
    tsv_dir, cv = write_covost(tmp_path / "corpora")
    recipe = copy_recipe("covost", tmp_path)
    prepare(recipe, {"COVOST2": str(tsv_dir), "COMMONVOICE": str(cv)})
    test = recipe / "data" / "test"
    assert lines(test / "translation_zh")[0] == "common_voice_en_1008 打开厨房的灯"
    assert lines(test / "translation_de")[0] == "common_voice_en_1008 Mach das Licht in der Küche an"
    record = json.loads(lines(recipe / "dump" / "train" / "EN2DE.text_only.jsonl")[0])
    assert record == {"key": "common_voice_en_1000", "task": "EN2DE", "target": "Mach das Licht in der Küche an",
                      "GT": "Turn on the kitchen lights?"}
    for task, target in (("EN2ZH", "打开厨房的灯"), ("EN2DE", "Mach das Licht in der Küche an")):
        record = json.loads(lines(recipe / "dump" / "test" / f"{task}.jsonl")[0])
        assert record["task"] == task and record["target"] == target and "path" in record
    analyzed(recipe, "test/EN2DE.jsonl", models["encoder"])   # the transcript in GT, the target a translation


@pytest.mark.slow
def test_template_recipe_with_a_task_and_prompts_of_its_own(tmp_path, models):
    """A new corpus as egs/TEMPLATE/README.md says to add one: the template's local/data.sh on its own
    layout, a label file of the corpus, and a task no prompt set of tasu has (--prompts), through every
    stage; stage 2 makes a task's file again when --tasks gives it another target file."""
    corpus = write_template_corpus(tmp_path / "corpora")
    recipe = copy_recipe("TEMPLATE", tmp_path)
    env = {"CORPUS": str(corpus)}
    sh(recipe, "./run.sh", "--stop_stage", "1", env=env)
    assert [x.split()[0] for x in lines(recipe / "data" / "train" / "text")] == [   # the path tells takes apart
        "train-spk0-take01", "train-spk0-take02", "train-spk0-take03",
        "train-spk1-take01", "train-spk1-take02", "train-spk1-take03"]
    assert lines(recipe / "data" / "train" / "utt2spk")[3] == "train-spk1-take01 spk1"

    paths = ["--encoder_path", models["encoder"], "--llm_path", models["llm"]]
    early = sh(recipe, "./run.sh", "--stage", "3", "--stop_stage", "3", *paths, env=env, ok=False)
    assert early.returncode == 1 and "dump/train/ASR.text_only.jsonl does not exist: run stage 2 first" in early.stderr
    line = int(re.search(r"\(tasu\.sh:(\d+)\) ERROR:", early.stderr).group(1))   # where it stopped, not die()
    assert "die " in (recipe.parent / "TEMPLATE" / "tasu.sh").read_text().splitlines()[line - 1]
    assert not (recipe / "exp").exists()
    missing = sh(recipe, "./run.sh", "--stage", "2", "--stop_stage", "2", "--test_sets", "test eval", env=env, ok=False)
    assert missing.returncode == 1 and not (recipe / "dump").exists()
    assert "data/eval does not exist: stage 1 (local/data.sh) made dev test train; is 'eval' one of its sets?" \
        in missing.stderr

    for d in filter(Path.is_dir, (recipe / "data").iterdir()):   # the corpus's labels: each sentence's first word
        labels = [f"{utt} {words[0]}" for utt, *words in (x.split() for x in lines(d / "text"))]
        (d / "intent").write_text("".join(x + "\n" for x in labels))
        (d / "intent_v2").write_text("".join(x.replace(" ", " v2-", 1) + "\n" for x in labels))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"task": t, "prompt": p}) + "\n" for t, p in [
        ("ASR", "Transcribe the speech."), ("ASR", "Write down what is said."),
        ("SLU_intent", "Which intent does the speaker have? Answer with one word.")]))
    tasks = ["--tasks", "ASR SLU_intent:intent", "--prompts", str(prompts)]
    builtin = sh(recipe, "./run.sh", "--stage", "2", "--stop_stage", "2", "--tasks", "ASR SLU_intent:intent",
                 env=env, ok=False)
    assert builtin.returncode == 1 and "unknown task 'SLU_intent'" in builtin.stdout
    assert "dump/train/SLU_intent.jsonl: 5 more lines with the problem of line 1" in builtin.stdout   # not six lines
    sh(recipe, "./run.sh", "--stage", "2", "--stop_stage", "2", *tasks, env=env)
    assert json.loads(lines(recipe / "dump" / "test" / "SLU_intent.jsonl")[0])["target"] == "turn"
    for d in filter(Path.is_dir, (recipe / "data").iterdir()):   # older than stage 2's files: only --tasks changes
        for name in ("intent", "intent_v2"):
            os.utime(d / name, (0, 0))
    tasks[1] = "ASR SLU_intent:intent_v2"
    again = sh(recipe, "./run.sh", "--stage", "2", "--stop_stage", "2", *tasks, env=env)
    assert ("dump/test/SLU_intent.jsonl was made from 'task SLU_intent, targets from data/test/intent', not "
            "'task SLU_intent, targets from data/test/intent_v2': making it again") in again.stderr
    assert "dump/test/ASR.jsonl: already made" in again.stderr
    assert json.loads(lines(recipe / "dump" / "test" / "SLU_intent.jsonl")[0])["target"] == "v2-turn"
    assert json.loads(lines(recipe / "dump" / "train" / "SLU_intent.text_only.jsonl")[0])["target"] == "v2-turn"

    sh(recipe, "./run.sh", "--stage", "3", "--stop_stage", "7", *tasks, *paths,
       "--train_text_args", QUICK_TRAIN, "--decode_args", QUICK_DECODE, env=env)
    assert f"data.prompts={prompts}" in lines(recipe / "exp" / "tasu_train_text" / "log" / "train.log")[0]
    found = scores(recipe)
    assert set(found) == {f"tasu_train_text/{DECODE}/test/{t}" for t in ("ASR", "SLU_intent")}
    assert found[f"tasu_train_text/{DECODE}/test/SLU_intent"]["metric"] == "acc"
    ref = lines(recipe / "exp" / "tasu_train_text" / DECODE / "test" / "SLU_intent" / "ref.trn")
    assert ref == ["test-spk0-take01\tv2-turn", "test-spk1-take01\tv2-turn"]


# --------------------------------------------------------------------------------------------------
# The shared stage script and files


def stage_script_options() -> list[str]:
    text = (EGS / "TEMPLATE" / "tasu.sh").read_text()
    block = text[text.index("# Options:"):text.index("help_message=")]
    return re.findall(r"^([a-z_]+)=", block, flags=re.M)


def test_help_lists_every_option_with_its_default(tmp_path):
    recipe = copy_recipe("librispeech", tmp_path)
    out = sh(recipe, "../TEMPLATE/tasu.sh", "--help")
    options = stage_script_options()
    assert len(options) >= 30
    for name in options:
        assert f"  --{name} " in out.stdout, f"--{name} is not in --help"
    assert "--stage <n>                 first stage to run (1)" in out.stdout  # with its default
    assert "Usage:" in sh(recipe, "local/data.sh", "--help").stdout


def test_unknown_option_and_missing_model_paths_fail_clearly(tmp_path):
    recipe = copy_recipe("slurp", tmp_path)
    out = sh(recipe, "./run.sh", "--no_such_option", "1", ok=False)
    assert out.returncode != 0 and "unknown option '--no_such_option'" in out.stderr
    out = sh(recipe, "./run.sh", "--audio_sft", "maybe", ok=False)
    assert out.returncode != 0 and "takes true or false" in out.stderr
    out = sh(recipe, "./run.sh", "--stage", "3", "--encoder_path", str(tmp_path), ok=False)
    assert out.returncode == 1
    assert "--llm_path is required by stage 3 (text-only training)" in out.stderr
    assert not (recipe / "exp").exists()  # checked before anything ran
    out = sh(recipe, "./run.sh", "--stage", "5", "--stop_stage", "5", "--decode_config", "conf/nope.yaml", ok=False)
    assert out.returncode == 1 and "config file conf/nope.yaml does not exist" in out.stderr
    # a stage range with nothing in it is a mistake, not a run that did nothing and exited 0
    out = sh(recipe, "./run.sh", "--stage", "6", "--stop_stage", "5", ok=False)
    assert out.returncode == 1 and "--stage 6 comes after --stop_stage 5: nothing to run" in out.stderr
    out = sh(recipe, "./run.sh", "--stage", "-3", "--stop_stage", "0", ok=False)   # ran nothing, "Successfully"
    assert out.returncode == 1 and "--stop_stage 0: there is no such stage (the stages are 1-7)" in out.stderr
    out = sh(recipe, "./run.sh", "--stage", "8", ok=False)
    assert out.returncode == 1 and "--stage 8: there is no such stage (the stages are 1-7)" in out.stderr
    for empty in ("--datadir", "--dumpdir", "--expdir"):   # '' would put the run's files under /
        out = sh(recipe, "./run.sh", empty, "", ok=False)
        assert out.returncode == 1 and f"{empty} is empty: name a directory" in out.stderr
    out = sh(recipe, "./run.sh", "--expdir", "exp_JOBS", ok=False)   # the jobs would write exp_1S, exp_2S
    assert out.returncode == 1 and "--expdir exp_JOBS: the job runner makes every JOB of a job's command" in out.stderr
    for option, value, message in (("--inference_nj", "0", "--inference_nj must be at least 1, not 0"),
                                   ("--dump_nj", "-2", "--dump_nj must be at least 1, not -2"),
                                   ("--num_nodes", "0", "--num_nodes must be at least 1, not 0"),
                                   ("--ngpu", "-1", "--ngpu must be 0 (CPU) or more, not -1")):
        out = sh(recipe, "./run.sh", option, value, ok=False)
        assert out.returncode == 1 and message in out.stderr
    # a task names files: twice, stage 2 wrote one file twice (exit 0); with a '/', a bare "No such file"
    out = sh(recipe, "./run.sh", "--stage", "6", "--tasks", "ASR SLU_action:action SLU_action:action_v2", ok=False)
    assert out.returncode == 1 and "--tasks: SLU_action is named twice (SLU_action:action and " \
        "SLU_action:action_v2): its files would be written twice" in out.stderr
    out = sh(recipe, "./run.sh", "--stage", "6", "--tasks", "ASR intent/v2:intent", ok=False)
    assert out.returncode == 1 and "--tasks intent/v2:intent: 'intent/v2' is no task name" in out.stderr


def test_a_name_with_job_in_it_is_refused_before_any_stage(tmp_path):
    """The job runner makes every JOB of a job array's command its number: the posterior dump of a set
    JOBtalk read dump/1talk, decoding exp/tasu_train_JOBS looked for exp/tasu_train_1S. Refused up front,
    as the directories are, when the run names it (a set, a task, a config name that makes an experiment's)."""
    recipe = copy_recipe("librispeech", tmp_path)
    shutil.copy(recipe / "conf" / "train_text.yaml", recipe / "conf" / "train_JOBS.yaml")
    shutil.copy(recipe / "conf" / "decode_beam4.yaml", recipe / "conf" / "decode_JOB.yaml")
    job = "the job runner makes every JOB of a job's command its number (as Kaldi's run.pl does)"
    for options, message in (
            (("--test_sets", "test_clean JOBtalk"), f"--test_sets test_clean JOBtalk: {job}: set JOBtalk's files"),
            (("--train_set", "trainJOB"), f"--train_set trainJOB: {job}"),
            (("--valid_set", "JOB"), f"--valid_set JOB: {job}"),
            (("--tasks", "ASR SLU_JOB:intent"), f"--tasks SLU_JOB:intent: {job}"),
            (("--train_text_config", "conf/train_JOBS.yaml"), "experiment exp/tasu_train_JOBS (--text_tag, by default "
                                                              f"from --train_text_config conf/train_JOBS.yaml): {job}"),
            (("--text_tag", "a_JOB"), "experiment exp/a_JOB (--text_tag"),
            (("--audio_sft", "true", "--audio_tag", "JOBS"), "experiment exp/JOBS (--audio_tag"),
            (("--decode_config", "conf/decode_JOB.yaml"), "decode directory decode_JOB_best (from --decode_config")):
        out = sh(recipe, "./run.sh", "--stop_stage", "1", *options, ok=False)
        errors = [line for line in out.stderr.splitlines() if "ERROR" in line]
        assert out.returncode == 1 and len(errors) == 1 and message in errors[0], (options, out.stderr)
        assert not (recipe / "data").exists() and not (recipe / "exp").exists()


def test_a_test_set_named_twice_is_refused_before_any_stage(tmp_path):
    """Stage 5 decoded its records twice in one file: its earlier outputs were removed, and the decode
    failed on a duplicate key in a file tasu wrote, after the stages before it."""
    recipe = copy_recipe("librispeech", tmp_path)
    out = sh(recipe, "./run.sh", "--stop_stage", "1", "--test_sets", "test_clean dev_clean test_clean", ok=False)
    errors = [line for line in out.stderr.splitlines() if "ERROR" in line]
    assert out.returncode == 1 and len(errors) == 1, out.stderr
    assert errors[0].endswith("ERROR: --test_sets test_clean dev_clean test_clean: test_clean is named twice; name "
                              "each set once"), errors
    assert not (recipe / "data").exists()


def test_a_task_s_default_metric_follows_its_name():
    """Any name with a 2 in it was scored with BLEU (L2ASR, Speech2Text), and only a *2ZH one with the
    Chinese tokenizer: EN2CN or en2zh got 13a, BLEU 0.00 for a perfect translation. Stage 6 now leaves the
    tokenizer to tasu score (the references' script) and a name is a translation if it is a language pair."""
    script = (EGS / "TEMPLATE" / "tasu.sh").read_text()
    functions = "".join(re.search(rf"^{f}\(\) {{.*?^}}\n", script, flags=re.M | re.S).group(0)
                        for f in ("task_name", "task_metric"))
    specs = {"ASR": "wer", "EN2ZH": "bleu", "en2de": "bleu", "EN2ZH_CN:translation": "bleu", "ZH2EN": "bleu",
             "L2ASR": "wer", "Speech2Text": "wer", "SLU_scenario:scenario": "acc", "sentiment": "acc",
             "emotion": "wer", "EN2DE:translation_de:chrf": "chrf", "ASR::cer": "cer", "S2TT": "bleu", "X2EN": "bleu",
             "zh-CN2en": "bleu", "L2ASR:text": "wer"}
    out = subprocess.run(["bash", "-c", functions + 'for s in "$@"; do task_metric "$s"; done', "-", *specs],
                         capture_output=True, text=True, check=True)
    assert dict(zip(specs, out.stdout.split())) == specs
    assert "--bleu-tokenize" not in script


def test_training_launcher_one_cpu_process_or_deepspeed_with_a_port_of_its_own(tmp_path):
    recipe = copy_recipe("librispeech", tmp_path)
    (recipe / "cmd.sh").write_text('cuda_cmd="echo"\ndecode_cmd="echo"\n')   # print the training command
    stand_in_for_stage_2(recipe)
    for name in ("enc", "llm"):
        (tmp_path / name).mkdir()
    paths = ["--encoder_path", str(tmp_path / "enc"), "--llm_path", str(tmp_path / "llm")]
    cpu = sh(recipe, "./run.sh", "--stage", "3", "--stop_stage", "3", *paths).stdout
    assert cpu.startswith("--gpu 0 exp/tasu_train_text/log/train.log tasu train --config conf/train_text.yaml")
    gpus = sh(recipe, "./run.sh", "--stage", "3", "--stop_stage", "3", "--ngpu", "2", *paths).stdout
    launcher = re.match(r"--gpu 2 \S+ deepspeed --num_gpus 2 --master_port (\d+) --module tasu\.cli train ", gpus)
    assert launcher and launcher.group(1) != "29500", gpus   # not DeepSpeed's default: runs may share a node
    assert "engine.device=cuda" in gpus
    # --ngpu 2 --device cpu: two CPU processes under the launcher, no device asked of the job runner
    cpus = sh(recipe, "./run.sh", "--stage", "3", "--stop_stage", "3", "--ngpu", "2", "--device", "cpu", *paths).stdout
    assert re.match(r"--gpu 0 \S+ deepspeed --num_gpus 2 ", cpus) and "engine.device=cpu" in cpus, cpus

    # a run again (resuming a killed one) keeps the earlier runs' logs: why they stopped
    logs = recipe / "exp" / "tasu_train_text" / "log"
    logs.mkdir(parents=True, exist_ok=True)   # (echo, the job runner here, writes none)
    for run in ("first", "second"):
        (logs / "train.log").write_text(f"the {run} run\n")
        assert "the earlier run's log is now" in sh(recipe, "./run.sh", "--stage", "3", "--stop_stage", "3",
                                                    *paths).stderr
    assert [(logs / f"train.log.{i}").read_text() for i in (1, 2)] == ["the first run\n", "the second run\n"]

    # a training still running keeps its log: the stage stops before it moves anything aside
    from tasu.lock import DirLock

    running = DirLock(recipe / "exp" / "tasu_train_text", "training").acquire()
    try:
        (logs / "train.log").write_text("the live run\n")
        out = sh(recipe, "./run.sh", "--stage", "3", "--stop_stage", "3", *paths, ok=False)
    finally:
        running.release()
    assert out.returncode == 1 and "exp/tasu_train_text is in use: training by pid" in out.stderr.splitlines()[-1]
    assert (logs / "train.log").read_text() == "the live run\n" and not (logs / "train.log.3").exists()


def test_librispeech_prepares_the_run_s_sets_and_names_the_missing_subset(tmp_path):
    corpus = write_librispeech(tmp_path / "corpora")   # train-clean-100, dev-clean, test-clean only
    recipe = copy_recipe("librispeech", tmp_path)
    env = {"LIBRISPEECH": str(corpus), "LIBRISPEECH_LM_NORM": ""}
    sh(recipe, "./run.sh", "--stage", "1", "--stop_stage", "1", "--test_sets", "test_clean", env=env)
    assert sorted(p.name for p in (recipe / "data").iterdir() if p.is_dir()) == ["dev_clean", "test_clean", "train"]
    out = sh(recipe, "./run.sh", "--stage", "1", "--stop_stage", "1", "--test_sets", "test_other", env=env, ok=False)
    assert out.returncode != 0
    assert ("test-other: no such subset directory; this run needs test-other, and "
            f"{corpus} has dev-clean, test-clean, train-clean-100") in out.stderr, out.stderr


def test_a_second_run_of_the_data_stages_stops_at_once(tmp_path):
    """Two runs preparing one data/ (or dump/) would interleave their files; the second stops, naming
    the first's process, and the first's lock goes when it does."""
    from tasu.lock import DirLock

    corpus = write_librispeech(tmp_path / "corpora")
    recipe = copy_recipe("librispeech", tmp_path)
    env = {"LIBRISPEECH": str(corpus), "LIBRISPEECH_LM_NORM": ""}
    for stage, directory, what in (("1", "data", "data preparation"), ("2", "dump", "the JSONL stage")):
        first = DirLock(recipe / directory, what).acquire()
        out = sh(recipe, "./run.sh", "--stage", stage, "--stop_stage", stage, "--test_sets", "test_clean", env=env,
                 ok=False)
        first.release()
        assert out.returncode == 1, out.stderr
        assert f"ERROR: {directory} is in use: {what} by pid {os.getpid()} on " in out.stderr.splitlines()[-1]
        sh(recipe, "./run.sh", "--stage", stage, "--stop_stage", stage, "--test_sets", "test_clean", env=env)


def test_job_runner_logs_each_job_and_reports_the_failing_one(tmp_path):
    runner = str(ROOT / "utils" / "run_local.sh")
    sh(tmp_path, runner, "JOB=1:3", "log/echo.JOB.log", "echo", "job JOB of 3", "|", "tr", "a-z", "A-Z")
    assert [lines(tmp_path / "log" / f"echo.{i}.log")[3] for i in (1, 2, 3)] == [f"JOB {i} OF 3" for i in (1, 2, 3)]
    assert lines(tmp_path / "log" / "echo.2.log")[-1].startswith("# Ended (code 0)")
    out = sh(tmp_path, runner, "--max_jobs_run", "2", "JOB=1:3", "log/fail.JOB.log",
             "bash", "-c", "echo reached JOB; exit $(( JOB == 2 ))", ok=False)
    assert out.returncode == 1
    assert "job 2 failed; the end of log/fail.2.log" in out.stderr and "reached 2" in out.stderr
    assert "job 1 failed" not in out.stderr and "1 of 3 job(s) failed" in out.stderr


def test_job_runner_shares_the_cores_between_concurrent_jobs(tmp_path):
    runner = str(ROOT / "utils" / "run_local.sh")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cores = len(os.sched_getaffinity(0))  # what nproc counts

    def threads(*args: str) -> list[str]:
        subprocess.run([runner, *args, "log/t.JOB.log", "bash", "-c", "echo threads=${OMP_NUM_THREADS:-unset}"],
                       cwd=tmp_path, env=env, check=True)
        return [line for i in (1, 2) if (tmp_path / "log" / f"t.{i}.log").exists()
                for line in lines(tmp_path / "log" / f"t.{i}.log") if line.startswith("threads=")]

    assert threads("JOB=1:2") == [f"threads={max(1, cores // 2)}"] * 2
    assert threads("--max_jobs_run", "1", "JOB=1:2") == ["threads=unset"] * 2  # one at a time: all cores
    env["OMP_NUM_THREADS"] = "3"  # the caller's choice stands
    assert threads("JOB=1:2") == ["threads=3"] * 2


def test_job_runner_gives_each_job_of_an_array_its_own_devices(tmp_path):
    """--gpu N: N decoding jobs loaded their models onto the first device, the others idle."""
    runner = str(ROOT / "utils" / "run_local.sh")
    smi, none = tmp_path / "bin" / "nvidia-smi", tmp_path / "none" / "nvidia-smi"   # two GPUs; none (this machine's?)
    for stub, gpus in ((smi, 2), (none, 0)):
        stub.parent.mkdir()
        stub.write_text("#!/bin/sh\n" + "".join(f'echo "GPU {i}: X (UUID: GPU-{i})"\n' for i in range(gpus)))
        stub.chmod(0o755)
    plain = {k: v for k, v in os.environ.items() if not k.endswith("VISIBLE_DEVICES")}
    plain["PATH"] = f"{none.parent}:{os.environ['PATH']}"

    def devices(*args: str, jobs: int = 3, **env: str) -> list[str]:
        shutil.rmtree(tmp_path / "log", ignore_errors=True)
        subprocess.run([runner, *args, f"JOB=1:{jobs}", "log/d.JOB.log", "bash", "-c",
                        "echo cuda=${CUDA_VISIBLE_DEVICES-unset} npu=${ASCEND_RT_VISIBLE_DEVICES-unset}"],
                       cwd=tmp_path, env={**plain, **env}, check=True)
        return [line for i in range(1, jobs + 1) for line in lines(tmp_path / "log" / f"d.{i}.log")
                if line.startswith("cuda=")]

    assert devices("--gpu", "1", CUDA_VISIBLE_DEVICES="4,6") == ["cuda=4 npu=unset", "cuda=6 npu=unset",
                                                                  "cuda=4 npu=unset"]
    assert devices("--gpu", "2", ASCEND_RT_VISIBLE_DEVICES="0,1,2,3", jobs=2) == ["cuda=unset npu=0,1",
                                                                                   "cuda=unset npu=2,3"]
    assert devices("--gpu", "2", CUDA_VISIBLE_DEVICES="3", jobs=2) == ["cuda=3 npu=unset"] * 2   # at most all
    with_smi = dict(PATH=f"{smi.parent}:{os.environ['PATH']}")
    assert devices("--gpu", "1", CUDA_VISIBLE_DEVICES="", **with_smi) == ["cuda= npu=unset"] * 3   # hidden on purpose
    assert devices("--gpu", "1", **with_smi) == ["cuda=0 npu=unset", "cuda=1 npu=unset", "cuda=0 npu=unset"]
    assert devices("--gpu", "0", **with_smi) == ["cuda=unset npu=unset"] * 3   # CPU jobs: nothing dealt
    assert devices("--gpu", "1") == ["cuda=unset npu=unset"] * 3   # no device to deal
    # one job (a training's DeepSpeed launcher) sees every device
    subprocess.run([runner, "--gpu", "1", "log/one.log", "bash", "-c", "echo cuda=$CUDA_VISIBLE_DEVICES"],
                   cwd=tmp_path, env={**plain, "CUDA_VISIBLE_DEVICES": "0,1"}, check=True)
    assert "cuda=0,1" in lines(tmp_path / "log" / "one.log")


def test_cmd_and_path_copies_are_identical():
    for name in ("cmd.sh", "path.sh"):
        template = (EGS / "TEMPLATE" / name).read_text()
        for recipe in RECIPES:
            assert (EGS / recipe / name).read_text() == template, f"egs/{recipe}/{name} differs from egs/TEMPLATE/{name}"


def test_recipes_have_the_standard_files():
    for recipe in ["TEMPLATE", *RECIPES]:
        d = EGS / recipe
        for name in ("run.sh", "db.sh", "path.sh", "cmd.sh", "local/data.sh"):
            assert (d / name).is_file(), f"egs/{recipe}/{name} is missing"
        for name in ("run.sh", "local/data.sh"):
            assert os.access(d / name, os.X_OK), f"egs/{recipe}/{name} is not executable"
        assert list((d / "conf" / "tuning").glob("*.yaml")), f"egs/{recipe}/conf/tuning has no variant"
        for script in (d / "run.sh", d / "db.sh", d / "local" / "data.sh"):
            code = "\n".join(x for x in script.read_text().splitlines() if not x.lstrip().startswith("#"))
            assert not re.search(r"(^|[\s=\"'])/(data|home|mnt|work|export|tmp)/", code, flags=re.M), \
                f"{script} holds an absolute path"


def test_a_recipe_run_from_another_directory_says_where_to_run_it(tmp_path):
    """Its paths (path.sh, local/, conf/, ../TEMPLATE) are relative to the recipe: from elsewhere,
    one line saying where to run it, before anything runs (it was 'No such file', status 127)."""
    for recipe in ["TEMPLATE", *RECIPES, "mini"]:
        for cwd in (tmp_path, EGS, EGS / recipe / "conf"):
            where = os.path.relpath(EGS / recipe, cwd)   # the recipe as the user named it
            out = subprocess.run(["bash", f"{where}/run.sh", "--help"], cwd=cwd, capture_output=True, text=True,
                                 timeout=60)
            assert (out.returncode, out.stdout) == (1, ""), (recipe, cwd, out.stderr)
            assert out.stderr == f"{where}/run.sh: run it from its own directory: cd {where} && ./run.sh\n", recipe
    assert list(tmp_path.iterdir()) == []


TRAIN_CONFIGS = sorted(p for p in EGS.glob("*/conf/**/*.yaml") if not p.name.startswith("decode_"))
def test_configs_and_their_options_are_checked_before_the_first_stage_runs(tmp_path):
    """A typo in the audio config or its options stopped stage 4 after stage 3's training; a decode
    config that did not parse was ignored (tasu decode's defaults, exit 0), and one whose value held
    '; cmd' ran the command in every decode job."""
    recipe = copy_recipe("slurp", tmp_path)
    models = ("--encoder_path", str(tmp_path), "--llm_path", str(tmp_path))
    (recipe / "conf" / "bad_audio.yaml").write_text("optim:\n  warmup_step: 5\n")
    (recipe / "conf" / "decode_bad.yaml").write_text("beam: 1 ; touch PWNED ;\n")
    for options, message in (
            (("--train_audio_config", "conf/bad_audio.yaml"),
             "conf/bad_audio.yaml: optim: unknown key 'warmup_step' (did you mean 'warmup_steps'?)"),
            (("--decode_config", "conf/decode_bad.yaml"),
             "conf/decode_bad.yaml: beam: must be a number or one plain word, not '1 ; touch PWNED ;'"),
            (("--inference_checkpoint", "bset"), "--inference_checkpoint must be best, last or step_N, not 'bset'"),
            (("--tasks", "ASR::bleuu"), "--tasks ASR::bleuu: the metric must be wer, cer, bleu or acc, not 'bleuu'"),
            # the job runner keeps a ';' word as an operator: what followed ran in every decode job
            (("--decode_args", "--beam 1 ; touch PWNED"), "--decode_args: ';' is a shell operator: the job runner "
                                                          "would run what follows it as a command"),
            (("--train_text_args", "optim.lr=1e-3 && touch PWNED"), "--train_text_args: '&&' is a shell operator"),
            # the later option won: hypotheses of the transcripts (or another checkpoint) under the decode's name
            (("--decode_args", "--input simulated"), "--decode_args: --input is set by stage 5 (see "),
            (("--decode_args", "--checkpoint=last"), "--decode_args: --checkpoint is set by stage 5"),
            # tasu decode refused it only at stage 5, after the training stages
            (("--decode_args", "--beam 0"), "--decode_args '--beam 0': argument --beam: must be at least 1, got 0")):
        out = sh(recipe, "./run.sh", "--stage", "3", "--audio_sft", "true", *models, *options, ok=False)
        assert out.returncode == 1 and message in out.stderr.strip().splitlines()[-1], out.stderr
        assert not (recipe / "exp").exists() and not (recipe / "PWNED").exists()


def test_stage_5_decodes_best_or_last_only_of_a_training_that_has_finished(tmp_path):
    """A training killed half-way left checkpoints/last, and stage 5 decoded its half-trained model,
    stages 6-7 scored and tabulated it, exit 0. best and last stand for the model a training ended with:
    of an unfinished one they are refused before any decoding; a step_N named on purpose is decoded."""
    import torch
    from safetensors.torch import save_file

    recipe = copy_recipe("librispeech", tmp_path)
    ckpts = recipe / "exp" / "tasu_train_text" / "checkpoints"
    for step in ("step_000003", "step_000006"):   # weights that record their step: a tasu that marks the end
        (ckpts / step / "model").mkdir(parents=True)
        save_file({"w": torch.zeros(1)}, ckpts / step / "model" / "trainable.safetensors", metadata={"step": step[5:]})
    (ckpts / "last").write_text("step_000006\n")
    (ckpts / "finished").write_text("step_000003\n")   # resumed for more steps, then killed
    for checkpoint in ("best", "last"):
        out = sh(recipe, "./run.sh", "--stage", "5", "--inference_checkpoint", checkpoint, ok=False)
        errors = [line for line in out.stderr.splitlines() if "ERROR" in line]
        assert out.returncode == 1 and len(errors) == 1, out.stderr
        assert errors[0].endswith(
            f"ERROR: exp/tasu_train_text: its training has not finished (its last checkpoint is step_000006), so "
            f"--inference_checkpoint {checkpoint} would decode a half-trained model: run its training stage again to "
            "finish it (it resumes: stage 3 for exp/tasu_train_text, 4 for the audio ones), or decode one of its "
            "checkpoints on purpose with --inference_checkpoint step_N"), errors
        assert not list((recipe / "exp" / "tasu_train_text").glob("decode_*")) and not (recipe / "dump").exists()
    # a step named on purpose, or a finished training: on to the decoding (here, its missing JSONL)
    on = "dump/dev_clean/ASR.jsonl does not exist: run stage 2 first (stage 5 reads it)"
    out = sh(recipe, "./run.sh", "--stage", "5", "--inference_checkpoint", "step_3", ok=False)
    assert out.returncode == 1 and on in out.stderr and "not finished" not in out.stderr, out.stderr
    (ckpts / "finished").write_text("step_000006\n")
    out = sh(recipe, "./run.sh", "--stage", "5", ok=False)
    assert out.returncode == 1 and on in out.stderr and "not finished" not in out.stderr, out.stderr
    # an older tasu's experiment, which may not have marked its end: decoded, with a warning
    (ckpts / "finished").unlink()
    for step in ("step_000003", "step_000006"):
        (ckpts / step / "model" / "trainable.safetensors").unlink()
    out = sh(recipe, "./run.sh", "--stage", "5", ok=False)
    assert out.returncode == 1 and on in out.stderr and "not finished" not in out.stderr, out.stderr
    assert "WARNING: exp/tasu_train_text: written by an older tasu, which may not have marked the end of its " \
           "training: decoding its best checkpoint as the finished model's" in out.stderr, out.stderr


DECODE_CONFIGS = sorted(p for p in EGS.glob("*/conf/**/*.yaml") if p.name.startswith("decode_"))


@pytest.mark.parametrize("config", TRAIN_CONFIGS, ids=lambda p: str(p.relative_to(EGS)))
def test_training_config_passes_a_dry_run(config, capsys):
    assert tasu_main(["train", "--dry-run", "--config", str(config)]) == 0, capsys.readouterr().err
    assert "projector:" in capsys.readouterr().out


@pytest.mark.parametrize("config", DECODE_CONFIGS, ids=lambda p: str(p.relative_to(EGS)))
def test_decode_config_keys_are_tasu_decode_options(config):
    import yaml

    from tasu.cli import get_parser

    parser = get_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    if "decode" not in subparsers:
        pytest.skip("tasu decode is not in this build of the CLI")
    known = {s for a in subparsers["decode"]._actions for s in a.option_strings}
    for key in yaml.safe_load(config.read_text()):
        assert "--" + key.replace("_", "-") in known, f"{config}: '{key}' is not an option of tasu decode"
