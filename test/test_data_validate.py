"""``tasu validate``: every kind of bad data reported as FILE:LINE: FIELD: message, exit status 1."""
import json
import os
import subprocess

import kaldiio
import numpy as np
import pytest
import soundfile

from tasu.cli import main


@pytest.fixture
def audio(tmp_path):
    """A 1 s wav, a truncated copy, and a wav-in-ark (0.5 s at 8 kHz)."""
    samples = np.zeros(16000, np.float32)
    soundfile.write(tmp_path / "good.wav", samples, 16000, subtype="PCM_16")
    data = (tmp_path / "good.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:1044])
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/a.ark,{tmp_path}/a.scp") as writer:
        writer["k"] = (8000, np.zeros(4000, np.int16))
    ark_entry = (tmp_path / "a.scp").read_text().split()[1]
    return {"good": str(tmp_path / "good.wav"), "cut": str(tmp_path / "cut.wav"),
            "missing": str(tmp_path / "missing.wav"), "ark": ark_entry,
            "past_end": f"{tmp_path}/a.ark:{os.path.getsize(tmp_path / 'a.ark') + 5}"}


def line(key, task="ASR", target="some words", **fields):
    return json.dumps({"key": key, "task": task, "target": target, **fields})


def run(capsys, *argv):
    status = main(["validate", *argv])
    return status, capsys.readouterr().out.splitlines()


def test_good_files_pass_with_a_summary_bom_and_crlf_included(tmp_path, audio, capsys):
    path = tmp_path / "good.jsonl"
    lines = [line("u1", path=audio["good"]), "",
             line("u2", "EN2DE", "Hallo", path=audio["ark"], GT="hello"),
             line("u3", "SLU_scenario", "iot", path=audio["good"], start=0.5),
             line("u4", "QA", "Paris")]
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode())
    assert run(capsys, str(path)) == (0, [
        "validate: ok: 1 file, 4 good records (ASR 1, EN2DE 1, QA 1, SLU_scenario 1); "
        "2 records without a transcript (no GT), which the text-only stage cannot use"])
    assert run(capsys, str(path), "--check-audio") == (0, [
        "validate: ok: 1 file, 4 good records (ASR 1, EN2DE 1, QA 1, SLU_scenario 1), 2.0 s of audio; "
        "2 records without a transcript (no GT), which the text-only stage cannot use"])


def test_every_problem_named_by_file_line_and_field(tmp_path, audio, capsys):
    path = tmp_path / "train.jsonl"
    good = line("u1", path=audio["good"])
    path.write_bytes("\n".join([
        good,                                                   # 1
        '{"key": "u2", "task": "ASR", "target": "x",}',         # 2 malformed JSON
        line("u1", path=audio["good"]),                         # 3 duplicate key
        json.dumps({"key": "u4", "task": "ASR"}),               # 4 missing field
        line("u5", path=audio["missing"]),                      # 5 missing audio
        line("u6", path=audio["cut"]),                          # 6 truncated audio
        line("u7", path=audio["past_end"]),                     # 7 ark offset past the end
        line("u8", "ASRX"),                                     # 8 unknown task
        line("u9", path=audio["good"], start=0.5, end=3.0),     # 9 segment past the end
        line("u10", path=audio["ark"]),                         # 10 good
    ]).encode() + b'\n{"key": "u11", "task": "ASR", "target": "na\xefve"}\n'  # 11 not UTF-8
                     + line("u12", path=audio["good"], start=0.5, end=0.505).encode() + b"\n")  # 12 5 ms: no speech
    ark_size = os.path.getsize(tmp_path / "a.ark")
    status, out = run(capsys, str(path), "--check-audio")
    assert status == 1
    assert out[:8] == [
        f"{path}:2: json: Expecting property name enclosed in double quotes (column 44)",
        f"{path}:3: key: duplicate key 'u1' (first on line 1)",
        f"{path}:4: target: missing",
        f"{path}:5: path: no such file ({audio['missing']})",
        f"{path}:6: path: truncated: the WAV header announces 32000 bytes of samples, 1000 follow it ({audio['cut']})",
        f"{path}:7: path: offset {ark_size + 5} is past the end of the ark ({ark_size} bytes) ({audio['past_end']})",
        f"{path}:8: task: unknown task 'ASRX': the prompt set has ASR, EN2DE, EN2ZH, QA, SLU_action, "
        "SLU_scenario, ZH2EN, hotword, prevtext, sentiment (another task needs its prompts in a prompts file: "
        "--prompts, data.prompts)",
        f"{path}:9: path: segment end 3.000 s is past the end of the audio (1.000 s) ({audio['good']})",
    ]
    assert out[8:] == [
        f"{path}:11: encoding: byte 0xef at column 44 is not valid UTF-8",
        f"{path}:12: path: 80 samples at 16000 Hz: shorter than one 10 ms frame, no speech fits in it "
        f"({audio['good']})",
        "validate: 10 problems; 1 file, 2 good records (ASR 2), 1.5 s of audio",
    ]

    # Without --check-audio the audio problems are not looked for.
    status, out = run(capsys, str(path))
    assert status == 1 and len(out) == 6 and out[-1].startswith("validate: 5 problems; 1 file, 7 good records (ASR 7)")


def test_read_audio_finds_what_headers_cannot_show(tmp_path, audio, capsys):
    """A FLAC damaged inside, NaN samples, int16 values stored as floats: whole headers, so they passed
    --check-audio, and a training stopped on them at the step that drew them."""
    noise = (np.random.default_rng(0).standard_normal(32000) * 0.1).astype(np.float32)
    soundfile.write(tmp_path / "damaged.flac", noise, 16000)
    damaged = bytearray((tmp_path / "damaged.flac").read_bytes())
    middle = len(damaged) // 2
    damaged[middle:middle + 2000] = bytes(b ^ 0xFF for b in damaged[middle:middle + 2000])
    (tmp_path / "damaged.flac").write_bytes(damaged)
    nan = noise.copy()
    nan[100] = np.nan
    soundfile.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    soundfile.write(tmp_path / "int16.wav", noise * 32768, 16000, subtype="FLOAT")
    path = tmp_path / "d.jsonl"
    path.write_text("".join(line(f"u{i}", path=str(tmp_path / name)) + "\n"
                            for i, name in enumerate(["damaged.flac", "nan.wav", "int16.wav", "good.wav"])))
    assert run(capsys, str(path), "--check-audio") == (
        0, ["validate: ok: 1 file, 4 good records (ASR 4), 7.0 s of audio"])
    status, out = run(capsys, str(path), "--read-audio")
    assert status == 1
    assert out[0].startswith(f"{path}:1: path: truncated or corrupt: reading samples 0 to 32000 failed (")
    assert out[1:] == [
        f"{path}:2: path: 1 samples are not finite numbers (NaN or infinite) ({tmp_path / 'nan.wav'})",
        f"{path}:3: path: float samples reach {abs(noise * 32768).max():.6g}, and float audio lies in [-1, 1]: "
        f"int16 values stored as floats? Divide them by 32768, or give int16 PCM ({tmp_path / 'int16.wav'})",
        "validate: 3 problems; 1 file, 1 good record (ASR 1), 1.0 s of audio"]


def test_unlabelled_records_pass_as_tasu_decode_reads_them(tmp_path, audio, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"key": "u1", "task": "ASR", "path": audio["good"]}) + "\n"
                    + line("u2", target="", path=audio["good"]) + "\n" + line("u3", path=audio["good"]) + "\n"
                    + json.dumps({"key": "u4", "task": "ASR", "target": " "}) + "\n")
    assert run(capsys, str(path), "--check-audio") == (1, [
        f"{path}:1: target: missing", f"{path}:2: target: empty", f"{path}:4: target: blank (whitespace only)",
        "validate: 3 problems; 1 file, 1 good record (ASR 1), 1.0 s of audio"])
    assert run(capsys, str(path), "--check-audio", "--unlabelled") == (1, [
        f"{path}:4: target: blank (whitespace only)",
        "validate: 1 problem; 1 file, 3 good records (ASR 3), 3.0 s of audio; "
        "2 records without a target (decoded, not scored)"])


def test_a_problem_of_every_record_is_printed_once_and_counted(tmp_path, capsys):
    """A task missing from the prompt set makes every record of a corpus bad: one line and a count,
    not a line per record; and a file prints at most SHOWN_PER_FILE problems of different kinds."""
    from tasu.data.validate import SHOWN_PER_FILE

    intents = tmp_path / "SLU_intent.jsonl"
    intents.write_text("".join(line(f"u{i}", "SLU_intent", "set") + "\n" for i in range(30)))
    asr = tmp_path / "ASR.jsonl"
    asr.write_text(line("a", "SLU_intent") + "\n" + line("b") + "\n")
    status, out = run(capsys, str(intents), str(asr))
    assert status == 1 and len(out) == 4, out
    assert out[0].startswith(f"{intents}:1: task: unknown task 'SLU_intent': the prompt set has ASR, ")
    assert out[1] == f"{intents}: 29 more lines with the problem of line 1"
    assert out[2].startswith(f"{asr}:1: task: unknown task 'SLU_intent'")   # each file shows its own
    assert out[3] == "validate: 31 problems; 2 files, 1 good record (ASR 1)"

    keys = tmp_path / "keys.jsonl"   # a key repeated: another message each time
    keys.write_text("".join(line(f"k{i % 25}") + "\n" for i in range(50)))
    status, out = run(capsys, str(keys))
    assert status == 1 and len(out) == SHOWN_PER_FILE + 2
    assert out[0] == f"{keys}:26: key: duplicate key 'k0' (first on line 1)"
    assert out[-2] == (f"{keys}: {25 - SHOWN_PER_FILE} more problems not shown "
                       f"(the first {SHOWN_PER_FILE} different ones are)")
    assert out[-1] == "validate: 25 problems; 1 file, 25 good records (ASR 25)"


def test_prompt_set_option_and_files_that_cannot_be_read(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"task": "ASRX", "prompt": "Transcribe."}\n')
    data = tmp_path / "d.jsonl"
    data.write_text(line("u1", "ASRX") + "\n")
    assert run(capsys, str(data), "--prompts", str(prompts)) == (
        0, ["validate: ok: 1 file, 1 good record (ASRX 1); 1 record without a transcript (no GT), "
            "which the text-only stage cannot use"])
    assert run(capsys, str(tmp_path / "nope.jsonl"), str(data), "--prompts", str(prompts)) == (1, [
        f"{tmp_path / 'nope.jsonl'}: cannot open: No such file or directory",
        "validate: 1 problem; 2 files, 1 good record (ASRX 1); 1 record without a transcript (no GT), "
        "which the text-only stage cannot use"])
    assert run(capsys, str(tmp_path / "nope.jsonl")) == (1, [
        f"{tmp_path / 'nope.jsonl'}: cannot open: No such file or directory",
        "validate: 1 problem; 1 file, 0 good records"])
    prompts.write_text("{\n")
    assert run(capsys, str(data), "--prompts", str(prompts)) == (
        1, [f"{prompts}:1: json: Expecting property name enclosed in double quotes (column 3)"])


def test_console_script(tmp_path, audio):
    path = tmp_path / "d.jsonl"
    path.write_text(line("u1", path=audio["good"]) + "\n" + line("u1") + "\n")
    out = subprocess.run(["tasu", "validate", str(path), "--check-audio"], capture_output=True, text=True)
    assert (out.returncode, out.stderr) == (1, "")
    assert out.stdout.splitlines() == [f"{path}:2: key: duplicate key 'u1' (first on line 1)",
                                       "validate: 1 problem; 1 file, 1 good record (ASR 1), 1.0 s of audio"]


def test_a_whitespace_only_target_is_not_a_good_record(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text(line("u1", target="   ") + "\n" + line("u2", "EN2DE", "Hallo", GT=" \t") + "\n")
    assert run(capsys, str(path)) == (1, [f"{path}:1: target: blank (whitespace only)",
                                          f"{path}:2: GT: blank (whitespace only)",
                                          "validate: 2 problems; 1 file, 0 good records"])


def test_a_shell_pipe_path_is_refused_unless_allowed(tmp_path, audio, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "d.jsonl"
    command = f"touch {marker}; cat {audio['good']} |"
    path.write_text(line("u1", path=command) + "\n")
    status, out = run(capsys, str(path), "--check-audio")
    assert status == 1 and not marker.exists()
    assert out[0] == (f"{path}:1: path: {command!r} is a shell command (it ends in '|'), not run unless asked: "
                      "pass --allow-pipes to run the commands of data you trust")
    assert run(capsys, str(path)) == (0, ["validate: ok: 1 file, 1 good record (ASR 1)"])  # not read: not run
    assert run(capsys, str(path), "--check-audio", "--allow-pipes") == (
        0, ["validate: ok: 1 file, 1 good record (ASR 1), 1.0 s of audio"])
    assert marker.exists()


def test_a_file_without_records_is_a_problem(tmp_path, capsys):
    empty, blank, good = tmp_path / "empty.jsonl", tmp_path / "blank.jsonl", tmp_path / "good.jsonl"
    empty.write_text("")
    blank.write_text("\n   \n\r\n")
    good.write_text(line("u1") + "\n")
    assert run(capsys, str(empty), str(blank), str(good)) == (1, [
        f"{empty}: no records (the file is empty or holds blank lines only)",
        f"{blank}: no records (the file is empty or holds blank lines only)",
        "validate: 2 problems; 3 files, 1 good record (ASR 1)"])
