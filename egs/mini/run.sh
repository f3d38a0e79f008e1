#!/usr/bin/env bash
# egs/mini: TASU end to end on 2 CPU cores, offline, from a fresh clone. Speech is made with espeak-ng,
# the frozen encoder and LLM are trained here, and the recipe shows the claim: a projector aligned
# from text alone gives working recognition and understanding from speech.
#
#   ./run.sh                  # everything (~18 min and 2.1 GB on 2 cores); ends by printing the results table
#   ./run.sh --stage 3        # from the text-only training on
#   ./run.sh --quick true     # every stage on a tiny corpus with tiny models (~6 min; the tests run it)
#   ./run.sh --seeds "1 2 3"  # the whole run once per seed, in seeds/seed<N>/; RESULTS.md: mean +- sd
#
# Stages, as in ../TEMPLATE/tasu.sh, which runs all but the mini-only parts marked (+):
#   1. local/data.sh: espeak-ng and flite speak grammar sentences -> data/{train,dev,test,test_ood,text_only}
#      (+) local/train_models.sh: the CTC units (exp/units), then at once, one core each,
#          local/train_encoder.py: the frozen CTC encoder, trained on data/train -> exp/encoder
#          local/train_llm.py: the frozen LLM, trained on the training text -> exp/llm
#   2. JSONL: dump/<set>/{ASR,SLU_scenario}.jsonl and the text-only files
#   3. text-only TASU training                        -> exp/tasu_train_text
#   4. audio fine-tuning from it (the curriculum)     -> exp/tasu_train_text_then_train_audio_sft
#      and, at the same time, the same from scratch (audio-only baseline) -> exp/train_audio_sft_from_scratch
#   5. decoding test and test_ood with the three; (+) the text-only model also decodes posteriors
#      simulated from the test text (what it was trained on; local/decode_simulated.sh); 6. scoring
#   7. RESULTS.md: (+) the summary table with the encoder's own greedy CTC scores, the targets and the
#      resources each stage used; every table of 'tasu results'; (+) RESULTS.png, the plot it shows
set -euo pipefail
[ "$(cd "$(dirname "$0")" && pwd -P)" = "$(pwd -P)" ] || \
  { echo "$0: run it from its own directory: cd $(dirname "$0") && ./run.sh" >&2; exit 1; }

stage=1
stop_stage=7
quick=false     # tiny corpus and models, a few steps each: checks every stage, proves nothing
seed=1234       # corpus, encoder, LLM and TASU training; the same seed gives the same table
seeds=          # e.g. "1 2 3": one whole run per seed (in <workdir>/seeds/seed<N>/), then a report of mean +- sd
workdir=.       # where data/, dump/, exp/ and RESULTS.md go (with --seeds: seeds/ and the report)
tasu_opts=      # more options of ../TEMPLATE/tasu.sh, e.g. "--ngpu 2 --device cpu"

help_message="Usage: $0 [options]
  --stage <n>        first stage to run (default: ${stage})
  --stop_stage <n>   last stage to run (default: ${stop_stage})
  --quick <bool>     tiny corpus and models, a few steps each: checks every stage (default: ${quick})
  --seed <n>         corpus, encoder, LLM and TASU training (default: ${seed})
  --seeds <list>     e.g. \"1 2 3\": the whole run once per seed, then mean +- sd (default: none)
  --workdir <dir>    where data/, dump/, exp/ and RESULTS.md go; with --seeds, seeds/seed<N>/ and the
                     report of mean +- sd (default: ${workdir})
  --tasu_opts <opts> more options of ../TEMPLATE/tasu.sh, e.g. \"--ngpu 2 --device cpu\" (default: none)"

. ./path.sh
. parse_options.sh
[ $# -eq 0 ] || { echo "$0: unexpected argument '$1' (run with --help)" >&2; exit 1; }
# Checked before anything runs: a bad seed in --seeds would otherwise stop the run after the seeds before it.
for n in "${stage}" "${stop_stage}"; do
  [ "${n}" -ge 1 ] && [ "${n}" -le 7 ] || \
    { echo "$0: stage ${n}: there is no such stage (the stages are 1-7)" >&2; exit 1; }
done
[ "${stage}" -le "${stop_stage}" ] || \
  { echo "$0: --stage ${stage} comes after --stop_stage ${stop_stage}: nothing to run" >&2; exit 1; }
# a seed as Python and YAML read it: 01 is 1 (counted twice in the mean), and torch takes 64 bits
read -r -a seed_words <<< "${seed} ${seeds}"   # words, never globs ('*' named the files here)
for s in "${seed_words[@]}"; do
  [[ "${s}" =~ ^(0|[1-9][0-9]{0,8})$ ]] || { echo "$0: seed '${s}': expected a whole number from 0 to 999999999," \
    "without leading zeros" >&2; exit 1; }
done
if [ -n "${seeds}" ] && [ -z "${seeds// /}" ]; then
  echo "$0: --seeds is blank: name the seeds, e.g. \"1 2 3\"" >&2; exit 1
fi
[ -z "$(printf '%s\n' ${seeds} | sort | uniq -d)" ] || \
  { echo "$0: --seeds '${seeds}' names a seed twice: each would count as another run in the mean and sd" >&2; exit 1; }
# --tasu_opts come last, so they would replace what run.sh sets: the seed and quick settings travel in
# --train_*_args, and stages 5-7 read the directories run.sh names.
set_here=" stage stop_stage datadir dumpdir expdir local_data_opts train_set valid_set test_sets tasks
  extra_text_sets encoder_path llm_path train_text_config train_audio_config audio_sft audio_baseline
  baseline_at_once decode_config train_text_args train_audio_args decode_args results "
read -r -a tasu_args <<< "${tasu_opts}"   # split into words, but no word is a glob (--device *)
for opt in "${tasu_args[@]}"; do
  name=${opt#--}
  if [ "${name}" = config ]; then   # a file of assignments would get past the check of the names below
    echo "$0: --tasu_opts: --config is not taken here: give tasu.sh's options one by one" >&2
    exit 1
  fi
  [ "${opt}" != "${name}" ] && [[ "${set_here}" == *[[:space:]]"${name//-/_}"[[:space:]]* ]] || continue
  echo "$0: --tasu_opts: ${opt} is set by run.sh itself (the seed and quick settings ride on it, or the" \
    "later stages read it): edit conf/ or run.sh instead" >&2
  exit 1
done

[ -n "${workdir}" ] || { echo "$0: --workdir is empty: name a directory (default: .)" >&2; exit 1; }
[[ "${workdir}" != *JOB* ]] || { echo "$0: --workdir ${workdir}: the job runner makes every JOB of a job's" \
  "command its number (utils/run_local.sh): a path with JOB in it would name another directory" >&2; exit 1; }

if [ -n "${seeds}" ]; then
  # Everything that depends on the seed (corpus, encoder, LLM, TASU training) is repeated per seed, each
  # in its own directory; the report gives each cell's mean and standard deviation over the seeds.
  base=${workdir%/}/    # each seed in <workdir>/seeds/seed<N>/, the report in <workdir>/RESULTS.md
  [ "${workdir}" = . ] && base=
  runs=()
  for s in ${seeds}; do
    runs+=("${base}seeds/seed${s}")
    "$0" --stage "${stage}" --stop_stage "${stop_stage}" --quick "${quick}" --seed "${s}" \
      --workdir "${base}seeds/seed${s}" --tasu_opts "${tasu_opts}"
  done
  if [ "${stop_stage}" -ge 7 ]; then
    cp "${runs[0]}/RESULTS.md" "${base}RESULTS.md"  # its environment block and tables; the summary goes in
    python3 local/report.py --runs "${runs[@]}" --results "${base}RESULTS.md"
  fi
  exit 0
fi

# data/, dump/ and exp/ hold one setting: a run with another would mix old and new parts.
data=${workdir%/}/data
dump=${workdir%/}/dump
exp=${workdir%/}/exp
[ "${workdir}" = . ] && data=data dump=dump exp=exp
results=${workdir%/}/RESULTS.md
[ "${workdir}" = . ] && results=RESULTS.md
setting="quick=${quick} seed=${seed}"

train_args="train.seed=${seed}"
train_text_args=${train_args}
train_audio_args=${train_args}
decode_args=
decode_opts=(--beam 1 --batch-size 32 --max-new-tokens 40)  # as conf/decode_greedy.yaml
posterior_dumps=true  # stages 4-5 read the encoder's posteriors from dumps made once
sim_draws=5           # stage 5's draws of simulated test posteriors (local/decode_simulated.sh)
if ${quick}; then
  quick_train="train.log_interval=5 train.valid_interval=10 train.save_interval=10 optim.warmup_steps=2"
  train_text_args+=" ${quick_train} train.max_steps=20 optim.total_steps=20"
  train_audio_args+=" ${quick_train} train.max_steps=10 optim.total_steps=10"
  decode_args="--max-new-tokens 16"
  decode_opts=(--beam 1 --batch-size 32 --max-new-tokens 16)
  sim_draws=2
  # a dump is one more process per set, which costs more than the encoder on 10 quick batches
  # (the SLURP recipe's test covers the dumps)
  posterior_dumps=false
fi

tasu_sh() {  # tasu_sh <stage>: one stage of the shared script, its resources noted in exp/usage.tsv
  python3 local/usage.py "${exp}/usage.tsv" "stage $1" -- ../TEMPLATE/tasu.sh \
    --stage "$1" --stop_stage "$1" \
    --datadir "${data}" --dumpdir "${dump}" --expdir "${exp}" \
    --local_data_opts "--quick ${quick} --seed ${seed}" \
    --train_set train --valid_set dev --test_sets "test test_ood" \
    --tasks "ASR SLU_scenario:scenario" --extra_text_sets text_only \
    --encoder_path "${exp}/encoder" --llm_path "${exp}/llm" \
    --train_text_config conf/train_text.yaml --train_audio_config conf/train_audio_sft.yaml \
    --audio_sft true --audio_baseline true --baseline_at_once true --decode_config conf/decode_greedy.yaml \
    --dump_nj 2 --inference_nj 2 \
    --train_text_args "${train_text_args}" --train_audio_args "${train_audio_args}" \
    --decode_args "${decode_args}" --posterior_dumps "${posterior_dumps}" --results "${results}" "${tasu_args[@]}"
}

mkdir -p "${exp}"
# One run a workdir: a second would remake the corpus under the first (make_corpus.py clears data/wav)
# and mark it done over missing files. flock, as tasu's writers: a killed run holds nothing.
exec {run_lock}>>"${exp}/.run.lock"
if ! flock -n "${run_lock}"; then
  holder=$(cat "${exp}/.run.lock")
  echo "$0: ${workdir} is in use by another ./run.sh (${holder:-its pid not written yet}): wait for it to end" \
    "(or stop it), or give this one another --workdir" >&2
  exit 1
fi
echo "pid $$ on $(uname -n)" > "${exp}/.run.lock"
# after the lock: a run of another setting in progress is said as such, not as directories to remove
if [ -f "${data}/.done" ] && [ "$(cat "${data}/.done")" != "${setting}" ]; then
  echo "$0: ${data}, ${dump} and ${exp} were made with '$(cat "${data}/.done")', not '${setting}':" \
    "remove them (rm -r ${data} ${dump} ${exp} ${results}) to run with this setting" >&2
  exit 1
fi
for n in 1 2 3 4 5 6 7; do
  [ "${stage}" -le "${n}" ] && [ "${stop_stage}" -ge "${n}" ] || continue
  tasu_sh "${n}"
  if [ "${n}" = 1 ]; then
    python3 local/usage.py "${exp}/usage.tsv" "stage 1: encoder and LLM, at once" -- \
      local/train_models.sh --datadir "${data}" --expdir "${exp}" --quick "${quick}" --seed "${seed}"
  fi
  if [ "${n}" = 5 ]; then
    # The text-only model on what it was trained on: posteriors simulated from the test text, several
    # draws scored together; against the real test audio, the text-to-speech gap TASU has to close.
    python3 local/usage.py "${exp}/usage.tsv" "stage 5: simulated input" -- \
      local/decode_simulated.sh --exp "${exp}/tasu_train_text" --data "${dump}/test/ASR.jsonl" \
      --out "${exp}/tasu_train_text/decode_simulated/test/ASR" --draws "${sim_draws}" --decode_opts "${decode_opts[*]}"
  fi
  if [ "${n}" = 7 ]; then
    python3 local/report.py --exp "${exp}" --data "${data}" --results "${results}"
  fi
done
