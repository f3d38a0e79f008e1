#!/usr/bin/env python3
"""Compare the summaries of two RESULTS.md of this recipe, e.g. the committed one and your own run on
another machine: does the table survive the move?

    python3 local/compare_results.py RESULTS.md seeds-elsewhere/RESULTS.md
    git show 736eee6:egs/mini/RESULTS.md > /tmp/theirs.md && python3 local/compare_results.py /tmp/theirs.md RESULTS.md

Every cell that both summaries hold (the systems table and the rows that explain it, as local/report.py
writes them: ``mean ± sd`` over the seeds of ``./run.sh --seeds``) is printed with both means, their
difference and the pooled standard deviation sqrt((sd_a^2 + sd_b^2) / 2), then how many cells agree
within one and two pooled standard deviations (plus 0.1: the means are read as printed, rounded to
0.1, so a difference of the last digit may be none). Float sums differ across CPU models, so two machines
never give the same digits; what should hold is the means within the spread the seeds already show.
A report of one run has no spread, so its cells can only be compared as numbers: run three seeds.
The synthesizer releases that spoke each corpus (data/local/corpus.json) are shown where the report
names them: with another espeak-ng or flite release the audio itself differs.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import FROM_SPEECH  # noqa: E402  (the row that repeats the zero-shot system's cells)

CELL = re.compile(r"^(-?\d+(?:\.\d+)?)(?: ± (\d+(?:\.\d+)?))?$")


class Report(NamedTuple):
    path: Path
    commit: str
    machine: str
    synthesizers: str  # the releases that spoke its corpus, or "" where the report does not say
    runs: int
    cells: dict[tuple[str, str], tuple[float, float | None]]  # (row, column) -> (mean, sd; None for one run)
    quick: str = ""    # "true" or "false" as its "Made by" line says; "" where it does not


def read_report(path: Path) -> Report:
    """The summary section of a RESULTS.md written by local/report.py; a clear error if it has none."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SystemExit(f"compare_results.py: cannot read {path}: {e.strerror}")
    except UnicodeDecodeError as e:
        raise SystemExit(f"compare_results.py: {path}: not UTF-8 text ({e.reason} at byte {e.start})")
    lines = text.splitlines()
    try:
        start = lines.index("## Summary (egs/mini)")
    except ValueError:
        raise SystemExit(f"compare_results.py: {path} has no '## Summary (egs/mini)' section "
                         "(made by local/report.py at the end of ./run.sh)")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    section = lines[start:end]
    commit = re.search(r"- Git hash: `([^`]*)`", text)
    machine = re.search(r"measured by run.sh on this machine \((.*)\):", "\n".join(section))
    runs = re.search(r": (\d+) whole runs, one per seed", "\n".join(section))
    spoken = re.search(r"The corpus was spoken by (.*) \(data/local/corpus.json\)", "\n".join(section))
    made_by = next((ln for ln in section if ln.startswith("Made by ")), "")
    quick = set(re.findall(r"quick=(true|false)", made_by))
    cells, header = {}, None
    for lineno, line in enumerate(section, start + 1):
        if not line.startswith("|"):
            header = None
            continue
        row = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = row
        elif header[0] == "system" and not set(row[0]) <= set("-:"):  # the tables of results, not of costs
            if len(row) != len(header):
                raise SystemExit(f"compare_results.py: {path}:{lineno}: {len(row)} cells where the header has "
                                 f"{len(header)}")
            values = {}
            for column, value in zip(header[1:], row[1:]):
                if value == "-":
                    continue
                match = CELL.match(value)
                if match is None:
                    raise SystemExit(f"compare_results.py: {path}:{lineno}: column '{column}' of '{row[0]}' "
                                     f"is '{value}', not 'mean ± sd'")
                values[column] = (float(match[1]), float(match[2]) if match[2] is not None else None)
            # the rows that explain the table repeat cells of the systems table: count each once
            if row[0] != FROM_SPEECH:
                cells.update({(row[0], c): v for c, v in values.items() if (row[0], c) not in cells})
    if not cells:
        raise SystemExit(f"compare_results.py: {path}: the summary holds no table of results")
    return Report(path, commit[1] if commit else "?", machine[1] if machine else "machine not stated",
                  spoken[1] if spoken else "", int(runs[1]) if runs else 1, cells, "/".join(sorted(quick)))


def compare(a: Report, b: Report) -> str:
    shared = [key for key in a.cells if key in b.cells]
    if not shared:
        raise SystemExit(f"compare_results.py: {a.path} and {b.path} share no cell")
    if a.quick and b.quick and a.quick != b.quick:   # a quick run's tiny models prove nothing of the full ones
        raise SystemExit(f"compare_results.py: {a.path} was made with quick={a.quick} and {b.path} with "
                         f"quick={b.quick}: compare runs of one setting")

    def said(r: Report) -> str:
        spoken = f"; spoken by {r.synthesizers}" if r.synthesizers else ""
        return f"{r.path} ({r.commit}; {r.runs} run(s); {r.machine}{spoken})"

    out = [f"A: {said(a)}", f"B: {said(b)}"]
    if a.synthesizers and b.synthesizers and a.synthesizers != b.synthesizers:
        out.append("The corpora were spoken by other synthesizer releases: the audio differs, not only the float sums.")
    elif not (a.synthesizers and b.synthesizers):
        which = f"{(b if a.synthesizers else a).path}'s corpus" if a.synthesizers or b.synthesizers else "either corpus"
        out.append(f"The report does not say which synthesizer releases spoke {which} (made before reports said so): "
                   "compare `espeak-ng --version` and `flite --version` on the two machines.")
    out += ["", "|system|column|A|B|B - A|pooled sd|agree|", "|---|---|---|---|---|---|---|"]
    within, judged = {1: 0, 2: 0}, 0
    for key in shared:
        (ma, sa), (mb, sb) = a.cells[key], b.cells[key]
        diff = mb - ma
        if sa is None or sb is None:   # one run: its spread is unknown, not 0
            out.append(f"|{key[0]}|{key[1]}|{cell(ma, sa)}|{cell(mb, sb)}|{diff:+.1f}|-|no spread|")
            continue
        pooled = math.sqrt((sa ** 2 + sb ** 2) / 2)
        # a difference within the printed precision is agreement whatever the spread: the means are read
        # rounded to 0.1, so theirs differs by up to 0.1 from the values' (20.04 and 20.06 read 20.0, 20.1)
        k = next((k for k in (1, 2) if abs(diff) <= k * pooled + 0.1 + 1e-9), None)
        judged += 1
        for level in within:
            within[level] += k is not None and k <= level
        verdict = {1: "within 1 sd", 2: "within 2 sd", None: "**apart**"}[k]
        out.append(f"|{key[0]}|{key[1]}|{cell(ma, sa)}|{cell(mb, sb)}|{diff:+.1f}|{pooled:.1f}|{verdict}|")
    out += [""]
    if judged:
        out.append(f"{within[1]} of {judged} cells agree within one pooled standard deviation, {within[2]} within two.")
    for mine, other, name in ((a, b, "A"), (b, a, "B")):   # a system or set one report lacks is said, not dropped
        alone = [f"{row} / {column}" for row, column in mine.cells if (row, column) not in other.cells]
        if alone:
            out.append(f"Only in {name} ({len(alone)} cells, not compared): {'; '.join(alone)}.")
    if judged < len(shared):
        out.append(f"{len(shared) - judged} cells have no spread (a report of one run): they are not judged; "
                   "compare reports of several seeds (./run.sh --seeds).")
    return "\n".join(out)


def cell(mean: float, sd: float | None) -> str:
    return f"{mean:.1f}" if sd is None else f"{mean:.1f} ± {sd:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="a RESULTS.md (e.g. the committed one)")
    parser.add_argument("b", type=Path, help="another RESULTS.md (e.g. your run's)")
    args = parser.parse_args()
    print(compare(read_report(args.a), read_report(args.b)))


if __name__ == "__main__":
    main()
