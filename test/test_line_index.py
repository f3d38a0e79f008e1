"""The line index: offsets of a JSONL file's lines, cached beside it and rebuilt when it changes."""
import os

import numpy as np

import tasu.data.line_index as line_index
from tasu.data.line_index import line_number, line_offsets, read_line


def lines_at(path, offsets):
    with open(path, "rb") as f:
        return [read_line(f, int(o)) for o in offsets]


def test_offsets_skip_empty_lines_and_keep_the_last_unterminated_one(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\xef\xbb\xbf{1}\n\n{2}\r\n\r\n{3}\n  \n{4}")
    offsets = line_offsets(path)
    assert offsets.dtype == np.uint64
    assert lines_at(path, offsets) == [b"\xef\xbb\xbf{1}\n", b"{2}\r\n", b"\r\n", b"{3}\n", b"  \n", b"{4}"]
    assert [line_number(path, int(o)) for o in offsets] == [1, 3, 4, 5, 6, 7]
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert len(line_offsets(tmp_path / "empty.jsonl")) == 0


def test_offsets_span_the_scan_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(line_index, "_CHUNK", 7)
    path = tmp_path / "a.jsonl"
    lines = [b"x" * (i % 11) + b"\n" for i in range(1, 60)]
    path.write_bytes(b"".join(lines))
    assert lines_at(path, line_offsets(path)) == [ln for ln in lines if ln != b"\n"]


def test_the_index_is_built_once_and_rebuilt_when_the_file_changes(tmp_path, monkeypatch):
    scans = []
    scan = line_index._scan
    monkeypatch.setattr(line_index, "_scan", lambda p: scans.append(p) or scan(p))
    path = tmp_path / "a.jsonl"
    path.write_text("a\nb\n")
    first = line_offsets(path)
    assert (tmp_path / "a.jsonl.idx").exists() and len(scans) == 1
    assert np.array_equal(line_offsets(path), first) and len(scans) == 1

    stat = path.stat()
    path.write_text("cc\nd\n")   # the same size: the modification time tells it apart
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert lines_at(path, line_offsets(path)) == [b"cc\n", b"d\n"] and len(scans) == 2

    path.write_text("a\nb\nc\n")
    assert len(line_offsets(path)) == 3 and len(scans) == 3

    (tmp_path / "a.jsonl.idx").write_bytes(b"TASUIDX1 garbage")   # a torn or foreign file is rebuilt
    assert len(line_offsets(path)) == 3 and len(scans) == 4

    # the same size and its modification time put back (cp -p, rsync -a, touch -r): read a stale
    # index, a record was lost with exit 0; the change time (and inode) tell it apart
    stat = path.stat()
    path.write_text("a\nbcd\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert lines_at(path, line_offsets(path)) == [b"a\n", b"bcd\n"] and len(scans) == 5


def test_a_read_only_folder_gets_an_index_in_memory(tmp_path, monkeypatch):
    path = tmp_path / "a.jsonl"
    path.write_text("a\nb\n")
    monkeypatch.setattr(line_index.os, "replace", lambda *a: (_ for _ in ()).throw(PermissionError(13, "denied")))
    assert len(line_offsets(path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]   # no index, no temporary left
