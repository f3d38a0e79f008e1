"""Gather every ``score.json`` under an experiment root into ESPnet-style RESULTS.md tables.

    tasu results exp > RESULTS.md
    tasu results exp --compare asr_text_only asr_half_audio

A score.json of a ref or hyp file that has changed since (a decode resumed or redone, a reference
corrected, and not scored again) is refused: its number is no longer of that file.

Layout: ``EXP_ROOT/<exp_tag>/<any dirs>/score.json`` (recipes write
``exp/<exp_tag>/decode_<decode_tag>/<test_set>/<task>/score.json``). The first directory under
EXP_ROOT names the experiment and the rest of the path is the row's ``dataset``
(``decode_greedy/test_clean/asr``), so any depth works and nothing is parsed out of names; a
score.json directly in ``EXP_ROOT/<exp_tag>`` has dataset ``.``. Each table carries the normalisation
and the missing/empty/looping hypothesis counts of its rows, because a number without them cannot be
reproduced or trusted.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tasu.fileio import file_sha256
from tasu.score import HEADERS, METRICS, ScoreError, ScoreResult, markdown_cell, separator

TITLES = {"wer": "WER", "cer": "CER", "bleu": "BLEU", "acc": "Accuracy"}


@dataclasses.dataclass
class Row:
    """One score.json: the experiment it belongs to, its dataset label, its content and where it is."""
    exp: str
    dataset: str
    result: ScoreResult
    source: Path | None = None


def score_files_under(root: Path) -> list[Path]:
    """Every ``score.json`` under ``root``, following linked directories (an experiment on another disk
    is often a link in ``exp/``) but never into one twice: a link loop ends. Links are followed after
    every real directory has been read, so a link to a directory under ``root`` (``exp/latest -> A``)
    adds nothing and A's scores stay A's. Iterative, so any depth."""
    found, seen, todo, links = [], set(), [root], []
    while todo or links:
        directory = todo.pop() if todo else links.pop(0)
        try:
            info = directory.stat()
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as e:
            raise ScoreError(f"{directory}: cannot list it ({e.strerror or e}): its scores would be left out") from None
        for entry in entries:
            if entry.name == "score.json":
                found.append(Path(entry.path))
            elif entry.is_dir():   # follows links
                (links if entry.is_symlink() else todo).append(Path(entry.path))
    return found


def collect_results(exp_root: str | Path) -> list[Row]:
    """Every score.json under ``exp_root``, sorted by experiment, metric and dataset."""
    root = Path(exp_root)
    if not root.is_dir():
        raise ScoreError(f"{root}: not a directory")
    rows = []
    for path in score_files_under(root):
        parts = path.parent.relative_to(root).parts
        exp, dataset = (parts[0], "/".join(parts[1:]) or ".") if parts else (root.resolve().name, ".")
        rows.append(Row(exp, dataset, load_score(path), path))
    return sorted(rows, key=lambda r: (r.exp, METRICS.index(r.result.metric), r.dataset))


def load_score(path: Path) -> ScoreResult:
    """A score.json, checked: every field (a hand-edited value is refused) and the files it scored (a
    hypothesis or reference file changed since is refused). ``ScoreError`` names the file."""
    try:
        result = ScoreResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as e:
        raise ScoreError(f"{path}: not a score.json written by 'tasu score' ({e})") from None
    except OSError as e:   # a dangling link, a directory of that name, no permission
        raise ScoreError(f"{path}: cannot read it ({e.strerror or e})") from None
    except RecursionError:
        raise ScoreError(f"{path}: not a score.json written by 'tasu score' (nested too deeply to read)") from None
    _check_still_of(path, result)
    return result


def _check_still_of(path: Path, result: ScoreResult) -> None:
    """Refuse a score.json whose ref or hyp file has changed since it was scored: the file is found by
    its path relative to the score's directory as scored, so a copied experiment checks its own files
    (a file not there now is not checked: a score of a moved or removed file stays readable)."""
    for role, entry in result.files.items():
        scored = _scored_file(path, entry)
        if scored.is_file() and file_sha256(scored) != entry["sha256"]:
            what = "hypotheses" if role == "hyp" else "references"
            raise ScoreError(f"{path}: {scored} has changed since it was scored (other {what}): "
                             "score it again (tasu score, or the recipe's scoring stage)")


def environment() -> dict[str, str]:
    """Date, versions ("not installed" when absent) and the toolkit's git hash ("unknown" outside a
    checkout); torch's version is read from the installed packages, torch itself is never imported."""
    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"
    return {"date": datetime.datetime.now().astimezone().strftime("%a %b %d %H:%M:%S %Z %Y"),
            "python version": platform.python_version(), "torch version": pkg("torch"),
            "tasu version": pkg("tasu"), "Git hash": source_hash(Path(__file__).resolve().parent)}


def source_hash(package: Path) -> str:
    """``git_hash`` of the checkout ``package`` (the tasu directory) was installed from, "unknown" where it
    is not at a checkout's top (a wheel installed in a virtual environment inside another repository
    would report that repository's commit)."""
    return git_hash(package.parent) if (package.parent / ".git").exists() else "unknown"


def git_hash(directory: str | Path) -> str:
    """The short hash of the commit checked out where ``directory`` is; "unknown" outside a checkout,
    in one without a commit, or without git. Reports name it so that a number can be traced to code."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=directory, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _notes(rows: list[Row]) -> list[str]:
    """The lines under one table: normalisation (and BLEU signature), then any hypothesis trouble."""
    norms: dict[str, list[str]] = {}
    for r in rows:
        norms.setdefault(r.result.norm, []).append(r.dataset)
    if len(norms) == 1:
        out = [f"- normalisation: `{next(iter(norms))}`"]
    else:
        out = [f"- normalisation `{n}`: {', '.join(ds)}" for n, ds in norms.items()]
    out += [f"- BLEU signature: `{s}`" for s in dict.fromkeys(
        r.result.details["signature"] for r in rows if r.result.metric == "bleu")]
    return out + [f"- {r.dataset}: hypotheses {r.result.diagnostics()}" for r in rows
                  if r.result.missing_keys or r.result.extra_keys or r.result.empty or r.result.looping]


def render_results(rows: list[Row], env: dict[str, str] | None = None) -> str:
    """RESULTS.md: an environment block, then per experiment one table per metric."""
    out = ["<!-- Generated by `tasu results`: do not edit by hand. -->", "# RESULTS", "## Environments"]
    out += [f"- {k}: `{v}`" for k, v in (env or environment()).items()]
    for exp in dict.fromkeys(r.exp for r in rows):
        out += ["", f"## {exp}"]
        for metric in METRICS:
            table = [r for r in rows if r.exp == exp and r.result.metric == metric]
            if table:
                out += ["", f"### {TITLES[metric]}", "", HEADERS[metric], separator(metric)]
                out += [r.result.to_markdown_row(r.dataset) for r in table]
                out += ["", *_notes(table)]
    return "\n".join(out) + "\n"


def render_comparison(rows: list[Row], a: str, b: str) -> str:
    """Experiments ``a`` and ``b`` side by side per (dataset, metric): values, b - a, and the better
    one (lower WER/CER, higher BLEU/accuracy). Rows only one side has show ``-`` for the other."""
    exps = sorted({r.exp for r in rows})
    if a == b:
        raise ScoreError(f"--compare {a} {b}: one experiment twice: name two (have: {', '.join(exps)})")
    for name in (a, b):
        if name not in exps:
            raise ScoreError(f"no experiment {name!r} (have: {', '.join(exps) or 'none'})")
    side = {(r.exp, r.dataset, r.result.metric): r for r in rows if r.exp in (a, b)}
    keys = dict.fromkeys((d, m) for _, d, m in sorted(side, key=lambda k: (METRICS.index(k[2]), k[1])))
    ca, cb = markdown_cell(a), markdown_cell(b)
    out = [f"## {a} vs {b}", "", f"|dataset|metric|Snt|{ca}|{cb}|{cb} - {ca}|better|",
           "|---|---|---|---|---|---|---|"]
    mismatch, unlike = False, []
    for dataset, metric in keys:
        row_a, row_b = side.get((a, dataset, metric)), side.get((b, dataset, metric))
        ra, rb = row_a and row_a.result, row_b and row_b.result
        if ra and rb and ra.snt != rb.snt:
            snt, mismatch = f"{ra.snt}/{rb.snt}", True
        else:
            snt = str((ra or rb).snt)
        cells = [markdown_cell(dataset), TITLES[metric], snt, *(f"{x.value:.2f}" if x else "-" for x in (ra, rb))]
        how = ra and rb and _how_scored(row_a, row_b)
        if how:   # two normalisers (or BLEU tokenizers) give two numbers of one output: no winner
            unlike.append(f"- {dataset} {TITLES[metric]}: scored with {how}: not compared")
            cells += ["-", "-"]
        elif ra and rb:
            diff = rb.value - ra.value
            better = "=" if abs(diff) < 5e-3 else cb if (diff < 0) == (metric in ("wer", "cer")) else ca
            cells += [f"{diff:+.2f}", better]
        else:
            cells += ["-", "-"]
        out.append("|" + "|".join(cells) + "|")
    # a number without its missing/empty/looping counts cannot be trusted, here as in RESULTS.md
    trouble = [f"- {dataset} {TITLES[metric]}, {exp}: hypotheses {r.diagnostics()}"
               for dataset, metric in keys for exp in (a, b)
               for r in [getattr(side.get((exp, dataset, metric)), "result", None)]
               if r and (r.missing_keys or r.extra_keys or r.empty or r.looping)]
    if mismatch or unlike or trouble:
        out.append("")
    if mismatch:
        out.append("- Snt a/b: the two experiments were not scored on the same utterances")
    return "\n".join(out + unlike + trouble) + "\n"


def _how_scored(row_a: Row, row_b: Row) -> str:
    """How two scores of one dataset were made differently ("" when alike): their references (two test
    sets under one name), normalisers, BLEU signatures."""
    a, b = row_a.result, row_b.result
    refs = [x.files.get("ref", {}).get("sha256") for x in (a, b)]
    differ = []
    if all(refs) and refs[0] != refs[1] and not _same_references(row_a, row_b):
        differ.append("other references")
    elif a.metric in ("wer", "cer") and a.norm == b.norm and a.counts["wrd"] != b.counts["wrd"]:
        differ.append(f"other references ({a.counts['wrd']} against {b.counts['wrd']} reference units)")
    if a.norm != b.norm:
        differ.append(f"norm {a.norm} against {b.norm}")
    if a.details.get("signature") != b.details.get("signature"):
        differ.append(f"BLEU {a.details['signature']} against {b.details['signature']}")
    return "; ".join(differ)


def _same_references(a: Row, b: Row) -> bool:
    """Whether two scores' reference files, of other bytes, hold the same key -> text (in another order:
    a recipe's ref.trn is sorted by key, a decode's is in data order); False when one cannot be read."""
    from tasu.score import read_text_file

    try:
        return read_text_file(_scored_file(a.source, a.result.files["ref"])) == \
            read_text_file(_scored_file(b.source, b.result.files["ref"]))
    except (OSError, ScoreError, TypeError):
        return False


def _scored_file(score_json: Path, entry: dict[str, str]) -> Path:
    """A file a score.json names (``files``): by its path relative to the score's directory, as scoring
    wrote it (resolved: through a link to exp/ of another depth, the path led nowhere and went unchecked)."""
    return Path(os.path.normpath(score_json.parent.resolve() / entry["path"]))


def _listed_name(root: Path, name: str, exps: list[str]) -> str:
    """``name`` as the tables list it: a link in the experiment root to a listed experiment's directory
    (exp/run1 and exp/best, one run) is shown once, under one name."""
    if name in exps or not (root / name).is_dir():
        return name
    target = (root / name).resolve()
    return next((e for e in exps if (root / e).resolve() == target), name)


def run_results(exp_root: str, compare: list[str] | None = None) -> int:
    """``tasu results``: print RESULTS.md (or the comparison of two experiments); the exit status.

    Problems are raised (``ScoreError``), not printed: ``tasu.cli.main`` turns every error into its
    one line, or shows the traceback with ``--debug``."""
    rows = collect_results(exp_root)
    if not rows:
        raise ScoreError(f"{exp_root}: no score.json found (run 'tasu score' first)")
    if compare:
        exps = sorted({r.exp for r in rows})
        compare = [_listed_name(Path(exp_root), name, exps) for name in compare]
    print(render_comparison(rows, *compare) if compare else render_results(rows), end="")
    return 0
