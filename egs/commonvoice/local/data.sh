#!/usr/bin/env bash
# Common Voice release -> Kaldi data dirs.
#
#   <COMMONVOICE>/{train,dev,test}.tsv: a header line naming the columns (client_id, path, sentence,
#                                       up_votes, ...; the set differs between releases), then one clip a line
#   <COMMONVOICE>/clips/<path>:         the clips, mp3 (48 kHz)
#
# writes data/{train,dev,test}: utterance = the clip's name without .mp3, speaker = client_id, text
# = the sentence as released (cased, punctuated: the scorer normalises). The mp3 files are read
# directly by soundfile (libsndfile >= 1.1); with an older libsndfile wav.scp pipes them through
# ffmpeg instead (see --mp3_reader). A finished dir has a .done marker naming the release directory
# and is not made again (another COMMONVOICE is refused: wav.scp holds the old release's paths).
set -euo pipefail

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*" >&2; }

. ./db.sh
. ./path.sh

datadir=data
sets=train,dev,test
mp3_reader=auto

help_message="Usage: $0 [options]
  --datadir <dir>       where the data dirs go (default: ${datadir})
  --sets <a,b>          the release's tsv files to convert, comma separated (default: ${sets})
  --mp3_reader <how>    soundfile: wav.scp names the mp3; ffmpeg: a '... |' pipe decoding it to
                        16 kHz wav; auto: soundfile when it reads MP3 (default: ${mp3_reader})"
. parse_options.sh

[ -d "${COMMONVOICE}/clips" ] || { log "ERROR: no clips/ under '${COMMONVOICE}': set COMMONVOICE in db.sh"; exit 1; }
if [ "${mp3_reader}" = auto ]; then
  if python3 -c 'import soundfile, sys; sys.exit("MP3" not in soundfile.available_formats())'; then
    mp3_reader=soundfile
  else
    mp3_reader=ffmpeg
    log "this libsndfile cannot read MP3 (needs >= 1.1): wav.scp decodes the clips with ffmpeg"
  fi
fi
case ${mp3_reader} in
  soundfile) ;;
  ffmpeg) command -v ffmpeg > /dev/null || { log "ERROR: --mp3_reader ffmpeg: ffmpeg is not installed"; exit 1; } ;;
  *) log "ERROR: --mp3_reader must be auto, soundfile or ffmpeg, not '${mp3_reader}'"; exit 1 ;;
esac

for set in ${sets//,/ }; do
  dir=${datadir}/${set}
  if [ -f "${dir}/.done" ]; then
    was=$(cat "${dir}/.done")
    if [ -n "${was}" ] && [ "${was}" != "${COMMONVOICE}" ]; then   # empty: an older marker
      log "ERROR: ${dir} was made from ${was}, not ${COMMONVOICE}: remove it (rm -r ${dir}) to make it again"
      exit 1
    fi
    log "${dir}: already prepared (${dir}/.done), skipping"
    continue
  fi
  log "${COMMONVOICE}/${set}.tsv + clips/ -> ${dir} (mp3 read by ${mp3_reader})"
  python3 - "${COMMONVOICE}" "${set}" "${dir}" "${mp3_reader}" <<'PY'
import sys
from pathlib import Path

from tasu.data.corpus_tsv import read_tsv
from tasu.data.kaldi_dir import DataDirError, wav_scp_entry, write_tables
from tasu.data.records import DataError

root, name, out, reader = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
tsv = root / f"{name}.tsv"
wav, text, spk, where = {}, {}, {}, {}
missing = repeated = 0
try:
    for lineno, row in read_tsv(tsv, {"client_id", "path", "sentence"}):
        sentence = " ".join(row["sentence"].split())
        if Path(row["path"]).is_absolute() or ".." in Path(row["path"]).parts:
            raise DataError(str(tsv), lineno, "path", f"{row['path']!r}: not a file of clips/")
        clip = root / "clips" / row["path"]
        if not sentence:
            print(f"{tsv}:{lineno}: empty sentence, skipped", file=sys.stderr)
            continue
        if not clip.is_file():
            missing += 1
            continue
        utt = Path(row["path"]).stem
        if utt in text:   # the same row again is harmless; another sentence or speaker is not
            if (text[utt], spk[utt]) != (sentence, row["client_id"]):
                raise DataError(str(tsv), lineno, "path", f"{row['path']} again, with another sentence or "
                                                          f"client_id than on line {where[utt]}")
            repeated += 1
            continue
        where[utt] = lineno
        try:
            wav[utt] = wav_scp_entry(clip, reader)
        except DataError as e:
            raise DataError(str(tsv), lineno, "path", str(e)) from None
        text[utt], spk[utt] = sentence, row["client_id"]
except DataError as e:
    sys.exit(f"local/data.sh: {e}")
if missing:
    print(f"{tsv}: {missing} clips are not in {root / 'clips'}: skipped", file=sys.stderr)
if repeated:
    print(f"{tsv}: {repeated} rows repeat a clip named before, word for word: kept once", file=sys.stderr)
if not text:
    sys.exit(f"local/data.sh: {tsv}: no utterances")
try:
    n = write_tables(out, {"wav.scp": wav, "text": text, "utt2spk": spk})
except DataDirError as e:
    sys.exit(f"local/data.sh: {tsv}: {e}")
print(f"{out}: {n} utterances, {len(set(spk.values()))} speakers", file=sys.stderr)
PY
  echo "${COMMONVOICE}" > "${dir}/.done"
done

# A release's sets share no clip; a train.tsv made from validated.tsv holds dev and test. Said, not refused.
python3 - "${datadir}" ${sets//,/ } <<'PY'
import sys
from pathlib import Path

datadir, sets = Path(sys.argv[1]), list(dict.fromkeys(sys.argv[2:]))
utts = {s: {line.split(maxsplit=1)[0] for line in open(datadir / s / "text", encoding="utf-8") if line.strip()}
        for s in sets}
for i, a in enumerate(sets):
    for b in sets[i + 1:]:
        shared = sorted(utts[a] & utts[b])
        if shared:
            print(f"WARNING: {len(shared)} clips are in both {datadir / a} and {datadir / b} (e.g. {shared[0]}): "
                  f"scores on one are of audio the other trains or tunes on", file=sys.stderr)
PY
log "done: $(ls -d "${datadir}"/*/ | tr '\n' ' ')"
