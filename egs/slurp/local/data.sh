#!/usr/bin/env bash
# SLURP release -> Kaldi data dirs with the intent labels beside the transcripts.
#
#   <SLURP>/dataset/slurp/{train,train_synthetic,devel,test}.jsonl: one line per prompt:
#       {"slurp_id": ..., "sentence": ..., "scenario": ..., "action": ..., "intent": ...,
#        "recordings": [{"file": "audio-....flac", ...}, ...], ...}
#   <SLURP>/audio/slurp_real/*.flac (and slurp_synth/*.flac for train_synthetic)
#
# Every recording is one utterance, <slurp_id>-<file name without .flac>, in data/{train,devel,test}
# with text (the sentence), scenario, action and intent files (utterance -> label). data/train also
# holds the synthetic recordings unless --use_synth false. A recording named twice is kept once, and
# stops it when the two records' labels differ; so does an audio directory that is not there, or that
# holds none of a split's recordings (recordings missing here and there are counted). A finished dir
# has a .done marker naming the audio directory and is not made again (another --audio_dir or SLURP
# is refused: wav.scp holds the old paths).
set -euo pipefail

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*" >&2; }

. ./db.sh
. ./path.sh

datadir=data
audio_dir=${SLURP}/audio
use_synth=true

help_message="Usage: $0 [options]
  --datadir <dir>      where the data dirs go (default: ${datadir})
  --audio_dir <dir>    holding slurp_real/ and slurp_synth/ (default: ${audio_dir})
  --use_synth <bool>   add the synthetic recordings to data/train (default: ${use_synth})"
. parse_options.sh

[ -d "${SLURP}/dataset/slurp" ] || { log "ERROR: no dataset/slurp under '${SLURP}': set SLURP in db.sh"; exit 1; }

make_dir() {  # make_dir <name> <split>...
  local dir=${datadir}/$1
  shift
  if [ -f "${dir}/.done" ]; then
    local was; was=$(cat "${dir}/.done")
    if [ -n "${was}" ] && [ "${was}" != "${audio_dir}" ]; then   # empty: an older marker
      log "ERROR: ${dir} was made from ${was}, not ${audio_dir}: remove it (rm -r ${dir}) to make it again"
      exit 1
    fi
    log "${dir}: already prepared (${dir}/.done), skipping"
    return
  fi
  log "${SLURP}/dataset/slurp/{$(echo "$@" | tr ' ' ',')}.jsonl + ${audio_dir} -> ${dir}"
  python3 - "${SLURP}/dataset/slurp" "${audio_dir}" "${dir}" "$@" <<'PY'
import json
import sys
from pathlib import Path

from tasu.data.kaldi_dir import DataDirError, wav_scp_entry, write_tables
from tasu.data.records import DataError

meta, audio, out, splits = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
files = {name: {} for name in ("wav.scp", "text", "scenario", "action", "intent")}
missing = unrecorded = repeated = 0
first = {}  # recording file -> (file:line, labels, utterance) of the record that named it
for split in splits:
    sub = audio / ("slurp_synth" if split == "train_synthetic" else "slurp_real")
    path = meta / f"{split}.jsonl"
    hint = " (--use_synth false leaves the synthetic recordings out)" if split == "train_synthetic" else ""
    if not path.is_file():
        sys.exit(f"local/data.sh: {path}: no such file{hint}")
    if not sub.is_dir():   # half the corpus extracted: the data dir would be made, and kept, without it
        sys.exit(f"local/data.sh: {sub}: no such directory, which {path.name}'s recordings are in{hint}")
    found = len(first)
    for lineno, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError:
            sys.exit(f"local/data.sh: {path}:{lineno}: not UTF-8")
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            labels = {"text": " ".join(item["sentence"].split()), "scenario": item["scenario"],
                      "action": item["action"], "intent": item["intent"]}
            recordings = [r["file"] for r in item["recordings"]]
            slurp_id = item["slurp_id"]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            sys.exit(f"local/data.sh: {path}:{lineno}: not a SLURP record ({e!r})")
        if not labels["text"]:
            sys.exit(f"local/data.sh: {path}:{lineno}: sentence: empty")
        for key in ("scenario", "action", "intent"):   # labels are targets: one line of text each
            if not isinstance(labels[key], str) or not labels[key].strip() or len(labels[key].splitlines()) > 1:
                sys.exit(f"local/data.sh: {path}:{lineno}: {key}: {labels[key]!r} is not a label")
        unrecorded += not recordings
        for name in recordings:
            if not (sub / name).is_file():
                missing += 1
                continue
            utt = f"{slurp_id}-{Path(name).stem}"
            if sub / name in first:   # one recording, two prompts: two utterances of one audio
                if first[sub / name][1] != labels:
                    sys.exit(f"local/data.sh: {path}:{lineno}: recording {name} of slurp_id {slurp_id} again, with "
                             f"other labels than at {first[sub / name][0]}")
                repeated += 1
                continue
            first[sub / name] = (f"{path}:{lineno}", labels)
            try:
                files["wav.scp"][utt] = wav_scp_entry(sub / name)
            except DataError as e:
                sys.exit(f"local/data.sh: {path}:{lineno}: {e}")
            for key, value in labels.items():
                files[key][utt] = value
    if len(first) == found:
        sys.exit(f"local/data.sh: none of the recordings {path} names is in {sub}")
if missing:
    print(f"{out}: {missing} recordings named in the metadata are not in {audio}: skipped", file=sys.stderr)
if unrecorded:
    print(f"{out}: {unrecorded} prompts of the metadata list no recording: no utterance", file=sys.stderr)
if repeated:
    print(f"{out}: {repeated} recordings are named again in the metadata, with the same labels: kept once",
          file=sys.stderr)
try:
    n = write_tables(out, files)  # every recording its own speaker
except DataDirError as e:
    sys.exit(f"local/data.sh: {e}")
print(f"{out}: {n} utterances", file=sys.stderr)
PY
  echo "${audio_dir}" > "${dir}/.done"
}

if ${use_synth}; then make_dir train train train_synthetic; else make_dir train train; fi
make_dir devel devel
make_dir test test
log "done: $(ls -d "${datadir}"/*/ | tr '\n' ' ')"
