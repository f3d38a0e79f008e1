"""Streaming batches: budgets, sharding, length filters, determinism and exact resume."""
import json

import pytest
from torch.utils.data import DataLoader

from tasu.data.batching import DataPosition, StreamingBatches


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    with open(path, "w") as f:
        for i in range(203):
            words = " ".join(["w"] * (1 + (i * 7) % 23))
            f.write(json.dumps({"key": f"u{i:03d}", "task": "ASR", "target": words}) + "\n")
    return str(path)


def length(record):
    return len(record.target.split())


def keys(batches):
    return [[r.key for r in b.records] for b in batches]


def make(data, **kw):
    options = dict(max_tokens=60, shuffle_buffer=50, sort_window=40, seed=3)
    options.update(kw)
    return StreamingBatches([data], length, **options)


def test_batches_respect_the_padded_budget_and_cover_every_record_once(data):
    batches = list(make(data, max_batch_size=6))
    for b in batches:
        assert len(b.records) <= 6
        assert len(b.records) * max(length(r) for r in b.records) <= 60
    seen = sorted(k for group in keys(batches) for k in group)
    assert seen == [f"u{i:03d}" for i in range(203)]


def test_ranks_split_the_records_without_overlap(data):
    parts = [sorted(k for g in keys(make(data, rank=r, world_size=3)) for k in g) for r in range(3)]
    assert sum(len(p) for p in parts) == 203
    assert set(parts[0]).isdisjoint(parts[1]) and set(parts[1]).isdisjoint(parts[2])
    assert parts[1][:2] == ["u001", "u004"]


def test_length_filter_skips_and_counts(data):
    batches = list(make(data, min_length=3, max_length=20))
    kept = [r for b in batches for r in b.records]
    assert all(3 <= length(r) <= 20 for r in kept)
    dropped = sum(1 for i in range(203) if not 3 <= 1 + (i * 7) % 23 <= 20)
    assert len(kept) == 203 - dropped
    assert batches[-1].skipped == dropped
    with pytest.raises(ValueError, match="exceeds max_tokens"):
        make(data, max_length=61)


def test_order_depends_on_seed_and_epoch_only(data):
    a, b = keys(make(data)), keys(make(data))
    assert a == b
    assert keys(make(data, seed=4)) != a
    shifted = make(data)
    shifted.set_position(DataPosition(epoch=1))
    assert keys(shifted) != a


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_yield_the_plan_order_and_resume_exactly(data, workers):
    def collate(records, seed):
        return (len(records), seed)

    full_ds = make(data, collate=collate)
    full = [(b.index, keys([b]), b.data) for b in DataLoader(full_ds, batch_size=None, num_workers=workers)]
    assert [i for i, _, _ in full] == list(range(len(full)))
    assert [x[1:] for x in full] == [(keys([b]), b.data) for b in make(data, collate=collate)]

    resumed_ds = make(data, collate=collate)
    resumed_ds.set_position(DataPosition(epoch=0, consumed=5))
    resumed = [(b.index, keys([b]), b.data) for b in DataLoader(resumed_ds, batch_size=None, num_workers=workers)]
    assert resumed == full[5:]


def test_position_advances_with_consumed_batches(data):
    position = DataPosition()
    batches = list(make(data))
    for batch in batches[:4]:
        position.advance(batch)
    assert position.consumed == 4
    position.next_epoch()
    assert (position.epoch, position.consumed) == (1, 0)
    assert list(StreamingBatches([], length, max_tokens=10)) == []
