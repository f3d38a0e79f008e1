"""tasu.score: hand-checked alignments, normalisation, BLEU against sacrebleu, missing keys,
empty/looping counts, malformed input and the files written."""
import json
import re
import os
import random
import stat

import pytest
import sacrebleu

from tasu.cli import main
from tasu.errors import DEBUG_ENV
from tasu.score import ScoreError, align, is_looping, normalise, read_text_file, score, score_files


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def tasu_score(ref, hyp, metric, *options):
    """``tasu score`` as the command runs it (errors become one line in tasu.cli.main); the exit status."""
    return main(["score", "--ref", str(ref), "--hyp", str(hyp), "--metric", metric, *options])


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)   # errors as one line, whatever the caller's environment


def counts(ops):
    return {op: sum(o == op for o, _, _ in ops) for op in "CSDI"}


def test_wer_hand_checked():
    # the cat sat on the mat  /  the cat sat on mat mat too
    # "the cat sat on" match (4 C); "the"->"mat" is one substitution; "mat" matches "mat" (C);
    # "too" is inserted. 2 errors; the alternative (delete "the", insert "mat" and "too") costs 3.
    ops = align("the cat sat on the mat".split(), "the cat sat on mat mat too".split())
    assert counts(ops) == {"C": 5, "S": 1, "D": 0, "I": 1}
    assert ops[4] == ("S", "the", "mat") and ops[6] == ("I", None, "too")
    # "a b c d" / "a c d": one deletion of b, the rest correct
    assert counts(align(list("abcd"), list("acd"))) == {"C": 3, "S": 0, "D": 1, "I": 0}
    assert counts(align([], ["x", "y"])) == {"C": 0, "S": 0, "D": 0, "I": 2}
    assert counts(align(["x", "y"], [])) == {"C": 0, "S": 0, "D": 2, "I": 0}
    r, _ = score({"u1": "The cat sat on the mat."}, {"u1": "the cat sat on mat, mat too"}, "wer")
    assert r.counts == {"wrd": 6, "corr": 5, "sub": 1, "del": 0, "ins": 1, "s_err": 1}
    assert r.value == pytest.approx(100 * 2 / 6)
    assert r.to_markdown_row("test") == "|test|1|6|83.3|16.7|0.0|16.7|33.3|100.0|"


def _levenshtein(a, b):
    """Independent textbook edit distance, to check the aligner's totals."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_align_is_a_minimum_edit_alignment():
    rng = random.Random(0)
    for _ in range(300):
        ref = rng.choices("abc", k=rng.randint(0, 12))
        hyp = rng.choices("abc", k=rng.randint(0, 12))
        ops = align(ref, hyp)
        assert [r for _, r, _ in ops if r is not None] == ref
        assert [h for _, _, h in ops if h is not None] == hyp
        assert all((op == "C") == (r == h) for op, r, h in ops if op in "CS")
        assert len(ops) - counts(ops)["C"] == _levenshtein(ref, hyp)


def test_cer_chinese_ignores_spaces_and_punctuation():
    # 今天天气很好 / 今天天很好啊: 今天天 C, 气 deleted, 很好 C, 啊 inserted -> 2 errors over 6 chars.
    r, lines = score({"u2": "今天天气很好。"}, {"u2": "今天 天很好啊"}, "cer")
    assert r.counts == {"wrd": 6, "corr": 5, "sub": 0, "del": 1, "ins": 1, "s_err": 1}
    assert r.value == pytest.approx(100 * 2 / 6)
    # CJK characters take two columns, so the gap markers line up under them
    assert "".join(lines) == ("id: u2\n"
                              "Scores: (#C #S #D #I) 5 0 1 1\n"
                              "REF:  今 天 天 气  很 好 ***\n"
                              "HYP:  今 天 天 *** 很 好 啊\n"
                              "Eval:          D         I\n\n")


@pytest.mark.parametrize("text,norm,expected", [
    ("Hello, World!", "basic", "hello world"),
    ("don’t  STOP", "basic", "don't stop"),
    ("'quoted' rock'n'roll", "basic", "quoted rock'n'roll"),
    ("今天，天气很好。", "basic", "今天 天气很好"),
    ("U.S.A. costs $5 + 10%", "basic", "u s a costs $5 + 10"),
    ("He won't pay twenty five dollars.", "whisper", "he will not pay $25"),
    ("Um, the colour [noise]", "whisper", "the color"),
    ("  Keep, THIS\tas is ", "none", "Keep, THIS as is"),
    ("cafe\u0301 cre\u0300me's", "basic", "café crème's"),         # decomposed: the same words as composed
    ("\u1112\u1161\u11ab\u1100\u116e\u11a8", "basic", "한국"),     # Hangul jamo: the syllables
    ("İstanbul I\u0307zmir", "basic", "istanbul izmir"),  # not "i" and a combining dot
    ("ＡＢＣ ﬁne", "basic", "abc fine"),                             # fullwidth and ligature forms
    ("don\0t stop", "basic", "don t stop"),   # a NUL of the text was taken for an in-word apostrophe: "don't"
])
def test_normalise(text, norm, expected):
    assert normalise(text, norm) == expected


def test_whisper_norm_changes_wer():
    refs, hyps = {"u": "He won't pay twenty five dollars."}, {"u": "he will not pay $25"}
    assert score(refs, hyps, "wer", norm="whisper")[0].value == 0
    assert score(refs, hyps, "wer", norm="basic")[0].value > 0
    assert score(refs, hyps, "wer", norm="whisper")[0].details["normaliser"].startswith("whisper-normalizer ")
    with pytest.raises(ScoreError, match="unknown normaliser"):
        score(refs, hyps, "wer", norm="lower")


def test_bleu_matches_sacrebleu_and_uses_zh_for_chinese():
    refs = {"a": "The cat is on the mat.", "b": "There is a dog in the garden today."}
    hyps = {"a": "The cat sat on the mat.", "b": "A dog is in the garden today."}
    r, _ = score(refs, hyps, "bleu")
    h, rf = list(hyps.values()), [list(refs.values())]
    assert r.details["tokenize"] == "13a" and r.norm == "none"
    assert r.value == pytest.approx(sacrebleu.corpus_bleu(h, rf).score)
    assert r.details["chrf"] == pytest.approx(sacrebleu.corpus_chrf(h, rf).score)

    refs = {"a": "我今天去公园散步。", "b": "他们在图书馆看书。"}
    hyps = {"a": "我今天去公园走路。", "b": "他们在图书馆读书。"}
    r, _ = score(refs, hyps, "bleu")
    h, rf = list(hyps.values()), [list(refs.values())]
    assert r.details["tokenize"] == "zh" and "tok:zh" in r.details["signature"]
    assert r.value == pytest.approx(sacrebleu.corpus_bleu(h, rf, tokenize="zh").score)
    assert r.value != pytest.approx(sacrebleu.corpus_bleu(h, rf, tokenize="13a").score)
    assert score(refs, hyps, "bleu", bleu_tokenize="char")[0].details["tokenize"] == "char"
    with pytest.raises(ScoreError, match="unknown BLEU tokenizer"):
        score(refs, hyps, "bleu", bleu_tokenize="zh-fancy")


@pytest.mark.parametrize("refs,hyps", [
    ({"a": "きょうはこうえんにいきます", "b": "ほんをよむのがすきです"},      # kana
     {"a": "きょうはこうえんにいきました", "b": "ほんをよむのがすきです"}),
    ({"a": "วันนี้อากาศดีมาก", "b": "ฉันชอบอ่านหนังสือ"},                    # Thai
     {"a": "วันนี้อากาศดี", "b": "ฉันชอบอ่านหนังสือ"}),
])
def test_bleu_of_a_script_without_spaces_is_on_characters(refs, hyps):
    """Japanese kana and Thai went to 13a: each sentence one word, a near-perfect translation BLEU 0.00."""
    r, _ = score(refs, hyps, "bleu")
    h, rf = list(hyps.values()), [list(refs.values())]
    assert r.details["tokenize"] == "char"
    assert r.value == pytest.approx(sacrebleu.corpus_bleu(h, rf, tokenize="char").score) and r.value > 50


def test_wer_over_unspaced_chinese_warns_to_use_cer(caplog):
    refs = {"a": "我今天去公园散步", "b": "他们在图书馆看书"}
    hyps = {"a": "我今天去公园走步", "b": "他们在图书馆看书"}
    with caplog.at_level("WARNING"):
        assert score(refs, hyps, "wer")[0].value == 50.0   # one wrong character: one wrong "word" of two
    assert "CER is the usual measure" in caplog.text
    caplog.clear()
    score({"a": "the cat"}, {"a": "the cat"}, "wer")
    score({"a": "Café, naïve"}, {"a": "cafe naive"}, "wer", norm="whisper")
    assert caplog.text == ""
    with caplog.at_level("WARNING"):   # whisper's English normaliser turned "क्या हाल है" into "कय ह ल ह"
        score({"a": "क्या हाल है"}, {"a": "क्या हाल है"}, "wer", norm="whisper")
    assert "the whisper normaliser is English-only" in caplog.text


def test_accuracy_and_per_class():
    refs = {"1": "calendar", "2": "iot", "3": "iot", "4": "weather"}
    hyps = {"1": "Calendar.", "2": "iot", "3": "music"}  # 4 is missing: wrong
    r, lines = score(refs, hyps, "acc")
    assert r.counts == {"correct": 2} and r.value == 50.0
    assert r.details["per_class"] == {"calendar": [1, 1], "iot": [1, 2], "weather": [0, 1]}
    assert lines[2] == "3\twrong\tiot\tmusic\n" and lines[3] == "4\twrong,missing\tweather\t\n"
    assert r.to_markdown_row("slurp/slu") == "|slurp/slu|4|50.0|"
    # a missing hypothesis is wrong even where the label is empty (it matched the empty string)
    r, lines = score({"1": "", "2": "iot"}, {"2": "iot"}, "acc")
    assert r.value == 50.0 and lines[0] == "1\twrong,missing\t\t\n"


def test_missing_keys_are_deletions_and_listed(tmp_path):
    ref = write(tmp_path / "ref", [f"u{i}\tone two" for i in range(8)])
    hyp = write(tmp_path / "hyp", ["u0\tone two", "u1\tone", "zz\tstray"])
    with pytest.raises(ScoreError, match=re.escape(f"{hyp}: no hypothesis for 6 of the 8 references in {ref} (u2, "
                                                   "u3, u4, ...): did its decode stop partway?")):
        score_files(ref, hyp, "wer", out_dir=tmp_path / "out")   # by default: not a result
    assert not (tmp_path / "out").exists()
    r = score_files(ref, hyp, "wer", out_dir=tmp_path / "out", missing="empty")
    # u2..u7 missing: 6 x 2 reference words deleted, plus "two" deleted in u1
    assert r.counts == {"wrd": 16, "corr": 3, "sub": 0, "del": 13, "ins": 0, "s_err": 7}
    assert r.missing_keys == [f"u{i}" for i in range(2, 8)] and r.extra_keys == ["zz"]
    out = tmp_path / "out"
    assert (out / "missing_keys.txt").read_text() == "".join(f"u{i}\n" for i in range(2, 8))
    assert (out / "extra_keys.txt").read_text() == "zz\n"
    assert json.loads((out / "score.json").read_text())["missing_keys"] == r.missing_keys
    summary = (out / "result.txt").read_text()
    assert "hypotheses: missing 6 (u2, u3, u4, u5, u6, ...), extra 1 (zz), empty 0, looping 0" in summary
    assert "%WER 81.25 [ 13 / 16, 0 ins, 13 del, 0 sub ]" in summary
    assert "id: u7\nFlags: missing\n" in (out / "alignment.txt").read_text()
    # BLEU scores a missing key as an empty hypothesis
    b = score({"a": "a b c d", "b": "e f g h"}, {"a": "a b c d"}, "bleu")[0]
    assert b.value == pytest.approx(sacrebleu.corpus_bleu(["a b c d", ""], [["a b c d", "e f g h"]]).score)


def test_hypotheses_from_another_test_set_are_an_error():
    with pytest.raises(ScoreError, match="no hypothesis key is in the references"):
        score({"a": "x"}, {"b": "x"}, "wer")


def test_references_without_a_word_are_refused(tmp_path, capsys):
    with pytest.raises(ScoreError, match="every reference is empty after the 'basic' normaliser: a WER over no words"):
        score({"a": "", "b": "?!"}, {"a": "one two", "b": "three"}, "wer")
    assert score({"a": "", "b": "hi"}, {"a": "one", "b": "hi"}, "wer")[0].value == 100.0  # some empty: fine
    ref, hyp = write(tmp_path / "ref.trn", ["a\t..."]), write(tmp_path / "hyp.trn", ["a\tone"])
    assert tasu_score(ref, hyp, "cer") == 1
    assert capsys.readouterr().err.startswith(f"tasu score: error: {hyp} against {ref}: every reference is empty")
    assert not (tmp_path / "score.json").exists()
    # BLEU too: sacrebleu gave 0.00 over references without a word, exit 0
    with pytest.raises(ScoreError, match="every reference is empty: a BLEU over no reference words means nothing"):
        score({"a": "", "b": " "}, {"a": "a", "b": "b"}, "bleu")
    assert score({"a": "", "b": "b c d e"}, {"a": "a", "b": "b c d e"}, "bleu")[0].value > 0


def test_empty_and_looping_counts():
    refs = {"e": "hello there", "k": "okay", "s": "i am sorry", "l": "yes", "n": "no no no no", "f": "fine"}
    hyps = {"e": "", "k": "okay okay okay okay",  # a 1-gram four times: looping
            "s": "i am sorry i am sorry i am sorry i am sorry",  # a 3-gram four times
            "l": "yes I would like to say that yes it is",  # >= 3x the reference and >= 10 words
            "n": "no no no no",  # the reference repeats too: not looping
            "f": "fine ,"}  # not empty: "fine" remains
    r, _ = score(refs, hyps, "wer")
    assert (r.empty, r.looping) == (1, 3)
    assert score({"a": "hello"}, {"a": "..."}, "wer")[0].empty == 1  # empty after normalisation
    assert is_looping("哈哈哈哈", "你好") and not is_looping("哈哈哈哈", "哈哈哈哈")
    assert not is_looping("the cat sat on the mat".split(), "the cat sat".split())


@pytest.mark.parametrize("content,line,message", [
    (b"u1\thello\n\nu2\tworld\n", 2, "expected 'key<TAB>text'"),
    (b"u1\thello\nutt 2\tworld\n", 2, "expected 'key<TAB>text'"),
    (b"u1\thello\nu1\tagain\n", 2, "duplicate key 'u1'"),
    (b"u1\thello\nu2\t\xff\xfe\n", 2, "not UTF-8"),
    (b"u1\thello world\ru2\tfoo bar\r\n", 1, "a carriage return inside the line"),   # old Mac line ends
    (b"the cat (u1)\nhello there (u1)\n", 2, "duplicate key 'u1' (the file was read as sclite trn lines"),
    (b"u1\t(noise)\nu2\t(noise)\n", 2, "duplicate key 'noise' (the file was read as sclite trn lines, 'text (id)', "
                                       "as every line ends in '(...)')"),   # (which key? it said nothing of trn)
])
def test_malformed_lines(tmp_path, content, line, message):
    path = tmp_path / "hyp"
    path.write_bytes(content)
    with pytest.raises(ScoreError) as e:
        read_text_file(path)
    assert str(e.value).startswith(f"{path}:{line}: ") and message in str(e.value)


def test_keys_in_another_unicode_form_are_named_as_such(tmp_path):
    """café composed in one file and decomposed in the other print alike: the message said "no hypothesis
    for ... (café): did its decode stop partway?" of a key the hypothesis file visibly held."""
    ref = write(tmp_path / "ref", ["u1\tone two", "caf\u00e9\tthree"])
    hyp = write(tmp_path / "hyp", ["u1\tone two", "cafe\u0301\tthree"])
    with pytest.raises(ScoreError, match=re.escape("(café): 'caf\\xe9' is 'cafe\\u0301' of the other file in another "
                                                   "Unicode form (NFC, NFD: printed alike): write the keys of both "
                                                   "files in one form")):
        score_files(ref, hyp, "wer", out_dir=tmp_path / "out")
    with pytest.raises(ScoreError, match=re.escape("no hypothesis key is in the references (first: 'cafe\u0301'): "
                                                   "'cafe\\u0301' is 'caf\\xe9' of the other file")):
        score({"caf\u00e9": "three"}, {"cafe\u0301": "three"}, "wer")


def test_key_only_lines_and_kaldi_text(tmp_path):
    path = tmp_path / "text"
    path.write_bytes("\ufeffu1 hello world\nu2\nu3\tkey\twith tab\n".encode())
    assert read_text_file(path) == {"u1": "hello world", "u2": "", "u3": "key\twith tab"}
    path.write_bytes("u1 hello\n\ufeffu2 world\n".encode())   # two files joined: the second's BOM
    assert read_text_file(path) == {"u1": "hello", "u2": "world"}


def test_sclite_trn_files_are_read_by_their_ids(tmp_path):
    """ESPnet writes ``text (id)``: read as a Kaldi text, the first word was the key and the id a
    correct word (3 errors over 12 words instead of 9), with exit 0."""
    ref = write(tmp_path / "ref.trn", ["the cat sat (spk1-utt1)", "hello there world (spk1-utt2)", "(spk1-utt3)"])
    hyp = write(tmp_path / "hyp.trn", ["the cat sad (spk1-utt1)", "hello their word (spk1-utt2)",
                                       "this is (spk1-utt3)"])
    assert read_text_file(ref) == {"spk1-utt1": "the cat sat", "spk1-utt2": "hello there world", "spk1-utt3": ""}
    r = score_files(ref, hyp, "wer", out_dir=tmp_path / "o")
    assert (r.counts["wrd"], r.counts["sub"], r.counts["ins"]) == (6, 3, 2)
    # one line without its id, or any tab: not trn, each line's first word is its key as before
    mixed = write(tmp_path / "mixed", ["u1 hello (laughs)", "u2 there"])
    assert read_text_file(mixed) == {"u1": "hello (laughs)", "u2": "there"}
    tabbed = write(tmp_path / "tabbed", ["u1\thello (laughs)", "u2\tthere (a)"])
    assert read_text_file(tabbed) == {"u1": "hello (laughs)", "u2": "there (a)"}
    # ESPnet's scoring pastes text and id with a tab: read as trn (it was refused, or one-word labels became keys)
    pasted = write(tmp_path / "pasted", ["turn on the lights\t(spk1-u1)", "weather\t(spk1-u2)", "\t(spk1-u3)"])
    assert read_text_file(pasted) == {"spk1-u1": "turn on the lights", "spk1-u2": "weather", "spk1-u3": ""}
    two_tabs = write(tmp_path / "two_tabs", ["u1\thello\t(a)", "u2\tthere\t(b)"])
    assert list(read_text_file(two_tabs)) == ["u1", "u2"]   # key<TAB>text, a tab in the text
    # a Kaldi text whose every line ends in a bracketed word reads as trn: where the keys then disagree,
    # the error names the layout each file was read as (it said only that the files do not belong together)
    two = write(tmp_path / "two", ["u1 call mom (home)", "u2 call dad (work)"])
    tab = write(tmp_path / "tab", ["u1\tcall mom", "u2\tcall dad"])
    with pytest.raises(ScoreError, match=r"do not belong together \(read as key text and sclite trn lines\)"):
        score_files(two, tab, "wer", out_dir=tmp_path / "o2")


def test_score_never_writes_over_its_inputs_nor_another_metric(tmp_path, capsys):
    """A hypothesis file named result.txt was replaced by the summary (which still named it); a BLEU
    scored into the directory of a WER replaced its score.json, and the WER left the tables."""
    d = tmp_path / "decode"
    ref = write(tmp_path / "ref", ["u1\thello world"])
    d.mkdir()
    hyp = write(d / "result.txt", ["u1\thello word"])
    assert tasu_score(ref, hyp, "wer") == 1
    assert capsys.readouterr().err == (f"tasu score: error: {hyp}: score would write its result.txt over it: "
                                       "give --out another directory\n")
    assert hyp.read_text() == "u1\thello word\n" and sorted(p.name for p in d.iterdir()) == ["result.txt"]
    assert tasu_score(hyp, ref, "wer", "--out", str(d)) == 1   # the reference too
    capsys.readouterr()
    hyp = write(d / "hyp.trn", ["u1\thello word"])
    assert tasu_score(ref, hyp, "wer", "--out", str(tmp_path / "o")) == 0
    assert tasu_score(ref, hyp, "bleu", "--out", str(tmp_path / "o")) == 1
    assert capsys.readouterr().err.endswith(f"{tmp_path / 'o' / 'score.json'} is a score of metric wer: scoring "
                                            "bleu there would replace it; give --out another directory (or remove "
                                            "it)\n")
    assert json.loads((tmp_path / "o" / "score.json").read_text())["metric"] == "wer"
    assert tasu_score(ref, hyp, "wer", "--out", str(tmp_path / "o"), "--norm", "none") == 0   # the same metric: again
    assert tasu_score(ref, hyp, "wer", "--bleu-tokenize", "zh", "--out", str(tmp_path / "o")) == 1
    assert "a BLEU tokenizer (zh) is for --metric bleu, not wer" in capsys.readouterr().err


def test_alignment_file_and_outputs(tmp_path):
    ref = write(tmp_path / "ref", ["u1\tthe cat sat on the mat", "u2\tgood morning", "u3\thi"])
    hyp = write(tmp_path / "hyp", ["u1\tthe cat sat on mat mat too", "u2"])
    old = os.umask(0o022)
    try:
        score_files(ref, hyp, "wer", missing="empty")
    finally:
        os.umask(old)
    assert (tmp_path / "alignment.txt").read_text() == (
        "id: u1\n"
        "Scores: (#C #S #D #I) 5 1 0 1\n"
        "REF:  the cat sat on the mat ***\n"
        "HYP:  the cat sat on mat mat too\n"
        "Eval:                S       I\n"
        "\n"
        "id: u2\n"
        "Flags: empty\n"
        "Scores: (#C #S #D #I) 0 0 2 0\n"
        "REF:  good morning\n"
        "HYP:  ***  ***\n"
        "Eval: D    D\n"
        "\n"
        "id: u3\n"
        "Flags: missing\n"
        "Scores: (#C #S #D #I) 0 0 1 0\n"
        "REF:  hi\n"
        "HYP:  ***\n"
        "Eval: D\n"
        "\n")
    written = {"alignment.txt", "result.txt", "score.json", "missing_keys.txt", "extra_keys.txt"}
    assert set(os.listdir(tmp_path)) == written | {"ref", "hyp"}  # no temporary files left behind
    assert stat.S_IMODE((tmp_path / "score.json").stat().st_mode) == 0o644
    lines = (tmp_path / "result.txt").read_text().splitlines()
    assert lines[3:7] == ["", "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|",
                          "|---|---|---|---|---|---|---|---|---|",
                          f"|{tmp_path.name}|3|9|55.6|11.1|33.3|11.1|55.6|100.0|"]


def test_run_score(tmp_path, capsys):
    ref = write(tmp_path / "ref", ["u1\thello world"])
    hyp = write(tmp_path / "hyp", ["u1\thello word"])
    assert tasu_score(ref, hyp, "wer", "--out", str(tmp_path / "o")) == 0
    assert "%WER 50.00 [ 1 / 2, 0 ins, 0 del, 1 sub ]" in capsys.readouterr().out
    two = write(tmp_path / "ref2", ["u1\thello world", "u2\tgood morning"])
    assert tasu_score(two, hyp, "wer") == 1   # a decode that stopped partway is not a result ...
    assert capsys.readouterr().err == (f"tasu score: error: {hyp}: no hypothesis for 1 of the 2 references in {two} "
                                       "(u2): did its decode stop partway? Run it again to finish it, or score them "
                                       "as empty hypotheses (--missing empty)\n")
    assert tasu_score(two, hyp, "wer", "--missing", "empty") == 0   # ... unless asked
    assert "%WER 75.00 [ 3 / 4, 0 ins, 2 del, 1 sub ]" in capsys.readouterr().out
    write(hyp, ["u1\thello", "u1\tagain"])
    assert tasu_score(ref, hyp, "wer") == 1
    assert capsys.readouterr().err == f"tasu score: error: {hyp}:2: duplicate key 'u1'\n"


def test_an_output_path_in_the_way_stops_scoring_before_anything_is_written(tmp_path, capsys):
    """--out naming a file said only 'File exists'; a directory named score.json stopped the writes after
    alignment.txt and result.txt had replaced an earlier run's, beside its score.json."""
    ref = write(tmp_path / "ref", ["u1\thello world"])
    hyp = write(tmp_path / "hyp", ["u1\thello word"])
    (tmp_path / "file").write_text("x")
    assert tasu_score(ref, hyp, "wer", "--out", str(tmp_path / "file")) == 1
    assert capsys.readouterr().err == (f"tasu score: error: {tmp_path / 'file'}: not a directory (score writes "
                                       "alignment.txt, missing_keys.txt, extra_keys.txt, result.txt, score.json "
                                       "into it)\n")
    out = tmp_path / "o"
    (out / "score.json").mkdir(parents=True)
    (out / "result.txt").write_text("an earlier run's\n")
    assert tasu_score(ref, hyp, "wer", "--out", str(out)) == 1
    assert f"{out / 'score.json'} is a directory" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["result.txt", "score.json"]
    assert (out / "result.txt").read_text() == "an earlier run's\n"


def test_score_errors_are_reported_by_the_command_once(tmp_path, capsys):
    """A file that cannot be read is one line in the command's format (not Python's ``[Errno 2] ...``),
    and ``--debug`` shows the traceback: run_score raises, tasu.cli.main reports."""
    ref = write(tmp_path / "ref", ["u1\thello world"])
    assert tasu_score(ref, tmp_path / "missing", "wer") == 1
    assert capsys.readouterr().err == f"tasu score: error: {tmp_path / 'missing'}: No such file or directory\n"
    with pytest.raises(FileNotFoundError):
        tasu_score(ref, tmp_path / "missing", "wer", "--debug")
    write(tmp_path / "hyp", ["u1\thello", "u1\tagain"])
    with pytest.raises(ScoreError, match="duplicate key"):
        tasu_score(ref, tmp_path / "hyp", "wer", "--debug")


def test_an_empty_hypothesis_file_is_refused(tmp_path, capsys):
    (tmp_path / "ref.trn").write_text("a\thello\n")
    (tmp_path / "hyp.trn").write_text("")
    with pytest.raises(ScoreError, match="hyp.trn: no hypotheses"):
        score_files(tmp_path / "ref.trn", tmp_path / "hyp.trn", "wer")
    assert tasu_score(tmp_path / "ref.trn", tmp_path / "hyp.trn", "wer") == 1
    assert capsys.readouterr().err.startswith(f"tasu score: error: {tmp_path / 'hyp.trn'}: no hypotheses")
    assert not (tmp_path / "score.json").exists()


def test_an_empty_reference_file_is_refused_by_name(tmp_path, capsys):
    (tmp_path / "ref.trn").write_text("")
    (tmp_path / "hyp.trn").write_text("a\thello\n")
    assert tasu_score(tmp_path / "ref.trn", tmp_path / "hyp.trn", "wer") == 1
    assert capsys.readouterr().err == (f"tasu score: error: {tmp_path / 'ref.trn'}: no references (the file is "
                                       "empty): nothing to score against\n")
    assert not (tmp_path / "score.json").exists()
