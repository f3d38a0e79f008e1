"""What the stage script (egs/TEMPLATE/tasu.sh) needs beyond shell: ``python -m tasu.recipe COMMAND``.

    python -m tasu.recipe decode-flags conf/decode_beam4.yaml        # --beam 4 --batch-size 8
    python -m tasu.recipe merge dump exp/x/decode/data.jsonl test ASR test SLU_scenario
    python -m tasu.recipe split exp/x/decode 4 test ASR test SLU_scenario
    python -m tasu.recipe json-list a.jsonl b.jsonl                   # ["a.jsonl","b.jsonl"]
    python -m tasu.recipe free-port

Stage 5 decodes every test set and task of a run with one set of jobs (one model load per job,
batches across tasks): ``merge`` writes their records into one file, each key prefixed with
``<set>-<task>-``, and after decoding ``split`` sorts the jobs' ``hyp.trn`` and ``ref.trn`` lines back
into ``<set>/<task>/``. Set names may contain ``-`` (``test-other``), so more than one
``<set>-<task>-`` can prefix a line: with sets ``test`` and ``test-ASR`` and the task ``ASR``, the line
``test-ASR-ASR-u1`` starts with both ``test-ASR-`` and ``test-ASR-ASR-``. It belongs to the *longest*
(``u1`` of ``test-ASR``), and among equally long ones to the first part named. Kept here, not inline
in the script, so that it is tested.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Sequence

from tasu.fileio import write_atomic

Part = tuple[str, str]   # (test set, task)


def pairs(names: Sequence[str]) -> list[Part]:
    """``SET TASK SET TASK ...`` (as the script passes them) -> [(set, task), ...]."""
    if len(names) % 2:
        raise ValueError(f"expected SET TASK pairs, got an odd number of names: {' '.join(names)}")
    return list(zip(names[::2], names[1::2]))


def prefix(part: Part) -> str:
    return f"{part[0]}-{part[1]}-"


def decode_flags(config: str | Path) -> list[str]:
    """A decode YAML (``batch_size: 8``) as ``tasu decode`` options (``--batch-size 8``)."""
    import yaml

    conf = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
    return [word for key, value in conf.items() for word in (f"--{key.replace('_', '-')}", str(value))]


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


def split(decode_dir: str | Path, nj: int, parts: Sequence[Part],
          names: Sequence[str] = ("hyp.trn", "ref.trn")) -> None:
    """``output.{1..nj}/<name>`` -> ``<set>/<task>/<name>``, keys unprefixed, lines sorted.

    Every part gets its files, empty when no line is its own.
    """
    decode_dir = Path(decode_dir)
    for name in names:
        lines: dict[Part, list[str]] = {part: [] for part in parts}
        for job in range(1, nj + 1):
            with open(decode_dir / f"output.{job}" / name, encoding="utf-8") as f:
                for line in f:
                    part = owner(line, parts)
                    lines[part].append(line[len(prefix(part)):])
        for (set_name, task), own in lines.items():
            write_atomic(decode_dir / set_name / task / name, "".join(sorted(own)))


def free_port() -> int:
    """A TCP port that nothing listens on now (for a launcher's rendezvous)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasu.recipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("decode-flags", help="a decode YAML as tasu decode options, on one line")
    p.add_argument("config")
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
    sub.add_parser("free-port", help="a TCP port that nothing listens on now")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if args.command == "decode-flags":
        print(" ".join(decode_flags(args.config)))
    elif args.command == "merge":
        merge(args.dump, args.out, pairs(args.parts))
    elif args.command == "split":
        split(args.dir, args.nj, pairs(args.parts))
    elif args.command == "json-list":
        print(json.dumps(args.items, separators=(",", ":")))
    else:
        print(free_port())
    return 0


if __name__ == "__main__":
    sys.exit(main())
