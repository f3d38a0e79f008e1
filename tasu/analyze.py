"""How close simulated posteriors are to real ones: ``tasu analyze``.

    tasu analyze --config conf/train_text.yaml --encoder exp/encoder --data dump/dev/ASR.jsonl --out exp/analyze/dev

TASU trains the projector on posteriors simulated from text and then feeds it the encoder's real,
compressed posteriors; how far apart the two are is the text-to-audio gap the method lives with.
For every record with audio and a transcript, this runs the encoder on the audio and compresses
its posteriors as decoding does (the config's ``compress`` section), simulates posteriors from the
transcript's encoder tokens as training does (its ``simulation`` section), and compares them:

- **rows per token**: rows over transcript tokens, real and simulated (compression is meant to
  leave about one row per token);
- **blank rows**: share of rows whose largest entry is the blank (they emit nothing);
- **errors against the transcript**: the tokens the rows emit (each non-blank row's top-1 id)
  aligned with the transcript's tokens, as substitution, deletion and insertion rates, real and
  simulated (the simulated ones are what the simulation was asked for);
- **row agreement**: the real and the simulated row sequences (top-1 ids, blanks included)
  aligned by edit distance; of the rows paired, the share with the same top-1 id, and the
  Jensen-Shannon divergence (bits, 0 = identical, 1 = disjoint) between paired rows, computed
  exactly over the whole vocabulary from the sparse rows;
- **row divergence** (the one-number fidelity): the same alignment's mean over all its positions,
  a paired row counting its Jensen-Shannon divergence and a row left unpaired (a row one side has
  and the other lacks) counting 1 bit, as if it were disjoint. Paired rows alone would call a
  simulation that writes half the rows it should perfect; this counts the rows' number and their
  content at once (0 = the same rows, 1 = nothing in common);
- **histograms** of each row's entropy (bits) and top-1 mass, real and simulated.

With ``match_wer`` the simulator is asked, utterance by utterance, for the token error rate of
the real rows of the same audio (clipped to the range the simulator serves): the rows can then be
compared for *how* they err, not for how much, and a simulator conditioned on a WER (the learned
one, the WER-controlled rules) is judged at the rates the encoder really makes. Without it the
simulation runs as training starts it (its schedule at step 0).

Writes ``summary.json`` (all numbers, histograms included), ``report.txt`` (the same, short) and
``entropy.png``, ``top1_mass.png`` into the output directory.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from tasu.fileio import write_atomic
from tasu.posteriors import Posteriors
from tasu.score import align

ENTROPY_BINS = 40
MASS_BINS = 20


@dataclass
class Rows:
    """One utterance's rows, summarised: what the fidelity measures need of each row."""

    top1: list[int]             # the id of each row's largest entry
    top1_mass: list[float]
    entropy: list[float]        # bits
    entries: list[dict[int, float]]   # explicit entries: id -> probability
    floor: list[float]          # the probability of every other id
    vocab_size: int
    blank_id: int

    def emitted(self) -> list[int]:
        """The tokens the rows emit: each non-blank row's top-1 id (rows are label-synchronous)."""
        return [i for i in self.top1 if i != self.blank_id]


def rows_of(post: Posteriors) -> list[Rows]:
    """Each utterance of a batch as ``Rows`` (exact entropies over all V entries, no dense rows)."""
    probs = (post.floor[..., None] + post.weights).double()          # [B, T, K]
    mass, where = probs.max(-1)
    top1 = post.ids.gather(2, where[..., None]).squeeze(2)
    floor = post.floor.double()
    rest = post.vocab_size - post.topk
    entropy = -_xlog2x(probs).sum(-1) - rest * _xlog2x(floor)
    out = []
    for b, n in enumerate(post.lengths.tolist()):
        ids, p = post.ids[b, :n].tolist(), probs[b, :n].tolist()
        out.append(Rows(top1=top1[b, :n].tolist(), top1_mass=mass[b, :n].tolist(),
                        entropy=entropy[b, :n].tolist(), entries=[dict(zip(i, q)) for i, q in zip(ids, p)],
                        floor=floor[b, :n].tolist(), vocab_size=post.vocab_size, blank_id=post.blank_id))
    return out


def _xlog2x(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x * torch.log2(x.clamp_min(1e-300)), torch.zeros_like(x))


def js_divergence(p: dict[int, float], p_floor: float, q: dict[int, float], q_floor: float, vocab_size: int) -> float:
    """Jensen-Shannon divergence in bits between two sparse rows (explicit entries + a floor)."""
    def term(a: float, b: float) -> float:
        m = (a + b) / 2
        return (a * math.log2(a / m) if a > 0 else 0.0) + (b * math.log2(b / m) if b > 0 else 0.0)

    ids = p.keys() | q.keys()
    total = sum(term(p.get(i, p_floor), q.get(i, q_floor)) for i in ids)
    total += (vocab_size - len(ids)) * term(p_floor, q_floor)
    return max(total / 2, 0.0)


def paired_rows(a: Sequence[int], b: Sequence[int]) -> list[tuple[int, int, bool]]:
    """``(i, j, same)`` for the rows that a minimum edit-distance alignment of ``a`` and ``b`` pairs
    (a match or a substitution): position in ``a``, position in ``b``, whether the ids agree."""
    pairs, i, j = [], 0, 0
    for op, _, _ in align(list(a), list(b)):
        if op in ("C", "S"):
            pairs.append((i, j, op == "C"))
        i += op != "I"
        j += op != "D"
    return pairs


@dataclass
class Fidelity:
    """Counts over a set of utterances; ``add`` one utterance at a time, ``summary`` at the end."""

    tokens: int = 0
    utterances: int = 0
    rows: dict = field(default_factory=lambda: {"real": 0, "simulated": 0})
    blank_rows: dict = field(default_factory=lambda: {"real": 0, "simulated": 0})
    errors: dict = field(default_factory=lambda: {k: {"S": 0, "D": 0, "I": 0} for k in ("real", "simulated")})
    paired: int = 0
    unpaired: int = 0
    agreed: int = 0
    js_sum: float = 0.0
    entropy: dict = field(default_factory=lambda: {"real": [], "simulated": []})
    top1_mass: dict = field(default_factory=lambda: {"real": [], "simulated": []})

    def add(self, reference: Sequence[int], real: Rows, simulated: Rows) -> None:
        self.utterances += 1
        self.tokens += len(reference)
        for name, rows in (("real", real), ("simulated", simulated)):
            self.rows[name] += len(rows.top1)
            self.blank_rows[name] += sum(1 for i in rows.top1 if i == rows.blank_id)
            for op, _, _ in align(list(reference), rows.emitted()):
                if op != "C":
                    self.errors[name][op] += 1
            self.entropy[name] += rows.entropy
            self.top1_mass[name] += rows.top1_mass
        pairs = paired_rows(real.top1, simulated.top1)
        self.unpaired += len(real.top1) + len(simulated.top1) - 2 * len(pairs)
        for i, j, same in pairs:
            self.paired += 1
            self.agreed += same
            self.js_sum += js_divergence(real.entries[i], real.floor[i], simulated.entries[j], simulated.floor[j],
                                         real.vocab_size)

    def summary(self) -> dict:
        def rate(n: int, d: int) -> float | None:
            return n / d if d else None

        out = {"utterances": self.utterances, "tokens": self.tokens}
        for name in ("real", "simulated"):
            e = self.errors[name]
            out[name] = {
                "rows": self.rows[name],
                "rows_per_token": rate(self.rows[name], self.tokens),
                "blank_row_rate": rate(self.blank_rows[name], self.rows[name]),
                "substitution_rate": rate(e["S"], self.tokens), "deletion_rate": rate(e["D"], self.tokens),
                "insertion_rate": rate(e["I"], self.tokens),
                "token_error_rate": rate(e["S"] + e["D"] + e["I"], self.tokens),
                "mean_entropy_bits": float(np.mean(self.entropy[name])) if self.entropy[name] else None,
                "mean_top1_mass": float(np.mean(self.top1_mass[name])) if self.top1_mass[name] else None,
                "entropy_histogram": _histogram(self.entropy[name], self._entropy_edges()),
                "top1_mass_histogram": _histogram(self.top1_mass[name], np.linspace(0, 1, MASS_BINS + 1)),
            }
        out["paired_rows"] = self.paired
        out["top1_agreement"] = rate(self.agreed, self.paired)
        out["mean_js_divergence_bits"] = self.js_sum / self.paired if self.paired else None
        out["unpaired_rows"] = self.unpaired
        out["row_divergence_bits"] = rate(self.js_sum + self.unpaired, self.paired + self.unpaired)
        return out

    def _entropy_edges(self) -> np.ndarray:
        top = max([1.0] + self.entropy["real"] + self.entropy["simulated"])
        return np.linspace(0, math.ceil(top), ENTROPY_BINS + 1)


def _histogram(values: list[float], edges: np.ndarray) -> dict:
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=edges)
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}


def report(summary: dict) -> str:
    """The summary as a short text table."""
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    def num(x, digits=2):
        return "-" if x is None else f"{x:.{digits}f}"

    lines = [f"{summary['utterances']} utterances, {summary['tokens']} transcript tokens", "",
             f"{'':24}{'real':>10}{'simulated':>12}"]
    rows = [("rows per token", "rows_per_token", num), ("blank rows %", "blank_row_rate", pct),
            ("substitutions %", "substitution_rate", pct), ("deletions %", "deletion_rate", pct),
            ("insertions %", "insertion_rate", pct), ("token error rate %", "token_error_rate", pct),
            ("mean entropy (bits)", "mean_entropy_bits", num), ("mean top-1 mass", "mean_top1_mass", num)]
    for label, key, fmt in rows:
        lines.append(f"{label:24}{fmt(summary['real'][key]):>10}{fmt(summary['simulated'][key]):>12}")
    lines += ["", f"rows paired by alignment: {summary['paired_rows']}",
              f"top-1 agreement of paired rows: {pct(summary['top1_agreement'])} %",
              f"mean Jensen-Shannon divergence of paired rows: {num(summary['mean_js_divergence_bits'], 3)} bits",
              f"rows left unpaired: {summary['unpaired_rows']}",
              f"row divergence (unpaired rows count 1 bit): {num(summary['row_divergence_bits'], 3)} bits"]
    return "\n".join(lines) + "\n"


def plot(summary: dict, out_dir: Path) -> list[Path]:
    """Real vs simulated histograms of row entropy and top-1 mass, one PNG each (drawn without pyplot,
    which a notebook's own plots use: its backend stays the caller's)."""
    from matplotlib.figure import Figure

    written = []
    for key, label, name in (("entropy_histogram", "row entropy (bits)", "entropy.png"),
                             ("top1_mass_histogram", "top-1 mass of a row", "top1_mass.png")):
        fig = Figure(figsize=(6, 3.5))
        ax = fig.subplots()
        for source in ("real", "simulated"):
            h = summary[source][key]
            counts = np.asarray(h["counts"], dtype=np.float64)
            share = counts / counts.sum() if counts.sum() else counts
            ax.stairs(share, h["edges"], label=source, fill=source == "real", alpha=0.5 if source == "real" else 1)
        ax.set_xlabel(label)
        ax.set_ylabel("share of rows")
        ax.legend()
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


def analyze(encoder, simulator, records: Iterable, *, compress_cfg, batch_size: int = 8, seed: int = 0,
            total: int | None = None, match_wer: bool = False) -> Fidelity:
    """Run the comparison over ``records`` (each with a transcript and audio), a batch at a time;
    ``match_wer``: simulate each utterance at its real rows' token error rate (see the module doc)."""
    from tqdm import tqdm

    from tasu.compress import encoder_posteriors
    from tasu.data.audio import load_audio
    from tasu.simulate.base import token_error_rate

    fidelity = Fidelity()
    generator = torch.Generator().manual_seed(seed)
    tokenizer = encoder.tokenizer
    batch: list = []

    def flush() -> None:
        waves = [torch.from_numpy(load_audio(r.path, r.key, r.start, r.end)) for r in batch]
        references = [tokenizer.encode(r.transcript) for r in batch]
        real = encoder_posteriors(encoder, [w.to(encoder.device) for w in waves], compress_cfg)
        real_rows = rows_of(real.to("cpu"))
        wer = None
        if match_wer:
            lo, hi = simulator.wer_range
            wer = [min(max(token_error_rate(ref, r.emitted()), lo), hi) for ref, r in zip(references, real_rows)]
        simulated = simulator(references, generator=generator, wer=wer)
        for reference, r, s in zip(references, real_rows, rows_of(simulated)):
            fidelity.add(reference, r, s)
        progress.update(len(batch))
        batch.clear()

    with tqdm(total=total, unit="utt", desc="analyze", disable=None) as progress:
        for record in records:
            batch.append(record)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    return fidelity


def run_analyze(cfg, data: Sequence[str], out_dir: str, *, limit: int | None = None, batch_size: int = 8,
                seed: int = 0, allow_pipes: bool = False, device: str = "cpu", match_wer: bool = False) -> dict:
    """``tasu analyze``: the records of ``data`` (JSONL) -> ``out_dir`` (summary, report, plots).

    ``device``: ``auto``, ``cpu``, ``cuda`` or ``npu``, through ``tasu.device.resolve_device`` as
    decoding and dumps take it. Nothing is written unless some utterance was compared: an empty
    summary would read as a result.
    """
    import itertools

    from tasu.config import ConfigError, require_dir
    from tasu.data.audio import AudioError, require_audio_path
    from tasu.data.records import DataError, iter_records_with_lines
    from tasu.device import resolve_device
    from tasu.dump import identity
    from tasu.encoders import load_encoder
    from tasu.simulate import build_simulator

    where: dict[str, tuple[str, int]] = {}   # key -> its file and line, for an audio error

    def records():
        for path in data:
            for line, record in iter_records_with_lines(path, require_transcript=True):
                require_audio_path(record.path, path, line, allow_pipes, "analyze compares posteriors of the audio")
                where.setdefault(record.key, (path, line))
                yield record

    if limit is not None and limit < 1:   # 0 would analyze nothing; islice refuses a negative one unhelpfully
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    require_dir("encoder.path", cfg.encoder.path, "pass --encoder DIR (or set it in the config)")
    torch_device = resolve_device(device)   # before the data is read: a wrong --device says so at once
    total = sum(1 for _ in records())
    if total == 0:
        raise DataError(", ".join(data), None, None, "no records to analyze")
    if limit is not None:
        total = min(total, limit)
    encoder = load_encoder(cfg.encoder.path, cfg.encoder.type, device=str(torch_device), **cfg.encoder.options)
    simulator = build_simulator(cfg.simulation, encoder.tokenizer)
    if cfg.simulation.name == "learned":   # its teacher: this encoder and compression? (as training asks)
        simulator.check_teacher(identity(cfg.encoder.path, cfg.encoder.type, cfg.compress, cfg.encoder.options),
                                "this config", refuse_compression=False)
    try:
        fidelity = analyze(encoder, simulator, itertools.islice(records(), total), compress_cfg=cfg.compress,
                           batch_size=batch_size, seed=seed, total=total, match_wer=match_wer)
    except AudioError as e:   # placed at its record's line, as training places it
        if e.key not in where:
            raise
        raise e.located(*where[e.key]) from None
    if fidelity.utterances == 0:
        raise DataError(", ".join(data), None, None, "no utterance was analyzed: nothing written")
    summary = fidelity.summary()
    summary["settings"] = {"data": list(data), "encoder": cfg.encoder.path, "seed": seed, "match_wer": match_wer,
                           "compress": _plain(cfg.compress), "simulation": _plain(cfg.simulation)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    write_atomic(out / "report.txt", report(summary))
    plot(summary, out)
    return summary


def _plain(section) -> dict:
    from tasu.config import to_dict

    return to_dict(section)

