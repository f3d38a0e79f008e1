#!/usr/bin/env bash
# The one corpus-specific step: the corpus release -> Kaldi data dirs data/<set>/{wav.scp,text,
# utt2spk,spk2utt} (plus one file per extra label, e.g. scenario, translation_de: 'utt label' lines).
#
# This template reads a simple layout; rewrite the part marked below for your corpus's release:
#   <CORPUS>/<set>.tsv: a header naming the columns 'path' and 'text' (and, where known, 'speaker'),
#                       then one utterance a line, path relative to <CORPUS>
# An utterance's id is its path without the extension, '/' and spaces made '-' (spk1/take01.wav ->
# spk1-take01): ids from the file name alone would make two speakers' take01 one utterance.
# Keep: the options, the .done marker per dir naming the corpus (re-running is a no-op, another corpus
# is refused), sorted files, absolute audio
# paths (or Kaldi '... |' commands) in wav.scp, utterance ids without '/' or spaces, one line for
# anything left out (clips missing, empty sentences) and one line naming file and line for bad input.
set -euo pipefail

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*" >&2; }

. ./db.sh
. ./path.sh

datadir=data
# shellcheck disable=SC2086
sets=$(printf '%s\n' ${TASU_DATA_SETS:-train dev test} | awk '!seen[$0]++' | paste -sd,)

help_message="Usage: $0 [options]
  --datadir <dir>   where the data dirs go (default: ${datadir})
  --sets <a,b>      sets to prepare, comma separated (default: ${sets}; tasu.sh passes the run's
                    sets in TASU_DATA_SETS)"
. parse_options.sh

for set in ${sets//,/ }; do
  dir=${datadir}/${set}
  if [ -f "${dir}/.done" ]; then   # prepared sets need no corpus: it may be unmounted now
    was=$(cat "${dir}/.done")
    if [ -n "${was}" ] && [ "${was}" != "${CORPUS}" ]; then   # wav.scp holds the other corpus's paths
      log "ERROR: ${dir} was made from ${was}, not ${CORPUS}: remove it (rm -r ${dir}) to make it again"
      exit 1
    fi
    log "${dir}: already prepared (${dir}/.done), skipping"
    continue
  fi
  [ -d "${CORPUS}" ] || { log "ERROR: corpus not found at '${CORPUS}': set CORPUS in db.sh"; exit 1; }
  log "${CORPUS}/${set}.tsv -> ${dir}"
  # ---- corpus-specific: rewrite this for your release ----------------------------------------------
  python3 - "${CORPUS}" "${set}" "${dir}" <<'PY'
import re
import sys
from pathlib import Path

from tasu.data.corpus_tsv import read_tsv
from tasu.data.kaldi_dir import DataDirError, wav_scp_entry, write_tables
from tasu.data.records import DataError

root, name, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
table = root / f"{name}.tsv"
wav, text, spk, first = {}, {}, {}, {}  # first: utt -> (line, path)
missing, empty = 0, 0
try:
    for line, row in read_tsv(table, {"path", "text"}):
        try:   # '', '.' or '/' has no file name to make an id of (with_suffix: ValueError)
            utt = re.sub(r"[/\s]+", "-", str(Path(row["path"]).with_suffix("")).strip("/"))
        except ValueError:
            utt = ""
        if not utt.strip("-"):
            raise DataError(str(table), line, "path", f"{row['path']!r} names no audio file")
        if utt in first:
            seen, path = first[utt]
            why = "the same recording" if path == row["path"] else f"{path!r}, another path with the same id"
            raise DataError(str(table), line, "path", f"{row['path']!r} gives utterance id {utt!r}, as line "
                                                      f"{seen} did ({why})")
        first[utt] = (line, row["path"])
        speaker = (row.get("speaker") or "").strip()
        if len(speaker.split()) > 1:   # utt2spk's speaker is one word: the data dir's check named utt2spk
            raise DataError(str(table), line, "speaker", f"{speaker!r} is not one word (a speaker id: e.g. "
                                                         f"{'_'.join(speaker.split())!r})")
        audio = root / row["path"]
        if not audio.is_file():
            missing += 1
            continue
        words = " ".join(row["text"].split())
        if not words:
            empty += 1
            continue
        try:
            wav[utt] = wav_scp_entry(audio)   # refuses a file name that wav.scp would read as a command
        except DataError as e:
            raise DataError(str(table), line, "path", str(e)) from None
        text[utt] = words
        spk[utt] = speaker or utt
except DataError as e:
    sys.exit(f"local/data.sh: {e}")
if missing:
    print(f"{out}: {missing} rows of {table} name audio that is not there: left out", file=sys.stderr)
if empty:
    print(f"{out}: {empty} rows of {table} have an empty text: left out", file=sys.stderr)
if not text:
    sys.exit(f"local/data.sh: {table}: no utterance to prepare")
try:
    n = write_tables(out, {"wav.scp": wav, "text": text, "utt2spk": spk})   # checks ids and values first
except DataDirError as e:
    sys.exit(f"local/data.sh: {table}: {e}")
print(f"{out}: {n} utterances", file=sys.stderr)
PY
  # ---------------------------------------------------------------------------------------------------
  echo "${CORPUS}" > "${dir}/.done"
done
log "done: $(ls -d "${datadir}"/*/ | tr '\n' ' ')"
