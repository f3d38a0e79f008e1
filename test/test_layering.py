"""Which parts of tasu may import which: inference never needs the training engine."""
import subprocess
import sys


def test_decoding_imports_nothing_of_training():
    # A fresh interpreter: the test session has imported the trainer already.
    code = ("import sys, tasu.api, tasu.decode, tasu.export, tasu.model_io; "
            "print(' '.join(m for m in sys.modules if m.startswith('tasu.train')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def test_simulation_imports_no_encoder():
    # The package's own light modules, the posterior type and the registry class (which imports
    # nothing): not the learned simulator (a model module), not the encoders.
    code = "import sys, tasu.simulate; print(' '.join(m for m in sys.modules if m.startswith('tasu.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(loaded) == ["tasu.posteriors", "tasu.registry", "tasu.simulate", "tasu.simulate.base",
                              "tasu.simulate.config", "tasu.simulate.rules", "tasu.simulate.show"]


def test_the_learned_simulator_is_imported_when_named():
    code = ("import sys, tasu.simulate; tasu.simulate.lookup('learned'); "
            "print(' '.join(m for m in sys.modules if m.startswith('tasu.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "tasu.simulate.learned" in loaded
    assert not [m for m in loaded if m.startswith(("tasu.encoders", "tasu.train", "tasu.model"))]
