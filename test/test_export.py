"""``tasu export`` of a model whose encoder is an ESPnet experiment: the encoder travels as its model
files, without the experiment's checkpoints, logs and decodes. (An export's decoding, of a SenseVoice
model trained by ``tasu train``, is tested in test_api.py.)"""
from pathlib import Path

from fixtures import save_tiny_llm
from test_encoder_espnet import write_recipe


def write_checkpoint(root: Path, encoder: Path, llm: Path) -> Path:
    """A checkpoint dir as training writes it, with the untrained projector of the config's model."""
    from tasu.config import load_config
    from tasu.data.prompts import DEFAULT_PROMPTS
    from tasu.experiment import ExperimentConfig
    from tasu.model_io import MODEL_DIR, build_model, encoder_tokenizer, llm_digest, write_model
    from tasu.simulate.base import vocab_digest

    (root / "train.yaml").write_text(f"""
encoder: {{path: {encoder}}}
llm: {{path: {llm}, lora: {{r: 2, alpha: 4.0}}}}
projector: {{name: linear-silu, options: {{hidden: 32}}}}
""", encoding="utf-8")
    cfg = load_config(ExperimentConfig, root / "train.yaml")
    model = build_model(cfg, audio=False)
    ckpt = root / "ckpt"
    (ckpt / MODEL_DIR).mkdir(parents=True)
    write_model(ckpt / MODEL_DIR, model.trainable_state_dict(), cfg, DEFAULT_PROMPTS.read_text(encoding="utf-8"),
                vocab_digest(encoder_tokenizer(cfg)), llm_digest(llm))
    return ckpt


def test_an_espnet_encoder_is_exported_as_its_model_files_and_reads_as_the_original(tmp_path, monkeypatch):
    from tasu.dump import encoder_digest
    from tasu.encoders import load_tokenizer
    from tasu.export import ENCODER_DIR, export
    from tasu.model_io import load_trained

    encoder = write_recipe(tmp_path / "asr1")   # valid.acc.ave.pth beside checkpoint.pth and 1epoch.pth
    (encoder / "decode_asr_valid.acc.ave" / "test").mkdir(parents=True)
    (encoder / "decode_asr_valid.acc.ave" / "test" / "text").write_text("utt1 a decode\n")
    (encoder / "train.log").write_text("epoch 1\n")
    ckpt = write_checkpoint(tmp_path, encoder, save_tiny_llm(tmp_path / "llm"))

    out = export(ckpt, tmp_path / "exported")
    monkeypatch.chdir(tmp_path)   # not the recipe: the export's encoder files are found in it
    exported = out / ENCODER_DIR
    assert sorted(p.name for p in exported.iterdir()) == ["bpe.model", "config.yaml", "feats_stats.npz",
                                                          "valid.acc.ave.pth"]
    assert encoder_digest(exported) == encoder_digest(encoder)   # dumps of the original serve the export
    text = "turn on the kitchen lights"
    assert load_tokenizer(exported).encode(text) == load_tokenizer(encoder).encode(text) != []
    # the export loads as Speech2Text loads it (its text-only model: without espnet, no encoder weights)
    _, cfg, _, _ = load_trained(out, audio=False, overrides=(f"encoder.path={exported}", f"llm.path={out / 'llm'}"))
    assert cfg.encoder.path == str(exported)


def test_a_checkpoint_whose_base_models_moved_exports_with_set(tmp_path, capsys):
    """The config of a model trained on another machine names its LLM there: as for decoding, ``--set``
    says where it is now, and the export's config names its own copy."""
    from tasu.cli import main
    from tasu.config import read_mapping

    ckpt = write_checkpoint(tmp_path, write_recipe(tmp_path / "asr1"), save_tiny_llm(tmp_path / "llm"))
    moved = (tmp_path / "llm").rename(tmp_path / "llm_here")
    capsys.readouterr()   # what saving the LLM printed
    assert main(["export", "--exp", str(ckpt), "--out", str(tmp_path / "exported")]) == 1
    assert capsys.readouterr().err == (f"tasu export: error: llm.path '{tmp_path / 'llm'}' is not a directory: the "
                                       "checkpoint's config names it: pass --set llm.path=DIR with the directory "
                                       "on this machine\n")
    assert not (tmp_path / "exported").exists()
    assert main(["export", "--exp", str(ckpt), "--out", str(tmp_path / "exported"), "--set", f"llm.path={moved}"]) == 0
    config = read_mapping(tmp_path / "exported" / "model" / "config.yaml")
    assert (config["llm"]["path"], config["encoder"]["path"]) == ("llm", "encoder")
    assert (tmp_path / "exported" / "llm" / "config.json").is_file()
