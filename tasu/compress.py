"""Label-synchronous compression ("PSD") of real CTC posteriors, vectorised over the batch.

A CTC encoder emits one posterior per ~60 ms frame, mostly blank; the simulated posteriors of the
text-only stage have one row per token. Compression brings real posteriors to that shape:

1. each frame's argmax; a run of consecutive frames with the same *non-blank* argmax becomes one row,
   the mean of their probability vectors; every blank-argmax frame stays a row of its own;
2. every row whose (mean) blank probability is >= ``threshold`` (0.9) is dropped -- after merging,
   as the original does;
3. rows are padded with zeros to the batch's longest.

Why it is fast: a frame whose blank probability exceeds 1/2 has blank as its argmax (the rows are
probability vectors), and a lone frame at or above the threshold is dropped anyway, so the V-wide
rows of most frames are never read. Runs are summed in frame order, so the result is bit-identical
to the frame loop ``_compress_loop`` and deterministic on GPUs too (no atomic scatter-adds). On CPU
both steps, finding the kept runs and averaging them, are C kernels (``compress_kernels``); the
torch version here and there is what runs elsewhere, and the reference they are tested against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from tasu.compress_kernels import gathered, kept_runs, segment_means
from tasu.posteriors import Posteriors, length_mask


@dataclass
class CompressConfig:
    """How real posteriors are compressed (audio batches and decoding): the ``compress`` section of an
    experiment config, as ``SimulationConfig`` is for the text-only side."""

    enabled: bool = True
    threshold: float = 0.9
    topk: Optional[int] = 16   # explicit entries kept per row; null keeps all V (exact, slow)

    def check(self) -> None:
        """Values that would train a model no decode can use (topk 0) or drop every frame (threshold 0)."""
        if not 0.0 < self.threshold <= 1.0:   # NaN fails it too
            raise ValueError(f"threshold must be in (0, 1] (a frame whose blank probability reaches it is "
                             f"dropped), got {self.threshold}")
        if self.topk is not None and self.topk < 1:
            raise ValueError(f"topk must be >= 1 (or null: every entry), got {self.topk}")


class Compressed(NamedTuple):
    """Merged rows and where they came from (all padded to the longest utterance)."""

    probs: torch.Tensor  # [B, T', V] mean posterior of each kept row, zeros on padding
    lengths: torch.Tensor  # [B] kept rows per utterance
    starts: torch.Tensor  # [B, T'] first frame of each row (0 on padding)
    counts: torch.Tensor  # [B, T'] frames merged into each row (0 on padding)


def compress(probs: torch.Tensor, lengths: torch.Tensor, threshold: float = 0.9, blank_id: int = 0) -> Compressed:
    """Compress frame posteriors ``probs`` [B, T, V] with valid ``lengths`` [B]; frames past a length are ignored.

    Rows must be probability vectors (softmax outputs): a frame whose blank probability is above 1/2
    is taken to have blank as its argmax without reading the rest of the row.
    """
    b, t, v = probs.shape
    if not 0 <= blank_id < v:
        raise ValueError(f"blank id {blank_id} is outside the vocabulary of {v} entries")
    lengths = lengths.to(device=probs.device, dtype=torch.long).clamp(0, t)
    runs = kept_runs(probs, lengths, threshold, blank_id)  # the CPU kernel, or None where it does not apply
    starts, counts, out_len = runs if runs is not None else _kept_runs(probs, lengths, threshold, blank_id)
    width = int(out_len.max()) if b else 0
    starts, counts = starts[:, :width].contiguous(), counts[:, :width].contiguous()
    out = segment_means(probs.reshape(b * t, v), starts.view(-1), counts.view(-1))   # zeros where counts is 0
    return Compressed(out.view(b, width, v), out_len, starts % t, counts)


def _kept_runs(probs: torch.Tensor, lengths: torch.Tensor, threshold: float, blank_id: int):
    """The runs compression keeps, as ``(starts, counts, kept)``: utterance u's kept runs, in order, in
    ``starts[u, :kept[u]]`` (flat frame index ``u * T + frame``) and ``counts[u, :kept[u]]`` (frames);
    zeros after them."""
    b, t, v = probs.shape
    device = probs.device
    valid = length_mask(lengths, t)
    flat = probs.reshape(b * t, v)
    blank = probs[:, :, blank_id].reshape(-1)

    # argmax, reading the full row only where blank does not already hold more than half the mass
    argmax = torch.full((b * t,), blank_id, dtype=torch.long, device=device)
    unsure = (valid.view(-1) & ~(blank > 0.5)).nonzero().flatten()   # a NaN blank too: its row decides
    for k, rows in gathered(flat, unsure):
        argmax[unsure[k: k + len(rows)]] = rows.argmax(-1)

    # runs: a valid frame starts one unless it continues the previous frame's non-blank run
    argmax = argmax.view(b, t)
    prev = torch.nn.functional.pad(argmax, (1, 0), value=-1)[:, :-1]
    starts = (valid & ((argmax == blank_id) | (argmax != prev))).view(-1).nonzero().flatten()
    utt = starts // t
    next_start = torch.cat([starts[1:], starts.new_tensor([b * t])])
    counts = torch.minimum(next_start, utt * t + lengths[utt]) - starts  # runs stop at the utterance end
    max_run = int(counts.max()) if counts.numel() else 0

    # drop the runs whose mean blank probability (summed in frame order) reaches the threshold
    blank_sum = blank[starts]
    for j in range(1, max_run):  # positions inside a run, not frames: a few iterations
        more = (counts > j).nonzero().flatten()
        blank_sum[more] += blank[starts[more] + j]
    keep = (blank_sum / counts.to(blank_sum.dtype) < threshold).nonzero().flatten()
    starts, counts, utt = starts[keep], counts[keep], utt[keep]

    # kept run -> (utterance, position among the utterance's kept runs)
    kept = torch.bincount(utt, minlength=b)
    dest = utt * t + torch.arange(starts.numel(), device=device) - (kept.cumsum(0) - kept)[utt]
    packed_starts = torch.zeros(b * t, dtype=torch.long, device=device)
    packed_counts = torch.zeros_like(packed_starts)
    packed_starts[dest] = starts
    packed_counts[dest] = counts
    return packed_starts.view(b, t), packed_counts.view(b, t), kept


def compress_posteriors(probs: torch.Tensor, lengths: torch.Tensor, topk: int | None, *, enabled: bool = True,
                        threshold: float = 0.9, blank_id: int = 0) -> Posteriors:
    """``compress`` (or, when not ``enabled``, every valid frame as it is) as sparse ``Posteriors``."""
    if enabled:
        c = compress(probs, lengths, threshold, blank_id)
        probs, lengths = c.probs, c.lengths
    else:
        probs = probs[:, : int(lengths.max()) if lengths.numel() else 0]
    return Posteriors.from_dense(probs, lengths, topk, blank_id=blank_id)


@torch.no_grad()
def encoder_posteriors(encoder, waveforms, compress: CompressConfig | None = None) -> Posteriors:
    """A frozen CTC encoder's posteriors of a batch of waveforms, compressed as ``compress`` says (None:
    the defaults): what an audio batch feeds the projector.

    ``encoder`` is a ``tasu.encoders.CTCEncoder``. Training, decoding, the API and posterior dumps
    (``tasu.dump``) all call this one function, so a dump holds exactly what the live path computes.
    """
    c = compress or CompressConfig()
    feats, feat_lengths = encoder.extract_features(waveforms)
    log_probs, lengths = encoder(feats, feat_lengths)
    return compress_posteriors(log_probs.exp(), lengths, c.topk, enabled=c.enabled, threshold=c.threshold,
                               blank_id=encoder.blank_id)


def _compress_loop(probs: torch.Tensor, lengths: torch.Tensor, threshold: float = 0.9,
                   blank_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """REFERENCE ONLY (tests, benchmark): the original frame-by-frame loop, written plainly.

    Sums a run as ``0 + p_s + p_s+1 + ...`` and divides by its frame count, the same operations in the
    same order as ``compress``, so the two agree bit for bit.
    """
    b, _, v = probs.shape
    rows: list[list[torch.Tensor]] = []
    for i in range(b):
        kept, t, n = [], 0, int(lengths[i])
        while t < n:
            label = int(probs[i, t].argmax())
            end = t + 1
            if label != blank_id:
                while end < n and int(probs[i, end].argmax()) == label:
                    end += 1
            total = torch.zeros(v, dtype=probs.dtype)
            for f in range(t, end):
                total += probs[i, f]
            mean = total / torch.full((1,), end - t, dtype=probs.dtype)
            if mean[blank_id] < threshold:
                kept.append(mean)
            t = end
        rows.append(kept)
    width = max(len(r) for r in rows) if rows else 0
    out = probs.new_zeros(b, width, v)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.stack(r)
    return out, torch.tensor([len(r) for r in rows], dtype=torch.long)
