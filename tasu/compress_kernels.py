"""The two steps of label-synchronous compression, with a CPU fast path: which runs of frames are
kept, and their means.

Why: ``compress`` reads whole frame posteriors (V = 25,055 entries) only to take the argmax of the
frames that blank does not clearly win and to average each kept run, and finds the runs with a few
dozen small tensor ops. The torch versions gather rows through small reused buffers (a fresh
100 MB temporary costs more in page faults than the copy); ``compress_kernels.c`` reads them where
they lie, finds the runs in one pass per utterance and writes each output row once (see
``tasu.native``): about four times faster on CPU, with bit-identical results.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tasu.native import Kernels

KERNELS = Kernels(Path(__file__).with_suffix(".c"), {
    "kept_runs": "piiipfippppt",        # probs, B, T, V, lengths, threshold, blank id, labels, starts, counts, kept
    "segment_means": "pippipt",         # src, V, starts, counts, len(starts), out, threads
})


def kept_runs(probs: torch.Tensor, lengths: torch.Tensor, threshold: float, blank_id: int):
    """The C version of ``compress._kept_runs`` (same outputs), or None where it does not apply."""
    lib = KERNELS.usable(probs, lengths)
    if lib is None:
        return None
    b, t, v = probs.shape
    labels, starts, counts = (torch.zeros(b * t, dtype=torch.long) for _ in range(3))
    kept = torch.zeros(b, dtype=torch.long)
    lib.kept_runs(probs.data_ptr(), b, t, v, lengths.data_ptr(), threshold, blank_id, labels.data_ptr(),
                  starts.data_ptr(), counts.data_ptr(), kept.data_ptr(), torch.get_num_threads())
    return starts.view(b, t), counts.view(b, t), kept


def segment_means(src: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Row r = mean of ``src[starts[r] : starts[r] + counts[r]]``, summed in row order ([R, V]);
    all zeros where ``counts[r]`` is 0."""
    lib = KERNELS.usable(src, starts, counts)
    out = src.new_empty(len(starts), src.shape[1])
    if lib is not None:
        lib.segment_means(src.data_ptr(), src.shape[1], starts.data_ptr(), counts.data_ptr(), len(starts),
                          out.data_ptr(), torch.get_num_threads())
        return out
    torch.index_select(src, 0, starts, out=out)  # first rows; then zeros where there are none
    out.index_fill_(0, (counts == 0).nonzero().flatten(), 0)
    # multi-row segments, longest first (so the ones still running at step j are a prefix),
    # summed chunk by chunk in reused buffers
    multi = (counts > 1).nonzero().flatten()
    multi = multi[counts[multi].argsort(descending=True, stable=True)]
    step = rows_per_chunk(src)
    sums, more = src.new_empty(2, min(step, len(multi)), src.shape[1])
    for k in range(0, len(multi), step):
        chunk = multi[k: k + step]
        total = sums[: len(chunk)]
        torch.index_select(src, 0, starts[chunk], out=total)
        for j in range(1, int(counts[chunk[0]])):
            running = chunk[counts[chunk] > j]  # a prefix of the chunk
            rows = more[: len(running)]
            torch.index_select(src, 0, starts[running] + j, out=rows)
            total[: len(running)] += rows
        out.index_copy_(0, chunk, total.div_(counts[chunk, None].to(total.dtype)))
    return out


def rows_per_chunk(src: torch.Tensor, max_bytes: int = 4 << 20) -> int:
    """V-wide rows are gathered in <= 4 MB pieces through reused buffers.

    On CPU, a fresh ~100 MB temporary per call costs more in page faults than the copy itself.
    """
    return max(1, max_bytes // (src.shape[1] * src.element_size()))


def gathered(src: torch.Tensor, index: torch.Tensor):
    """Yield ``(k, src[index[k : k + m]])`` chunk by chunk, through one reused buffer (torch versions)."""
    step = rows_per_chunk(src)
    buffer = src.new_empty(min(step, len(index)), src.shape[1])
    for k in range(0, len(index), step):
        rows = buffer[: len(index[k: k + step])]
        torch.index_select(src, 0, index[k: k + step], out=rows)
        yield k, rows
