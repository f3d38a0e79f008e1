#!/usr/bin/env python3
"""Run one step of the recipe and note what it used, so RESULTS.md can report the budget honestly.

    python3 local/usage.py exp/usage.tsv "stage 3" -- ../TEMPLATE/tasu.sh --stage 3 ...

Appends ``name, wall seconds, CPU seconds, peak memory MB`` to the TSV (an earlier line of the same
name is replaced: a re-run stage counts once). Peak memory is the largest sum of resident memory over
the command's whole process tree (the command, its children, DataLoader workers, ...), sampled every
0.2 s; shared pages count once per process, so it is an upper bound. The command's exit status is
passed on, and nothing is noted when it fails.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def tree_rss_mb(root: int) -> float:
    """Resident memory of ``root`` and all its descendants, from /proc (0 where /proc is absent)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, float] = {}
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            statm = Path(entry.path, "statm").read_text().split()
        except OSError:  # the process ended meanwhile
            continue
        pid = int(entry.name)
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(statm[1]) * PAGE_MB
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def main() -> int:
    args = sys.argv[1:]
    if len(args) < 4 or args[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    table, name, command = Path(args[0]), args[1], args[3:]
    start = time.time()
    process = subprocess.Popen(command)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, tree_rss_mb(process.pid))
        time.sleep(0.2)
    wall = time.time() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode == 0:
        table.parent.mkdir(parents=True, exist_ok=True)
        lines = table.read_text(encoding="utf-8").splitlines() if table.exists() else []
        lines = [ln for ln in lines if ln.split("\t")[0] != name]
        lines.append(f"{name}\t{wall:.1f}\t{usage.ru_utime + usage.ru_stime:.1f}\t{peak:.0f}")
        tmp = table.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(table)
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
