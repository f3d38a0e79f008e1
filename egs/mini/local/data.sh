#!/usr/bin/env bash
# The mini corpus, made here rather than downloaded: local/make_corpus.py speaks grammar sentences
# with espeak-ng and flite (the train audio speed-perturbed and noised with sox) into Kaldi data dirs data/{train,dev,test,test_ood}/{wav.scp,text,utt2spk,spk2utt,
# utt2dur,scenario} and writes the text-only text to data/text_only/{text,scenario}.
#
#   local/data.sh                 # full: 6000/200/200/200 utterances + 4000 text-only sentences (~2 min)
#   local/data.sh --quick true    # tests: 300/40/40/40 + 600 (~15 s)
#
# Re-running with the same options is a no-op (data/.done records them); other options remake all.
set -euo pipefail

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*" >&2; }

. ./path.sh

datadir=data
quick=false
nj=2
seed=1234

help_message="Usage: $0 [options]
  --datadir <dir>   where the data dirs go (default: ${datadir})
  --quick <bool>    small sizes for tests (default: ${quick})
  --nj <n>          parallel synthesis processes (default: ${nj})
  --seed <n>        sentences, voices, rates and pitches (default: ${seed})"
. parse_options.sh
[ $# -eq 0 ] || { echo "$0: unexpected argument '$1' (run with --help)" >&2; exit 1; }

opts=(--data-dir "${datadir}" --nj "${nj}" --seed "${seed}")
[ "${quick}" = true ] && opts+=(--quick)
marker="quick=${quick} seed=${seed}"   # --nj does not change the corpus
if [ -f "${datadir}/.done" ] && [ "$(cat "${datadir}/.done")" = "${marker}" ]; then
  log "${datadir}: already made with ${marker} (${datadir}/.done), skipping"
  exit 0
fi
rm -f "${datadir}/.done"
log "local/make_corpus.py ${opts[*]}"
python3 local/make_corpus.py "${opts[@]}"
echo "${marker}" > "${datadir}/.done"
log "done: $(ls -d "${datadir}"/*/ | tr '\n' ' ')"
