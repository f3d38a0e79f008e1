"""The JSONL record reader: strict and collecting modes, every problem as FILE:LINE: FIELD: message."""
import io
import json

import pytest

from tasu.data.prompts import load_prompts
from tasu.data.records import DataError, Record, iter_records, iter_records_with_lines, write_records


def write(tmp_path, *lines, name="data.jsonl", raw=None):
    path = tmp_path / name
    path.write_bytes(raw if raw is not None else "".join(line + "\n" for line in lines).encode())
    return str(path)


def collect(path, **kwargs):
    problems = []
    records = list(iter_records_with_lines(path, on_error=problems.append, **kwargs))
    return records, [str(p) for p in problems]


GOOD = '{"key": "utt1", "task": "ASR", "target": "hello world", "path": "a.wav"}'


def test_fields_and_pass_through(tmp_path):
    path = write(tmp_path, '{"key": "u", "task": "SLU_scenario", "target": "iot", "path": "a.flac", '
                           '"GT": "lights off", "start": 1, "end": 2.5, "intent": "iot_hue_lightoff"}')
    [record] = iter_records(path)
    assert record == Record("u", "SLU_scenario", "iot", "a.flac", "lights off", 1, 2.5,
                            {"intent": "iot_hue_lightoff"})
    assert record.get("intent") == "iot_hue_lightoff" and record.get("GT") == "lights off"
    assert record.get("missing", "-") == "-"


def test_transcript_is_gt_else_target_for_asr_like_tasks_else_none():
    assert Record("a", "ASR", "hello").transcript == "hello"
    assert Record("a", "prevtext", "hello", extra={"prevtext": "before"}).transcript == "hello"
    assert Record("a", "ASR", "hello", GT="hallo").transcript == "hallo"
    assert Record("a", "EN2DE", "Hallo", GT="hello").transcript == "hello"
    assert Record("a", "EN2DE", "Hallo").transcript is None


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    raw = ("\ufeff" + GOOD + "\r\n\r\n   \r\n" + GOOD.replace("utt1", "utt2") + "\r\n").encode()
    path = write(tmp_path, raw=raw)
    records, problems = collect(path)
    assert problems == []
    assert [(line, r.key, r.target) for line, r in records] == [(1, "utt1", "hello world"),
                                                                (4, "utt2", "hello world")]


def test_every_problem_is_reported_with_file_line_and_field(tmp_path):
    path = write(tmp_path,
                 GOOD,
                 '{"key": "utt2", "task": "ASR", "target": "x"',
                 '["not", "an", "object"]',
                 '{"key": "utt1", "task": "ASR", "target": "again"}',
                 '{"key": "utt3", "task": "ASR"}',
                 '{"key": "a b", "task": "ASR", "target": ""}',
                 '{"key": "dir/utt4", "task": 3, "target": "x", "path": null}',
                 '{"key": "utt5", "task": "ASR", "target": "x", "start": -1, "path": "a.wav"}',
                 '{"key": "utt6", "task": "ASR", "target": "x", "start": 2, "end": 1, "path": "a.wav"}',
                 '{"key": "utt7", "task": "ASR", "target": "x", "end": 1}',
                 GOOD.replace("utt1", "utt8"),
                 '{"key": "utt\\u00009", "task": "ASR", "target": "x"}')
    records, problems = collect(path)
    assert [r.key for _, r in records] == ["utt1", "utt8"]
    assert problems == [
        f"{path}:2: json: Expecting ',' delimiter (column 46)",
        f"{path}:3: json: expected an object {{...}}, got an array",
        f"{path}:4: key: duplicate key 'utt1' (first on line 1)",
        f"{path}:5: target: missing",
        f"{path}:6: key: 'a b' contains whitespace (' '); keys may not contain '/', whitespace, control or "
        "format characters",
        f"{path}:6: target: empty",
        f"{path}:7: key: 'dir/utt4' contains '/'; keys may not contain '/', whitespace, control or format characters",
        f"{path}:7: task: must be a non-empty string, not a number",
        f"{path}:7: path: must be a non-empty string, not null",
        f"{path}:8: start: must be a number of seconds >= 0, not -1",
        f"{path}:9: end: must be a number of seconds > start (2), not 1",
        f"{path}:10: path: missing: start/end select a segment of path",
        f"{path}:12: key: 'utt\\x009' contains a control character ('\\x00'); keys may not contain '/', "
        "whitespace, control or format characters",
    ]


def test_a_field_named_twice_is_refused_whatever_the_spacing_and_lookalikes_are_not(tmp_path):
    from tasu.data.records import parse_record

    path = write(tmp_path,
                 '{"key": "u1", "task": "ASR", "target": "turn on", "target": "turn off"}',
                 '{"key":"u2","task":"ASR","target":"x","GT":"y","GT":"z"}',
                 '{"key" : "u3", "task" : "ASR", "target" : "x", "key" : "u4"}',
                 '{"key": "u5", "task": "ASR", "target": "x", "meta": {"a": 1, "a": 2}}',
                 '{"key": "u9", "task": "ASR", "target": "x", "key" : "u10"}',   # counted '":' as often as names
                 # not repeated: a value that is a name, a colon after an escaped quote, a nested name
                 '{"key": "u6", "task": "ASR", "target": "key", "GT": "he said \\"target\\": no"}',
                 '{"key": "u7", "task": "ASR", "target": "x", "meta": {"key": "task"}}',
                 '{"key" : "u8", "task" : "ASR", "target" : "x"}')
    records, problems = collect(path)
    assert [r.key for _, r in records] == ["u6", "u7", "u8"]
    assert records[0][1].transcript == 'he said "target": no'
    why = "named twice in the line's object: which value is meant? (JSON readers keep the last one silently)"
    assert problems == [f"{path}:1: target: {why}", f"{path}:2: GT: {why}", f"{path}:3: key: {why}",
                        f"{path}:4: a: {why}", f"{path}:5: key: {why}"]
    with pytest.raises(DataError, match="target: named twice"):   # the epoch reader checks it too
        parse_record(b'{"key": "u1", "task": "ASR", "target": "a", "target": "b"}')


def test_non_utf8_bytes_name_line_and_column(tmp_path):
    path = write(tmp_path, raw=(GOOD + "\n").encode() + b'{"key": "caf\xe9", "task": "ASR"}\n')
    records, problems = collect(path)
    assert len(records) == 1
    assert problems == [f"{path}:2: encoding: byte 0xe9 at column 13 is not valid UTF-8"]


def test_a_gzipped_file_is_named_as_such(tmp_path):
    import gzip
    path = write(tmp_path, raw=gzip.compress((GOOD + "\n").encode()), name="data.jsonl.gz")
    _, problems = collect(path)
    assert problems[0].startswith(f"{path}:1: encoding: byte 0x8b at column 2 is not valid UTF-8 "
                                  "(the file is gzip-compressed: gunzip it first)")


def test_nan_and_infinity_are_not_json(tmp_path):
    """Python's reader takes them; written back through a pass-through field they made a file that
    other JSON readers refuse."""
    path = write(tmp_path, '{"key": "u1", "task": "ASR", "target": "x", "score": NaN}',
                 '{"key": "u2", "task": "ASR", "target": "x", "start": -Infinity}', GOOD,
                 '{"key": "u3", "task": "ASR", "target": "NaN Infinity", "n": 1e300}',
                 '{"key": "u4", "task": "ASR", "target": "x", "meta": {"z": [1e400]}}')
    records, problems = collect(path)
    assert [r.key for _, r in records] == ["utt1", "u3"]
    why = "which is not JSON: a number must be finite (write null, or the value as a string)"
    assert problems == [f"{path}:1: score: holds NaN, {why}", f"{path}:2: start: holds -Infinity, {why}",
                        f"{path}:5: meta: holds 1e400, beyond the range of a double: a number must be finite "
                        "(write null, or the value as a string)"]


def test_json_that_parses_into_no_text_or_does_not_parse_names_its_line(tmp_path):
    """Half of a UTF-16 surrogate pair (written as an escape) is no character: once read, decoding or
    tokenising the record failed with no file or line. A number of more than 4300 digits and nesting
    deeper than Python's stack made json raise what its own errors are not. A valid pair is an emoji."""
    deep = '{"key": "u5", "task": "ASR", "target": "x", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = write(tmp_path,
                 '{"key": "u1", "task": "ASR", "target": "turn \\ud800 on"}',
                 '{"key": "u2\\udc80", "task": "ASR", "target": "x"}',
                 '{"key": "u3", "task": "ASR", "target": "x", "meta": {"a": ["\\uDBFF"]}}',
                 '{"key": "u4", "task": "ASR", "target": "x", "start": 1' + "0" * 5000 + "}",
                 deep,
                 '{"key": "u6", "task": "ASR", "target": "smile \\ud83d\\ude00"}')
    records, problems = collect(path)
    assert [(r.key, r.target) for _, r in records] == [("u6", "smile \U0001f600")]
    why = "half of a UTF-16 surrogate pair without its other half: not a character"
    assert [p.split(" (was")[0] for p in problems] == [
        f"{path}:1: target: holds \\ud800, {why}", f"{path}:2: key: holds \\udc80, {why}",
        f"{path}:3: meta: holds \\udbff, {why}",
        f"{path}:4: json: holds a number of more than 4300 digits, which cannot be read",
        f"{path}:5: json: nested too deeply to be read"]


def test_unknown_task_and_template_fields_against_a_prompt_set(tmp_path):
    path = write(tmp_path,
                 '{"key": "a", "task": "ASRR", "target": "x"}',
                 '{"key": "b", "task": "prevtext", "target": "x"}',
                 '{"key": "c", "task": "hotword", "target": "x", "hotword": ["a", "b"]}',
                 '{"key": "d", "task": "prevtext", "target": "x", "prevtext": "before"}',
                 '{"key": "e", "task": "hotword", "target": "x", "hotword": "say <speech>"}')
    records, problems = collect(path, prompts=load_prompts())
    assert [r.key for _, r in records] == ["d"]
    assert problems[0].startswith(f"{path}:1: task: unknown task 'ASRR': the prompt set has ASR, EN2DE,")
    assert problems[1:] == [
        f"{path}:2: prevtext: missing (the prevtext prompts are filled from it)",
        f"{path}:3: hotword: must be a non-empty string, not an array (the hotword prompts are filled from it)",
        # it stopped training at the batch, naming no record: "prompt '...' must not contain <speech> itself"
        f"{path}:5: hotword: holds <speech>, which marks where the speech goes (the hotword prompts are filled "
        "from it): write it otherwise",
    ]


def test_strict_mode_raises_the_first_problem(tmp_path):
    path = write(tmp_path, GOOD, '{"key": "utt1", "task": "ASR", "target": "x"}', "{")
    reader = iter_records(path)
    assert next(reader).key == "utt1"
    with pytest.raises(DataError) as e:
        next(reader)
    assert (e.value.file, e.value.line, e.value.field) == (path, 2, "key")
    assert str(e.value) == f"{path}:2: key: duplicate key 'utt1' (first on line 1)"


def test_missing_file_is_a_data_error_not_a_traceback(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: cannot open: No such file or directory$"):
        list(iter_records(str(tmp_path / "nope.jsonl")))


def test_require_transcript(tmp_path):
    path = write(tmp_path, '{"key": "a", "task": "EN2DE", "target": "Hallo"}',
                 '{"key": "b", "task": "EN2DE", "target": "Hallo", "GT": "hello"}')
    records, problems = collect(path, require_transcript=True)
    assert [r.key for _, r in records] == ["b"]
    assert problems == [f"{path}:1: GT: missing: this EN2DE record needs a GT transcript for the text-only stage"]


def test_write_records_round_trip(tmp_path):
    records = [Record("a", "ASR", "héllo", "a.wav"),
               Record("b", "EN2ZH", "你好", "x.ark:12", GT="hello", start=0.5, extra={"spk": "s1"})]
    out = io.StringIO()
    assert write_records(records, out) == 2
    assert out.getvalue().splitlines()[1] == json.dumps(
        {"key": "b", "task": "EN2ZH", "target": "你好", "path": "x.ark:12", "GT": "hello",
         "start": 0.5, "spk": "s1"}, ensure_ascii=False)
    path = write(tmp_path, raw=out.getvalue().encode())
    assert list(iter_records(path)) == records


def test_records_without_target_are_read_only_when_asked(tmp_path):
    from tasu.data.records import DataError, iter_records

    path = tmp_path / "unlabelled.jsonl"
    path.write_text('{"key": "a", "task": "ASR", "path": "a.wav"}\n{"key": "b", "task": "ASR", "target": "", "path": "b.wav"}\n')
    with pytest.raises(DataError, match="unlabelled.jsonl:1: target: missing"):
        list(iter_records(str(path)))
    records = list(iter_records(str(path), require_target=False))
    assert [(r.key, r.target, r.transcript) for r in records] == [("a", "", None), ("b", "", None)]
    path.write_text('{"key": "a", "task": "ASR", "target": 3, "path": "a.wav"}\n')   # still a bad target
    with pytest.raises(DataError, match="target: must be a non-empty string"):
        list(iter_records(str(path), require_target=False))


def test_segment_times_must_be_finite_and_at_most_a_day(tmp_path):
    def seg(key, times):
        return f'{{"key": "{key}", "task": "ASR", "target": "x", "path": "a.wav", {times}}}'

    path = write(tmp_path, seg("a", '"end": Infinity'), seg("b", '"start": Infinity'), seg("c", '"end": NaN'),
                 seg("d", '"start": NaN'), seg("e", '"start": 1, "end": 1e308'), seg("f", '"start": 86401'),
                 seg("g", '"start": 86000, "end": 86400'))
    records, problems = collect(path)
    assert [r.key for _, r in records] == ["g"]
    why = "which is not JSON: a number must be finite (write null, or the value as a string)"
    assert problems == [
        f"{path}:1: end: holds Infinity, {why}", f"{path}:2: start: holds Infinity, {why}",
        f"{path}:3: end: holds NaN, {why}", f"{path}:4: start: holds NaN, {why}",
        f"{path}:5: end: must be at most 86400 seconds (a day), not 1e+308",
        f"{path}:6: start: must be at most 86400 seconds (a day), not 86401",
    ]
