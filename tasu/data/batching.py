"""Training batches from JSONL: streamed, sharded, shuffled, length-bucketed, and resumable.

    batches = StreamingBatches(["train.jsonl"], length_fn, max_tokens=3000, shuffle_buffer=2000,
                               rank=rank, world_size=world, collate=collate)
    loader = DataLoader(batches, batch_size=None, num_workers=2)   # yields PlannedBatch objects

Records are read line by line, never all at once. Line ``i`` belongs to rank ``i mod world_size``.
Within a rank, records pass a shuffle buffer (a seeded random draw from the last ``shuffle_buffer``
records), then windows of ``sort_window`` records are sorted by length and cut into batches whose
padded size ``batch size x longest length`` stays within ``max_tokens`` (the original's rule, with
length = prompt + speech + target tokens as ``length_fn`` computes it). Records outside
``[min_length, max_length]`` are skipped and counted.

Every DataLoader worker plans the same batch sequence (reading and measuring records is cheap) and
collates only its share, batch ``n`` going to worker ``n mod num_workers``: the DataLoader's
round-robin then yields the batches in plan order, whatever the number of workers. Collating is
where the work is (simulating posteriors, reading audio), and that is what the workers share.

Everything random is drawn from ``(seed, epoch, rank)``, and ``collate`` gets a seed drawn from
``(seed, epoch, rank, batch index)`` for its own randomness (simulation), so the batches of an epoch are a function
of the configuration alone. That is what makes a run resumable: the trainer records how many
batches it has consumed, and a resumed run skips that many (they are planned again but not
collated, so no audio is read and nothing is simulated for them).
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from torch.utils.data import IterableDataset, get_worker_info

from tasu.data.records import Record, iter_records


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

    def __init__(self, paths: Sequence[str], length_fn: Callable[[Record], int], *, max_tokens: int,
                 max_batch_size: int | None = None, min_length: int = 1, max_length: int | None = None,
                 shuffle_buffer: int = 0, sort_window: int = 0, seed: int = 0, rank: int = 0,
                 world_size: int = 1, read_kwargs: dict | None = None,
                 collate: Callable[[list[Record], int], Any] | None = None):
        if max_length is not None and max_length > max_tokens:
            raise ValueError(f"max_length {max_length} exceeds max_tokens {max_tokens}: "
                             "such a record could never be batched")
        self.paths = list(paths)
        self.length_fn = length_fn
        self.max_tokens, self.max_batch_size = max_tokens, max_batch_size
        self.min_length = min_length
        self.max_length = max_tokens if max_length is None else max_length
        self.shuffle_buffer, self.sort_window = shuffle_buffer, sort_window
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
        stats = {"skipped": 0}
        records = self._records(stats)
        if self.shuffle_buffer > 1:
            records = _shuffled(records, self.shuffle_buffer, rng)
        for index, group in enumerate(self._batches(records, rng)):
            if index < consumed or (index - consumed) % workers != worker:
                continue
            batch = PlannedBatch(index=index, records=group, skipped=stats["skipped"])
            if self.collate is not None:
                seed = random.Random(f"{self.seed}/{epoch}/{self.rank}/{index}").getrandbits(63)
                batch.data = self.collate(group, seed)
            yield batch

    def _records(self, stats: dict) -> Iterator[tuple[int, Record]]:
        lines = itertools.chain.from_iterable(iter_records(p, **self.read_kwargs) for p in self.paths)
        for i, record in enumerate(lines):
            if i % self.world_size != self.rank:
                continue
            length = self.length_fn(record)
            if self.min_length <= length <= self.max_length:
                yield length, record
            else:
                stats["skipped"] += 1

    def _batches(self, records: Iterator[tuple[int, Record]], rng: random.Random) -> Iterator[list[Record]]:
        window = max(self.sort_window, 1)
        while True:
            chunk = list(itertools.islice(records, window))
            if not chunk:
                return
            if window > 1:
                chunk.sort(key=lambda item: item[0])
            groups = list(self._cut(chunk))
            if window > 1:
                rng.shuffle(groups)
            yield from groups

    def _cut(self, chunk: list[tuple[int, Record]]) -> Iterator[list[Record]]:
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


def _shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Stream ``items`` in a random order drawn from a buffer of ``size`` items."""
    buffer = list(itertools.islice(items, size))
    for item in items:
        i = rng.randrange(len(buffer))
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer
