"""Posterior dumps (``tasu dump-posteriors``): the live path's numbers, resuming, and training and
decoding from them as from audio, on a tiny SenseVoice encoder and a tiny Qwen2.

Exactness: the encoder's output for an utterance depends, in the last float bits, on the batch it
runs in (padding, matrix-product blocking). With one utterance per batch in the dump and in the
live path both compute the same thing, so the tests compare numbers for equality, not closeness.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from fixtures import SENTENCES, save_tiny_llm, waveform, write_hf_ctc_dir, write_sensevoice_dir
from tasu.cli import main as tasu_main
from tasu.compress import CompressConfig, encoder_posteriors
from tasu.data.records import DataError
from tasu.dump import DONE, FIELD, SECONDS, DumpError, DumpReader, dump_posteriors, identity, why_stale
from tasu.fileio import MetadataError

BIN = Path(sys.executable).parent
ENV = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
SCENARIOS = ["iot", "iot", "weather", "alarm", "music", "datetime", "calendar", "weather"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    """Six recordings, each in an ASR and an SLU_scenario file (shared audio), and an audio config."""
    root = tmp_path_factory.mktemp("dump")
    save_tiny_llm(root / "llm")
    write_sensevoice_dir(root / "enc")
    (root / "wav").mkdir()
    asr, slu = [], []
    for i in range(6):
        wav = root / "wav" / f"u{i}.wav"
        sf.write(wav, waveform(0.6 + 0.15 * i, seed=i).numpy(), 16000)
        asr.append({"key": f"u{i}", "task": "ASR", "target": SENTENCES[i], "path": str(wav)})
        slu.append({"key": f"u{i}", "task": "SLU_scenario", "target": SCENARIOS[i], "path": str(wav)})
    (root / "data").mkdir()
    for name, records in (("ASR", asr), ("SLU_scenario", slu)):
        (root / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "audio.yaml").write_text(f"""
encoder: {{path: {root}/enc}}
llm: {{path: {root}/llm}}
projector: {{name: linear-silu, options: {{hidden: 32}}}}
compress: {{threshold: 0.99, topk: 4}}
data: {{mode: audio, train: [{root}/data/ASR.jsonl, {root}/data/SLU_scenario.jsonl],
        valid: [{root}/data/ASR.jsonl], max_tokens: 400, max_batch_size: 1, num_workers: 1}}
optim: {{lr: 1.0e-3, warmup_steps: 2, total_steps: 4}}
engine: {{device: cpu}}
train: {{epochs: 1, max_steps: 4, log_interval: 2, valid_interval: 4, save_interval: 4}}
""", encoding="utf-8")
    return root


def tasu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "tasu"), *args], env=ENV, capture_output=True, text=True, timeout=300)


def one_line_error(out: subprocess.CompletedProcess | str, *expected: str) -> str:
    text = out if isinstance(out, str) else out.stderr
    if not isinstance(out, str):
        assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in text
    line, = [ln for ln in text.splitlines() if "error:" in ln]
    for part in expected:
        assert part in line, line
    return line


COMPRESS = CompressConfig(threshold=0.99, topk=4)


@pytest.fixture(scope="module")
def dump(setup, tmp_path_factory) -> Path:
    """The setup's dump, made by the command as a recipe runs it: two jobs, one utterance a batch."""
    out = tmp_path_factory.mktemp("made") / "post"
    data = [str(setup / "data" / "ASR.jsonl"), str(setup / "data" / "SLU_scenario.jsonl")]
    made = tasu("dump-posteriors", "--config", str(setup / "audio.yaml"), "--data", *data, "--out", str(out),
                "--nj", "2", "--batch-size", "1", "--device", "cpu")
    assert made.returncode == 0, made.stderr[-3000:]
    return out


def test_a_dump_holds_the_live_paths_posteriors_once_per_recording(setup, tmp_path):
    from tasu.data.audio import load_audio
    from tasu.encoders import load_encoder

    out = tmp_path / "post"
    data = [str(setup / "data" / "ASR.jsonl"), str(setup / "data" / "SLU_scenario.jsonl")]
    report = dump_posteriors(data, str(out), str(setup / "enc"), compress=COMPRESS, nj=2, batch_size=1)
    assert "6 recordings of 12 records" in report and (out / DONE).exists()
    asr = [json.loads(ln) for ln in (out / "ASR.jsonl").read_text().splitlines()]
    slu = [json.loads(ln) for ln in (out / "SLU_scenario.jsonl").read_text().splitlines()]
    assert [r[FIELD] for r in asr] == [r[FIELD] for r in slu]   # shared audio, one entry
    assert [r["target"] for r in slu] == SCENARIOS[:6]
    assert len((out / "posteriors.scp").read_text().splitlines()) == 6

    encoder = load_encoder(setup / "enc")
    reader = DumpReader(identity(setup / "enc", "auto", COMPRESS))
    for record in asr:
        wave = torch.from_numpy(load_audio(record["path"]))
        assert record[SECONDS] == len(wave) / 16000
        live = encoder_posteriors(encoder, [wave], COMPRESS)
        got = reader.load(record[FIELD])
        assert got.lengths.tolist() == live.lengths.tolist() and got.lengths.item() > 0
        for name in ("ids", "weights", "floor", "blank"):
            assert torch.equal(getattr(got, name), getattr(live, name)), name
        assert (got.vocab_size, got.blank_id) == (live.vocab_size, live.blank_id)


def test_a_killed_dump_redoes_only_its_unfinished_jobs(setup, tmp_path):
    out = tmp_path / "post"
    data = [str(setup / "data" / "ASR.jsonl")]
    assert "job 1 of 3 done" in dump_posteriors(data, str(out), str(setup / "enc"), compress=COMPRESS, nj=3, job=1)
    assert not (out / DONE).exists() and not (out / "ASR.jsonl").exists()
    (out / ".post.2.ark.abc").write_bytes(b"half an ark")   # job 2 killed while writing
    first = (out / "post.1.ark").stat()
    assert "2 of 3 jobs run now" in dump_posteriors(data, str(out), str(setup / "enc"), compress=COMPRESS, nj=3)
    assert (out / "post.1.ark").stat().st_mtime_ns == first.st_mtime_ns   # job 1 was not redone
    assert not (out / ".post.2.ark.abc").exists()   # the killed job's temporary ark stayed for good
    assert "already complete" in dump_posteriors(data, str(out), str(setup / "enc"), compress=COMPRESS, nj=3)
    from tasu.recipe import dump_done

    assert dump_done(str(out), 3, data) == 0 and dump_done(str(tmp_path / "none"), 3, data) == 2   # 1: an error
    assert dump_done(str(out), 2, data) == 2 and why_stale(out, data, 2) == "made with --nj 3, not 2"
    with pytest.raises(DumpError, match="holds a dump made with compress"):
        dump_posteriors(data, str(out), str(setup / "enc"), compress=CompressConfig(topk=8), nj=3)
    with pytest.raises(DumpError, match=f"^{out} holds a dump made with --nj 3, not 2: remove it or choose another"):
        dump_posteriors(data, str(out), str(setup / "enc"), compress=COMPRESS, nj=2)

    # a recipe's set remade by stage 2, or another --dump_nj: the recipe's dump stage stopped there for good
    from tasu.lock import DirLock

    (out / "log").mkdir()
    (out / "log" / "dump.1.log").write_text("the job runner's")
    with DirLock(out, "job 1 of tasu dump-posteriors", name=".lock.1"):   # a run of the old dump going on
        with pytest.raises(DumpError, match=f"^{out}: a dump of other inputs or --nj is being made there by pid "):
            dump_posteriors(data, str(out), str(setup / "enc"), compress=COMPRESS, nj=2, remake_stale=True)
    assert "2 of 2 jobs run now" in dump_posteriors(data, str(out), str(setup / "enc"), compress=COMPRESS, nj=2,
                                                    remake_stale=True)
    assert not (out / "post.3.scp").exists() and (out / "log" / "dump.1.log").read_text() == "the job runner's"
    fewer = tmp_path / "remade" / "ASR.jsonl"
    fewer.parent.mkdir()
    fewer.write_text("".join(Path(data[0]).read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(DumpError, match="other input files"):
        dump_posteriors([str(fewer)], str(out), str(setup / "enc"), compress=COMPRESS, nj=2)
    dump_posteriors([str(fewer)], str(out), str(setup / "enc"), compress=COMPRESS, nj=2, remake_stale=True)
    assert len((out / "ASR.jsonl").read_text().splitlines()) == len(fewer.read_text().splitlines())
    assert len((out / "posteriors.scp").read_text().splitlines()) == len(fewer.read_text().splitlines())
    with pytest.raises(DumpError, match="holds a dump made with compress"):   # another encoder's: never removed
        dump_posteriors(data, str(out), str(setup / "enc"), compress=CompressConfig(topk=8), nj=2, remake_stale=True)


def test_a_dump_whose_audio_was_replaced_in_place_is_made_anew(setup, tmp_path):
    """A corpus re-extracted or resampled under the same names leaves the JSONL as it was: compared by its
    digest alone, the dump was "already complete", and the old audio's posteriors were decoded, exit 0."""
    from tasu.recipe import dump_done

    (tmp_path / "wav").mkdir()
    records = []
    for i in range(2):
        shutil.copy(setup / "wav" / f"u{i}.wav", tmp_path / "wav" / f"u{i}.wav")
        records.append({"key": f"u{i}", "task": "ASR", "target": SENTENCES[i],
                        "path": str(tmp_path / "wav" / f"u{i}.wav")})
    data = tmp_path / "ASR.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "post"
    dump_posteriors([str(data)], str(out), str(setup / "enc"), compress=COMPRESS, nj=1)
    assert why_stale(out, [str(data)], 1) is None and dump_done(str(out), 1, [str(data)]) == 0
    before = (out / "post.1.ark").read_bytes()

    sf.write(tmp_path / "wav" / "u1.wav", waveform(1.3, seed=9).numpy(), 16000)   # other audio, same name
    assert why_stale(out, [str(data)], 1) == ("made from audio that changed since (the size or modification time "
                                              f"of a file that {data} reads)")
    assert dump_done(str(out), 1, [str(data)]) == 2
    with pytest.raises(DumpError, match=f"^{out} holds a dump made from audio that changed since"):
        dump_posteriors([str(data)], str(out), str(setup / "enc"), compress=COMPRESS, nj=1)
    assert "1 of 1 jobs run now" in dump_posteriors([str(data)], str(out), str(setup / "enc"), compress=COMPRESS,
                                                    nj=1, remake_stale=True)
    assert (out / "post.1.ark").read_bytes() != before and dump_done(str(out), 1, [str(data)]) == 0

    # a dump of an older tasu recorded no audio digest: compared without it, not made anew
    info = json.loads((out / "dump.json").read_text())
    for entry in info["inputs"]:
        del entry["audio"]
    (out / "dump.json").write_text(json.dumps(info))
    os.utime(tmp_path / "wav" / "u0.wav", ns=(1, 1))
    assert why_stale(out, [str(data)], 1) is None


@pytest.fixture(scope="module")
def trained(setup, dump, tmp_path_factory) -> Path:
    """The same 4 steps trained on audio (the encoder live) and from the dump."""
    root = tmp_path_factory.mktemp("exps")
    for name, mode, files in (("audio", "audio", setup / "data"), ("dumped", "posteriors", dump)):
        out = tasu("train", "--config", str(setup / "audio.yaml"), "--exp-dir", str(root / name),
                   f"data.mode={mode}", f"data.train=[{files}/ASR.jsonl,{files}/SLU_scenario.jsonl]",
                   f"data.valid=[{files}/ASR.jsonl]")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return root


def test_training_from_a_dump_gives_the_audio_trainings_numbers(trained):
    audio, dumped = trained / "audio", trained / "dumped"
    assert (dumped / "loss.tsv").read_text() == (audio / "loss.tsv").read_text()
    assert len((audio / "loss.tsv").read_text().splitlines()) == 4
    a = load_file(audio / "checkpoints" / "step_000004" / "model" / "trainable.safetensors")
    b = load_file(dumped / "checkpoints" / "step_000004" / "model" / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = (dumped / "train.log").read_text()
    assert "posteriors mode" in log and "0 text and 4 audio batches" in log
    valid = [ln.split("validation: ")[1] for ln in (audio / "train.log").read_text().splitlines() if "validation:" in ln]
    assert valid and valid == [ln.split("validation: ")[1] for ln in log.splitlines() if "validation:" in ln]


def test_decoding_a_dump_gives_the_audio_decodes_hypotheses(setup, dump, trained, tmp_path):
    common = ["--exp", str(trained / "audio"), "--beam", "2", "--max-new-tokens", "6", "--batch-size", "1",
              "--device", "cpu"]
    assert tasu_main(["decode", *common, "--data", str(setup / "data" / "ASR.jsonl"), "--out", str(tmp_path / "a")]) == 0
    assert tasu_main(["decode", *common, "--data", str(dump / "ASR.jsonl"), "--out", str(tmp_path / "p"),
                      "--input", "posteriors"]) == 0
    hyps = (tmp_path / "a" / "hyp.trn").read_text()
    assert len(hyps.splitlines()) == 6 and (tmp_path / "p" / "hyp.trn").read_text() == hyps
    assert "real-time factor" in (tmp_path / "p" / "decode.log").read_text()


def test_a_dump_of_another_encoder_or_compression_is_refused_in_one_line(setup, dump, trained, tmp_path, capsys):
    other = tmp_path / "enc"
    shutil.copytree(setup / "enc", other)
    with open(other / "configuration.json", "a") as f:   # another file: another encoder, as far as anyone can tell
        f.write("\n")
    data = str(dump / "ASR.jsonl")
    common = ["decode", "--exp", str(trained / "audio"), "--data", data, "--input", "posteriors", "--device", "cpu"]
    assert tasu_main([*common, "--out", str(tmp_path / "d1"), "--set", f"encoder.path={other}"]) == 1
    one_line_error(capsys.readouterr().err, f"{data}:1: posteriors: ", "another encoder or compression",
                   "encoder files sha256", "tasu dump-posteriors")
    assert tasu_main([*common, "--out", str(tmp_path / "d2"), "--set", "compress.topk=8"]) == 1
    one_line_error(capsys.readouterr().err, f"{data}:1: posteriors: ", '"topk": 4} (dump) vs')
    assert tasu_main([*common, "--out", str(tmp_path / "d3"), "--set", "encoder.options={text_norm: woitn}"]) == 1
    one_line_error(capsys.readouterr().err, f"{data}:1: posteriors: ",
                   'encoder options {} (dump) vs {"text_norm": "woitn"}')

    out = tasu("train", "--config", str(setup / "audio.yaml"), "--exp-dir", str(tmp_path / "exp"),
               "data.mode=posteriors", f"data.train=[{data}]", "data.valid=[]", f"encoder.path={other}")
    one_line_error(out, "tasu train: error: ", f"{data}:1: posteriors: ", "another encoder")


def test_an_experiment_s_encoder_options_reach_the_encoder_and_a_wrong_one_is_one_line(setup, tmp_path, capsys):
    """``encoder.options`` (here SenseVoice's text normalisation query) build the experiment's encoder;
    an option the backend does not take stops even a text-only run before anything loads."""
    from tasu.config import load_config
    from tasu.experiment import ExperimentConfig
    from tasu.model_io import build_model

    model = build_model(load_config(ExperimentConfig, setup / "audio.yaml", ["encoder.options={text_norm: woitn}"]),
                        audio=True)
    assert model.encoder.query_rows.tolist()[3] == model.encoder.model.textnorm_dict["woitn"]
    for mode in ("audio", "text"):
        assert tasu_main(["train", "--config", str(setup / "audio.yaml"), "--exp-dir", str(tmp_path / mode),
                          f"data.mode={mode}", "encoder.options={lang: en}"]) == 1
        one_line_error(capsys.readouterr().err, "tasu train: error: encoder.options: lang: not an option of the "
                       "sensevoice encoder (its options: language, text_norm)")
        assert not (tmp_path / mode).exists()


def test_a_missing_or_corrupt_entry_is_one_line(setup, dump, trained, tmp_path, capsys):
    records = [json.loads(ln) for ln in (dump / "ASR.jsonl").read_text().splitlines()]
    ark, offset = records[1][FIELD].rsplit(":", 1)
    cut = tmp_path / "post"
    shutil.copytree(dump, cut)
    cut_ark = cut / Path(ark).name
    cut_ark.write_bytes(cut_ark.read_bytes()[:int(offset) + 30])   # entry 2's matrix cut short
    cases = {
        "past the end": (f"{ark}:{10 ** 9}", "no entry there"),
        "a wrong offset": (f"{ark}:{int(offset) + 3}", "not a float matrix"),
        "a truncated ark": (f"{cut_ark}:{offset}", "truncated"),
        "no dump": (f"{setup}/nowhere.ark:0", "is not in a posterior dump"),
        "an offset past any file": (f"{ark}:{10 ** 20}", "no entry there"),
    }
    for i, (entry, message) in enumerate(cases.values()):
        bad = [dict(r) for r in records]
        bad[1][FIELD] = entry
        data = tmp_path / f"bad{i}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in bad))
        assert tasu_main(["decode", "--exp", str(trained / "audio"), "--data", str(data), "--out",
                          str(tmp_path / f"d{i}"), "--input", "posteriors", "--device", "cpu"]) == 1
        one_line_error(capsys.readouterr().err, f"{data}:2: posteriors: ", message)
    no_field = tmp_path / "plain.jsonl"
    shutil.copy(setup / "data" / "ASR.jsonl", no_field)
    assert tasu_main(["decode", "--exp", str(trained / "audio"), "--data", str(no_field), "--out",
                      str(tmp_path / "dx"), "--input", "posteriors", "--device", "cpu"]) == 1
    one_line_error(capsys.readouterr().err, f"{no_field}:1: posteriors: missing")


def test_an_entry_whose_probabilities_are_not_probabilities_is_refused(setup, dump, tmp_path):
    """ids are checked against the vocabulary; the weights, floor and blank columns are probabilities."""
    from kaldiio import WriteHelper

    entry = json.loads((dump / "ASR.jsonl").read_text().splitlines()[0])[FIELD]
    reader = DumpReader(identity(setup / "enc", "auto", COMPRESS))
    good = reader.load(entry)
    k = good.ids.shape[-1]
    shutil.copy(dump / "dump.json", tmp_path / "dump.json")
    for column, value in ((k, -5.0), (2 * k, -1.0), (2 * k + 1, 7.0), (2 * k - 1, -1.8e-10)):
        mat = torch.cat([good.ids[0].float(), good.weights[0], good.floor[0, :, None], good.blank[0, :, None]], 1)
        mat[0, column] = value
        with WriteHelper(f"ark:{tmp_path}/post.1.ark") as w:
            w("u0", mat.numpy())
        if value == -1.8e-10:   # float rounding of an encoder's renormalised tail, as real dumps hold
            reader.load(f"{tmp_path}/post.1.ark:3")
            continue
        with pytest.raises(DumpError, match="corrupt: a weight, floor or blank value is not a probability"):
            reader.load(f"{tmp_path}/post.1.ark:3")


def test_a_dump_entry_is_never_unpickled(setup, dump, tmp_path):
    """kaldiio reads an entry that starts with 'PKL' with pickle; the reader refuses it first."""
    ark = tmp_path / "evil.ark"
    ark.write_bytes(b"u0 PKL" + b"\x80\x04K\x01." * 8)
    shutil.copy(dump / "dump.json", tmp_path / "dump.json")
    reader = DumpReader(identity(setup / "enc", "auto", COMPRESS))
    with pytest.raises(DumpError, match="not a float matrix"):
        reader.load(f"{ark}:3")


def test_missing_audio_is_named_by_its_file_and_line(setup, tmp_path):
    lines = (setup / "data" / "ASR.jsonl").read_text().splitlines()
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join([lines[0], json.dumps({**json.loads(lines[1]), "path": str(tmp_path / "gone.wav")})]) + "\n")
    with pytest.raises(DataError) as e:
        dump_posteriors([str(data)], str(tmp_path / "post"), str(setup / "enc"), compress=COMPRESS)
    assert str(e.value) == f"{data}:2: path: no such file ({tmp_path}/gone.wav)"


def test_a_clip_too_short_for_a_wav2vec2_frame_is_named_by_its_file_and_line(tmp_path):
    """Longer than 10 ms but shorter than the convolutional front-end's receptive field: beside a longer
    clip it was dumped with 0 frames, exit 0; alone it was a torch error naming no record."""
    write_hf_ctc_dir(tmp_path / "hf", "wav2vec2")
    records = []
    for key, seconds in (("long", 0.5), ("short", 0.015)):
        sf.write(tmp_path / f"{key}.wav", waveform(seconds).numpy(), 16000)
        records.append(json.dumps({"key": key, "task": "ASR", "target": "a", "path": str(tmp_path / f"{key}.wav")}))
    data = tmp_path / "data.jsonl"
    for lines, line in ((records, 2), (records[1:], 1)):
        data.write_text("\n".join(lines) + "\n")
        shutil.rmtree(tmp_path / "post", ignore_errors=True)
        with pytest.raises(DataError, match=rf"^{data}:{line}: path: 240 samples at 16 kHz: shorter than the "
                                            r"encoder's receptive field \(325 samples, 20.3 ms\): no frame"):
            dump_posteriors([str(data)], str(tmp_path / "post"), str(tmp_path / "hf"), compress=COMPRESS,
                            batch_size=2)


def test_entries_are_absolute_whatever_out_was_given_as(setup, tmp_path, monkeypatch):
    """A relative entry was read from the current directory: from another one it named another dump of
    that name there (same keys, other audio), exit 0."""
    monkeypatch.chdir(tmp_path)
    dump_posteriors([str(setup / "data" / "ASR.jsonl")], "post", str(setup / "enc"), compress=COMPRESS, nj=2)
    entries = [json.loads(ln)[FIELD] for ln in (tmp_path / "post" / "ASR.jsonl").read_text().splitlines()]
    assert all(e.startswith(f"{tmp_path}/post/post.") for e in entries)
    assert set((tmp_path / "post" / "posteriors.scp").read_text().split()[1::2]) == set(entries)


def test_a_record_of_an_earlier_dump_made_at_the_same_path_is_refused(setup, tmp_path):
    """A copy of a dump's JSONL kept after the dump was made again at its path (same encoder, the records
    in another order) read another recording's rows at its offsets: a decode gave that recording's
    hypothesis under this key, exit 0."""
    from tasu.dump import check_records
    from tasu.data.records import iter_records_with_lines

    data = tmp_path / "ASR.jsonl"
    lines = (setup / "data" / "ASR.jsonl").read_text().splitlines(keepends=True)
    data.write_text("".join(lines))
    dump_posteriors([str(data)], str(tmp_path / "post"), str(setup / "enc"), compress=COMPRESS)
    kept = tmp_path / "kept.jsonl"
    shutil.copy(tmp_path / "post" / "ASR.jsonl", kept)
    shutil.rmtree(tmp_path / "post")
    data.write_text("".join(lines[::-1]))
    dump_posteriors([str(data)], str(tmp_path / "post"), str(setup / "enc"), compress=COMPRESS)
    reader = DumpReader(identity(str(setup / "enc"), "auto", COMPRESS))
    check_records(str(tmp_path / "post" / "ASR.jsonl"),
                  list(iter_records_with_lines(str(tmp_path / "post" / "ASR.jsonl"))), reader)   # the dump's own
    with pytest.raises(DataError, match=rf"^{kept}:1: posteriors: .*: written by an earlier dump made at "
                                        rf"{tmp_path / 'post'} \(its dump.json is now of another"):
        check_records(str(kept), list(iter_records_with_lines(str(kept))), reader)
    # a decode's resume compares what each record's hypothesis depends on: not which dump made its rows
    from tasu.decode import _record_digests

    old = next(iter_records_with_lines(str(kept)))[1]
    new = next(r for _, r in iter_records_with_lines(str(tmp_path / "post" / "ASR.jsonl")) if r.key == old.key)
    assert old.extra["posteriors_dump"] != new.extra["posteriors_dump"]
    assert _record_digests([old], False)[old.key] == _record_digests([new], False)[new.key]


def test_an_input_the_dump_would_write_over_is_refused(setup, tmp_path):
    """Its records went to DIR/<its name>: an input named utt2dur or dump.json was replaced by the dump's
    own file (or replaced it), and an input inside --out by its records with their entries."""
    for name in ("utt2dur", "dump.json", "post.1.scp", ".done"):
        data = tmp_path / "in" / name
        data.parent.mkdir(exist_ok=True)
        shutil.copy(setup / "data" / "ASR.jsonl", data)
        with pytest.raises(DumpError, match=f"may not be named {re.escape(name)}, a file of the dump itself"):
            dump_posteriors([str(data)], str(tmp_path / "post"), str(setup / "enc"), compress=COMPRESS)
    inside = tmp_path / "post" / "ASR.jsonl"
    inside.parent.mkdir()
    shutil.copy(setup / "data" / "ASR.jsonl", inside)
    with pytest.raises(DumpError, match="is in --out .*, where its records with their entries would replace it"):
        dump_posteriors([str(inside)], str(tmp_path / "post"), str(setup / "enc"), compress=COMPRESS)
    assert inside.read_bytes() == (setup / "data" / "ASR.jsonl").read_bytes()


def test_a_damaged_job_is_named_when_the_dump_is_merged(setup, tmp_path):
    data = [str(setup / "data" / "ASR.jsonl")]
    out = tmp_path / "post"
    dump_posteriors(data, str(out), str(setup / "enc"), compress=COMPRESS, nj=2)
    (out / DONE).unlink()
    scp = (out / "post.1.scp").read_text()
    for damage, message in (("garbage\n", "post.1.scp:4: not 'KEY ARK:OFFSET': damaged"),
                            ("", "lack 3 recordings (e.g. u0): damaged")):
        (out / "post.1.scp").write_text(scp + damage if damage else "")
        with pytest.raises(DumpError, match=re.escape(message)):
            dump_posteriors(data, str(out), str(setup / "enc"), compress=COMPRESS, nj=2)
    (out / "post.1.scp").write_text(scp)
    (out / "post.2.ark").unlink()
    with pytest.raises(DumpError, match=r"post\.2\.ark is missing beside .*post\.2\.scp: remove"):
        dump_posteriors(data, str(out), str(setup / "enc"), compress=COMPRESS, nj=2)
    assert not (out / DONE).exists()


def test_a_job_of_a_dump_made_anew_meanwhile_stops(setup, tmp_path, monkeypatch):
    """A job that claimed a dump and was loading its encoder when another run made the directory anew
    (--remake-stale, other inputs) wrote its split of the old inputs into the new dump."""
    import tasu.encoders as encoders

    out = tmp_path / "post"
    old = [str(setup / "data" / "ASR.jsonl")]
    new = tmp_path / "new" / "ASR.jsonl"
    new.parent.mkdir()
    new.write_text("".join(Path(old[0]).read_text().splitlines(keepends=True)[1:]))
    dump_posteriors(old, str(out), str(setup / "enc"), compress=COMPRESS, nj=2, job=2)
    load_encoder = encoders.load_encoder

    def made_anew_meanwhile(*args, **kwargs):
        monkeypatch.setattr(encoders, "load_encoder", load_encoder)
        dump_posteriors([str(new)], str(out), str(setup / "enc"), compress=COMPRESS, nj=2, remake_stale=True)
        return load_encoder(*args, **kwargs)

    monkeypatch.setattr(encoders, "load_encoder", made_anew_meanwhile)
    import tasu.dump

    remove_dump, held = tasu.dump._remove_dump, []

    def removing(root, info):   # job 1 never ran here: its lock file did not exist, and went unlocked
        held.append(tasu.dump.holder(root, ".lock.1"))
        remove_dump(root, info)

    monkeypatch.setattr(tasu.dump, "_remove_dump", removing)
    assert not (out / ".lock.1").exists()
    with pytest.raises(DumpError, match="the dump this run started was made anew from other inputs meanwhile"):
        dump_posteriors(old, str(out), str(setup / "enc"), compress=COMPRESS, nj=2, job=1)
    assert held and held[0] is not None
    assert "already complete" in dump_posteriors([str(new)], str(out), str(setup / "enc"), compress=COMPRESS, nj=2)
    assert len((out / "posteriors.scp").read_text().splitlines()) == len(new.read_text().splitlines())


def test_a_job_another_run_is_running_is_refused_naming_it(setup, tmp_path):
    """Two dumps into one directory each ran every job and renamed their arks over the other's."""
    from tasu.lock import DirLock, LockError

    out = tmp_path / "post"
    data = [str(setup / "data" / "ASR.jsonl")]
    with DirLock(out, "job 2 of tasu dump-posteriors", name=".lock.2"):
        with pytest.raises(LockError, match=rf"^{out} is in use: job 2 of tasu dump-posteriors by pid {os.getpid()}"):
            dump_posteriors(data, str(out), str(setup / "enc"), compress=COMPRESS, nj=2)
    assert (out / "post.1.scp").exists() and not (out / "post.2.scp").exists()
    assert "1 of 2 jobs run now" in dump_posteriors(data, str(out), str(setup / "enc"), compress=COMPRESS, nj=2)


def test_a_batch_size_below_one_is_refused(setup, tmp_path):
    with pytest.raises(DumpError, match="^batch size must be at least 1, got 0$"):
        dump_posteriors([str(setup / "data" / "ASR.jsonl")], str(tmp_path / "post"), str(setup / "enc"),
                        compress=COMPRESS, batch_size=0)
    assert not (tmp_path / "post").exists()


def test_a_dump_ark_named_like_a_command_is_read_as_a_file(setup, dump, tmp_path, monkeypatch):
    """kaldiio opens an ark whose name ends in '|' as a shell command: the reader opens the file."""
    entry = json.loads((dump / "ASR.jsonl").read_text().splitlines()[0])[FIELD]
    ark, offset = entry.rsplit(":", 1)
    monkeypatch.chdir(tmp_path)
    shutil.copy(ark, tmp_path / "sh payload.sh |")
    (tmp_path / "payload.sh").write_text(f"touch {tmp_path}/ran\ncat '{ark}'\n")
    shutil.copy(Path(ark).parent / "dump.json", tmp_path / "dump.json")
    reader = DumpReader(identity(setup / "enc", "auto", COMPRESS))
    assert torch.equal(reader.load(f"sh payload.sh |:{offset}").ids, reader.load(entry).ids)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("info", ["[]", "{}", '{"identity": 5}', "{", {"blank_id": 999}, {"blank_id": -1},
                                  {"topk": 0}])
def test_a_damaged_dump_json_is_named_by_its_file(setup, dump, tmp_path, info):
    entry = json.loads((dump / "ASR.jsonl").read_text().splitlines()[0])[FIELD]
    ark, offset = entry.rsplit(":", 1)
    shutil.copy(ark, tmp_path / "post.1.ark")
    if isinstance(info, dict):   # a field edited out of range
        info = json.dumps({**json.loads((dump / "dump.json").read_text()), **info})
    (tmp_path / "dump.json").write_text(info)
    reader = DumpReader(identity(setup / "enc", "auto", COMPRESS))
    with pytest.raises(MetadataError, match=f"^{re.escape(str(tmp_path / 'dump.json'))}: not "):
        reader.load(f"{tmp_path / 'post.1.ark'}:{offset}")


def test_recipe_names_a_dump_directory_by_what_made_it(setup, tmp_path, capsys):
    from tasu.recipe import main as recipe_main

    def tag(*overrides: str) -> str:
        assert recipe_main(["posterior-dir", "dump/posteriors", str(setup / "audio.yaml"), *overrides]) == 0
        return capsys.readouterr().out.strip()

    same = tag()
    assert same.startswith("dump/posteriors/") and tag("train.seed=3", "optim.lr=0.1") == same
    assert tag("compress.topk=8") != same
    assert tag("encoder.options={}") == same != tag("encoder.options={text_norm: woitn}")   # dumps made before options
    other = tmp_path / "enc"
    shutil.copytree(setup / "enc", other)
    (other / "am.mvn").write_text((other / "am.mvn").read_text() + "\n")
    assert tag(f"encoder.path={other}") != same
