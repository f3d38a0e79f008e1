"""The two V-wide steps of label-synchronous compression, with a CPU fast path.

Why: ``compress`` reads whole frame posteriors (V = 25,055 entries) only to take the argmax of the
frames that blank does not clearly win and to average each kept run of frames. The torch versions
gather those rows through small reused buffers (a fresh 100 MB temporary costs more in page faults
than the copy); ``compress_kernels.c`` reads them where they lie and writes each output row once
(see ``tasu.native``), about three times faster on CPU. Both versions give bit-identical results.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tasu.native import Kernels

KERNELS = Kernels(Path(__file__).with_suffix(".c"), {
    "rows_argmax": "pipipt",        # src, V, rows, len(rows), out, threads
    "segment_means": "pippipt",     # src, V, starts, counts, len(starts), out, threads
})


def rows_argmax(src: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``src[rows].argmax(-1)`` for ``src`` [N, V], without gathering the rows."""
    lib = KERNELS.usable(src, rows)
    if lib is None:
        out = torch.empty(len(rows), dtype=torch.long, device=src.device)
        for k, gathered in _gathered(src, rows):
            out[k: k + len(gathered)] = gathered.argmax(-1)
        return out
    out = torch.empty(len(rows), dtype=torch.long)
    lib.rows_argmax(src.data_ptr(), src.shape[1], rows.data_ptr(), len(rows), out.data_ptr(), torch.get_num_threads())
    return out


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
    step = _rows_per_chunk(src)
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


def _rows_per_chunk(src: torch.Tensor, max_bytes: int = 4 << 20) -> int:
    """V-wide rows are gathered in <= 4 MB pieces through reused buffers.

    On CPU, a fresh ~100 MB temporary per call costs more in page faults than the copy itself.
    """
    return max(1, max_bytes // (src.shape[1] * src.element_size()))


def _gathered(src: torch.Tensor, index: torch.Tensor):
    """Yield ``(k, src[index[k : k + m]])`` chunk by chunk, through one reused buffer."""
    step = _rows_per_chunk(src)
    buffer = src.new_empty(min(step, len(index)), src.shape[1])
    for k in range(0, len(index), step):
        rows = buffer[: len(index[k: k + step])]
        torch.index_select(src, 0, index[k: k + step], out=rows)
        yield k, rows
