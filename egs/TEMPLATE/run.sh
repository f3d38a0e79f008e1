#!/usr/bin/env bash
# <corpus>: what is trained on and what is evaluated, in one line.
#   ./run.sh --encoder_path /models/SenseVoiceSmall --llm_path /models/Qwen2.5-1.5B-Instruct
# All options: ../TEMPLATE/tasu.sh --help.
set -euo pipefail
[ "$(cd "$(dirname "$0")" && pwd -P)" = "$(pwd -P)" ] || \
  { echo "$0: run it from its own directory: cd $(dirname "$0") && ./run.sh" >&2; exit 1; }

train_set=train
valid_set=dev
test_sets="test"
tasks="ASR"          # TASK or TASK:file-of-targets in data/<set>, e.g. "ASR SLU_scenario:scenario"

../TEMPLATE/tasu.sh \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --tasks "${tasks}" \
    --train_text_config conf/train_text.yaml \
    --train_audio_config conf/train_audio_sft.yaml \
    --decode_config conf/decode_beam4.yaml \
    "$@"
