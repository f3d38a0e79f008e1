#!/usr/bin/env bash
# LibriSpeech release -> Kaldi data dirs.
#
#   <LIBRISPEECH>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
#   <LIBRISPEECH>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt  ("<utt-id> TEXT" lines)
#
# writes data/train (the --train_subsets together), data/<subset> for each --eval_subsets (dashes
# become underscores: dev-clean -> data/dev_clean) and, when --lm_text is set, data/lm_norm/text (the
# LM corpus as numbered lines, for text-only training). Without --eval_subsets, the evaluation sets
# are the ones the run names (--valid_set and --test_sets of the stage script, which passes them in
# TASU_DATA_SETS), else all four. Speakers are <speaker>-<chapter>, as in Kaldi's recipe. A finished
# dir has a .done marker naming its subsets and the corpus directory, and is not made again (another
# --train_subsets or LIBRISPEECH is refused: wav.scp holds the old corpus's paths).
set -euo pipefail

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*" >&2; }

. ./db.sh
. ./path.sh

datadir=data
train_subsets=train-clean-100
eval_subsets=
lm_text=${LIBRISPEECH_LM_NORM}
lm_max_lines=0

help_message="Usage: $0 [options]
  --datadir <dir>          where the data dirs go (default: ${datadir})
  --train_subsets <a,b>    subsets making data/train, comma separated; all of it is
                           train-clean-100,train-clean-360,train-other-500 (default: ${train_subsets})
  --eval_subsets <a,b>     subsets made into their own dirs (default: the run's valid and test
                           sets, else dev-clean,dev-other,test-clean,test-other)
  --lm_text <file>         librispeech-lm-norm.txt for data/lm_norm; empty: none (default: '${lm_text}')
  --lm_max_lines <n>       use the first n lines of --lm_text, 0 for all (default: ${lm_max_lines})"
. parse_options.sh

[ -d "${LIBRISPEECH}" ] || { log "ERROR: LibriSpeech not found at '${LIBRISPEECH}': set LIBRISPEECH in db.sh"; exit 1; }

[ "${lm_max_lines}" -ge 0 ] || { log "ERROR: --lm_max_lines must be 0 (all) or more, not ${lm_max_lines}"; exit 1; }
lm_max_lines=$((10#${lm_max_lines}))   # a whole number (parse_options.sh checks that); 007 is 7
if [ -n "${lm_text}" ] && [ ! -f "${datadir}/lm_norm/.done" ] && [ ! -f "${lm_text}" ]; then
  log "ERROR: --lm_text ${lm_text}: no such file"; exit 1   # said before the audio subsets take their time
fi

if [ -z "${eval_subsets}" ]; then
  for set in ${TASU_DATA_SETS:-}; do   # the run's data dirs: dev_clean -> subset dev-clean
    case ${set} in train|lm_norm) ;; *)   # a set both validated on and tested: once
      case ,${eval_subsets}, in *,${set//_/-},*) ;; *) eval_subsets+="${eval_subsets:+,}${set//_/-}" ;; esac ;;
    esac
  done
  eval_subsets=${eval_subsets:-dev-clean,dev-other,test-clean,test-other}
fi

make_dir() {  # make_dir <name> <subset,...>; .done names the subsets and the corpus
  local dir=${datadir}/$1 made="$2 of ${LIBRISPEECH}"
  if [ -f "${dir}/.done" ]; then
    local was; was=$(cat "${dir}/.done")
    if [ -n "${was}" ] && [ "${was}" != "${made}" ] && [ "${was}" != "$2" ]; then  # $2 alone: an older marker
      log "ERROR: ${dir} was made from ${was}, not ${made}: remove it (rm -r ${dir}) to make it again"
      exit 1
    fi
    log "${dir}: already prepared (${dir}/.done), skipping"
    return
  fi
  log "${LIBRISPEECH}/{$2} -> ${dir}"
  python3 - "${LIBRISPEECH}" "$2" "${dir}" <<'PY'
import sys
from pathlib import Path

from tasu.data.kaldi_dir import DataDirError, wav_scp_entry, write_tables
from tasu.data.records import DataError

root, subsets, out = Path(sys.argv[1]), list(dict.fromkeys(sys.argv[2].split(","))), Path(sys.argv[3])
wav, text, spk, where = {}, {}, {}, {}  # where: utt -> the trans.txt line that named it
for subset in subsets:
    if not (root / subset).is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        sys.exit(f"local/data.sh: {root / subset}: no such subset directory; this run needs "
                 f"{', '.join(subsets)}, and {root} has {', '.join(found) or 'no subset'}")
    before = len(text)
    for trans in sorted((root / subset).glob("*/*/*.trans.txt")):
        for lineno, raw in enumerate(trans.read_bytes().split(b"\n"), 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                sys.exit(f"local/data.sh: {trans}:{lineno}: not UTF-8 (byte {e.start + 1} of the line)")
            if not line.strip():
                continue
            utt, *words = line.split(maxsplit=1)
            audio = trans.parent / f"{utt}.flac"
            if not words or not audio.is_file():
                sys.exit(f"local/data.sh: {trans}:{lineno}: {f'{audio} is missing' if words else 'no transcript'}")
            if utt in where:
                sys.exit(f"local/data.sh: {trans}:{lineno}: utterance {utt} again ({where[utt]} named it): "
                         "is a subset in the list twice, under two names?")
            try:
                wav[utt] = wav_scp_entry(audio)
            except DataError as e:
                sys.exit(f"local/data.sh: {trans}:{lineno}: {e}")
            text[utt], spk[utt] = " ".join(words[0].split()), "-".join(utt.split("-")[:2])
            where[utt] = f"{trans}:{lineno}"
    # a chapter without its trans.txt (a partial extraction) would otherwise vanish without a word
    unlisted = sorted(f for f in (root / subset).glob("*/*/*.flac") if f.stem not in text)
    if unlisted:
        print(f"{root / subset}: {len(unlisted)} .flac files are in no *.trans.txt (e.g. {unlisted[0]}): skipped",
              file=sys.stderr)
    if len(text) == before:   # an empty subset, or one extracted where it is not looked for
        elsewhere = next((root / subset).rglob("*.trans.txt"), None)
        hint = (f"; {elsewhere} is not at <subset>/<speaker>/<chapter>/ (extracted one level too deep?)"
                if elsewhere else "")
        sys.exit(f"local/data.sh: {root / subset}: no <speaker>/<chapter>/*.trans.txt{hint}")
try:
    n = write_tables(out, {"wav.scp": wav, "text": text, "utt2spk": spk})
except DataDirError as e:
    sys.exit(f"local/data.sh: {e}")
print(f"{out}: {n} utterances, {len(set(spk.values()))} speakers", file=sys.stderr)
PY
  echo "${made}" > "${dir}/.done"
}

for subset in ${eval_subsets//,/ }; do   # scores on audio the model trained on: allowed, said
  case ,${train_subsets}, in *,${subset},*) log "WARNING: ${subset} is in --train_subsets and --eval_subsets" ;; esac
done
make_dir train "${train_subsets}"
for subset in ${eval_subsets//,/ }; do
  make_dir "${subset//-/_}" "${subset}"
done

lm_lines() {  # the lines of --lm_text, the first --lm_max_lines of them (0: all); OpenSLR 11 ships it gzipped
  case ${lm_text}:${lm_max_lines} in
    *.gz:0) gzip -cd "${lm_text}" ;;
    *.gz:*) python3 -c 'import gzip, itertools, sys
with gzip.open(sys.argv[1], "rb") as f:
    sys.stdout.buffer.writelines(itertools.islice(f, int(sys.argv[2])))' "${lm_text}" "${lm_max_lines}" ;;
    *:0) cat "${lm_text}" ;;
    *) head -n "${lm_max_lines}" "${lm_text}" ;;   # no pipe: a writer cut off early fails where SIGPIPE is ignored
  esac
}

if [ -n "${lm_text}" ]; then
  dir=${datadir}/lm_norm made="${lm_text} (lines: ${lm_max_lines}, 0 for all)"
  was=$(cat "${dir}/.done" 2>/dev/null || true)
  if [ -n "${was}" ] && [ "${was}" != "${made}" ]; then
    log "ERROR: ${dir} was made from ${was}, not ${made}: remove it (rm -r ${dir}) to make it again"
    exit 1
  elif [ -f "${dir}/.done" ]; then
    log "${dir}: already prepared (${dir}/.done), skipping"
  else
    log "${lm_text} -> ${dir}/text (ids lm_<line>)"
    mkdir -p "${dir}"
    lm_lines | awk '{ sub(/\r$/, "") } NF { $1 = $1; printf "lm_%09d %s\n", NR, $0 }' > "${dir}/text"  # single spaces
    if ! iconv -f UTF-8 -t UTF-8 "${dir}/text" > /dev/null 2>&1; then
      rm "${dir}/text"
      log "ERROR: --lm_text ${lm_text}: not UTF-8 text (compressed other than with gzip?)"; exit 1
    fi
    echo "${made}" > "${dir}/.done"
  fi
fi
log "done: $(ls -d "${datadir}"/*/ | tr '\n' ' ')"
