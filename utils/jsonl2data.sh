#!/usr/bin/env bash
# JSONL records -> Kaldi data dir (wav.scp, text, utt2spk, spk2utt, and segments when records
# have start/end), sorted, for Kaldi/ESPnet tools.
#
#   utils/jsonl2data.sh data/train/asr.jsonl data/train_kaldi
#
# Fields a data dir cannot hold (GT, pass-through fields) are dropped with a warning.
# Details: python -m tasu.data.kaldi_dir --help.
set -euo pipefail

help_message="Usage: $0 <in.jsonl> <data-dir>"
. "$(dirname "$0")/parse_options.sh"

if [ $# -ne 2 ]; then
  printf '%s\n' "${help_message}" >&2
  exit 1
fi
exec python3 -m tasu.data.kaldi_dir to-dir "$@"
