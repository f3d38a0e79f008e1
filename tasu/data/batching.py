"""Training batches from JSONL: sources mixed, whole epochs shuffled, sharded, length-bucketed, resumable.

    batches = StreamingBatches(["train.jsonl", Source("text_only.jsonl", weight=0.5)], length_fn,
                               max_tokens=3000, sort_window=500, rank=rank, world_size=world,
                               collate=collate)
    loader = DataLoader(batches, batch_size=None, num_workers=2)   # yields PlannedBatch objects

**Which records, in which order** (``order``):

- ``"shuffle"`` (training's default): each epoch is a seeded permutation of all records of all
  sources together, stratified: each source's records come in a random order and are spread evenly
  over the epoch (``_spread``), so every stretch of an epoch holds each source at its share, within
  a record or two, and no file's own order (speaker, chapter, task) survives. It reads records by offset through a line index
  (``tasu.data.line_index``: 8 bytes a record, cached beside each file) and keeps the epoch's order
  as arrays of about 46 MB for a million records (bench/engine.py).
- ``"stream"``, for sources too large to index: each source is read start to end, interleaved with
  the others as evenly as the shuffled order spreads them, and records pass a ``shuffle_buffer``.
  Sources are mixed at their shares, but a source's own order is broken only within the buffer:
  split a huge, ordered corpus into shard files listed as separate sources, which are then read
  side by side. A source of weight 2 is read twice, one pass after the other, so a record's two
  copies come half an epoch apart (read side by side, they shared a batch).
- ``"sequential"`` (validation): the files one after another, in file order.

A source's ``weight`` says how many times an epoch holds it (1.0: each record once; 2.0: twice,
to up-sample a small corpus; 0.3: a random 30 % of it, drawn anew each epoch), so by default
sources are mixed in proportion to their sizes.

The ``i``-th record of the epoch's order belongs to rank ``i mod world_size``. Every step needs a
batch on every rank, so with several processes an epoch ends when the first rank runs out: the
other ranks' last batches (batches of one length budget hold different numbers of records) are not
trained that epoch, and the next epoch draws a new order (101 records on 2 ranks: 7 wait). Within a rank,
windows of ``sort_window`` records are sorted by length and cut into batches whose padded size
``batch size x longest length`` stays within ``max_tokens`` (the original's rule, with length =
prompt + speech + target tokens as ``length_fn`` computes it); the batches of a window come in a
random order that pairs short ones with long ones (``_short_with_long``: a source whose records are
shorter than the others', like one-word SLU labels, does not come in runs of short batches).
A ``sort_window`` of 0 or 1 sorts nothing: batches are cut the same way from the records in the
order they come. Records outside ``[min_length, max_length]`` are skipped and counted.

Every DataLoader worker plans the same batch sequence (reading and measuring records is cheap) and
collates only its share, batch ``n`` going to worker ``n mod num_workers``: the DataLoader's
round-robin then yields the batches in plan order, whatever the number of workers. Collating is
where the work is (simulating posteriors, reading audio), and that is what the workers share.

Everything random is drawn from ``(seed, epoch)`` (the order, shared by all ranks) and ``(seed,
epoch, rank)`` (windows and buffer), and ``collate`` gets a seed drawn from ``(seed, epoch, rank,
batch index)`` for its own randomness (simulation), so the batches of an epoch are a function of
the configuration alone. That is what makes a run resumable: the trainer records how many batches
it has consumed, and a resumed run skips that many (they are planned again but not collated, so
no audio is read and nothing is simulated for them).
"""
from __future__ import annotations

import errno
import hashlib
import heapq
import itertools
import logging
import random
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from tasu.data.line_index import line_number, line_offsets, read_line
from tasu.data.records import DataError, Record, iter_records, parse_record, without_bom

Order = Literal["shuffle", "stream", "sequential"]
_CHUNK = 1 << 16   # records of the epoch's order turned into Python ints at a time
_LOST_AFTER = 1000   # a source's first records all outside the length limits: said then, not at the epoch's end
MAX_WEIGHT = 10_000   # a source's copies an epoch: more is a slip of the keyboard (each copy is an index entry)

log = logging.getLogger("tasu.data")


@dataclass
class Source:
    """A data file and how many times an epoch holds it (see the module doc)."""

    path: str
    weight: float = 1.0

    def check(self) -> None:
        if not 0 < self.weight <= MAX_WEIGHT:   # NaN fails it too; 1e12 was a MemoryError of 50.9 TiB
            raise ValueError(f"{self.path}: weight must be a number > 0 and at most {MAX_WEIGHT} (copies of the "
                             f"file an epoch), got {self.weight}")


@dataclass
class PlannedBatch:
    """A batch of records and where it came from, for resuming and for the log."""

    index: int           # position of this batch in this rank's sequence for the epoch
    records: list[Record]
    skipped: int         # records skipped by the length filter so far this epoch (this rank)
    data: Any = None     # what ``collate(records, seed)`` made of them (None when there is no collate)


@dataclass
class DataPosition:
    """How far an epoch has got on one rank: batches consumed. Saved in every checkpoint."""

    epoch: int = 0
    consumed: int = 0

    def advance(self, batch: PlannedBatch) -> None:
        self.consumed = batch.index + 1

    def next_epoch(self) -> None:
        self.epoch, self.consumed = self.epoch + 1, 0


class StreamingBatches(IterableDataset):
    """An epoch of batches for this rank, spread over the DataLoader workers (see module doc)."""

    def __init__(self, sources: Sequence[str | Source], length_fn: Callable[[Record], int], *,
                 max_tokens: int, max_batch_size: int | None = None, min_length: int = 1,
                 max_length: int | None = None, order: Order = "shuffle", shuffle_buffer: int = 0,
                 sort_window: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
                 read_kwargs: dict | None = None, collate: Callable[[list[Record], int], Any] | None = None):
        if max_length is not None and max_length > max_tokens:
            raise ValueError(f"max_length {max_length} exceeds max_tokens {max_tokens}: "
                             "such a record could never be batched")
        if order not in ("shuffle", "stream", "sequential"):
            raise ValueError(f"order must be shuffle, stream or sequential, not {order!r}")
        self.sources = [s if isinstance(s, Source) else Source(str(s)) for s in sources]
        for source in self.sources:
            source.check()
        self.length_fn = length_fn
        self.max_tokens, self.max_batch_size = max_tokens, max_batch_size
        self.min_length = min_length
        self.max_length = max_tokens if max_length is None else max_length
        self.order, self.shuffle_buffer, self.sort_window = order, shuffle_buffer, sort_window
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.read_kwargs = read_kwargs or {}
        self.collate = collate
        self.position = DataPosition()

    def set_position(self, position: DataPosition) -> None:
        """Start the next iteration at ``position``: its epoch, after its consumed batches.

        DataLoader workers receive a copy of the dataset when an iteration starts, so set this
        before ``iter(loader)``.
        """
        self.position = position

    def __iter__(self) -> Iterator[PlannedBatch]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch, consumed = self.position.epoch, self.position.consumed  # the trainer advances it meanwhile
        rng = random.Random(f"{self.seed}/{epoch}/{self.rank}")
        stats = {"skipped": 0, "kept_of": [0] * len(self.sources), "skipped_of": [0] * len(self.sources),
                 "say": worker == 0 and self.rank == 0}   # one process says a source gives nothing
        with ExitStack() as files:
            records = self._measured(self._records(epoch, files), stats)
            if self.order == "stream" and self.shuffle_buffer > 1:
                records = _shuffled(records, self.shuffle_buffer, rng)
            for index, group in enumerate(self._batches(records, rng)):
                if index < consumed or (index - consumed) % workers != worker:
                    continue
                batch = PlannedBatch(index=index, records=group, skipped=stats["skipped"])
                if self.collate is not None:
                    seed = random.Random(f"{self.seed}/{epoch}/{self.rank}/{index}").getrandbits(63)
                    batch.data = self.collate(group, seed)
                yield batch
        for i, skipped in enumerate(stats["skipped_of"]):   # the epoch planned whole: the small sources
            if 0 < skipped < _LOST_AFTER and not stats["kept_of"][i] and stats["say"]:
                self._say_lost(i, skipped, whole=True)

    def _records(self, epoch: int, files: ExitStack) -> Iterator[tuple[int, Record]]:
        """This rank's records of the epoch, in the epoch's order, each with its source's number."""
        if self.order != "sequential":   # which reads one file at a time
            _allow_open_files(len(self.sources))
        for source in self.sources:
            try:
                open(source.path, "rb").close()
            except OSError as e:
                raise DataError(source.path, None, None, f"cannot open: {e.strerror or e}") from None
        if self.order == "shuffle":
            return self._shuffled_epoch(epoch, files)
        if self.order == "stream":
            records = _interleaved(self.sources, self.read_kwargs, _order_rng(self.seed, epoch))
        else:
            records = itertools.chain.from_iterable(((i, record) for record in iter_records(s.path, **self.read_kwargs))
                                                    for i, s in enumerate(self.sources))
        return itertools.islice(records, self.rank, None, self.world_size)

    def _shuffled_epoch(self, epoch: int, files: ExitStack) -> Iterator[tuple[int, Record]]:
        """A seeded permutation of every source's records (``weight`` copies each), read by offset."""
        offsets = [line_offsets(s.path) for s in self.sources]
        starts = np.cumsum([0] + [len(o) for o in offsets])
        rng = _order_rng(self.seed, epoch)
        ids, places = [], []
        for source, o, start in zip(self.sources, offsets, starts):
            copies = start + _copies(len(o), source.weight, rng)
            rng.shuffle(copies)
            ids.append(copies)
            places.append(_spread(len(copies), rng))
        ids = np.concatenate(ids or [[]]).astype(np.int64, copy=False)
        ids = ids[np.argsort(np.concatenate(places or [[]]), kind="stable")][self.rank::self.world_size]
        every_offset = offsets[0] if len(offsets) == 1 else np.concatenate(offsets or [[]]).astype(np.uint64)
        handles = [files.enter_context(open(s.path, "rb")) for s in self.sources]
        for begin in range(0, len(ids), _CHUNK):
            chunk = ids[begin:begin + _CHUNK]
            which = np.searchsorted(starts, chunk, side="right") - 1
            for source, offset in zip(which.tolist(), every_offset[chunk].tolist()):
                raw = read_line(handles[source], offset)
                if offset == 0:
                    raw = without_bom(raw)
                try:
                    record = parse_record(raw, **self.read_kwargs)
                except DataError as e:
                    path = self.sources[source].path
                    raise e.located(path, line_number(path, offset)) from None
                if record is not None:
                    yield source, record

    def _measured(self, records: Iterator[tuple[int, Record]], stats: dict) -> Iterator[tuple[int, Record]]:
        """``(length, record)`` of the records within the length limits; the others are counted, by source."""
        for source, record in records:
            length = self.length_fn(record)
            if self.min_length <= length <= self.max_length:
                stats["kept_of"][source] += 1
                yield length, record
            else:
                stats["skipped"] += 1
                stats["skipped_of"][source] += 1
                if stats["skipped_of"][source] == _LOST_AFTER and not stats["kept_of"][source] and stats["say"]:
                    self._say_lost(source, _LOST_AFTER, whole=False)

    def _say_lost(self, source: int, skipped: int, whole: bool) -> None:
        """A source whose records the length limits all leave out gives nothing, whatever its weight
        (``whole``: all its records of the epoch; else its first ones)."""
        which = f"all its {skipped} record(s)" if whole else f"its first {skipped} records"
        log.warning("%s: %s of this process are outside the length limits (min_length %d, max_length %d: prompt, "
                    "speech rows and target tokens), so %s used, whatever its weight (a task's prompt too long? "
                    "data.min_length, data.max_length, data.max_tokens)", self.sources[source].path, which,
                    self.min_length, self.max_length, "none is" if whole else "none of them is")

    def _batches(self, records: Iterator[tuple[int, Record]], rng: random.Random) -> Iterator[list[Record]]:
        if self.sort_window <= 1:   # no sorting: batches packed in the order the records come
            yield from self._cut(records)
            return
        while True:
            chunk = list(itertools.islice(records, self.sort_window))
            if not chunk:
                return
            chunk.sort(key=lambda item: item[0])
            yield from _short_with_long(list(self._cut(chunk)), rng)

    def _cut(self, chunk: Iterable[tuple[int, Record]]) -> Iterator[list[Record]]:
        """Greedy cut: a batch grows while its padded size (count x longest) fits the budget."""
        group: list[Record] = []
        longest = 0
        for length, record in chunk:
            grown = max(longest, length)
            full = self.max_batch_size is not None and len(group) >= self.max_batch_size
            if group and (full or grown * (len(group) + 1) > self.max_tokens):
                yield group
                group, grown = [], length
            group.append(record)
            longest = grown
        if group:
            yield group


def _order_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of an epoch's order: the same on every rank and worker."""
    digest = hashlib.sha256(f"{seed}/{epoch}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _short_with_long(groups: list[list[Record]], rng: random.Random) -> list[list[Record]]:
    """A window's batches (cut from its records sorted by length) in a random order that pairs the
    i-th shortest with the i-th longest: any run of batches then holds short and long records alike,
    so records whose length goes with their source (one-word SLU labels, long transcripts) do not
    come in runs of one kind."""
    pairs = [[groups[i], groups[-1 - i]] for i in range(len(groups) // 2)]
    if len(groups) % 2:
        pairs.append([groups[len(groups) // 2]])
    rng.shuffle(pairs)
    for pair in pairs:
        rng.shuffle(pair)
    return [group for pair in pairs for group in pair]


def _spread(n: int, rng: np.random.Generator) -> np.ndarray:
    """Where ``n`` records of one source fall in an epoch, as fractions in [0, 1): the k-th at a random
    point of the k-th of ``n`` equal intervals. Merging sources by these places spreads each one evenly
    over the epoch (a stratified interleave: any stretch holds each source at its share, within a
    record or two), while which record comes where stays random."""
    return (np.arange(n) + rng.random(n)) / max(n, 1)


def _copies(n: int, weight: float, rng: np.random.Generator) -> np.ndarray:
    """Record numbers ``0..n-1`` repeated ``weight`` times: whole passes, then a random part of
    ``part * n`` records on average (rounded down, one more with the remainder's probability: rounded,
    a 1-record source of weight 0.4 never came, one of 0.5 and 3 records gave 2 each epoch)."""
    whole, part = divmod(weight, 1.0)
    exact = part * n
    size = int(exact) + (1 if exact % 1 and rng.random() < exact % 1 else 0)   # no draw when exact: as before
    extra = rng.choice(n, size=size, replace=False) if size else np.empty(0, np.int64)
    return np.concatenate([np.tile(np.arange(n), int(whole)), extra])


def _interleaved(sources: list[Source], read_kwargs: dict,
                 rng: np.random.Generator) -> Iterator[tuple[int, Record]]:
    """The sources' records mixed, each source read start to end (the "stream" order).

    The same stratified interleave as the shuffled order (``_spread``), computed as the files are
    read: each source's places fill the epoch evenly, and the next record comes from the source whose
    next line has the smallest place. A source of ``weight`` w = whole + part is read in ``whole``
    passes one after the other, then a last pass that gives each record with probability ``part``;
    over the epoch they take spans in proportion (weight 2: the first pass in the first half, the
    second in the second), so a record's copies come half an epoch apart, not side by side in one
    batch. The k-th line of a pass of n lines is placed at (k + u) / n of its span, u random. (The
    last pass reads and parses the whole file to keep its part: a weight of 1.05 reads it twice.)
    """
    lines = [_count_records(s.path) for s in sources]
    passes = [_passes(s.weight) for s in sources]
    coin = random.Random(int(rng.integers(2**63)))
    streams = [iter_records(s.path, **read_kwargs) for s in sources]

    def place(i: int, p: int, k: int) -> float:
        """Where the k-th line of source i's pass p falls in the epoch, in [0, 1)."""
        start, span = passes[i][p]
        return start + span * (k + coin.random()) / lines[i]

    heap = [(place(i, 0, 0), i, 0, 0) for i, n in enumerate(lines) if n]
    heapq.heapify(heap)
    while heap:
        _, i, p, k = heapq.heappop(heap)
        if k + 1 < lines[i]:
            heapq.heappush(heap, (place(i, p, k + 1), i, p, k + 1))
        elif p + 1 < len(passes[i]):   # the source read again from its start
            heapq.heappush(heap, (place(i, p + 1, 0), i, p + 1, 0))
        record = next(streams[i], None)   # None: a line without a record was counted (see _count_records)
        if k + 1 == lines[i]:
            streams[i] = iter_records(sources[i].path, **read_kwargs)
        # the coin is drawn for every record (a weight of 1 or less gives the order it gave before passes)
        if record is not None and (coin.random() < sources[i].weight % 1.0 or p < int(sources[i].weight)):
            yield i, record


def _allow_open_files(sources: int) -> None:
    """Let this process hold a file open for each of ``sources`` at once, and its own besides.

    A "stream" epoch keeps each source's file open while it reads it, and the even spread has them
    all open by a third of the epoch; a "shuffle" epoch opens them all. A corpus split into a thousand
    shard files (as the module doc advises for a huge one) went past the usual soft limit of 1024:
    "Too many open files" named one shard as if it were at fault. The soft limit is raised as far as
    the hard one, which only the system's administrator can raise."""
    import resource

    want = sources + 256   # libraries, DataLoader pipes, sockets, the checkpoint being written
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    if hard != resource.RLIM_INFINITY and hard < sources:
        raise OSError(errno.EMFILE, f"{sources} data files are read at once, and this system lets a process "
                                    f"open {hard} files (ulimit -Hn): merge shard files into fewer sources, or "
                                    "ask for a higher limit")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


def _passes(weight: float) -> list[tuple[float, float]]:
    """Where each pass over a source of ``weight`` falls in a stream-order epoch: ``(start, span)``
    fractions of the epoch, one a whole pass, then one for the fractional part (its span in proportion)."""
    whole, part = divmod(weight, 1.0)
    spans = [1.0] * int(whole) + ([part] if part else [])
    return [(p / weight, span / weight) for p, span in enumerate(spans)]   # p passes of 1.0 before pass p


def _count_records(path: str) -> int:
    """Lines of ``path`` that hold a record (a streaming count, no index): what a source has to give
    in "stream" order. Blank lines hold none: counted, they took places in the interleave, and a file
    with blank lines came early and ran out before the end of the epoch (a record line has a ``{``;
    a line that is neither stops the run when it is read)."""
    with open(path, "rb") as f:
        return sum(1 for line in f if b"{" in line)


def _shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Stream ``items`` in a random order drawn from a buffer of ``size`` items."""
    buffer = list(itertools.islice(items, size))
    for item in items:
        i = rng.randrange(len(buffer))
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer
