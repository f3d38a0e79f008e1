"""The ``espnet`` encoder backend: ESPnet2 ASR directories, their token lists, and a real ESPnet model.

The first tests need no espnet: they read directories laid out as ESPnet writes them (an experiment
dir inside its recipe, paths in config.yaml relative to the recipe) with the main environment, as the
text-only stage does. The last one trains a tiny ESPnet2 CTC model with espnet's own ``asr_train`` in
espnet's environment (``tools/setup.sh --with espnet``) and runs TASU on it end to end.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
import yaml

from fixtures import SENTENCES
from tasu.dump import encoder_digest
from tasu.encoders import detect, load_encoder, load_tokenizer
from tasu.encoders.espnet import ESPnetCTCEncoder, ESPnetDir, ESPnetTokenizer

ROOT = Path(__file__).resolve().parents[1]
ESPNET_VENV = ROOT / "tools" / "espnet-venv"


def write_recipe(recipe: Path, token_type: str = "bpe", upper: bool = False, inline_tokens: bool = True,
                 fs: str = "16k") -> Path:
    """An ESPnet2 recipe's files as asr.sh leaves them: data/token_list, exp/asr_stats, exp/asr_train.

    The token list is ESPnet's: <blank>, <unk>, the units, <sos/eos>; config.yaml names the BPE model
    and the statistics relative to the recipe directory. No weights: the tokenizer does not read them.
    """
    text = [s.upper() if upper else s for s in SENTENCES]
    units = recipe / "data" / "token_list" / f"{token_type}_unigram40"
    units.mkdir(parents=True)
    if token_type == "bpe":
        spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_prefix=str(units / "bpe"),
                                       vocab_size=40, model_type="unigram", character_coverage=1.0,
                                       minloglevel=2)
        sp = spm.SentencePieceProcessor(model_file=str(units / "bpe.model"))
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
                  if sp.id_to_piece(i) not in ("<unk>", "<s>", "</s>")]
    else:
        pieces = sorted({"<space>" if c == " " else c for s in text for c in s})
    tokens = ["<blank>", "<unk>", *pieces, "<sos/eos>"]
    (units / "tokens.txt").write_text("\n".join(tokens) + "\n")
    stats = recipe / "exp" / "asr_stats_raw" / "train"
    stats.mkdir(parents=True)
    np.savez(stats / "feats_stats.npz", count=np.array(10), sum=np.zeros(80), sum_square=np.ones(80) * 10)
    exp = recipe / "exp" / "asr_train_raw"
    exp.mkdir(parents=True)
    config = {
        "output_dir": "exp/asr_train_raw",
        "token_list": tokens if inline_tokens else str(units.relative_to(recipe) / "tokens.txt"),
        "token_type": token_type,
        "bpemodel": str(units.relative_to(recipe) / "bpe.model") if token_type == "bpe" else None,
        "cleaner": None, "g2p": None, "frontend": "default", "frontend_conf": {"fs": fs},
        "normalize": "global_mvn", "normalize_conf": {"stats_file": str(stats.relative_to(recipe) / "feats_stats.npz")},
        "encoder": "transformer", "ctc_conf": {"dropout_rate": 0.0}, "model_conf": {"ctc_weight": 1.0},
    }
    (exp / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    for name in ("valid.acc.ave.pth", "checkpoint.pth", "1epoch.pth"):
        (exp / name).write_bytes(name.encode())
    return exp


@pytest.fixture
def exp(tmp_path) -> Path:
    return write_recipe(tmp_path / "recipe")


def test_an_espnet_dir_is_recognised_and_its_files_found_relative_to_the_recipe(exp, tmp_path, monkeypatch):
    assert detect(exp) == "espnet"
    monkeypatch.chdir(tmp_path)   # not the recipe: config.yaml's paths are found from the model dir
    d = ESPnetDir(exp)
    assert d.model_file.name == "valid.acc.ave.pth"
    assert d.bpe_model == exp.parents[1] / "data" / "token_list" / "bpe_unigram40" / "bpe.model"
    assert [p.name for p in d.files()] == ["config.yaml", "valid.acc.ave.pth", "bpe.model", "feats_stats.npz"]
    # an unpacked copy with every file beside config.yaml works too (found by name)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in d.files():
        shutil.copy(p, flat / p.name)
    assert load_tokenizer(flat).encode("turn on the lights") == load_tokenizer(exp).encode("turn on the lights")


def test_the_tokenizer_spells_text_as_the_model_s_token_list(exp):
    tok = load_tokenizer(exp)
    tokens = ESPnetDir(exp).token_list
    sp = spm.SentencePieceProcessor(model_file=str(ESPnetDir(exp).bpe_model))
    text = "turn on the kitchen lights"
    expected = [tokens.index(p) for p in sp.encode(text, out_type=str)]   # by hand: piece -> its line
    assert tok.encode(text) == expected
    assert tok.vocab_size == len(tokens) and tok.blank_id == 0 and tok.id_to_piece(0) == "<blank>"
    assert tok.decode(expected) == text
    assert tok.encode("turn  on\tthe kitchen lights") == expected    # whitespace runs are one space
    # <unk>, <sos/eos> and the blank are never labels; unspellable text is dropped
    assert not {0, tokens.index("<unk>"), tokens.index("<sos/eos>")} & set(tok.encode("turn on the 日本 lights"))


def test_tasu_simulate_shows_an_espnet_model_s_rows_named_or_detected(exp, capsys):
    from tasu.cli import main
    for encoder_type in ("espnet", "auto"):
        assert main(["simulate", "--encoder", str(exp), "--encoder-type", encoder_type, "--text", "turn on"]) == 0
        assert "token error rate" in capsys.readouterr().out
    assert main(["simulate", "--encoder", str(exp), "--encoder-type", "nope", "--text", "turn on"]) == 1
    assert "unknown encoder type 'nope'; known encoder types: espnet, " in capsys.readouterr().err


def test_an_upper_case_model_reads_lower_case_text_and_a_char_model_spells_spaces(tmp_path):
    upper = load_tokenizer(write_recipe(tmp_path / "upper", upper=True))
    assert upper.encode("turn on the lights") == upper.encode("TURN ON THE LIGHTS") != []
    chars = load_tokenizer(write_recipe(tmp_path / "char", token_type="char", inline_tokens=False))
    tokens = ESPnetDir(tmp_path / "char" / "exp" / "asr_train_raw").token_list
    assert chars.encode("on it") == [tokens.index(c) for c in ("o", "n", "<space>", "i", "t")]
    assert chars.decode(chars.encode("on it")) == "on it"


def test_an_upper_case_char_model_reads_lower_case_text_though_its_list_holds_lower_case_space(tmp_path):
    # <blank> <unk> <space> A E ... <sos/eos>: the control tokens are not letters of the vocabulary
    chars = load_tokenizer(write_recipe(tmp_path / "char", token_type="char", upper=True))
    tokens = ESPnetDir(tmp_path / "char" / "exp" / "asr_train_raw").token_list
    assert "<space>" in tokens and "O" in tokens and "o" not in tokens
    assert chars.encode("turn on the lights") == chars.encode("TURN ON THE LIGHTS")
    assert chars.encode("on it") == [tokens.index(c) for c in ("O", "N", "<space>", "I", "T")]


def test_a_model_for_another_sample_rate_is_refused_with_its_config(tmp_path):
    # tasu feeds every encoder 16 kHz audio: an 8 kHz model is refused before anything is built on it
    exp = write_recipe(tmp_path / "recipe", fs="8k")
    message = (rf"^{re.escape(str(exp))}/config.yaml \(frontend_conf.fs\): the model takes 8000 Hz audio, "
               r"and tasu feeds encoders 16000 Hz audio only")
    with pytest.raises(ValueError, match=message):
        load_tokenizer(exp)
    with pytest.raises(ValueError, match=message):   # before espnet is imported
        load_encoder(exp)
    assert load_tokenizer(write_recipe(tmp_path / "16000", fs="16000")).vocab_size > 2


def test_a_copy_holds_the_model_files_side_by_side_and_reads_as_the_original(tmp_path, monkeypatch):
    from tasu.encoders.registry import backend

    monkeypatch.chdir(tmp_path)   # not the recipe: the copy's files are found beside its config.yaml
    for inline in (True, False):
        exp = write_recipe(tmp_path / f"recipe{inline}", inline_tokens=inline)   # + checkpoint.pth, 1epoch.pth
        (exp / "decode_asr_valid.acc.ave").mkdir()
        (exp / "decode_asr_valid.acc.ave" / "hyp.trn").write_text("a decode\n")
        (exp / "train.log").write_text("a log\n")
        copy = tmp_path / f"copy{inline}"
        backend(exp).copy_model(exp, copy)
        assert sorted(p.name for p in copy.iterdir()) == sorted(
            ["config.yaml", "valid.acc.ave.pth", "bpe.model", "feats_stats.npz", *([] if inline else ["tokens.txt"])])
        assert encoder_digest(copy) == encoder_digest(exp)   # the original's posterior dumps serve the copy
        assert load_tokenizer(copy).encode("turn on the lights") == load_tokenizer(exp).encode("turn on the lights")
        d = ESPnetDir(copy)
        assert (d.model_file, d.bpe_model, d.stats_file) == (copy / "valid.acc.ave.pth", copy / "bpe.model",
                                                            copy / "feats_stats.npz")
        assert d.token_list == ESPnetDir(exp).token_list


def test_a_copy_inside_another_recipe_reads_its_own_files_not_the_recipe_s(tmp_path, monkeypatch):
    exp = write_recipe(tmp_path / "trained", upper=True)   # another BPE model: other pieces
    other = write_recipe(tmp_path / "other").parents[1]    # the recipe the copy is put in and run from
    copy = other / "exp" / "tasu_export" / "encoder"
    copy.parent.mkdir()
    ESPnetCTCEncoder.copy_model(exp, copy)
    monkeypatch.chdir(other)   # data/token_list/bpe_unigram40/bpe.model here is the other model's
    d = ESPnetDir(copy)
    assert (d.bpe_model, d.stats_file) == (copy / "bpe.model", copy / "feats_stats.npz")
    assert load_tokenizer(copy).encode("TURN ON THE LIGHTS") == load_tokenizer(exp).encode("TURN ON THE LIGHTS")
    # a model directory without the file is not served the current directory's file of that relative path
    (copy / "bpe.model").unlink()
    with pytest.raises(FileNotFoundError, match=r"bpemodel data/token_list/bpe_unigram40/bpe.model not found "
                                                r"\(looked in .* and its two parents\)"):
        load_tokenizer(copy)


def test_what_tasu_cannot_read_is_refused_with_the_file_and_key(exp, tmp_path):
    config = yaml.safe_load((exp / "config.yaml").read_text())
    with pytest.raises(ValueError, match=r"config.yaml: token_type 'phn' is not one tasu reads"):
        ESPnetTokenizer(config["token_list"], "phn", where=f"{exp}/config.yaml")
    (exp.parents[1] / "data" / "token_list" / "bpe_unigram40" / "bpe.model").unlink()
    with pytest.raises(FileNotFoundError, match=r"config.yaml: bpemodel data/token_list/bpe_unigram40/bpe.model not found"):
        load_tokenizer(exp)
    (exp / "valid.acc.ave.pth").unlink()
    (exp / "2epoch.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"which model file\? .*found \['1epoch.pth', '2epoch.pth'\]"):
        ESPnetDir(exp).model_file


def test_loading_the_model_without_espnet_says_where_espnet_lives(exp):
    if _has_module("espnet2"):
        pytest.skip("this Python has espnet")
    with pytest.raises(RuntimeError, match="tools/setup.sh --with espnet"):
        load_encoder(exp)


def test_a_dump_identity_hashes_the_model_files_not_checkpoints_or_logs(exp):
    before = encoder_digest(exp)
    (exp / "checkpoint.pth").write_bytes(b"another epoch")
    (exp / "train.log").write_text("more lines")
    assert encoder_digest(exp) == before
    (exp / "valid.acc.ave.pth").write_bytes(b"other weights")
    assert encoder_digest(exp) != before


def _has_module(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


# --- a model the tasu side cannot use ------------------------------------------------------------

class _Model(torch.nn.Module):
    """Stands in for an ESPnetASRModel: what the checks read (its CTC head, its front-end)."""

    def __init__(self, ctc_outputs: int | None, frontend: bool = True):
        super().__init__()
        self.ctc = None if ctc_outputs is None else torch.nn.Module()
        if self.ctc is not None:
            self.ctc.ctc_lo = torch.nn.Linear(4, ctc_outputs)
        self.frontend = torch.nn.Identity() if frontend else None


def test_a_model_without_ctc_or_with_another_token_count_is_refused(exp):
    tok = load_tokenizer(exp)
    with pytest.raises(ValueError, match="no CTC branch"):
        ESPnetCTCEncoder(_Model(None), tok)
    with pytest.raises(ValueError, match=f"the CTC head has {tok.vocab_size + 1} outputs but token_list has {tok.vocab_size}"):
        ESPnetCTCEncoder(_Model(tok.vocab_size + 1), tok)
    with pytest.raises(ValueError, match="frontend null"):
        ESPnetCTCEncoder(_Model(tok.vocab_size, frontend=False), tok)
    assert ESPnetCTCEncoder(_Model(tok.vocab_size), tok).vocab_size == tok.vocab_size


# --- a real ESPnet2 model, trained by espnet, as TASU's encoder -----------------------------------

ESPNET_TRAIN_CONFIG = """
frontend: default
frontend_conf: {n_fft: 400, hop_length: 160, n_mels: 40}
encoder: transformer
encoder_conf: {output_size: 32, attention_heads: 2, linear_units: 64, num_blocks: 1, input_layer: conv2d,
               dropout_rate: 0.0, positional_dropout_rate: 0.0, attention_dropout_rate: 0.0}
model_conf: {ctc_weight: 1.0}
optim: adam
optim_conf: {lr: 0.005}
max_epoch: 3
batch_type: unsorted
batch_size: 4
num_workers: 0
num_att_plot: 0
seed: 0
"""

# Run in espnet's environment: ESPnet's own loader (build_model_from_file, from the ESPnet recipe as
# ESPnet's scripts run it) against tasu's, and a dump against ESPnet's posteriors, compressed. A
# recording's posteriors depend in the last float bits on the batch it ran in, so ESPnet gets the
# dump's batches: each job's recordings in its scp order, 8 at a time (dump-posteriors' --batch-size).
CHECK_AGAINST_ESPNET = """
import glob, json, os, sys, torch
from espnet2.tasks.asr import ASRTask
from tasu.compress import CompressConfig, compress_posteriors
from tasu.data.audio import load_audio
from tasu.dump import FIELD, DumpReader
from tasu.encoders import load_encoder

espnet_recipe, exp, dump = sys.argv[1:4]
here = os.getcwd()
os.chdir(espnet_recipe)
theirs, _ = ASRTask.build_model_from_file(f"{exp}/config.yaml", f"{exp}/valid.acc.ave.pth", "cpu")
os.chdir(here)
theirs.eval()
ours = load_encoder(exp)
made = json.load(open(f"{dump}/dump.json"))
compress = CompressConfig(**made["identity"]["compress"])
reader = DumpReader(made["identity"])
records = {r[FIELD]: r for r in map(json.loads, open(f"{dump}/ASR.jsonl"))}   # entry -> its record
count = 0
for scp in sorted(glob.glob(f"{dump}/post.*.scp")):
    entries = [line.split()[1] for line in open(scp)]
    for first in range(0, len(entries), 8):
        batch = [records[e] for e in entries[first:first + 8]]
        waves = [torch.from_numpy(load_audio(r["path"])) for r in batch]
        with torch.no_grad():
            feats, feat_lengths = ours.extract_features(waves)
            out, lengths = theirs.encode(feats, feat_lengths)
            expected = theirs.ctc.log_softmax(out)
            got, got_lengths = ours(feats, feat_lengths)
        assert torch.equal(got, expected) and torch.equal(got_lengths, lengths)
        want = compress_posteriors(expected.exp(), lengths, compress.topk, enabled=compress.enabled,
                                   threshold=compress.threshold)
        for b, record in enumerate(batch):
            have = reader.load(record[FIELD])
            n = int(have.lengths[0])
            assert n == int(want.lengths[b]), record["key"]
            for name in ("ids", "weights"):
                assert torch.equal(getattr(have, name)[0, :n], getattr(want, name)[b, :n]), (record["key"], name)
            count += 1
print(f"same posteriors: {count}", flush=True)
"""


def espnet_python() -> Path:
    python = ESPNET_VENV / "bin" / "python"
    if not python.exists():
        if os.environ.get("TASU_REQUIRE_ESPNET"):
            pytest.fail("tools/espnet-venv is missing: make it with tools/setup.sh --with espnet")
        pytest.skip("tools/espnet-venv is missing (tools/setup.sh --with espnet makes it)")
    return python


def run(cmd: list, cwd: Path | None = None, env: dict | None = None) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{cmd[:3]}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def speak(text: str, wav: Path, voice: str, speed: int) -> None:
    """espeak-ng's speech of ``text`` as a 16 kHz wav."""
    import soundfile as sf
    import soxr

    raw = wav.with_suffix(".22k.wav")
    run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", raw, text])
    audio, rate = sf.read(raw, dtype="float32")
    sf.write(wav, soxr.resample(audio, rate, 16000), 16000)
    raw.unlink()


def train_espnet_model(python: Path, recipe: Path) -> Path:
    """ESPnet's asr.sh, stages 5, 10 and 11 in miniature, with espnet's own tools: a BPE model and its
    token list, the feature statistics, a few epochs of a one-block CTC model on espeak-ng speech."""
    data = recipe / "data" / "train"
    (recipe / "wav").mkdir(parents=True)
    data.mkdir(parents=True)
    scp, text = [], []
    for i, sentence in enumerate(SENTENCES):
        wav = recipe / "wav" / f"u{i}.wav"
        speak(sentence, wav, ("en-us", "en")[i % 2], 150 + 10 * i)
        scp.append(f"u{i} {wav}\n")
        text.append(f"u{i} {sentence}\n")
    (data / "wav.scp").write_text("".join(scp))
    (data / "text").write_text("".join(text))
    units = recipe / "data" / "token_list" / "bpe_unigram40"
    units.mkdir(parents=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES), model_prefix=str(units / "bpe"),
                                   vocab_size=40, model_type="unigram", character_coverage=1.0, minloglevel=2)
    run([python, "-m", "espnet2.bin.tokenize_text", "--token_type", "bpe", "--bpemodel", units / "bpe.model",
         "--input", data / "text", "--output", units / "tokens.txt", "--field", "2-", "--write_vocabulary", "true",
         "--add_symbol", "<blank>:0", "--add_symbol", "<unk>:1", "--add_symbol", "<sos/eos>:-1"], cwd=recipe)
    (recipe / "train.yaml").write_text(ESPNET_TRAIN_CONFIG)
    common = ["--use_preprocessor", "true", "--token_type", "bpe", "--bpemodel", "data/token_list/bpe_unigram40/bpe.model",
              "--token_list", "data/token_list/bpe_unigram40/tokens.txt", "--config", "train.yaml",
              "--train_data_path_and_name_and_type", "data/train/wav.scp,speech,sound",
              "--train_data_path_and_name_and_type", "data/train/text,text,text",
              "--valid_data_path_and_name_and_type", "data/train/wav.scp,speech,sound",
              "--valid_data_path_and_name_and_type", "data/train/text,text,text"]
    run([python, "-m", "espnet2.bin.asr_train", *common, "--collect_stats", "true", "--normalize", "none",
         "--train_shape_file", "data/train/wav.scp", "--valid_shape_file", "data/train/wav.scp",
         "--output_dir", "exp/asr_stats_raw_bpe40"], cwd=recipe)
    stats = "exp/asr_stats_raw_bpe40"
    run([python, "-m", "espnet2.bin.asr_train", *common, "--normalize", "global_mvn",
         "--normalize_conf", f"stats_file={stats}/train/feats_stats.npz",
         "--train_shape_file", f"{stats}/train/speech_shape", "--valid_shape_file", f"{stats}/valid/speech_shape",
         "--output_dir", "exp/asr_train_raw_bpe40"], cwd=recipe)
    return recipe / "exp" / "asr_train_raw_bpe40"


@pytest.mark.slow
def test_an_espnet_model_trained_by_espnet_drives_a_tasu_recipe(tmp_path):
    """A tiny CTC model made by ESPnet's asr_train, in an ESPnet recipe's layout, is the encoder of the
    LibriSpeech recipe, stages 1-7: text-only training in the main environment (no espnet), posterior
    dumps made in espnet's (the same numbers as ESPnet's own loader gives), audio fine-tuning and
    decoding from the dumps."""
    from fixtures import save_tiny_llm
    from recipe_fixtures import copy_recipe, write_librispeech
    from test_recipes import DECODE_ARGS, QUICK_DECODE, QUICK_TRAIN, sh

    python = espnet_python()
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing (tools/setup.sh installs it)")
    exp = train_espnet_model(python, tmp_path / "asr1")
    assert detect(exp) == "espnet" and ESPnetDir(exp).model_file.name == "valid.acc.ave.pth"

    corpus = write_librispeech(tmp_path / "corpora")
    recipe = copy_recipe("librispeech", tmp_path)
    llm = save_tiny_llm(tmp_path / "llm")
    env = {"LIBRISPEECH": str(corpus), "LIBRISPEECH_LM_NORM": ""}
    sh(recipe, "./run.sh", "--stage", "1", "--stop_stage", "7", "--test_sets", "test_clean",
       "--encoder_path", str(exp), "--llm_path", str(llm), "--audio_sft", "true",
       "--train_text_args", QUICK_TRAIN, "--train_audio_args", QUICK_TRAIN, "--decode_args", QUICK_DECODE, env=env,
       timeout=1200)   # each of the three dumps starts espnet (~20 s of imports on a quiet core)
    dumps = list((recipe / "dump" / "posteriors").glob("*/test_clean"))
    assert len(dumps) == 1 and (dumps[0] / ".done").exists()
    assert "tools/espnet-venv/bin/tasu dump-posteriors" in (dumps[0] / "log" / "dump.1.log").read_text()
    for model in ("tasu_train_text", "tasu_train_text_then_train_audio_sft"):
        hyp = recipe / "exp" / model / f"decode_beam4_best{DECODE_ARGS}" / "test_clean" / "ASR" / "hyp.trn"
        assert len(hyp.read_text().splitlines()) == 2, model
    assert "same posteriors: 2" in run([python, "-c", CHECK_AGAINST_ESPNET, tmp_path / "asr1", exp, dumps[0]],
                                       cwd=recipe)

    # the main environment cannot run it live, and says so in one line
    out = sh(recipe, "./run.sh", "--stage", "5", "--stop_stage", "5", "--test_sets", "test_clean",
             "--encoder_path", str(exp), "--llm_path", str(llm), "--posterior_dumps", "false", env=env, ok=False)
    assert out.returncode == 1 and "keep --posterior_dumps true" in out.stderr and "Traceback" not in out.stderr


def test_a_recipe_runs_an_espnet_encoder_in_espnet_s_environment(exp, tmp_path, capsys):
    from tasu.recipe import main as recipe_main

    (tmp_path / "x.yaml").write_text(f"encoder: {{path: {exp}}}\n")
    assert recipe_main(["encoder-env", str(tmp_path / "x.yaml")]) == 0
    assert capsys.readouterr().out == "espnet-venv\n"
    other = tmp_path / "other"
    shutil.copytree(exp, other)
    (other / "config.yaml").write_text("model: SenseVoiceSmall\n")   # a funasr layout: the main environment
    assert recipe_main(["encoder-env", str(tmp_path / "x.yaml"), f"encoder.path={other}"]) == 0
    assert capsys.readouterr().out == "\n"
