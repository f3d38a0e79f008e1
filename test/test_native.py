"""The C-kernel loader: compiled once into the cache, a clear fallback, and the switches."""
import os
import shutil

import pytest
import torch

from tasu.native import Kernels, torch_ops_only

HAS_CC = shutil.which(os.environ.get("CC", "cc")) is not None
SOURCE = """
#include <stdint.h>
void scale(float *x, int64_t n, int threads) {
#pragma omp parallel for num_threads(threads)
  for (int64_t i = 0; i < n; i++) x[i] *= 2.0f;
}
"""


@pytest.fixture
def kernels(tmp_path, monkeypatch):
    """A one-function library built into an empty cache."""
    source = tmp_path / "scale.c"
    source.write_text(SOURCE)
    monkeypatch.setenv("TASU_KERNEL_DIR", str(tmp_path / "cache"))
    return Kernels(source, {"scale": "pit"})


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_compiled_once_then_loaded_from_the_cache(kernels, tmp_path):
    lib = kernels.library()
    x = torch.arange(5, dtype=torch.float32)
    lib.scale(x.data_ptr(), 5, 2)
    assert x.tolist() == [0, 2, 4, 6, 8]
    built = list((tmp_path / "cache").glob("scale_*.so"))
    assert len(built) == 1 and not list((tmp_path / "cache").glob("*.so.*"))   # no temp file left
    again = Kernels(kernels.source, kernels.signatures)
    mtime = built[0].stat().st_mtime_ns
    assert again.library() is not None and built[0].stat().st_mtime_ns == mtime
    kernels.source.write_text(SOURCE + "\n/* changed */\n")                   # new source, new library
    assert Kernels(kernels.source, kernels.signatures).library() is not None
    assert len(list((tmp_path / "cache").glob("scale_*.so"))) == 2


def test_a_failed_build_warns_once_and_gives_none(kernels, monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level("WARNING", logger="tasu.native"):
        assert kernels.library() is None and kernels.library() is None
    assert len([r for r in caplog.records if "scale.c not built" in r.message]) == 1


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_a_compiler_error_is_reported(kernels, caplog):
    kernels.source.write_text("this is not C")
    with caplog.at_level("WARNING", logger="tasu.native"):
        assert kernels.library() is None
    assert "error" in caplog.text


def test_switched_off_by_the_environment(kernels, monkeypatch, tmp_path):
    monkeypatch.setenv("TASU_CPU_KERNELS", "0")
    assert kernels.library() is None and not (tmp_path / "cache").exists()


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_usable_only_for_contiguous_float32_and_int64_cpu_tensors(kernels):
    x = torch.zeros(4, 3)
    assert kernels.usable(x, torch.zeros(2, dtype=torch.long)) is not None
    assert kernels.usable(x.t()) is None
    assert kernels.usable(x.double()) is None
    assert kernels.usable(x.half()) is None
    with torch_ops_only():
        assert kernels.usable(x) is None
    assert kernels.usable(x) is not None
