#!/usr/bin/env python3
"""The mini recipe's verdict: one summary table of the four systems, the three targets, the resources
each stage used, and a plot. Inserted at the top of RESULTS.md (after its environment block, which
stage 7 of ../TEMPLATE/tasu.sh wrote with every table of 'tasu results') and printed.

    python3 local/report.py --exp exp --data data --results RESULTS.md --plot exp/results.png

Systems, all scored on the same test sets:
- the encoder's own greedy CTC output (exp/encoder/ctc_greedy, from local/train_encoder.py): the
  baseline the speech LLM must not fall behind;
- TASU text-only, zero-shot from speech (exp/tasu_train_text): the projector never saw audio;
- the curriculum (exp/tasu_train_text_then_train_audio_sft): text-only, then audio fine-tuning;
- audio-only (exp/train_audio_sft_from_scratch): the same fine-tuning from scratch.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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


def read_score(path: Path) -> float | None:
    return json.loads(path.read_text(encoding="utf-8"))["value"] if path.exists() else None


def decode_dir(exp: Path) -> Path | None:
    """The experiment's decode_* directory (the newest when there are several)."""
    found = sorted(exp.glob("decode_*/"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def collect(exp_root: Path) -> dict[str, dict[tuple[str, str], float | None]]:
    """system -> {(test set, "ASR" | "SLU_scenario"): WER or accuracy}."""
    scores = {ENCODER: {(s, "ASR"): read_score(exp_root / "encoder" / "ctc_greedy" / s / "wer" / "score.json")
                        for s in TEST_SETS}}
    for name, tag in SYSTEMS.items():
        d = decode_dir(exp_root / tag)
        scores[name] = {(s, t): read_score(d / s / t / "score.json") if d else None
                        for s in TEST_SETS for t in ("ASR", "SLU_scenario")}
    return scores


def chance(data: Path) -> tuple[float, float, int]:
    """Scenario accuracy of guessing: uniform over the scenarios, and always the test set's commonest."""
    labels = [ln.split(maxsplit=1)[1].strip() for ln in (data / "test" / "scenario").read_text(encoding="utf-8").splitlines()
              if ln.strip()]
    grammar = json.loads((data / "local" / "corpus.json").read_text(encoding="utf-8"))["grammar"]
    n_scenarios = len(grammar["scenarios"])
    return 100.0 / n_scenarios, 100.0 * Counter(labels).most_common(1)[0][1] / len(labels), n_scenarios


def stopped_early(exp_root: Path) -> dict[str, bool]:
    """Whether the encoder's or the LLM's training hit its time cap (then the table is not reproducible)."""
    out = {}
    info = exp_root / "encoder" / "train_info.json"
    if info.exists():
        out["encoder"] = bool(json.loads(info.read_text(encoding="utf-8")).get("stopped_early"))
    ppl = exp_root / "llm" / "ppl.txt"
    if ppl.exists():
        out["LLM"] = "stopped_early True" in ppl.read_text(encoding="utf-8")
    return out


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def targets(scores: dict, chance_pct: float) -> list[str]:
    """The recipe's three claims, each checked on the in-domain test set, with the margin."""
    def check(what: str, a: float | None, b: float | None, ok: bool, margin: str) -> str:
        if a is None or b is None:
            return f"- {what}: not measured (a stage did not run)"
        return f"- {what}: {a:.1f} vs {b:.1f}: {'**met**' if ok else '**missed**'} ({margin})"
    wer = {name: s.get(("test", "ASR")) for name, s in scores.items()}
    acc = scores[TEXT_ONLY].get(("test", "SLU_scenario"))
    lines = []
    a, b = wer[TEXT_ONLY], wer[ENCODER]
    lines.append(check("TASU text-only zero-shot WER <= the encoder's greedy CTC WER (test)", a, b,
                       a is not None and b is not None and a <= b, f"{(b or 0) - (a or 0):+.1f} points"))
    a, b = wer[CURRICULUM], wer[AUDIO_ONLY]
    lines.append(check("curriculum WER <= audio-only WER (test)", a, b,
                       a is not None and b is not None and a <= b, f"{(b or 0) - (a or 0):+.1f} points"))
    lines.append(check("text-only-trained SLU scenario accuracy from speech >= 3 x chance (test)", acc,
                       3 * chance_pct, acc is not None and acc >= 3 * chance_pct,
                       f"{(acc or 0) / chance_pct:.1f} x chance"))
    return lines


def usage_table(path: Path) -> list[str]:
    if not path.exists():
        return ["(no exp/usage.tsv: run.sh notes each stage's resources there)"]
    rows = [ln.split("\t") for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    out = ["|step|wall time (s)|CPU time (s)|peak memory (MB)|", "|---|---|---|---|"]
    out += [f"|{name}|{float(wall):.0f}|{float(cpu):.0f}|{float(mem):.0f}|" for name, wall, cpu, mem in rows]
    total = sum(float(r[1]) for r in rows)
    out.append(f"|**all**|**{total:.0f}** ({total / 60:.1f} min)|{sum(float(r[2]) for r in rows):.0f}|"
               f"**{max(float(r[3]) for r in rows):.0f}**|")
    return out


def machine() -> str:
    model = ""
    if Path("/proc/cpuinfo").exists():
        model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    mem = ""
    if Path("/proc/meminfo").exists():
        kb = int(next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")))
        mem = f", {kb / 2**20:.0f} GiB memory"
    return f"{os.cpu_count()} CPU cores ({model or platform.machine()}){mem}"


def summary(exp_root: Path, scores: dict, data: Path, setting: str) -> str:
    uniform, majority, n_scenarios = chance(data)
    chance_pct = max(uniform, majority)
    quick = "quick=true" in setting
    out = ["## Summary (egs/mini)", "", f"Made by `./run.sh` ({setting}); the commands of each stage are at the end.", ""]
    if quick:
        out += ["**Quick mode** (`--quick true`): a tiny corpus and models trained for a few steps. It checks",
                "that every stage runs; its numbers prove nothing.", ""]
    out += ["|system|WER test|WER test_ood|scenario acc. test|scenario acc. test_ood|",
            "|---|---|---|---|---|"]
    for name, s in scores.items():
        out.append(f"|{name}|{fmt(s.get(('test', 'ASR')))}|{fmt(s.get(('test_ood', 'ASR')))}|"
                   f"{fmt(s.get(('test', 'SLU_scenario')))}|{fmt(s.get(('test_ood', 'SLU_scenario')))}|")
    out += ["", f"WER in %, scenario accuracy in % ({n_scenarios} scenarios; chance: {uniform:.1f} uniform, "
            f"{majority:.1f} always the commonest test label). test_ood is test's sentences spoken with voices",
            "and rates never heard in training. The text-only system's projector never saw audio; the LLM",
            "and the encoder are frozen in every system.", "", "Targets:", ""]
    out += targets(scores, chance_pct)
    for what, early in stopped_early(exp_root).items():
        if early:
            out += ["", f"**Warning**: the {what} stopped at its --max-minutes cap on this machine, so these numbers "
                    "depend on its speed and another run may differ."]
    out += ["", f"Resources, measured by run.sh on this machine ({machine()}):", ""]
    out += usage_table(exp_root / "usage.tsv")
    out += ["", "Peak memory: of the step's whole process tree (proportional set size: shared pages counted once), sampled every 0.2 s."]
    llm_info = exp_root / "llm" / "ppl.txt"
    if llm_info.exists():
        info = dict(ln.split(maxsplit=1) for ln in llm_info.read_text(encoding="utf-8").splitlines() if ln.strip())
        out += ["", f"The frozen LLM ({int(info['parameters']) / 1e6:.1f} M parameters): dev perplexity "
                f"{float(info['ppl_plain']):.2f} on plain sentences; reading the clean encoder units of dev "
                f"sentences, WER {float(info['wer_reading_units']):.1f} %, scenario accuracy "
                f"{float(info['acc_scenario_from_units']):.1f} % (exp/llm/ppl.txt)."]
    return "\n".join(out) + "\n"


def plot(exp_root: Path, scores: dict, chance_pct: float, out: Path) -> None:
    """Training loss curves of the three trained projectors, and bars of WER and scenario accuracy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_wer, ax_acc) = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, tag in SYSTEMS.items():
        curve = exp_root / tag / "loss.tsv"
        if not curve.exists():
            continue
        steps, losses = zip(*((int(a), float(b)) for a, b in (ln.split("\t") for ln in
                                                             curve.read_text().splitlines() if ln.strip())))
        k = max(1, len(losses) // 15)  # a moving average over ~7 % of the run
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]
        ax_loss.plot(steps, smooth, label=name, color=COLOURS[name])
    ax_loss.set(title="training loss (moving average; text-only: on simulated posteriors)", xlabel="step",
                ylabel="cross-entropy", yscale="log")
    ax_loss.legend(fontsize=8)
    ax_acc.axhline(chance_pct, color="black", linestyle="--", linewidth=1, label="chance (commonest label)")
    width = 0.8 / len(scores)
    for ax, task, title in ((ax_wer, "ASR", "WER (%) - lower is better"),
                            (ax_acc, "SLU_scenario", "scenario accuracy (%) - higher is better")):
        names = [n for n in scores if any(scores[n].get((s, task)) is not None for s in TEST_SETS)]
        for i, name in enumerate(names):
            values = [scores[name].get((s, task)) or 0.0 for s in TEST_SETS]
            bars = ax.bar([j + (i - (len(names) - 1) / 2) * width for j in range(len(TEST_SETS))], values,
                          width, label=name, color=COLOURS[name])
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(TEST_SETS)), TEST_SETS)
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exp", type=Path, default=Path("exp"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--results", type=Path, default=Path("RESULTS.md"),
                        help="RESULTS.md written by tasu.sh's stage 7: the summary goes after its environment block")
    parser.add_argument("--plot", type=Path, default=Path("exp/results.png"))
    args = parser.parse_args()
    setting = (args.data / ".done").read_text().strip() if (args.data / ".done").exists() else "setting unknown"
    scores = collect(args.exp)
    text = summary(args.exp, scores, args.data, setting)
    lines = args.results.read_text(encoding="utf-8").splitlines() if args.results.exists() else ["# RESULTS"]
    start = next((i for i, ln in enumerate(lines) if ln.startswith("## Summary")), None)
    if start is not None:  # a re-run replaces its own section
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        del lines[start:end]
    env = next((i for i, ln in enumerate(lines) if ln.startswith("## Environments")), 0)
    at = next((i for i in range(env + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    lines[at:at] = [*text.rstrip("\n").splitlines(), ""]
    tmp = args.results.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(args.results)
    plot(args.exp, scores, chance(args.data)[1], args.plot)
    print(text + f"\nAll tables: {args.results}; plot: {args.plot}")


if __name__ == "__main__":
    main()
