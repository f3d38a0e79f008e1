#!/usr/bin/env bash
# Kaldi data dir (wav.scp, text, optional segments and utt2spk) -> JSONL records, one per utterance.
#
#   utils/data2jsonl.sh --task ASR data/train > data/train/asr.jsonl
#   utils/data2jsonl.sh --task ASR data/train data/train/asr.jsonl
#
# A malformed line stops it with FILE:LINE: message (nothing is written); utterances missing from
# a file they need are skipped with a warning. Details: python -m tasu.data.kaldi_dir --help.
set -euo pipefail

task=ASR

help_message="Usage: $0 [--task ASR] <data-dir> [<out.jsonl>]
  --task <name>   task of every record (default: ${task}); the text file holds the targets
  <out.jsonl>     file to write (default: standard output)"
. "$(dirname "$0")/parse_options.sh"

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  printf '%s\n' "${help_message}" >&2
  exit 1
fi
exec python3 -m tasu.data.kaldi_dir to-jsonl --task "${task}" "$@"
