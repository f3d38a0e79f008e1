"""Each corpus recipe's ``local/data.sh`` on the layouts its corpus ships in, and on the damage a
download or an edit leaves: no models and no training, seconds a case.

What a user must get: every utterance that should be there; anything left out counted in one line;
bad input stopped with one line naming the file (and line), exit 1, never a traceback.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from recipe_fixtures import (copy_recipe, write_commonvoice, write_covost, write_librispeech, write_slurp,
                             write_template_corpus)
from test_recipes import lines, sh


def data_sh(recipe: Path, env: dict, *options: str, ok: bool = True):
    return sh(recipe, "local/data.sh", *options, env=env, ok=ok)


def one_line_error(out, *parts: str) -> None:
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr and all(p in last for p in parts), out.stderr


def tables(datadir: Path) -> dict[str, str]:
    return {str(p.relative_to(datadir)): p.read_text(encoding="utf-8") for p in sorted(datadir.glob("*/*"))
            if p.name != ".done"}


# --- CoVoST 2 ----------------------------------------------------------------------------------------

@pytest.fixture
def covost(tmp_path):
    tsv_dir, cv = write_covost(tmp_path / "corpora")
    return copy_recipe("covost", tmp_path), {"COVOST2": str(tsv_dir), "COMMONVOICE": str(cv)}, tsv_dir, cv


def edit_rows(tsv: Path, edit) -> None:
    """Rewrite a CoVoST table as its tools write it (tabs, backslash escapes); ``edit(rows)`` in place."""
    with open(tsv, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\"))
    edit(rows)
    with open(tsv, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\").writerows(rows)


def test_covost_release_tables_take_speakers_from_common_voice_and_train_covost_into_train(covost):
    recipe, env, tsv_dir, cv = covost
    edit_rows(tsv_dir / "covost_v2.en_de.tsv", lambda rows: rows[9].__setitem__(2, 'Er sagte: "Licht an"'))
    # Common Voice's own table has no escape character: a sentence ending in a backslash is just that
    # (read with CoVoST's escapes, it joined the next field and the recipe stopped on a short row)
    validated = (cv / "validated.tsv").read_text(encoding="utf-8").splitlines()
    at = validated[0].split("\t").index("sentence")
    row = validated[3].split("\t")
    row[at] += "\\"
    validated[3] = "\t".join(row)
    (cv / "validated.tsv").write_text("\n".join(validated) + "\n", encoding="utf-8")
    data_sh(recipe, env)
    train = recipe / "data" / "train"
    assert len(lines(train / "text")) == 6   # the train_covost clip (common_voice_en_1001) included
    assert lines(train / "utt2spk")[1] == f"common_voice_en_1001 {1:064x}"   # from validated.tsv
    assert lines(recipe / "data" / "test" / "translation_de")[0] == 'common_voice_en_1008 Er sagte: "Licht an"'


def test_covost_split_script_output_gives_the_same_data_dirs(tmp_path, covost):
    recipe, env, _, _ = covost
    data_sh(recipe, env)
    tsv_dir, cv = write_covost(tmp_path / "split", layout="splits")
    split = copy_recipe("covost", tmp_path / "split_recipe")
    data_sh(split, {"COVOST2": str(tsv_dir), "COMMONVOICE": str(cv)})
    release = {name: text.replace(str(tmp_path / "corpora"), "<root>") for name, text in tables(recipe / "data").items()}
    assert {name: text.replace(str(tmp_path / "split"), "<root>") for name, text in tables(split / "data").items()} == release
    assert set(release) >= {"train/wav.scp", "train/text", "train/utt2spk", "train/translation_zh", "dev/translation_de"}


def test_covost_counts_what_it_leaves_out(covost):
    recipe, env, tsv_dir, cv = covost
    def damage(rows):
        rows[3][3] = "train_unused"          # a split the recipe does not read
        rows[4][2] = " "                     # no translation
    edit_rows(tsv_dir / "covost_v2.en_zh-CN.tsv", damage)
    (cv / "clips" / "common_voice_en_1005.mp3").unlink()
    edit_rows(cv / "validated.tsv", lambda rows: rows.pop(5))   # common_voice_en_1004: no speaker
    out = data_sh(recipe, env)
    assert f"{tsv_dir}/covost_v2.en_zh-CN.tsv:5: empty sentence or translation, skipped" in out.stderr
    assert "1 tsv rows of split 'train_unused' (not train, train_covost, dev or test): skipped" in out.stderr
    assert f"1 clips named by the tsv files are not in {cv}/clips: skipped" in out.stderr
    assert f"2 tsv rows name clips that are not in {cv}/validated.tsv" in out.stderr   # one a pair
    utts = [x.split()[0] for x in lines(recipe / "data" / "train" / "text")]
    assert utts == [f"common_voice_en_{n}" for n in (1000, 1001, 1002, 1003)]
    assert len(lines(recipe / "data" / "train" / "translation_zh")) == 2   # zh lacks 1002-1005
    assert len(lines(recipe / "data" / "train" / "translation_de")) == 4


@pytest.mark.parametrize("damage,error", [
    (lambda tsv, cv: (cv / "validated.tsv").unlink(),
     "validated.tsv: no such file: the release's covost_v2.<pair>.tsv names no speaker"),
    (lambda tsv, cv: [(tsv / "covost_v2.en_de.tsv").unlink()],
     "covost_v2.en_de.tsv: no such file, nor"),
    (lambda tsv, cv: (tsv / "covost_v2.en_de.tsv").write_bytes(
        (tsv / "covost_v2.en_de.tsv").read_bytes().replace(b"\ttrain\n", b"\n", 1)),
     "covost_v2.en_de.tsv:2: 3 tab-separated fields where the header has 4"),
    (lambda tsv, cv: (tsv / "covost_v2.en_de.tsv").write_bytes(
        (tsv / "covost_v2.en_de.tsv").read_bytes().replace("Küche".encode(), "K\xfcche".encode("latin-1"), 1)),
     "covost_v2.en_de.tsv:2: encoding: not UTF-8"),
    (lambda tsv, cv: (tsv / "covost_v2.en_de.tsv").write_text("path\tsentence\tsplit\n", encoding="utf-8"),
     "covost_v2.en_de.tsv:1: no column translation in the header (path sentence split)"),
])
def test_covost_bad_tables_stop_in_one_line(covost, damage, error):
    recipe, env, tsv_dir, cv = covost
    damage(tsv_dir, cv)
    one_line_error(data_sh(recipe, env, ok=False), error)
    assert not (recipe / "data" / "train" / ".done").exists()


@pytest.mark.parametrize("pairs,error", [
    ("ende", "--pairs: 'ende' is not <source>_<target>, e.g. en_de or en_zh-CN"),
    ("en_zh-CN,en_zh-TW", "--pairs: en_zh-CN and en_zh-TW would both write translation_zh"),
])
def test_covost_pairs_that_cannot_make_label_files_are_one_line(covost, pairs, error):
    recipe, env, _, _ = covost
    one_line_error(data_sh(recipe, env, "--pairs", pairs, ok=False), error)


def test_covost_a_clip_repeated_or_in_two_sets_is_said_and_two_translations_refused(covost):
    recipe, env, tsv_dir, _ = covost
    tsv = tsv_dir / "covost_v2.en_de.tsv"
    edit_rows(tsv, lambda rows: rows.extend([rows[1], rows[1][:3] + ["test"]]))   # train clip: again, and in test
    out = data_sh(recipe, env)
    assert "1 tsv rows repeat a clip of their pair word for word: kept once" in out.stderr
    assert f"1 clips are in two sets, kept in both (e.g. common_voice_en_1000.mp3: train at {tsv}:2, test at" in out.stderr
    shutil.rmtree(recipe / "data")
    edit_rows(tsv, lambda rows: rows.append(rows[1][:2] + ["Etwas anderes"] + rows[1][3:]))
    one_line_error(data_sh(recipe, env, ok=False), f"{tsv}:", "path: common_voice_en_1000.mp3 again, with another "
                   f"sentence or translation than at {tsv}:2")


def test_covost_two_pairs_must_agree_on_a_clip_s_transcript_and_set(covost):
    """Each pair was checked on its own: the second pair's transcript replaced the first's in text (the
    GT of both tasks), and a clip in train for one pair and in test for the other was not said."""
    recipe, env, tsv_dir, _ = covost
    zh, de = tsv_dir / "covost_v2.en_zh-CN.tsv", tsv_dir / "covost_v2.en_de.tsv"
    edit_rows(de, lambda rows: rows[1].__setitem__(3, "test"))
    out = data_sh(recipe, env, "--pairs", "en_zh-CN,en_de")
    assert f"1 clips are in two sets, kept in both (e.g. common_voice_en_1000.mp3: train at {zh}:2, test at {de}:2)" \
        in out.stderr
    shutil.rmtree(recipe / "data")
    edit_rows(de, lambda rows: (rows[1].__setitem__(1, "Something else"), rows[1].__setitem__(3, "train")))
    one_line_error(data_sh(recipe, env, "--pairs", "en_zh-CN,en_de", ok=False),
                   f"{de}:2: path: common_voice_en_1000.mp3 again, with another sentence than at {zh}:2")


def test_covost_an_unknown_mp3_reader_is_one_line(covost):
    recipe, env, _, _ = covost
    one_line_error(data_sh(recipe, env, "--mp3_reader", "nope", ok=False),
                   "ERROR: --mp3_reader must be auto, soundfile or ffmpeg, not 'nope'")


# --- Common Voice ------------------------------------------------------------------------------------

@pytest.fixture
def commonvoice(tmp_path):
    corpus = write_commonvoice(tmp_path / "corpora")
    return copy_recipe("commonvoice", tmp_path), {"COMMONVOICE": str(corpus)}, corpus


@pytest.mark.parametrize("damage,error", [
    (lambda cv: (cv / "dev.tsv").unlink(), "dev.tsv: cannot read it (No such file or directory)"),
    (lambda cv: (cv / "test.tsv").open("a").write("abc\n"), "test.tsv:4: 1 tab-separated fields where the header has 13"),
    (lambda cv: (cv / "train.tsv").write_bytes((cv / "train.tsv").read_bytes().replace(b"Turn on", b"Turn \xf6n", 1)),
     "train.tsv:2: encoding: not UTF-8"),
])
def test_commonvoice_bad_tables_stop_in_one_line(commonvoice, damage, error):
    recipe, env, corpus = commonvoice
    damage(corpus)
    one_line_error(data_sh(recipe, env, ok=False), error)


def edit_tsv(tsv: Path, old: str, new: str) -> None:
    text = tsv.read_text(encoding="utf-8")
    assert old in text
    tsv.write_text(text.replace(old, new, 1), encoding="utf-8")


def rename_clip(cv: Path, old: str, new: str) -> None:
    (cv / "clips" / old).rename(cv / "clips" / new)
    edit_tsv(cv / "train.tsv", old, new)


def repeat_first_row(cv: Path, old: str, new: str) -> None:
    rows = (cv / "train.tsv").read_text(encoding="utf-8").splitlines()
    assert old in rows[1]
    (cv / "train.tsv").write_text("\n".join(rows + [rows[1].replace(old, new)]) + "\n", encoding="utf-8")


@pytest.mark.parametrize("damage,error", [
    (lambda cv: repeat_first_row(cv, "Turn on", "Turn off"),
     "train.tsv:8: path: common_voice_en_1000.mp3 again, with another sentence or client_id than on line 2"),
    (lambda cv: repeat_first_row(cv, f"{0:064x}", f"{9:064x}"), "train.tsv:8: path: common_voice_en_1000.mp3 again"),
    (lambda cv: edit_tsv(cv / "train.tsv", "Turn on", "Turn\ton"), "train.tsv:2: 14 tab-separated fields where the "
                                                                    "header has 13"),
    (lambda cv: edit_tsv(cv / "train.tsv", "sentence_domain", "sentence"), "train.tsv:1: the header names sentence twice"),
    (lambda cv: rename_clip(cv, "common_voice_en_1001.mp3", "a;touch${IFS}PWNED;#|"),
     ("train.tsv:3: path: ", "clips/a;touch${IFS}PWNED;#|: a wav.scp entry ending in '|' is a shell command")),
    (lambda cv: edit_tsv(cv / "train.tsv", "common_voice_en_1001.mp3", "/etc/passwd"),
     "train.tsv:3: path: '/etc/passwd': not a file of clips/"),
    (lambda cv: edit_tsv(cv / "train.tsv", f"{1:064x}\tcommon_voice_en_1001", "abc def\tcommon_voice_en_1001"),
     ("train.tsv: ", "data/train/utt2spk: utterance 'common_voice_en_1001': speaker id 'abc def' is not one word")),
])
def test_commonvoice_rows_that_would_make_a_wrong_data_dir_stop_it(commonvoice, damage, error):
    """Each of these used to give exit 0: a shifted or ambiguous row silently wrong, a file name run
    as a command by stage 2, or a data dir marked done that stage 2 then refused, naming its own file."""
    recipe, env, corpus = commonvoice
    damage(corpus)
    one_line_error(data_sh(recipe, env, ok=False), *error if isinstance(error, tuple) else (error,))
    assert not (recipe / "data" / "train" / ".done").exists() and not (recipe / "PWNED").exists()


def test_commonvoice_refuses_data_dirs_made_from_another_release(tmp_path, commonvoice):
    recipe, env, corpus = commonvoice
    data_sh(recipe, env)
    other = write_commonvoice(tmp_path / "other")
    one_line_error(data_sh(recipe, {"COMMONVOICE": str(other)}, ok=False),
                   f"ERROR: data/train was made from {corpus}, not {other}: remove it (rm -r data/train)")
    (recipe / "data" / "train" / ".done").write_text("")   # a marker of an older recipe: trusted
    (recipe / "data" / "dev" / ".done").write_text("")
    (recipe / "data" / "test" / ".done").write_text("")
    assert "already prepared" in data_sh(recipe, {"COMMONVOICE": str(other)}).stderr


def test_commonvoice_says_what_it_leaves_out(commonvoice):
    recipe, env, corpus = commonvoice
    train = (corpus / "train.tsv").read_text(encoding="utf-8").splitlines()
    (corpus / "train.tsv").write_text("\n".join(train + train[-1:]) + "\n", encoding="utf-8")
    (corpus / "clips" / "common_voice_en_1001.mp3").unlink()
    out = data_sh(recipe, env)
    assert f"{corpus}/train.tsv: 1 clips are not in {corpus}/clips: skipped" in out.stderr
    assert f"{corpus}/train.tsv: 1 rows repeat a clip named before, word for word: kept once" in out.stderr
    assert len(lines(recipe / "data" / "train" / "text")) == 5
    assert "WARNING" not in out.stderr


def test_commonvoice_says_when_sets_share_clips(commonvoice):
    """A train.tsv cut from validated.tsv holds the test clips: the data is made, and the leak said."""
    recipe, env, corpus = commonvoice
    test_rows = (corpus / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]
    with open(corpus / "train.tsv", "a", encoding="utf-8") as f:
        f.write("\n".join(test_rows) + "\n")
    out = data_sh(recipe, env)
    first = sorted(line.split("\t")[1].removesuffix(".mp3") for line in test_rows)[0]
    assert (f"WARNING: {len(test_rows)} clips are in both data/train and data/test (e.g. {first}): scores on one "
            "are of audio the other trains or tunes on") in out.stderr
    assert out.stderr.count("WARNING") == 1


# --- SLURP -------------------------------------------------------------------------------------------

@pytest.fixture
def slurp(tmp_path):
    corpus = write_slurp(tmp_path / "corpora")
    return copy_recipe("slurp", tmp_path), {"SLURP": str(corpus)}, corpus / "dataset" / "slurp"


def edit_first_record(jsonl: Path, edit) -> None:
    records = [json.loads(x) for x in lines(jsonl)]
    edit(records[0])
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


@pytest.mark.parametrize("damage,error", [
    (lambda meta: (meta / "train_synthetic.jsonl").unlink(),
     "train_synthetic.jsonl: no such file (--use_synth false leaves the synthetic recordings out)"),
    (lambda meta: (meta / "devel.jsonl").unlink(), "devel.jsonl: no such file"),
    (lambda meta: edit_first_record(meta / "test.jsonl", lambda r: r.pop("slurp_id")),
     "test.jsonl:1: not a SLURP record (KeyError('slurp_id'))"),
    (lambda meta: edit_first_record(meta / "test.jsonl", lambda r: r.update(sentence=" ")), "test.jsonl:1: sentence: empty"),
    (lambda meta: edit_first_record(meta / "test.jsonl", lambda r: r.update(sentence=None)), "test.jsonl:1: not a SLURP record"),
    (lambda meta: (meta / "test.jsonl").write_bytes(b"\n\xff\n"), "test.jsonl:2: not UTF-8"),
    (lambda meta: edit_first_record(meta / "test.jsonl", lambda r: r.update(scenario=None)),
     "test.jsonl:1: scenario: None is not a label"),
    (lambda meta: edit_first_record(meta / "test.jsonl", lambda r: r.update(intent="iot\nalarm")),
     "test.jsonl:1: intent: 'iot\\nalarm' is not a label"),
    (lambda meta: (meta / "test.jsonl").write_text((meta / "test.jsonl").read_text() + json.dumps(
        {**json.loads(lines(meta / "test.jsonl")[0]), "scenario": "alarm"}) + "\n"),
     "test.jsonl:3: recording audio-1490000005-headset.flac of slurp_id 4005 again, with other labels than at"),
])
def test_slurp_bad_metadata_stops_in_one_line(slurp, damage, error):
    recipe, env, meta = slurp
    damage(meta)
    one_line_error(data_sh(recipe, env, ok=False), error)
    assert not (recipe / "data" / "test" / ".done").exists()


def test_slurp_a_missing_audio_directory_or_a_recording_under_two_labels_stops_it(slurp, tmp_path):
    """Only slurp_synth/ extracted: data/train was made of the synthetic recordings and marked done;
    one recording under two slurp_ids with other labels became two utterances of one audio."""
    recipe, env, meta = slurp
    real = meta.parent.parent / "audio" / "slurp_real"
    real.rename(tmp_path / "away")
    one_line_error(data_sh(recipe, env, ok=False), f"{real}: no such directory, which train.jsonl's recordings are in")
    real.mkdir()
    one_line_error(data_sh(recipe, env, ok=False), f"none of the recordings {meta}/train.jsonl names is in {real}")
    real.rmdir()
    (tmp_path / "away").rename(real)
    assert not (recipe / "data" / "train").exists()
    records = [json.loads(x) for x in lines(meta / "test.jsonl")]
    other = {**records[1], "slurp_id": 9999, "recordings": records[0]["recordings"]}
    with open(meta / "test.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(other) + "\n" + json.dumps({**records[0], "slurp_id": 9998}) + "\n")
    name = records[0]["recordings"][0]["file"]
    one_line_error(data_sh(recipe, env, ok=False), f"test.jsonl:3: recording {name} of slurp_id 9999 again, "
                                                   f"with other labels than at {meta}/test.jsonl:1")
    repeated = records + [{**records[0], "slurp_id": 9998}]
    (meta / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in repeated))
    out = data_sh(recipe, env)
    assert "data/test: 2 recordings are named again in the metadata, with the same labels: kept once" in out.stderr
    assert len(lines(recipe / "data" / "test" / "text")) == 4


def test_slurp_says_what_it_leaves_out_and_reads_a_byte_order_mark(slurp):
    recipe, env, meta = slurp
    test = meta / "test.jsonl"
    records = test.read_text().splitlines()
    test.write_text("\ufeff" + "\n".join(records + records[:1]) + "\n", encoding="utf-8")  # BOM; a record again
    edit_first_record(meta / "train.jsonl", lambda r: r.update(recordings=[]))
    out = data_sh(recipe, env)
    assert "data/test: 2 recordings are named again in the metadata, with the same labels: kept once" in out.stderr
    assert "data/train: 1 prompts of the metadata list no recording: no utterance" in out.stderr
    assert len(lines(recipe / "data" / "test" / "text")) == 4


# --- LibriSpeech -------------------------------------------------------------------------------------

@pytest.fixture
def librispeech(tmp_path):
    corpus = write_librispeech(tmp_path / "corpora")
    env = {"LIBRISPEECH": str(corpus), "LIBRISPEECH_LM_NORM": str(tmp_path / "corpora" / "librispeech-lm-norm.txt")}
    return copy_recipe("librispeech", tmp_path), env, corpus


def test_librispeech_counts_audio_that_no_transcript_names(librispeech):
    recipe, env, corpus = librispeech
    trans, = sorted((corpus / "train-clean-100").glob("*/*/*.trans.txt"))[:1]
    trans.unlink()   # a chapter extracted without its transcript
    flacs = sorted(trans.parent.glob("*.flac"))
    out = data_sh(recipe, env, "--eval_subsets", "dev-clean")
    assert (f"{corpus}/train-clean-100: {len(flacs)} .flac files are in no *.trans.txt (e.g. {flacs[0]}): skipped"
            in out.stderr)
    assert len(lines(recipe / "data" / "train" / "text")) == 6 - len(flacs)


def test_librispeech_refuses_a_data_dir_made_from_other_subsets_or_another_corpus(tmp_path, librispeech):
    recipe, env, corpus = librispeech
    data_sh(recipe, env, "--eval_subsets", "dev-clean")
    one_line_error(data_sh(recipe, env, "--eval_subsets", "dev-clean", "--train_subsets", "train-clean-100,dev-clean",
                           ok=False),
                   f"data/train was made from train-clean-100 of {corpus}, not train-clean-100,dev-clean of {corpus}: "
                   "remove it (rm -r data/train)")
    other = write_librispeech(tmp_path / "other")
    one_line_error(data_sh(recipe, {**env, "LIBRISPEECH": str(other)}, "--eval_subsets", "dev-clean", ok=False),
                   f"data/train was made from train-clean-100 of {corpus}, not train-clean-100 of {other}")
    (recipe / "data" / "train" / ".done").write_text("train-clean-100\n")   # the marker of an older recipe
    (recipe / "data" / "dev_clean" / ".done").write_text("dev-clean\n")
    data_sh(recipe, env, "--eval_subsets", "dev-clean")


def test_librispeech_reads_what_editors_and_other_tools_write_and_refuses_the_rest(librispeech):
    recipe, env, corpus = librispeech
    trans = sorted((corpus / "train-clean-100").glob("*/*/*.trans.txt"))
    first = trans[0].read_text(encoding="utf-8").splitlines()
    utt, words = first[0].split(" ", 1)
    trans[0].write_text("\ufeff" + f"{utt}\t{words}\r\n" + "".join(x + "\r\n" for x in first[1:]), encoding="utf-8")
    data_sh(recipe, env, "--eval_subsets", "dev-clean", "--train_subsets", "train-clean-100,train-clean-100")
    assert f"{utt} {words}" in lines(recipe / "data" / "train" / "text")
    assert len(lines(recipe / "data" / "train" / "text")) == 6
    shutil.rmtree(recipe / "data")
    shutil.copytree(corpus / "train-clean-100", corpus / "train-clean-360")   # the same ids in two subsets
    one_line_error(data_sh(recipe, env, "--eval_subsets", "dev-clean", "--train_subsets",
                           "train-clean-100,train-clean-360", ok=False),
                   "train-clean-360/", f": utterance {utt} again ({trans[0]}:1 named it)")
    shutil.rmtree(corpus / "train-clean-360")
    trans[0].write_bytes(trans[0].read_bytes().replace(b"\r\n", "\r\nÄ\n".encode("latin-1"), 1))
    one_line_error(data_sh(recipe, env, "--eval_subsets", "dev-clean", ok=False),
                   f"local/data.sh: {trans[0]}:2: not UTF-8 (byte 1 of the line)")


def test_librispeech_a_missing_lm_text_is_said_before_the_audio(librispeech, tmp_path):
    recipe, env, _ = librispeech
    one_line_error(data_sh(recipe, env, "--lm_max_lines", "-5", ok=False),
                   "--lm_max_lines must be 0 (all) or more, not -5")   # it read the whole text
    out = data_sh(recipe, {**env, "LIBRISPEECH_LM_NORM": str(tmp_path / "nope.txt")}, ok=False)
    one_line_error(out, f"--lm_text {tmp_path}/nope.txt: no such file")
    assert not (recipe / "data").exists()


def test_lm_text_lines_get_single_spaces(librispeech):
    recipe, env, _ = librispeech
    Path(env["LIBRISPEECH_LM_NORM"]).write_text("A  SPACED\tLINE \r\n\r\nTWO\n", encoding="utf-8")
    data_sh(recipe, env, "--eval_subsets", "dev-clean")
    assert lines(recipe / "data" / "lm_norm" / "text") == ["lm_000000001 A SPACED LINE", "lm_000000003 TWO"]


def test_librispeech_an_empty_or_misplaced_subset_stops_it(librispeech):
    """A subset extracted one level too deep, or an empty one, added no utterance to data/train: exit 0."""
    recipe, env, corpus = librispeech
    (corpus / "train-other-500").mkdir()
    one_line_error(data_sh(recipe, env, "--eval_subsets", "dev-clean", "--train_subsets",
                           "train-clean-100,train-other-500", ok=False),
                   f"local/data.sh: {corpus}/train-other-500: no <speaker>/<chapter>/*.trans.txt")
    shutil.copytree(corpus / "train-clean-100", corpus / "train-clean-360" / "LibriSpeech" / "train-clean-360")
    trans = sorted((corpus / "train-clean-360").rglob("*.trans.txt"))[0]
    one_line_error(data_sh(recipe, env, "--eval_subsets", "dev-clean", "--train_subsets",
                           "train-clean-100,train-clean-360", ok=False),
                   f"{corpus}/train-clean-360: no <speaker>/<chapter>/*.trans.txt; {trans} is not at "
                   "<subset>/<speaker>/<chapter>/ (extracted one level too deep?)")
    assert not (recipe / "data" / "train" / ".done").exists()


def test_librispeech_lm_text_as_released_gzipped_and_a_subset_both_trained_and_scored(librispeech):
    import gzip
    recipe, env, _ = librispeech
    released = Path(env["LIBRISPEECH_LM_NORM"] + ".gz")
    released.write_bytes(gzip.compress(b"ONE LINE\nTWO\nTHREE\n"))
    out = data_sh(recipe, {**env, "LIBRISPEECH_LM_NORM": str(released)}, "--eval_subsets", "dev-clean",
                  "--train_subsets", "train-clean-100,dev-clean", "--lm_max_lines", "2")
    assert lines(recipe / "data" / "lm_norm" / "text") == ["lm_000000001 ONE LINE", "lm_000000002 TWO"]
    assert "WARNING: dev-clean is in --train_subsets and --eval_subsets" in out.stderr
    shutil.rmtree(recipe / "data" / "lm_norm")
    Path(env["LIBRISPEECH_LM_NORM"]).write_bytes(b"ONE\n\xff\xfe LINE\n")
    one_line_error(data_sh(recipe, env, "--eval_subsets", "dev-clean", "--train_subsets",
                           "train-clean-100,dev-clean", ok=False),
                   f"--lm_text {env['LIBRISPEECH_LM_NORM']}: not UTF-8 text")
    assert not (recipe / "data" / "lm_norm" / "text").exists()


# --- egs/TEMPLATE: the data.sh a new recipe starts from ----------------------------------------------

@pytest.fixture
def template(tmp_path):
    corpus = write_template_corpus(tmp_path / "corpora")
    return copy_recipe("TEMPLATE", tmp_path), {"CORPUS": str(corpus)}, corpus


def append_row(tsv: Path, row: str) -> None:
    with open(tsv, "a", encoding="utf-8") as f:
        f.write(row + "\n")


@pytest.mark.parametrize("damage,error", [
    (lambda c: (c / "dev.tsv").unlink(), "dev.tsv: cannot read it (No such file or directory)"),
    (lambda c: append_row(c / "test.tsv", "spk0\tturn it up"),
     "test.tsv:4: 2 tab-separated fields where the header has 3"),
    (lambda c: append_row(c / "test.tsv", "spk0\tturn it up\ttest/spk0/take01.wav"),
     "test.tsv:4: path: 'test/spk0/take01.wav' gives utterance id 'test-spk0-take01', as line 2 did "
     "(the same recording)"),
    (lambda c: append_row(c / "test.tsv", "spk0\tturn it up\ttest/spk0 take01.flac"),
     "test.tsv:4: path: 'test/spk0 take01.flac' gives utterance id 'test-spk0-take01', as line 2 did "
     "('test/spk0/take01.wav', another path with the same id)"),
    (lambda c: (c / "train.tsv").write_text("speaker\tpath\nspk0\ttrain/spk0/take01.wav\n"),
     "train.tsv:1: no column text in the header (speaker path)"),
    # no file name to make an utterance id of: a ValueError's traceback
    (lambda c: append_row(c / "test.tsv", "spk0\tturn it up\t"), "test.tsv:4: path: '' names no audio file"),
    (lambda c: append_row(c / "test.tsv", "spk0\tturn it up\t."), "test.tsv:4: path: '.' names no audio file"),
    # utt2spk's speaker is one word: the error named data/test/utt2spk, a file data.sh wrote
    (lambda c: (c / "test.tsv").write_text((c / "test.tsv").read_text().replace("\nspk0\t", "\nJohn Smith\t", 1)),
     "test.tsv:2: speaker: 'John Smith' is not one word (a speaker id: e.g. 'John_Smith')"),
])
def test_template_bad_tables_stop_in_one_line(template, damage, error):
    recipe, env, corpus = template
    damage(corpus)
    one_line_error(data_sh(recipe, env, ok=False), error)


def test_template_says_what_it_leaves_out_and_prepares_the_run_s_sets(template):
    recipe, env, corpus = template
    (corpus / "train" / "spk1" / "take02.wav").unlink()
    append_row(corpus / "train.tsv", "spk1\t \ttrain/spk1/take01.wav.copy")
    (corpus / "train" / "spk1" / "take01.wav.copy").write_bytes(b"")
    out = data_sh(recipe, {**env, "TASU_DATA_SETS": "train test train"})
    assert "data/train: 1 rows of " in out.stderr and "train.tsv name audio that is not there: left out" in out.stderr
    assert "data/train: 1 rows of " in out.stderr and "train.tsv have an empty text: left out" in out.stderr
    assert len(lines(recipe / "data" / "train" / "text")) == 5
    assert sorted(p.name for p in (recipe / "data").iterdir()) == ["test", "train"]   # the run's sets only


# --- the shared stage 2 ------------------------------------------------------------------------------

def test_stage_2_remakes_the_jsonl_of_a_data_dir_made_again(librispeech):
    recipe, env, corpus = librispeech
    run = ("./run.sh", "--stage", "1", "--stop_stage", "2", "--test_sets", "test_clean")
    sh(recipe, *run, env=env)
    assert len(lines(recipe / "dump" / "train" / "ASR.jsonl")) == 6
    trans = sorted((corpus / "train-clean-100").glob("*/*/*.trans.txt"))[0]
    trans.write_text("\n".join(lines(trans)[:-1]) + "\n", encoding="utf-8")   # one utterance fewer
    shutil.rmtree(recipe / "data" / "train")
    out = sh(recipe, *run, env=env)
    assert "data/train changed after dump/train/ASR.jsonl was made: making it again" in out.stderr
    assert "dump/dev_clean/ASR.jsonl: already made" in out.stderr
    assert len(lines(recipe / "dump" / "train" / "ASR.jsonl")) == 5
    assert len(lines(recipe / "dump" / "train" / "ASR.text_only.jsonl")) == 5
    # a JSONL removed by hand beside its .done: stage 2 skipped it as made, stage 3 asked for stage 2
    (recipe / "dump" / "dev_clean" / "ASR.jsonl").unlink()
    out = sh(recipe, "./run.sh", "--stage", "2", "--stop_stage", "2", "--test_sets", "test_clean", env=env)
    assert "dump/dev_clean/ASR.jsonl is gone (its .done is there): making it again" in out.stderr
    assert len(lines(recipe / "dump" / "dev_clean" / "ASR.jsonl")) > 0
    # a table put back from a copy keeps its older mtime, and a removed one leaves no file to be newer:
    # stage 2 skipped both and kept the JSONL of the table it no longer had
    text, jsonl = recipe / "data" / "test_clean" / "text", recipe / "dump" / "test_clean" / "ASR.jsonl"
    made = jsonl.read_text()
    shutil.copy2(text, recipe / "text.bak")
    text.write_text("".join(f"{line} {line.split()[-1]}\n" for line in lines(text)))   # a word more
    sh(recipe, *run, env=env)
    assert jsonl.read_text() != made
    shutil.move(recipe / "text.bak", text)
    out = sh(recipe, *run, env=env)
    assert "data/test_clean changed after dump/test_clean/ASR.jsonl was made: making it again" in out.stderr
    assert jsonl.read_text() == made
    (recipe / "data" / "test_clean" / "utt2spk").unlink()
    out = sh(recipe, *run, env=env)
    assert "data/test_clean changed after dump/test_clean/ASR.jsonl was made: making it again" in out.stderr
    # the data dir copied back with its times (cp -a, rsync -a) or its modes changed: nothing to make again
    shutil.copytree(recipe / "data" / "test_clean", recipe / "copy")
    shutil.rmtree(recipe / "data" / "test_clean")
    shutil.move(recipe / "copy", recipe / "data" / "test_clean")
    (recipe / "data" / "test_clean" / "text").chmod(0o600)
    (recipe / "data" / "test_clean" / "spk2utt").unlink()   # not read by stage 2
    out = sh(recipe, *run, env=env)
    assert "dump/test_clean/ASR.jsonl: already made" in out.stderr
