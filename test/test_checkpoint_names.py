"""Which checkpoint a name means: best, last, step_N with or without zero padding, a checkpoint dir itself;
and a damaged weights file named as such."""
import json
import pickle
import re

import pytest

from tasu.fileio import MetadataError
from tasu.model_io import MODEL_DIR, WEIGHTS, CheckpointError, checkpoint_name, load_trainable, resolve_checkpoint


@pytest.fixture
def exp(tmp_path):
    root = tmp_path / "exp" / "checkpoints"
    for step in (2, 40):
        (root / checkpoint_name(step) / MODEL_DIR).mkdir(parents=True)
        (root / checkpoint_name(step) / MODEL_DIR / WEIGHTS).write_bytes(b"")
    (root / "last").write_text("step_000040\n")
    (root / "best.json").write_text(json.dumps([{"name": "step_000002", "loss": 1.0}]))
    return tmp_path / "exp"


def test_step_names_with_or_without_padding(exp):
    root = exp / "checkpoints"
    assert resolve_checkpoint(exp, "step_2") == root / "step_000002"
    assert resolve_checkpoint(exp, "step_000040") == root / "step_000040"
    assert resolve_checkpoint(exp, "last") == root / "step_000040"
    assert resolve_checkpoint(root / "step_000040") == root / "step_000040"
    # a checkpoint dir itself: its own name is fine, another was ignored and the dir decoded as if it were that one
    assert resolve_checkpoint(root / "step_000040", "step_40") == root / "step_000040"
    assert resolve_checkpoint(root / "step_000040" / MODEL_DIR, "step_000040") == root / "step_000040"
    for other in ("step_2", "last", "bogus"):
        with pytest.raises(FileNotFoundError, match=rf"step_000040 is a checkpoint \(or export\) itself, not an "
                                                    rf"experiment dir: --checkpoint {other} names another"):
            resolve_checkpoint(root / "step_000040", other)


def test_an_unknown_checkpoint_lists_the_ones_there_are(exp):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint step_3 in .* \(it has best, last, step_000002, step_000040\)"):
        resolve_checkpoint(exp, "step_3")
    (exp / "checkpoints" / "last").write_text("step_000099\n")   # a pointer edited or lost, checkpoints there
    with pytest.raises(FileNotFoundError, match=r"checkpoints/last is missing or names no checkpoint there, which "
                                                r"holds step_000002, step_000040: name one with --checkpoint"):
        resolve_checkpoint(exp, "last")
    (exp / "checkpoints" / "best.json").write_text(json.dumps([{"name": "step_000099", "loss": 1.0}]))
    with pytest.raises(FileNotFoundError, match=r"best\.json names step_000099, which is not a complete checkpoint "
                                                r"there \(it holds step_000002, step_000040\): name one with"):
        resolve_checkpoint(exp, "best")   # it named a missing weights file, as if that file were the problem
    step = exp / "checkpoints" / "step_000002"
    (step / MODEL_DIR / WEIGHTS).unlink()   # a checkpoint named directly, without its weights, says so
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(str(step))}: a checkpoint without model/trainable"):
        resolve_checkpoint(step)


def test_a_pointer_names_a_checkpoint_of_its_own_directory_only(exp, tmp_path):
    """An edited best.json or last could lead to another experiment's model, which decoding would then
    report as this one's; an empty last used to name checkpoints/ itself."""
    other = tmp_path / "other" / "checkpoints" / "step_000003"
    (other / MODEL_DIR).mkdir(parents=True)
    (other / MODEL_DIR / WEIGHTS).write_bytes(b"")
    root = exp / "checkpoints"
    (root / "best.json").write_text(json.dumps([{"name": "../../other/checkpoints/step_000003"}]))
    with pytest.raises(MetadataError, match=r"best\.json: not a list of \{\"name\": <a checkpoint of this directory>"):
        resolve_checkpoint(exp)
    for pointer in ("../../other/checkpoints/step_000003\n", "\n"):
        (root / "last").write_text(pointer)
        with pytest.raises(FileNotFoundError, match="checkpoints/last is missing or names no checkpoint there"):
            resolve_checkpoint(exp, "last")


@pytest.mark.parametrize("content, problem", [
    ("[{", r"not JSON \(Expecting property name enclosed in double quotes, line 1 column 3\)"),
    ('{"name": "step_000002"}', 'not a list of {"name": <a checkpoint of this directory>, ...} entries'),
    ("[{}]", 'not a list of {"name": <a checkpoint of this directory>, ...} entries'),
    (b"[\xff]", "not UTF-8 text"),
    *[(text, r"not JSON that can be read \(a number of more than 4300 digits, or nested too deeply\)")
      for text in ("[" * 100_000 + "]" * 100_000, "[1" + "0" * 5000 + "]")],
])
def test_a_damaged_best_json_is_named_by_its_file(exp, capsys, content, problem):
    from tasu.cli import main

    best = exp / "checkpoints" / "best.json"
    best.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(MetadataError, match=f"^{re.escape(str(best))}: {problem}: tasu writes this file"):
        resolve_checkpoint(exp)
    assert resolve_checkpoint(exp, "last") == exp / "checkpoints" / "step_000040"   # the other names still work
    assert main(["decode", "--exp", str(exp), "--data", str(exp / "none.jsonl"), "--out", str(exp / "d")]) == 1
    assert capsys.readouterr().err.startswith(f"tasu decode: error: {best}: ")   # one line, the file named
    assert not (exp / "d").exists()   # no --out made for a decode that cannot start


def test_a_damaged_weights_file_is_named_and_never_unpickled(tmp_path):
    import torch
    from safetensors.torch import save_file

    ckpt = tmp_path / checkpoint_name(2)
    (ckpt / MODEL_DIR).mkdir(parents=True)
    weights = ckpt / MODEL_DIR / WEIGHTS
    save_file({"projector.weight": torch.ones(4, 4)}, str(weights))
    assert load_trainable(ckpt)["projector.weight"].shape == (4, 4)
    whole = weights.read_bytes()
    for content in (b"", whole[:-10], whole[:5], pickle.dumps({"projector.weight": [1.0]})):
        weights.write_bytes(content)
        with pytest.raises(CheckpointError, match=f"^{re.escape(str(weights))}: damaged: truncated, or not a "
                                                  r"safetensors file \(.+\); use another checkpoint"):
            load_trainable(ckpt)


@pytest.mark.parametrize("tensor, problem", [
    ("int64", "holds int64 values, where trained weights are floating point: not a checkpoint tasu wrote"),
    ("nan", "holds NaN or infinite values: use another checkpoint, or train again"),
    ("inf", "holds NaN or infinite values: use another checkpoint, or train again"),
])
def test_weights_no_training_writes_are_refused(tmp_path, tensor, problem):
    """Whole numbers would load into the float model without a word; NaN would make every output garbage."""
    import torch
    from safetensors.torch import save_file

    ckpt = tmp_path / checkpoint_name(2)
    (ckpt / MODEL_DIR).mkdir(parents=True)
    weights = ckpt / MODEL_DIR / WEIGHTS
    bad = {"int64": torch.ones(4, 4, dtype=torch.int64), "nan": torch.tensor([[0.5, float("nan")]]),
           "inf": torch.tensor([float("-inf")], dtype=torch.bfloat16)}[tensor]
    save_file({"projector.bias": torch.zeros(4), "projector.weight": bad}, str(weights))
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(weights))}: projector.weight {re.escape(problem)}$"):
        load_trainable(ckpt)
    save_file({"projector.weight": torch.ones(2, dtype=torch.bfloat16)}, str(weights))
    assert load_trainable(ckpt)["projector.weight"].dtype == torch.bfloat16   # any float type a run trains in


def test_a_weights_file_is_a_function_of_what_it_holds(tmp_path):
    """safetensors writes its metadata in a hash map's order, which changes from one write to the next:
    the same weights came out as other bytes, and a stage run again with the same result was another
    model to a resume's train.init_from check (it compares the file's sha256)."""
    import torch

    from tasu.config import load_config
    from tasu.experiment import ExperimentConfig
    from tasu.model_io import recorded_llm, trained_vocab, write_model

    (tmp_path / "train.yaml").write_text("encoder: {path: enc}\nllm: {path: llm}\n", encoding="utf-8")
    cfg = load_config(ExperimentConfig, tmp_path / "train.yaml")
    weights = {"projector.w": torch.arange(6.0).reshape(2, 3), "projector.b": torch.ones(3, dtype=torch.bfloat16)}
    written = set()
    for i in range(10):
        ckpt = tmp_path / f"step_{i}"
        (ckpt / MODEL_DIR).mkdir(parents=True)
        write_model(ckpt / MODEL_DIR, weights, cfg, "{}\n", "vocab digest", "llm digest", "base llm digest")
        written.add((ckpt / MODEL_DIR / WEIGHTS).read_bytes())
    assert len(written) == 1
    assert trained_vocab(ckpt) == "vocab digest" and recorded_llm(ckpt) == ("llm digest", "base llm digest")
    loaded = load_trainable(ckpt)
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], v) for k, v in weights.items())
