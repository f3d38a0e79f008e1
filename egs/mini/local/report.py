#!/usr/bin/env python3
"""The mini recipe's verdict: the summary table of the four systems, the rows that explain it, the
targets, the resources each stage used, and a plot. Inserted at the top of RESULTS.md (after its
environment block, which stage 7 of ../TEMPLATE/tasu.sh wrote with every table of 'tasu results') and
printed.

    python3 local/report.py --exp exp --data data --results RESULTS.md        # plot: RESULTS.png beside it
    python3 local/report.py --runs seeds/seed1 seeds/seed2 seeds/seed3 --results RESULTS.md   # mean +- sd

Systems, all scored on the same test sets:
- the encoder's own greedy CTC output (exp/encoder/ctc_greedy, from local/train_encoder.py): the
  baseline the speech LLM must beat;
- TASU text-only, zero-shot from speech (exp/tasu_train_text): the projector never saw audio;
- the curriculum (exp/tasu_train_text_then_train_audio_sft): text-only, then audio fine-tuning;
- audio-only (exp/train_audio_sft_from_scratch): the same fine-tuning from scratch.

Rows that explain the table: the frozen LLM reading the clean encoder units of the dev and test text
(the ceiling of every system), the text-only system on posteriors simulated from the test text (its
training distribution; the mean of several draws) beside real test audio, and the encoder's greedy CTC
on every set.

With several runs (``--runs``, one per seed), every cell is the mean +- the standard deviation over the
runs, and a target is met only when the mean clears it by more than twice the pooled standard
deviation: a difference smaller than the spread between seeds is not evidence.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from collections import Counter
from pathlib import Path

TEST_SETS = ("test", "test_ood")
ENCODER = "encoder CTC greedy"
TEXT_ONLY = "TASU text-only (zero-shot)"
CURRICULUM = "curriculum: text-only, then audio"
AUDIO_ONLY = "audio-only (same steps, from scratch)"
COLOURS = {ENCODER: "tab:grey", TEXT_ONLY: "tab:blue", CURRICULUM: "tab:green", AUDIO_ONLY: "tab:red"}
SYSTEMS = {  # name -> experiment dir under exp/ (the encoder's greedy CTC scores are laid out apart)
    TEXT_ONLY: "tasu_train_text",
    CURRICULUM: "tasu_train_text_then_train_audio_sft",
    AUDIO_ONLY: "train_audio_sft_from_scratch",
}
LLM_READING = "LLM reading the clean encoder units of the text (its ceiling)"
SIMULATED = "TASU text-only, on posteriors simulated from the text"
FROM_SPEECH = "TASU text-only, from speech"
EXPLAIN_SETS = ("dev", "test", "test_ood")


SUMMARY = "## Summary (egs/mini)"   # the section this script owns in RESULTS.md
LLM_FIELDS = ("parameters", "ppl_plain", "acc_scenario_from_units")   # what the summary reads of ppl.txt


class ReportError(Exception):
    """A file of the run that the report cannot read; the message names it (main prints one line)."""


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None


def read_score(path: Path) -> float | None:
    """The value of a score.json, None where the stage that writes it did not run. Checked as ``tasu
    results`` checks it: a value edited by hand, or hypotheses changed since scoring, are refused."""
    if not path.exists():
        return None
    from tasu.score import ScoreError   # (not at the top: see plot)
    from tasu.results import load_score

    try:
        return float(load_score(path).value)
    except ScoreError as e:
        raise ReportError(str(e)) from None


def decode_dir(exp: Path) -> Path | None:
    """The experiment's decode_* directory of real audio; two (another checkpoint or config) are
    refused, since the report would have to guess which one its table is of."""
    found = sorted(p for p in exp.glob("decode_*/") if p.name != "decode_simulated")
    if len(found) > 1:
        raise ReportError(f"{exp} holds {len(found)} decodings ({', '.join(p.name for p in found)}): the report "
                          "reads one a model; move the others out of it")
    return found[0] if found else None


def llm_info(exp_root: Path) -> dict[str, str]:
    """exp/llm/ppl.txt (``name value`` lines, local/train_llm.py), {} where it is not there."""
    path = exp_root / "llm" / "ppl.txt"
    if not path.exists():
        return {}
    info = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            name, _, value = line.strip().partition(" ")
            if not value.strip():
                raise ReportError(f"{path}:{n}: expected 'name value', got {line!r}")
            info[name] = value.strip()
    return info


def number(info: dict[str, str], name: str, path: Path) -> float | None:
    """``info[name]`` as a number (None when absent); anything else names the file and field."""
    if name not in info:
        return None
    try:
        return float(info[name])
    except ValueError:
        raise ReportError(f"{path}: {name} {info[name]!r} is not a number") from None


def collect(exp_root: Path) -> dict[str, dict[tuple[str, str], float | None]]:
    """One run: system -> {(set, "ASR" | "SLU_scenario"): WER or accuracy}; the summary's systems
    first, then the explaining rows (keyed by their names)."""
    ctc = exp_root / "encoder" / "ctc_greedy"
    scores = {ENCODER: {(s, "ASR"): read_score(ctc / s / "wer" / "score.json") for s in EXPLAIN_SETS}}
    for name, tag in SYSTEMS.items():
        d = decode_dir(exp_root / tag)
        scores[name] = {(s, t): read_score(d / s / t / "score.json") if d else None
                        for s in TEST_SETS for t in ("ASR", "SLU_scenario")}
        lacking = [d / s / t / "score.json" for (s, t), v in scores[name].items() if v is None] if d else []
        if lacking:   # a system decoded but not wholly scored: its '-' read as "a stage did not run", exit 0
            raise ReportError(f"{lacking[0]}: missing, though {d} was decoded: decoding or scoring stopped "
                              "(stages 5-6); run ./run.sh again to finish them")
    info, ppl = llm_info(exp_root), exp_root / "llm" / "ppl.txt"
    scores[LLM_READING] = {(s, "ASR"): number(info, k, ppl)
                           for s, k in (("dev", "wer_reading_units"), ("test", "wer_reading_units_test"))}
    scores[SIMULATED] = {("test", "ASR"): read_score(exp_root / SYSTEMS[TEXT_ONLY] / "decode_simulated" / "test"
                                                     / "ASR" / "score.json")}
    scores[FROM_SPEECH] = {(s, "ASR"): scores[TEXT_ONLY][(s, "ASR")] for s in TEST_SETS}
    return scores


def mean_sd(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None when there is no value or a run lacks it; sd None for
    one run)."""
    if not values or any(v is None for v in values):
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def aggregate(runs: list[dict], exp_roots: list[Path]) -> dict[str, dict[tuple[str, str], tuple]]:
    """system -> cell -> (mean, sd) over the runs. A cell some runs have and others lack is refused,
    naming a run without it: it showed '-' and its target "not measured (a stage did not run)", which
    hid the failed stage of one seed (and a run made before a cell existed cannot join newer ones)."""
    agg = {}
    for name, cells in runs[0].items():
        agg[name] = {}
        for cell in cells:
            values = [r[name].get(cell) for r in runs]
            if None in values and any(v is not None for v in values):
                lacking, having = (exp_roots[values.index(None)],
                                   exp_roots[next(i for i, v in enumerate(values) if v is not None)])
                raise ReportError(f"{lacking}: no score of {name} on {cell[0]} ({cell[1]}), which {having} has: "
                                  "its stage failed or was skipped; finish it, or leave that run out of --runs")
            agg[name][cell] = mean_sd(values)   # every run's value, or none: (None, None)
    return agg


def chance(data: Path) -> tuple[float, float, int]:
    """Scenario accuracy of guessing: uniform over the scenarios, and always the test set's commonest."""
    path = data / "test" / "scenario"
    labels = [ln.split(maxsplit=1)[1:] for ln in read_text(path).splitlines() if ln.strip()]
    if not labels or not all(labels):
        raise ReportError(f"{path}: expected 'utterance scenario' lines (local/data.sh writes it)")
    corpus = data / "local" / "corpus.json"
    try:
        n_scenarios = len(json.loads(read_text(corpus))["grammar"]["scenarios"])
    except (ValueError, KeyError, TypeError) as e:
        raise ReportError(f"{corpus}: no grammar.scenarios list ({e})") from None
    if not n_scenarios:
        raise ReportError(f"{corpus}: grammar.scenarios is empty")
    top = Counter(label[0].strip() for label in labels).most_common(1)[0][1]
    return 100.0 / n_scenarios, 100.0 * top / len(labels), n_scenarios


def stopped_early(exp_root: Path) -> dict[str, bool]:
    """Whether the encoder's or the LLM's training hit its time cap (then the table is not reproducible)."""
    out = {}
    info = exp_root / "encoder" / "train_info.json"
    if info.exists():
        try:
            out["encoder"] = bool(json.loads(read_text(info)).get("stopped_early"))
        except (ValueError, AttributeError) as e:
            raise ReportError(f"{info}: not the encoder's training summary ({e})") from None
    if llm_info(exp_root):
        out["LLM"] = llm_info(exp_root).get("stopped_early") == "True"
    return out


def fmt(cell: tuple[float | None, float | None]) -> str:
    m, sd = cell
    if m is None:
        return "-"
    return f"{m:.1f}" if sd is None else f"{m:.1f} ± {sd:.1f}"


def targets(agg: dict, n_runs: int, runs: list[dict] | None = None) -> list[str]:
    """The recipe's claims, each as ``a <= factor x b`` (or ``a >= ...``) on the means, with the margin
    against twice the pooled standard deviation when there are several runs: sqrt((sd_a^2 +
    (factor x sd_b)^2) / 2) where ``b`` is measured, sd_a against a fixed bound. Where two systems are
    compared, each run's own gap follows (both systems of a run share its corpus, encoder and LLM), to
    be read beside the verdict, which uses the pooled deviation alone."""
    def cell(name, s="test", t="ASR"):
        return agg[name].get((s, t), (None, None))

    def per_run(a_name, b_name, s="test", t="ASR", factor=1.0) -> str:
        gaps = [factor * r[b_name][(s, t)] - r[a_name][(s, t)] for r in runs or []
                if r[a_name].get((s, t)) is not None and r[b_name].get((s, t)) is not None]
        return f"; each run: {', '.join(f'{g:+.1f}' for g in gaps)}" if len(gaps) > 1 else ""

    def check(what: str, a, b, factor: float = 1.0, higher: bool = False, strict: bool = False,
              runs_gap: str = "") -> str:
        """``a`` and ``b`` are (mean, sd), ``b`` may be a constant; met when the gap exceeds 2 x pooled sd.
        Without a spread (one run, or runs that agree) a tie meets a target stated with <= or >= and
        misses one stated with < (``strict``); with one, a gap of exactly 2 x pooled sd misses, as the
        report's rule says. Ties are judged to a relative 1e-9, so that 15.2 against 0.8 x 19.0
        (15.200000000000001 in floats) is one."""
        (ma, sa), (mb, sb) = a, (b if isinstance(b, tuple) else (b, 0.0))
        if ma is None or mb is None:
            return f"- {what}: not measured (a stage did not run)"
        bound = factor * mb
        gap = (ma - bound) if higher else (bound - ma)
        pooled = 0.0 if n_runs < 2 else math.sqrt((sa ** 2 + (factor * sb) ** 2) / 2) if isinstance(b, tuple) else sa
        tie = 1e-9 * max(1.0, abs(bound))
        met = gap > 2 * pooled + tie if strict or pooled > tie else gap >= -tie   # equal floats: sd ~1e-15
        verdict = "**met**" if met else "**missed**"
        if n_runs < 2:
            return f"- {what}: {ma:.1f} vs {bound:.1f}: {verdict} (margin {gap:+.2f}; one run, no spread)"
        # as many decimals as tell the margin from the threshold: "+1.16 against 1.16" read as a tie, met
        digits = next((d for d in range(2, 11) if f"{gap:.{d}f}" != f"{2 * pooled:.{d}f}"), 2)
        return (f"- {what}: {ma:.1f} vs {bound:.1f}: {verdict} (margin {gap:+.{digits}f}, "
                f"2 x pooled sd {2 * pooled:.{digits}f}{runs_gap})")

    return [
        check("encoder greedy CTC WER <= 20 (test)", cell(ENCODER), 20.0),
        check("encoder greedy CTC WER <= 35 (test_ood)", cell(ENCODER, "test_ood"), 35.0),
        check("frozen LLM reading clean dev units: WER <= 3", cell(LLM_READING, "dev"), 3.0),
        check("TASU text-only zero-shot WER <= 0.8 x the encoder's greedy CTC WER (test)", cell(TEXT_ONLY),
              cell(ENCODER), 0.8, runs_gap=per_run(TEXT_ONLY, ENCODER, factor=0.8)),
        check("TASU text-only zero-shot WER <= 1.5 x its WER on simulated posteriors of the text (test)",
              cell(TEXT_ONLY), cell(SIMULATED), 1.5, runs_gap=per_run(TEXT_ONLY, SIMULATED, factor=1.5)),
        check("curriculum WER < audio-only WER (test)", cell(CURRICULUM), cell(AUDIO_ONLY), strict=True,
              runs_gap=per_run(CURRICULUM, AUDIO_ONLY)),
        check("curriculum WER < audio-only WER (test_ood)", cell(CURRICULUM, "test_ood"),
              cell(AUDIO_ONLY, "test_ood"), strict=True, runs_gap=per_run(CURRICULUM, AUDIO_ONLY, "test_ood")),
        check("text-only-trained scenario accuracy from speech >= 90 (test)", cell(TEXT_ONLY, "test", "SLU_scenario"),
              90.0, higher=True),
    ]


def usage_rows(path: Path) -> list[list[str]]:
    """exp/usage.tsv (local/usage.py): step, wall s, CPU s, peak MB; [] where it is not there."""
    if not path.exists():
        return []
    rows = [(n, line.split("\t")) for n, line in enumerate(read_text(path).splitlines(), 1) if line.strip()]
    for n, row in rows:
        if len(row) < 4 or not all(is_number(x) for x in row[1:4]):
            raise ReportError(f"{path}:{n}: expected 'step<TAB>wall s<TAB>CPU s<TAB>peak MB', got {chr(9).join(row)!r}")
    return [row for _, row in rows]


def is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def usage_table(paths: list[Path]) -> list[str]:
    """Each step's wall time, CPU time and peak memory; with several runs, the mean wall and CPU times
    and the highest peak, and the runs' total wall time."""
    runs = [usage_rows(p) for p in paths]
    if not any(runs):
        return ["(no exp/usage.tsv: run.sh notes each stage's resources there)"]
    steps = [r[0] for r in runs[0]]
    per = {s: [[float(x) for x in row[1:4]] for rows in runs for row in rows if row[0] == s] for s in steps}
    several = len(paths) > 1
    head = "|step|wall time (s)|CPU time (s)|peak memory (MB)|"
    out = [head.replace("wall time (s)|CPU time (s)", "wall time (s), mean|CPU time (s), mean") if several else head,
           "|---|---|---|---|"]
    for s in steps:
        v = per[s]
        out.append(f"|{s}|{sum(x[0] for x in v) / len(v):.0f}|{sum(x[1] for x in v) / len(v):.0f}|"
                   f"{max(x[2] for x in v):.0f}|")
    walls = [sum(float(row[1]) for row in rows) for rows in runs]
    wall = sum(walls) / len(walls)
    cpu = sum(sum(float(row[2]) for row in rows) for rows in runs) / len(runs)
    peak = max(float(row[3]) for rows in runs for row in rows)
    out.append(f"|**all**{', mean of a run' if several else ''}|**{wall:.0f}** ({wall / 60:.1f} min)|{cpu:.0f}|"
               f"**{peak:.0f}**|")
    if several:
        out += ["", f"All {len(paths)} runs: {sum(walls) / 60:.1f} min of wall time "
                f"({', '.join(f'{w / 60:.1f}' for w in walls)})."]
    return out


# Variables that choose which CPU kernels torch, oneDNN and MKL run: a run made with one of them set
# sums floats as another CPU would, so the report names them beside the machine.
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR",
                    "MKL_ENABLE_INSTRUCTIONS")


def machine() -> str:
    model = ""
    if Path("/proc/cpuinfo").exists():
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "")
    mem = ""
    if Path("/proc/meminfo").exists():
        kb = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines()
                      if ln.startswith("MemTotal")))
        mem = f", {kb / 2**20:.0f} GiB memory"
    limits = ", ".join(f"{name}={os.environ[name]}" for name in KERNEL_VARIABLES if os.environ.get(name))
    return f"{os.cpu_count()} CPU cores ({model or platform.machine()}){mem}" + (f"; kernels: {limits}" if limits else "")


def corpus_synthesizers(data_dirs: list[Path]) -> str:
    """'espeak-ng 1.51, flite 2.2-current and sox 14.4.2' from the runs' corpus.json, or '' where a run's
    corpus does not say (made before it recorded them); runs on several releases list each."""
    seen = []
    for data_dir in data_dirs:
        try:
            versions = json.loads((data_dir / "local" / "corpus.json").read_text(encoding="utf-8"))["synthesizers"]
        except (OSError, ValueError, KeyError, TypeError):
            return ""
        named = [f"{tool} {version}" for tool, version in versions.items()]
        text = ", ".join(named[:-1]) + f" and {named[-1]}" if len(named) > 1 else "".join(named)
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def table(agg: dict, names: list[str], columns: list[tuple[str, str, str]]) -> list[str]:
    out = ["|system|" + "|".join(c[0] for c in columns) + "|", "|---" * (len(columns) + 1) + "|"]
    for name in names:
        out.append(f"|{name}|" + "|".join(fmt(agg[name].get((s, t), (None, None))) for _, s, t in columns) + "|")
    return out


def summary(exp_roots: list[Path], data_dirs: list[Path], setting: str, plot_name: str) -> str:
    runs = [collect(e) for e in exp_roots]
    agg = aggregate(runs, exp_roots)
    uniform, majority, n_scenarios = chance(data_dirs[0])
    n = len(exp_roots)
    quick = "quick=true" in setting
    out = [SUMMARY, ""]
    if n > 1:
        out += [f"Made by `./run.sh --seeds` ({setting}): {n} whole runs, one per seed (corpus, encoder, LLM and "
                "TASU training all depend on it); each cell is the mean ± the standard deviation over the runs. "
                "The tables after this summary are the first run's; the commands of each stage are at the end.", ""]
    else:
        out += [f"Made by `./run.sh` ({setting}); the commands of each stage are at the end.", ""]
    if quick:
        out += ["**Quick mode** (`--quick true`): a tiny corpus and models trained for a few steps. It checks",
                "that every stage runs; its numbers prove nothing.", ""]
    out += table(agg, [ENCODER, TEXT_ONLY, CURRICULUM, AUDIO_ONLY],
                 [("WER test", "test", "ASR"), ("WER test_ood", "test_ood", "ASR"),
                  ("scenario acc. test", "test", "SLU_scenario"), ("scenario acc. test_ood", "test_ood", "SLU_scenario")])
    out += ["", f"WER in %, scenario accuracy in % ({n_scenarios} scenarios; chance: {uniform:.1f} uniform, "
            f"{majority:.1f} always the commonest test label). test_ood is test's sentences spoken by voices",
            "never heard in training (a flite voice, espeak-ng variants and rates). The text-only system's",
            "projector never saw audio; the LLM and the encoder are frozen in every system.", "",
            "What explains it (WER, %):", ""]
    out += table(agg, [LLM_READING, SIMULATED, FROM_SPEECH, ENCODER],
                 [(f"WER {s}", s, "ASR") for s in EXPLAIN_SETS])
    draws = len(list((exp_roots[0] / SYSTEMS[TEXT_ONLY] / "decode_simulated" / "test" / "ASR").glob("draw*/")))
    out += ["", "The LLM reads units spelled from the text (no speech, no projector); the simulated posteriors",
            "are drawn as in text-only training (the simulation section of conf/train_text.yaml) from the test text",
            f"({draws} draws, scored together: their mean WER; local/decode_simulated.sh)."]
    tenths = loss_by_tenth(exp_roots[0] / SYSTEMS[TEXT_ONLY] / "loss.tsv")
    if tenths:
        out += ["", "Text-only training loss, mean of each tenth of the run (first run; its batches mix both tasks "
                "and all training files at their shares throughout):", "",
                "|" + "|".join(f"{10 * i}-{10 * (i + 1)} %" for i in range(len(tenths))) + "|",
                "|" + "---|" * len(tenths), "|" + "|".join(f"{v:.3f}" for v in tenths) + "|"]
    out += ["", f"![training loss and scores]({plot_name})", "", "Targets"
            + (f" (on the means; met only when the margin exceeds twice the pooled standard deviation over the "
               f"{n} runs):" if n > 1 else " (one run: no spread, so no margin is known to exceed the noise):"), ""]
    out += targets(agg, n, runs)
    for exp_root in exp_roots:
        for what, early in stopped_early(exp_root).items():
            if early:
                which = f"the {what}" + (f" of {exp_root.parent}" if n > 1 else "")
                out += ["", f"**Warning**: {which} stopped at its --max-minutes cap on this machine, "
                        "so these numbers depend on its speed and another run may differ."]
    spoken = corpus_synthesizers(data_dirs)
    if spoken:
        out += ["", f"The corpus was spoken by {spoken} (data/local/corpus.json): another release speaks "
                "other audio, so a report made with another one differs for more than the float sums."]
    out += ["", f"Resources, measured by run.sh on this machine ({machine()}):", ""]
    out += usage_table([e / "usage.tsv" for e in exp_roots])
    out += ["", "Peak memory: of the step's whole process tree (proportional set size: shared pages counted once), "
            "sampled every 0.2 s."]
    infos = [llm_info(e) for e in exp_roots]
    if all(infos):
        values = [{k: number(i, k, e / "llm" / "ppl.txt") for k in LLM_FIELDS} for i, e in zip(infos, exp_roots)]
        lacking = next(((e, k) for v, e in zip(values, exp_roots) for k in LLM_FIELDS if v[k] is None), None)
        if lacking:
            raise ReportError(f"{lacking[0] / 'llm' / 'ppl.txt'}: no {lacking[1]} (local/train_llm.py writes it)")
        ppl = mean_sd([v["ppl_plain"] for v in values])
        acc = mean_sd([v["acc_scenario_from_units"] for v in values])
        out += ["", f"The frozen LLM ({values[0]['parameters'] / 1e6:.1f} M parameters): dev perplexity "
                f"{fmt(ppl)} on plain sentences; reading the clean encoder units of dev sentences, WER "
                f"{fmt(agg[LLM_READING][('dev', 'ASR')])} %, scenario accuracy {fmt(acc)} % (exp/llm/ppl.txt)."]
    return "\n".join(out) + "\n"


def read_losses(curve: Path) -> list[tuple[int, float]]:
    """(step, loss) rows of a training's loss.tsv."""
    rows = []
    for n, line in enumerate(read_text(curve).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            rows.append((int(fields[0]), float(fields[1])))
        except (ValueError, IndexError):
            raise ReportError(f"{curve}:{n}: expected 'step<TAB>loss', got {line!r}") from None
    return rows


def loss_by_tenth(curve: Path) -> list[float]:
    """Mean training loss over each tenth of the logged steps: a curve that climbs at the end (one task or
    one file left for last) shows here as a number, not only in the plot."""
    if not curve.exists():
        return []
    losses = [loss for _, loss in read_losses(curve)]
    if len(losses) < 10:
        return []
    bounds = [round(i * len(losses) / 10) for i in range(11)]
    return [sum(losses[a:b]) / (b - a) for a, b in zip(bounds, bounds[1:])]


def plot(exp_roots: list[Path], chance_pct: float, out: Path) -> None:
    """Training loss curves of the first run's three projectors; bars of WER and scenario accuracy
    (means, with the standard deviation over the runs as error bars)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # tasu is imported here and in insert_summary, not at the top: compare_results.py imports this
    # module for its row names and must run with any python3, in a shell where tasu is not installed.
    from tasu.fileio import atomic_replace

    agg = aggregate([collect(e) for e in exp_roots], exp_roots)
    fig, (ax_loss, ax_wer, ax_acc) = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, tag in SYSTEMS.items():
        curve = exp_roots[0] / tag / "loss.tsv"
        rows = read_losses(curve) if curve.exists() else []
        if not rows:
            continue
        steps, losses = zip(*rows)
        k = max(1, len(losses) // 15)  # a moving average over ~7 % of the run
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]
        ax_loss.plot(steps, smooth, label=name, color=COLOURS[name])
    ax_loss.set(title="training loss (moving average; text-only: on simulated posteriors)", xlabel="step",
                ylabel="cross-entropy", yscale="log")
    ax_loss.legend(fontsize=8)
    ax_acc.axhline(chance_pct, color="black", linestyle="--", linewidth=1, label="chance (commonest label)")
    systems = [ENCODER, *SYSTEMS]
    width = 0.8 / len(systems)
    for ax, task, title in ((ax_wer, "ASR", "WER (%) - lower is better"),
                            (ax_acc, "SLU_scenario", "scenario accuracy (%) - higher is better")):
        names = [n for n in systems if any(agg[n].get((s, task), (None,))[0] is not None for s in TEST_SETS)]
        for i, name in enumerate(names):
            cells = [agg[name].get((s, task), (None, None)) for s in TEST_SETS]
            bars = ax.bar([j + (i - (len(names) - 1) / 2) * width for j in range(len(TEST_SETS))],
                          [m or 0.0 for m, _ in cells], width, yerr=[sd or 0.0 for _, sd in cells],
                          label=name, color=COLOURS[name])
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(TEST_SETS)), TEST_SETS)
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_replace(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def insert_summary(results: Path, text: str) -> None:
    """The summary goes after RESULTS.md's environment block; a re-run replaces its own section."""
    from tasu.fileio import write_atomic   # here, not at the top: see plot()

    lines = read_text(results).splitlines() if results.exists() else ["# RESULTS"]
    start = next((i for i, ln in enumerate(lines) if ln == SUMMARY), None)
    if start is not None:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        del lines[start:end]
    env = next((i for i, ln in enumerate(lines) if ln.startswith("## Environments")), 0)
    at = next((i for i in range(env + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    lines[at:at] = [*text.rstrip("\n").splitlines(), ""]
    write_atomic(results, "\n".join(lines) + "\n")


def same_runs(runs: list[Path], done: list[Path]) -> None:
    """Refuse runs that are not repeats of one setting over seeds: a mean over quick and full runs
    (45.3 +- 43.0) is of nothing, and a seed counted twice halves no noise but shrinks the sd."""
    made = {run: dict(w.partition("=")[::2] for w in read_text(p).split()) for run, p in zip(runs, done)
            if p.exists()}
    quick = {run: m.get("quick") for run, m in made.items()}
    if len(set(quick.values())) > 1:
        raise ReportError("--runs mixes settings: " + ", ".join(f"{r} quick={q}" for r, q in quick.items())
                          + ": a mean is over runs of one setting, one per seed")
    seen: dict[str, Path] = {}
    for run, m in made.items():
        seed = m.get("seed")
        if seed in seen:
            raise ReportError(f"--runs: {seen[seed]} and {run} are both seed {seed}: "
                              "each run is one seed (a seed twice would count one run as two)")
        if seed is not None:
            seen[seed] = run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exp", type=Path, default=Path("exp"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--runs", type=Path, nargs="*", default=[],
                        help="run directories (each with data/ and exp/), one per seed: report mean +- sd")
    parser.add_argument("--results", type=Path, default=Path("RESULTS.md"),
                        help="RESULTS.md written by tasu.sh's stage 7: the summary goes after its environment block")
    parser.add_argument("--plot", type=Path, default=None, help="the plot (default: beside --results, RESULTS.png, which RESULTS.md shows)")
    args = parser.parse_args()
    exp_roots = [r / "exp" for r in args.runs] or [args.exp]
    data_dirs = [r / "data" for r in args.runs] or [args.data]
    try:
        # a run that is not there would be a column of '-' and "not measured" targets, with exit 0
        missing = next((d for d in [*exp_roots, *data_dirs] if not d.is_dir()), None)
        if missing:
            raise ReportError(f"{missing}: no such directory" + (" (--runs names run directories, each with "
                                                                  "data/ and exp/)" if args.runs else ""))
        done = [d / ".done" for d in data_dirs]
        settings = [read_text(p).strip() for p in done if p.exists()]
        if args.runs:
            same_runs(args.runs, done)
        setting = "; ".join(settings) or "setting unknown"
        plot_path = args.plot or args.results.with_suffix(".png")
        text = summary(exp_roots, data_dirs, setting, os.path.relpath(plot_path, args.results.parent))
        plot(exp_roots, chance(data_dirs[0])[1], plot_path)   # first: a curve it cannot read leaves RESULTS.md
        insert_summary(args.results, text)
    except ReportError as e:
        sys.exit(f"local/report.py: {e}")
    print(text + f"\nAll tables: {args.results}; plot: {plot_path}")


if __name__ == "__main__":
    main()
