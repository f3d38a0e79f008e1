"""Streaming batches: budgets, sharding, length filters, source mixing, determinism and exact resume."""
import collections
import json

import pytest
from torch.utils.data import DataLoader

from tasu.data.batching import DataPosition, Source, StreamingBatches
from tasu.data.records import DataError


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


@pytest.mark.parametrize("order", ["shuffle", "stream", "sequential"])
def test_ranks_split_the_records_without_overlap(data, order):
    parts = [sorted(k for g in keys(make(data, rank=r, world_size=3, order=order)) for k in g)
             for r in range(3)]
    assert sorted(k for p in parts for k in p) == [f"u{i:03d}" for i in range(203)]
    if order == "sequential":
        assert parts[1][:2] == ["u001", "u004"]


@pytest.mark.parametrize("window", [0, 1])
def test_no_sort_window_packs_batches_in_the_order_the_records_come(data, window):
    # validation reads its files in order; a window of 0 or 1 used to give one-record batches
    batches = keys(make(data, order="sequential", sort_window=window))
    assert [k for group in batches for k in group] == [f"u{i:03d}" for i in range(203)]
    lengths = [1 + (i * 7) % 23 for i in range(203)]
    start = 0
    for group in batches:   # each batch is as long as the budget allows: the next record would overflow it
        end = start + len(group)
        assert len(group) * max(lengths[start:end]) <= 60
        if end < 203:
            assert (len(group) + 1) * max(lengths[start:end + 1]) > 60
        start = end
    assert len(batches) < 203 / 2


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


@pytest.mark.parametrize("workers,order", [(0, "shuffle"), (2, "shuffle"), (2, "stream")])
def test_workers_yield_the_plan_order_and_resume_exactly(data, workers, order):
    def collate(records, seed):
        return (len(records), seed)

    full_ds = make(data, collate=collate, order=order)
    full = [(b.index, keys([b]), b.data) for b in DataLoader(full_ds, batch_size=None, num_workers=workers)]
    assert [i for i, _, _ in full] == list(range(len(full)))
    assert [x[1:] for x in full] == [(keys([b]), b.data) for b in make(data, collate=collate, order=order)]

    resumed_ds = make(data, collate=collate, order=order)
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


# -- mixing sources ----------------------------------------------------------------------------

def write_source(path, name, n, speakers=1, words=lambda i: 1 + i % 9):
    """``n`` records of source ``name`` in speaker order (all of speaker 0, then speaker 1, ...)."""
    with open(path, "w") as f:
        for i in range(n):
            spk = i * speakers // n
            f.write(json.dumps({"key": f"{name}-{spk:03d}-{i:06d}", "task": "ASR",
                                "target": " ".join(["w"] * words(i))}) + "\n")
    return str(path)


def source_of(record):
    return record.key.split("-")[0]


def window_shares(batches, parts=10):
    """Each source's share of the records in each tenth of the epoch's batches."""
    size = len(batches) // parts
    for start in range(0, size * parts, size):
        counts = collections.Counter(source_of(r) for b in batches[start:start + size] for r in b.records)
        total = sum(counts.values())
        yield {name: n / total for name, n in counts.items()}


@pytest.mark.parametrize("order", ["shuffle", "stream"])
def test_every_stretch_of_an_epoch_holds_each_source_at_its_share(tmp_path, order):
    # three tasks' files of different sizes and lengths, as a multitask recipe lists them
    files = [write_source(tmp_path / "a.jsonl", "a", 50_000, words=lambda i: 3 + i % 20),
             write_source(tmp_path / "b.jsonl", "b", 30_000, words=lambda i: 1 + i % 3),
             write_source(tmp_path / "c.jsonl", "c", 20_000, words=lambda i: 8 + i % 30)]
    batches = list(StreamingBatches(files, length, max_tokens=400, sort_window=500, order=order,
                                    shuffle_buffer=2000, seed=1))
    assert sum(len(b.records) for b in batches) == 100_000
    for shares in window_shares(batches):
        for name, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
            assert abs(shares.get(name, 0) - share) <= 0.05, (name, shares)


@pytest.mark.parametrize("order", ["shuffle", "stream"])
def test_sources_are_spread_evenly_record_by_record(tmp_path, order):
    files = [write_source(tmp_path / f"{name}.jsonl", name, n) for name, n in (("a", 3000), ("b", 1000), ("c", 500))]
    batches = list(StreamingBatches(files, lambda r: 1, max_tokens=1, order=order, seed=7))
    records = [source_of(b.records[0]) for b in batches]   # one record a batch: the order itself
    for start in range(0, 4500, 450):
        counts = collections.Counter(records[start:start + 450])
        assert abs(counts["a"] - 300) <= 2 and abs(counts["b"] - 100) <= 2 and abs(counts["c"] - 50) <= 2, counts


def test_a_speaker_ordered_file_comes_out_mixed(tmp_path):
    path = write_source(tmp_path / "spk.jsonl", "s", 20_000, speakers=100)
    batches = list(StreamingBatches([path], length, max_tokens=60, sort_window=500, seed=2))
    for start in range(0, len(batches) - 99, len(batches) // 10):
        speakers = {r.key.split("-")[1] for b in batches[start:start + 100] for r in b.records}
        assert len(speakers) >= 90   # of 100; a 2,000-record window would hold about 10


def test_weights_repeat_or_subsample_a_source_each_epoch(tmp_path):
    a = write_source(tmp_path / "a.jsonl", "a", 1000)
    b = write_source(tmp_path / "b.jsonl", "b", 1000)
    epochs = []
    for epoch in range(2):
        batches = StreamingBatches([Source(a, 2.0), Source(b, 0.25)], length, max_tokens=60, seed=3)
        batches.set_position(DataPosition(epoch=epoch))
        epochs.append(collections.Counter(r.key for g in batches for r in g.records))
    for counts in epochs:
        assert {n for k, n in counts.items() if k.startswith("a")} == {2}
        assert sum(1 for k in counts if k.startswith("a")) == 1000
        b_keys = [k for k in counts if k.startswith("b")]
        assert len(b_keys) == 250 and all(counts[k] == 1 for k in b_keys)
    assert {k for k in epochs[0] if k[0] == "b"} != {k for k in epochs[1] if k[0] == "b"}
    for weight in (0.0, float("nan"), 1e12):   # 1e12: a MemoryError of 50.9 TiB, naming no setting
        with pytest.raises(ValueError, match=r"weight must be a number > 0 and at most 10000 \(copies of the file"):
            StreamingBatches([Source(a, weight)], length, max_tokens=60)


def test_the_passes_of_a_weight_are_where_they_were_and_found_in_linear_time():
    """Each pass's start was the sum of the spans before it: quadratic in the weight (32 s before the first
    batch at 100000), now p / weight, the same floats (the stream order of earlier runs, which resume)."""
    from tasu.data.batching import _passes

    for weight in (0.4, 1.0, 1.05, 2.0, 2.5, 7.3, 33.3, 517.9):
        whole, part = divmod(weight, 1.0)
        spans = [1.0] * int(whole) + ([part] if part else [])
        assert _passes(weight) == [(sum(spans[:p]) / weight, span / weight) for p, span in enumerate(spans)]
    assert len(_passes(10_000.5)) == 10_001


SHARDS = """
import resource, sys
from tasu.data.batching import Source, StreamingBatches
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[3]), int(sys.argv[4])))
files = [Source(f"{sys.argv[1]}/s{i:04d}.jsonl") for i in range(1100)]
batches = StreamingBatches(files, lambda r: 2, max_tokens=400, order=sys.argv[2], seed=1)
keys = [r.key for b in batches for r in b.records]
assert sorted(keys) == sorted(f"s{i}-{j}" for i in range(1100) for j in range(3)), len(keys)
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.parametrize("order", ["shuffle", "stream"])
def test_a_corpus_of_a_thousand_shard_files_is_read_under_the_usual_open_file_limit(tmp_path, order):
    """Both orders hold every source's file open at once: 1100 shards went past the soft limit of 1024,
    "Too many open files" naming one shard. The soft limit is raised; past the hard one, one line says so."""
    import subprocess
    import sys

    for i in range(1100):
        (tmp_path / f"s{i:04d}.jsonl").write_text("".join(
            json.dumps({"key": f"s{i}-{j}", "task": "ASR", "target": "a b"}) + "\n" for j in range(3)))
    run = [sys.executable, "-c", SHARDS, str(tmp_path), order]
    out = subprocess.run(run + ["1024", "4096"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout == "1356\n", out.stderr[-2000:]
    out = subprocess.run(run + ["512", "1024"], capture_output=True, text=True, timeout=120)
    assert "OSError: [Errno 24] 1100 data files are read at once, and this system lets a process open 1024 files " \
           "(ulimit -Hn): merge shard files into fewer sources, or ask for a higher limit" in out.stderr, out.stderr
    out = subprocess.run(run + ["1024", "1200"], capture_output=True, text=True, timeout=120)   # up to the hard
    assert out.returncode == 0 and out.stdout == "1200\n", out.stderr[-2000:]
    out = subprocess.run(run[:-1] + ["sequential", "512", "512"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout == "512\n", out.stderr[-2000:]   # one file at a time: as it was


def test_a_fraction_of_a_record_is_given_with_its_probability(tmp_path):
    """Rounded per epoch, a 1-record source of weight 0.4 never came in shuffled order (17 of 50 epochs
    in stream order), so a small source weighed 0."""
    a = write_source(tmp_path / "a.jsonl", "a", 20)
    b = write_source(tmp_path / "b.jsonl", "b", 1)
    seen = 0
    for epoch in range(100):
        batches = StreamingBatches([Source(a, 1.0), Source(b, 0.4)], length, max_tokens=60, seed=6)
        batches.set_position(DataPosition(epoch=epoch))
        seen += sum(r.key.startswith("b") for g in batches for r in g.records)
    assert 25 <= seen <= 55   # 40 expected; binomial sd 4.9


def test_stream_order_gives_each_source_its_weighted_share(tmp_path):
    a = write_source(tmp_path / "a.jsonl", "a", 4000)
    b = write_source(tmp_path / "b.jsonl", "b", 4000)
    batches = list(StreamingBatches([Source(a, 1.0), Source(b, 0.5)], length, max_tokens=60,
                                    order="stream", shuffle_buffer=200, sort_window=100, seed=4))
    counts = collections.Counter(source_of(r) for g in batches for r in g.records)
    assert counts["a"] == 4000 and abs(counts["b"] - 2000) < 150
    for shares in window_shares(batches):
        assert abs(shares["b"] - 1 / 3) <= 0.05


def test_stream_order_keeps_the_shares_of_a_file_with_blank_lines(tmp_path):
    """Its blank lines took places in the interleave: 75 % of the first six tenths, none of the last three."""
    a = write_source(tmp_path / "a.jsonl", "a", 2000)
    spaced = tmp_path / "c.jsonl"
    spaced.write_text("".join(line + "\n \n" for line in open(write_source(tmp_path / "c0.jsonl", "c", 2000))))
    batches = list(StreamingBatches([a, str(spaced)], length, max_tokens=60, order="stream", shuffle_buffer=0,
                                    sort_window=0, seed=1))
    for shares in window_shares(batches):
        assert abs(shares.get("c", 0) - 0.5) <= 0.05, shares


def test_stream_order_of_weights_up_to_one_is_the_one_earlier_versions_gave(tmp_path):
    """A checkpoint written mid-epoch resumes by skipping the batches it consumed: the order of an epoch
    must not change under it. (Pinned from the version before weights over 1 were read in passes.)"""
    for name, n in (("a", 30), ("b", 50)):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"key": f"{name}{i}", "task": "ASR", "target": "w"}) + "\n" for i in range(n)))
    batches = StreamingBatches([Source(str(tmp_path / "a.jsonl"), 0.3), Source(str(tmp_path / "b.jsonl"), 1.0)],
                               lambda r: 1, max_tokens=4, order="stream", shuffle_buffer=0, sort_window=0, seed=7)
    keys = [r.key for g in batches for r in g.records]
    assert len(keys) == 64 and keys[:24] == ("a0 b0 b1 b2 b3 a2 b4 b5 a3 b6 a4 b7 b8 a5 b9 b10 b11 b12 b13 b14 b15 "
                                             "a9 b16 a10").split()


def test_stream_order_spreads_a_weighted_sources_copies_over_the_epoch(tmp_path):
    """Its copies came one after the other: with no shuffle buffer 925 of 1,000 records had both copies
    in one batch, so the weight acted as extra loss on a batch, not as a second pass."""
    a = write_source(tmp_path / "a.jsonl", "a", 1000)
    b = write_source(tmp_path / "b.jsonl", "b", 1500)
    batches = list(StreamingBatches([Source(a, 2.0), Source(b, 1.5)], length, max_tokens=60, order="stream",
                                    shuffle_buffer=0, sort_window=0, seed=2))
    where = collections.defaultdict(list)
    for n, batch in enumerate(batches):
        for record in batch.records:
            where[record.key].append(n)
    a_keys = [k for k in where if k.startswith("a")]
    assert len(a_keys) == 1000 and all(len(where[k]) == 2 for k in a_keys)
    apart = [(where[k][1] - where[k][0]) / len(batches) for k in a_keys]
    assert min(apart) > 0.45 and max(apart) < 0.55   # half an epoch apart
    b_counts = collections.Counter(len(where[k]) for k in where if k.startswith("b"))
    assert set(b_counts) == {1, 2} and abs(b_counts[2] - 750) < 80   # the half pass: each record with p 0.5
    for shares in window_shares(batches):   # each stretch still holds each source at its share
        assert abs(shares["a"] - 2000 / 4250) <= 0.05, shares


@pytest.mark.parametrize("order", ["shuffle", "stream", "sequential"])
def test_a_source_the_length_limits_leave_out_whole_is_named(tmp_path, caplog, order):
    """Given weight 3, it gave nothing, and only a running count of skipped records named no file."""
    short = write_source(tmp_path / "short.jsonl", "s", 300, words=lambda i: 2)
    long = write_source(tmp_path / "long.jsonl", "l", 1500, words=lambda i: 30)
    some = write_source(tmp_path / "some.jsonl", "m", 100, words=lambda i: 2 + 28 * (i % 2))
    tiny = write_source(tmp_path / "tiny.jsonl", "t", 5, words=lambda i: 40)
    with caplog.at_level("WARNING", logger="tasu.data"):
        batches = StreamingBatches([short, Source(long, 3.0), some, tiny], length, max_tokens=60, max_length=20,
                                   order=order, seed=1)
        assert sum(len(b.records) for b in batches) == 350
    said = [r.getMessage() for r in caplog.records]
    assert [m.split(":")[0] for m in said] == [long, tiny]   # the long one as soon as 1,000 were, the tiny at the end
    assert said[0].startswith(f"{long}: its first 1000 records of this process are outside the length limits "
                              "(min_length 1, max_length 20: ") and "so none of them is used" in said[0]
    assert said[1].startswith(f"{tiny}: all its 5 record(s) of this process") and "so none is used" in said[1]


def test_a_bad_line_met_in_shuffled_order_names_its_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps({"key": f"u{i}", "task": "ASR", "target": "w w"}) for i in range(50)]
    lines[36] = '{"key": "u36", "task": "ASR"}'
    path.write_text("\ufeff" + "\n\n".join(lines) + "\n")   # a BOM and blank lines between records
    with pytest.raises(DataError) as err:
        list(StreamingBatches([str(path)], length, max_tokens=60, seed=5))
    assert str(err.value) == f"{path}:73: target: missing"
    missing = tmp_path / "absent.jsonl"
    with pytest.raises(DataError, match="absent.jsonl: cannot open"):
        list(StreamingBatches([str(missing)], length, max_tokens=60))


def data_mix_bench(tmp_path):
    """A runner of bench/data_mix.py (the arguments after --config) on a config of the fixtures' tiny models."""
    import subprocess
    import sys
    from pathlib import Path

    from fixtures import save_tiny_llm, write_sensevoice_dir

    config = tmp_path / "c.yaml"
    config.write_text(f"encoder: {{path: {write_sensevoice_dir(tmp_path / 'enc')}}}\n"
                      f"llm: {{path: {save_tiny_llm(tmp_path / 'llm')}}}\n")
    bench = Path(__file__).parent.parent / "bench" / "data_mix.py"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(bench), "--config", str(config), *args],
                              capture_output=True, text=True, timeout=300)

    return run


def train_files(*files: str) -> str:
    return f"data.train=[{','.join(files)}]"


def test_the_data_mix_bench_refuses_files_it_cannot_tell_apart(tmp_path):
    """It told the sources apart by key and task: a copy of a file took its share (0.0 % and 66.7 %)."""
    a = write_source(tmp_path / "a.jsonl", "a", 30)
    copy = tmp_path / "copy.jsonl"
    copy.write_text(open(a).read())
    b = write_source(tmp_path / "b.jsonl", "b", 30)
    run = data_mix_bench(tmp_path)
    ok = run(train_files(a, b), "--parts", "2")
    assert ok.returncode == 0 and f"{a}: global 50.0 %" in ok.stdout, ok.stderr[-2000:]
    refused = run(train_files(a, str(copy), b))
    assert refused.returncode == 1 and refused.stderr.strip().endswith(
        f"key a-000-000000 (task ASR) is in {a} and in {copy}: this tool tells the files apart by key and task, "
        "so their shares cannot be measured")


def test_the_data_mix_bench_s_stretches_cover_the_epoch(tmp_path):
    """Stretches past the epoch's end counted as 0 % (2 batches in 10 parts: a 50-point gap), the batches after
    the last whole stretch went unseen, and --parts 0 was a ZeroDivisionError."""
    files = train_files(write_source(tmp_path / "a.jsonl", "a", 30), write_source(tmp_path / "b.jsonl", "b", 30))
    run = data_mix_bench(tmp_path)
    three = run(files, "data.max_tokens=1500", "--parts", "2")
    assert three.returncode == 0 and "# 3 batches, 60 records, stretches of 1-2 batches" in three.stdout, \
        three.stderr[-2000:]
    too_many = run(files)
    assert too_many.returncode == 1 and too_many.stderr.strip().endswith(
        "data_mix.py: the epoch has 2 batches, fewer than --parts 10")
    zero = run(files, "--parts", "0")
    assert zero.returncode == 2 and zero.stderr.strip().endswith("argument --parts: must be at least 1, got 0")
