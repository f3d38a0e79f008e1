"""egs/mini/local: the corpus generator, the units, the encoder and LLM trainers, run tiny, end to end.

The scripts run as the recipe runs them (subprocesses, from the recipe's working directory) on a
28-utterance corpus, with models trained for a step or two; what is checked is what later stages
rely on: the corpus invariants the TASU claim is tested on, and that the outputs load through
tasu's own loaders.
"""
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import score_json

LOCAL = Path(__file__).resolve().parents[1] / "egs" / "mini" / "local"
SIZES = ["--num-train", "16", "--num-dev", "4", "--num-test", "4", "--num-text-only", "20"]
SLURP_SCENARIOS = {"alarm", "audio", "calendar", "cooking", "datetime", "email", "general", "iot", "lists",
                   "music", "news", "play", "qa", "recommendation", "social", "takeaway", "transport", "weather"}

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("flite") is None,
                                reason="espeak-ng or flite is not installed")


def run(script: str, *args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, str(LOCAL / script), *args], cwd=cwd, check=True)


def table(path: Path) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in path.read_text(encoding="utf-8").splitlines())


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    """A recipe directory after make_corpus, train_units, train_encoder and train_llm (tiny settings)."""
    root = tmp_path_factory.mktemp("mini")
    run("make_corpus.py", "--data-dir", "data", *SIZES, cwd=root)
    run("train_units.py", cwd=root)
    run("train_encoder.py", "--epochs", "1", "--encoder-conf", '{"num_blocks": 2}', "--inter-ctc-block", "1",
        cwd=root)
    run("train_llm.py", "--steps", "2", "--num-layers", "1", "--hidden-size", "64",
        "--intermediate-size", "128", "--num-heads", "2", "--batch-size", "4", cwd=root)
    return root


def test_corpus_splits_are_disjoint_and_test_text_is_unseen(recipe):
    data = recipe / "data"
    text = {s: table(data / s / "text") for s in ("train", "dev", "test", "test_ood", "text_only")}
    assert {s: len(t) for s, t in text.items()} == {"train": 16, "dev": 4, "test": 4, "test_ood": 4,
                                                    "text_only": 20}
    sentences = {s: set(t.values()) for s, t in text.items()}
    training = sentences["train"] | sentences["text_only"]
    assert not sentences["test"] & training and not sentences["dev"] & training
    assert not sentences["dev"] & sentences["test"] and not sentences["train"] & sentences["text_only"]
    assert sentences["test_ood"] == sentences["test"]  # same sentences, other voices


def test_corpus_ood_voices_and_rates_are_unseen_in_training(recipe):
    data = recipe / "data"
    speakers = {s: set(table(data / s / "utt2spk").values()) for s in ("train", "dev", "test", "test_ood")}
    assert not speakers["test_ood"] & (speakers["train"] | speakers["dev"] | speakers["test"])
    corpus = json.loads((data / "local" / "corpus.json").read_text())
    assert not set(corpus["speakers"]["test_ood"]) & set(corpus["speakers"]["train"])
    assert "flite_rms" not in speakers["train"] | speakers["dev"] | speakers["test"]


def _local_module(name: str):
    """One of the recipe's local/*.py scripts, imported as a module (``mini_<name>``)."""
    spec = importlib.util.spec_from_file_location(f"mini_{name}", LOCAL / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_corpus_augments_train_only():
    """Speed perturbation and noise are drawn for train utterances alone (checked on a larger draw)."""
    module = _local_module("make_corpus")
    sentences = [(f"sentence {i}", "iot") for i in range(300)]
    rng = random.Random(0)
    train = module.assign_voices("train", sentences, Path("wav"), rng)
    ood = module.assign_voices("test_ood", sentences, Path("wav"), rng)
    assert {u.speed for u in train} == set(module.SPEEDS) and {u.noise for u in train} > {None}
    assert {u.engine for u in train} == {"espeak-ng", "flite"}
    assert {u.speed for u in ood} == {1.0} and {u.noise for u in ood} == {None}
    assert {u.voice for u in ood if u.engine == "flite"} == set(module.FLITE_OOD_VOICES)


def test_corpus_data_dirs_are_complete_with_scenarios(recipe):
    from tasu.data.audio import audio_info
    from tasu.data.kaldi_dir import read_data_dir

    for s in ("train", "dev", "test", "test_ood"):
        records = read_data_dir(recipe / "data" / s)
        scenario = table(recipe / "data" / s / "scenario")
        assert sorted(scenario) == [r.key for r in records]
        assert set(scenario.values()) <= SLURP_SCENARIOS
        info = audio_info(records[0].path)
        assert info.sample_rate == 16000 and info.duration > 0.3
    assert set(table(recipe / "data" / "text_only" / "scenario").values()) <= SLURP_SCENARIOS


def test_corpus_records_the_synthesizer_releases_that_spoke_it(recipe):
    versions = json.loads((recipe / "data" / "local" / "corpus.json").read_text())["synthesizers"]
    assert set(versions) == {"espeak-ng", "flite", "sox"}
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    assert f"text-to-speech: {versions['espeak-ng']} " in out
    assert all(v and " " not in v for v in versions.values()), versions


def test_corpus_is_reproducible(recipe, tmp_path):
    run("make_corpus.py", "--data-dir", "data", *SIZES, "--nj", "1", cwd=tmp_path)
    for name in ("train/text", "train/utt2spk", "test_ood/scenario", "text_only/text"):
        assert (tmp_path / "data" / name).read_bytes() == (recipe / "data" / name).read_bytes()
    key = next(iter(table(recipe / "data" / "dev" / "wav.scp")))
    wav = Path("data") / "wav" / "dev" / f"{key}.wav"
    assert (tmp_path / wav).read_bytes() == (recipe / wav).read_bytes()


def fake_tools(bin_dir: Path, **scripts: str) -> dict:
    """An environment whose PATH finds ``bin_dir`` first, holding the given shell stand-ins."""
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (bin_dir / name.replace("_", "-")).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name.replace("_", "-")).chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")


ESPEAK, FLITE = shutil.which("espeak-ng"), shutil.which("flite")


@pytest.mark.parametrize("case,error", [
    ("espeak-ng", "espeak-ng here lacks the voice variants m7 ('espeak-ng --voices=variant' lists those it has)"),
    ("flite", "flite here lacks the voices rms ('flite -lv' lists those it has)"),
    ("missing", "espeak-ng, sox not found on PATH (tools/setup.sh installs espeak-ng, flite and sox when run as root)"),
])
def test_corpus_refuses_synthesizers_that_lack_a_voice_it_names(tmp_path, case, error):
    """Both synthesizers speak a name they lack in their default voice, exit 0 and say nothing."""
    if case == "espeak-ng":
        env = fake_tools(tmp_path / "bin", espeak_ng=f'[ "$1" = --voices=variant ] || exec {ESPEAK} "$@"\n'
                                                      f'{ESPEAK} "$@" | grep -v "!v/m7 "')
    elif case == "flite":
        env = fake_tools(tmp_path / "bin", flite=f'[ "$1" = -lv ] || exec {FLITE} "$@"\n'
                                                 'echo "Voices available: kal kal16 awb slt "')
    else:  # a PATH with flite alone
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "flite").symlink_to(FLITE)
        env = dict(os.environ, PATH=str(tmp_path / "bin"))
    out = subprocess.run([sys.executable, str(LOCAL / "make_corpus.py"), "--data-dir", "data", *SIZES], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert out.returncode == 1
    assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith(f"make_corpus.py: {error}")
    assert not (tmp_path / "data").exists()


def test_corpus_names_the_utterance_a_synthesizer_failed_on(tmp_path):
    env = fake_tools(tmp_path / "bin", espeak_ng=f'case "$1" in --voices*) exec {ESPEAK} "$@";; esac; '
                                                  'echo "unknown phoneme table" >&2; exit 2')
    out = subprocess.run([sys.executable, str(LOCAL / "make_corpus.py"), "--data-dir", "data", *SIZES, "--nj", "1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr
    line = out.stderr.strip()
    assert line.startswith("make_corpus.py: ") and "-train" in line.split(":")[1]  # the utterance's key
    assert "espeak-ng failed (unknown phoneme table): espeak-ng -v " in line


@pytest.mark.parametrize("output,said", [("-n -t wav - trim 0 0", "no samples"), ("-n -t wav - trim 0 1", "silence")])
def test_corpus_refuses_a_synthesizer_that_writes_no_samples_or_silence(tmp_path, output, said):
    """A header without samples went into dev with duration 0.000 (exit 0) or was a traceback in the noise
    of a train utterance; silence went into training with its transcript."""
    env = fake_tools(tmp_path / "bin", espeak_ng=f'case "$1" in --voices*) exec {ESPEAK} "$@";; esac; '
                                                  f'exec sox -V1 -r 22050 -c 1 -b 16 -e signed {output}')
    out = subprocess.run([sys.executable, str(LOCAL / "make_corpus.py"), "--data-dir", "data", *SIZES, "--nj", "1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("make_corpus.py: ") and f": espeak-ng wrote {said}: espeak-ng -v " in out.stderr


def test_grammar_counts_its_sentences_and_refuses_impossible_requests():
    grammar = _local_module("grammar")
    small = grammar.Grammar([("iot", "turn on the {device} in the {room}"), ("weather", "do i need {clothing} {day}")])
    capacity = len(grammar.SLOTS["device"]) * len(grammar.SLOTS["room"]) + \
        len(grammar.SLOTS["clothing"]) * len(grammar.SLOTS["day"])
    assert small.capacity() == capacity
    drawn = small.sample_unique(capacity // 2, random.Random(0))
    assert len({s for s, _ in drawn}) == capacity // 2
    with pytest.raises(ValueError, match="only"):
        small.sample_unique(capacity // 2 + 1, random.Random(0))
    full = grammar.Grammar()
    assert len(full.scenarios) >= 10 and full.capacity() > 100_000


def test_corpus_refuses_more_sentences_than_the_grammar_has_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, str(LOCAL / "make_corpus.py"), "--data-dir", "data", *SIZES[:-1],
                          str(10**12)], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith(f"make_corpus.py: asked for {10**12 + 24} unique sentences, but the grammar has only ")
    assert not (tmp_path / "data").exists()


def test_encoder_loads_through_tasu_and_was_scored(recipe):
    import torch

    from tasu.device import cpu_has_bf16
    from tasu.encoders import load_encoder, load_tokenizer

    exp = recipe / "exp" / "encoder"
    # --precision auto: bf16 autocast only where this CPU has it natively
    info = json.loads((exp / "train_info.json").read_text())
    assert info["precision"] == ("bf16" if cpu_has_bf16() else "fp32")
    assert info["inter_ctc"] == {"weight": 0.3, "block": 1}
    tokenizer = load_tokenizer(exp)
    encoder = load_encoder(exp)
    assert tokenizer.vocab_size == encoder.vocab_size and tokenizer.blank_id == 0
    assert tokenizer.decode(tokenizer.encode("turn on the lights")) == "turn on the lights"
    feats, lengths = encoder.extract_features([torch.zeros(16000)])
    log_probs, _ = encoder(feats, lengths)
    assert log_probs.shape[-1] == tokenizer.vocab_size
    for s in ("dev", "test", "test_ood"):
        out = exp / "ctc_greedy" / s
        assert len((out / "hyp.trn").read_text().splitlines()) == len((out / "ref.trn").read_text().splitlines()) == 4
        assert json.loads((out / "wer" / "score.json").read_text())["metric"] == "wer"


def test_llm_loads_through_tasu_and_reads_units(recipe):
    from tasu.encoders import load_tokenizer as load_encoder_tokenizer
    from tasu.llm import PromptTokenizer, load_llm, load_llm_tokenizer

    exp = recipe / "exp" / "llm"
    tokenizer = load_llm_tokenizer(exp)
    llm = load_llm(exp)
    assert tokenizer.eos_token == "<|im_end|>" and llm.config.eos_token_id == tokenizer.eos_token_id
    assert llm.config.model_type == "qwen2" and llm.config.vocab_size >= len(tokenizer) - 1  # - <speech>
    batch = PromptTokenizer(tokenizer)(["Transcribe the speech into text."], ["turn on the lights"])
    tokens = tokenizer.convert_ids_to_tokens(batch.ids[0].tolist())
    assert tokens[0] == "<|im_start|>" and tokens[-1] == "<|im_end|>" and "user" in tokens
    target = batch.ids[0, batch.target_at[0]:].tolist()
    assert tokenizer.decode(target, skip_special_tokens=True) == "turn on the lights"
    # every encoder unit (not the blank) is one LLM token: its own text, or <|u:PIECE|>
    units = json.loads((exp / "encoder_units.json").read_text())
    enc = load_encoder_tokenizer(recipe / "exp" / "encoder")
    assert len(units) == enc.vocab_size and units[0] is None
    for i in enc.encode("weather"):
        piece = enc.id_to_piece(i)
        assert tokenizer.convert_ids_to_tokens(units[i]) == f"<|u:{piece}|>" or \
            tokenizer.decode([units[i]]) == piece.replace("\u2581", " ")
    assert "ppl_plain" in (exp / "ppl.txt").read_text()


def _fake_run(root: Path, seed: int, wer: dict[str, float], synthesizers: dict | None = None) -> Path:
    """A run directory as run.sh --seeds leaves it, with only what local/report.py reads."""
    exp, data = root / "exp", root / "data"

    def score(path: Path, value: float) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "score.json").write_text(score_json(value, "acc" if path.name == "SLU_scenario" else "wer"))

    for s in ("dev", "test", "test_ood"):
        score(exp / "encoder" / "ctc_greedy" / s / "wer", wer["encoder"])
    for tag in ("tasu_train_text", "tasu_train_text_then_train_audio_sft", "train_audio_sft_from_scratch"):
        for s in ("test", "test_ood"):
            score(exp / tag / "decode_greedy_best" / s / "ASR", wer[tag])
            score(exp / tag / "decode_greedy_best" / s / "SLU_scenario", 95.0)
    score(exp / "tasu_train_text" / "decode_simulated" / "test" / "ASR", wer["simulated"])
    (exp / "llm").mkdir(parents=True)
    (exp / "llm" / "ppl.txt").write_text("parameters 4000000\nppl_plain 3.0\nwer_reading_units 2.0\n"
                                         "wer_reading_units_test 2.5\nacc_scenario_from_units 99.0\n")
    (exp / "usage.tsv").write_text("stage 1\t10\t20\t100\nstage 3\t60\t120\t1000\n")
    (data / "test").mkdir(parents=True)
    (data / "test" / "scenario").write_text("a iot\nb weather\n")
    (data / "local").mkdir()
    corpus = {"grammar": {"scenarios": ["iot", "weather"]}}
    (data / "local" / "corpus.json").write_text(json.dumps(corpus | ({"synthesizers": synthesizers} if synthesizers
                                                                    else {})))
    (data / ".done").write_text(f"quick=false seed={seed}\n")
    return root


def test_report_over_seeds_gives_mean_and_sd_and_needs_twice_the_pooled_sd(tmp_path):
    runs = [_fake_run(tmp_path / f"seed{i}", i, {"encoder": 20.0 + d, "tasu_train_text": 14.0 + d,
                                                    "tasu_train_text_then_train_audio_sft": 10.0 + 2 * d,
                                                    "train_audio_sft_from_scratch": 11.0 - 2 * d,
                                                    "simulated": 10.0})
            for i, d in enumerate((-1.0, 0.0, 1.0), start=1)]
    results = tmp_path / "RESULTS.md"
    results.write_text("# RESULTS\n## Environments\n- date\n\n## encoder\n")
    subprocess.run([sys.executable, str(LOCAL / "report.py"), "--runs", *map(str, runs), "--results", str(results),
                    "--plot", str(tmp_path / "results.png")], check=True, capture_output=True)
    text = results.read_text()
    rows = {ln.split("|")[1]: ln.split("|")[2:-1] for ln in text.splitlines() if ln.startswith("|")}
    assert rows["encoder CTC greedy"][0] == "20.0 ± 1.0"
    assert rows["curriculum: text-only, then audio"][0] == "10.0 ± 2.0"
    # 14.0 vs 0.8 x 20.0 = 16.0: a margin of 2.0 against 2 x pooled sd sqrt((1 + 0.64) / 2) = 1.8
    assert "0.8 x the encoder's greedy CTC WER (test): 14.0 vs 16.0: **met**" in text
    # 10.0 vs 11.0: a margin of 1.0, but the seeds spread by 2.0 each: not evidence
    assert "curriculum WER < audio-only WER (test): 10.0 vs 11.0: **missed**" in text
    # and each run's own gap beside it: (11 - 2d) - (10 + 2d) for d = -1, 0, 1
    assert "2 x pooled sd 4.00; each run: +5.0, +1.0, -3.0)" in text
    assert text.index("## Environments") < text.index("## Summary") < text.index("## encoder")
    assert "All 3 runs" in text


def test_report_meets_a_target_stated_with_or_equal_at_a_tie_and_misses_a_strict_one(tmp_path):
    """The targets are stated with <=, >= and <: a tie meets the first two (also where the bound's float
    product is 15.200000000000001) and misses the last; with one run and with seeds that agree."""
    def targets(n_runs: int, encoder: float, text_only: float, curriculum: float) -> str:
        runs = [_fake_run(tmp_path / f"{encoder}-{n_runs}" / f"seed{i}", i,
                          {"encoder": encoder, "tasu_train_text": text_only, "simulated": 10.0,
                           "tasu_train_text_then_train_audio_sft": curriculum, "train_audio_sft_from_scratch": 12.0})
                for i in range(1, n_runs + 1)]
        results = runs[0].parent / "RESULTS.md"
        subprocess.run([sys.executable, str(LOCAL / "report.py"), "--runs", *map(str, runs), "--results",
                        str(results), "--plot", str(runs[0].parent / "results.png")], check=True, capture_output=True)
        return results.read_text()

    for n_runs in (1, 3):
        text = targets(n_runs, 20.0, 16.0, 12.0)
        assert "encoder greedy CTC WER <= 20 (test): 20.0 vs 20.0: **met**" in text
        assert "WER <= 0.8 x the encoder's greedy CTC WER (test): 16.0 vs 16.0: **met**" in text
        assert "curriculum WER < audio-only WER (test): 12.0 vs 12.0: **missed**" in text
        assert "0.8 x the encoder's greedy CTC WER (test): 15.2 vs 15.2: **met**" in targets(n_runs, 19.0, 15.2, 11.0)


def test_report_needs_a_margin_that_exceeds_twice_the_pooled_sd(tmp_path):
    """Seeds 17, 18 and 19 against <= 20: a margin of 2.0, exactly 2 x pooled sd, was '**met**', where the
    report's rule says met only when the margin exceeds it."""
    runs = [_fake_run(tmp_path / f"seed{i}", i, {"encoder": 18.0 + d, "tasu_train_text": 8.0, "simulated": 10.0,
                                                 "tasu_train_text_then_train_audio_sft": 10.0,
                                                 "train_audio_sft_from_scratch": 11.0})
            for i, d in enumerate((-1.0, 0.0, 1.0), start=1)]
    results = tmp_path / "RESULTS.md"
    subprocess.run([sys.executable, str(LOCAL / "report.py"), "--runs", *map(str, runs), "--results", str(results),
                    "--plot", str(tmp_path / "results.png")], check=True, capture_output=True)
    assert "encoder greedy CTC WER <= 20 (test): 18.0 vs 20.0: **missed** (margin +2.00, 2 x pooled sd 2.00)" \
        in results.read_text()
    # a margin just above its threshold was printed as a tie ("+1.16, 2 x pooled sd 1.16"), said met
    near = _report(tmp_path / "near", [18.41, 18.62, 19.5], [8.0, 8.0, 8.0]).read_text()
    assert "encoder greedy CTC WER <= 20 (test): 18.8 vs 20.0: **met** (margin +1.1567, 2 x pooled sd 1.1566)" in near
    nearer = _report(tmp_path / "nearer", [16.9999998, 17.9999998, 18.9999998], [8.0, 8.0, 8.0]).read_text()
    assert "(test): 18.0 vs 20.0: **met** (margin +2.0000002, 2 x pooled sd 2.0000000)" in nearer


def test_report_refuses_a_cell_that_only_some_seeds_have(tmp_path):
    """A seed whose audio-only score of test_ood is missing dropped the cell from every seed (exit 0), and
    the target said 'a stage did not run': the report names the missing score, or the run that lacks it."""
    runs = [_fake_run(tmp_path / f"seed{i}", i, {"encoder": 20.0, "tasu_train_text": 14.0, "simulated": 10.0,
                                                 "tasu_train_text_then_train_audio_sft": 10.0,
                                                 "train_audio_sft_from_scratch": 11.0}) for i in (1, 2, 3)]
    decoded = runs[1] / "exp/train_audio_sft_from_scratch/decode_greedy_best"
    (decoded / "test_ood/ASR/score.json").unlink()   # decoded, one score missing: scoring stopped
    out = subprocess.run([sys.executable, str(LOCAL / "report.py"), "--runs", *map(str, runs), "--results",
                          str(tmp_path / "RESULTS.md")], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr == (
        f"local/report.py: {decoded / 'test_ood/ASR/score.json'}: missing, though {decoded} was decoded: decoding "
        "or scoring stopped (stages 5-6); run ./run.sh again to finish them\n")
    shutil.rmtree(decoded)   # the system not decoded in one run only
    out = subprocess.run([sys.executable, str(LOCAL / "report.py"), "--runs", *map(str, runs), "--results",
                          str(tmp_path / "RESULTS.md")], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr == (
        f"local/report.py: {runs[1] / 'exp'}: no score of audio-only (same steps, from scratch) on test (ASR), "
        f"which {runs[0] / 'exp'} has: its stage failed or was skipped; finish it, or leave that run out of --runs\n")


def test_report_refuses_a_score_tasu_results_refuses_and_a_damaged_loss_curve(tmp_path):
    """A score.json value edited by hand, or one of hypotheses changed since, went into the means and the
    verdicts (tasu results refuses both); a damaged loss.tsv was a traceback, after RESULTS.md was rewritten."""
    wer = {"encoder": 20.0, "tasu_train_text": 14.0, "simulated": 10.0, "tasu_train_text_then_train_audio_sft": 10.0,
           "train_audio_sft_from_scratch": 11.0}
    run = _fake_run(tmp_path / "run", 1, wer)
    results = tmp_path / "RESULTS.md"
    results.write_text("# RESULTS\n## Environments\n- date\n")

    def report() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(LOCAL / "report.py"), "--runs", str(run), "--results",
                               str(results)], capture_output=True, text=True)
    edited = run / "exp/tasu_train_text/decode_greedy_best/test/ASR"
    score = json.loads((edited / "score.json").read_text())
    (edited / "score.json").write_text(json.dumps(score | {"value": 1.0}))
    out = report()
    assert out.returncode == 1 and out.stderr == (
        f"local/report.py: {edited / 'score.json'}: not a score.json written by 'tasu score' (value: 1.0, where "
        "the counts give 14.00)\n")
    (edited / "hyp.trn").write_text("a hello\n")
    (edited / "score.json").write_text(json.dumps(score | {"files": {"hyp": {"path": "hyp.trn", "sha256": "0" * 64}}}))
    out = report()
    assert out.returncode == 1 and "hyp.trn has changed since it was scored (other hypotheses)" in out.stderr
    (edited / "score.json").write_text(json.dumps(score))
    assert report().returncode == 0
    summary = results.read_text()
    for curve, bad in (("tasu_train_text", "1\t0.5\n2\tabc\n"), ("train_audio_sft_from_scratch", "1\t0.5\n\n2\n")):
        (run / "exp" / curve / "loss.tsv").write_text(bad)
        out = report()
        line = bad.strip().splitlines()[-1]
        assert out.returncode == 1 and out.stderr == (
            f"local/report.py: {run / 'exp' / curve / 'loss.tsv'}:{bad.count(chr(10))}: expected 'step<TAB>loss', "
            f"got {line!r}\n")
        assert results.read_text() == summary
        (run / "exp" / curve / "loss.tsv").write_text("")
    assert report().returncode == 0   # empty curves: no line to plot


def test_report_refuses_runs_of_other_settings_or_one_seed_twice(tmp_path):
    """One quick run and two full ones were averaged (45.3 +- 43.0) and judged, exit 0."""
    runs = [_fake_run(tmp_path / f"run{i}", seed, {"encoder": 20.0, "tasu_train_text": 14.0, "simulated": 10.0,
                                                   "tasu_train_text_then_train_audio_sft": 10.0,
                                                   "train_audio_sft_from_scratch": 11.0})
            for i, seed in enumerate((1, 2, 2))]

    def report() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(LOCAL / "report.py"), "--runs", *map(str, runs), "--results",
                               str(tmp_path / "RESULTS.md")], capture_output=True, text=True)
    out = report()
    assert out.returncode == 1 and out.stderr == (
        f"local/report.py: --runs: {runs[1]} and {runs[2]} are both seed 2: each run is one seed "
        "(a seed twice would count one run as two)\n")
    (runs[2] / "data/.done").write_text("quick=true seed=3\n")
    out = report()
    assert out.returncode == 1 and out.stderr == (
        f"local/report.py: --runs mixes settings: {runs[0]} quick=false, {runs[1]} quick=false, {runs[2]} quick=true"
        ": a mean is over runs of one setting, one per seed\n")
    assert not (tmp_path / "RESULTS.md").exists()


def _report(root: Path, encoder: list[float], text_only: list[float], env: dict | None = None,
            synthesizers: dict | None = None) -> Path:
    """RESULTS.md as local/report.py writes it over one fake run per value."""
    runs = [_fake_run(root / f"seed{i}", i, {"encoder": e, "tasu_train_text": t,
                                             "tasu_train_text_then_train_audio_sft": 10.0,
                                             "train_audio_sft_from_scratch": 12.0, "simulated": 4.0}, synthesizers)
            for i, (e, t) in enumerate(zip(encoder, text_only), start=1)]
    results = root / "RESULTS.md"
    results.write_text("# RESULTS\n## Environments\n- Git hash: `abc1234`\n\n## encoder\n")
    subprocess.run([sys.executable, str(LOCAL / "report.py"), "--runs", *map(str, runs), "--results", str(results),
                    "--plot", str(root / "results.png")], check=True, capture_output=True, env=env)
    return results


def test_report_names_the_cpu_kernel_limits_a_run_was_made_with(tmp_path):
    """A run with torch's or oneDNN's kernels capped sums floats as another CPU would: the report says so,
    and compare_results shows it beside the machine."""
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    plain = _report(tmp_path / "plain", [20.0, 21.0], [8.0, 9.0], env=env)
    capped = _report(tmp_path / "capped", [20.0, 21.0], [8.0, 9.0],
                     env={**env, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert "kernels:" not in plain.read_text()
    assert "; kernels: ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2):" in capped.read_text()
    out = subprocess.run([sys.executable, str(LOCAL / "compare_results.py"), str(plain), str(capped)],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[1].endswith("GiB memory; kernels: ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2)")


def test_report_closes_the_proc_files_it_reads_for_the_machine():
    import gc
    import warnings

    report = _local_module("report")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        line = report.machine()
        gc.collect()
    assert "CPU cores" in line and not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_report_names_the_synthesizer_releases_and_compare_results_flags_other_ones(tmp_path):
    """Another espeak-ng or flite release speaks other audio: a comparison across them is not of float sums."""
    here = {"espeak-ng": "1.51", "flite": "2.2-current", "sox": "14.4.2"}
    a = _report(tmp_path / "a", [20.0, 21.0], [8.0, 9.0], synthesizers=here)
    b = _report(tmp_path / "b", [20.0, 21.0], [8.0, 9.0], synthesizers=here | {"espeak-ng": "1.52.0"})
    old = _report(tmp_path / "old", [20.0, 21.0], [8.0, 9.0])
    assert ("The corpus was spoken by espeak-ng 1.51, flite 2.2-current and sox 14.4.2 (data/local/corpus.json)"
            in a.read_text())
    assert "The corpus was spoken by" not in old.read_text()

    def compare(x: Path, y: Path) -> list[str]:
        return subprocess.run([sys.executable, str(LOCAL / "compare_results.py"), str(x), str(y)],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    out = compare(a, b)
    assert out[0].endswith("; spoken by espeak-ng 1.51, flite 2.2-current and sox 14.4.2)")
    assert out[2] == "The corpora were spoken by other synthesizer releases: the audio differs, not only the float sums."
    assert compare(a, a)[2] == ""
    assert compare(a, old)[2].startswith(f"The report does not say which synthesizer releases spoke {old}'s corpus")


def test_compare_results_judges_each_cell_against_the_pooled_sd(tmp_path):
    """Two machines' reports: a mean that moved by less than the seeds' spread agrees, one that moved by
    more is apart; cells the explaining rows repeat are counted once. It runs as the README shows it,
    with a plain python3 in the user's shell: -S leaves out site-packages and -E PYTHONPATH, so no
    installed package can be imported (report.py's import of tasu stopped it with a traceback)."""
    a = _report(tmp_path / "a", [19.0, 20.0, 21.0], [7.0, 8.0, 9.0])
    b = _report(tmp_path / "b", [19.5, 20.5, 21.5], [11.0, 12.0, 13.0])
    out = subprocess.run([sys.executable, "-E", "-S", str(LOCAL / "compare_results.py"), str(a), str(b)],
                         capture_output=True, text=True, check=True).stdout
    rows = {tuple(ln.split("|")[1:3]): ln.split("|")[3:-1] for ln in out.splitlines() if ln.startswith("|")}
    assert rows[("encoder CTC greedy", "WER test")] == ["20.0 ± 1.0", "20.5 ± 1.0", "+0.5", "1.0", "within 1 sd"]
    assert rows[("TASU text-only (zero-shot)", "WER test")] == ["8.0 ± 1.0", "12.0 ± 1.0", "+4.0", "1.0", "**apart**"]
    assert ("encoder CTC greedy", "WER dev") in rows and not any(r[0].startswith("TASU text-only, from") for r in rows)
    assert "A: " in out and "(abc1234; 3 run(s);" in out
    # a quick run's tiny models against the full recipe: "18 of 18 cells agree", their numbers proving nothing
    quick = tmp_path / "quick.md"
    quick.write_text(a.read_text().replace("quick=false", "quick=true"))
    mixed = subprocess.run([sys.executable, str(LOCAL / "compare_results.py"), str(a), str(quick)],
                           capture_output=True, text=True)
    assert mixed.returncode == 1 and mixed.stderr.strip() == (f"compare_results.py: {a} was made with quick=false "
                                                             f"and {quick} with quick=true: compare runs of one setting")
    apart = [key for key, cells in rows.items() if cells[-1] == "**apart**"]
    assert apart == [("TASU text-only (zero-shot)", "WER test"), ("TASU text-only (zero-shot)", "WER test_ood")]
    cells = len(rows) - 2  # less the header and its rule
    assert out.rstrip().endswith(f"{cells - 2} of {cells} cells agree within one pooled standard deviation, "
                                 f"{cells - 2} within two.")


def test_compare_results_takes_a_difference_within_the_printed_precision_as_agreement(tmp_path):
    """20.04 and 20.06 on every seed are read 20.0 ± 0.0 and 20.1 ± 0.0: a difference of 0.02 was '**apart**'."""
    a = _report(tmp_path / "a", [20.04] * 3, [8.0] * 3)
    b = _report(tmp_path / "b", [20.06] * 3, [8.0] * 3)
    out = subprocess.run([sys.executable, str(LOCAL / "compare_results.py"), str(a), str(b)],
                         capture_output=True, text=True, check=True).stdout
    rows = {tuple(ln.split("|")[1:3]): ln.split("|")[3:-1] for ln in out.splitlines() if ln.startswith("|")}
    assert rows[("encoder CTC greedy", "WER test")] == ["20.0 ± 0.0", "20.1 ± 0.0", "+0.1", "0.0", "within 1 sd"]
    assert "**apart**" not in out


def test_compare_results_judges_no_cell_of_a_one_run_report(tmp_path):
    """A report of one run has no spread: its cells were taken as sd 0, so equal cells 'agreed within one sd'
    and any 0.1 apart were '**apart**'. They are printed as numbers and not judged."""
    a = _report(tmp_path / "a", [20.0], [8.0])
    b = _report(tmp_path / "b", [20.5, 21.5], [8.0, 8.0])
    out = subprocess.run([sys.executable, str(LOCAL / "compare_results.py"), str(a), str(b)],
                         capture_output=True, text=True, check=True).stdout
    rows = {tuple(ln.split("|")[1:3]): ln.split("|")[3:-1] for ln in out.splitlines() if ln.startswith("|")}
    assert rows[("encoder CTC greedy", "WER test")] == ["20.0", "21.0 ± 0.7", "+1.0", "-", "no spread"]
    assert "agree within" not in out
    assert out.rstrip().endswith(f"{len(rows) - 2} cells have no spread (a report of one run): they are not judged; "
                                 "compare reports of several seeds (./run.sh --seeds).")


@pytest.mark.parametrize("text,error", [
    ("# not a report\n", "has no '## Summary (egs/mini)' section (made by local/report.py at the end of ./run.sh)"),
    ("## Summary (egs/mini)\n\n|system|WER test|\n|---|---|\n|encoder CTC greedy|15.6 +- 0.2|\n",
     ":5: column 'WER test' of 'encoder CTC greedy' is '15.6 +- 0.2', not 'mean ± sd'")])
def test_compare_results_refuses_a_file_it_cannot_read_as_a_report(tmp_path, text, error):
    report = tmp_path / "RESULTS.md"
    report.write_text(text)
    out = subprocess.run([sys.executable, str(LOCAL / "compare_results.py"), str(report), str(report)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"compare_results.py: {report}{'' if error.startswith(':') else ' '}{error}"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("damage,error", [
    (lambda r: _write(r / "exp/tasu_train_text/decode_greedy_best/test/ASR/score.json", "{"),
     "decode_greedy_best/test/ASR/score.json: not a score.json written by 'tasu score' (Expecting"),
    (lambda r: _write(r / "exp/tasu_train_text/decode_greedy_best/test/ASR/score.json", '{"value": null}'),
     "decode_greedy_best/test/ASR/score.json: not a score.json written by 'tasu score' (metric: must be one of"),
    (lambda r: (r / "data/test/scenario").unlink(), "data/test/scenario: cannot read it (No such file or directory)"),
    (lambda r: _write(r / "data/test/scenario", ""), "data/test/scenario: expected 'utterance scenario' lines"),
    (lambda r: _write(r / "exp/llm/ppl.txt", "parameters 4000000\nppl_plain\n"),
     "exp/llm/ppl.txt:2: expected 'name value', got 'ppl_plain'"),
    (lambda r: _write(r / "exp/llm/ppl.txt", "parameters 4000000\nacc_scenario_from_units 99.0\n"),
     "exp/llm/ppl.txt: no ppl_plain (local/train_llm.py writes it)"),
    (lambda r: _write(r / "exp/usage.tsv", "stage 1\t10\n"),
     "exp/usage.tsv:1: expected 'step<TAB>wall s<TAB>CPU s<TAB>peak MB', got 'stage 1\\t10'"),
    (lambda r: (r / "exp/tasu_train_text/decode_greedy_last").mkdir(),
     "exp/tasu_train_text holds 2 decodings (decode_greedy_best, decode_greedy_last): the report reads one a model"),
])
def test_report_stops_in_one_line_on_a_run_it_cannot_read(tmp_path, damage, error):
    """Each was a traceback, or (a null score, a second decoding) a table with exit 0 that was not the
    run's; RESULTS.md keeps what it held."""
    run = _fake_run(tmp_path / "seed1", 1, {"encoder": 20.0, "tasu_train_text": 8.0, "simulated": 4.0,
                                             "tasu_train_text_then_train_audio_sft": 10.0,
                                             "train_audio_sft_from_scratch": 12.0})
    damage(run)
    results = tmp_path / "RESULTS.md"
    results.write_text("# RESULTS\n## Environments\n")
    out = subprocess.run([sys.executable, str(LOCAL / "report.py"), "--runs", str(run), "--results", str(results)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("local/report.py: ") and error in out.stderr and len(out.stderr.splitlines()) == 1
    assert results.read_text() == "# RESULTS\n## Environments\n"


def test_report_refuses_a_run_that_is_not_there_and_keeps_sections_it_does_not_own(tmp_path):
    """A misspelt --runs directory gave a summary of '-' cells and 'not measured' targets, exit 0; an
    experiment named Summary... lost its section to the summary's."""
    runs = [_fake_run(tmp_path / f"seed{i}", i, {"encoder": 20.0, "tasu_train_text": 8.0, "simulated": 4.0,
                                                  "tasu_train_text_then_train_audio_sft": 10.0,
                                                  "train_audio_sft_from_scratch": 12.0}) for i in (1, 2)]
    results = tmp_path / "RESULTS.md"
    results.write_text("# RESULTS\n## Environments\n\n## Summary_runs\n|a|\n")
    out = subprocess.run([sys.executable, str(LOCAL / "report.py"), "--runs", *map(str, runs), str(tmp_path / "seed3"),
                          "--results", str(results)], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr == (f"local/report.py: {tmp_path / 'seed3' / 'exp'}: no such directory "
                                                  "(--runs names run directories, each with data/ and exp/)\n")
    subprocess.run([sys.executable, str(LOCAL / "report.py"), "--runs", *map(str, runs), "--results", str(results)],
                   check=True, capture_output=True)
    text = results.read_text()
    assert "## Summary (egs/mini)" in text and "## Summary_runs\n|a|" in text


def test_compare_results_says_which_cells_only_one_report_has(tmp_path):
    a = _report(tmp_path / "a", [19.0, 20.0], [7.0, 8.0])
    b = _report(tmp_path / "b", [19.0, 20.0], [7.0, 8.0])
    text = b.read_text()
    b.write_text(text.replace("|curriculum: text-only, then audio|", "|curriculum, renamed|"))
    out = subprocess.run([sys.executable, str(LOCAL / "compare_results.py"), str(a), str(b)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[-2].startswith("Only in A (4 cells, not compared): curriculum: text-only, then audio / WER test; ")
    assert out[-1].startswith("Only in B (4 cells, not compared): curriculum, renamed / WER test; ")
    assert "|curriculum: text-only, then audio|10.0 ± 0.0|" in text
    b.write_text(text.replace("|curriculum: text-only, then audio|10.0 ± 0.0|", "|curriculum: text-only, then audio|"))
    short = subprocess.run([sys.executable, str(LOCAL / "compare_results.py"), str(a), str(b)],
                           capture_output=True, text=True)
    assert short.returncode == 1 and "4 cells where the header has 5" in short.stderr
    b.write_bytes(b"\xff\xfe" + text.encode())
    binary = subprocess.run([sys.executable, str(LOCAL / "compare_results.py"), str(a), str(b)],
                            capture_output=True, text=True)
    assert binary.returncode == 1
    assert binary.stderr == f"compare_results.py: {b}: not UTF-8 text (invalid start byte at byte 0)\n"


@pytest.mark.parametrize("script,args", [("train_units.py", ["--data-dir", "missing"]),
                                         ("train_encoder.py", ["--units", "missing.model"]),
                                         ("train_llm.py", ["--units", "missing.model"])])
def test_missing_inputs_stop_with_one_line(tmp_path, script, args):
    out = subprocess.run([sys.executable, str(LOCAL / script), *args], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert f"{script}: " in out.stderr and "missing" in out.stderr


@pytest.mark.parametrize("script,args,error", [
    ("train_llm.py", ["--steps", "0"], "argument --steps: must be at least 1, got 0"),   # tracebacks, and
    ("train_llm.py", ["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    ("train_encoder.py", ["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    ("train_encoder.py", ["--spec-augment", "ture"], "argument --spec-augment: expected true or false, got 'ture'"),
])   # a typo'd --spec-augment trained without SpecAugment
def test_trainer_options_out_of_range_are_usage_errors(tmp_path, script, args, error):
    out = subprocess.run([sys.executable, str(LOCAL / script), *args], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.splitlines()[-1].endswith(error), out.stderr


def test_train_llm_names_a_scenario_table_that_lacks_an_utterance(recipe, tmp_path):
    shutil.copytree(recipe / "data", tmp_path / "data")
    scenario = tmp_path / "data" / "train" / "scenario"
    first, *rest = scenario.read_text().splitlines(keepends=True)
    scenario.write_text("".join(rest))
    out = subprocess.run([sys.executable, str(LOCAL / "train_llm.py"), "--steps", "1", "--units",
                          str(recipe / "exp" / "units" / "bpe.model")], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.splitlines()[-1] == (f"train_llm.py: data/train/scenario: no line for {first.split()[0]}, "
                                           "which text has (1 such)")


@pytest.mark.parametrize("made,args,error", [((), ["--draws", "0"], "--draws '0': expected a positive number"),
                                             ((), ["--nj", "0"], "--nj '0': expected a positive number"),
                                             # every draw decoded with seed 3: one draw scored as a mean of two
                                             ((), ["--out", "outJOBs"], "outJOBs: a path with JOB in it would name"),
                                             ((), ["--decode_opts", "--beam 1 --seed 3"],
                                              "--decode_opts: --seed is set for each draw by this script"),
                                             ((), [], "/exp: no such experiment directory"),
                                             (("exp",), [], "/data.jsonl: no such file"),
                                             (("exp", "data"), ["--draws", "2"], "tasu decode: error: ")])
def test_decode_simulated_refuses_bad_input_with_one_line(tmp_path, made, args, error):
    """Stage 5's simulated draws: a bad option, a missing experiment or data stops with the script's one
    line; an experiment tasu cannot decode (an empty directory) with tasu's, in the end of each draw's
    log that run_local.sh prints. No score is written."""
    data = tmp_path / "data.jsonl"
    if "exp" in made:
        (tmp_path / "exp").mkdir()
    if "data" in made:
        data.write_text('{"key": "a", "task": "ASR", "target": "hi", "path": "a.wav"}\n')
    out = subprocess.run(["local/decode_simulated.sh", "--exp", str(tmp_path / "exp"), "--data", str(data),
                          "--out", str(tmp_path / "out"), *args],
                         cwd=LOCAL.parent, capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr and error in out.stderr
    assert not (tmp_path / "out" / "score.json").exists()


def test_encoder_caps_onednn_kernel_cache_unless_the_caller_set_it():
    """bf16 steps leave oneDNN kernels per batch shape (memory, not results): train_encoder keeps 64,
    set before torch starts, and a caller's own setting wins."""
    import os

    probe = (f"import os, runpy; runpy.run_path({str(LOCAL / 'train_encoder.py')!r}); "
             "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])")
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    for given, kept in ((None, "64"), ("8", "8")):
        if given:
            env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = given
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split() == [kept]


def test_usage_keeps_the_figures_of_the_run_that_did_the_work(tmp_path):
    """A re-run that finds a step done takes seconds: its line must not replace the real one."""
    table = tmp_path / "usage.tsv"

    def note(name, *command):
        subprocess.run([sys.executable, str(LOCAL / "usage.py"), str(table), name, "--", *command], check=True)
        return {line.split("\t")[0]: float(line.split("\t")[1]) for line in table.read_text().splitlines()}

    assert note("stage 3", "sleep", "0.5")["stage 3"] >= 0.5
    assert note("stage 4", "true")["stage 3"] >= 0.5
    again = note("stage 3", "true")    # found its work done
    assert again["stage 3"] >= 0.5 and list(again) == ["stage 3", "stage 4"]
    assert note("stage 4", "sleep", "0.3")["stage 4"] >= 0.3   # the longer run replaces the line
    assert subprocess.run([sys.executable, str(LOCAL / "usage.py"), str(table), "stage 5", "--", "false"]).returncode == 1
    assert "stage 5" not in table.read_text()   # a failed step is not noted
    # a missing command: one line and a shell's status (a traceback); a killed one: 128 + signal (247)
    gone = subprocess.run([sys.executable, str(LOCAL / "usage.py"), str(table), "s", "--", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert (gone.returncode, gone.stderr) == (127, f"usage.py: {tmp_path / 'nope'}: No such file or directory\n")
    killed = subprocess.run([sys.executable, str(LOCAL / "usage.py"), str(table), "s", "--", "sh", "-c", "kill -9 $$"])
    assert killed.returncode == 137
    table.write_text("stage 3\n")   # a damaged line (an IndexError) is replaced
    assert note("stage 3", "true")["stage 3"] >= 0
    # Ctrl-C (SIGINT to the terminal's process group): its command stops, and so does usage.py, quietly and
    # with the command's status (it printed a KeyboardInterrupt traceback at every stopped stage)
    stopped = subprocess.Popen([sys.executable, str(LOCAL / "usage.py"), str(table), "s", "--", "sleep", "30"],
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(1.0)
    os.killpg(stopped.pid, signal.SIGINT)
    assert stopped.wait(timeout=20) == 130 and stopped.stderr.read() == ""


def test_encoder_cmvn_normalises_the_train_features_in_place():
    """train_encoder.fit_cmvn gives the encoder the CMVN of the train features and normalises those
    same tensors (no second copy of the train set's features)."""
    import torch

    module = _local_module("train_encoder")
    gen = torch.Generator().manual_seed(0)
    raw = [torch.randn(n, 12, generator=gen) * torch.linspace(0.5, 8, 12) + torch.linspace(-20, 5, 12)
           for n in (7, 30, 1, 64)]
    before = torch.cat(raw)

    class Frontend:
        cmvn = None

    encoder = type("Encoder", (), {"frontend": Frontend()})()
    feats = module.fit_cmvn(encoder, raw)
    assert all(f is r for f, r in zip(feats, raw))
    shift, scale = encoder.frontend.cmvn
    torch.testing.assert_close(torch.cat(feats), (before + shift) * scale)
    torch.testing.assert_close(torch.cat(feats).mean(0), torch.zeros(12), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(feats).std(0, unbiased=False), torch.ones(12), atol=1e-4, rtol=0)


def test_encoder_default_augmentation_masks_frequency_bands_of_every_stacked_frame():
    """The encoder's default SpecAugment: two bands of at most 8 mel bins, the same bins in each of
    the LFR-stacked fbank frames, set to 0 (the CMVN mean); no time masks; the cached features
    are left as they were, and each call draws new bands (every epoch masks anew)."""
    import torch

    module = _local_module("train_encoder")
    args = module.get_parser().parse_args([])
    assert args.spec_augment and args.time_masks == 0
    n_mels, lfr_m, frames = 80, 6, 40
    feats = torch.randn(frames, lfr_m * n_mels, generator=torch.Generator().manual_seed(0)) + 3.0
    before = feats.clone()
    gen = torch.Generator().manual_seed(1)
    draws = []
    for _ in range(20):
        out = module.spec_augment(feats, n_mels, args, gen)
        zero = (out == 0).view(frames, lfr_m, n_mels)
        masked = zero.all(0)                         # [lfr_m, n_mels]: a bin masked in every frame
        assert torch.equal(zero, masked.expand_as(zero))   # whole bands, never a stretch of time
        assert torch.equal(masked, masked[:1].expand_as(masked))  # the same bins in each stacked frame
        bins = masked[0].nonzero().flatten().tolist()
        runs = [b for i, b in enumerate(bins) if i == 0 or bins[i - 1] != b - 1]
        assert len(runs) <= 2 and len(bins) <= 2 * args.freq_width
        keep = ~zero.view(frames, -1)
        assert torch.equal(out[keep], before[keep])
        draws.append(tuple(bins))
    assert torch.equal(feats, before)
    assert len(set(draws)) > 10 and any(draws)


@pytest.mark.parametrize("args,bad", [(["--inter-ctc-block", "2"], "weight 0.3 at block 2"),
                                      (["--inter-ctc-weight", "1", "--inter-ctc-block", "1"], "weight 1 at block 1")])
def test_encoder_refuses_an_intermediate_ctc_it_cannot_train_with_one_line(recipe, tmp_path, args, bad):
    """The last block's output is the final CTC's, and a weight of 1 would leave the final head
    untrained: said before any feature is computed, in one line."""
    out = subprocess.run([sys.executable, str(LOCAL / "train_encoder.py"), "--data-dir", str(recipe / "data"),
                          "--units", str(recipe / "exp" / "units" / "bpe.model"), "--exp-dir", str(tmp_path / "enc"),
                          "--encoder-conf", '{"num_blocks": 2}', *args], capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (f"train_encoder.py: --inter-ctc-weight / --inter-ctc-block: intermediate CTC {bad}: "
                                  "the weight must lie in (0, 1) and the block in 1..1 (the encoder has 2 blocks)")
    assert not (tmp_path / "enc" / "model.pt").exists()


def test_encoder_refuses_a_recording_too_short_for_a_frame(recipe, tmp_path):
    """A recording of a few samples holds no speech (and an empty waveform would crash the fbank
    library): one line naming the recording, not a traceback."""
    import numpy as np
    import soundfile as sf

    train = tmp_path / "data" / "train"
    train.mkdir(parents=True)
    sf.write(train / "u0.wav", np.zeros(8000, dtype=np.float32), 16000)
    sf.write(train / "u1.wav", np.zeros(80, dtype=np.float32), 16000)   # 5 ms
    (train / "wav.scp").write_text("".join(f"u{i} {train / f'u{i}.wav'}\n" for i in range(2)))
    (train / "text").write_text("u0 hello\nu1 hi\n")
    out = subprocess.run([sys.executable, str(LOCAL / "train_encoder.py"), "--data-dir", str(tmp_path / "data"),
                          "--units", str(recipe / "exp" / "units" / "bpe.model"), "--exp-dir", str(tmp_path / "enc")],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert f"u1: {train / 'u1.wav'}: 80 samples at 16000 Hz: shorter than one 10 ms frame" in out.stderr


def test_train_models_makes_the_units_again_for_another_corpus(tmp_path):
    """A corpus made again with other options (local/data.sh --seed 2) kept the units of the one before:
    the models were trained on them, and their .done said seed 2."""
    (tmp_path / "local").mkdir()
    shutil.copy(LOCAL / "train_models.sh", tmp_path / "local")
    (tmp_path / "path.sh").write_text(f"PATH={Path(sys.executable).parent}:{LOCAL.parents[2] / 'utils'}:$PATH\n")
    for name, out in (("train_units.py", "--out"), ("train_encoder.py", "--exp-dir"), ("train_llm.py", "--out-dir")):
        (tmp_path / "local" / name).write_text(   # stand-ins: each says what it made from which corpus
            "import pathlib, sys\n"
            f"out = pathlib.Path(sys.argv[sys.argv.index('{out}') + 1])\n"
            "out.parent.mkdir(parents=True, exist_ok=True)\n"
            "made = pathlib.Path('data/made').read_text()\n"
            f"(out if '{name}' == 'train_units.py' else out / 'made').write_text(made)\n"
            "print('step 1 done')\n")
    (tmp_path / "data").mkdir()

    def corpus(seed: int) -> None:
        (tmp_path / "data" / ".done").write_text(f"quick=false seed={seed}\n")
        (tmp_path / "data" / "made").write_text(f"corpus {seed}")
        subprocess.run(["bash", "local/train_models.sh", "--seed", str(seed)], cwd=tmp_path, check=True,
                       capture_output=True)
    corpus(1)
    corpus(2)
    made = [(tmp_path / "exp" / part).read_text() for part in ("units/bpe.model", "encoder/made", "llm/made")]
    assert made == ["corpus 2"] * 3
    # units of a version that wrote no .done for them are kept: the models on them were not trained again
    (tmp_path / "exp" / "units" / ".done").unlink()
    (tmp_path / "data" / "made").write_text("corpus 2, read again")
    subprocess.run(["bash", "local/train_models.sh", "--seed", "2"], cwd=tmp_path, check=True, capture_output=True)
    assert [(tmp_path / "exp" / part).read_text() for part in ("units/bpe.model", "encoder/made")] == ["corpus 2"] * 2
