#!/usr/bin/env bash
# Stage 5 (+) of egs/mini: the text-only model on what it was trained on, posteriors simulated from the
# test text (with the training's simulation settings) instead of the encoder's on the test audio. The
# gap between the two is the text-to-speech gap that TASU has to close.
#
#   local/decode_simulated.sh --exp exp/tasu_train_text --data dump/test/ASR.jsonl \
#     --out exp/tasu_train_text/decode_simulated/test/ASR --draws 5 --decode_opts "--beam 1 --max-new-tokens 40"
#
# One draw of the simulation is a noisy measurement on a small test set: five draws for one model of the
# recipe (200 sentences) gave 2.9, 3.5, 4.6, 4.1 and 3.8 % WER, a spread as large as the spread over
# seeds. So the model decodes --draws draws (tasu decode --seed 0, 1, ...; draw 0 is the one a plain
# decode makes), each in <out>/draw<k>/ with its own score, and <out>/{ref,hyp}.trn pool them under
# keys made unique per draw: their WER (<out>/score.json) is the mean of the draws' WERs, the figure
# the report reads. The draws are a job array of cmd.sh's decode_cmd (logs: <out>/log/draw.<k>.log),
# --nj at a time, one thread each: most of a draw is a process starting and loading the model, and
# five draws of the recipe took 17.5 s two at a time against 27.9 one after the other (2-core AMD EPYC).
set -euo pipefail

. ./path.sh
. ./cmd.sh

exp=
data=
out=
draws=5
nj=2           # draws decoded at a time
decode_opts=   # more options of tasu decode, e.g. "--beam 1 --batch-size 32"

help_message="Usage: $0 [options]
  --exp <dir>     the text-only experiment (required)
  --data <jsonl>  the ASR records whose transcripts are simulated (required)
  --out <dir>     where the draws and the pooled score go (required)
  --draws <n>     draws of the simulation, scored together (default: ${draws})
  --nj <n>        draws decoded at a time (default: ${nj})
  --decode_opts <opts>  more options of tasu decode (default: none)"
. parse_options.sh
[ $# -eq 0 ] || { echo "$0: unexpected argument '$1' (run with --help)" >&2; exit 1; }
[ -n "${exp}" ] && [ -n "${data}" ] && [ -n "${out}" ] || { echo "$0: --exp, --data and --out are required" >&2; exit 1; }
[[ "${draws}" =~ ^[1-9][0-9]*$ ]] || { echo "$0: --draws '${draws}': expected a positive number" >&2; exit 1; }
[[ "${nj}" =~ ^[1-9][0-9]*$ ]] || { echo "$0: --nj '${nj}': expected a positive number" >&2; exit 1; }
for opt in ${decode_opts}; do   # each draw sets these: '--seed 3' made every draw one draw, scored as five
  case ${opt} in --seed|--input|--exp|--data|--out|--checkpoint|--seed=*|--input=*)
    echo "$0: --decode_opts: ${opt%%=*} is set for each draw by this script" >&2; exit 1 ;;
  esac
done
for path in "${exp}" "${data}" "${out}"; do   # each draw's command: every JOB in it becomes the draw
  [[ "${path}" != *JOB* ]] || { echo "$0: ${path}: a path with JOB in it would name another directory in" \
    "the draws' commands (utils/run_local.sh)" >&2; exit 1; }
done
# checked here, once, rather than by each of the draws' jobs
[ -d "${exp}" ] || { echo "$0: --exp ${exp}: no such experiment directory" >&2; exit 1; }
[ -f "${data}" ] || { echo "$0: --data ${data}: no such file" >&2; exit 1; }

mkdir -p "${out}"
# shellcheck disable=SC2086
${decode_cmd} --max_jobs_run "${nj}" JOB=0:$((draws - 1)) "${out}/log/draw.JOB.log" \
  tasu decode --exp "${exp}" --data "${data}" --out "${out}/drawJOB" --input simulated --seed JOB \
    --checkpoint best --device cpu ${decode_opts} '&&' \
  tasu score --ref "${out}/drawJOB/ref.trn" --hyp "${out}/drawJOB/hyp.trn" --metric wer --out "${out}/drawJOB"
for f in ref hyp; do
  for ((k = 0; k < draws; k++)); do
    awk -F '\t' -v OFS='\t' -v d="${k}" '{ $1 = $1 "#draw" d; print }' "${out}/draw${k}/${f}.trn"
  done > "${out}/${f}.trn.tmp"
  mv "${out}/${f}.trn.tmp" "${out}/${f}.trn"
done
tasu score --ref "${out}/ref.trn" --hyp "${out}/hyp.trn" --metric wer --out "${out}" >/dev/null
