"""``tasu decode`` on a tiny trained experiment: outputs, resuming, simulated input, scoring, bad data.

One experiment is trained for a few steps with ``tasu train`` (one process, CPU) for the whole module;
decoding uses a beam of 2 and a few new tokens, so the module takes well under a minute.
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

from fixtures import (SENTENCES, lock_held_elsewhere, save_llm_without_tokenizer, save_tiny_llm, waveform,
                      write_sensevoice_dir)
from tasu.cli import main as tasu_main
from tasu.data.records import DataError
from tasu.decode import _key_generator, decoded_keys, keep_complete_lines, run_decode, trn_line
from tasu.model_io import resolve_checkpoint

BIN = Path(sys.executable).parent
ENV = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
FAST = dict(beam=2, max_new_tokens=6, batch_size=3, device="cpu")


def tasu_decode(exp: Path, data: Path, out: Path, *args: str) -> int:
    """``tasu decode`` with FAST's settings through the command's entry point, as a user runs it: a
    failure is one line on stderr and exit status 1."""
    return tasu_main(["decode", "--exp", str(exp), "--data", str(data), "--out", str(out), "--beam", "2",
                      "--max-new-tokens", "6", "--batch-size", "3", "--device", "cpu", *args])


def read_trn(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t", 1)) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def exp(tmp_path_factory) -> Path:
    """A trained experiment (4 text-only steps) and a test set of 7 records: ASR and EN2DE, with audio."""
    root = tmp_path_factory.mktemp("decode")
    save_tiny_llm(root / "llm")
    write_sensevoice_dir(root / "enc")
    (root / "wav").mkdir()
    with open(root / "train.jsonl", "w", encoding="utf-8") as f:
        for i in range(16):
            f.write(json.dumps({"key": f"tr{i}", "task": "ASR", "target": SENTENCES[i % len(SENTENCES)]}) + "\n")
    with open(root / "test.jsonl", "w", encoding="utf-8") as f:
        for i in range(7):
            wav = root / "wav" / f"t{i}.wav"
            sf.write(wav, waveform(0.5 + 0.1 * i, seed=i).numpy(), 16000)
            record = {"key": f"t{i}", "task": "ASR", "target": SENTENCES[i], "path": str(wav)}
            if i == 6:  # another task: its target is not the transcript, so simulation needs the GT
                record.update(task="EN2DE", target="Mach das\nLicht an", GT=SENTENCES[0])
            f.write(json.dumps(record) + "\n")
    (root / "train.yaml").write_text(f"""
encoder: {{path: {root}/enc}}
llm: {{path: {root}/llm}}
projector: {{name: linear-silu, options: {{hidden: 32}}}}
data: {{train: [{root}/train.jsonl], max_tokens: 400, num_workers: 0}}
optim: {{lr: 1.0e-3, warmup_steps: 2, total_steps: 4}}
engine: {{device: cpu}}
train: {{epochs: 1, max_steps: 4, log_interval: 2, save_interval: 4}}
""", encoding="utf-8")
    out = subprocess.run([str(BIN / "tasu"), "train", "--config", str(root / "train.yaml"),
                          "--exp-dir", str(root / "exp")], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def audio_decode(exp, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audio_decode")
    assert run_decode(str(exp / "exp"), str(exp / "test.jsonl"), str(out), **FAST) == 0
    return out


def test_audio_decode_writes_every_key_once(exp, audio_decode, capsys):
    keys = [f"t{i}" for i in range(7)]
    hyp, ref = read_trn(audio_decode / "hyp.trn"), read_trn(audio_decode / "ref.trn")
    assert sorted(k for k, _ in hyp) == keys and [k for k, _ in ref] == keys
    assert ref[6] == ("t6", "Mach das Licht an")  # one line per utterance, whatever the target holds
    assert all(len(text.split()) <= 6 for _, text in hyp)  # max_new_tokens guards the length
    log = (audio_decode / "decode.log").read_text()
    assert "step_000004" in log and "7 decoded now" in log and "real-time factor" in log
    settings = json.loads((audio_decode / "decode.json").read_text())
    assert settings["checkpoint"] == "step_000004" and settings["beam"] == 2 and "compress" in settings

    # Run again: everything is there, so nothing is loaded and nothing appended.
    before = (audio_decode / "hyp.trn").read_bytes()
    assert run_decode(str(exp / "exp"), str(exp / "test.jsonl"), str(audio_decode), **FAST) == 0
    assert (audio_decode / "hyp.trn").read_bytes() == before
    assert "7 already in hyp.trn, 0 decoded now" in capsys.readouterr().out


def test_a_partial_last_line_is_cut_off_and_the_rest_decoded(exp, audio_decode, tmp_path):
    lines = (audio_decode / "hyp.trn").read_text().splitlines(keepends=True)
    shutil.copy(audio_decode / "decode.json", tmp_path / "decode.json")
    (tmp_path / "hyp.trn").write_text("".join(lines[:3]) + lines[3][:4], encoding="utf-8")  # killed mid-line
    keys, end = decoded_keys(tmp_path / "hyp.trn")
    assert keys == {k for k, _ in map(lambda ln: ln.split("\t"), lines[:3])} and end == len("".join(lines[:3]).encode())

    assert run_decode(str(exp / "exp"), str(exp / "test.jsonl"), str(tmp_path), **FAST) == 0
    hyp = read_trn(tmp_path / "hyp.trn")
    assert sorted(k for k, _ in hyp) == [f"t{i}" for i in range(7)]
    assert "3 already in hyp.trn, 4 decoded now" in (tmp_path / "decode.log").read_text()
    assert dict(hyp) == dict(read_trn(audio_decode / "hyp.trn"))  # the same model decodes the same way

    # Other settings into the same directory would mix two decodes in one file: refused.
    assert tasu_decode(exp / "exp", exp / "test.jsonl", tmp_path, "--beam", "3") == 1


def test_a_hyp_trn_that_is_not_this_decode_s_is_refused_and_left_as_it_was(exp, tmp_path, capsys):
    """Whether an existing hyp.trn may be resumed is checked before anything in it changes: another
    file's hypotheses, a hyp.trn without the decode.json that says how it was made, bytes that are not
    UTF-8 -- each one line, exit 1, the file byte for byte as it was (a partial last line included)."""
    out = tmp_path / "out"
    out.mkdir()
    cases = {b"x1\thello\nt0\tworld": "holds 1 hypotheses of keys that are not in",
             b"t0\thello\nt1\twor": "hyp.trn is there without decode.json",
             b"only line": "hyp.trn is there without decode.json",
             b"t\xef0\thello\n": "hyp.trn is not UTF-8"}
    for content, message in cases.items():
        (out / "hyp.trn").write_bytes(content)
        assert tasu_decode(exp / "exp", exp / "test.jsonl", out) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert (out / "hyp.trn").read_bytes() == content
    (out / "hyp.trn").write_bytes(b"t0\thello\n")
    for settings in ("[]", '{"beam": 2'):   # decode.json damaged: named, not a bare JSONDecodeError
        (out / "decode.json").write_text(settings)
        assert tasu_decode(exp / "exp", exp / "test.jsonl", out) == 1
        assert f"error: {out / 'decode.json'}: not " in capsys.readouterr().err
        assert (out / "hyp.trn").read_bytes() == b"t0\thello\n"


def test_simulated_input_loads_no_encoder(exp, tmp_path):
    script = ("import sys\nfrom tasu.decode import run_decode\n"
              f"rc = run_decode({str(exp / 'exp')!r}, {str(exp / 'test.jsonl')!r}, {str(tmp_path)!r}, "
              f"input_kind='simulated', **{FAST!r})\n"
              "assert not [m for m in sys.modules if m.startswith('funasr')], 'funasr was imported'\n"
              "sys.exit(rc)\n")
    out = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "utterances/s" in out.stdout and "real-time factor" not in out.stdout
    assert sorted(k for k, _ in read_trn(tmp_path / "hyp.trn")) == [f"t{i}" for i in range(7)]
    assert json.loads((tmp_path / "decode.json").read_text())["simulation_step"] == 4

    # Simulated rows are seeded by key: a second decode, in other batches, gives the same hypotheses.
    again = tmp_path / "again"
    assert run_decode(str(exp / "exp"), str(exp / "test.jsonl"), str(again), input_kind="simulated",
                      **{**FAST, "batch_size": 7}) == 0
    assert dict(read_trn(again / "hyp.trn")) == dict(read_trn(tmp_path / "hyp.trn"))

    # --seed: another draw of every record's rows (the key still seeds it), recorded in decode.json;
    # resuming a decode with another seed is refused.
    draw = [torch.rand(4, generator=_key_generator("t1", seed)) for seed in (0, 0, 5)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])
    assert json.loads((tmp_path / "decode.json").read_text())["seed"] == 0
    assert run_decode(str(exp / "exp"), str(exp / "test.jsonl"), str(again / "s5"), input_kind="simulated",
                      seed=5, **FAST) == 0
    assert json.loads((again / "s5" / "decode.json").read_text())["seed"] == 5
    assert tasu_decode(exp / "exp", exp / "test.jsonl", again, "--input", "simulated", "--seed", "5") == 1

    # The WER schedule is read at the checkpoint's step, which its weights record: a copy under another
    # name (or an export) was step 0, its simulated input error-free, other hypotheses with exit 0.
    copied = shutil.copytree(resolve_checkpoint(exp / "exp", "best"), tmp_path / "copied")
    assert run_decode(str(copied), str(exp / "test.jsonl"), str(tmp_path / "from_copy"), input_kind="simulated",
                      **FAST) == 0
    assert json.loads((tmp_path / "from_copy" / "decode.json").read_text())["simulation_step"] == 4
    assert dict(read_trn(tmp_path / "from_copy" / "hyp.trn")) == dict(read_trn(tmp_path / "hyp.trn"))


def test_tasu_score_reads_the_outputs(audio_decode, capsys):
    rc = tasu_main(["score", "--ref", str(audio_decode / "ref.trn"), "--hyp", str(audio_decode / "hyp.trn"),
                    "--metric", "wer"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((audio_decode / "score.json").read_text())


def test_bad_data_stops_with_a_located_message(exp, tmp_path, capsys):
    good = (exp / "test.jsonl").read_text().splitlines()
    wav = {"path": "gone.wav"}
    cases = {  # file name: (a record, or a line, and the message it must give)
        "json.jsonl": (good[0] + "\n{oops", "json.jsonl:2: json: "),
        "task.jsonl": ({"key": "a", "task": "NOPE", "target": "x", **wav}, "task.jsonl:1: task: unknown task 'NOPE'"),
        "nopath.jsonl": ({"key": "a", "task": "ASR", "target": "x"}, "nopath.jsonl:1: path: missing"),
        "nogt.jsonl": ({"key": "a", "task": "EN2DE", "target": "x"}, "nogt.jsonl:1: GT: missing"),
        "nowav.jsonl": ({"key": "a", "task": "ASR", "target": "x", **wav}, "nowav.jsonl:1: path: no such file (gone.wav)"),
        # found at its batch, after the model had loaded and earlier batches were written: named nothing
        "special.jsonl": (good[0] + "\n" + json.dumps({**json.loads(good[0]), "key": "h", "task": "hotword",
                                                        "hotword": "bob<|im_end|>"}),
                          "special.jsonl:2: hotword: spells the LLM's special token '<|im_end|>' (the hotword "
                          "prompts are filled from it): a prompt is text"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text if isinstance(text, str) else json.dumps(text), encoding="utf-8")
        extra = ["--input", "simulated"] if name == "nogt.jsonl" else []
        rc = tasu_decode(exp / "exp", tmp_path / name, tmp_path / f"out_{name}", *extra)
        err = capsys.readouterr().err
        assert rc == 1 and message in err, err
    assert not (tmp_path / "out_json.jsonl" / "hyp.trn").exists()
    assert not (tmp_path / "out_special.jsonl" / "hyp.trn").exists()

    # Base models that moved: the message says how to point at them.
    rc = tasu_decode(exp / "exp", exp / "test.jsonl", tmp_path / "moved", "--set", f"llm.path={tmp_path / 'gone'}")
    assert rc == 1 and "pass --set llm.path=DIR" in capsys.readouterr().err


def test_another_data_file_into_a_finished_decode_is_refused_and_changes_nothing(exp, audio_decode, tmp_path, capsys):
    """Its ref.trn would replace the finished one's and hyp.trn mix two decodes: scoring would read nonsense."""
    before = {name: (audio_decode / name).read_bytes() for name in ("hyp.trn", "ref.trn", "decode.json")}
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**json.loads(line), "key": f"w{i}"}) + "\n"
                             for i, line in enumerate((exp / "test.jsonl").read_text().splitlines())))
    assert tasu_decode(exp / "exp", other, audio_decode) == 1
    assert capsys.readouterr().err == (f"tasu decode: error: {audio_decode}/hyp.trn holds 7 hypotheses of keys that "
                                       f"are not in {other} (e.g. t0): another data file was decoded there; use "
                                       "another --out, or remove it\n")
    assert {name: (audio_decode / name).read_bytes() for name in before} == before

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert tasu_decode(exp / "exp", empty, tmp_path / "out") == 1
    assert capsys.readouterr().err == f"tasu decode: error: {empty}: no records: nothing to decode\n"
    assert not any((tmp_path / "out").glob("*.trn"))

    # --debug: the error itself, with its traceback, as for every other command
    with pytest.raises(DataError, match="no records: nothing to decode"):
        tasu_decode(exp / "exp", empty, tmp_path / "out", "--debug")


def test_another_model_or_other_audio_under_the_same_keys_is_refused_on_resume(exp, audio_decode, tmp_path, capsys,
                                                                            caplog):
    """The checkpoint's name and the keys were all that was compared: a copied experiment with other
    weights, or a noisy copy of the test set under the same keys, was resumed into the old hypotheses."""
    from safetensors.torch import load_file, save_file

    def partial(out: Path) -> Path:   # a decode killed after 3 hypotheses
        out.mkdir()
        shutil.copy(audio_decode / "decode.json", out / "decode.json")
        lines = (audio_decode / "hyp.trn").read_text().splitlines(keepends=True)
        (out / "hyp.trn").write_text("".join(lines[:3]))
        return out

    other = tmp_path / "exp2"
    shutil.copytree(exp / "exp", other, symlinks=True)
    weights = next(other.glob("checkpoints/step_000004/model/trainable.safetensors"))
    save_file({k: -3 * v for k, v in load_file(weights).items()}, weights)
    out = partial(tmp_path / "a")
    assert tasu_decode(other, exp / "test.jsonl", out) == 1
    err = capsys.readouterr().err
    assert "holds hypotheses decoded with other settings (another model: weights_sha256 '" in err
    assert len(read_trn(out / "hyp.trn")) == 3

    records = [json.loads(line) for line in (exp / "test.jsonl").read_text().splitlines()]
    noisy = tmp_path / "noisy.jsonl"
    noisy.write_text("".join(json.dumps({**r, "path": records[-1 - i]["path"]}) + "\n" for i, r in enumerate(records)))
    assert tasu_decode(exp / "exp", noisy, out) == 1
    assert "(other records under 3 of the keys decoded (e.g. t" in \
        capsys.readouterr().err

    corrected = tmp_path / "corrected.jsonl"   # a reference corrected: the hypotheses stand, ref.trn is new
    corrected.write_text("".join(json.dumps({**r, "target": r["target"] + " x"}) + "\n" for r in records))
    assert tasu_decode(exp / "exp", corrected, out) == 0
    assert dict(read_trn(out / "hyp.trn")) == dict(read_trn(audio_decode / "hyp.trn"))
    assert read_trn(out / "ref.trn")[0][1].endswith(" x")

    older = partial(tmp_path / "older")   # a decode.json of a tasu before the digests: resumed, and said
    settings = json.loads((older / "decode.json").read_text())
    (older / "decode.json").write_text(json.dumps({k: v for k, v in settings.items() if k not in ("model", "records")}))
    assert tasu_decode(exp / "exp", exp / "test.jsonl", older) == 0
    said = capsys.readouterr().err + caplog.text
    assert "was written by an older tasu, without the model's and the records' digests" in said
    assert dict(read_trn(older / "hyp.trn")) == dict(read_trn(audio_decode / "hyp.trn"))


def test_utterances_that_keep_no_posterior_row_are_counted_in_the_report(exp, tmp_path, capsys):
    """Their hypotheses come from the prompt alone (the LLM writes some sentence): said, not hidden."""
    one = tmp_path / "one.jsonl"
    one.write_text((exp / "test.jsonl").read_text().splitlines()[0] + "\n")
    assert tasu_decode(exp / "exp", one, tmp_path / "out", "--set", "compress.threshold=1e-9") == 0
    assert ("no speech: 1 utterances kept no posterior row after compression; their hypotheses come from the "
            "prompt alone") in capsys.readouterr().out
    assert tasu_decode(exp / "exp", one, tmp_path / "out2") == 0
    assert "no speech" not in capsys.readouterr().out


def test_decode_options_are_not_abbreviated(exp, tmp_path, capsys):
    """The recipe refuses --input in --decode_args; --inp got past it and decoded the transcripts."""
    with pytest.raises(SystemExit):
        tasu_decode(exp / "exp", exp / "test.jsonl", tmp_path / "out", "--inp", "simulated")
    assert "unrecognized arguments: --inp simulated" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_config_error_of_several_lines_is_one(exp, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(exp / "exp" / "checkpoints" / "step_000004", ckpt)
    (ckpt / "model" / "config.yaml").write_text("encoder: [unclosed\n")
    assert tasu_decode(ckpt, exp / "test.jsonl", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "config.yaml: not valid YAML" in err, err


def test_a_seed_is_refused_where_nothing_is_drawn():
    """--seed with audio or posteriors input was taken and ignored (a decode config's 'seed: 3' too)."""
    from tasu.decode import DecodeError, DecodeOptions

    assert DecodeOptions(input="simulated", seed=3).seed == 3
    for source in ("audio", "posteriors"):
        with pytest.raises(DecodeError, match=f"^seed 3 chooses a draw of simulated input .*; {source} input has "
                                              "nothing random to seed$"):
            DecodeOptions(input=source, seed=3)


def test_trn_lines_hold_one_utterance():
    assert trn_line("k", " two\nlines\tand  tabs ") == "k\ttwo lines and tabs\n"
    assert trn_line("k", "") == "k\t\n"


def test_a_shell_pipe_path_is_refused_unless_allowed(exp, tmp_path, capsys):
    marker = tmp_path / "ran"
    wav = exp / "wav" / "t0.wav"
    data = tmp_path / "pipe.jsonl"
    data.write_text(json.dumps({"key": "p", "task": "ASR", "target": "x", "path": f"touch {marker}; cat {wav} |"}) + "\n")
    assert tasu_decode(exp / "exp", data, tmp_path / "refused") == 1
    assert f"{data}:1: path: 'touch {marker}; cat {wav} |' is a shell command" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "refused" / "hyp.trn").exists()
    assert run_decode(str(exp / "exp"), str(data), str(tmp_path / "allowed"), **FAST, allow_pipes=True) == 0
    assert marker.exists() and [k for k, _ in read_trn(tmp_path / "allowed" / "hyp.trn")] == ["p"]


def test_a_failed_decode_leaves_no_hypothesis_file_and_score_refuses_an_empty_one(exp, tmp_path, capsys):
    # The command reads fine while the records are measured, then fails when the audio is read.
    once = tmp_path / "once"
    wav = exp / "wav" / "t0.wav"
    data = tmp_path / "flaky.jsonl"
    data.write_text(json.dumps({"key": "f", "task": "ASR", "target": "x",
                                "path": f"test -e {once} && exit 3; touch {once}; cat {wav} |"}) + "\n")
    out = tmp_path / "out"
    assert tasu_decode(exp / "exp", data, out, "--allow-pipes") == 1
    assert "command failed (exit status 3)" in capsys.readouterr().err
    assert (out / "ref.trn").exists() and not (out / "hyp.trn").exists()
    assert tasu_decode(exp / "exp", data, out / "ref.trn", "--allow-pipes") == 1   # --out a file
    assert capsys.readouterr().err == (f"tasu decode: error: {out / 'ref.trn'}: a file, not a directory: tasu decode "
                                       "writes into a directory\n")

    (out / "hyp.trn").write_text("")  # what a failed decode used to leave
    rc = tasu_main(["score", "--ref", str(out / "ref.trn"), "--hyp", str(out / "hyp.trn"), "--metric", "wer"])
    assert rc == 1 and f"{out / 'hyp.trn'}: no hypotheses" in capsys.readouterr().err
    assert not (out / "score.json").exists()
    assert decoded_keys(out / "hyp.trn") == (set(), 0)
    keep_complete_lines(out / "hyp.trn", 0)
    assert not (out / "hyp.trn").exists()


def test_a_full_disk_is_named_and_leaves_no_empty_hypothesis_file(exp, tmp_path, capsys, monkeypatch):
    """ENOSPC at the first hypothesis was 'No space left on device' naming no file, and left hyp.trn empty."""
    from tasu import decode

    class Full:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def close(self):
            pass

    def opened(path, mode="r", **kwargs):   # the file is created; nothing reaches it
        f = open(path, mode, **kwargs)
        if str(path).endswith("hyp.trn"):
            f.close()
            return Full()
        return f

    monkeypatch.setattr(decode, "open", opened, raising=False)
    out = tmp_path / "out"
    assert tasu_decode(exp / "exp", exp / "test.jsonl", out) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f"tasu decode: error: {out / 'hyp.trn'}: cannot write (No space left on device); run the same command again")
    assert not (out / "hyp.trn").exists()


def test_a_second_decode_into_one_out_dir_is_refused_with_the_first_ones_pid(exp, tmp_path, capsys):
    out = tmp_path / "out"
    with lock_held_elsewhere(out, "tasu decode") as pid:
        assert tasu_decode(exp / "exp", exp / "test.jsonl", out) == 1
    assert f"{out} is in use: tasu decode by pid {pid} on " in capsys.readouterr().err
    assert not (out / "hyp.trn").exists() and not (out / "ref.trn").exists()


def test_an_out_dir_inside_the_experiment_s_checkpoints_is_refused(exp, tmp_path, capsys):
    """Training replaces and removes checkpoints: hypotheses written into one would go with it, and
    a decode's files in checkpoints/ would sit among the models."""
    ckpts = exp / "exp" / "checkpoints"
    last = (ckpts / "last").read_text().strip()   # the run never validated: best is its last
    for out in (ckpts / last / "model", ckpts / "decode"):
        assert tasu_decode(exp / "exp", exp / "test.jsonl", out) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"tasu decode: error: --out {out} is inside ") and len(err.splitlines()) == 1, err
        assert not (out / "hyp.trn").exists() and not (ckpts / "decode").exists()


def test_a_model_that_does_not_fit_its_checkpoint_is_one_line(exp, tmp_path, capsys):
    no_tokenizer = save_llm_without_tokenizer(exp / "llm", tmp_path / "llm")
    (tmp_path / "empty").mkdir()
    cases = {"projector.options.hidden=16": "the trained weights do not fit the model its config builds",
             f"llm.path={no_tokenizer}": "the LLM tokenizer is empty",
             f"llm.path={tmp_path / 'empty'}": f"llm.path {tmp_path / 'empty'}: not a Hugging Face causal LM's "
                                               f"directory ({tmp_path / 'empty' / 'config.json'} is missing"}
    for override, message in cases.items():
        rc = tasu_main(["decode", "--exp", str(exp / "exp"), "--data", str(exp / "test.jsonl"), "--out",
                        str(tmp_path / "out"), "--input", "simulated", "--beam", "1", "--set", override])
        err = capsys.readouterr().err
        assert rc == 1 and "Traceback" not in err, err
        errors = [line for line in err.splitlines() if "error" in line]  # (transformers' progress bars aside)
        assert len(errors) == 1 and errors[0].startswith("tasu decode: error: ") and message in errors[0], err
        assert not (tmp_path / "out" / "hyp.trn").exists()


def test_unlabelled_audio_is_decoded_and_only_labelled_records_are_referenced(exp, tmp_path, capsys):
    records = [json.loads(line) for line in (exp / "test.jsonl").read_text().splitlines()][:3]
    del records[0]["target"]
    records[1]["target"] = ""
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert run_decode(str(exp / "exp"), str(tmp_path / "mixed.jsonl"), str(tmp_path / "mixed"), **FAST) == 0
    assert "unlabelled: 2 records have no target" in capsys.readouterr().out
    assert sorted(k for k, _ in read_trn(tmp_path / "mixed" / "hyp.trn")) == sorted(r["key"] for r in records)
    assert read_trn(tmp_path / "mixed" / "ref.trn") == [(records[2]["key"], records[2]["target"])]

    (tmp_path / "none.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:2]), encoding="utf-8")
    assert run_decode(str(exp / "exp"), str(tmp_path / "none.jsonl"), str(tmp_path / "none"), **FAST) == 0
    assert not (tmp_path / "none" / "ref.trn").exists() and (tmp_path / "none" / "hyp.trn").exists()
    # simulation needs a transcript: an unlabelled ASR record has none
    rc = tasu_decode(exp / "exp", tmp_path / "none.jsonl", tmp_path / "sim", "--input", "simulated")
    assert rc == 1 and "GT: missing" in capsys.readouterr().err


def test_running_out_of_memory_names_the_longest_record_and_what_to_do(exp, tmp_path, capsys, monkeypatch):
    """A 25-minute recording ended in torch's "[enforce fail at alloc_cpu.cpp:127] ... can't allocate
    memory: you tried to allocate 5001600128 bytes", naming no record."""
    from tasu.model import SpeechLLM

    def too_big(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 5001600128 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(SpeechLLM, "encode_audio", too_big)
    assert tasu_decode(exp / "exp", exp / "test.jsonl", tmp_path / "out") == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert re.match(r"tasu decode: error: out of memory decoding a batch of \d+, the longest \S+ \(\d+ s of audio\): "
                    r"lower --batch-size, or cut long recordings into segments", err), err


def test_an_encoder_of_another_vocabulary_of_the_same_size_is_refused(exp, tmp_path, capsys):
    """The projector reads the ids of the vocabulary it was trained on: another BPE of the same size
    (--set encoder.path=..., or the model replaced in place) loaded, and decoded nonsense with exit 0."""
    import sentencepiece as spm

    from fixtures import SENSEVOICE_BPE

    other = tmp_path / "enc"
    shutil.copytree(exp / "enc", other)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([s[::-1] for s in SENTENCES]), model_prefix=str(tmp_path / "bpe"), vocab_size=60,
        model_type="bpe", character_coverage=1.0, minloglevel=2)
    (tmp_path / "bpe.model").replace(other / SENSEVOICE_BPE)
    assert tasu_decode(exp / "exp", exp / "test.jsonl", tmp_path / "out", "--input", "simulated",
                       "--set", f"encoder.path={other}") == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("tasu decode: error: ") and "was trained on the ids of another encoder vocabulary than " \
        f"encoder.path {other}'s (60 pieces" in err, err
    assert tasu_decode(exp / "exp", exp / "test.jsonl", tmp_path / "same", "--input", "simulated") == 0
