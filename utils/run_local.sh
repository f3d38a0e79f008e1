#!/usr/bin/env bash
# Run a command, or an array of N jobs, on this machine with one log file per job (Kaldi's run.pl).
#
#   run_local.sh exp/x/train.log tasu train --config conf/x.yaml --exp-dir exp/x
#   run_local.sh --max_jobs_run 2 JOB=1:4 exp/x/log/decode.JOB.log tasu decode --data split/JOB.jsonl ...
#
# JOB=a:b runs one job per id in a..b; every JOB in the log name and in the command becomes the
# job's id, as in Kaldi (drawJOB is draw3), so no path of a job array may contain JOB otherwise: the
# recipes refuse such directories. Each argument is passed as one word (quoted for the shell); the arguments '|', '||',
# '&&', ';', '>', '>>', '<', '2>&1' stay shell operators, so a pipeline is written
# 'cmd1 \| cmd2'. The log holds the command, start and end times, everything the job printed and
# its exit code. When a job fails, the end of its log is printed and the exit status is 1.
# --mem and --num_threads are accepted for the same command line as run_slurm.sh and ignored here.
# --gpu N gives each job of an array N devices of its own, taken in turn from those this machine shows
# (ASCEND_RT_VISIBLE_DEVICES or CUDA_VISIBLE_DEVICES when set, else every GPU nvidia-smi lists), so
# that N decoding jobs do not all load their model onto the first device; one job sees them all.
# Jobs that run at the same time share the CPU cores:
# unless OMP_NUM_THREADS is set, each of N concurrent jobs gets OMP_NUM_THREADS = cores / N (at
# least 1), so that N PyTorch processes do not each start a thread per core and contend.
set -euo pipefail

max_jobs_run=0     # jobs running at once; 0: all of them
gpu=0
mem=
num_threads=1
launcher=          # a command prefix every job runs under (run_slurm.sh passes 'srun ...')
num_nodes=1        # only 1 here: a job of several nodes or tasks needs a cluster runner (run_slurm.sh)
ntasks_per_node=1
tail_lines=30

help_message="Usage: $0 [options] [JOB=a:b] <log-file> <command> [<arg> ...]
Options:
  --max_jobs_run <n>   jobs running at once, 0 for all (default: ${max_jobs_run})
  --gpu <n>            devices per job of an array, each job its own in turn (default: ${gpu})
  --mem <size>         memory per job (default: '${mem}'; ignored by the local runner)
  --num_threads <n>    threads per job (default: ${num_threads}; ignored by the local runner)
  --launcher <prefix>  command prefix each job runs under (default: '${launcher}'; set by run_slurm.sh)
  --num_nodes <n>      must be 1: one machine (run_slurm.sh runs jobs of several nodes)
  --ntasks_per_node <n>  must be 1: one process per job (run_slurm.sh runs several)
  --tail_lines <n>     lines of a failed job's log to print (default: ${tail_lines})"
. "$(dirname "$0")/parse_options.sh"

prog=$(basename "$0")
if [ "${num_nodes}" != 1 ] || [ "${ntasks_per_node}" != 1 ]; then
  echo "${prog}: runs one process per job on this machine; --num_nodes ${num_nodes} --ntasks_per_node" \
    "${ntasks_per_node} needs a cluster runner (run_slurm.sh in cmd.sh)" >&2
  exit 1
fi
if [ $# -lt 2 ]; then
  printf '%s\n' "${help_message}" >&2
  exit 1
fi

first=1 last=1 array=false
if [[ "$1" =~ ^JOB=([0-9]+):([0-9]+)$ ]]; then
  first=${BASH_REMATCH[1]} last=${BASH_REMATCH[2]} array=true
  shift
  if [ "${first}" -gt "${last}" ]; then
    echo "${prog}: empty job range JOB=${first}:${last}" >&2
    exit 1
  fi
elif [[ "$1" =~ ^[A-Za-z_]+=.*:.*$ ]]; then
  echo "${prog}: a job array is written JOB=a:b, not '$1'" >&2
  exit 1
fi
[ $# -ge 2 ] || { echo "${prog}: no command after the log file" >&2; exit 1; }
log_pattern=$1
shift
if ${array} && [[ "${log_pattern}" != *JOB* ]]; then
  echo "${prog}: with JOB=${first}:${last} the log name must contain JOB: ${log_pattern}" >&2
  exit 1
fi

# The command as one shell string: every argument quoted except the shell operators.
cmd=
for arg in "$@"; do
  case "${arg}" in
    '|'|'||'|'&&'|';'|'>'|'>>'|'<'|'2>&1') cmd+="${arg} " ;;
    *) cmd+="$(printf '%q' "${arg}") " ;;
  esac
done
cmd=${cmd% }

read -r -a launcher_words <<< "${launcher}"   # split at spaces, never globbed (--nodelist=gpu[01-02])

# --gpu with a job array: the devices to deal out, and the variable that names a job's share
device_var= devices=()
if ${array} && [ -z "${launcher}" ] && [[ "${gpu}" =~ ^[1-9][0-9]*$ ]]; then   # (a cluster deals its own)
  if [ -n "${ASCEND_RT_VISIBLE_DEVICES+set}" ]; then
    device_var=ASCEND_RT_VISIBLE_DEVICES
  elif [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    device_var=CUDA_VISIBLE_DEVICES
  elif command -v nvidia-smi > /dev/null && n=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU') && [ "${n}" -gt 0 ]; then
    device_var=CUDA_VISIBLE_DEVICES
    mapfile -t devices < <(seq 0 $(( n - 1 )))
  fi
  [ -n "${device_var}" ] && [ "${#devices[@]}" -eq 0 ] && IFS=, read -r -a devices <<< "${!device_var}"
  [ "${#devices[@]}" -gt 0 ] || device_var=   # set but empty: every device hidden on purpose, none to deal
fi

job_devices() {  # <id>: the devices of job <id>, comma-separated: --gpu of them (at most all), dealt in turn
  local count=$(( gpu < ${#devices[@]} ? gpu : ${#devices[@]} )) k out=()
  local first_device=$(( ($1 - first) * count ))
  for (( k = 0; k < count; k++ )); do
    out+=("${devices[$(( (first_device + k) % ${#devices[@]} ))]}")
  done
  (IFS=,; echo "${out[*]}")
}

run_job() {  # <id>: run the command of job <id> into its log, which ends with the exit code
  local id=$1 log job_cmd start rc stopped=
  trap 'stopped=1' INT TERM HUP   # stop() signals the job's process group: the command ends, this writes its end
  if ${array}; then
    log=${log_pattern//JOB/${id}}
    job_cmd=${cmd//JOB/${id}}
  else
    log=${log_pattern}
    job_cmd=${cmd}
  fi
  mkdir -p "$(dirname "${log}")"
  if [ -n "${device_var}" ]; then export "${device_var}=$(job_devices "${id}")"; fi
  start=$(date +%s)
  {
    echo "# ${job_cmd}"
    echo "# Started at $(date)"
    echo "#"
  } > "${log}"
  set +e
  if [ -z "${stopped}" ]; then   # stopped before its command started: it never starts
    ${launcher_words[@]+"${launcher_words[@]}"} bash -c "${job_cmd}" >> "${log}" 2>&1 < /dev/null
    rc=$?
  else
    rc=143
  fi
  set -e
  [ -z "$(tail -c 1 "${log}")" ] || echo >> "${log}"   # output without a last newline: the footer on its own line
  {
    echo "# Accounting: time=$(( $(date +%s) - start )) threads=${num_threads}"
    echo "# Ended (code ${rc}) at $(date), elapsed time $(( $(date +%s) - start )) seconds"
  } >> "${log}"
  return "${rc}"
}

stop() {  # <signal>: told to stop (Ctrl-C, kill, scancel, hang-up): stop the running jobs, start no more
  local groups g
  mapfile -t groups < <(jobs -p)   # each job is a process group (set -m): its command and all it started
  trap 'for g in "${groups[@]}"; do kill -KILL -- "-${g}" 2> /dev/null; done' INT TERM HUP   # asked again
  for g in "${groups[@]}"; do
    kill -TERM -- "-${g}" 2> /dev/null || true
  done
  while [ -n "$(jobs -rp)" ]; do wait || true; done
  echo "${prog}: stopped by a signal; the running jobs were stopped (their logs end with their exit codes)" >&2
  trap - "$1"
  kill -s "$1" $$   # die of the signal, so that a calling script stops as it would (bash ignores an exit 130)
}
set -m   # each job in a process group of its own, which stop() signals whole
trap 'stop INT' INT
trap 'stop TERM' TERM
trap 'stop HUP' HUP

at_once=$(( last - first + 1 ))
[ "${max_jobs_run}" -gt 0 ] && [ "${max_jobs_run}" -lt "${at_once}" ] && at_once=${max_jobs_run}
if [ -z "${launcher}" ] && [ -z "${OMP_NUM_THREADS:-}" ] && [ "${at_once}" -gt 1 ]; then
  cores=$(nproc)
  OMP_NUM_THREADS=$(( cores / at_once > 0 ? cores / at_once : 1 ))
  export OMP_NUM_THREADS MKL_NUM_THREADS=${OMP_NUM_THREADS}
fi

for id in $(seq "${first}" "${last}"); do
  if [ "${max_jobs_run}" -gt 0 ]; then
    while [ "$(jobs -rp | wc -l)" -ge "${max_jobs_run}" ]; do
      wait -n || true
    done
  fi
  run_job "${id}" &
done
wait || true

failed=0
for id in $(seq "${first}" "${last}"); do
  if ${array}; then log=${log_pattern//JOB/${id}}; else log=${log_pattern}; fi
  if ! tail -n 1 "${log}" 2>/dev/null | grep -q '^# Ended (code 0)'; then
    failed=$((failed + 1))
    {
      echo "${prog}: job ${id} failed; the end of ${log}:"
      tail -n "${tail_lines}" "${log}" 2>/dev/null | sed 's/^/  | /' || echo "  (no log written)"
    } >&2
  fi
done
if [ "${failed}" -gt 0 ]; then
  total=$((last - first + 1))
  echo "${prog}: ${failed} of ${total} job(s) failed: ${log_pattern}" >&2
  exit 1
fi
exit 0
