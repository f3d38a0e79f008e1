#!/usr/bin/env bash
# The stages every tasu recipe runs; a corpus's run.sh sets names and configs and calls this with "$@".
#
#   ../TEMPLATE/tasu.sh --train_set train --valid_set dev --test_sets "test" \
#       --train_text_config conf/train_text.yaml --decode_config conf/decode_beam4.yaml \
#       --encoder_path /models/SenseVoiceSmall --llm_path /models/Qwen2.5-1.5B-Instruct "$@"
#
# Stages (run from the recipe directory; --stage N --stop_stage M picks a range):
#   1. local/data.sh: the corpus release -> Kaldi data dirs data/<set>/{wav.scp,text,utt2spk,...}
#   2. data/<set> -> dump/<set>/<task>.jsonl (audio) and dump/<set>/<task>.text_only.jsonl (no path)
#   3. text-only TASU training             -> exp/tasu_<train_text_config name>
#   4. audio fine-tuning (--audio_sft true) -> exp/tasu_<text config name>_then_<audio config name>
#      and, with --audio_baseline true, the same training from scratch -> exp/<audio config name>_from_scratch
#   5. decoding every test set and task     -> exp/<tag>/decode_<decode config name>_<checkpoint>/<set>/<task>
#   Stages 4 and 5 run the frozen encoder once per recording into posterior dumps
#   (dump/posteriors/<encoder and compression tag>/<set>/) and read those (--posterior_dumps false: it
#   runs on every batch instead: the same numbers up to float rounding, which moves with the batch).
#   6. scoring: WER (ASR), BLEU (translation), accuracy (SLU) -> score.json beside hyp.trn
#   7. RESULTS.md: tables of every score.json under exp/, and the commands that made them
set -euo pipefail

log() {  # the message, with the time and the line that logs it (for die: the line that calls die)
  local i=0
  [ "${FUNCNAME[1]:-}" = die ] && i=1
  echo "$(date '+%Y-%m-%d %H:%M:%S') (${BASH_SOURCE[i+1]##*/}:${BASH_LINENO[i]}) $*" >&2
}
die() {
  log "ERROR: $*"
  exit 1
}
hold_lock() {  # hold_lock <dir> <what>: this run is <dir>'s one writer until release_lock (or its exit)
  # flock on <dir>/.lock, the file tasu's own writers lock (tasu.lock): the kernel drops it when its
  # holder dies, so a killed run leaves nothing to clean up, and two runs cannot interleave their files
  mkdir -p "$1"
  exec {lock_fd}>>"$1/.lock"
  if ! flock -n "${lock_fd}"; then
    local holder; holder=$(cat "$1/.lock")
    die "$1 is in use: $2 by ${holder:-another run} is writing into it; wait for it to end (or stop it)"
  fi
  echo "pid $$ on $(uname -n)" > "$1/.lock"
}
release_lock() { exec {lock_fd}>&-; }
_invocation="$0 $(printf '%q ' "$@")"   # (a name that begins with _ is not an option: parse_options.sh)

# ---------------------------------------------------------------------------------------------------
# Options: every variable below is an option (--name value); --help lists them with their defaults.

# General
stage=1                   # first stage to run
stop_stage=10000          # last stage to run
skip_data_prep=false      # skip stages 1-2
skip_train=false          # skip stages 3-4
skip_eval=false           # skip stages 5-7
results=RESULTS.md        # where stage 7 writes the tables
ngpu=0                    # devices per training job (per node); 0 trains on CPU in one process
device=cuda               # what --ngpu counts: cuda or npu (Ascend) devices, or cpu processes
num_nodes=1               # nodes per training job, each running --ngpu processes
launcher=deepspeed        # how training starts on several nodes: deepspeed (--hostfile) or slurm (srun)
hostfile=                 # --launcher deepspeed: DeepSpeed's hostfile, lines 'host slots=<ngpu>'
master_addr=              # address of the node of rank 0 (default: the first host or node)
master_port=              # its rendezvous port (default: a port free here when the stage starts)
inference_nj=1            # decoding jobs per model (all its test sets and tasks in one list)
datadir=data              # Kaldi data dirs (stage 1 writes them: local/data.sh --datadir)
dumpdir=dump              # JSONL files (stage 2)
expdir=exp                # experiments (stages 3-6)

# Data
local_data_opts=          # options passed to local/data.sh
train_set=                # data set for training
valid_set=                # data set for validation during training
test_sets=                # data sets to decode, space separated
tasks=ASR                 # TASK[:target_file[:metric]] ..., e.g. "ASR SLU_scenario:scenario"
extra_text_sets=          # data dirs holding only 'text': more text-only ASR training text
prompts=                  # prompt set (JSONL of task/prompt lines) holding every task; empty: tasu's English set
check_audio=true          # stage 2: open every audio file while validating

# Models
encoder_path=             # the frozen CTC encoder's directory (SenseVoiceSmall, an ESPnet exp/asr_* dir, ...)
llm_path=                 # the frozen LLM's Hugging Face directory

# Training
train_text_config=        # experiment YAML of the text-only stage (stage 3)
train_audio_config=       # experiment YAML of the audio fine-tuning stage (stage 4)
audio_sft=false           # run stage 4 and decode its model too
audio_baseline=false      # stage 4 also trains the same model on audio from scratch (no text stage)
baseline_at_once=false    # CPU: stage 4 trains the baseline beside the fine-tuning, half the threads each
posterior_dumps=true      # stages 4-5 read the frozen encoder's posteriors from dumps made once
dump_nj=1                 # jobs per set making the posterior dumps
text_tag=                 # experiment name of stage 3 (default: from the config's name)
audio_tag=                # experiment name of stage 4 (default: from both configs' names)
baseline_tag=             # experiment name of the audio-only baseline (default: from the audio config)
train_text_args=          # more key=value overrides for stage 3, e.g. "optim.lr=1e-4"
train_audio_args=         # more key=value overrides for stage 4

# Decoding and scoring
decode_config=            # YAML of tasu decode options (beam, batch_size, max_new_tokens, ...)
inference_checkpoint=best # checkpoint to decode: best, last or step_N
decode_args=              # more tasu decode options, e.g. "--set llm.dtype=bfloat16"
# ---------------------------------------------------------------------------------------------------

help_message=$(cat <<EOF
Usage: $0 --train_set <set> --valid_set <set> --test_sets "<set> ..." --train_text_config <yaml> \\
          --decode_config <yaml> --encoder_path <dir> --llm_path <dir> [options]

Options (default in parentheses):
  # General
  --stage <n>                 first stage to run (${stage})
  --stop_stage <n>            last stage to run (${stop_stage})
  --skip_data_prep <bool>     skip stages 1-2: data preparation (${skip_data_prep})
  --skip_train <bool>         skip stages 3-4: training (${skip_train})
  --skip_eval <bool>          skip stages 5-7: decoding, scoring, RESULTS.md (${skip_eval})
  --results <file>            where stage 7 writes the tables ('${results}')
  --ngpu <n>                  devices per training job and node; 0: CPU, one process (${ngpu}); on
                              one node, the first n of CUDA_VISIBLE_DEVICES (ASCEND_RT_VISIBLE_DEVICES)
  --device <kind>             what --ngpu counts: cuda, npu or cpu (processes) (${device})
  --num_nodes <n>             nodes per training job, --ngpu processes on each (${num_nodes})
  --launcher <name>           what starts training on the nodes: deepspeed (over ssh, from
                              --hostfile) or slurm (srun; cmd.sh: cuda_cmd=run_slurm.sh) (${launcher})
  --hostfile <file>           DeepSpeed's hostfile, one 'host slots=<ngpu>' line per node;
                              the first --num_nodes hosts train ('${hostfile}')
  --master_addr <addr>        address of rank 0's node (default: the first host) ('${master_addr}')
  --master_port <port>        rendezvous port (default: one free here at each stage) ('${master_port}')
  --inference_nj <n>          decoding jobs per model, over all its test sets and tasks (${inference_nj})
  --datadir <dir>             Kaldi data dirs (${datadir})
  --dumpdir <dir>             JSONL files (${dumpdir})
  --expdir <dir>              experiments (${expdir})
  # Data
  --local_data_opts <opts>    options passed to local/data.sh ('${local_data_opts}')
  --train_set <set>           data set for training ('${train_set}')
  --valid_set <set>           data set for validation during training ('${valid_set}')
  --test_sets "<set> ..."     data sets to decode ('${test_sets}')
  --tasks "<spec> ..."        TASK[:target_file[:metric]]; the target file is a per-utterance
                              file of the data dir (default: text, the transcript, which
                              then becomes GT); the metric defaults to wer for ASR, acc for
                              SLU and sentiment, bleu for translation ('${tasks}')
  --extra_text_sets "<set>"   data dirs holding only 'text': more text-only ASR training
                              text, e.g. an LM corpus ('${extra_text_sets}')
  --prompts <jsonl>           the prompt set, '{"task": ..., "prompt": ...}' lines, several per task:
                              a task of your own is a few lines of it; stage 2 checks every task
                              against it, stages 3-4 train with it (data.prompts), and decoding uses
                              the copy each checkpoint keeps (default: tasu's English set) ('${prompts}')
  --check_audio <bool>        stage 2: open every audio file while validating (${check_audio})
  # Models
  --encoder_path <dir>        the frozen CTC encoder's directory ('${encoder_path}')
  --llm_path <dir>            the frozen LLM's Hugging Face directory ('${llm_path}')
  # Training
  --train_text_config <yaml>  experiment YAML of the text-only stage ('${train_text_config}')
  --train_audio_config <yaml> experiment YAML of the audio fine-tuning ('${train_audio_config}')
  --audio_sft <bool>          run stage 4 and decode its model too (${audio_sft})
  --audio_baseline <bool>     with --audio_sft true, stage 4 also trains the audio-only baseline:
                              the same config and steps from scratch, decoded beside (${audio_baseline})
  --baseline_at_once <bool>   training on CPU: the baseline and the fine-tuning train at the same
                              time, each with half the CPU threads; a small model keeps only about
                              one core busy, so two take little longer than one (${baseline_at_once})
  --posterior_dumps <bool>    stages 4-5: the encoder is frozen, so it runs once per recording
                              into dumps (${dumpdir}/posteriors/<tag>/<set>, tasu dump-posteriors)
                              that training and decoding read, with the same numbers; false: it
                              runs on every batch (${posterior_dumps})
  --dump_nj <n>               jobs per set making the posterior dumps (${dump_nj})
  --text_tag <name>           stage 3 experiment name (default: tasu_<text config name>) ('${text_tag}')
  --audio_tag <name>          stage 4 experiment name (default: <text tag>_then_<audio config
                              name>) ('${audio_tag}')
  --baseline_tag <name>       audio-only baseline's name (default: <audio config name>_from_scratch)
                              ('${baseline_tag}')
  --train_text_args <kv>      more key=value overrides for stage 3 ('${train_text_args}')
  --train_audio_args <kv>     more key=value overrides for stage 4 ('${train_audio_args}')
  # Decoding and scoring
  --decode_config <yaml>      tasu decode options as YAML, key = option name ('${decode_config}')
  --inference_checkpoint <c>  checkpoint to decode: best, last or step_N; best and last only of a
                              training that has finished (${inference_checkpoint})
  --decode_args <opts>        more tasu decode options ('${decode_args}')
EOF
)

[ -f ./path.sh ] || die "run me from a recipe directory (no ./path.sh here)"
. ./path.sh
. parse_options.sh
. ./cmd.sh
tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../tools" && pwd)

if [ $# -gt 0 ]; then
  die "unexpected arguments: $* (options are written --name value; see --help)"
fi

# ---------------------------------------------------------------------------------------------------
# What will run, and what it needs: checked before anything runs.

[ "${stage}" -le "${stop_stage}" ] || die "--stage ${stage} comes after --stop_stage ${stop_stage}: nothing to run"
[ "${stage}" -le 7 ] || die "--stage ${stage}: there is no such stage (the stages are 1-7)"
[ "${stop_stage}" -ge 1 ] || die "--stop_stage ${stop_stage}: there is no such stage (the stages are 1-7)"
for dir in datadir dumpdir expdir; do   # "" would put every file of the run under /
  [ -n "${!dir}" ] || die "--${dir} is empty: name a directory"
done
for dir in datadir dumpdir expdir encoder_path llm_path; do   # job arrays' commands name them
  [[ "${!dir}" != *JOB* ]] || die "--${dir} ${!dir}: the job runner makes every JOB of a job's command" \
    "its number (as Kaldi's run.pl does): a path with JOB in it would name another directory; rename it"
done
for n in inference_nj dump_nj num_nodes; do
  [ "${!n}" -ge 1 ] || die "--${n} must be at least 1, not ${!n}"
done
[ "${ngpu}" -ge 0 ] || die "--ngpu must be 0 (CPU) or more, not ${ngpu}"

runs() {  # runs <stage>: whether the stage is in [stage, stop_stage] and not skipped
  local n=$1
  [ "${stage}" -le "${n}" ] && [ "${stop_stage}" -ge "${n}" ] || return 1
  case ${n} in
    1|2) ! ${skip_data_prep} ;;
    3) ! ${skip_train} ;;
    4) ! ${skip_train} && ${audio_sft} ;;
    *) ! ${skip_eval} ;;
  esac
}

need() {  # need <option> <why>: stop with a clear message when an option is empty
  [ -n "${!1}" ] || die "--$1 is required by ${2}; see --help"
}

need_files() {  # need_files <stage> <file> ...: stop before the stage starts when stage 2 has not made one
  local n=$1 f
  shift
  for f in "$@"; do
    [ -f "${f}" ] || die "${f} does not exist: run stage 2 first (stage ${n} reads it)"
  done
}

for n in 3 4; do
  if runs ${n}; then
    what="stage ${n} ($([ ${n} = 3 ] && echo text-only training || echo audio fine-tuning))"
    need encoder_path "${what}: the encoder's directory (e.g. SenseVoiceSmall)"
    need llm_path "${what}: the LLM's Hugging Face directory (e.g. Qwen2.5-1.5B-Instruct)"
    [ -d "${encoder_path}" ] || die "--encoder_path ${encoder_path}: no such directory"
    [ -d "${llm_path}" ] || die "--llm_path ${llm_path}: no such directory"
  fi
done
if runs 2 || runs 3 || runs 4; then
  need train_set "stages 2-4"
  need valid_set "stages 2-4"
fi
if runs 2 || runs 5; then
  need test_sets "stages 2 and 5"
fi
if runs 3 || runs 4 || runs 5; then
  need train_text_config "stages 3-5 (the experiment's name comes from it)"
fi
if runs 4 || { runs 5 && ${audio_sft}; }; then
  need train_audio_config "--audio_sft true"
fi
if runs 5; then
  need decode_config "stage 5"
fi
case ${device} in cuda|npu|cpu) ;; *) die "--device must be cuda, npu or cpu, not '${device}'" ;; esac
if ${baseline_at_once} && [ "${ngpu}" -gt 0 ] && [ "${device}" != cpu ]; then
  die "--baseline_at_once true is for training on CPU: on ${device} devices the two would share them"
fi
if runs 3 || runs 4; then  # the launch options fit together (hostfile, slots, nodes, job runner)
  launch=$(python3 -m tasu.recipe check-launch --num-nodes "${num_nodes}" --ngpu "${ngpu}" \
    --launcher "${launcher}" --hostfile "${hostfile}" --runner "${cuda_cmd}" 2>&1) || die "${launch}"
  log "training: ${launch}"
fi
for f in "${train_text_config}" "${train_audio_config}" "${decode_config}"; do
  [ -z "${f}" ] || [ -f "${f}" ] || die "config file ${f} does not exist"
done
[ -z "${prompts}" ] || [ -f "${prompts}" ] || die "--prompts ${prompts}: no such file"
prompt_opts=()        # tasu validate's
prompt_overrides=()   # tasu train's
if [ -n "${prompts}" ]; then
  prompt_opts=(--prompts "${prompts}")
  prompt_overrides=(data.prompts="${prompts}")
fi
# The configs and their options are checked now, not when their stage comes after hours of the others.
# --*_args are split into words (set -f: no word is a glob) for a command the job runner runs, which
# keeps a word that is a shell operator (';', '&&', '|', '>') as one: the rest would run as a command.
set -f
for opts in "train_text_args:${train_text_args}" "train_audio_args:${train_audio_args}" "decode_args:${decode_args}"; do
  for word in ${opts#*:}; do
    case ${word} in
      '|'|'||'|'&&'|';'|'>'|'>>'|'<'|'2>&1')
        die "--${opts%%:*}: '${word}' is a shell operator: the job runner would run what follows it as a command" ;;
    esac
  done
done
for word in ${decode_args}; do   # what stage 5 sets itself: another value would win, unseen by the names
  case ${word%%=*} in
    --exp|--data|--out|--checkpoint|--device|--input|--allow-pipes|--debug)
      die "--decode_args: ${word%%=*} is set by stage 5 (see --inference_checkpoint, --ngpu, --device," \
        "--posterior_dumps); the directory named by the decode settings would hold another decode" ;;
  esac
done
set +f
check_config() {  # check_config <config> <override> ...: tasu train's own check (--dry-run), one line on error
  local problem
  problem=$(tasu train --config "$@" "${prompt_overrides[@]}" --dry-run 2>&1 > /dev/null) || die "${problem}"
}
# shellcheck disable=SC2086
if runs 3; then check_config "${train_text_config}" ${train_text_args}; fi
# shellcheck disable=SC2086
if runs 4; then check_config "${train_audio_config}" ${train_audio_args}; fi
if runs 5; then
  # conf/decode_*.yaml: each key is a tasu decode option ('batch_size: 8' -> --batch-size 8), one word each;
  # they and --decode_args are checked by tasu decode's own parser
  decode_flags=$(python3 -m tasu.recipe decode-flags "${decode_config}" --decode-args="${decode_args}" 2>&1) || \
    die "${decode_flags}"
  [[ "${inference_checkpoint}" =~ ^(best|last|step_[0-9]+)$ ]] || \
    die "--inference_checkpoint must be best, last or step_N, not '${inference_checkpoint}'"
fi

# Names derived from the configs.
if [ -n "${train_text_config}" ] && [ -z "${text_tag}" ]; then
  text_tag=tasu_$(basename "${train_text_config}" .yaml)
fi
if [ -n "${train_audio_config}" ] && [ -z "${audio_tag}" ]; then
  audio_tag=${text_tag}_then_$(basename "${train_audio_config}" .yaml)
fi
if [ -n "${train_audio_config}" ] && [ -z "${baseline_tag}" ]; then
  baseline_tag=$(basename "${train_audio_config}" .yaml)_from_scratch
fi
text_exp=${expdir}/${text_tag}
audio_exp=${expdir}/${audio_tag}
baseline_exp=${expdir}/${baseline_tag}
if [ -n "${decode_config}" ]; then
  inference_tag=$(basename "${decode_config}" .yaml)
  inference_tag=decode_${inference_tag#decode_}_${inference_checkpoint}
  # options that change the hypotheses name the directory too: --decode_args "--beam 1" -> _beam1
  [ -n "${decode_args}" ] && inference_tag+=$(echo "${decode_args}" | sed -e 's/--/_/g' -e 's/[ =|/]//g')
fi

# A task spec TASK[:target_file[:metric]] -> its parts.
task_name() { echo "${1%%:*}"; }
task_target_file() {
  local rest
  [[ "$1" == *:* ]] || return 0
  rest=${1#*:}
  echo "${rest%%:*}"
}
task_metric() {
  local task=${1%%:*} parts
  IFS=: read -r -a parts <<< "$1"
  if [ ${#parts[@]} -ge 3 ] && [ -n "${parts[2]}" ]; then echo "${parts[2]}"; return; fi
  case ${task} in
    ASR|prevtext|hotword) echo wer ;;
    SLU_*|sentiment) echo acc ;;
    *2ASR|*2asr) echo wer ;;
    *)  # a translation is <source>2<target> in language codes (EN2ZH, en2de, zh-CN2en, X2EN, S2TT), not Speech2Text
      if [[ "${task}" =~ ^[A-Za-z]{1,3}(-[A-Za-z]{2,4})?2[A-Za-z]{2,3}(-[A-Za-z]{2,4})?(_[A-Za-z0-9]+)?$ ]]; then
        echo bleu
      else
        echo wer
      fi ;;
  esac
}
declare -A task_specs=()
for spec in ${tasks}; do   # a task names files (dump/<set>/<task>.jsonl, decode dirs): one each, a plain name
  task=$(task_name "${spec}")
  [[ "${task}" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || \
    die "--tasks ${spec}: '${task}' is no task name: letters, digits and _ . - (it names the task's files)"
  [ -z "${task_specs[${task}]:-}" ] || \
    die "--tasks: ${task} is named twice (${task_specs[${task}]} and ${spec}): its files would be written twice"
  task_specs[${task}]=${spec}
done
# Sets, tasks and experiments name files in job arrays' commands too (the posterior dumps, decoding)
job_word="the job runner makes every JOB of a job's command its number (as Kaldi's run.pl does)"
for option in train_set valid_set test_sets; do
  for set in ${!option}; do
    [[ "${set}" != *JOB* ]] || die "--${option} ${!option}: ${job_word}: set ${set}'s files would be another's;" \
      "rename it"
  done
done
declare -A test_named=()
for set in ${test_sets}; do   # twice, stage 5 put its records twice into the one file its jobs decode
  [ -z "${test_named[${set}]:-}" ] || die "--test_sets ${test_sets}: ${set} is named twice; name each set once"
  test_named[${set}]=1
done
for task in "${!task_specs[@]}"; do
  [[ "${task}" != *JOB* ]] || die "--tasks ${task_specs[${task}]}: ${job_word}: its files would be another task's;" \
    "rename it"
done
tags=(text_tag:train_text_config)
${audio_sft} && tags+=(audio_tag:train_audio_config)
${audio_sft} && ${audio_baseline} && tags+=(baseline_tag:train_audio_config)
for tag in "${tags[@]}"; do
  name=${tag%%:*} config=${tag#*:}
  [[ "${!name}" != *JOB* ]] || die "experiment ${expdir}/${!name} (--${name}, by default from --${config}" \
    "${!config}): ${job_word}: its jobs would write elsewhere; name it with --${name}"
done
if [[ "${inference_tag:-}" == *JOB* ]]; then
  die "decode directory ${inference_tag} (from --decode_config ${decode_config} and --decode_args): ${job_word}:" \
    "its jobs would write elsewhere; rename the config, or write --decode_args without JOB"
fi
if runs 6; then
  for spec in ${tasks}; do
    case $(task_metric "${spec}") in wer|cer|bleu|acc) ;;
      *) die "--tasks ${spec}: the metric must be wer, cer, bleu or acc, not '$(task_metric "${spec}")'" ;; esac
  done
fi

# Training runs as one CPU process, or under the DeepSpeed launcher on --ngpu devices.
if [ "${ngpu}" -eq 0 ] || [ "${device}" = cpu ]; then
  export DS_ACCELERATOR=cpu   # --ngpu N --device cpu: N CPU processes under the DeepSpeed launcher
  engine_device=cpu
else
  [ "${device}" = npu ] && export DS_ACCELERATOR=npu
  engine_device=${device}
fi

free_port() {  # a TCP port that nothing listens on now
  python3 -m tasu.recipe free-port
}

json_list() {  # json_list a b c -> ["a","b","c"] (a YAML flow list for key=value overrides)
  python3 -m tasu.recipe json-list "$@"
}

write_reentry() {  # write_reentry <dir> <stage> <what>: <dir>/run.sh re-enters that stage
  mkdir -p "$1"
  cat > "$1/run.sh" <<EOF
#!/usr/bin/env bash
# Re-enters stage $2 ($3) with the options it was run with; extra options are appended.
cd "$(pwd)" && ${_invocation}--stage $2 --stop_stage $2 "\$@"
EOF
  chmod +x "$1/run.sh"
}

train_stage() {  # train_stage <stage> <exp dir> <config> <overrides ...>
  local n=$1 exp=$2 config=$3 resume=()
  shift 3
  [ -e "${exp}/checkpoints/last" ] && resume=(--resume) && log "${exp} holds a checkpoint: resuming"
  # ZeRO splits the optimizer state across the processes: a checkpoint resumes with as many of them
  local per_node=$(( ngpu > 0 ? ngpu : 1 )) problem port
  problem=$(python3 -m tasu.recipe check-resume "${exp}" $(( num_nodes * per_node )) 2>&1) || die "${problem}"
  local train_cmd=(tasu train) runner_opts=()
  # The launcher's rendezvous port is picked when the stage starts: DeepSpeed's default (29500)
  # would make two experiments training on one machine clash.
  port=${master_port:-$(free_port)}
  if [ "${launcher}" = slurm ]; then
    # srun starts every process (cuda_cmd is run_slurm.sh); each takes its rank from Slurm's variables
    train_cmd=(python3 -m tasu.recipe slurm-exec --master-port "${port}")
    [ -n "${master_addr}" ] && train_cmd+=(--master-addr "${master_addr}")
    train_cmd+=(tasu train)
    runner_opts=(--num_nodes "${num_nodes}" --ntasks_per_node "${per_node}")
  elif [ "${ngpu}" -gt 0 ]; then
    train_cmd=(deepspeed)
    [ -n "${hostfile}" ] && train_cmd+=(--hostfile "${hostfile}" --num_nodes "${num_nodes}")
    local visible_var=CUDA_VISIBLE_DEVICES ids
    [ "${device}" = npu ] && visible_var=ASCEND_RT_VISIBLE_DEVICES
    # Read here only where the job runs here (run_local.sh): a cluster runner's job sees the devices it
    # was given, which the variable in this shell (a login node's) does not describe.
    if [ -z "${hostfile}" ] && [ "${device}" != cpu ] && [ -n "${!visible_var:-}" ] \
        && [ "$(basename "${cuda_cmd%% *}")" = run_local.sh ]; then
      # DeepSpeed's --num_gpus ignores the variable and takes devices 0..N-1: name the visible ones
      IFS=, read -r -a ids <<< "${!visible_var}"
      [[ "${!visible_var}" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "${visible_var}=${!visible_var}: training names" \
        "devices by index (0,1,...), as DeepSpeed's launcher does"
      [ "${#ids[@]}" -ge "${ngpu}" ] || die "--ngpu ${ngpu}, but ${visible_var}=${!visible_var} leaves" \
        "${#ids[@]} device(s)"
      train_cmd+=(--include "localhost:$(IFS=,; echo "${ids[*]:0:${ngpu}}")")
    else
      train_cmd+=(--num_gpus "${ngpu}")
    fi
    train_cmd+=(--master_port "${port}")
    [ -n "${master_addr}" ] && train_cmd+=(--master_addr "${master_addr}")
    train_cmd+=(--module tasu.cli train)
  fi
  write_reentry "${exp}" "${n}" "training ${exp}"
  if [ -e "${exp}/.lock" ] && ! flock -n "${exp}/.lock" true; then   # said before its live log is moved aside
    die "${exp} is in use: training by $(cat "${exp}/.lock") is writing into it; wait for it to end (or stop it)"
  fi
  local kept=1   # an earlier run's log (why it stopped, its losses) is kept, not overwritten: train.log.1, .2, ...
  if [ -e "${exp}/log/train.log" ]; then
    while [ -e "${exp}/log/train.log.${kept}" ]; do kept=$((kept + 1)); done
    mv "${exp}/log/train.log" "${exp}/log/train.log.${kept}"
    log "the earlier run's log is now ${exp}/log/train.log.${kept}"
  fi
  log "training log: ${exp}/log/train.log (re-enter with ${exp}/run.sh)"
  # shellcheck disable=SC2086
  ${cuda_cmd} --gpu "$([ "${device}" = cpu ] && echo 0 || echo "${ngpu}")" "${runner_opts[@]}" "${exp}/log/train.log" \
    "${train_cmd[@]}" --config "${config}" --exp-dir "${exp}" "${resume[@]}" --allow-pipes \
      encoder.path="${encoder_path}" llm.path="${llm_path}" engine.device="${engine_device}" \
      "${prompt_overrides[@]}" "$@"
  log "stage ${n} done: $(cat "${exp}/checkpoints/last" 2>/dev/null || echo '?') is the last checkpoint of ${exp}"
}

encoder_tasu() {  # encoder_tasu <config> [KEY=VALUE ...]: the tasu that can load <config>'s encoder
  # (an ESPnet model loads in tools/espnet-venv: its framework cannot install beside the main torch)
  local env
  env=$(python3 -m tasu.recipe encoder-env "$@") || die "cannot read the encoder of $1"
  if [ -z "${env}" ]; then echo tasu; return; fi
  [ -x "${tools_dir}/${env}/bin/tasu" ] || \
    die "the encoder of $1 loads in tools/${env}, which is not there: make it with tools/setup.sh --with ${env%-venv}"
  echo "${tools_dir}/${env}/bin/tasu"
}

in_main_env() {  # in_main_env <config> [KEY=VALUE ...]: stop unless <config>'s encoder loads here
  local env
  env=$(python3 -m tasu.recipe encoder-env "$@") || die "cannot read the encoder of $1"
  [ -z "${env}" ] || die "--posterior_dumps false runs the encoder of $1 inside tasu train/decode, in the" \
    "main environment, but it loads only in tools/${env}: keep --posterior_dumps true"
}

dump_posteriors() {  # dump_posteriors <config> <set> [KEY=VALUE ...]: <set>'s task files with the
  # encoder's compressed posteriors -> ${post_dir}/<set>/<task>.jsonl, post_dir named after the encoder
  # files and compression settings of <config> (+ overrides), so another encoder gets other dumps
  local config=$1 set=$2 spec files=() dir gpus=0 dev=cpu set_opts=() enc_tasu state
  shift 2
  [ $# -gt 0 ] && set_opts=(--set "$@")
  enc_tasu=$(encoder_tasu "${config}" "$@")
  for spec in ${tasks}; do files+=("${dumpdir}/${set}/$(task_name "${spec}").jsonl"); done
  post_dir=$(python3 -m tasu.recipe posterior-dir "${dumpdir}/posteriors" "${config}" "$@")
  dir=${post_dir}/${set}
  if [ "${ngpu}" -gt 0 ] && [ "${device}" != cpu ]; then gpus=1 dev=${device}; fi
  # a complete dump of a set stage 2 has remade since, or of another --dump_nj, is made anew (its first job)
  state=0
  python3 -m tasu.recipe dump-done "${dir}" "${dump_nj}" "${files[@]}" || state=$?
  [ "${state}" -ne 1 ] || die "cannot tell whether ${dir} holds the posterior dump of ${files[*]} (above)"
  if [ "${state}" -eq 2 ]; then
    log "posteriors of ${files[*]} -> ${dir} (log: ${dir}/log/dump.*.log)"
    ${decode_cmd} --gpu "${gpus}" JOB=1:"${dump_nj}" "${dir}/log/dump.JOB.log" \
      "${enc_tasu}" dump-posteriors --config "${config}" --data "${files[@]}" --out "${dir}" --nj "${dump_nj}" \
        --job JOB --device "${dev}" --allow-pipes --remake-stale "${set_opts[@]}"
  fi
  # every job done: the JSONL files and .done (or, when done already, the check that it is this dump;
  # it never remakes one: that is the job runner's, above)
  tasu dump-posteriors --config "${config}" --data "${files[@]}" --out "${dir}" --nj "${dump_nj}" \
    --device "${dev}" --allow-pipes "${set_opts[@]}" >&2
}

decode_exps=("${text_exp}")
${audio_sft} && decode_exps+=("${audio_exp}")
${audio_sft} && ${audio_baseline} && decode_exps+=("${baseline_exp}")

# ---------------------------------------------------------------------------------------------------
if runs 1; then
  log "Stage 1: data preparation: the corpus release -> ${datadir}/<set>/{wav.scp,text,utt2spk,spk2utt,...}"
  # the sets this run names, for a local/data.sh that prepares only what is used (LibriSpeech)
  # shellcheck disable=SC2086
  hold_lock "${datadir}" "data preparation"
  TASU_DATA_SETS="${train_set} ${valid_set} ${test_sets} ${extra_text_sets}" \
    local/data.sh --datadir "${datadir}" ${local_data_opts}
  release_lock
fi

if runs 2; then
  log "Stage 2: JSONL: ${datadir}/<set> -> ${dumpdir}/<set>/<task>.jsonl and <task>.text_only.jsonl"
  tables() {  # tables <set> <target file>: size and mtime of each table a JSONL is made from, or "absent"
    local f
    for f in text wav.scp segments utt2spk $2; do
      echo "${f} $(stat -L -c '%s %Y' "${datadir}/$1/${f}" 2> /dev/null || echo absent)"
    done
  }
  changed_since() {  # changed_since <.done> <set> <tables now>: not the tables the .done records
    if [ "$(wc -l < "$1")" -gt 1 ]; then
      [ "$(tail -n +2 "$1")" != "$3" ]
      return
    fi
    [ -n "$(find "${datadir}/$2" -newer "$1" -type f 2> /dev/null | head -n 1)" ]   # a .done of an older tasu.sh
  }
  make_jsonl() {  # make_jsonl <set> <spec> <text_only>: one JSONL file (not yet validated)
    local set=$1 task target out marker
    task=$(task_name "$2")
    target=$(task_target_file "$2")
    if $3; then out=${dumpdir}/${set}/${task}.text_only.jsonl; else out=${dumpdir}/${set}/${task}.jsonl; fi
    marker=${out%.jsonl}.done
    # .done holds what the file was made from (first line: another target file for the task makes it
    # again) and its tables as they were (a table edited, put back from a copy, or removed since)
    made_from[${out}]="task ${task}, targets from ${datadir}/${set}/${target:-text}"
    made_of[${out}]=$(tables "${set}" "${target}")
    if [ -f "${marker}" ]; then
      if [ ! -f "${out}" ]; then   # removed by hand: stage 3 would ask for stage 2, and stage 2 skip it
        log "${out} is gone (its .done is there): making it again"
      elif [ ! -s "${marker}" ]; then
        log "${out}: its .done does not say what it was made from (an older tasu.sh wrote it): making it again"
      elif [ "$(head -n 1 "${marker}")" != "${made_from[${out}]}" ]; then
        log "${out} was made from '$(head -n 1 "${marker}")', not '${made_from[${out}]}': making it" \
          "again (${stale_exps})"
      elif changed_since "${marker}" "${set}" "${made_of[${out}]}"; then
        log "${datadir}/${set} changed after ${out} was made: making it again (${stale_exps})"
      else
        log "${out}: already made (${marker}), skipping"
        return
      fi
      rm "${marker}"
    fi
    log "${datadir}/${set}/{text${target:+,${target}}} -> ${out} (task ${task})"
    mkdir -p "${dumpdir}/${set}"
    data2jsonl.sh --task "${task}" --target_file "${target}" --text_only "$3" \
      "${datadir}/${set}" "${out}.tmp"
    mv "${out}.tmp" "${out}"
    if $3 || ! ${check_audio}; then new_text+=("${out}"); else new_audio+=("${out}"); fi
  }
  # shellcheck disable=SC2086
  for set in ${train_set} ${valid_set} ${test_sets} ${extra_text_sets}; do   # all there before any is made
    [ -d "${datadir}/${set}" ] && continue
    made=$(cd "${datadir}" 2> /dev/null && ls -d -- */ 2> /dev/null | tr -d / | paste -sd' ') || true
    [ -n "${made}" ] || die "${datadir}/${set} does not exist: run stage 1 (local/data.sh) first"
    die "${datadir}/${set} does not exist: stage 1 (local/data.sh) made ${made}; is '${set}' one of its sets?"
  done
  hold_lock "${dumpdir}" "the JSONL stage"   # after the checks: a run refused at them makes no dump/
  # an experiment trained on the old file is not trained again: its stage refuses to resume on the new one
  stale_exps="an experiment that read the old one will not resume on it: remove it to train again"
  new_audio=()
  new_text=()
  declare -A made_from=() made_of=()
  # shellcheck disable=SC2086
  for set in $(echo "${train_set} ${valid_set} ${test_sets}" | tr ' ' '\n' | awk 'NF && !seen[$0]++'); do
    for spec in ${tasks}; do
      make_jsonl "${set}" "${spec}" false
    done
  done
  for spec in ${tasks}; do
    make_jsonl "${train_set}" "${spec}" true
  done
  for set in ${extra_text_sets}; do
    make_jsonl "${set}" ASR true
  done
  # Each file is marked done once it has passed validation (one tasu validate per kind, for speed).
  # --allow-pipes (here, in training and in decoding): the wav.scp commands in these files are the
  # ones local/data.sh wrote, so running them is running the recipe; tasu refuses them otherwise.
  if [ ${#new_audio[@]} -gt 0 ]; then
    tasu validate --check-audio --allow-pipes "${prompt_opts[@]}" "${new_audio[@]}"
  fi
  if [ ${#new_text[@]} -gt 0 ]; then
    tasu validate "${prompt_opts[@]}" "${new_text[@]}"
  fi
  for f in "${new_audio[@]}" "${new_text[@]}"; do
    printf '%s\n%s\n' "${made_from[${f}]}" "${made_of[${f}]}" > "${f%.jsonl}.done"
  done
  release_lock
fi

if runs 3; then
  train_files=()
  for spec in ${tasks}; do train_files+=("${dumpdir}/${train_set}/$(task_name "${spec}").text_only.jsonl"); done
  for set in ${extra_text_sets}; do train_files+=("${dumpdir}/${set}/ASR.text_only.jsonl"); done
  valid_files=()
  for spec in ${tasks}; do valid_files+=("${dumpdir}/${valid_set}/$(task_name "${spec}").jsonl"); done
  need_files 3 "${train_files[@]}" "${valid_files[@]}"
  log "Stage 3: text-only training: ${train_files[*]} -> ${text_exp}"
  # shellcheck disable=SC2086
  train_stage 3 "${text_exp}" "${train_text_config}" data.mode=text \
    data.train="$(json_list "${train_files[@]}")" data.valid="$(json_list "${valid_files[@]}")" \
    ${train_text_args}
fi

if runs 4; then
  [ -e "${text_exp}/checkpoints/last" ] || die "${text_exp} has no checkpoint: run stage 3 first"
  stage2_files=()   # stage 2's audio task files of the training and validation sets
  for set in ${train_set} ${valid_set}; do
    for spec in ${tasks}; do stage2_files+=("${dumpdir}/${set}/$(task_name "${spec}").jsonl"); done
  done
  need_files 4 "${stage2_files[@]}"
  audio_data=${dumpdir}
  audio_mode=audio
  # shellcheck disable=SC2086
  ${posterior_dumps} || in_main_env "${train_audio_config}" encoder.path="${encoder_path}" ${train_audio_args}
  if ${posterior_dumps}; then
    # shellcheck disable=SC2086
    for set in ${train_set} ${valid_set}; do
      dump_posteriors "${train_audio_config}" "${set}" encoder.path="${encoder_path}" ${train_audio_args}
    done
    audio_data=${post_dir}
    audio_mode=posteriors
  fi
  train_files=()
  valid_files=()
  for spec in ${tasks}; do
    train_files+=("${audio_data}/${train_set}/$(task_name "${spec}").jsonl")
    valid_files+=("${audio_data}/${valid_set}/$(task_name "${spec}").jsonl")
  done
  fine_tune() {
    log "Stage 4: audio fine-tuning from ${text_exp}: ${train_files[*]} -> ${audio_exp}"
    # shellcheck disable=SC2086
    train_stage 4 "${audio_exp}" "${train_audio_config}" data.mode=${audio_mode} train.init_from="${text_exp}" \
      data.train="$(json_list "${train_files[@]}")" data.valid="$(json_list "${valid_files[@]}")" \
      ${train_audio_args}
  }
  baseline() {
    log "Stage 4: the audio-only baseline: the same training from scratch -> ${baseline_exp}"
    # shellcheck disable=SC2086
    train_stage 4 "${baseline_exp}" "${train_audio_config}" data.mode=${audio_mode} \
      data.train="$(json_list "${train_files[@]}")" data.valid="$(json_list "${valid_files[@]}")" \
      ${train_audio_args}
  }
  if ${audio_baseline} && ${baseline_at_once}; then
    threads=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))
    OMP_NUM_THREADS=${threads} MKL_NUM_THREADS=${threads} fine_tune &
    fine_tune_pid=$!
    OMP_NUM_THREADS=${threads} MKL_NUM_THREADS=${threads} baseline &
    baseline_pid=$!
    failed=
    wait ${fine_tune_pid} || failed+=" ${audio_exp}"
    wait ${baseline_pid} || failed+=" ${baseline_exp}"
    [ -z "${failed}" ] || die "stage 4 failed for${failed} (their log/train.log say why)"
  else
    fine_tune
    if ${audio_baseline}; then baseline; fi
  fi
fi

if runs 5; then
  read -r -a decode_opts <<< "${decode_flags}"   # checked above: one word each
  model_opts=()
  [ -n "${encoder_path}" ] && model_opts+=(--set encoder.path="${encoder_path}")
  [ -n "${llm_path}" ] && model_opts+=(--set llm.path="${llm_path}")
  if [ "${ngpu}" -eq 0 ]; then decode_device=cpu; else decode_device=${device}; fi
  decode_gpus=$([ "${ngpu}" -gt 0 ] && [ "${device}" != cpu ] && echo 1 || echo 0)
  for exp in "${decode_exps[@]}"; do   # every model ready before the first is decoded
    [ -e "${exp}/checkpoints/last" ] || die "${exp} has no checkpoint: run its training stage first"
  done
  # best and last of a training stopped half-way would be scored as the experiment's: finish it first
  problem=$(python3 -m tasu.recipe check-finished "${inference_checkpoint}" "${decode_exps[@]}" 2>&1) || \
    die "${problem}: run its training stage again to finish it (it resumes: stage 3 for ${text_exp}, 4 for" \
      "the audio ones), or decode one of its checkpoints on purpose with --inference_checkpoint step_N"
  [ -z "${problem}" ] || log "WARNING: ${problem}"
  for exp in "${decode_exps[@]}"; do
    write_reentry "${exp}/${inference_tag}" 5 "decoding with ${exp}"
    # Every test set and task is decoded by one set of jobs (one model load, batches across tasks):
    # their records go into one file with keys <set>-<task>-<key>, split back into <set>/<task>/ after.
    dir=${exp}/${inference_tag}
    parts=()
    for set in ${test_sets}; do
      for spec in ${tasks}; do
        parts+=("${set}" "$(task_name "${spec}")")
        need_files 5 "${dumpdir}/${set}/${parts[-1]}.jsonl"
      done
    done
    audio_data=${dumpdir}
    input_opts=()
    enc_opts=()
    [ -n "${encoder_path}" ] && enc_opts=(encoder.path="${encoder_path}")
    ${posterior_dumps} || in_main_env "${exp}/config.yaml" "${enc_opts[@]}"
    if ${posterior_dumps}; then   # with the encoder and compression of the model being decoded
      for set in ${test_sets}; do
        dump_posteriors "${exp}/config.yaml" "${set}" "${enc_opts[@]}"
      done
      audio_data=${post_dir}
      input_opts=(--input posteriors)
    fi
    log "Stage 5: decoding ${audio_data}/{$(echo ${test_sets} | tr ' ' ',')}/{$(for s in ${tasks}; do task_name "${s}"; done | paste -sd,)}.jsonl with ${exp} (${inference_checkpoint}) -> ${dir}/<set>/<task>/hyp.trn"
    mkdir -p "${dir}"
    python3 -m tasu.recipe merge "${audio_data}" "${dir}/data.jsonl" "${parts[@]}"
    n=$(wc -l < "${dir}/data.jsonl")
    nj=$(( n < inference_nj ? n : inference_nj ))
    [ "${nj}" -ge 1 ] || die "${dumpdir}: no records to decode in ${test_sets}"
    # A job resumes its output.J only on the records it decoded before: another split (test sets, tasks
    # or records changed, another --inference_nj) starts that job afresh, which tasu decode would refuse.
    for old in "${dir}"/split*; do   # another nj's split: its jobs' outputs are compared with nothing
      [ "${old}" = "${dir}/split${nj}" ] || rm -rf "${old}"
    done
    mkdir -p "${dir}/split${nj}.new" "${dir}/split${nj}"
    awk -v n="${nj}" -v d="${dir}/split${nj}.new" '{ print > (d "/" ((NR - 1) % n + 1) ".jsonl") }' "${dir}/data.jsonl"
    for out in "${dir}"/output.*; do
      [ -d "${out}" ] || continue
      j=${out##*.}
      if [[ ! "${j}" =~ ^[0-9]+$ ]] || [ "${j}" -gt "${nj}" ] || \
          ! cmp -s "${dir}/split${nj}/${j}.jsonl" "${dir}/split${nj}.new/${j}.jsonl"; then
        log "${out}: decoded from other records (test sets, tasks, data or --inference_nj changed): decoding anew"
        rm -r "${out}"
      fi
    done
    rm -r "${dir}/split${nj}" && mv "${dir}/split${nj}.new" "${dir}/split${nj}"
    # shellcheck disable=SC2086
    ${decode_cmd} --gpu "${decode_gpus}" JOB=1:"${nj}" "${dir}/log/decode.JOB.log" \
      tasu decode --exp "${exp}" --data "${dir}/split${nj}/JOB.jsonl" --out "${dir}/output.JOB" \
        --checkpoint "${inference_checkpoint}" --device "${decode_device}" --allow-pipes "${decode_opts[@]}" \
        "${input_opts[@]}" "${model_opts[@]}" ${decode_args}
    python3 -m tasu.recipe split "${dir}" "${nj}" "${parts[@]}"
  done
fi

if runs 6; then
  for exp in "${decode_exps[@]}"; do
    for set in ${test_sets}; do
      for spec in ${tasks}; do
        task=$(task_name "${spec}")
        metric=$(task_metric "${spec}")
        dir=${exp}/${inference_tag}/${set}/${task}
        [ -f "${dir}/hyp.trn" ] || die "${dir}/hyp.trn does not exist: run stage 5 first"
        if [ -s "${dir}/hyp.trn" ] && [ ! -s "${dir}/ref.trn" ]; then
          log "Stage 6: ${dir}: its records have no targets (hypotheses only): not scored"
          # the score of earlier references: stage 7 would refuse it, and stage 6 could not redo it
          rm -f "${dir}"/{score.json,result.txt,alignment.txt,per_utt.tsv,missing_keys.txt,extra_keys.txt}
          continue
        fi
        # (BLEU's tokenizer follows the references' script: tasu score's auto)
        log "Stage 6: scoring ${dir}/hyp.trn (${metric}) -> ${dir}/score.json"
        ${decode_cmd} "${dir}/log/score.log" tasu score --ref "${dir}/ref.trn" --hyp "${dir}/hyp.trn" \
          --metric "${metric}" --out "${dir}"
        grep -v '^#' "${dir}/log/score.log" >&2
      done
    done
  done
fi

# The command of the newest of the job logs given that ended well: a run refused or failed since (a
# resume with other settings) is not the one that made the model or the hypotheses.
ok_command() {
  local f
  for f in "$@"; do
    if [ -f "${f}" ] && tail -n 1 "${f}" | grep -q '^# Ended (code 0)'; then
      head -n 1 "${f}" | sed 's/^# //'
      return
    fi
  done
  [ ! -f "$1" ] || echo "# ${1#"${expdir}"/}: its last run failed, and the command of the one before is not kept"
}
newest_first() {  # newest_first <log>: <log>, then the earlier runs' <log>.N ... <log>.1
  local n=1
  echo "$1"
  while [ -e "$1.${n}" ]; do n=$((n + 1)); done
  for ((n = n - 1; n >= 1; n--)); do echo "$1.${n}"; done
}

if runs 7; then
  log "Stage 7: every score.json under ${expdir}/ -> ${results}"
  # its own line says what failed; no half-written ${results}.tmp stays behind
  tasu results "${expdir}" > "${results}.tmp" || { rm -f "${results}.tmp"; exit 1; }
  {
    echo
    echo "## Commands"
    echo
    echo "This file was made from \`$(basename "$(pwd)")\` with:"
    echo
    echo '```bash'
    echo "${_invocation% }"
    echo '```'
    for exp in "${decode_exps[@]}"; do
      echo
      echo "### ${exp#"${expdir}"/}"
      echo
      echo '```bash'
      mapfile -t train_logs < <(newest_first "${exp}/log/train.log")
      ok_command "${train_logs[@]}"
      d=${exp}/${inference_tag}
      ok_command "${d}/log/decode.1.log"
      for t in "${d}"/*/*/log/score.log; do
        ok_command "${t}"
      done
      echo '```'
    done
  } >> "${results}.tmp"
  mv "${results}.tmp" "${results}"
  log "wrote ${results}"
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
