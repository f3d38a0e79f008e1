"""Training on several nodes: the launch options of egs/TEMPLATE/tasu.sh and their helpers in tasu.recipe.

No cluster is reachable from a test, so the launch is checked by the exact command lines the stage
script hands to the job runner (DeepSpeed's launcher with a hostfile) and to ``srun`` (a stub on
PATH that records its argv), and by the errors of options that do not fit together. What Slurm's
side provides, a task's variables, is checked for real: two processes of this machine, given the
variables srun would set, find each other through ``slurm-exec`` and tasu's own
``_init_distributed`` (DeepSpeed's env-based start), as the ranks of a two-node job would.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recipe_fixtures import ROOT, copy_recipe, stand_in_for_stage_2
from tasu.recipe import (LaunchError, check_launch, check_resume, checkpoint_world, first_host, free_port, main,
                         read_hostfile, slurm_rank_env)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def recorder(path: Path, record: Path) -> Path:
    """An executable that writes its arguments, one per line, to ``record`` and succeeds."""
    write(path, f"#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" > {record}\n")
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------------------------------
# tasu.recipe: hostfiles, the option check, Slurm's variables, resuming


def test_hostfile_is_read_as_deepspeed_writes_it(tmp_path):
    hosts = write(tmp_path / "hostfile", "# two nodes\n\nnode-a slots=8\nnode-b   slots=8  # the second\n")
    assert read_hostfile(hosts) == [("node-a", 8), ("node-b", 8)]
    for text, message in [("node-a slots=8\nnode-b\n", r"hostfile:2: expected 'host slots=K' \(K >= 1\), got 'node-b'"),
                          ("node-a slots = 8\n", "hostfile:1: expected 'host slots=K'"),
                          ("node-a slots=0\n", "hostfile:1: expected"),
                          ("node-a slots=8\nnode-a slots=8\n", "hostfile:2: host node-a is listed twice"),
                          ("# nothing\n", "no 'host slots=K' line")]:
        with pytest.raises(LaunchError, match=message):
            read_hostfile(write(tmp_path / "hostfile", text))
    with pytest.raises(LaunchError, match="--hostfile .*nope: no such file"):
        read_hostfile(tmp_path / "nope")


def test_launch_options_are_checked_together(tmp_path):
    hosts = str(write(tmp_path / "hostfile", "a slots=8\nb slots=8\nc slots=4\n"))
    assert check_launch(1, 0) == "1 process(es) on this machine"
    assert check_launch(1, 8) == "8 process(es) on this machine under the DeepSpeed launcher"
    assert check_launch(2, 8, hostfile=hosts) == \
        "2 node(s) (a, b) x 8 process(es) started by the DeepSpeed launcher (16 in all)"
    assert check_launch(2, 8, "slurm", runner="run_slurm.sh --mem 64G") == \
        "2 node(s) x 8 process(es) started by srun (16 in all)"
    assert check_launch(1, 0, "slurm", runner="../../utils/run_slurm.sh").startswith("1 node(s) x 1 process(es)")
    problems = [   # (arguments, the start of the message)
        ((2, 8), "--num_nodes 2 needs --hostfile FILE (DeepSpeed's 'host slots=K' lines) or --launcher slurm"),
        ((2, 0, "deepspeed", hosts), "--num_nodes 2 needs --ngpu N >= 1: the processes per node"),
        ((1, 0, "deepspeed", hosts), "--hostfile needs --ngpu N >= 1"),
        ((3, 8, "deepspeed", hosts), f"--hostfile {hosts}: c has slots=4, but --ngpu 8 starts 8 processes per node"),
        ((2, 4, "deepspeed", hosts), f"--hostfile {hosts}: a has slots=8, but --ngpu 4"),
        ((4, 8, "deepspeed", hosts), f"--hostfile {hosts} lists 3 host(s) (a, b, c), fewer than --num_nodes 4"),
        ((2, 8, "deepspeed", str(tmp_path / "nope")), f"--hostfile {tmp_path / 'nope'}: no such file"),
        ((2, 8, "slurm", hosts, "run_slurm.sh"), "--hostfile is for --launcher deepspeed"),
        ((2, 8, "slurm", "", "run_local.sh"), "--launcher slurm starts the processes with srun: set "
                                              "cuda_cmd=\"run_slurm.sh ...\" in cmd.sh (it is 'run_local.sh')"),
        ((1, 8, "mpirun"), "--launcher must be deepspeed or slurm, not 'mpirun'"),
        ((0, 8), "--num_nodes must be 1 or more, not 0"),
    ]
    for args, message in problems:
        with pytest.raises(LaunchError) as error:
            check_launch(*args)
        assert str(error.value).startswith(message) and "\n" not in str(error.value), (args, str(error.value))


def test_first_host_of_a_slurm_node_list():
    assert first_host("gpu07") == "gpu07"
    assert first_host("gpu[07-09,02],cpu1") == "gpu07"
    assert first_host("gpu[2,5-6]") == "gpu2"
    assert first_host("rack[1-2]-node[05,08]") == "rack1-node05"
    assert first_host("a-1,b-2") == "a-1"
    with pytest.raises(LaunchError, match="cannot read the first host"):
        first_host("gpu[07")


def test_each_srun_task_gets_the_torch_distributed_variables():
    task = {"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "16",
            "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_NODELIST": "gpu[01-08]"}
    assert slurm_rank_env(task, 29617) == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1",
                                           "MASTER_ADDR": "gpu07", "MASTER_PORT": "29617"}
    assert slurm_rank_env(task, 1, "10.0.0.7")["MASTER_ADDR"] == "10.0.0.7"
    job_only = {k: v for k, v in task.items() if not k.startswith("SLURM_STEP")}
    assert slurm_rank_env(job_only, 1)["MASTER_ADDR"] == "gpu01"
    with pytest.raises(LaunchError, match="slurm-exec runs as an srun task: SLURM_PROCID, SLURM_LOCALID is not set"):
        slurm_rank_env({"SLURM_NTASKS": "2"}, 1)


def test_resume_needs_as_many_processes_as_wrote_the_checkpoint(tmp_path):
    from tasu.train.checkpoint import ENGINE_DIR

    exp = tmp_path / "exp"
    assert checkpoint_world(exp) is None
    check_resume(exp, 16)   # nothing to resume: any number
    for rank in range(2):   # the names the trainer writes (tasu.train.trainer.Trainer.save)
        write(exp / "checkpoints" / "step_4" / ENGINE_DIR / f"state_rank{rank}.pt", "")
    write(exp / "checkpoints" / "last", "step_4\n")
    assert "state_rank{self.rank}.pt" in (ROOT / "tasu" / "train" / "trainer.py").read_text()
    assert checkpoint_world(exp) == 2
    check_resume(exp, 2)
    with pytest.raises(LaunchError, match="was written by 2 process\\(es\\) and this run starts 16: resume with the "
                                          "same --num_nodes and --ngpu"):
        check_resume(exp, 16)
    assert main(["check-resume", str(exp), "16"]) == 1


def test_slurm_exec_starts_ranks_that_find_each_other(tmp_path):
    """Two processes with the variables of two srun tasks on two nodes (one task each) form one group
    through tasu's _init_distributed, as training's would; on this machine, so the node list names it."""
    code = ("import torch, torch.distributed as dist; from tasu.train.trainer import _init_distributed; "
            "rank, world, local = _init_distributed('cpu', {}); t = torch.tensor([rank + 1.0]); dist.all_reduce(t); "
            "print(rank, world, local, int(t.item())); dist.destroy_process_group()")
    port = free_port()
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", SLURM_NTASKS="2",
               SLURM_STEP_NODELIST="127.0.0.1", SLURM_LOCALID="0")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    ranks = [subprocess.Popen([sys.executable, "-m", "tasu.recipe", "slurm-exec", "--master-port", str(port),
                               "--", sys.executable, "-c", code], env=dict(env, SLURM_PROCID=str(rank)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    outs = [p.communicate(timeout=240) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], [err[-3000:] for _, err in outs]
    assert [out.split()[-4:] for out, _ in outs] == [["0", "2", "0", "3"], ["1", "2", "0", "3"]]


# --------------------------------------------------------------------------------------------------
# egs/TEMPLATE/tasu.sh: the commands it builds, and the option errors before anything runs


@pytest.fixture
def recipe(tmp_path) -> Path:
    recipe = copy_recipe("librispeech", tmp_path)
    for name in ("enc", "llm"):
        (tmp_path / name).mkdir()
    stand_in_for_stage_2(recipe)
    return recipe


def stage3(recipe: Path, *options: str, env: dict | None = None) -> subprocess.CompletedProcess:
    models = ["--encoder_path", str(recipe.parent.parent / "enc"), "--llm_path", str(recipe.parent.parent / "llm")]
    return subprocess.run(["./run.sh", "--stage", "3", "--stop_stage", "3", *models, *options], cwd=recipe,
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=120)


def test_two_nodes_from_a_hostfile_run_deepspeed_s_launcher_on_them(recipe, tmp_path):
    record = tmp_path / "argv"
    write(recipe / "cmd.sh", f'cuda_cmd="{recorder(tmp_path / "runner", record)}"\ndecode_cmd=run_local.sh\n')
    write(recipe / "hostfile", "node-a slots=8\nnode-b slots=8\n")
    out = stage3(recipe, "--ngpu", "8", "--num_nodes", "2", "--hostfile", "hostfile")
    assert out.returncode == 0, out.stderr
    assert "training: 2 node(s) (node-a, node-b) x 8 process(es) started by the DeepSpeed launcher" in out.stderr
    argv = record.read_text().splitlines()
    assert argv[:13] == ["--gpu", "8", "exp/tasu_train_text/log/train.log", "deepspeed", "--hostfile", "hostfile",
                         "--num_nodes", "2", "--num_gpus", "8", "--master_port", argv[11], "--module"]
    assert argv[13:18] == ["tasu.cli", "train", "--config", "conf/train_text.yaml", "--exp-dir"]
    assert 0 < int(argv[11]) < 65536 and "engine.device=cuda" in argv
    # a given rendezvous: both passed on
    stage3(recipe, "--ngpu", "8", "--num_nodes", "2", "--hostfile", "hostfile", "--master_addr", "10.0.0.7",
           "--master_port", "29617")
    argv = record.read_text().splitlines()
    assert argv[8:15] == ["--num_gpus", "8", "--master_port", "29617", "--master_addr", "10.0.0.7", "--module"]


def test_one_node_trains_on_the_devices_cuda_visible_devices_names(recipe, tmp_path):
    """DeepSpeed's --num_gpus ignores CUDA_VISIBLE_DEVICES and takes devices 0..N-1: with 2,3 set, training
    ran on 0 and 1 (perhaps beside someone else's job), exit 0. The visible devices are named instead, where
    the job runs on this machine; a cluster runner's job sees the devices it was given."""
    record = tmp_path / "argv"
    local = recorder(tmp_path / "here" / "run_local.sh", record)   # the local runner, recording its job
    write(recipe / "cmd.sh", f'cuda_cmd="{local} --max_jobs_run 1"\ndecode_cmd=run_local.sh\n')
    assert stage3(recipe, "--ngpu", "2", env={"CUDA_VISIBLE_DEVICES": "2,3,5"}).returncode == 0
    argv = record.read_text().splitlines()
    assert argv[5:9] == ["deepspeed", "--include", "localhost:2,3", "--master_port"] and "--num_gpus" not in argv
    assert stage3(recipe, "--ngpu", "2", "--device", "npu", env={"ASCEND_RT_VISIBLE_DEVICES": "4,6"}).returncode == 0
    assert record.read_text().splitlines()[5:8] == ["deepspeed", "--include", "localhost:4,6"]
    out = stage3(recipe, "--ngpu", "4", env={"CUDA_VISIBLE_DEVICES": "2,3"})
    assert out.returncode == 1 and "ERROR: --ngpu 4, but CUDA_VISIBLE_DEVICES=2,3 leaves 2 device(s)" in out.stderr
    out = stage3(recipe, "--ngpu", "1", env={"CUDA_VISIBLE_DEVICES": "GPU-5f1c"})
    assert out.returncode == 1 and "ERROR: CUDA_VISIBLE_DEVICES=GPU-5f1c: training names devices by index" in out.stderr
    write(recipe / "cmd.sh", f'cuda_cmd="{recorder(tmp_path / "runner", record)}"\ndecode_cmd=run_local.sh\n')
    assert stage3(recipe, "--ngpu", "4", env={"CUDA_VISIBLE_DEVICES": "0"}).returncode == 0   # a login node's
    assert record.read_text().splitlines()[3:6] == ["deepspeed", "--num_gpus", "4"]


def test_two_nodes_under_slurm_run_one_srun_task_per_device(recipe, tmp_path):
    record = tmp_path / "srun_argv"
    recorder(tmp_path / "bin" / "srun", record)
    write(recipe / "cmd.sh", 'cuda_cmd="run_slurm.sh --mem 64G"\ndecode_cmd=run_local.sh\n')
    path = f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"
    out = stage3(recipe, "--ngpu", "8", "--num_nodes", "2", "--launcher", "slurm", "--master_port", "29617",
                 env={"PATH": path})
    assert out.returncode == 0, out.stderr
    assert "training: 2 node(s) x 8 process(es) started by srun (16 in all)" in out.stderr
    argv = record.read_text().splitlines()
    assert argv[:9] == ["--quiet", "--nodes=2", "--ntasks-per-node=8", "--kill-on-bad-exit=1", "--cpus-per-task=1",
                        "--gres=gpu:8", "--mem=64G", "bash", "-c"]
    task = argv[9]   # what every task runs
    assert task.startswith("python3 -m tasu.recipe slurm-exec --master-port 29617 tasu train "
                           "--config conf/train_text.yaml --exp-dir exp/tasu_train_text --allow-pipes "), task
    assert "engine.device=cuda" in task
    log = (recipe / "exp" / "tasu_train_text" / "log" / "train.log").read_text()
    assert log.startswith("# python3 -m tasu.recipe slurm-exec")   # the job runner's log, as for one node
    # --device cpu: 8 CPU processes per node, no device asked of Slurm
    stage3(recipe, "--ngpu", "8", "--device", "cpu", "--num_nodes", "2", "--launcher", "slurm", env={"PATH": path})
    argv = record.read_text().splitlines()
    assert "--ntasks-per-node=8" in argv and not any(a.startswith("--gres") for a in argv)


@pytest.mark.parametrize("options, message", [
    (["--ngpu", "8", "--num_nodes", "2"],
     "--num_nodes 2 needs --hostfile FILE (DeepSpeed's 'host slots=K' lines) or --launcher slurm"),
    (["--ngpu", "8", "--num_nodes", "2", "--hostfile", "nope"], "--hostfile nope: no such file"),
    (["--ngpu", "4", "--num_nodes", "2", "--hostfile", "hostfile"],
     "--hostfile hostfile: node-a has slots=8, but --ngpu 4 starts 4 processes per node: make them agree"),
    (["--ngpu", "8", "--num_nodes", "2", "--launcher", "slurm"],
     "--launcher slurm starts the processes with srun: set cuda_cmd=\"run_slurm.sh ...\" in cmd.sh"),
    (["--num_nodes", "2", "--launcher", "slurm"], "--num_nodes 2 needs --ngpu N >= 1"),
])
def test_launch_option_errors_stop_before_any_stage(recipe, options, message):
    write(recipe / "hostfile", "node-a slots=8\nnode-b slots=8\n")
    out = stage3(recipe, *options)
    assert out.returncode == 1, out.stderr
    assert re.search(r"ERROR: " + re.escape(message), out.stderr), out.stderr
    assert len([line for line in out.stderr.splitlines() if "ERROR" in line]) == 1
    assert not (recipe / "exp").exists()


def test_resuming_with_another_process_count_stops_with_a_message(recipe, tmp_path):
    write(recipe / "cmd.sh", f'cuda_cmd="{recorder(tmp_path / "runner", tmp_path / "argv")}"\ndecode_cmd=run_local.sh\n')
    ckpt = recipe / "exp" / "tasu_train_text" / "checkpoints"
    for rank in range(16):
        write(ckpt / "step_8" / "engine" / f"state_rank{rank}.pt", "")
    write(ckpt / "last", "step_8\n")
    out = stage3(recipe, "--ngpu", "8")
    assert out.returncode == 1
    assert ("ERROR: exp/tasu_train_text: its last checkpoint was written by 16 process(es) and this run starts 8: "
            "resume with the same --num_nodes and --ngpu") in out.stderr
    write(recipe / "hostfile", "node-a slots=8\nnode-b slots=8\n")
    assert stage3(recipe, "--ngpu", "8", "--num_nodes", "2", "--hostfile", "hostfile").returncode == 0
    assert "--resume" in (tmp_path / "argv").read_text().splitlines()


def test_the_local_job_runner_refuses_jobs_of_several_nodes(tmp_path):
    out = subprocess.run([str(ROOT / "utils" / "run_local.sh"), "--num_nodes", "2", "--ntasks_per_node", "8",
                          "x.log", "true"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 1 and not (tmp_path / "x.log").exists()
    assert "run_local.sh: runs one process per job on this machine; --num_nodes 2 --ntasks_per_node 8 needs a " \
           "cluster runner (run_slurm.sh in cmd.sh)" in out.stderr


@pytest.mark.parametrize("how", ["kill", "ctrl-c"])
def test_a_stopped_job_runner_stops_its_jobs_and_starts_no_more(tmp_path, how):
    """SIGTERM (kill, scancel) reached the job subshells only: their commands ran on, orphaned, and the
    runner went on to start the jobs still to come, each ending with code 0. Ctrl-C (SIGINT to the
    terminal's process group) left what a job had started in the background running. The runner now
    dies of the signal, as a calling script expects (it went on after an 'exit 130')."""
    marker = "31.25" if how == "kill" else "31.75"
    runner = subprocess.Popen([str(ROOT / "utils" / "run_local.sh"), "--max_jobs_run", "1", "JOB=1:3", "log/s.JOB.log",
                               "bash", "-c", f"echo started JOB; sleep {marker} & wait"],
                              cwd=tmp_path, stderr=subprocess.PIPE, text=True, start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = tmp_path / "log" / "s.1.log"
    for _ in range(100):   # until job 1 runs
        if log.exists() and "started 1" in log.read_text():
            break
        time.sleep(0.1)
    if how == "kill":
        runner.terminate()
    else:
        os.killpg(runner.pid, signal.SIGINT)
    assert runner.wait(timeout=20) == -(signal.SIGTERM if how == "kill" else signal.SIGINT)
    assert "stopped by a signal; the running jobs were stopped" in runner.stderr.read()
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == ["s.1.log"]
    assert log.read_text().splitlines()[-1].startswith("# Ended (code 1")   # 143 or 130
    time.sleep(0.2)
    left = [p for p in Path("/proc").glob("[0-9]*/cmdline") if marker.encode() in p.read_bytes()]
    assert left == []


def test_srun_options_are_words_never_globbed_nor_quoted(tmp_path):
    """--srun_opts went through the shell unquoted: quotes reached srun inside its options and a value
    like --nodelist=gpu[01-02] could be replaced by a file name it matched."""
    record = tmp_path / "argv"
    write(tmp_path / "bin" / "srun", f"#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" > {record}\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    write(tmp_path / "gpu0", "")   # what gpu[01-02]... would not match, but gpu[0] does
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    slurm = str(ROOT / "utils" / "run_slurm.sh")
    subprocess.run([slurm, "--srun_opts", "--nodelist=gpu[0] --comment=two_words", "x.log", "true"], cwd=tmp_path,
                   env=env, check=True)
    assert record.read_text().splitlines()[-5:] == ["--nodelist=gpu[0]", "--comment=two_words", "bash", "-c", "true"]
    out = subprocess.run([slurm, "--srun_opts", "--comment='two words'", "x.log", "true"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 1 and "options are split at spaces and quotes would reach srun" in out.stderr


def test_the_slurm_runner_takes_the_local_runner_s_options(tmp_path):
    """run_slurm.sh says it takes run_local.sh's command line; --tail_lines was an unknown option."""
    write(tmp_path / "bin" / "srun", "#!/usr/bin/env bash\nshift 3\nexec \"$@\"\n")   # past --quiet --ntasks=1 --cpus..
    (tmp_path / "bin" / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([str(ROOT / "utils" / "run_slurm.sh"), "--tail_lines", "3", "x.log", "bash", "-c",
                          "echo one; echo two; exit 3"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "  | two" in out.stderr and "  | one" not in out.stderr, out.stderr
