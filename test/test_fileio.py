import os
import stat

import pytest

from tasu import fileio
from tasu.fileio import atomic_files, atomic_replace, write_atomic


def test_write_atomic_replaces_the_file_with_the_umasks_mode(tmp_path):
    path = tmp_path / "sub" / "best.json"
    old = os.umask(0o027)
    try:
        write_atomic(path, "first\n")
        write_atomic(path, "second ü\n")
    finally:
        os.umask(old)
    assert path.read_text(encoding="utf-8") == "second ü\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640   # not mkstemp's private 0600
    assert os.listdir(path.parent) == ["best.json"]     # no temporary file left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "last"
    write_atomic(path, "step_000001\n")
    with pytest.raises(TypeError):
        write_atomic(path, b"not text")
    assert path.read_text() == "step_000001\n"
    assert os.listdir(tmp_path) == ["last"]


def test_atomic_replace_renames_the_finished_file_with_the_umasks_mode(tmp_path):
    """Any writer that takes a file name (a library's save, a compiler's -o) gets the same guarantees."""
    path = tmp_path / "model.bin"
    path.write_bytes(b"old")
    old = os.umask(0o077)
    try:
        with atomic_replace(path) as tmp:
            assert tmp.parent == tmp_path and tmp != path
            tmp.write_bytes(b"new")
            assert path.read_bytes() == b"old"   # nothing is replaced before the block ends
    finally:
        os.umask(old)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["model.bin"]


def test_a_failed_write_names_the_file_meant_not_its_temporary(tmp_path):
    """ENOSPC (no file named) or a directory in the way (the temporary's random name) named no useful file."""
    (tmp_path / "post.2.ark").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        write_atomic(tmp_path / "post.2.ark", "x")
    assert e.value.filename == str(tmp_path / "post.2.ark")
    with pytest.raises(OSError) as e:
        with atomic_replace(tmp_path / "a.txt"):
            raise OSError(28, "No space left on device")
    assert (e.value.errno, e.value.filename) == (28, str(tmp_path / "a.txt"))
    with pytest.raises(OSError) as e:   # another file's error is its own
        with atomic_replace(tmp_path / "a.txt"):
            open(tmp_path / "missing.wav")
    assert e.value.filename == str(tmp_path / "missing.wav")
    assert sorted(os.listdir(tmp_path)) == ["post.2.ark"]


def test_atomic_replace_removes_its_temporary_and_keeps_the_target_on_an_exception(tmp_path):
    path = tmp_path / "post.1.ark"
    path.write_bytes(b"complete")
    with pytest.raises(KeyboardInterrupt):
        with atomic_replace(path) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt   # a killed job: not an Exception
    assert path.read_bytes() == b"complete"
    assert os.listdir(tmp_path) == ["post.1.ark"]
    with pytest.raises(RuntimeError):   # a writer that never made the file at all (a failed compiler)
        with atomic_replace(tmp_path / "lib.so") as tmp:
            tmp.unlink()
            raise RuntimeError("cc failed")
    assert os.listdir(tmp_path) == ["post.1.ark"]


def test_the_umask_is_read_without_being_changed(monkeypatch):
    """Setting the umask to read it races with threads creating files (the study runs cells in threads)."""
    if not os.path.exists(fileio._PROC_STATUS):
        pytest.skip("no /proc here: the umask can only be read by setting it")
    expected = os.umask(0o022)
    os.umask(expected)

    def refuse(mask):
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", refuse)
    assert fileio._umask() == expected


def test_the_umask_is_set_and_put_back_where_proc_does_not_show_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_PROC_STATUS", str(tmp_path / "absent"))
    old = os.umask(0o027)
    try:
        assert fileio._umask() == 0o027
        assert os.umask(0o027) == 0o027   # put back
    finally:
        os.umask(old)


def test_a_file_that_cannot_be_made_is_named_not_its_temporary(tmp_path):
    target = tmp_path / "no_such_dir" / "hyp.trn"
    with pytest.raises(FileNotFoundError) as caught:
        with atomic_replace(target):
            pass
    assert (caught.value.filename, caught.value.strerror) == (str(target), "No such file or directory")


def test_atomic_files_moves_each_written_file_in_and_keeps_the_others(tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "train.log").write_text("still being written\n")
    (out / "model.bin").write_text("old weights")
    with atomic_files(out) as scratch:
        assert scratch.parent == out and scratch.name.startswith(".")
        (scratch / "model.bin").write_text("new weights")
        (scratch / "sub").mkdir()
        (scratch / "sub" / "vocab.txt").write_text("a\nb\n")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["model.bin", "sub", "sub/vocab.txt",
                                                                       "train.log"]
    assert (out / "model.bin").read_text() == "new weights"
    assert (out / "train.log").read_text() == "still being written\n"
    private = tmp_path / "private"   # a writer that makes its files 0600 (safetensors does)
    with atomic_files(private) as scratch:
        (scratch / "model.safetensors").write_bytes(b"w")
        os.chmod(scratch / "model.safetensors", 0o600)
    assert stat.S_IMODE((private / "model.safetensors").stat().st_mode) == 0o666 & ~fileio._umask()
    with atomic_files(tmp_path / "new" / "dir") as scratch:   # made where missing
        (scratch / "a").write_text("x")
    assert (tmp_path / "new" / "dir" / "a").read_text() == "x"


def test_atomic_files_moves_nothing_when_the_writer_fails(tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "config.yaml").write_text("old config")
    with pytest.raises(KeyboardInterrupt):
        with atomic_files(out) as scratch:
            (scratch / "config.yaml").write_text("new config")
            (scratch / "model.bin").write_text("half of the weig")
            raise KeyboardInterrupt   # killed while the weights were being written
    assert [p.name for p in out.iterdir()] == ["config.yaml"] and (out / "config.yaml").read_text() == "old config"
