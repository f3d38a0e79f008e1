# How jobs run (Kaldi's cmd.sh); every recipe holds the same copy of this file.
#   cuda_cmd:   training (tasu.sh adds --gpu <ngpu>)
#   decode_cmd: decoding and scoring jobs (one log per job)
# On this machine, one process per job (see utils/run_local.sh --help):
cuda_cmd="run_local.sh"
decode_cmd="run_local.sh"

# On a slurm cluster, each job one srun step (see utils/run_slurm.sh --help):
# cuda_cmd="run_slurm.sh --mem 64G --num_threads 8"
# decode_cmd="run_slurm.sh --mem 32G --num_threads 4"
