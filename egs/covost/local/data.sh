#!/usr/bin/env bash
# CoVoST 2 (English speech -> other languages) -> Kaldi data dirs with the translations beside the
# transcripts (local/data_prep.py does the reading).
#
#   <COVOST2>/covost_v2.en_<lang>.tsv:  the release's table: header 'path sentence translation split',
#                                       split being train, train_covost (joined to train), dev or test;
#                                       or, where it is absent, get_covost_splits.py's output,
#                                       covost_v2.en_<lang>.{train,dev,test}.tsv ('path sentence
#                                       translation client_id')
#   <COMMONVOICE>/validated.tsv:        the speakers (client_id) of the release's table, joined on path
#   <COMMONVOICE>/clips/<path>:         the English clips (mp3)
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
case ${mp3_reader} in
  soundfile) ;;
  ffmpeg) command -v ffmpeg > /dev/null || { log "ERROR: --mp3_reader ffmpeg: ffmpeg is not installed"; exit 1; } ;;
  *) log "ERROR: --mp3_reader must be auto, soundfile or ffmpeg, not '${mp3_reader}'"; exit 1 ;;
esac

sets=train,dev,test
made="${pairs} of ${COVOST2} and ${COMMONVOICE}"   # what .done records: another one is refused
todo=
for set in ${sets//,/ }; do
  if [ -f "${datadir}/${set}/.done" ]; then
    was=$(cat "${datadir}/${set}/.done")
    if [ -n "${was}" ] && [ "${was}" != "${made}" ]; then   # empty: an older marker
      log "ERROR: ${datadir}/${set} was made from ${was}, not ${made}:" \
          "remove it (rm -r ${datadir}/${set}) to make it again"
      exit 1
    fi
    log "${datadir}/${set}: already prepared (${datadir}/${set}/.done), skipping"
  else
    todo+=${todo:+,}${set}
  fi
done
if [ -n "${todo}" ]; then
  log "${COVOST2}/covost_v2.{${pairs}}.tsv + ${COMMONVOICE}/clips -> ${datadir}/{${todo}} (mp3 read by ${mp3_reader})"
  python3 local/data_prep.py "${COVOST2}" "${COMMONVOICE}" "${datadir}" --sets "${todo}" --pairs "${pairs}" \
    --mp3-reader "${mp3_reader}" --done "${made}"
fi
log "done: $(ls -d "${datadir}"/*/ | tr '\n' ' ')"
