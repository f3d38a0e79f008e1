"""What the stage script (egs/TEMPLATE/tasu.sh) needs beyond shell: ``python -m tasu.recipe COMMAND``.

    python -m tasu.recipe decode-flags conf/decode_beam4.yaml        # --beam 4 --batch-size 8
    python -m tasu.recipe merge dump exp/x/decode/data.jsonl test ASR test SLU_scenario
    python -m tasu.recipe split exp/x/decode 4 test ASR test SLU_scenario
    python -m tasu.recipe json-list a.jsonl b.jsonl                   # ["a.jsonl","b.jsonl"]
    python -m tasu.recipe free-port
    python -m tasu.recipe posterior-dir dump/posteriors conf/train_audio_sft.yaml encoder.path=/models/enc
    python -m tasu.recipe dump-done dump/posteriors/<tag>/test 4 dump/test/ASR.jsonl   # status 0 done, 2 to make
    python -m tasu.recipe encoder-env conf/train_audio_sft.yaml encoder.path=exp/asr_espnet   # espnet-venv
    python -m tasu.recipe check-launch --num-nodes 2 --ngpu 8 --hostfile hostfile   # or the error
    python -m tasu.recipe check-resume exp/x 16                       # or why it cannot resume
    python -m tasu.recipe check-finished best exp/x exp/y             # or why stage 5 must not decode one
    srun ... python -m tasu.recipe slurm-exec --master-port 29617 -- tasu train ...

Stage 5 decodes every test set and task of a run with one set of jobs (one model load per job,
batches across tasks): ``merge`` writes their records into one file, each key prefixed with
``<set>-<task>-``, and after decoding ``split`` sorts the jobs' ``hyp.trn`` and ``ref.trn`` lines back
into ``<set>/<task>/``. Set names may contain ``-`` (``test-other``), so more than one
``<set>-<task>-`` can prefix a line: with sets ``test`` and ``test-ASR`` and the task ``ASR``, the line
``test-ASR-ASR-u1`` starts with both ``test-ASR-`` and ``test-ASR-ASR-``. It belongs to the *longest*
(``u1`` of ``test-ASR``), and among equally long ones to the first part named. Kept here, not inline
in the script, so that it is tested.

Training on several nodes (see egs/TEMPLATE/README.md, "Multi-node") starts in one of two ways.
``--launcher deepspeed``: DeepSpeed's launcher reads a hostfile (``host slots=K`` lines) and starts
``K`` processes on each of its first ``--num_nodes`` hosts over ssh. ``--launcher slurm``: ``srun``
starts one task per device on every node of the allocation, and ``slurm-exec`` turns each task's
Slurm variables into the ones ``torch.distributed`` reads (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) before it runs the training command in its place.
``check-launch`` checks these options before any stage runs, ``check-resume`` that a checkpoint's
optimizer state was written by as many processes as the run will start.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Mapping, Sequence

from tasu.errors import run_reporting
from tasu.fileio import write_atomic

Part = tuple[str, str]   # (test set, task)
DECODE_OUTPUTS = ("hyp.trn", "ref.trn")   # what each decode job writes and ``split`` sorts back


def pairs(names: Sequence[str]) -> list[Part]:
    """``SET TASK SET TASK ...`` (as the script passes them) -> [(set, task), ...]."""
    if len(names) % 2:
        raise ValueError(f"expected SET TASK pairs, got an odd number of names: {' '.join(names)}")
    return list(zip(names[::2], names[1::2]))


def prefix(part: Part) -> str:
    return f"{part[0]}-{part[1]}-"


# tasu decode options the stage script sets itself: from a decode YAML they would fight its own
SET_BY_STAGE = ("exp", "data", "out", "checkpoint", "device", "input", "set", "allow_pipes", "debug")
_KEY = re.compile(r"[a-z][a-z0-9_]*")
_WORD = re.compile(r"[A-Za-z0-9_.+,:/=@%-]+")   # one word, none of the shell's operators or quotes


def decode_flags(config: str | Path, decode_args: str = "") -> list[str]:
    """A decode YAML (``batch_size: 8``) as ``tasu decode`` options (``--batch-size 8``).

    The stage script splits them into words and its job runner keeps shell operators (``;``, ``|``)
    unquoted, so each value must be one plain word: a YAML ``beam: "1 ; rm ..."`` is refused here,
    as are lists, mappings and the options the script sets itself (``SET_BY_STAGE``). Each option, and
    ``decode_args`` (the script's ``--decode_args``, added to them), must be one ``tasu decode`` takes,
    checked by its own parser and settings: a misspelt name or a value out of range would otherwise
    stop the decode stage only, after the training stages' hours."""
    from tasu.cli import check_decode_options
    from tasu.config import ConfigError, read_mapping

    flags = []
    for key, value in read_mapping(config).items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ConfigError(f"{config}: {key!r} is not an option name (a tasu decode option: beam, batch_size, ...)")
        if key in SET_BY_STAGE:
            raise ConfigError(f"{config}: {key}: the stage script sets it (see tasu.sh --help), not a decode config")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not _WORD.fullmatch(str(value)):
            raise ConfigError(f"{config}: {key}: must be a number or one plain word, not {value!r}")
        if isinstance(value, str) and value.startswith("-"):
            raise ConfigError(f"{config}: {key}: {value!r} would be read as an option, not a value")
        flag = [f"--{key.replace('_', '-')}", str(value)]
        try:
            check_decode_options(flag)
        except ValueError as err:
            problem = str(err).removeprefix(f"argument {flag[0]}: ")
            if problem.startswith("unrecognized arguments"):
                problem = f"{flag[0]} is not an option of tasu decode (tasu decode --help lists them)"
            raise ConfigError(f"{config}: {key}: {problem}") from None
        flags += flag
    try:
        check_decode_options(decode_args.split())   # split as the stage script splits them
    except ValueError as err:
        raise ConfigError(f"--decode_args '{decode_args}': {err}") from None
    return flags


def merge(dump: str | Path, out: str | Path, parts: Sequence[Part]) -> int:
    """Write the records of ``dump/<set>/<task>.jsonl`` for every part into ``out``, keys prefixed; the count."""
    lines = []
    for part in parts:
        with open(Path(dump) / part[0] / f"{part[1]}.jsonl", encoding="utf-8-sig") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    record["key"] = prefix(part) + record["key"]
                    lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    write_atomic(out, "".join(lines))
    return len(lines)


def owner(line: str, parts: Sequence[Part]) -> Part:
    """The part a merged line belongs to: the longest ``<set>-<task>-`` prefix of it (see the module doc)."""
    matching = [p for p in parts if line.startswith(prefix(p))]
    if not matching:
        raise ValueError(f"no test set and task prefixes the line {line.rstrip()!r}")
    return max(matching, key=lambda p: len(p[0]) + len(p[1]))


def split(decode_dir: str | Path, nj: int, parts: Sequence[Part]) -> None:
    """``output.{1..nj}/<name>`` -> ``<set>/<task>/<name>`` for each of ``DECODE_OUTPUTS``, keys
    unprefixed, lines sorted.

    Every part gets its files, empty when no line is its own.
    """
    decode_dir = Path(decode_dir)
    for name in DECODE_OUTPUTS:
        lines: dict[Part, list[str]] = {part: [] for part in parts}
        for job in range(1, nj + 1):
            if name == "ref.trn" and not (decode_dir / f"output.{job}" / name).exists():
                continue   # a job of unlabelled records only: tasu decode writes no ref.trn
            with open(decode_dir / f"output.{job}" / name, encoding="utf-8") as f:
                for line in f:
                    part = owner(line, parts)
                    lines[part].append(line[len(prefix(part)):])
        for (set_name, task), own in lines.items():
            write_atomic(decode_dir / set_name / task / name, "".join(sorted(own)))


def posterior_dir(root: str, config: str | Path, overrides: Sequence[str] = ()) -> str:
    """Where a recipe keeps the posterior dumps an experiment config reads: ``root/<tag>``, the tag
    naming its encoder (files and options) and compression settings, so that the dumps of another encoder or
    setting never mix and a config with the same ones shares them (``tasu.dump``)."""
    from tasu.config import load_config
    from tasu.dump import identity, identity_tag
    from tasu.experiment import ExperimentConfig

    cfg = load_config(ExperimentConfig, config, list(overrides))
    tag = identity_tag(identity(cfg.encoder.path, cfg.encoder.type, cfg.compress, cfg.encoder.options))
    return f"{root.rstrip('/')}/{tag}"


def dump_done(out: str, nj: int, files: Sequence[str]) -> int:
    """0 when ``out`` holds the complete dump of ``files`` with ``nj`` jobs: the stage skips its job
    array; else 2 (1 is an error's). A complete dump of a set stage 2 has remade since, or of another
    --dump_nj, goes to the job array, whose first job makes it anew (``tasu dump-posteriors --remake-stale``)."""
    from tasu.dump import DONE, why_stale

    if not (Path(out) / DONE).exists():
        return 2
    why = why_stale(out, files, nj)
    if why:
        print(f"{out}: {why}: making it anew", file=sys.stderr)
        return 2
    return 0


def encoder_environment(config: str | Path, overrides: Sequence[str] = ()) -> str:
    """The environment under tools/ that loads an experiment config's encoder, or "" for the main one
    (``CTCEncoder.environment``)."""
    from tasu.config import load_config
    from tasu.encoders.registry import backend
    from tasu.experiment import ExperimentConfig

    cfg = load_config(ExperimentConfig, config, list(overrides))
    return backend(cfg.encoder.path, cfg.encoder.type).environment or ""


def free_port() -> int:
    """A TCP port that nothing listens on now (for a launcher's rendezvous)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# -- launching training on several nodes ----------------------------------------------------------

LAUNCHERS = ("deepspeed", "slurm")
# Each training process saves its own state as checkpoints/step_N/engine/state_rank<R>.pt
# (tasu.train.trainer, ENGINE_DIR of tasu.train.checkpoint; not imported here: it loads torch).
RANK_STATE = re.compile(r"state_rank(\d+)\.pt")


class LaunchError(ValueError):
    """The launch options do not fit together; the message (one line) says how."""


def read_hostfile(path: str | Path) -> list[tuple[str, int]]:
    """DeepSpeed's hostfile (``host slots=K`` per line; blank lines and ``#`` comments skipped) as (host, K)."""
    path = Path(path)
    if not path.is_file():
        raise LaunchError(f"--hostfile {path}: no such file")
    hosts: list[tuple[str, int]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        found = re.match(r"(\S+)\s+slots=(\d+)(\s|$)", line)
        if not found or int(found.group(2)) < 1:
            raise LaunchError(f"--hostfile {path}:{number}: expected 'host slots=K' (K >= 1), got {line!r}")
        if found.group(1) in (h for h, _ in hosts):
            raise LaunchError(f"--hostfile {path}:{number}: host {found.group(1)} is listed twice")
        hosts.append((found.group(1), int(found.group(2))))
    if not hosts:
        raise LaunchError(f"--hostfile {path}: no 'host slots=K' line")
    return hosts


def processes_per_node(ngpu: int) -> int:
    """--ngpu 0 is one process; --ngpu N, N processes (devices, or CPU processes with --device cpu)."""
    return max(ngpu, 1)


def check_launch(num_nodes: int, ngpu: int, launcher: str = "deepspeed", hostfile: str = "",
                 runner: str = "run_local.sh") -> str:
    """What training will start, in words; ``LaunchError`` when the options do not fit together.

    ``runner`` is cmd.sh's ``cuda_cmd``: ``--launcher slurm`` needs ``run_slurm.sh`` (its srun
    starts the ranks). With ``--hostfile``, every host used has as many slots as ``--ngpu``.
    """
    if launcher not in LAUNCHERS:
        raise LaunchError(f"--launcher must be {' or '.join(LAUNCHERS)}, not '{launcher}'")
    if num_nodes < 1:
        raise LaunchError(f"--num_nodes must be 1 or more, not {num_nodes}")
    if ngpu < 0:
        raise LaunchError(f"--ngpu must be 0 or more, not {ngpu}")
    if (num_nodes > 1 or hostfile) and ngpu < 1:
        what = f"--num_nodes {num_nodes}" if num_nodes > 1 else "--hostfile"
        raise LaunchError(f"{what} needs --ngpu N >= 1: the processes per node (devices, or CPU processes "
                          "with --device cpu)")
    per_node = processes_per_node(ngpu)
    if launcher == "slurm":
        if hostfile:
            raise LaunchError("--hostfile is for --launcher deepspeed: under --launcher slurm the allocation "
                              "names the nodes")
        first = runner.split()[0] if runner.split() else ""
        if Path(first).name != "run_slurm.sh":
            raise LaunchError(f"--launcher slurm starts the processes with srun: set cuda_cmd=\"run_slurm.sh ...\" "
                              f"in cmd.sh (it is '{runner}')")
        return (f"{num_nodes} node(s) x {per_node} process(es) started by srun "
                f"({num_nodes * per_node} in all)")
    if not hostfile:
        if num_nodes > 1:
            raise LaunchError(f"--num_nodes {num_nodes} needs --hostfile FILE (DeepSpeed's 'host slots=K' lines) "
                              "or --launcher slurm")
        return f"{per_node} process(es) on this machine" + (" under the DeepSpeed launcher" if ngpu else "")
    hosts = read_hostfile(hostfile)
    if len(hosts) < num_nodes:
        raise LaunchError(f"--hostfile {hostfile} lists {len(hosts)} host(s) ({', '.join(h for h, _ in hosts)}), "
                          f"fewer than --num_nodes {num_nodes}")
    for host, slots in hosts[:num_nodes]:
        if slots != ngpu:
            raise LaunchError(f"--hostfile {hostfile}: {host} has slots={slots}, but --ngpu {ngpu} starts {ngpu} "
                              "processes per node: make them agree")
    used = ", ".join(h for h, _ in hosts[:num_nodes])
    return (f"{num_nodes} node(s) ({used}) x {ngpu} process(es) started by the DeepSpeed launcher "
            f"({num_nodes * ngpu} in all)")


def checkpoint_world(exp: str | Path) -> int | None:
    """How many processes wrote the last checkpoint of ``exp`` (its per-rank states), or None when it has none."""
    ckpt_root = Path(exp) / "checkpoints"
    pointer = ckpt_root / "last"
    if not pointer.is_file():
        return None
    engine = ckpt_root / pointer.read_text(encoding="utf-8").strip() / "engine"
    ranks = [m for p in engine.glob("state_rank*.pt") if (m := RANK_STATE.fullmatch(p.name))]
    return len(ranks) or None


def check_resume(exp: str | Path, world: int) -> None:
    """``LaunchError`` when the last checkpoint of ``exp`` was written by a number of processes other than ``world``.

    The optimizer state is partitioned across the ranks (ZeRO), and each rank resumes from its own file.
    """
    written = checkpoint_world(exp)
    if written is not None and written != world:
        raise LaunchError(f"{exp}: its last checkpoint was written by {written} process(es) and this run starts "
                          f"{world}: resume with the same --num_nodes and --ngpu, or train into a new experiment")


def unfinished_training(exp: str | Path, which: str) -> str:
    """Why stage 5 must not decode checkpoint ``which`` (best, last or step_N) of ``exp``; "" when it may.

    ``best`` and ``last`` stand for the model a training ended with: of a run stopped half-way (killed, out
    of time) they are a half-trained model, which stages 5-7 decoded, scored and tabulated as the
    experiment's, exit 0 (``train.init_from`` refuses such a run for the same reason). A ``step_N`` is
    named on purpose, and decoded as it is. No checkpoint at all is ``tasu decode``'s to say. A tasu
    that records a checkpoint's step in its weights marks a training's end too (``checkpoints/finished``);
    of an experiment of an older one, which may not have, stage 5 is warned and decodes it.
    """
    if which not in ("best", "last"):
        return ""
    from tasu.model_io import last_checkpoint, recorded_step
    from tasu.train.checkpoint import FINISHED, training_finished

    root = Path(exp) / "checkpoints"
    last = last_checkpoint(root)
    if last is None:
        return ""
    marked = (root / FINISHED).is_file()
    if not marked and recorded_step(last) is None:
        print(f"{exp}: written by an older tasu, which may not have marked the end of its training: decoding "
              f"its {which} checkpoint as the finished model's", file=sys.stderr)
        return ""
    if marked and training_finished(root, last):
        return ""
    return f"{exp}: its training has not finished (its last checkpoint is {last.name}), so --inference_checkpoint " \
           f"{which} would decode a half-trained model"


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist: ``gpu[07-09,02],cpu1`` -> ``gpu07``, ``r[1-2]-n[5,8]`` -> ``r1-n5``."""
    depth = 0
    for i, c in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(c, 0)
        if c == "," and depth == 0:
            nodelist = nodelist[:i]
            break
    host = re.sub(r"\[([^\]\-,]+)[^\]]*\]", r"\1", nodelist.strip())
    if not host or re.search(r"[\[\],]", host):
        raise LaunchError(f"cannot read the first host of the Slurm node list {nodelist!r}")
    return host


def slurm_rank_env(environ: Mapping[str, str], master_port: int, master_addr: str = "") -> dict[str, str]:
    """The ``torch.distributed`` variables of one srun task, from Slurm's.

    RANK is the task's SLURM_PROCID, WORLD_SIZE the step's task count, LOCAL_RANK its SLURM_LOCALID
    (the device it uses on its node); the master is the step's first node unless named.
    """
    missing = [v for v in ("SLURM_PROCID", "SLURM_LOCALID") if v not in environ]
    if missing:
        raise LaunchError(f"slurm-exec runs as an srun task: {', '.join(missing)} is not set")
    world = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS")
    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
    if not world or not (nodes or master_addr):
        raise LaunchError("slurm-exec runs as an srun task: SLURM_STEP_NUM_TASKS/SLURM_NTASKS or "
                          "SLURM_STEP_NODELIST/SLURM_JOB_NODELIST is not set")
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": world, "LOCAL_RANK": environ["SLURM_LOCALID"],
            "MASTER_ADDR": master_addr or first_host(nodes), "MASTER_PORT": str(master_port)}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasu.recipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("decode-flags", help="a decode YAML as tasu decode options, on one line")
    p.add_argument("config")
    p.add_argument("--decode-args", default="", metavar="OPTIONS",
                   help="more tasu decode options, checked too (write --decode-args='--beam 1')")
    p = sub.add_parser("merge", help="test sets' task files -> one JSONL file with <set>-<task>- keys")
    p.add_argument("dump", help="the dump directory: <dump>/<set>/<task>.jsonl")
    p.add_argument("out")
    p.add_argument("parts", nargs="+", metavar="SET TASK")
    p = sub.add_parser("split", help="the decode jobs' hyp.trn/ref.trn -> <dir>/<set>/<task>/")
    p.add_argument("dir", help="the decode directory, holding output.1 ... output.NJ")
    p.add_argument("nj", type=int)
    p.add_argument("parts", nargs="+", metavar="SET TASK")
    p = sub.add_parser("json-list", help="the arguments as a JSON list (a YAML flow list for key=value overrides)")
    p.add_argument("items", nargs=argparse.REMAINDER)
    p = sub.add_parser("posterior-dir", help="the directory under ROOT for an experiment config's posterior dumps")
    p.add_argument("root")
    p.add_argument("config", help="experiment YAML (a conf, or an experiment's config.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p = sub.add_parser("dump-done", help="exit status 0 when DIR holds the complete posterior dump of FILEs "
                                         "made with NJ jobs; 2 when it is to be made (saying why when DIR holds "
                                         "another one); 1 on an error")
    p.add_argument("dir")
    p.add_argument("nj", type=int)
    p.add_argument("files", nargs="+", metavar="FILE")
    p = sub.add_parser("encoder-env", help="the environment under tools/ that loads an experiment config's "
                                           "encoder (empty: the main one)")
    p.add_argument("config", help="experiment YAML (a conf, or an experiment's config.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    sub.add_parser("free-port", help="a TCP port that nothing listens on now")
    p = sub.add_parser("check-launch", help="check the training launch options; print what will start, "
                                            "or the problem (exit status 1)")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--ngpu", type=int, default=0)
    p.add_argument("--launcher", default="deepspeed")
    p.add_argument("--hostfile", default="")
    p.add_argument("--runner", default="run_local.sh", help="cmd.sh's cuda_cmd")
    p = sub.add_parser("check-resume", help="exit status 1 when EXP's last checkpoint was written by another "
                                            "number of processes than WORLD")
    p.add_argument("exp")
    p.add_argument("world", type=int)
    p = sub.add_parser("check-finished", help="exit status 1, saying why, when stage 5 must not decode checkpoint "
                                              "WHICH of an EXP: best or last of a training that has not finished")
    p.add_argument("which", help="best, last or step_N")
    p.add_argument("exps", nargs="+", metavar="exp")
    p = sub.add_parser("slurm-exec", help="run COMMAND with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and "
                                          "MASTER_PORT set from this srun task's Slurm variables")
    p.add_argument("--master-port", type=int, required=True)
    p.add_argument("--master-addr", default="", help="default: the first node of the step")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """A failure is one line, ``tasu.recipe COMMAND: error: ...`` (see :mod:`tasu.errors`): the stage
    script stops on it, and the user reads which config or file is wrong, not a traceback."""
    args = get_parser().parse_args(argv)
    return run_reporting(f"tasu.recipe {args.command}", lambda: _run(args), debug=None)


def _run(args: argparse.Namespace) -> int:
    if args.command == "decode-flags":
        print(" ".join(decode_flags(args.config, args.decode_args)))
    elif args.command == "merge":
        merge(args.dump, args.out, pairs(args.parts))
    elif args.command == "split":
        split(args.dir, args.nj, pairs(args.parts))
    elif args.command == "posterior-dir":
        print(posterior_dir(args.root, args.config, args.overrides))
    elif args.command == "dump-done":
        return dump_done(args.dir, args.nj, args.files)
    elif args.command == "encoder-env":
        print(encoder_environment(args.config, args.overrides))
    elif args.command == "json-list":
        print(json.dumps(args.items, separators=(",", ":")))
    elif args.command == "check-finished":
        problem = next(filter(None, (unfinished_training(exp, args.which) for exp in args.exps)), "")
        if problem:   # the stage script shows it as its own error, with what to do
            print(problem, file=sys.stderr)
            return 1
    elif args.command in ("check-launch", "check-resume", "slurm-exec"):
        try:
            return _launch_command(args)
        except LaunchError as e:   # the stage script shows the problem itself, as its own error
            print(e, file=sys.stderr)
            return 1
    else:
        print(free_port())
    return 0


def _launch_command(args: argparse.Namespace) -> int:
    if args.command == "check-launch":
        print(check_launch(args.num_nodes, args.ngpu, args.launcher, args.hostfile, args.runner))
    elif args.command == "check-resume":
        check_resume(args.exp, args.world)
    else:
        command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not command:
            raise LaunchError("slurm-exec: no command to run")
        env = dict(os.environ, **slurm_rank_env(os.environ, args.master_port, args.master_addr))
        sys.stdout.flush()
        os.execvpe(command[0], command, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
