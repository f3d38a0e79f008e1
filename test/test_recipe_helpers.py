"""tasu.recipe: the stage script's merging and splitting of decode data, and its small conversions."""
import json
import os
import socket
import subprocess
import sys

import pytest

from tasu.recipe import decode_flags, free_port, main, merge, owner, pairs, split

# Keys of "test-ASR" start with "test-ASR-", the prefix of set "test", task "ASR".
PARTS = [("test", "ASR"), ("test-ASR", "ASR"), ("test-other", "ASR"), ("dev", "SLU")]


def write_jsonl(path, records, bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.write_text(("\ufeff" if bom else "") + text + "\n", encoding="utf-8")   # a blank line at the end


def test_merge_prefixes_keys_with_set_and_task(tmp_path):
    dump = tmp_path / "dump"
    write_jsonl(dump / "test" / "ASR.jsonl", [{"key": "u1", "task": "ASR", "target": "grüß"}], bom=True)
    write_jsonl(dump / "test-other" / "ASR.jsonl", [{"key": "u1", "task": "ASR"}, {"key": "u2", "task": "ASR"}])
    out = tmp_path / "decode" / "data.jsonl"
    assert merge(dump, out, [("test", "ASR"), ("test-other", "ASR")]) == 3
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["key"] for r in records] == ["test-ASR-u1", "test-other-ASR-u1", "test-other-ASR-u2"]
    assert records[0] == {"key": "test-ASR-u1", "task": "ASR", "target": "grüß"}
    assert "grüß" in out.read_text(encoding="utf-8")   # not escaped


def test_a_line_belongs_to_the_longest_prefix():
    assert owner("test-ASR-u1\thi\n", PARTS) == ("test", "ASR")
    assert owner("test-ASR-ASR-u1\thi\n", PARTS) == ("test-ASR", "ASR")
    assert owner("test-other-ASR-u1\t\n", PARTS) == ("test-other", "ASR")
    assert owner("dev-SLU-x\tplay\n", PARTS) == ("dev", "SLU")
    tie = [("test", "other-ASR"), ("test-other", "ASR")]   # both prefixes are "test-other-ASR-"
    assert owner("test-other-ASR-u1\t\n", tie) == ("test", "other-ASR")
    assert owner("test-other-ASR-u1\t\n", tie[::-1]) == ("test-other", "ASR")
    with pytest.raises(ValueError, match="no test set and task prefixes"):
        owner("eval-ASR-u1\thi\n", PARTS)


def test_split_sorts_the_jobs_lines_back_into_set_and_task(tmp_path):
    for job, hyp in ((1, "test-other-ASR-u2\tb\ntest-ASR-u1\ta\n"), (2, "test-other-ASR-u1\tc\n")):
        (tmp_path / f"output.{job}").mkdir()
        (tmp_path / f"output.{job}" / "hyp.trn").write_text(hyp, encoding="utf-8")
        (tmp_path / f"output.{job}" / "ref.trn").write_text(hyp.replace("\t", "\tref "), encoding="utf-8")
    split(tmp_path, 2, [("test", "ASR"), ("test-other", "ASR"), ("dev", "SLU")])
    assert (tmp_path / "test" / "ASR" / "hyp.trn").read_text() == "u1\ta\n"
    assert (tmp_path / "test-other" / "ASR" / "hyp.trn").read_text() == "u1\tc\nu2\tb\n"
    assert (tmp_path / "test-other" / "ASR" / "ref.trn").read_text() == "u1\tref c\nu2\tref b\n"
    assert (tmp_path / "dev" / "SLU" / "hyp.trn").read_text() == ""   # every part gets its files
    # a job of unlabelled records only has no ref.trn (tasu decode writes none): stage 5 stopped on it
    (tmp_path / "output.2" / "ref.trn").unlink()
    split(tmp_path, 2, [("test", "ASR"), ("test-other", "ASR"), ("dev", "SLU")])
    assert (tmp_path / "test-other" / "ASR" / "ref.trn").read_text() == "u2\tref b\n"
    assert (tmp_path / "test-other" / "ASR" / "hyp.trn").read_text() == "u1\tc\nu2\tb\n"
    (tmp_path / "output.2" / "hyp.trn").unlink()   # a job's hypotheses missing is still an error
    with pytest.raises(FileNotFoundError):
        split(tmp_path, 2, [("test", "ASR"), ("test-other", "ASR"), ("dev", "SLU")])


def test_pairs():
    assert pairs(["test", "ASR", "dev", "SLU"]) == [("test", "ASR"), ("dev", "SLU")]
    with pytest.raises(ValueError, match="odd number"):
        pairs(["test", "ASR", "dev"])


def test_decode_flags(tmp_path):
    conf = tmp_path / "decode.yaml"
    conf.write_text("beam: 4\nbatch_size: 8\nrepetition_penalty: 1.1\n")
    assert decode_flags(conf) == ["--beam", "4", "--batch-size", "8", "--repetition-penalty", "1.1"]
    conf.write_text("# nothing set\n")
    assert decode_flags(conf) == []


@pytest.mark.parametrize("text,error", [
    ('beam: "1 ; touch PWNED ;"\n', "beam: must be a number or one plain word, not '1 ; touch PWNED ;'"),
    ("beam: ';'\n", "beam: must be a number or one plain word, not ';'"),
    ("beam: 1 --out /elsewhere\n", "beam: must be a number or one plain word, not '1 --out /elsewhere'"),
    ("out: /elsewhere\n", "out: the stage script sets it (see tasu.sh --help), not a decode config"),
    ("input: simulated\n", "input: the stage script sets it"),
    ("beam: [1, 2]\n", "beam: must be a number or one plain word, not [1, 2]"),
    ("nbest: true\n", "nbest: must be a number or one plain word, not True"),
    ("batch_size: --out\n", "batch_size: '--out' would be read as an option, not a value"),
    ("1: 2\n", "1 is not an option name"),
    # tasu decode refused them only at the decode stage, after the training stages' hours
    ("beam_size: 4\n", "beam_size: --beam-size is not an option of tasu decode (tasu decode --help lists them)"),
    ("max_new_tokens: 0\n", "max_new_tokens: must be at least 1, got 0"),
    ("batch_size: eight\n", "batch_size: expected a whole number, got 'eight'"),
    ("repetition_penalty: 0\n", "repetition_penalty: repetition_penalty must be > 0 (1: off), got 0.0"),
])
def test_a_decode_config_gives_plain_options_or_stops(tmp_path, text, error):
    """The stage script splits the flags into words and the job runner keeps ';' and '|' as shell
    operators: a value with them ran a command in every decode job, one with an option in it
    replaced the script's own --out."""
    conf = tmp_path / "decode.yaml"
    conf.write_text(text)
    with pytest.raises(ValueError) as e:
        decode_flags(conf)
    assert str(e.value).startswith(f"{conf}: ") and error in str(e.value)


def test_the_decode_args_are_checked_with_the_decode_config(tmp_path):
    conf = tmp_path / "decode.yaml"
    conf.write_text("beam: 4\n")
    assert decode_flags(conf, "--max-new-tokens 8 --set llm.dtype=bfloat16") == ["--beam", "4"]
    for args, error in (("--beam 0", "argument --beam: must be at least 1, got 0"),
                        ("--beem 2", "unrecognized arguments: --beem 2")):
        with pytest.raises(ValueError) as e:
            decode_flags(conf, args)
        assert str(e.value) == f"--decode_args '{args}': {error}"


def test_a_helper_that_fails_says_so_in_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    """The stage script stops on a helper's failure: the user reads which file is wrong, no traceback."""
    monkeypatch.delenv("TASU_DEBUG", raising=False)
    (tmp_path / "list.yaml").write_text("- beam\n- 4\n")
    (tmp_path / "bad.yaml").write_text("beam: [\n")
    cases = {("decode-flags", f"{tmp_path}/list.yaml"): f"{tmp_path}/list.yaml: the top level must be a mapping",
             ("decode-flags", f"{tmp_path}/bad.yaml"): f"{tmp_path}/bad.yaml: not valid YAML: ",
             ("posterior-dir", "dump", f"{tmp_path}/gone.yaml"): f"{tmp_path}/gone.yaml: cannot read config: ",
             ("merge", str(tmp_path), "out.jsonl", "test", "ASR"): f"{tmp_path}/test/ASR.jsonl: No such file",
             ("merge", "dump", "out.jsonl", "test"): "ValueError: expected SET TASK pairs, got an odd number of "
                                                      "names: test (TASU_DEBUG=1 shows the traceback)"}
    for argv, message in cases.items():
        assert main(list(argv)) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"tasu.recipe {argv[0]}: error: {message}") and err.count("\n") == 1, err
    out = subprocess.run([sys.executable, "-m", "tasu.recipe", "decode-flags", f"{tmp_path}/list.yaml"],
                         capture_output=True, text=True, env={**os.environ, "TASU_DEBUG": "1"})
    assert out.returncode == 1 and "Traceback" in out.stderr   # asked for: the traceback


def test_command_line(tmp_path, capsys):
    (tmp_path / "d.yaml").write_text("beam: 1\nmax_new_tokens: 4\n")
    assert main(["decode-flags", str(tmp_path / "d.yaml")]) == 0
    assert capsys.readouterr().out == "--beam 1 --max-new-tokens 4\n"
    assert main(["decode-flags", str(tmp_path / "d.yaml"), "--decode-args=--beam 0"]) == 1
    assert capsys.readouterr().err.startswith("tasu.recipe decode-flags: error: --decode_args '--beam 0': ")
    assert main(["json-list", "dump/a b.jsonl", "ü.jsonl"]) == 0
    assert capsys.readouterr().out == '["dump/a b.jsonl","\\u00fc.jsonl"]\n'
    assert main(["json-list"]) == 0 and capsys.readouterr().out == "[]\n"
    port = free_port()
    with socket.socket() as s:
        s.bind(("", port))   # free indeed
    out = subprocess.run([sys.executable, "-m", "tasu.recipe", "free-port"], capture_output=True, text=True, check=True)
    assert 0 < int(out.stdout) < 65536
