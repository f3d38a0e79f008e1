"""Inspection: the rows a simulator makes of one transcript, and their token error rate (``tasu simulate``)."""
from __future__ import annotations

import torch

from tasu.posteriors import Posteriors
from tasu.simulate.base import Vocabulary, build_simulator, row_tokens, token_error_rate
from tasu.simulate.config import SimulationConfig


def format_simulation(tokenizer: Vocabulary, text: str, post: Posteriors, topk: int = 3) -> str:
    """A readable table of one simulated utterance: row, floor, then the largest entries as piece:prob."""
    ids = tokenizer.encode(text)
    lines = [f"text: {text}",
             f"tokens ({len(ids)}): " + " ".join(tokenizer.id_to_piece(i) for i in ids),
             f"rows: {int(post.lengths[0])}, V = {post.vocab_size}; every id not listed has the row's floor",
             f"{'row':>4}  {'floor':>9}  top-{topk} (piece:prob)"]
    probs = post.weights[0] + post.floor[0, :, None]
    order = probs.argsort(1, descending=True)[:, :topk]
    for t in range(int(post.lengths[0])):
        entries = [f"{tokenizer.id_to_piece(int(post.ids[0, t, k]))}:{float(probs[t, k]):.4f}" for k in order[t]]
        lines.append(f"{t:>4}  {float(post.floor[0, t]):>9.3g}  " + "  ".join(entries))
    return "\n".join(lines)


def show_simulation(tokenizer: Vocabulary, text: str, config: SimulationConfig | None = None, topk: int = 3,
                    seed: int = 0, step: int = 0, samples: int = 1, encoder_identity: dict | None = None) -> str:
    """Simulate ``text`` with the encoder's ``tokenizer`` and return the table of its rows.

    ``config`` chooses the simulator (``config.name``); ``step`` places a WER schedule, whose range at
    that step is printed as the asked WER; the token error rate (each row's top-1 id against the
    transcript's ids) is that of the table's draw and, with ``samples`` > 1, the mean over that many
    draws: what the simulation does to the text, as a number. ``encoder_identity`` (``tasu.dump.identity``
    of the encoder, without ``compress`` where none is configured): a learned simulator whose teacher
    was another encoder or compression says so in one line.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    sim = build_simulator(config or SimulationConfig(), tokenizer)
    if encoder_identity is not None:
        sim.check_teacher(encoder_identity, "this encoder", refuse_compression=False)
    ids = tokenizer.encode(text)
    if not ids:   # a table of one blank row and "token error rate 0.0 %", exit 0
        raise ValueError(f"the text {text!r} spells no token of the encoder's vocabulary: nothing to simulate")
    generator = torch.Generator().manual_seed(seed)
    draws = [sim([ids], generator, step=step) for _ in range(samples)]
    rates = [token_error_rate(ids, row_tokens(post)[0]) for post in draws]
    lines = [format_simulation(tokenizer, text, draws[0], topk)]
    if config is not None and config.wer is not None:   # a condition was asked: say which, beside what came
        lo, hi = config.wer.at(step)
        lines.append(f"asked WER ({config.name} simulator, step {step}): {100 * lo:.1f}-{100 * hi:.1f} %")
    lines.append(f"token error rate (top-1 of each row vs the transcript): {100 * rates[0]:.1f} %")
    if samples > 1:
        lines.append(f"mean over {samples} draws: {100 * sum(rates) / samples:.1f} %")
    return "\n".join(lines)
