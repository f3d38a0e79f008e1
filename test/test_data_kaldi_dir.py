"""Kaldi data dirs <-> JSONL: reading, segments, malformed lines, skipped utterances, round trip."""
import json
import logging
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tasu.data.audio import load_audio
from tasu.data.kaldi_dir import DataDirError, iter_text_records, main, read_data_dir, write_data_dir
from tasu.data.records import Record, iter_records

ROOT = Path(__file__).resolve().parents[1]


def make_dir(path, **files):
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text, encoding="utf-8")
    return path


def test_plain_dir_becomes_sorted_records(tmp_path):
    d = make_dir(tmp_path / "train",
                 **{"wav.scp": "u2 b.wav\nu1 sox a.sph -t wav - |\n",
                    "text": "u1 hello  world\nu2 good morning\n",
                    "utt2spk": "u1 s1\nu2 s2\n"})
    assert read_data_dir(d, task="EN2DE") == [
        Record("u1", "EN2DE", "hello  world", "sox a.sph -t wav - |", extra={"speaker": "s1"}),
        Record("u2", "EN2DE", "good morning", "b.wav", extra={"speaker": "s2"}),
    ]


def test_a_bom_opening_a_table_is_dropped_and_an_invisible_character_in_an_id_refused(tmp_path):
    """The BOM joined the first id ('\\ufeffutt1'): that utterance had 'no entry in wav.scp', dropped
    with a warning whose id printed like the real one; text-only, it became the key."""
    from tasu.data.kaldi_dir import iter_text_records

    d = make_dir(tmp_path / "d", **{"wav.scp": "\ufeffu1 a.wav\nu2 b.wav\n", "text": "\ufeffu1 hello world\r\nu2 hi\n"})
    assert [r.key for r in read_data_dir(d)] == ["u1", "u2"]
    assert [r.key for r in iter_text_records(d)] == ["u1", "u2"]
    (d / "text").write_text("u1 hello\nu\u200b2 hi\n")
    with pytest.raises(DataDirError, match=r"text:2: utterance id 'u\\u200b2' contains an invisible format character "
                                           r"\(U\+200B\)"):
        read_data_dir(d)


def test_segments_become_start_end_that_the_audio_reader_cuts(tmp_path):
    rate = 16000
    samples = np.linspace(-0.5, 0.5, 2 * rate, dtype=np.float32)
    soundfile.write(tmp_path / "rec.wav", samples, rate, subtype="FLOAT")
    d = make_dir(tmp_path / "dev",
                 **{"wav.scp": f"rec1 {tmp_path / 'rec.wav'}\n",
                    "text": "a first part\nb second part\n",
                    "segments": "a rec1 0.25 0.75\nb rec1 1.5 -1\n"})
    a, b = read_data_dir(d)
    assert (a.start, a.end, a.extra, b.start, b.end) == (0.25, 0.75, {"recording": "rec1"}, 1.5, None)
    np.testing.assert_array_equal(load_audio(a.path, a.key, a.start, a.end), samples[4000:12000])
    np.testing.assert_array_equal(load_audio(b.path, b.key, b.start, b.end), samples[24000:])


def problems(data_dir) -> list[str]:
    """The lines of the DataDirError that reading ``data_dir`` raises."""
    with pytest.raises(DataDirError) as e:
        read_data_dir(data_dir)
    return str(e.value).splitlines()


def test_malformed_lines_are_all_reported_with_file_and_line(tmp_path):
    d = make_dir(tmp_path / "bad",
                 **{"wav.scp": "r1 a.wav\nr2\n",
                    "text": "u1 hi\nu2\nu3 yes\nu3 again\nu/4 slash\n",
                    "segments": "u1 r1 0 1\nu2 r1 x 1\nu3 r1 2 1\nu4 r1 0\n"})
    assert problems(d) == [
        f"{d}/wav.scp:2: 'r2' must be followed by a path or command",
        f"{d}/text:2: 'u2' must be followed by a transcript",
        f"{d}/text:4: duplicate id 'u3' (first on line 3)",
        f"{d}/segments:2: start and end must be numbers of seconds, not 'x' and '1'",
        f"{d}/segments:3: start 2 and end 1 do not make a segment (0 <= start < end, or end -1)",
        f"{d}/segments:4: needs recording, start and end after the utterance id, not 2 fields",
        f"{d}/text:5: utterance id 'u/4' contains '/'; keys may not contain '/', whitespace, control or format "
        "characters",
    ]
    with pytest.raises(DataDirError, match=r"nowhere/wav\.scp: cannot open: No such file or directory"):
        read_data_dir(tmp_path / "nowhere")
    # went into the JSONL as NaN, Infinity or 100000.0 s (exit 0), which every reader then refused there
    d = make_dir(tmp_path / "times", **{"wav.scp": "r1 a.wav\n", "text": "u1 a\nu2 b\nu3 c\nu4 d\n",
                                        "segments": "u1 r1 nan 1\nu2 r1 0 inf\nu3 r1 0 1e400\nu4 r1 16000 96000\n"})
    assert problems(d) == [
        f"{d}/segments:1: start nan and end 1 do not make a segment (0 <= start < end, or end -1)",
        f"{d}/segments:2: start 0 and end inf do not make a segment (0 <= start < end, or end -1)",
        f"{d}/segments:3: start 0 and end 1e400 do not make a segment (0 <= start < end, or end -1)",
        f"{d}/segments:4: start 16000 and end 96000 are seconds past a day (86400): samples or milliseconds?"]
    # CR-only line ends: one line, its other utterances gone without a word
    d = make_dir(tmp_path / "cr", **{"wav.scp": "u1 a.wav\nu2 b.wav\n", "text": "u1 hello\ru2 world\r"})
    with pytest.raises(DataDirError, match=r"text:1: a carriage return inside the line \(lines must end in '\\n'"):
        read_data_dir(d)


def test_utterances_missing_from_a_file_are_skipped_with_a_count(tmp_path, caplog):
    d = make_dir(tmp_path / "partial",
                 **{"wav.scp": "u1 a.wav\nu2 b.wav\nu5 e.wav\n",
                    "text": "u1 one\nu2 two\nu3 three\nu4 four\n",
                    "utt2spk": "u1 s\n"})
    with caplog.at_level(logging.WARNING, logger="tasu.data.kaldi_dir"):
        records = read_data_dir(d)
    assert [r.key for r in records] == ["u1"]
    assert caplog.messages == [
        f"{d}/text: skipped 2 utterances with no entry in wav.scp (e.g. u3, u4)",
        f"{d}/wav.scp: skipped 1 utterance with no entry in text (e.g. u5)",
        f"{d}/text: skipped 1 utterance with no entry in utt2spk (e.g. u2)",
    ]


def test_write_then_read_round_trip(tmp_path, caplog):
    files = {"wav.scp": "r1 a.wav\nr2 data/wav.ark:1234\n",
             "text": "sA-u1 hello world\nsA-u2 good morning\nsB-u3 hi\n",
             "segments": "sA-u1 r1 0.000 1.250\nsA-u2 r1 1.250 -1\nsB-u3 r2 0.000 0.800\n",
             "utt2spk": "sA-u1 sA\nsA-u2 sA\nsB-u3 sB\n",
             "spk2utt": "sA sA-u1 sA-u2\nsB sB-u3\n"}
    src = make_dir(tmp_path / "src", **files)
    records = read_data_dir(src)
    records[0].GT = "hello world"
    records[1].extra["prevtext"] = "hi"
    with caplog.at_level(logging.WARNING, logger="tasu.data.kaldi_dir"):
        assert write_data_dir(records, tmp_path / "out") == 3
    assert caplog.messages == [f"{tmp_path / 'out'}: fields a data dir cannot hold were dropped: GT, prevtext"]
    for name, text in files.items():
        assert (tmp_path / "out" / name).read_text() == text, name

    # Without segments, recordings are the utterances, and a stale segments file goes away.
    write_data_dir([Record("b", "ASR", "two", "b.wav"), Record("a", "ASR", "one", "a.wav")], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["spk2utt", "text", "utt2spk", "wav.scp"]
    assert (tmp_path / "out" / "wav.scp").read_text() == "a a.wav\nb b.wav\n"
    assert (tmp_path / "out" / "spk2utt").read_text() == "a a\nb b\n"
    for name in ("utt2dur", "cmvn.scp", "spk2gender"):   # of the dir written before: they go too
        (tmp_path / "out" / name).write_text("a 1.0\nb 2.0\n")
    write_data_dir([Record("c", "ASR", "three", "c.wav")], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["spk2utt", "text", "utt2spk", "wav.scp"]


def test_records_a_data_dir_cannot_hold(tmp_path):
    with pytest.raises(DataDirError) as e:
        write_data_dir([Record("a", "ASR", "x"), Record("b", "ASR", "two\nlines", "b.wav"),
                        Record("c", "ASR", "x", "c.wav", start=0.0, extra={"recording": "r"}),
                        Record("d", "ASR", "x", "d.wav", start=1.0, extra={"recording": "r"})],
                       tmp_path / "out")
    out = tmp_path / "out"
    assert str(e.value).splitlines() == [
        f"{out}: path: a: missing (a data dir needs audio)",
        f"{out}: target: b: a line break cannot go into text",
        f"{out}: path: d: recording 'r' is 'c.wav' in another record, 'd.wav' here",
    ]
    assert not out.exists()
    # each was written with exit 0 into a dir that data2jsonl.sh then refused, or that named another file
    with pytest.raises(DataDirError) as e:
        write_data_dir([Record("e", "ASR", "x", "e.wav", extra={"speaker": "two words"}),
                        Record("f", "ASR", "x", "f.wav", extra={"speaker": None}),
                        Record("g", "ASR", "x", "/x/g.wav "), Record("g2", "ASR", "x", "/x/g\n.wav"),
                        Record("h", "ASR", "x", "h.wav", start=1.0001, end=1.0004, extra={"recording": "r 1"})],
                       tmp_path / "out")
    assert str(e.value).splitlines() == [
        f"{out}: speaker: e: speaker 'two words' is not one word",
        f"{out}: speaker: f: None is not text",
        f"{out}: path: g: '/x/g.wav ' begins or ends in whitespace",
        f"{out}: path: g2: a line break cannot go into wav.scp",
        f"{out}: recording: h: recording 'r 1' is not one word",
        f"{out}: end: h: the segment 1.0001-1.0004 s is empty at the millisecond segments are written in",
    ]
    assert not out.exists()


def test_shell_wrappers_convert_both_ways(tmp_path):
    src = make_dir(tmp_path / "src", **{"wav.scp": "u1 a.wav\nu2 b.wav\n", "text": "u1 one\nu2 two\n"})
    out = subprocess.run([str(ROOT / "utils/data2jsonl.sh"), "--task", "QA", str(src)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line) for line in out.stdout.splitlines()] == [
        {"key": "u1", "task": "QA", "target": "one", "path": "a.wav"},
        {"key": "u2", "task": "QA", "target": "two", "path": "b.wav"}]

    jsonl = tmp_path / "qa.jsonl"
    out = subprocess.run([str(ROOT / "utils/data2jsonl.sh"), str(src), str(jsonl)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "", out.stderr
    assert [r.task for r in iter_records(str(jsonl))] == ["ASR", "ASR"]
    out = subprocess.run([str(ROOT / "utils/jsonl2data.sh"), str(jsonl), str(tmp_path / "back")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "back" / "text").read_text() == "u1 one\nu2 two\n"
    assert (tmp_path / "back" / "utt2spk").read_text() == "u1 u1\nu2 u2\n"

    again = subprocess.run([str(ROOT / "utils/jsonl2data.sh"), str(jsonl), str(tmp_path / "back")],
                           capture_output=True, text=True)
    assert again.returncode == 1 and "holds a data dir already (wav.scp, text, utt2spk)" in again.stderr
    again = subprocess.run([str(ROOT / "utils/jsonl2data.sh"), "--overwrite", "true", str(jsonl),
                            str(tmp_path / "back")], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr

    # from outside a recipe, with no Python of the environment on PATH: the one tools/setup.sh made
    bare = {**os.environ, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(ROOT / "utils/data2jsonl.sh"), str(src)], capture_output=True, text=True,
                         cwd=tmp_path, env=bare)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 2, out.stderr

    (src / "text").write_text("u1 one\nu2\n")
    out = subprocess.run([str(ROOT / "utils/data2jsonl.sh"), str(src)], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == f"{src}/text:2: 'u2' must be followed by a transcript\n"


def test_text_only_conversion_leaves_no_output_when_a_late_line_is_bad(tmp_path, capsys):
    """--text-only streams text: the records before a bad line are not left in OUT as if it were done,
    and an OUT of an earlier run stays as it was."""

    src = make_dir(tmp_path / "src", text="".join(f"u{i} sentence {i}\n" for i in range(50)) + "u50\n")
    out = tmp_path / "text.jsonl"
    assert main(["to-jsonl", "--text-only", str(src), str(out)]) == 1
    assert capsys.readouterr().err == f"{src}/text:51: 'u50' must be followed by a transcript\n"
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    out.write_text("earlier\n")
    assert main(["to-jsonl", "--text-only", str(src), str(out)]) == 1
    assert out.read_text() == "earlier\n"
    capsys.readouterr()
    (src / "text").write_text("u1 one\nu2 two\nu1 again\n")   # a repeated id passed with --text-only
    assert main(["to-jsonl", "--text-only", str(src), str(out)]) == 1
    assert capsys.readouterr().err == f"{src}/text:3: duplicate id 'u1' (first on line 1)\n"
    (src / "text").write_text("u1 one\nu2 two\n")
    assert main(["to-jsonl", "--text-only", "--task", "QA", str(src), str(out)]) == 0
    assert out.read_text() == ('{"key": "u1", "task": "QA", "target": "one"}\n'
                               '{"key": "u2", "task": "QA", "target": "two"}\n')


def test_write_tables_sorts_every_table_and_derives_spk2utt(tmp_path):
    from tasu.data.kaldi_dir import write_tables

    n = write_tables(tmp_path / "d", {"text": {"b": "two", "a": "one", "c": "three"},
                                      "wav.scp": {"a": "a.wav", "b": "b.wav", "c": "c.wav"},
                                      "scenario": {"c": "iot", "a": "alarm"},
                                      "utt2spk": {"a": "s1", "b": "s2", "c": "s1"}})
    assert n == 3
    d = tmp_path / "d"
    assert (d / "text").read_text() == "a one\nb two\nc three\n"
    assert (d / "scenario").read_text() == "a alarm\nc iot\n"
    assert (d / "spk2utt").read_text() == "s1 a c\ns2 b\n"
    write_tables(tmp_path / "e", {"text": {"x": "hi"}})  # no utt2spk: each utterance its own speaker
    assert (tmp_path / "e" / "utt2spk").read_text() == "x x\n" and (tmp_path / "e" / "spk2utt").read_text() == "x x\n"


def test_write_tables_keys_wav_scp_by_recording_with_segments_and_refuses_foreign_keys(tmp_path):
    """A wav.scp of recordings (with segments, or without by mistake) and a label file keyed by the
    corpus's own ids were written empty, the dir made and marked done, exit 0."""
    from tasu.data.kaldi_dir import read_data_dir, write_tables

    text = {"recA-1": "one", "recA-2": "two", "recB-1": "three"}
    wav = {"recA": str(tmp_path / "a.wav"), "recB": str(tmp_path / "b.wav"), "recC": str(tmp_path / "c.wav")}
    for name in ("a", "b"):
        soundfile.write(tmp_path / f"{name}.wav", np.zeros(32000, dtype=np.float32), 16000)
    segments = {"recA-1": "recA 0.0 0.5", "recA-2": "recA 0.5 1.0", "recB-1": "recB 0.2 1.9"}
    assert write_tables(tmp_path / "d", {"text": text, "wav.scp": wav, "segments": segments}) == 3
    assert (tmp_path / "d" / "wav.scp").read_text() == f"recA {wav['recA']}\nrecB {wav['recB']}\n"   # not recC
    records = read_data_dir(tmp_path / "d")
    assert [(r.key, r.start, r.end) for r in records] == [("recA-1", 0.0, 0.5), ("recA-2", 0.5, 1.0),
                                                           ("recB-1", 0.2, 1.9)]
    with pytest.raises(DataDirError, match=re.escape(
            "e/wav.scp: none of its 3 keys is an utterance of text (e.g. 'recA' is not, and 'recA-1' has no entry): "
            "key it as text is (a wav.scp of recordings needs a segments table: utterance -> recording start end)")):
        write_tables(tmp_path / "e", {"text": text, "wav.scp": wav})
    with pytest.raises(DataDirError, match=re.escape("e/scenario: none of its 1 keys is an utterance of text (e.g. "
                                                     "'slurp-7' is not, and 'recA-1' has no entry)")):
        write_tables(tmp_path / "e", {"text": text, "scenario": {"slurp-7": "iot"}})
    # one table for every set, with a gap in this one: written (stage 2 counts what it skips); segments by tab
    write_tables(tmp_path / "f", {"text": text, "scenario": {"recA-1": "iot", "recB-1": "alarm", "train-9": "iot"},
                                  "wav.scp": {"recA": wav["recA"], "recZ": "z.wav"},
                                  "segments": {**segments, "recA-2": "recA\t0.5\t1.0"}})
    assert (tmp_path / "f" / "scenario").read_text() == "recA-1 iot\nrecB-1 alarm\n"
    assert (tmp_path / "f" / "wav.scp").read_text() == f"recA {wav['recA']}\n"
    assert not (tmp_path / "e").exists()


def test_wav_scp_entry_is_a_path_or_an_ffmpeg_pipe_that_load_audio_reads(tmp_path):
    from tasu.data.kaldi_dir import wav_scp_entry

    clip = tmp_path / "a clip.wav"  # a space: the pipe must quote it
    soundfile.write(clip, np.full(8000, 0.25, dtype=np.float32), 8000)
    assert wav_scp_entry(clip) == str(clip.resolve())
    pipe = wav_scp_entry(clip, "ffmpeg")
    assert pipe.endswith("|") and "'" in pipe
    if subprocess.run(["which", "ffmpeg"], capture_output=True).returncode == 0:
        assert load_audio(pipe).shape[0] == 16000  # 8 kHz, 1 s -> 16 kHz
    with pytest.raises(ValueError, match="soundfile or ffmpeg"):
        wav_scp_entry(clip, "sox")


@pytest.mark.parametrize("name,why", [
    ("clip.wav |", "ending in '|' is a shell command"),
    ("a;touch${IFS}x;#|", "ending in '|' is a shell command"),
    ("clip:123", "read as an offset into a Kaldi archive"),
    ("clip.wav ", "whitespace at the end of a file name"),
    ("two\nlines.wav", "a line break in a file name"),
])
def test_wav_scp_entry_refuses_a_file_name_that_wav_scp_would_read_as_something_else(tmp_path, name, why):
    """A corpus's file names are data: a name that its wav.scp readers would run as a command (the
    recipes read their own wav.scp with --allow-pipes) or take for an ark offset is refused, named."""
    from tasu.data.kaldi_dir import wav_scp_entry
    from tasu.data.records import DataError

    clip = tmp_path / name
    soundfile.write(clip, np.zeros(1600, dtype=np.float32), 16000, format="WAV")
    with pytest.raises(DataError, match=why) as e:
        wav_scp_entry(clip)
    assert str(e.value).startswith(str(clip.resolve()))
    if "\n" not in name:   # the ffmpeg pipe quotes the name: only a line break cannot be written
        assert wav_scp_entry(clip, "ffmpeg").endswith("-f wav - |")


@pytest.mark.parametrize("tables,error", [
    ({"text": {"a b": "hi"}}, "d/text: utterance 'a b': 'a b' contains whitespace (' '); keys may not contain "
                              "'/', whitespace, control or format characters"),
    ({"text": {"a": "hi"}, "utt2spk": {"a": ""}}, "d/utt2spk: utterance 'a': an empty value"),
    ({"text": {"a": "hi"}, "utt2spk": {"a": "abc def"}}, "d/utt2spk: utterance 'a': speaker id 'abc def' is not one word"),
    ({"text": {"a": "hi", "b": "ho"}, "intent": {"a": "x\ny", "b": "z\r"}},
     "d/intent: utterance 'a': 'x\\ny' spans lines (1 more utterances of this table have problems)"),
    ({"text": {"a": "hi"}, "scenario": {"a": None}}, "d/scenario: utterance 'a': None is not text"),
])
def test_write_tables_refuses_what_a_kaldi_table_cannot_hold_and_writes_nothing(tmp_path, tables, error):
    from tasu.data.kaldi_dir import write_tables

    with pytest.raises(DataDirError) as e:
        write_tables(tmp_path / "d", tables)
    assert str(e.value) == f"{tmp_path}/{error}"
    assert not (tmp_path / "d").exists()


def test_read_tsv_refuses_a_shifted_row_and_a_column_named_twice(tmp_path):
    """A tab inside a field shifts the fields after it into the next columns: refused, as a row cut
    short is, even when the field it adds is empty (a release's rows end in empty columns)."""
    from tasu.data.corpus_tsv import read_tsv
    from tasu.data.records import DataError

    tsv = tmp_path / "t.tsv"
    tsv.write_text("path\tsentence\tsegment\n1.mp3\thello\t\n2.mp3\tfirst\thalf\t\n", encoding="utf-8")
    rows = read_tsv(tsv, {"path", "sentence"})
    assert next(rows) == (2, {"path": "1.mp3", "sentence": "hello", "segment": ""})
    with pytest.raises(DataError, match=r"t.tsv:3: 4 tab-separated fields where the header has 3"):
        next(rows)
    tsv.write_text("path\tsentence\tsentence\n1.mp3\ta\tb\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"t.tsv:1: the header names sentence twice"):
        list(read_tsv(tsv, {"path", "sentence"}))
    # a bare carriage return in a field: csv's own words asked for "universal-newline mode"
    tsv.write_bytes(b"path\tsentence\n1.mp3\thel\rlo\n")
    with pytest.raises(DataError) as e:
        list(read_tsv(tsv, {"path", "sentence"}))
    assert str(e.value) == f"{tsv}:2: a carriage return inside a field (lines end in \\n or \\r\\n)"


def test_the_command_line_says_in_one_line_what_it_cannot_write(tmp_path, capsys):

    data = tmp_path / "d"
    data.mkdir()
    (data / "wav.scp").write_text("u1 a.wav\n")
    (data / "text").write_text("u1 hello\n")
    out = tmp_path / "missing" / "x.jsonl"
    assert main(["to-jsonl", str(data), str(out)]) == 1
    assert capsys.readouterr().err == f"{out}: No such file or directory\n"
    records = tmp_path / "r.jsonl"
    records.write_text('{"key": "u1", "task": "ASR", "target": "hello", "path": "a.wav"}\n')
    (tmp_path / "taken").write_text("a file, not a directory")
    assert main(["to-dir", str(records), str(tmp_path / "taken" / "d")]) == 1
    assert capsys.readouterr().err == f"{tmp_path}/taken/d: Not a directory\n"


def test_a_conversion_does_not_write_over_what_it_converts(tmp_path, capsys):
    """data2jsonl into D/wav.scp replaced it with JSONL; jsonl2data of SLU records back into D replaced
    the transcripts in D/text by intent labels: both with exit 0."""
    src = make_dir(tmp_path / "d", **{"wav.scp": "u1 a.wav\n", "text": "u1 wake me up\n", "intent": "u1 alarm_set\n"})
    for output, target in ((src / "wav.scp", []), (src / "intent", ["--target-file", "intent"])):
        assert main(["to-jsonl", *target, str(src), str(output)]) == 1
        assert capsys.readouterr().err == f"{output}: is a table of {src} that this conversion reads: " \
                                          "write the records elsewhere\n"
    assert main(["to-jsonl", "--target-file", "intent", str(src), str(src / "intent.jsonl")]) == 0
    assert main(["to-dir", str(src / "intent.jsonl"), str(src)]) == 1
    assert capsys.readouterr().err == f"{src}: holds a data dir already (wav.scp, text): write to a new " \
                                      "directory, or --overwrite it\n"
    assert ((src / "wav.scp").read_text(), (src / "text").read_text()) == ("u1 a.wav\n", "u1 wake me up\n")
    assert main(["to-dir", "--overwrite", str(src / "intent.jsonl"), str(src)]) == 0
    assert (src / "text").read_text() == "u1 alarm_set\n"


def test_a_table_is_replaced_whole_or_not_at_all(tmp_path):
    from tasu.data import kaldi_dir

    table = tmp_path / "text"
    table.write_text("a old\n")

    def lines():
        yield "a new"
        raise KeyboardInterrupt   # the writer killed after its first line

    with pytest.raises(KeyboardInterrupt):
        kaldi_dir._write_lines(table, lines())
    assert table.read_text() == "a old\n" and [p.name for p in tmp_path.iterdir()] == ["text"]
    kaldi_dir._write_lines(table, iter(["a new", "b two"]))
    assert table.read_text() == "a new\nb two\n"


def test_a_data_dir_a_killed_to_dir_left_is_refused_as_input_and_made_again(tmp_path, capsys, monkeypatch):
    """The same command again was refused ("holds a data dir already"), and the tables written before the
    kill read as a whole data dir."""
    from tasu.data import kaldi_dir

    records = tmp_path / "r.jsonl"
    records.write_text('{"key": "u1", "task": "ASR", "target": "hello", "path": "a.wav"}\n')
    out = tmp_path / "d"
    real = kaldi_dir._write_spk2utt

    def killed(*args):
        raise KeyboardInterrupt   # after wav.scp, text and utt2spk

    monkeypatch.setattr(kaldi_dir, "_write_spk2utt", killed)
    with pytest.raises(KeyboardInterrupt):
        main(["to-dir", str(records), str(out)])
    assert (out / "wav.scp").exists() and not (out / "spk2utt").exists()
    assert main(["to-jsonl", str(out), str(tmp_path / "back.jsonl")]) == 1
    assert capsys.readouterr().err == f"{out}: half-written (.partial: a to-dir was killed while writing it): " \
                                      "make it again\n"
    for read in (read_data_dir, lambda d: list(iter_text_records(d))):   # as the library reads it too
        with pytest.raises(DataDirError, match="half-written"):
            read(out)
    monkeypatch.setattr(kaldi_dir, "_write_spk2utt", real)
    assert main(["to-dir", str(records), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["spk2utt", "text", "utt2spk", "wav.scp"]
    assert main(["to-jsonl", str(out), str(tmp_path / "back.jsonl")]) == 0


def test_converting_nothing_is_an_error_not_an_empty_result(tmp_path, capsys):
    """A wav.scp keyed by recording without its segments skips every utterance: an empty JSONL, exit 0."""
    d = make_dir(tmp_path / "d", **{"wav.scp": "rec1 a.wav\n", "text": "rec1-u1 hello\n"})
    out = tmp_path / "out.jsonl"
    assert main(["to-jsonl", str(d), str(out)]) == 1
    assert capsys.readouterr().err.endswith(f"{d}: no utterance to convert (the messages above say why each "
                                            "was skipped, if any)\n")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["d"]
    assert main(["to-jsonl", str(d)]) == 1   # standard output
    assert "no utterance to convert" in capsys.readouterr().err
    (tmp_path / "none.jsonl").write_text("")
    assert main(["to-dir", str(tmp_path / "none.jsonl"), str(tmp_path / "made")]) == 1
    assert capsys.readouterr().err == f"{tmp_path}/none.jsonl: no records: a data dir of no utterance is not made\n"
    assert not (tmp_path / "made").exists()
    for task in ("", "SLU scenario"):   # records tasu validate refuses, or two words
        assert main(["to-jsonl", "--task", task, str(d), str(out)]) == 1
        assert capsys.readouterr().err == f"{d}: --task {task!r}: a task is one word (ASR, SLU_scenario, ...)\n"
