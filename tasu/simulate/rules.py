"""The rule-based simulator ("CPS", and its WER-controlled mode): transcripts -> posteriors by rule.

TASU trains the projector from text only. A transcript, tokenised with the *encoder's* tokenizer,
becomes one smoothed one-hot row per token -- what a label-synchronously compressed real posterior
looks like -- and a few recognition errors are simulated so that the LLM learns to read imperfect
posteriors. Two ways to choose the errors:

- i.i.d. (the original TASU): every token is substituted with probability ``sub_prob`` and dropped
  with probability ``drop_prob``; after every kept token Poisson(``insert_ratio``) rows are inserted,
  each a repeat of that token or a pure blank row with equal chance.
- WER-controlled (the TASU2 direction): a target token error rate is drawn per utterance from a range
  (fixed, or raised over training by a ``WERSchedule``), or asked per utterance, and turned into an
  exact number of edits, so the simulated hypothesis is *exactly* that far from the truth (see
  ``_wer_plan``).

Each utterance draws its smoothing ``alpha ~ U(alpha)``; a row is ``(1 - alpha) * onehot + alpha / V``,
i.e. a ``Posteriors`` row with K = 1. The random decisions of a whole batch are drawn as tensors, so a
batch costs a few hundred microseconds whatever V is.

Substitutes come from a ``Confusion`` table: uniform over the ordinary (non-blank, non-special) ids,
or ids *close in spelling* to the original piece (see ``Confusion.spelling``).
"""
from __future__ import annotations

import functools
from typing import Literal, Sequence

import torch

from tasu.posteriors import Posteriors, length_mask
from tasu.simulate.base import PosteriorSimulator, Vocabulary, register, target_rates
from tasu.simulate.config import SimulationConfig


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
        # how many candidates come before each id: looked up per draw, as searchsorted there would start
        # the thread pool for a few hundred ids (milliseconds per batch on a busy core; see _owners)
        self.rank = torch.searchsorted(candidates, torch.arange(vocab_size)).clamp_max(candidates.numel() - 1)

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
        rank = self.rank[ids]
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
        # in a fixed order (not a set's, which follows the process's string hashing): the bucket numbers
        # decide which neighbour a draw gives, so a seed must give the same substitutes in every process
        for key in dict.fromkeys(k for k in (p, *(p[:j] + p[j + 1:] for j in range(len(p)))) if k):
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
# Simulation


def _owners(counts: torch.Tensor) -> torch.Tensor:
    """``repeat_interleave(arange(len(counts)), counts)``, built so that no op starts the thread pool.

    (``repeat_interleave`` and ``searchsorted`` parallelise even tiny inputs; with a busy core that
    costs milliseconds per call.)
    """
    ends = counts.cumsum(0)
    total = int(ends[-1]) if len(ends) else 0
    return torch.bincount(ends[:-1], minlength=total + 1)[:total].cumsum(0)


@register("rules")
class RuleSimulator(PosteriorSimulator):
    """Token id sequences -> a ``Posteriors`` batch of simulated rows, as ``SimulationConfig`` says.

    The condition: without a target WER (``wer`` None and no ``config.wer``) the i.i.d. errors;
    with one (given, or drawn from the schedule's range at ``step``) exactly that many edits.

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
    def from_tokenizer(cls, tokenizer: Vocabulary, config: SimulationConfig) -> "RuleSimulator":
        return cls(config, tokenizer.vocab_size, tokenizer.blank_id,
                   Confusion.from_tokenizer(tokenizer, config.confusion))

    @classmethod
    def from_config(cls, config: SimulationConfig, tokenizer: Vocabulary,
                    device: str | torch.device = "cpu") -> "RuleSimulator":
        return cls.from_tokenizer(tokenizer, config)   # a few tensor ops a batch: CPU whatever the device

    def __call__(self, token_ids: Sequence[Sequence[int]], generator: torch.Generator | None = None,
                 step: int = 0, wer: float | Sequence[float] | None = None) -> Posteriors:
        """Simulate one batch; ``step`` (the training step) picks the range of a WER schedule, ``wer``
        (one rate, or one per utterance) replaces it."""
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
        if wer is None and self.config.wer is None:
            plan = self._iid_plan(ids, utt, pos, start, lengths, generator)
        else:
            if wer is None:
                lo, hi = self.config.wer.at(step)
                rates = target_rates(token_ids, None, (lo, hi), generator)
            else:
                rates = target_rates(token_ids, wer, None, generator)
                lo, hi = rates, rates
            plan = self._wer_plan(ids, utt, pos, start, ref_len, rates, lo, hi, generator)
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

    def _wer_plan(self, ids, utt, pos, start, ref_len, rates, lo, hi, g):
        """Exactly n = S + D + I edits per utterance, placed so that the edit distance is exactly n.

        n is ``round(rate * L)`` for the utterance's ``rate`` (drawn from ``U(lo, hi)``, or asked), clamped into ``[ceil(lo L), floor(hi L)]`` when
        that holds an integer, so the realised rate ``n / L`` lies in ``[lo, hi]`` whenever any count can
        (otherwise, for short utterances, it is the nearest achievable rate). Substituted and inserted
        tokens are *fresh* (they occur nowhere in the reference) and an utterance gets deletions or
        insertions, not both (which one is drawn with the odds D : I). Then a hypothesis keeps at most
        M = L - S - D reference tokens matched, so any alignment costs at least
        max(L, L - D + I) - M = S + max(D, I) = S + D + I: the script is optimal. A reference that holds
        every candidate id has no fresh one: its n edits are n deletions (also exactly n).
        """
        b = len(ref_len)
        p_s, p_d, p_i = (x / sum(self.config.wer_split) for x in self.config.wer_split)
        L = ref_len.double()
        n = rates.mul(L).round()
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
        # which ids each reference holds: a [B, V] table, so testing an edit is O(1) (a [edits, L] comparison
        # was quadratic in the transcript's length); an empty transcript's placeholder blank is not one
        present = torch.zeros(b, self.vocab_size, dtype=torch.bool)
        real = ref_len[utt] > 0
        present[utt[real], ids[real]] = True
        reference = ids
        ids = ids.clone()
        ids[sub], stuck_sub = self._fresh(self.confusion.sample(ids[sub], g), utt[sub], present, g)
        ins_utt = _owners(i)
        gap = (torch.rand(ins_utt.numel(), generator=g) * (ref_len[ins_utt] + 1)).long()
        left = ids[start[ins_utt] + (gap - 1).clamp_min(0)]  # inserted tokens resemble their left neighbour
        ins_ids, stuck_ins = self._fresh(self.confusion.sample(left, g), ins_utt, present, g)
        stuck = torch.zeros(b, dtype=torch.bool)
        stuck[utt[sub][stuck_sub]] = True
        stuck[ins_utt[stuck_ins]] = True
        if stuck.any():
            # A reference that holds every id a substitute or insertion could be (a character vocabulary, a
            # long utterance): no edit is fresh, and an alignment can match a stale one, so the distance fell
            # short of n. Its n edits become n deletions of distinct tokens instead, which cost exactly n.
            mine = stuck[utt]
            ids = torch.where(mine, reference, ids)
            keep = torch.where(mine, rank >= (s + d + i)[utt], keep)
            ins_utt, gap, ins_ids = ins_utt[~stuck[ins_utt]], gap[~stuck[ins_utt]], ins_ids[~stuck[ins_utt]]
        return ids, keep, ins_utt, gap, ins_ids

    def _fresh(self, values, utt, present, g, rounds: int = 4):
        """Redraw the values that occur in their utterance's reference (``present[utt, id]``) until none
        does; the values, and which of them could not be made fresh (every candidate is in that reference)."""
        for _ in range(rounds):
            bad = present[utt, values]
            if not bad.any():
                return values, bad
            values = values.clone()
            values[bad] = self.confusion.sample_uniform(values[bad], g)
        bad = present[utt, values]
        stuck = bad.nonzero().flatten()   # small vocabularies, or references using most of one
        for u in utt[stuck].unique_consecutive().tolist():   # the values come utterance by utterance
            mine = stuck[utt[stuck] == u]
            allowed = self.confusion.candidates[~present[u, self.confusion.candidates]]
            if allowed.numel():   # one draw of all of them: the stream of one draw each, in a tensor op
                values[mine] = allowed[torch.randint(allowed.numel(), (mine.numel(),), generator=g)]
                bad[mine] = False
        return values, bad

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
    """One-off ``RuleSimulator(config, vocab_size, blank_id)(token_ids, generator, step)`` (uniform confusion)."""
    return RuleSimulator(config or SimulationConfig(), vocab_size, blank_id)(token_ids, generator, step)
