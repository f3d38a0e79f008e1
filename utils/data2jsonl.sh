#!/usr/bin/env bash
# Kaldi data dir (wav.scp, text, optional segments and utt2spk) -> JSONL records, one per utterance.
#
#   utils/data2jsonl.sh --task ASR data/train > data/train/asr.jsonl
#   utils/data2jsonl.sh --task ASR data/train data/train/asr.jsonl
#   utils/data2jsonl.sh --task SLU_scenario --target_file scenario data/train out.jsonl  # GT from text
#   utils/data2jsonl.sh --text_only true data/train train_text.jsonl                    # no path
#
# A malformed line stops it with FILE:LINE: message (nothing is written); utterances missing from
# a file they need are skipped with a warning; an <out.jsonl> that is a table of <data-dir> is refused.
# Details: python -m tasu.data.kaldi_dir --help.
set -euo pipefail

task=ASR
target_file=
text_only=false

help_message="Usage: $0 [--task ASR] [--target_file FILE] [--text_only false] <data-dir> [<out.jsonl>]
  --task <name>          task of every record (default: ${task})
  --target_file <file>   per-utterance file of the dir holding the targets, e.g. scenario; the
                         transcripts in text then become GT (default: '${target_file}': targets in text)
  --text_only <bool>     records without path, read from text alone (default: ${text_only})
  <out.jsonl>            file to write (default: standard output)"
. "$(dirname "$0")/parse_options.sh"

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  printf '%s\n' "${help_message}" >&2
  exit 1
fi
opts=(--task "${task}")
[ -n "${target_file}" ] && opts+=(--target-file "${target_file}")
[ "${text_only}" = true ] && opts+=(--text-only)
# the active Python when it has tasu, else the one tools/setup.sh made (run from outside a recipe)
python=python3
if ! python3 -c 'import tasu' 2> /dev/null; then
  python=$(dirname "$0")/../tools/venv/bin/python
  [ -x "${python}" ] || { echo "$0: no Python with tasu: run tools/setup.sh, or activate yours" >&2; exit 1; }
fi
exec "${python}" -m tasu.data.kaldi_dir to-jsonl "${opts[@]}" "$@"
