#!/usr/bin/env bash
# Stage 1 (+) of egs/mini: the frozen models, trained here. The units first (the encoder emits them,
# the LLM learns to read them), then the encoder and the LLM at the same time, as two jobs of half the
# CPU threads each: neither reads the other, and small models use a second thread poorly. Measured
# on 2 cores (an earlier setting): an encoder epoch took 64 s alone on two threads, ~71 s on one beside
# the LLM; an LLM step 0.40 s and ~0.6 s: the pair took ~14 min where one after the other took 16.
# Today's defaults (12 encoder epochs of 6000 utterances, 1800 LLM steps) took 10.6-10.7 and 9.4-9.8 min
# on a 2-core AMD EPYC (the encoder's steps in bf16). 10 epochs took 9.3-9.5 there (in float32
# 13.6-16.1, and 9.0 on a fast Intel Xeon host, whose LLM took 6.2).
#
#   local/train_models.sh --datadir data --expdir exp --seed 1234
#   local/train_models.sh --datadir data --expdir exp --quick true    # tiny models, a few steps
#
# Writes exp/units/bpe.model, exp/encoder (local/train_encoder.py), exp/llm (local/train_llm.py),
# their logs exp/{encoder,llm}/train.log. A part finished with the same options (its .done) is
# skipped, so a killed run resumes with what is left; the units of another corpus (data/.done) are not.
set -euo pipefail

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*" >&2; }

. ./path.sh

datadir=data
expdir=exp
quick=false
seed=1234

help_message="Usage: $0 [options]
  --datadir <dir>   the corpus (local/data.sh) (default: ${datadir})
  --expdir <dir>    where units/, encoder/ and llm/ go (default: ${expdir})
  --quick <bool>    tiny settings that check the stage (default: ${quick})
  --seed <n>        the encoder's and the LLM's training (default: ${seed})"
. parse_options.sh
[ $# -eq 0 ] || { echo "$0: unexpected argument '$1' (run with --help)" >&2; exit 1; }

encoder_opts=(--seed "${seed}")
llm_opts=(--seed "${seed}")
if [ "${quick}" = true ]; then
  encoder_opts+=(--epochs 2)
  llm_opts+=(--steps 40 --warmup-steps 5)
fi

done_with() {  # done_with <dir> <options>: whether <dir> was finished with exactly these options
  [ -f "$1/.done" ] && [ "$(cat "$1/.done")" = "$2" ]
}

units=${expdir}/units/bpe.model
data_made=$(cat "${datadir}/.done" 2> /dev/null || true)   # the corpus's options (local/data.sh)
if [ -f "${units}" ] && [ ! -f "${expdir}/units/.done" ]; then   # made by a version that wrote none: kept
  echo "${data_made}" > "${expdir}/units/.done"
fi
if [ ! -f "${units}" ] || ! done_with "${expdir}/units" "${data_made}"; then   # none, or another corpus's
  rm -f "${expdir}/units/.done"
  python3 local/train_units.py --data-dir "${datadir}" --out "${units}"
  echo "${data_made}" > "${expdir}/units/.done"
  # models made with other units than these would not fit them
  rm -f "${expdir}/encoder/.done" "${expdir}/llm/.done"
fi

declare -A opts=([encoder]="${encoder_opts[*]}" [llm]="${llm_opts[*]}")  # what each .done records
jobs=()  # what is left to train
for name in encoder llm; do
  if done_with "${expdir}/${name}" "${opts[${name}]}"; then
    log "${expdir}/${name}: already trained (${opts[${name}]}), skipping"
  else
    jobs+=("${name}")
  fi
done
[ ${#jobs[@]} -gt 0 ] || exit 0

# Half the cores each, also when one job is left to train (a resumed stage): a model's float sums depend
# on its thread count, and a resumed run must compute what the uninterrupted one did.
threads=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))
pids=() stopped=
for sig in INT TERM HUP; do   # a stopped stage stops its jobs too, and says so once (not as two failures)
  trap "stopped=${sig}; kill \"\${pids[@]}\" 2> /dev/null || true" "${sig}"
done
for name in "${jobs[@]}"; do
  dir=${expdir}/${name}
  rm -f "${dir}/.done"
  mkdir -p "${dir}"
  if [ "${name}" = encoder ]; then
    cmd=(python3 local/train_encoder.py --data-dir "${datadir}" --units "${units}" --exp-dir "${dir}"
         "${encoder_opts[@]}")
  else
    cmd=(python3 local/train_llm.py --data-dir "${datadir}" --units "${units}" --out-dir "${dir}" "${llm_opts[@]}")
  fi
  log "${cmd[*]} (${threads} thread(s); log: ${dir}/train.log)"
  OMP_NUM_THREADS=${threads} MKL_NUM_THREADS=${threads} "${cmd[@]}" > "${dir}/train.log" 2>&1 &
  pids+=($!)
done

failed=0
for i in "${!jobs[@]}"; do
  name=${jobs[$i]}
  dir=${expdir}/${name}
  wait "${pids[$i]}" && rc=0 || rc=$?
  if [ -n "${stopped}" ]; then
    wait "${pids[$i]}" 2> /dev/null || true   # the trap interrupted the first wait
    continue
  fi
  if [ "${rc}" -eq 0 ]; then
    echo "${opts[${name}]}" > "${dir}/.done"
    log "${dir}: $(tail -n 2 "${dir}/train.log" | head -n 1 | cut -d' ' -f4-)"
  else
    tail -n 15 "${dir}/train.log" | sed 's/^/    /' >&2
    echo "$0: training ${dir} failed: the end of its log (${dir}/train.log) is above" >&2
    failed=1
  fi
done
if [ -n "${stopped}" ]; then
  echo "$0: stopped by a signal; the trainings were stopped (a rerun resumes them)" >&2
  trap - "${stopped}"
  kill -s "${stopped}" $$
fi
exit ${failed}
