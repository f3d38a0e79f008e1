"""Typed configs: YAML + overrides checked against dataclasses, errors naming file and key."""
import re
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from tasu.config import ConfigError, load_config, require_dir, to_dict


@dataclass
class Optim:
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 200

    def check(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass
class Lora:
    r: int = 8
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class Experiment:
    mode: Literal["text", "audio", "mixed"] = "text"
    optim: Optim = field(default_factory=Optim)
    lora: Optional[Lora] = None
    train: list[str] = field(default_factory=list)
    use_bf16: bool = False


def write(tmp_path, text):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_fill_the_dataclasses(tmp_path):
    path = write(tmp_path, "mode: mixed\noptim:\n  lr: 1.0e-4\n  betas: [0.8, 0.99]\nlora:\n  r: 4\n")
    cfg = load_config(Experiment, path, ["optim.warmup_steps=10", "train=[a.jsonl, b.jsonl]", "use_bf16=true"])
    assert cfg.mode == "mixed"
    assert cfg.optim == Optim(lr=1e-4, betas=(0.8, 0.99), warmup_steps=10)
    assert cfg.lora == Lora(r=4)
    assert cfg.train == ["a.jsonl", "b.jsonl"] and cfg.use_bf16 is True
    assert to_dict(cfg)["optim"]["betas"] == [0.8, 0.99]


def test_integers_are_accepted_as_floats_but_not_the_reverse(tmp_path):
    assert load_config(Experiment, None, ["optim.lr=1"]).optim.lr == 1.0
    assert load_config(Experiment, write(tmp_path, "optim:\n  lr: 5e-5\n")).optim.lr == 5e-5  # YAML 1.1: a string
    with pytest.raises(ConfigError, match=r"^override 'optim.warmup_steps=2.5': optim.warmup_steps: expected an "
                                          r"integer, got 2.5$"):
        load_config(Experiment, None, ["optim.warmup_steps=2.5"])


@pytest.mark.parametrize("text, message", [
    ("optim:\n  lrr: 1\n", r"train.yaml: optim: unknown key 'lrr' \(did you mean 'lr'\?\)"),
    ("mode: txt\n", r"train.yaml: mode: expected one of 'text', 'audio', 'mixed', got 'txt'"),
    ("optim:\n  lr: fast\n", r"train.yaml: optim.lr: expected a number, got 'fast'"),
    ("optim:\n  betas: [0.9]\n", r"train.yaml: optim.betas: expected a list of 2 items"),
    ("use_bf16: yes please\n", r"train.yaml: use_bf16: expected true or false"),
    ("optim:\n  lr: -1\n", r"train.yaml: optim: lr must be positive, got -1.0"),
    ("- a\n- b\n", r"train.yaml: the top level must be a mapping"),
    ("mode: [\n", r"train.yaml: not valid YAML: [^\n]* \(line 2, column 1\)$"),
    # PyYAML keeps the last of a key given twice: a second optim: section would silently win
    ("optim:\n  lr: 1\nmode: text\noptim:\n  lr: 5\n",
     r"train.yaml: not valid YAML: key 'optim' given twice in one mapping \(first on line 1\) \(line 4, column 1\)$"),
    ("optim: {lr: 1, lr: 2}\n",
     r"train.yaml: not valid YAML: key 'lr' given twice in one mapping \(first on line 1\) \(line 1, column 16\)$"),
])
def test_bad_configs_name_the_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Experiment, write(tmp_path, text))


def test_yaml_merge_keys_merge_and_the_keys_beside_them_win(tmp_path):
    """'<<: *base' was refused ('could not determine a constructor for the tag ...merge')."""
    from tasu.experiment import ExperimentConfig

    text = "base: &base {lr: 1.0e-3, warmup_steps: 10, total_steps: 100}\n"
    cfg = load_config(Experiment, write(tmp_path, "optim: {<<: {lr: 2, betas: [0.5, 0.5]}, lr: 3}\n"))
    assert (cfg.optim.lr, cfg.optim.betas) == (3.0, (0.5, 0.5))
    path = tmp_path / "anchor.yaml"
    path.write_text(text.replace("base:", "optim:") + "train: {max_steps: 5}\n")
    assert load_config(ExperimentConfig, path).optim.total_steps == 100
    with pytest.raises(ConfigError, match="key 'lr' given twice"):   # twice beside the merge: still refused
        load_config(Experiment, write(tmp_path, "optim: {<<: {lr: 2}, lr: 3, lr: 4}\n"))


def test_aliases_nested_in_aliases_are_refused_before_a_message_expands_them(tmp_path):
    """Seven lines of nested aliases (9**7 strings) in a list field hung tasu train, and tasu decode
    reading a checkpoint's config, for minutes and gigabytes: the error message printed the value."""
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]'] + [
        f"{b}: &{b} [{','.join(['*' + a] * 9)}]" for a, b in zip("abcdef", "bcdefg")]
    bomb = "\n".join(lines) + "\noptim: {betas: *g}\n"
    with pytest.raises(ConfigError, match=r"train.yaml: it expands to more than 100,000 values \(aliases nested"):
        load_config(Experiment, write(tmp_path, bomb))
    with pytest.raises(ConfigError, match=r"^override 'optim.betas=.*': it expands to more than 100,000 values"):
        load_config(Experiment, None, ["optim.betas=" + "{" + bomb.replace("\n", ", ").rstrip(", ") + "}"])


def test_lists_nested_too_deeply_are_a_yaml_error_naming_the_file(tmp_path):
    """5000 '[' overflowed PyYAML's recursion: 'RecursionError: maximum recursion depth exceeded', no file
    named; a few hundred loaded, and writing the config back (a dry run, a checkpoint) overflowed."""
    for n in (300, 5000):
        with pytest.raises(ConfigError, match=r"train.yaml: not valid YAML: nested too deeply \(line 1, column"):
            load_config(Experiment, write(tmp_path, "optim: " + "[" * n + "]" * n + "\n"))
        with pytest.raises(ConfigError, match=r"^override 'optim.betas=\[+\]+': the value is not valid YAML "
                                              r"\(nested too deeply"):
            load_config(Experiment, None, ["optim.betas=" + "[" * n + "]" * n])
    nested = "[" * 90 + "0.9, 0.9" + "]" * 90   # deep, but not too deep: it loads and is checked
    with pytest.raises(ConfigError, match=r"train.yaml: optim.betas: expected a list of 2 items, got \[\["):
        load_config(Experiment, write(tmp_path, f"optim: {{betas: {nested}}}\n"))


def test_an_error_names_the_override_that_set_the_key_and_an_override_fills_a_null_section(tmp_path):
    """'optim.lr=' was blamed on the file (a checkpoint's config.yaml looked damaged); llm.lora.r=4 on a
    config saved with 'lora: null' was "'lora' is not a mapping"."""
    from tasu.experiment import ExperimentConfig

    path = write(tmp_path, "optim: {lr: 1.0e-3}\nllm: {lora: null}\n")
    with pytest.raises(ConfigError) as e:
        load_config(ExperimentConfig, path, ["train.seed=3", "optim.lr="])
    assert str(e.value) == "override 'optim.lr=': optim.lr: expected a number, got ''"
    cfg = load_config(ExperimentConfig, path, ["llm.lora.r=4"])
    assert cfg.llm.lora.r == 4 and cfg.llm.lora.alpha == 16.0
    with pytest.raises(ConfigError) as e:
        load_config(ExperimentConfig, write(tmp_path, "optim: {lr: fast}\n"), ["train.seed=3"])
    assert str(e.value) == f"{tmp_path / 'train.yaml'}: optim.lr: expected a number, got 'fast'"


def test_an_error_is_named_after_the_override_that_made_it_and_only_that(tmp_path):
    """A misspelt section in an override, and a check across keys that an override failed, were blamed
    on the file; a file's own error across keys was blamed on an override of an unrelated key in it."""
    from tasu.experiment import ExperimentConfig

    path = write(tmp_path, "optim: {lr: 1.0e-3}\n")
    for overrides, message in (
            (["train.seed=3", "optimm.lr=1"], "override 'optimm.lr=1': top level: unknown key 'optimm'"),
            (["train.max_steps=99999", "optim.lr=2e-4"], "override 'train.max_steps=99999': top level: "
                                                         "train.max_steps 99999 is past optim.total_steps 15000"),
            (["optim.warmup_steps=50", "optim.total_steps=40"], "override 'optim.total_steps=40': optim: need "
                                                                "1 <= warmup_steps < total_steps, got 50 and 40")):
        with pytest.raises(ConfigError) as e:
            load_config(ExperimentConfig, path, overrides)
        assert str(e.value).startswith(message), e.value
    path = write(tmp_path, "optim: {warmup_steps: 500, total_steps: 100}\n")
    with pytest.raises(ConfigError) as e:
        load_config(ExperimentConfig, path, ["optim.lr=1e-4", "train.seed=3"])
    assert str(e.value) == f"{path}: optim: need 1 <= warmup_steps < total_steps, got 500 and 100"


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not of the form key.path=value"):
        load_config(Experiment, None, ["optim.lr"])
    with pytest.raises(ConfigError, match="nope.yaml: cannot read config"):
        load_config(Experiment, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(Experiment, None, ["optim.lr=[1"])
    assert str(err.value) == ("override 'optim.lr=[1': the value is not valid YAML "
                              "(expected ',' or ']', but got '<stream end>' (line 1, column 3))")
    with pytest.raises(ConfigError, match=r"the value is not valid YAML \(key 'lr' given twice"):
        load_config(Experiment, None, ["optim={lr: 1, lr: 2}"])
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("optim:\n  lr: 1 # r\xe9glage\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9\)$"):
        load_config(Experiment, bad)


def test_training_sources_take_a_path_or_a_weighted_mapping(tmp_path):
    from tasu.data.batching import Source
    from tasu.experiment import ExperimentConfig

    text = "data:\n  train:\n    - a.jsonl\n    - {path: b.jsonl, weight: 0.5}\n"
    cfg = load_config(ExperimentConfig, write(tmp_path, text))
    assert cfg.data.train == [Source("a.jsonl", 1.0), Source("b.jsonl", 0.5)]
    assert load_config(ExperimentConfig, None, ["data.train=[a.jsonl]"]).data.train == [Source("a.jsonl")]
    # a mapping can only mean a weighted source: its own error, not "expected a string or a mapping"
    for bad, message in (("{path: b.jsonl, wieght: 2}", r"data.train\[0\]: unknown key 'wieght' \(did you mean 'weight'\?\)"),
                         ("{path: b.jsonl, weight: 0}", r"data.train\[0\]: b.jsonl: weight must be a number > 0"),
                         # Python's constructor text named no key
                         ("{weight: 2}", r": data.train\[0\]: path is required$")):
        with pytest.raises(ConfigError, match=message):
            load_config(ExperimentConfig, None, [f"data.train=[{bad}]"])


@pytest.mark.parametrize("override, message", [
    ("train.max_steps=0", "train: max_steps must be >= 1 (or null: as many as the epochs take), got 0"),
    ("train.max_steps=20000", "top level: train.max_steps 20000 is past optim.total_steps 15000, where the learning "
                              "rate has decayed to 0: raise optim.total_steps with it"),
    ("train.init_from=", "train: init_from is empty: name a checkpoint or experiment directory, or null to start "
                         "from scratch"),
    ("train.seed=100000000000000000000", "train: seed must fit in 64 bits, got 100000000000000000000"),
    ("data.prompts=", "data: prompts is empty: name a prompts JSONL, or null for the English set"),
    ("engine.zero_stage=true", "engine.zero_stage: expected one of 0, 1, 2, got True"),
    ("engine.zero_stage=2.0", "engine.zero_stage: expected one of 0, 1, 2, got 2.0"),
    ("train.epochs=0", "train: epochs must be >= 1, got 0"),
    ("train.log_interval=0", "train: log_interval must be >= 1, got 0"),
    ("train.save_interval=0", "train: save_interval must be >= 1, got 0"),
    ("train.valid_interval=-5", "train: valid_interval must be >= 1, got -5"),
    ("train.keep_best=-1", "train: keep_best must be >= 0, got -1"),
    ("optim.lr=-1", "optim: lr must be a number > 0, got -1.0"),
    ("optim.lr=0", "optim: lr must be a number > 0, got 0.0"),
    ("optim.lr=.nan", "optim: lr must be a number > 0, got nan"),
    ("optim.betas=[1.5,-1]", "optim: betas must both be in [0, 1), got [1.5, -1.0]"),
    ("optim.eps=-1e-8", "optim: eps must be a number > 0, got -1e-08"),
    ("optim.weight_decay=.nan", "optim: weight_decay must be a number >= 0, got nan"),
    ("optim.grad_clip=-1", "optim: grad_clip must be a number >= 0, got -1.0"),
    ("compress.topk=0", "compress: topk must be >= 1 (or null: every entry), got 0"),
    ("compress.threshold=0", "compress: threshold must be in (0, 1] (a frame whose blank probability reaches it "
                             "is dropped), got 0.0"),
    ("data.num_workers=-1", "data: num_workers must be >= 0, got -1"),
    ("data.max_batch_size=0", "data: max_batch_size must be >= 1, got 0"),
    ("data.shuffle_buffer=-1", "data: shuffle_buffer must be >= 0, got -1"),
    # a file named '': 'tasu train: error: : cannot open', naming no key
    ("data.train=['']", "data: train[0] is an empty path: name a JSONL file"),
    ("data.train=[a.jsonl, {path: ' ', weight: 2}]", "data: train[1] is an empty path: name a JSONL file"),
    ("data.valid=['']", "data: valid[0] is an empty path: name a JSONL file"),
    ("llm.lora={r: 0}", "llm.lora: r must be >= 1, got 0"),
    ("llm.lora={dropout: 1.0}", "llm.lora: dropout must be in [0, 1), got 1.0"),
    ("llm.lora={target_modules: []}", "llm.lora: target_modules must name the LLM's Linear layers to adapt "
                                      "(q_proj, ...), got []"),
    ("projector.name=nope", "projector: unknown projector 'nope'; known projectors: concat-mlp, conv1d, "
                            "cross-attention, legoslm, linear-silu, qformer"),
    ("projector.options={hiden: 8}", "projector: options: hiden: not an option of projector 'linear-silu' "
                                     "(its options: hidden, sparse)"),
])
def test_a_run_that_would_not_train_is_refused_by_its_key(override, message):
    """Zero steps or epochs saved an untrained checkpoint and exited 0; a zero interval divided by zero;
    compress.topk 0 trained a model no decode could use; a bad projector or LoRA setting, or an
    optimizer setting that makes the loss non-finite, stopped only after the models loaded (or, with
    weight_decay NaN, not at all)."""
    from tasu.experiment import ExperimentConfig

    with pytest.raises(ConfigError, match="^" + re.escape(f"override '{override}': {message}") + "$"):
        load_config(ExperimentConfig, None, [override])


def test_the_train_loop_defaults_and_limits_that_mean_something_pass():
    from tasu.experiment import ExperimentConfig

    cfg = load_config(ExperimentConfig, None, ["train.max_steps=null", "train.keep_best=0", "train.epochs=1",
                                               "train.log_interval=1", "optim.lr=1e-4"])
    assert (cfg.train.max_steps, cfg.train.keep_best, cfg.optim.lr) == (None, 0, 1e-4)


def test_a_model_directory_is_required_by_its_key_with_what_to_do(tmp_path):
    hint = "pass --encoder DIR"
    gone = str(tmp_path / "gone")
    for path, message in ((None, "encoder.path is not set: pass --encoder DIR"),
                          ("", "encoder.path is not set: pass --encoder DIR"),   # would be the working directory
                          (gone, f"encoder.path '{gone}' is not a directory: pass --encoder DIR"),
                          (__file__, f"encoder.path '{__file__}' is not a directory: pass --encoder DIR")):
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            require_dir("encoder.path", path, hint)
    assert require_dir("encoder.path", str(tmp_path), hint) == tmp_path


def test_a_schedule_of_steps_at_rate_0_alone_is_refused_when_a_training_starts(tmp_path, capsys):
    """DeepSpeed's warm-up runs the first two steps at a rate of 0: a run of max_steps 2 saved its initial
    weights as trained, exit 0, and a warm-up of 1 was made 2 unasked. Refused by tasu train (--dry-run
    too), while the saved config of such a run of an older tasu still reads (decode, export)."""
    from tasu.cli import main
    from tasu.experiment import ExperimentConfig, check_schedule

    cfg = load_config(ExperimentConfig, None, ["train.max_steps=2", "optim.warmup_steps=2"])
    with pytest.raises(ConfigError, match=r"^train.max_steps 2: the first 2 steps run at a learning rate of 0, so the "
                                          r"run would save its initial weights as trained: take 3 or more$"):
        check_schedule(cfg)
    check_schedule(load_config(ExperimentConfig, None, ["train.max_steps=3", "optim.warmup_steps=2"]))
    path = tmp_path / "train.yaml"
    path.write_text("optim: {warmup_steps: 1}\n")
    assert main(["train", "--config", str(path), "--dry-run"]) == 1
    assert capsys.readouterr().err == ("tasu train: error: optim.warmup_steps 1: DeepSpeed's warm-up takes at least 2 "
                                       "steps (it would make it 2 unasked): set 2 or more\n")
