"""The Python API (tasu.Speech2Text): files and arrays, n-best, agreement with tasu decode, the README example."""
import dataclasses
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fixtures import SENTENCES, save_tiny_llm, waveform, write_sensevoice_dir

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    """A tiny experiment (LoRA on the LLM) trained for 4 text-only steps, and two recordings."""
    root = tmp_path_factory.mktemp("api")
    save_tiny_llm(root / "llm")
    write_sensevoice_dir(root / "enc")
    with open(root / "train.jsonl", "w", encoding="utf-8") as f:
        for i in range(16):
            f.write(json.dumps({"key": f"tr{i}", "task": "ASR", "target": SENTENCES[i % len(SENTENCES)]}) + "\n")
    for i in range(2):
        sf.write(root / f"rec{i}.wav", waveform(0.8 + 0.2 * i, seed=i).numpy(), 16000)
    (root / "train.yaml").write_text(f"""
encoder: {{path: {root}/enc}}
llm: {{path: {root}/llm, lora: {{r: 2, alpha: 4.0}}}}
projector: {{name: linear-silu, options: {{hidden: 32}}}}
data: {{train: [{root}/train.jsonl], max_tokens: 400, num_workers: 0}}
optim: {{lr: 1.0e-3, warmup_steps: 2, total_steps: 4}}
engine: {{device: cpu}}
train: {{epochs: 1, max_steps: 4, log_interval: 2, save_interval: 4}}
""", encoding="utf-8")
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([str(BIN / "tasu"), "train", "--config", str(root / "train.yaml"), "--exp-dir",
                          str(root / "exp")], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # the log says what the simulation did to the text: its token error rate, every log interval
    assert re.search(r"step 2 epoch 0: .*simulated_ter [0-9.e-]+", (root / "exp" / "train.log").read_text())
    return root


@pytest.fixture(scope="module")
def s2t(exp):
    from tasu import Speech2Text

    return Speech2Text.from_pretrained(exp / "exp", beam=3, max_new_tokens=8)


def test_a_file_and_the_same_samples_as_an_array_give_what_tasu_decode_gives(exp, s2t):
    from tasu.data.records import Record
    from tasu.decode import DecodeOptions, decode_records

    text = s2t(exp / "rec0.wav")
    assert isinstance(text, str)
    samples, rate = sf.read(exp / "rec0.wav", dtype="float32")
    assert s2t(samples, sample_rate=rate) == text
    stereo_8k = np.stack([samples[::2], samples[::2]], axis=1)   # another rate, two channels: converted
    assert isinstance(s2t(stereo_8k, sample_rate=8000), str)
    record = Record("rec0", "ASR", "x", path=str(exp / "rec0.wav"))
    options = DecodeOptions(beam=3, max_new_tokens=8)
    assert dict(decode_records(s2t.model, s2t.cfg, s2t.prompts, [record], options)) == {"rec0": text}
    assert s2t.batch([exp / "rec0.wav", exp / "rec1.wav"])[0] == text
    assert s2t(torch.from_numpy(samples).bfloat16(), sample_rate=rate) == s2t(
        torch.from_numpy(samples).bfloat16().float(), sample_rate=rate)   # numpy has no bfloat16: widened
    assert s2t.batch([]) == []


def test_nbest_gives_ranked_hypotheses_with_scores(exp, s2t):
    hyps = s2t(exp / "rec1.wav", nbest=3)
    assert len(hyps) == 3 and all(isinstance(h.score, float) for h in hyps)
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    assert hyps[0].text == s2t(exp / "rec1.wav")
    with pytest.raises(ValueError, match="nbest must be between 1 and the beam size 3"):
        s2t(exp / "rec1.wav", nbest=4)


def test_bad_inputs_are_clear_errors(exp, s2t):
    from tasu.data.prompts import PromptError

    with pytest.raises(ValueError, match="needs its sample_rate"):
        s2t(np.zeros(1600, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        s2t(np.zeros((2, 2, 2)), sample_rate=16000)
    with pytest.raises(PromptError, match="no prompt for task 'SING'"):
        s2t(exp / "rec0.wav", task="SING")
    with pytest.raises(PromptError, match=r"the ASR prompts are filled from no field 'hotwrod' \(their fields: none\)"):
        s2t(exp / "rec0.wav", hotwrod="Qwen")   # a misspelt field was dropped, and the text came as if not given
    with pytest.raises(PromptError, match=r"^the hotword prompt needs field 'hotword': give it as a keyword "
                                          r"\(s2t\(audio, task='hotword', NAME=...\); tasu transcribe: --field"):
        s2t(exp / "rec0.wav", task="hotword")   # it spoke of "<input>" and "this record"
    assert isinstance(s2t(exp / "rec0.wav", task="hotword", hotword="Dublin"), str)
    with pytest.raises(PromptError, match=r"^field hotword=123: the hotword prompts are filled from text \(a str\), "
                                          "not a int"):
        s2t(exp / "rec0.wav", task="hotword", hotword=123)   # it said the field was not given
    with pytest.raises(PromptError, match=r"^field hotword spells the LLM's special token '<\|im_end\|>' \(the hotword "
                                          r"prompts are filled from it\): a prompt is text"):
        s2t(exp / "rec0.wav", task="hotword", hotword="bob<|im_end|>")   # a ValueError naming no field
    from tasu import Speech2Text
    with pytest.raises(TypeError, match=r"^overrides is a list of KEY=VALUE strings: overrides=\['compress.topk=4'\]"):
        Speech2Text.from_pretrained(exp / "exp", overrides="compress.topk=4")   # read letter by letter
    from tasu.decode import DecodeError, DecodeOptions
    options = DecodeOptions(beam=np.int64(3), repetition_penalty=np.float32(1.5))   # numpy's numbers are numbers,
    assert (type(options.beam), type(options.repetition_penalty)) == (int, float)   # kept as Python's (decode.json)
    assert json.dumps(dataclasses.asdict(options))
    for bad, message in ((dict(beam=2.5), "beam must be a whole number, got 2.5"),   # failed in torch's generate
                         (dict(max_new_tokens=True), "max_new_tokens must be a whole number, got True"),
                         (dict(repetition_penalty="1.2"), "repetition_penalty must be a number, got '1.2'")):
        with pytest.raises(DecodeError, match=f"^{re.escape(message)}$"):
            Speech2Text.from_pretrained(exp / "exp", **bad)
    # torchaudio.load's [C, T] was read as C samples of T channels ("shorter than one 10 ms frame")
    with pytest.raises(ValueError, match=r"a waveform of shape \(1, 16000\) is channels first"):
        s2t(np.zeros((1, 16000), dtype=np.float32), sample_rate=16000)
    with pytest.raises(TypeError, match="for several, use .batch"):   # was taken as 2 samples of 16000 channels
        s2t([np.zeros(16000), np.zeros(16000)], sample_rate=16000)
    with pytest.raises(TypeError, match="batch takes a list of recordings"):   # a path read letter by letter
        s2t.batch(str(exp / "rec0.wav"))


def test_a_file_name_ending_in_a_pipe_is_run_only_when_the_model_was_loaded_to_allow_it(exp, s2t, tmp_path):
    from tasu import Speech2Text
    from tasu.data.audio import AudioError

    ran = tmp_path / "ran"
    command = f"touch {ran} |"   # a name a folder listing can hold: read as a file name, the shell would run it
    refused = re.escape(f"{command}: a shell command (it ends in '|'), not run unless asked")
    with pytest.raises(AudioError, match=refused):
        s2t(command)
    with pytest.raises(AudioError, match=refused):
        s2t.batch([exp / "rec0.wav", command])
    assert not ran.exists()
    trusting = Speech2Text.from_pretrained(exp / "exp", allow_pipes=True, beam=3, max_new_tokens=8)
    with pytest.raises(AudioError, match="command wrote no audio"):
        trusting(command)
    assert ran.exists()
    assert trusting(f"cat {exp / 'rec0.wav'} |") == s2t(exp / "rec0.wav")


@pytest.mark.parametrize("rate,channels", [(16000, 1), (8000, 2)])
def test_an_int16_array_gives_the_samples_of_the_wav_file_it_was_read_from(tmp_path, rate, channels):
    from scipy.io import wavfile

    from tasu import api

    pcm = np.random.default_rng(0).integers(-20000, 20000, size=(rate // 2, channels), dtype=np.int16)
    wavfile.write(tmp_path / "a.wav", rate, pcm if channels > 1 else pcm[:, 0])
    read_rate, samples = wavfile.read(tmp_path / "a.wav")   # int16, as scipy gives a PCM file
    assert samples.dtype == np.int16 and read_rate == rate
    from_file = api.waveform(tmp_path / "a.wav")
    assert from_file.abs().max() < 1
    assert torch.equal(api.waveform(samples, sample_rate=rate), from_file)
    assert torch.equal(api.waveform(torch.from_numpy(samples), sample_rate=rate), from_file)


def test_an_array_shorter_than_a_frame_is_refused_as_a_file_would_be():
    from tasu import api
    from tasu.data.audio import AudioError

    with pytest.raises(AudioError, match=r"^array of shape \(100,\): 100 samples at 16000 Hz: shorter than one 10 ms"):
        api.waveform(np.zeros(100, dtype=np.float32), sample_rate=16000)


def test_the_readme_example_runs(exp, tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(from pathlib import Path\nfrom tasu import Speech2Text\n.*?)```", readme, re.S)
    assert block, "README.md has no Speech2Text example"
    (tmp_path / "exp").symlink_to(exp / "exp")
    (tmp_path / "recording.wav").symlink_to(exp / "rec0.wav")
    (tmp_path / "recordings").mkdir()
    for i in range(2):
        (tmp_path / "recordings" / f"r{i}.wav").symlink_to(exp / f"rec{i}.wav")
    code = block.group(1).replace("egs/mini/exp/tasu_train_text", "exp")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.findall(r"^r[01]\.wav", out.stdout, re.M) == ["r0.wav", "r1.wav"]   # the folder (a tiny model's
    # hypotheses are any tokens, line breaks included)


def test_an_export_decodes_as_the_experiment_does_wherever_it_is_moved(exp, s2t, tmp_path, monkeypatch):
    from tasu import Speech2Text
    from tasu.export import export
    from tasu.model_io import checkpoint_step, resolve_checkpoint

    out = export(exp / "exp", tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == ["encoder", "llm", "model"]
    assert not list(tmp_path.glob(".*partial"))
    config = (out / "model" / "config.yaml").read_text()
    assert "path: llm" in config and "path: encoder" in config and "lora: null" in config
    assert str(exp) not in config   # the training data's paths named files of the machine it was trained on
    umask = os.umask(0)
    os.umask(umask)
    for weights in (out / "llm" / "model.safetensors", out / "model" / "trainable.safetensors",
                    resolve_checkpoint(exp / "exp", "best") / "model" / "trainable.safetensors"):
        assert stat.S_IMODE(weights.stat().st_mode) == 0o666 & ~umask, weights   # not safetensors' 0600
    moved = out.rename(tmp_path / "moved")
    # the step its weights are of (decoding simulated input reads the WER schedule there) travels with it
    assert checkpoint_step(moved) == checkpoint_step(resolve_checkpoint(exp / "exp", "best")) > 0
    exported = Speech2Text.from_pretrained(moved, beam=3, max_new_tokens=8)
    assert not any("lora" in name for name, _ in exported.model.llm.named_parameters())   # merged into llm/
    for rec in ("rec0.wav", "rec1.wav"):
        assert exported(exp / rec) == s2t(exp / rec)
    with pytest.raises(FileExistsError, match="export writes a new directory"):
        export(exp / "exp", moved)

    # tasu decode read the export's `llm.path: llm` from the current directory, which may hold other models
    from tasu.cli import main
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "llm").mkdir(parents=True)
    (elsewhere / "encoder").mkdir()
    data = tmp_path / "recs.jsonl"
    data.write_text("".join(json.dumps({"key": rec, "task": "ASR", "target": "x", "path": str(exp / f"{rec}.wav")})
                            + "\n" for rec in ("rec0", "rec1")))
    monkeypatch.chdir(elsewhere)
    assert main(["decode", "--exp", str(moved), "--data", str(data), "--out", str(tmp_path / "dec"), "--beam", "3",
                 "--max-new-tokens", "8", "--device", "cpu"]) == 0
    hyps = dict(line.split("\t") for line in (tmp_path / "dec" / "hyp.trn").read_text().splitlines())
    assert hyps == {rec: " ".join(s2t(exp / f"{rec}.wav").split()) for rec in ("rec0", "rec1")}


def test_an_encoder_directory_whose_links_loop_is_one_line_and_leaves_nothing(exp, tmp_path):
    """copytree follows a link to '..' until Python's recursion limit, and names no link."""
    from tasu.export import export
    from tasu.model_io import read_model_config, resolve_checkpoint

    encoder = Path(read_model_config(resolve_checkpoint(exp / "exp")).encoder.path)
    loop = encoder / "up"
    loop.symlink_to("..")
    try:
        with pytest.raises(OSError, match=f"^encoder.path {re.escape(str(encoder))}: .*: export copies the encoder's"):
            export(exp / "exp", tmp_path / "exported")
    finally:
        loop.unlink()
    assert list(tmp_path.iterdir()) == []


def test_tasu_transcribe_prints_a_line_per_file_and_export_from_the_command_line(exp, s2t, tmp_path, capsys,
                                                                                monkeypatch):
    from tasu.cli import main

    files = [str(exp / "rec0.wav"), str(exp / "rec1.wav")]
    assert main(["transcribe", "--exp", str(exp / "exp"), "--beam", "3", "--max-new-tokens", "8", *files]) == 0
    def one_line(text):
        return " ".join(text.split())

    assert capsys.readouterr().out.split("\n") == [f"{f}\t{one_line(s2t(f))}" for f in files] + [""]
    assert main(["transcribe", "--exp", str(exp / "exp"), "--beam", "3", "--max-new-tokens", "8",
                 "--nbest", "2", files[0]]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.split("\n")[:-1]]
    assert [(f, rank) for f, rank, _, _ in lines] == [(files[0], "1"), (files[0], "2")]
    assert lines[0][3] == one_line(s2t(files[0]))
    with pytest.raises(SystemExit) as usage:   # a usage error, said before the model loads
        main(["transcribe", "--exp", str(tmp_path / "no_model_here"), "--beam", "2", "--nbest", "5", files[0]])
    assert usage.value.code == 2
    assert capsys.readouterr().err == ("tasu transcribe: error: --nbest 5 is more hypotheses than --beam 2 keeps: "
                                       "raise --beam to 5 or more (tasu transcribe --help lists the options)\n")
    assert main(["transcribe", "--exp", str(exp / "exp"), str(tmp_path / "none.wav")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tasu transcribe: error: ") and "none.wav" in err and len(err.splitlines()) == 1
    # a file name a shell glob picked up is not a command to run, unless asked
    monkeypatch.chdir(tmp_path)
    odd = tmp_path / "x; touch ran |"
    odd.write_bytes((exp / "rec0.wav").read_bytes())
    assert main(["transcribe", "--exp", str(exp / "exp"), files[0], str(odd)]) == 1
    assert capsys.readouterr().err == (f"tasu transcribe: error: {odd}: a shell command (it ends in '|'), not run "
                                       "unless asked: pass --allow-pipes to run the commands of data you trust\n")
    assert not (tmp_path / "ran").exists()
    assert main(["transcribe", "--exp", str(exp / "exp"), "--beam", "3", "--max-new-tokens", "8", "--allow-pipes",
                 f"cat {files[0]} |"]) == 0
    assert capsys.readouterr().out == f"cat {files[0]} |\t{one_line(s2t(files[0]))}\n"
    # a command is run as given: pathlib folded its '//' ("https://host" became "https:/host")
    command = f"[ $(printf %s a//b | wc -c) -eq 4 ] && cat {files[0]} |"
    assert main(["transcribe", "--exp", str(exp / "exp"), "--beam", "3", "--max-new-tokens", "8", "--allow-pipes",
                 command]) == 0
    assert capsys.readouterr().out == f"{command}\t{one_line(s2t(files[0]))}\n"
    # a file name holding a tab or a newline is quoted: one line per file, the name its first field
    named = [tmp_path / "tab\there.wav", tmp_path / "two\nlines.wav"]
    for name in named:
        name.write_bytes((exp / "rec0.wav").read_bytes())
    assert main(["transcribe", "--exp", str(exp / "exp"), "--beam", "3", "--max-new-tokens", "8",
                 *map(str, named)]) == 0
    assert capsys.readouterr().out == "".join(f"{str(n)!r}\t{one_line(s2t(files[0]))}\n" for n in named)

    # a task whose prompts take a field: it could not be given, and the error spoke of a record
    assert main(["transcribe", "--exp", str(exp / "exp"), "--beam", "3", "--max-new-tokens", "8", "--task", "hotword",
                 "--field", "hotword=Dublin", files[0]]) == 0
    assert capsys.readouterr().out == f"{files[0]}\t{one_line(s2t(files[0], task='hotword', hotword='Dublin'))}\n"
    with pytest.raises(SystemExit) as usage:
        main(["transcribe", "--exp", str(exp / "exp"), "--task", "hotword", "--field", "Dublin", files[0]])
    assert usage.value.code == 2 and capsys.readouterr().err.startswith(
        "tasu transcribe: error: --field Dublin: write NAME=VALUE, e.g. --field hotword=Dublin")
    for bad, message in (("hotword=", "write NAME=VALUE"), ("task=ASR", "task is no prompt field (--task names"),
                         ("nbest=2", "nbest is no prompt field")):   # a TypeError after the model had loaded
        with pytest.raises(SystemExit):
            main(["transcribe", "--exp", str(tmp_path / "no_model_here"), "--field", bad, files[0]])
        assert capsys.readouterr().err.startswith(f"tasu transcribe: error: --field {bad}: {message}")

    assert main(["export", "--exp", str(exp / "exp"), "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "llm" / "config.json").is_file()
    capsys.readouterr()
    inside = exp / "llm" / "copy"   # export copies llm.path: one line, not a ValueError to debug
    assert main(["export", "--exp", str(exp / "exp"), "--out", str(inside)]) == 1
    assert capsys.readouterr().err == (f"tasu export: error: {inside} is inside llm.path {exp / 'llm'}, which export "
                                       "copies: write it elsewhere\n")


def test_decoding_options_are_checked_before_the_model_loads(tmp_path):
    from tasu import Speech2Text
    from tasu.decode import DecodeError

    with pytest.raises(DecodeError, match="^beam must be at least 1, got 0$"):
        Speech2Text.from_pretrained(tmp_path / "no_model_here", beam=0)
    with pytest.raises(TypeError, match="^Speech2Text takes the decoding options beam, max_new_tokens, "
                                        "no_repeat_ngram_size, repetition_penalty, not batch_size$"):
        Speech2Text.from_pretrained(tmp_path / "no_model_here", batch_size=4)   # failed after the model loaded


def test_loading_exporting_and_decoding_leave_torch_s_random_stream_as_it_was(exp, tmp_path, capsys):
    """Building the model before its checkpoint's weights load drew from torch's global stream: a
    caller's own draws after Speech2Text.from_pretrained, tasu decode or tasu export came out other
    than without the call (no tasu output depended on it)."""
    from tasu import Speech2Text
    from tasu.cli import main

    (tmp_path / "test.jsonl").write_text(json.dumps({"key": "r0", "task": "ASR", "target": SENTENCES[0],
                                                     "path": str(exp / "rec0.wav")}) + "\n")
    calls = {
        "Speech2Text": lambda: Speech2Text.from_pretrained(exp / "exp", beam=2, max_new_tokens=4)(exp / "rec1.wav"),
        "decode": lambda: main(["decode", "--exp", str(exp / "exp"), "--data", str(tmp_path / "test.jsonl"),
                                "--out", str(tmp_path / "dec"), "--beam", "2", "--max-new-tokens", "4"]),
        "export": lambda: main(["export", "--exp", str(exp / "exp"), "--out", str(tmp_path / "model")]),
    }
    for name, call in calls.items():
        torch.manual_seed(123)
        before = torch.get_rng_state()
        result = call()
        assert name == "Speech2Text" or result == 0, capsys.readouterr().err[-2000:]
        assert torch.equal(torch.get_rng_state(), before), name
    capsys.readouterr()
