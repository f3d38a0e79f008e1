#!/usr/bin/env bash
# JSONL records -> Kaldi data dir (wav.scp, text, utt2spk, spk2utt, and segments when records
# have start/end), sorted, for Kaldi/ESPnet tools.
#
#   utils/jsonl2data.sh data/train/asr.jsonl data/train_kaldi
#
# Fields a data dir cannot hold (GT, pass-through fields) are dropped with a warning. A <data-dir>
# that holds a data dir already is refused unless --overwrite true (records whose target is a label
# would replace its transcripts). Details: python -m tasu.data.kaldi_dir --help.
set -euo pipefail

overwrite=false

help_message="Usage: $0 [--overwrite false] <in.jsonl> <data-dir>
  --overwrite <bool>   replace the data dir that <data-dir> holds (default: ${overwrite})"
. "$(dirname "$0")/parse_options.sh"

if [ $# -ne 2 ]; then
  printf '%s\n' "${help_message}" >&2
  exit 1
fi
case ${overwrite} in
  true) opts=(--overwrite) ;;
  false) opts=() ;;
  *) echo "$0: --overwrite must be true or false, not '${overwrite}'" >&2; exit 1 ;;
esac
# the active Python when it has tasu, else the one tools/setup.sh made (run from outside a recipe)
python=python3
if ! python3 -c 'import tasu' 2> /dev/null; then
  python=$(dirname "$0")/../tools/venv/bin/python
  [ -x "${python}" ] || { echo "$0: no Python with tasu: run tools/setup.sh, or activate yours" >&2; exit 1; }
fi
exec "${python}" -m tasu.data.kaldi_dir to-dir "${opts[@]}" "$@"
