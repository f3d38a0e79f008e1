#!/usr/bin/env bash
# run_local.sh's command line, each job run on a slurm cluster with srun (Kaldi's slurm.pl).
#
#   run_slurm.sh --gpu 1 --mem 64G exp/x/train.log tasu train --config conf/x.yaml --exp-dir exp/x
#   run_slurm.sh --max_jobs_run 8 JOB=1:8 exp/x/log/decode.JOB.log tasu decode ...
#   run_slurm.sh --gpu 8 --num_nodes 2 --ntasks_per_node 8 exp/x/train.log <command run by each task>
#
# Every job is one 'srun' step (blocking, so the job array waits as run_local.sh does); its log is
# written by this script on the shared file system. Recipes select it in cmd.sh. A job of several
# tasks (--num_nodes, --ntasks_per_node: tasu.sh --launcher slurm asks for one per device) runs the
# command in every task, and every task's output goes into the one log; when one task fails, srun
# ends the others (--kill-on-bad-exit), which would otherwise wait for it forever.
set -euo pipefail

max_jobs_run=0
gpu=0
mem=
num_threads=1
partition=
time_limit=
srun_opts=
num_nodes=1
ntasks_per_node=1
tail_lines=30

help_message="Usage: $0 [options] [JOB=a:b] <log-file> <command> [<arg> ...]
Options:
  --max_jobs_run <n>   jobs submitted at once, 0 for all (default: ${max_jobs_run})
  --gpu <n>            GPUs per job: --gres=gpu:<n> (default: ${gpu})
  --mem <size>         memory per job, e.g. 32G (default: '${mem}': the partition's default)
  --num_threads <n>    CPUs per job (default: ${num_threads})
  --partition <name>   slurm partition (default: '${partition}': the cluster's default)
  --time_limit <t>     slurm time limit, e.g. 2-00:00:00 (default: '${time_limit}')
  --srun_opts <opts>   more srun options, one string split at spaces, without quotes (default: '${srun_opts}')
  --num_nodes <n>      nodes of each job (default: ${num_nodes}); --gpu and --mem are per node
  --ntasks_per_node <n>  tasks on each node, each running the command (default: ${ntasks_per_node})
  --tail_lines <n>     lines of a failed job's log to print (default: ${tail_lines})"
. "$(dirname "$0")/parse_options.sh"

if [[ "${srun_opts}" == *[\"\'\\]* ]]; then   # run_local.sh splits the launcher at spaces: no shell quoting
  echo "$(basename "$0"): --srun_opts '${srun_opts}': options are split at spaces and quotes would reach srun" \
    "as part of them; write each option as one word without quotes (--comment=two_words)" >&2
  exit 1
fi
if [ "${num_nodes}" -gt 1 ] || [ "${ntasks_per_node}" -gt 1 ]; then
  launcher="srun --quiet --nodes=${num_nodes} --ntasks-per-node=${ntasks_per_node} --kill-on-bad-exit=1"
else
  launcher="srun --quiet --ntasks=1"
fi
launcher+=" --cpus-per-task=${num_threads}"
[ "${gpu}" -gt 0 ] && launcher+=" --gres=gpu:${gpu}"
[ -n "${mem}" ] && launcher+=" --mem=${mem}"
[ -n "${partition}" ] && launcher+=" --partition=${partition}"
[ -n "${time_limit}" ] && launcher+=" --time=${time_limit}"
[ -n "${srun_opts}" ] && launcher+=" ${srun_opts}"

exec "$(dirname "$0")/run_local.sh" --max_jobs_run "${max_jobs_run}" --num_threads "${num_threads}" \
  --tail_lines "${tail_lines}" --launcher "${launcher}" "$@"
