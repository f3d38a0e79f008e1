"""CTC posterior simulation ("CPS"): transcripts -> the posteriors a speech encoder might have emitted.

TASU trains the projector from text only. A transcript, tokenised with the *encoder's* tokenizer,
becomes one smoothed one-hot row per token -- what a label-synchronously compressed real posterior
looks like -- and a few recognition errors are simulated so that the LLM learns to read imperfect
posteriors. Two ways to choose the errors:

- i.i.d. (the original TASU): every token is substituted with probability ``sub_prob`` and dropped
  with probability ``drop_prob``; after every kept token Poisson(``insert_ratio``) rows are inserted,
  each a repeat of that token or a pure blank row with equal chance.
- WER-controlled (the TASU2 direction): a target token error rate is drawn per utterance from a range
  (fixed, or raised over training by a ``WERSchedule``) and turned into an exact number of edits, so
  the simulated hypothesis is *exactly* that far from the truth (see ``_wer_plan``).

Each utterance draws its smoothing ``alpha ~ U(alpha)``; a row is ``(1 - alpha) * onehot + alpha / V``,
i.e. a ``Posteriors`` row with K = 1. The random decisions of a whole batch are drawn as tensors, so a
batch costs a few hundred microseconds whatever V is.

Substitutes come from a ``Confusion`` table: uniform over the ordinary (non-blank, non-special) ids,
or ids *close in spelling* to the original piece (see ``Confusion.spelling``).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence, runtime_checkable

import torch

from tasu.posteriors import Posteriors, length_mask


@runtime_checkable
class Vocabulary(Protocol):
    """What simulation needs of the encoder's tokenizer: its units, the blank among them, and text -> ids.

    Declared here rather than imported from ``tasu.encoders``, so that simulation depends on
    nothing but ``Posteriors``: every encoder's tokenizer (``tasu.encoders.base.EncoderTokenizer``)
    has these members, and so can any stand-in a test or a tool builds.
    """

    vocab_size: int
    blank_id: int

    def encode(self, text: str) -> list[int]: ...

    def id_to_piece(self, i: int) -> str: ...


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class WERSchedule:
    """A curriculum for the target token error rate: the range ``[lo, hi]`` as a function of the step.

    The range stays at ``start`` for ``warmup_steps``, moves to ``end`` until ``total_steps`` (linearly,
    or along a half cosine that starts and ends slowly) and stays at ``end`` afterwards. A fixed range
    is ``start == end``.
    """

    start: tuple[float, float] = (0.0, 0.05)
    end: tuple[float, float] = (0.2, 0.3)
    warmup_steps: int = 0
    total_steps: int = 15000
    shape: Literal["linear", "cosine"] = "linear"

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"WERSchedule.{name} = {(lo, hi)} must satisfy 0 <= lo <= hi <= 1")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError("WERSchedule needs 0 <= warmup_steps <= total_steps")
        if self.shape not in ("linear", "cosine"):
            raise ValueError(f"WERSchedule.shape must be 'linear' or 'cosine', got {self.shape!r}")

    def progress(self, step: int) -> float:
        """0 before and at ``warmup_steps``, 1 from ``total_steps`` on."""
        if step <= self.warmup_steps:
            f = 0.0
        elif step >= self.total_steps:
            f = 1.0
        else:
            f = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 - math.cos(math.pi * f)) if self.shape == "cosine" else f

    def at(self, step: int) -> tuple[float, float]:
        f = self.progress(step)
        return tuple(a + (b - a) * f for a, b in zip(self.start, self.end))  # type: ignore[return-value]


@dataclass
class SimulationConfig:
    """How transcripts become posteriors. The defaults are the original TASU's.

    ``drop_prob``, ``insert_ratio`` and ``sub_prob`` are the i.i.d. errors; when ``wer`` is set they
    are replaced by exact-count edits whose rate follows the schedule, split into substitutions,
    deletions and insertions in the proportions ``wer_split`` (S, D, I). ``confusion`` says where
    substitutes (and WER-controlled insertions) come from: any ordinary id, or ids spelt alike.
    """

    alpha: tuple[float, float] = (0.0, 0.1)
    drop_prob: float = 0.05
    insert_ratio: float = 0.0
    sub_prob: float = 0.0
    confusion: Literal["random", "spelling"] = "random"
    wer: WERSchedule | None = None
    wer_split: tuple[float, float, float] = (0.6, 0.2, 0.2)

    def __post_init__(self) -> None:
        lo, hi = self.alpha
        if not 0.0 <= lo <= hi < 1.0:
            raise ValueError(f"alpha = {self.alpha} must satisfy 0 <= lo <= hi < 1")
        for name in ("drop_prob", "sub_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.insert_ratio < 0.0:
            raise ValueError("insert_ratio must be >= 0")
        if self.confusion not in ("random", "spelling"):
            raise ValueError(f"confusion must be 'random' or 'spelling', got {self.confusion!r}")
        if min(self.wer_split) < 0.0 or sum(self.wer_split) <= 0.0:
            raise ValueError(f"wer_split = {self.wer_split} must be non-negative with a positive sum")


# --------------------------------------------------------------------------------------------------
# Confusion: where substitutes come from


def _is_special(piece: str) -> bool:
    """Control tokens (``<unk>``, ``<|en|>``, ``<blank>``...) are never produced as an error."""
    return len(piece) > 2 and piece.startswith("<") and piece.endswith(">")


class Confusion:
    """Draws, for each id, another ordinary id: uniformly, or among ids close in spelling.

    Spelling neighbours use symmetric-deletion hashing: every piece is put in the bucket of itself and
    of each string obtained by deleting one of its characters (the empty string excluded). Two pieces
    sharing a bucket are at edit distance 1 or 2, and every pair at distance 1 shares one; building
    costs O(V * piece length) dictionary operations (~0.1 s for V = 25,055), never V^2 distances.
    Buckets are kept as they are (no pair lists), so a huge bucket (e.g. all two-character pieces
    starting with the word-boundary mark) costs nothing extra: a draw picks one of the id's buckets
    uniformly, then another member of it uniformly. Ids with no neighbour fall back to uniform.
    """

    def __init__(self, vocab_size: int, candidates: torch.Tensor, buckets: tuple[torch.Tensor, ...] | None = None):
        self.vocab_size = vocab_size
        self.candidates = candidates  # sorted ordinary ids
        self.buckets = buckets  # (id_offsets [V+1], id_buckets, id_rank, bucket_offsets, bucket_members)
        if candidates.numel() < 2:
            raise ValueError("a confusion table needs at least two ordinary ids")

    @classmethod
    def uniform(cls, vocab_size: int, blank_id: int = 0, exclude: Sequence[int] = ()) -> "Confusion":
        keep = torch.ones(vocab_size, dtype=torch.bool)
        keep[blank_id] = False
        keep[list(exclude)] = False
        return cls(vocab_size, keep.nonzero().flatten())

    @classmethod
    def spelling(cls, pieces: Sequence[str], blank_id: int = 0) -> "Confusion":
        return _spelling_confusion(tuple(pieces), blank_id)

    @classmethod
    def from_tokenizer(cls, tokenizer: Vocabulary, kind: Literal["random", "spelling"]) -> "Confusion":
        pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
        if kind == "spelling":
            return cls.spelling(pieces, tokenizer.blank_id)
        return cls.uniform(len(pieces), tokenizer.blank_id, [i for i, p in enumerate(pieces) if _is_special(p)])

    def sample_uniform(self, ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A uniform ordinary id different from each of ``ids``."""
        c = self.candidates
        rank = torch.searchsorted(c, ids).clamp_max(c.numel() - 1)
        inside = (c[rank] == ids).long()  # the id itself is a candidate: skip over it
        r = (torch.rand(ids.shape, generator=generator) * (c.numel() - inside)).long()
        return c[r + (inside.bool() & (r >= rank)).long()]

    def sample(self, ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A substitute for each of ``ids``, never equal to it."""
        out = self.sample_uniform(ids, generator)
        if self.buckets is None or ids.numel() == 0:
            return out
        id_off, id_buckets, id_rank, b_off, b_members = self.buckets
        first, count = id_off[ids], id_off[ids + 1] - id_off[ids]
        u = torch.rand((2,) + ids.shape, generator=generator)
        has = count > 0
        e = (first + (u[0] * count).long()).clamp_max(id_buckets.numel() - 1)
        b, self_rank = id_buckets[e], id_rank[e]
        size = b_off[b + 1] - b_off[b]
        r = (u[1] * (size - 1)).long()
        r = r + (r >= self_rank).long()
        near = b_members[(b_off[b] + r).clamp_max(b_members.numel() - 1)]
        return torch.where(has, near, out)


@functools.lru_cache(maxsize=2)
def _spelling_confusion(pieces: tuple[str, ...], blank_id: int) -> Confusion:
    ordinary = [i for i, p in enumerate(pieces) if i != blank_id and not _is_special(p)]
    bucket_of: dict[str, int] = {}
    members: list[list[int]] = []
    for i in ordinary:
        p = pieces[i]
        for key in {p, *(p[:j] + p[j + 1:] for j in range(len(p)))} - {""}:
            b = bucket_of.setdefault(key, len(members))
            if b == len(members):
                members.append([])
            members[b].append(i)  # ids arrive in increasing order: buckets stay sorted
    members = [m for m in members if len(m) > 1]
    per_id: list[list[tuple[int, int]]] = [[] for _ in pieces]
    for b, m in enumerate(members):
        for rank, i in enumerate(m):
            per_id[i].append((b, rank))
    id_off = torch.tensor([0] + [len(x) for x in per_id]).cumsum(0)
    flat = [x for entries in per_id for x in entries] or [(0, 0)]
    id_buckets, id_rank = torch.tensor(flat).T.contiguous()
    b_off = torch.tensor([0] + [len(m) for m in members]).cumsum(0)
    b_members = torch.tensor([i for m in members for i in m] or [0])
    return Confusion(len(pieces), torch.tensor(ordinary), (id_off, id_buckets, id_rank, b_off, b_members))


# --------------------------------------------------------------------------------------------------
# Error rates


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (unit substitution, deletion and insertion costs) of two sequences."""
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.distance(ref, hyp)


def row_tokens(post: Posteriors) -> list[list[int]]:
    """The token each valid row emits (its largest entry), blank rows emitting nothing.

    Rows are label-synchronous (one row per emitted label), so repeated ids are *not* merged.
    """
    best = post.ids.gather(2, post.weights.argmax(2, keepdim=True)).squeeze(2)
    return [[i for i in row[:n] if i != post.blank_id] for row, n in zip(best.tolist(), post.lengths.tolist())]


def token_error_rate(ref: Sequence[int], hyp: Sequence[int]) -> float:
    """Edit distance over the reference length (an empty reference: 0 if ``hyp`` is empty, else inf)."""
    d = edit_distance(ref, hyp)
    return d / len(ref) if ref else (0.0 if d == 0 else math.inf)


# --------------------------------------------------------------------------------------------------
# Simulation


def _owners(counts: torch.Tensor) -> torch.Tensor:
    """``repeat_interleave(arange(len(counts)), counts)``, built so that no op starts the thread pool.

    (``repeat_interleave`` and ``searchsorted`` parallelise even tiny inputs; with a busy core that
    costs milliseconds per call.)
    """
    ends = counts.cumsum(0)
    total = int(ends[-1]) if len(ends) else 0
    return torch.bincount(ends[:-1], minlength=total + 1)[:total].cumsum(0)


class Simulator:
    """Token id sequences -> a ``Posteriors`` batch of simulated rows, as ``SimulationConfig`` says.

    An empty transcript gives one blank row; an utterance never has all its tokens dropped by the
    i.i.d. errors (one dropped token is put back), and if WER-controlled deletions remove every token
    it is left with one blank row (which emits nothing, so the error rate is still exact).
    """

    def __init__(self, config: SimulationConfig, vocab_size: int, blank_id: int = 0,
                 confusion: Confusion | None = None):
        if config.confusion == "spelling" and (confusion is None or confusion.buckets is None):
            raise ValueError("confusion='spelling' needs a Confusion.spelling table (use from_tokenizer)")
        self.config = config
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.confusion = confusion or Confusion.uniform(vocab_size, blank_id)

    @classmethod
    def from_tokenizer(cls, tokenizer: Vocabulary, config: SimulationConfig) -> "Simulator":
        return cls(config, tokenizer.vocab_size, tokenizer.blank_id,
                   Confusion.from_tokenizer(tokenizer, config.confusion))

    def __call__(self, token_ids: Sequence[Sequence[int]], generator: torch.Generator | None = None,
                 step: int = 0) -> Posteriors:
        """Simulate one batch; ``step`` (the training step) picks the range of a WER schedule."""
        if len(token_ids) == 0:
            raise ValueError("cannot simulate an empty batch")
        b = len(token_ids)
        ref_len = torch.tensor([len(x) for x in token_ids])
        lengths = ref_len.clamp_min(1)  # an empty transcript is simulated as one blank token
        ids = torch.tensor([t for x in token_ids for t in (x or (self.blank_id,))], dtype=torch.long)
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        utt = _owners(lengths)
        start = lengths.cumsum(0) - lengths
        pos = torch.arange(ids.numel()) - start[utt]
        if self.config.wer is None:
            plan = self._iid_plan(ids, utt, pos, start, lengths, generator)
        else:
            plan = self._wer_plan(ids, utt, pos, start, ref_len, self.config.wer.at(step), generator)
        rows, out_len = self._assemble(b, utt, pos, *plan)
        return self._smooth(rows, out_len, generator)

    # Each plan returns (ids after substitution, keep mask, inserted rows' utterance, gap, id);
    # gap g means "before reference position g" (g = L: at the end).

    def _iid_plan(self, ids, utt, pos, start, lengths, g):
        cfg, n = self.config, ids.numel()
        u = torch.rand(2, n, generator=g)
        sub = (u[0] < cfg.sub_prob) & (ids != self.blank_id)
        if sub.any():
            ids = ids.clone()
            ids[sub] = self.confusion.sample(ids[sub], g)
        keep = u[1] >= cfg.drop_prob
        lost = torch.bincount(utt[keep], minlength=len(lengths)) == 0
        if lost.any():  # put one random token of each fully dropped utterance back
            pick = start + (torch.rand(len(lengths), generator=g) * lengths).long()
            keep[pick[lost]] = True
        if cfg.insert_ratio > 0:
            count = torch.poisson(torch.full((n,), cfg.insert_ratio), generator=g).long() * keep
            src = _owners(count)
            blank = torch.rand(src.numel(), generator=g) < 0.5
            ins_ids = torch.where(blank, self.blank_id, ids[src])
            return ids, keep, utt[src], pos[src] + 1, ins_ids
        empty = ids.new_zeros(0)
        return ids, keep, empty, empty, empty

    def _wer_plan(self, ids, utt, pos, start, ref_len, rate_range, g):
        """Exactly n = S + D + I edits per utterance, placed so that the edit distance is exactly n.

        n is ``round(rate * L)`` for ``rate ~ U(lo, hi)``, clamped into ``[ceil(lo L), floor(hi L)]`` when
        that holds an integer, so the realised rate ``n / L`` lies in ``[lo, hi]`` whenever any count can
        (otherwise, for short utterances, it is the nearest achievable rate). Substituted and inserted
        tokens are *fresh* (they occur nowhere in the reference) and an utterance gets deletions or
        insertions, not both (which one is drawn with the odds D : I). Then a hypothesis keeps at most
        M = L - S - D reference tokens matched, so any alignment costs at least
        max(L, L - D + I) - M = S + max(D, I) = S + D + I: the script is optimal.
        """
        b, lo, hi = len(ref_len), *rate_range
        p_s, p_d, p_i = (x / sum(self.config.wer_split) for x in self.config.wer_split)
        L = ref_len.double()
        n = (lo + (hi - lo) * torch.rand(b, generator=g, dtype=torch.float64)).mul(L).round()
        n_min, n_max = (lo * L - 1e-9).ceil(), (hi * L + 1e-9).floor()
        n = torch.where(n_min <= n_max, torch.minimum(torch.maximum(n, n_min), n_max), n)
        n = torch.minimum(n.clamp_min(0), L)
        s = torch.binomial(n, torch.full((b,), p_s, dtype=torch.float64), generator=g)
        deleting = torch.rand(b, generator=g) * (p_d + p_i) < p_d
        d, i = torch.where(deleting, n - s, 0.0).long(), torch.where(deleting, 0.0, n - s).long()
        s = s.long()
        # distinct random positions: the first S of a random order are substituted, the next D deleted
        key = torch.full((b, int(ref_len.max().clamp_min(1))), 2.0)
        key[utt, pos] = torch.rand(ids.numel(), generator=g)
        rank = key.argsort(1).argsort(1)[utt, pos]
        sub = rank < s[utt]
        keep = sub | (rank >= (s + d)[utt])
        ref = torch.full(key.shape, -1, dtype=torch.long)
        ref[utt, pos] = ids
        ref[ref_len == 0] = -1  # an empty transcript's placeholder blank is not a reference token
        ids = ids.clone()
        ids[sub] = self._fresh(self.confusion.sample(ids[sub], g), utt[sub], ref, g)
        ins_utt = _owners(i)
        gap = (torch.rand(ins_utt.numel(), generator=g) * (ref_len[ins_utt] + 1)).long()
        left = ids[start[ins_utt] + (gap - 1).clamp_min(0)]  # inserted tokens resemble their left neighbour
        ins_ids = self._fresh(self.confusion.sample(left, g), ins_utt, ref, g)
        return ids, keep, ins_utt, gap, ins_ids

    def _fresh(self, values, utt, ref, g, rounds: int = 4):
        """Redraw the values that occur in their utterance's reference (uniformly) until none does."""
        for _ in range(rounds):
            bad = (ref[utt] == values[:, None]).any(1)
            if not bad.any():
                return values
            values = values.clone()
            values[bad] = self.confusion.sample_uniform(values[bad], g)
        for k in (ref[utt] == values[:, None]).any(1).nonzero().flatten().tolist():  # tiny vocabularies only
            allowed = self.confusion.candidates[~torch.isin(self.confusion.candidates, ref[utt[k]])]
            if allowed.numel():
                values[k] = allowed[torch.randint(allowed.numel(), (1,), generator=g)]
        return values

    def _assemble(self, b, utt, pos, ids, keep, ins_utt, ins_gap, ins_ids):
        """Kept tokens and inserted rows in order -> padded ids [B, T] and lengths [B]."""
        width = 2 * int(pos.max()) + 4
        row_utt = torch.cat([utt[keep], ins_utt])
        order_key = torch.cat([utt[keep] * width + 2 * pos[keep] + 1, ins_utt * width + 2 * ins_gap])
        values = torch.cat([ids[keep], ins_ids])
        empty = torch.bincount(row_utt, minlength=b) == 0
        if empty.any():  # nothing left: one blank row
            e = empty.nonzero().flatten()
            row_utt, values = torch.cat([row_utt, e]), torch.cat([values, torch.full_like(e, self.blank_id)])
            order_key = torch.cat([order_key, e * width])
        order = torch.sort(order_key, stable=True).indices
        row_utt, values = row_utt[order], values[order]
        lengths = torch.bincount(row_utt, minlength=b)
        row_pos = torch.arange(values.numel()) - (lengths.cumsum(0) - lengths)[row_utt]
        rows = torch.full((b, int(lengths.max())), self.blank_id, dtype=torch.long)
        rows[row_utt, row_pos] = values
        return rows, lengths

    def _smooth(self, rows, lengths, g) -> Posteriors:
        lo, hi = self.config.alpha
        alpha = lo + (hi - lo) * torch.rand(len(lengths), generator=g)
        mask = length_mask(lengths, rows.shape[1]).float()
        weights = (1.0 - alpha)[:, None] * mask
        floor = (alpha / self.vocab_size)[:, None] * mask
        return Posteriors(ids=rows[:, :, None], weights=weights[:, :, None], floor=floor,
                          blank=floor + weights * (rows == self.blank_id), lengths=lengths,
                          vocab_size=self.vocab_size, blank_id=self.blank_id)


def simulate(token_ids: Sequence[Sequence[int]], vocab_size: int, config: SimulationConfig | None = None,
             blank_id: int = 0, generator: torch.Generator | None = None, step: int = 0) -> Posteriors:
    """One-off ``Simulator(config, vocab_size, blank_id)(token_ids, generator, step)`` (uniform confusion)."""
    return Simulator(config or SimulationConfig(), vocab_size, blank_id)(token_ids, generator, step)


# --------------------------------------------------------------------------------------------------
# Inspection (``tasu simulate``)


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
                    seed: int = 0, step: int = 0, samples: int = 1) -> str:
    """Simulate ``text`` with the encoder's ``tokenizer`` and return the table of its rows.

    ``step`` places a WER schedule; the token error rate (each row's top-1 id against the
    transcript's ids) is that of the table's draw and, with ``samples`` > 1, the mean over that many
    draws: what the simulation does to the text, as a number.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    sim = Simulator.from_tokenizer(tokenizer, config or SimulationConfig())
    ids = tokenizer.encode(text)
    generator = torch.Generator().manual_seed(seed)
    draws = [sim([ids], generator, step=step) for _ in range(samples)]
    rates = [token_error_rate(ids, row_tokens(post)[0]) for post in draws]
    lines = [format_simulation(tokenizer, text, draws[0], topk),
             f"token error rate (top-1 of each row vs the transcript): {100 * rates[0]:.1f} %"]
    if samples > 1:
        lines.append(f"mean over {samples} draws: {100 * sum(rates) / samples:.1f} %")
    return "\n".join(lines)
