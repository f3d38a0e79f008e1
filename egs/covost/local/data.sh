#!/usr/bin/env bash
# CoVoST 2 (English speech -> other languages) -> Kaldi data dirs with the translations beside the
# transcripts.
#
#   <COVOST2>/covost_v2.en_<lang>.tsv: header 'path sentence translation client_id split', split
#                                      being train, dev or test
#   <COMMONVOICE>/clips/<path>:        the English clips (mp3)
#
# writes data/{train,dev,test} with text (the English sentence), utt2spk (client_id) and one
# translation_<lang> file per --pairs entry (the region is dropped: en_zh-CN -> translation_zh), so
# run.sh names tasks EN2ZH:translation_zh, EN2DE:translation_de. An utterance is kept when any pair
# has it; a task's records are those with its translation. A finished dir has a .done marker.
set -euo pipefail

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*" >&2; }

. ./db.sh
. ./path.sh

datadir=data
pairs=en_zh-CN,en_de
mp3_reader=auto

help_message="Usage: $0 [options]
  --datadir <dir>       where the data dirs go (default: ${datadir})
  --pairs <a,b>         language pairs (tsv names covost_v2.<pair>.tsv), comma separated (default: ${pairs})
  --mp3_reader <how>    soundfile: wav.scp names the mp3; ffmpeg: a '... |' pipe decoding it to
                        16 kHz wav; auto: soundfile when it reads MP3 (default: ${mp3_reader})"
. parse_options.sh

[ -d "${COVOST2}" ] || { log "ERROR: no CoVoST 2 tsv directory at '${COVOST2}': set COVOST2 in db.sh"; exit 1; }
[ -d "${COMMONVOICE}/clips" ] || { log "ERROR: no clips/ under '${COMMONVOICE}': set COMMONVOICE in db.sh"; exit 1; }
if [ "${mp3_reader}" = auto ]; then
  if python3 -c 'import soundfile, sys; sys.exit("MP3" not in soundfile.available_formats())'; then
    mp3_reader=soundfile
  else
    mp3_reader=ffmpeg
    log "this libsndfile cannot read MP3 (needs >= 1.1): wav.scp decodes the clips with ffmpeg"
  fi
fi

sets=train,dev,test
todo=
for set in ${sets//,/ }; do
  if [ -f "${datadir}/${set}/.done" ]; then
    log "${datadir}/${set}: already prepared (${datadir}/${set}/.done), skipping"
  else
    todo+=${todo:+,}${set}
  fi
done
if [ -n "${todo}" ]; then
  log "${COVOST2}/covost_v2.{${pairs}}.tsv + ${COMMONVOICE}/clips -> ${datadir}/{${todo}} (mp3 read by ${mp3_reader})"
  python3 - "${COVOST2}" "${COMMONVOICE}/clips" "${datadir}" "${todo}" "${pairs}" "${mp3_reader}" <<'PY'
import csv
import sys
from pathlib import Path

from tasu.data.kaldi_dir import wav_scp_entry, write_tables

tsv_dir, clips, datadir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
sets, pairs, reader = sys.argv[4].split(","), sys.argv[5].split(","), sys.argv[6]
data = {s: {"wav.scp": {}, "text": {}, "utt2spk": {}} for s in sets}
missing = 0
for pair in pairs:
    target = "translation_" + pair.split("_", 1)[1].split("-")[0]
    tsv = tsv_dir / f"covost_v2.{pair}.tsv"
    if not tsv.is_file():
        sys.exit(f"local/data.sh: {tsv}: no such file (see --pairs)")
    with open(tsv, encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        lacking = {"path", "sentence", "translation", "client_id", "split"} - set(rows.fieldnames or [])
        if lacking:
            sys.exit(f"{tsv}: no column {', '.join(sorted(lacking))} in the header")
        for lineno, row in enumerate(rows, 2):
            split = row["split"]
            if split not in data:
                continue
            sentence, translation = " ".join(row["sentence"].split()), " ".join(row["translation"].split())
            clip = clips / row["path"]
            if not sentence or not translation:
                print(f"{tsv}:{lineno}: empty sentence or translation, skipped", file=sys.stderr)
                continue
            if not clip.is_file():
                missing += 1
                continue
            utt = Path(row["path"]).stem
            path = wav_scp_entry(clip, reader)
            tables = data[split]
            tables["wav.scp"][utt], tables["text"][utt], tables["utt2spk"][utt] = path, sentence, row["client_id"]
            tables.setdefault(target, {})[utt] = translation
if missing:
    print(f"{missing} tsv rows name clips that are not in {clips}: skipped", file=sys.stderr)
for split, tables in data.items():
    out = datadir / split
    utts = sorted(tables["text"])
    if not utts:
        sys.exit(f"local/data.sh: no {split} utterances in covost_v2.{{{','.join(pairs)}}}.tsv")
    write_tables(out, tables)
    (out / ".done").touch()
    print(f"{out}: {len(utts)} utterances; " + ", ".join(f"{n} {len(t)}" for n, t in tables.items()
                                                          if n.startswith("translation_")), file=sys.stderr)
PY
fi
log "done: $(ls -d "${datadir}"/*/ | tr '\n' ' ')"
