#!/usr/bin/env python3
"""CoVoST 2 tables + Common Voice clips -> Kaldi data dirs (called by local/data.sh; see there).

Two layouts are read, the one CoVoST 2 is released in and the one its split script writes:

- the release: ``covost_v2.<pair>.tsv`` (path, sentence, translation, split) beside nothing else;
  the speaker (client_id) comes from the Common Voice release's ``validated.tsv``, joined on
  ``path``, as CoVoST's own loaders do. ``split`` is train, train_covost (CoVoST 2's additional
  training clips: joined to train, as those loaders do), dev or test;
- ``get_covost_splits.py``'s output: ``covost_v2.<pair>.{train,dev,test}.tsv`` (path, sentence,
  translation, client_id), used when the release's file is not there.

Both are read as CoVoST's tools write them: tabs only, ``\\`` escaping. Nothing is dropped in
silence: rows with an empty sentence or translation are named by line, clips that are missing,
rows that validated.tsv lacks, rows of another split and rows that repeat a clip of their pair word
for word are counted in one line each; a clip that a pair gives two transcripts or translations, or
two pairs two transcripts, is an error, and a clip in two sets (train and test; by one pair or two)
is counted with an example, since the sets should not share one. Each finished set's ``.done`` holds
``--done``, what it was made from.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tasu.data.corpus_tsv import read_tsv
from tasu.data.kaldi_dir import DataDirError, wav_scp_entry, write_tables
from tasu.data.records import DataError

SPLITS = {"train": "train", "train_covost": "train", "dev": "dev", "test": "test"}


def speakers(validated: Path) -> dict[str, str]:
    """Common Voice's ``validated.tsv``: clip -> client_id."""
    if not validated.is_file():
        raise DataError(str(validated), None, None, "no such file: the release's covost_v2.<pair>.tsv names no "
                                                    "speaker, Common Voice's validated.tsv does (see db.sh)")
    return {row["path"]: row["client_id"]
            for _, row in read_tsv(validated, {"path", "client_id"})}   # Common Voice's: no escapes


def rows(tsv_dir: Path, pair: str, validated: Path):
    """Yield (file, line, split, row) of one pair in whichever layout is there; row has path,
    sentence, translation and client_id (None: not in validated.tsv)."""
    release = tsv_dir / f"covost_v2.{pair}.tsv"
    if release.is_file():
        spk = speakers(validated)
        for line, row in read_tsv(release, {"path", "sentence", "translation", "split"}, escapechar="\\"):
            yield release, line, row["split"], {**row, "client_id": spk.get(row["path"])}
        return
    split_files = [tsv_dir / f"covost_v2.{pair}.{split}.tsv" for split in ("train", "dev", "test")]
    if not all(f.is_file() for f in split_files):
        raise DataError(str(release), None, None, f"no such file, nor {tsv_dir}/covost_v2.{pair}.{{train,dev,test}}.tsv "
                                                  "(see --pairs, and COVOST2 in db.sh)")
    for f in split_files:
        split = f.name.split(".")[-2]
        for line, row in read_tsv(f, {"path", "sentence", "translation", "client_id"}, escapechar="\\"):
            yield f, line, split, row


def translation_files(pairs: list[str]) -> dict[str, str]:
    """pair -> the label file of its translations (``en_zh-CN`` -> ``translation_zh``)."""
    files: dict[str, str] = {}
    for pair in pairs:
        source, _, target = pair.partition("_")
        if not source or not target:
            raise DataError("--pairs", None, None, f"{pair!r} is not <source>_<target>, e.g. en_de or en_zh-CN")
        name = "translation_" + target.split("-")[0]
        clash = [p for p, n in files.items() if n == name]
        if clash:
            raise DataError("--pairs", None, None, f"{clash[0]} and {pair} would both write {name}: run them in "
                                                   "two recipe directories")
        files[pair] = name
    return files


def prepare(tsv_dir: Path, cv: Path, datadir: Path, sets: list[str], pairs: list[str], reader: str,
            done: str) -> None:
    clips = cv / "clips"
    data = {s: {"wav.scp": {}, "text": {}, "utt2spk": {}} for s in sets}
    missing: set[str] = set()
    other_split: dict[str, int] = {}
    no_speaker = repeated = 0
    seen: dict[tuple[str, str], tuple[str, str, str, str]] = {}   # (pair, clip) -> (where, set, sentence, translation)
    clip_first: dict[str, tuple[str, str, str]] = {}   # clip -> (where, set, sentence), over all pairs
    two_sets: list[str] = []
    for pair, target in translation_files(pairs).items():
        for tsv, line, split, row in rows(tsv_dir, pair, cv / "validated.tsv"):
            if split not in SPLITS:
                other_split[split] = other_split.get(split, 0) + 1
                continue
            if SPLITS[split] not in data:   # a set already prepared
                continue
            sentence, translation = " ".join(row["sentence"].split()), " ".join(row["translation"].split())
            if not sentence or not translation:
                print(f"{tsv}:{line}: empty sentence or translation, skipped", file=sys.stderr)
                continue
            if row["client_id"] is None:
                no_speaker += 1
                continue
            first = seen.setdefault((pair, row["path"]), (f"{tsv}:{line}", SPLITS[split], sentence, translation))
            if first[0] != f"{tsv}:{line}":
                if first[2:] != (sentence, translation):
                    raise DataError(str(tsv), line, "path", f"{row['path']} again, with another sentence or "
                                                            f"translation than at {first[0]}")
                if first[1] == SPLITS[split]:
                    repeated += 1
                    continue
                two_sets.append(f"{row['path']}: {first[1]} at {first[0]}, {SPLITS[split]} at {tsv}:{line}")
            else:   # the clip's first row in this pair: do the pairs before agree on its transcript and set?
                other = clip_first.setdefault(row["path"], (f"{tsv}:{line}", SPLITS[split], sentence))
                if other[2] != sentence:   # text (the GT of every task) holds one transcript a clip
                    raise DataError(str(tsv), line, "path", f"{row['path']} again, with another sentence than at "
                                                            f"{other[0]}")
                if other[1] != SPLITS[split]:
                    two_sets.append(f"{row['path']}: {other[1]} at {other[0]}, {SPLITS[split]} at {tsv}:{line}")
            clip = clips / row["path"]
            if Path(row["path"]).is_absolute() or ".." in Path(row["path"]).parts:
                raise DataError(str(tsv), line, "path", f"{row['path']!r}: not a file of clips/")
            if not clip.is_file():
                missing.add(row["path"])
                continue
            utt = Path(row["path"]).stem
            tables = data[SPLITS[split]]
            try:
                tables["wav.scp"][utt] = wav_scp_entry(clip, reader)
            except DataError as e:
                raise DataError(str(tsv), line, "path", str(e)) from None
            tables["text"][utt] = sentence
            tables["utt2spk"][utt] = row["client_id"]
            tables.setdefault(target, {})[utt] = translation
    if missing:
        print(f"{len(missing)} clips named by the tsv files are not in {clips}: skipped", file=sys.stderr)
    if no_speaker:
        print(f"{no_speaker} tsv rows name clips that are not in {cv / 'validated.tsv'} (another Common Voice "
              "release than CoVoST 2's?): skipped", file=sys.stderr)
    if repeated:
        print(f"{repeated} tsv rows repeat a clip of their pair word for word: kept once", file=sys.stderr)
    if two_sets:
        print(f"{len(two_sets)} clips are in two sets, kept in both (e.g. {two_sets[0]})", file=sys.stderr)
    for split, n in sorted(other_split.items()):
        print(f"{n} tsv rows of split '{split}' (not train, train_covost, dev or test): skipped", file=sys.stderr)
    for split, tables in data.items():
        if not tables["text"]:
            raise DataError(str(tsv_dir), None, None, f"no {split} utterances in the covost_v2.{{{','.join(pairs)}}} tables")
    for split, tables in data.items():
        out = datadir / split
        try:
            n = write_tables(out, tables)
        except DataDirError as e:
            raise DataError(str(tsv_dir), None, None, str(e)) from None
        (out / ".done").write_text(done + "\n", encoding="utf-8")
        print(f"{out}: {n} utterances; " + ", ".join(f"{name} {len(t)}" for name, t in tables.items()
                                                     if name.startswith("translation_")), file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tsv_dir", type=Path)
    p.add_argument("commonvoice", type=Path)
    p.add_argument("datadir", type=Path)
    p.add_argument("--sets", required=True, help="comma separated: the data dirs to make")
    p.add_argument("--pairs", required=True, help="comma separated, e.g. en_zh-CN,en_de")
    p.add_argument("--mp3-reader", required=True, choices=("soundfile", "ffmpeg"))
    p.add_argument("--done", required=True, help="what each finished set's .done says it was made from")
    a = p.parse_args()
    try:
        prepare(a.tsv_dir, a.commonvoice, a.datadir, a.sets.split(","), a.pairs.split(","), a.mp3_reader, a.done)
    except DataError as e:
        sys.exit(f"local/data.sh: {e}")


if __name__ == "__main__":
    main()
