import os
import stat

import pytest

from tasu.fileio import write_atomic


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
