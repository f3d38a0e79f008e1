#!/usr/bin/env bash
# LibriSpeech: text-only TASU training on the training transcripts (plus the LM corpus when
# LIBRISPEECH_LM_NORM is set in db.sh), zero-shot ASR on dev/test clean/other.
#   ./run.sh --encoder_path /models/SenseVoiceSmall --llm_path /models/Qwen2.5-1.5B-Instruct
# All options: ../TEMPLATE/tasu.sh --help.
set -euo pipefail
[ "$(cd "$(dirname "$0")" && pwd -P)" = "$(pwd -P)" ] || \
  { echo "$0: run it from its own directory: cd $(dirname "$0") && ./run.sh" >&2; exit 1; }
. ./db.sh

train_set=train
valid_set=dev_clean
test_sets="dev_clean dev_other test_clean test_other"
extra_text_sets=
[ -n "${LIBRISPEECH_LM_NORM}" ] && extra_text_sets=lm_norm

../TEMPLATE/tasu.sh \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --tasks "ASR" \
    --extra_text_sets "${extra_text_sets}" \
    --train_text_config conf/train_text.yaml \
    --train_audio_config conf/train_audio_sft.yaml \
    --decode_config conf/decode_beam4.yaml \
    "$@"
