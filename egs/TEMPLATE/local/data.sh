#!/usr/bin/env bash
# The one corpus-specific step: the corpus release -> Kaldi data dirs data/<set>/{wav.scp,text,
# utt2spk,spk2utt} (plus one file per extra label, e.g. scenario, translation_de: 'utt label' lines).
#
# This template reads a simple layout; rewrite the part marked below for your corpus's release:
#   <CORPUS>/<set>.tsv: a header 'path<TAB>text[<TAB>speaker]', then one utterance a line, path
#                       relative to <CORPUS>
# Keep: the options, the .done marker per dir (re-running is a no-op), sorted files, absolute audio
# paths (or Kaldi '... |' commands) in wav.scp, utterance ids without '/' or spaces.
set -euo pipefail

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*" >&2; }

. ./db.sh
. ./path.sh

datadir=data
sets=train,dev,test

help_message="Usage: $0 [options]
  --datadir <dir>   where the data dirs go (default: ${datadir})
  --sets <a,b>      sets to prepare, comma separated (default: ${sets})"
. parse_options.sh

[ -d "${CORPUS}" ] || { log "ERROR: corpus not found at '${CORPUS}': set CORPUS in db.sh"; exit 1; }

for set in ${sets//,/ }; do
  dir=${datadir}/${set}
  if [ -f "${dir}/.done" ]; then
    log "${dir}: already prepared (${dir}/.done), skipping"
    continue
  fi
  log "${CORPUS}/${set}.tsv -> ${dir}"
  # ---- corpus-specific: rewrite this for your release ----------------------------------------------
  python3 - "${CORPUS}" "${set}" "${dir}" <<'PY'
import csv
import sys
from pathlib import Path

from tasu.data.kaldi_dir import write_tables

root, name, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
wav, text, spk = {}, {}, {}
with open(root / f"{name}.tsv", encoding="utf-8", newline="") as f:
    for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
        utt = Path(row["path"]).stem
        wav[utt] = str((root / row["path"]).resolve())
        text[utt] = " ".join(row["text"].split())
        spk[utt] = row.get("speaker") or utt
n = write_tables(out, {"wav.scp": wav, "text": text, "utt2spk": spk})
print(f"{out}: {n} utterances", file=sys.stderr)
PY
  # ---------------------------------------------------------------------------------------------------
  touch "${dir}/.done"
done
log "done: $(ls -d "${datadir}"/*/ | tr '\n' ' ')"
