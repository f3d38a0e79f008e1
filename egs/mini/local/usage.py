#!/usr/bin/env python3
"""Run one step of the recipe and note what it used, so RESULTS.md can report the budget honestly.

    python3 local/usage.py exp/usage.tsv "stage 3" -- ../TEMPLATE/tasu.sh --stage 3 ...

Appends ``name, wall seconds, CPU seconds, peak memory MB`` to the TSV. A step noted before keeps one
line, the run that took longer: a re-run that finds the step's work done (``./run.sh --seeds`` over a
finished ``--seed`` run, ``--stage`` from an earlier stage) takes seconds and must not replace the
figures of the run that did the work. Peak memory is the largest memory of the command's
whole process tree (the command, its children, DataLoader workers, compilers, ...), sampled every
0.2 s, so a peak shorter than that can be missed. The command's exit status is passed on, and nothing
is noted when it fails.
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from tasu.fileio import write_atomic

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def tree_memory_mb(root: int) -> float:
    """Memory of ``root`` and all its descendants, from /proc: the sum of their proportional set sizes
    (a page shared by n processes counts 1/n in each, so forked workers are not counted twice), or of
    their resident sizes where the kernel has no smaps_rollup. 0 where /proc is absent."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:  # the process ended meanwhile
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            total += int(rollup.split("Pss:", 1)[1].split()[0]) / 1024
        except (OSError, IndexError):
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_MB
            except OSError:
                pass
    return total


def main() -> int:
    args = sys.argv[1:]
    if len(args) < 4 or args[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    table, name, command = Path(args[0]), args[1], args[3:]
    start = time.time()
    try:
        process = subprocess.Popen(command)
    except OSError as e:   # no such command: said as a shell says it, and its status (127)
        print(f"usage.py: {command[0]}: {e.strerror or e}", file=sys.stderr)
        return 127
    peak = 0.0
    try:
        while process.poll() is None:
            peak = max(peak, tree_memory_mb(process.pid))
            time.sleep(0.2)
    except KeyboardInterrupt:   # Ctrl-C reached the command too: wait for it, and stop as it stops (no traceback)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        process.wait()
        return process.returncode if process.returncode >= 0 else 128 - process.returncode
    wall = time.time() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode == 0:
        lines = table.read_text(encoding="utf-8").splitlines() if table.exists() else []
        line = f"{name}\t{wall:.1f}\t{usage.ru_utime + usage.ru_stime:.1f}\t{peak:.0f}"
        names = [ln.split("\t")[0] for ln in lines]
        if name in names:
            i = names.index(name)
            fields = lines[i].split("\t")
            if len(fields) < 2 or not fields[1].replace(".", "", 1).isdigit() or wall >= float(fields[1]):
                lines[i] = line   # a damaged line (a killed write of an older tasu) is replaced
        else:
            lines.append(line)
        write_atomic(table, "\n".join(lines) + "\n")
    return process.returncode if process.returncode >= 0 else 128 - process.returncode   # killed: 128 + signal


if __name__ == "__main__":
    sys.exit(main())
