"""tasu.encoders: tiny real SenseVoiceSmall / Wav2Vec2ForCTC / HubertForCTC / small CTC encoders,
saved in their real layouts and loaded through ``load_encoder`` / ``load_tokenizer``."""
from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from fixtures import SENTENCES, waveform, write_hf_ctc_dir, write_sensevoice_dir

from tasu.encoders import detect, load_encoder, load_tokenizer, train_sentencepiece
from tasu.simulate import Vocabulary

TEXT = "turn on the kitchen lights"


@pytest.fixture(scope="session")
def sensevoice_dir(tmp_path_factory):
    return write_sensevoice_dir(tmp_path_factory.mktemp("SenseVoiceSmall"))


@pytest.fixture(scope="session")
def sensevoice(sensevoice_dir):
    return load_encoder(sensevoice_dir)


@pytest.fixture(scope="session", params=["wav2vec2", "hubert"])
def hf_dir(request, tmp_path_factory):
    return write_hf_ctc_dir(tmp_path_factory.mktemp(request.param), request.param)


TINY_SMALL_CTC = {"encoder_conf": {"output_size": 32, "attention_heads": 2, "linear_units": 64,
                                   "num_blocks": 2, "dropout_rate": 0.0}}


@pytest.fixture(scope="session")
def small_ctc(tmp_path_factory):
    from tasu.encoders.small_ctc import SmallCTCEncoder

    root = tmp_path_factory.mktemp("small_ctc")
    tokenizer = train_sentencepiece(SENTENCES, vocab_size=40, out_prefix=root / "spm" / "bpe")
    torch.manual_seed(0)
    model = SmallCTCEncoder(tokenizer, TINY_SMALL_CTC)
    model.fit_cmvn([waveform(1.0, seed) for seed in range(4)])
    return model


def batch(*seconds):
    return [waveform(s, seed=i) for i, s in enumerate(seconds)]


def fbank_frames(seconds):  # Kaldi fbank, 25 ms window, 10 ms shift, snip_edges
    return 1 + (int(16000 * seconds) - 400) // 160


def assert_log_probs(log_probs, lengths, vocab_size):
    assert log_probs.shape == (len(lengths), int(lengths.max()), vocab_size)
    probs = log_probs.exp()
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(probs[b, :n].sum(-1), torch.ones(n), atol=1e-4, rtol=0)


# --- layouts -------------------------------------------------------------------------------------

def test_layout_is_detected_from_files(sensevoice_dir, hf_dir, tmp_path):
    assert detect(sensevoice_dir) == "sensevoice"
    assert detect(hf_dir) == "hf_ctc"
    (tmp_path / "notes.txt").write_text("no model here")
    with pytest.raises(ValueError, match="matches no encoder layout"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown encoder type 'whisper'; known encoder types: espnet, hf_ctc, sensevoice, small_ctc"):
        load_tokenizer(sensevoice_dir, encoder_type="whisper")


def test_a_registered_backend_is_found_from_its_files_and_loaded(sensevoice_dir, tmp_path):
    """Adding an encoder kind = one class with @register: detection and both loaders use it."""
    from tasu.encoders import ENCODERS, CTCEncoder, register

    @register("test-char")
    class CharEncoder(CTCEncoder):
        files = "chars.txt"

        @classmethod
        def recognises(cls, root):
            return (root / "chars.txt").is_file()

        @classmethod
        def load_tokenizer(cls, root):
            return load_tokenizer(sensevoice_dir)

        @classmethod
        def from_dir(cls, root, device="cpu", **options):
            return ("loaded", root, device, options)

    try:
        (tmp_path / "chars.txt").write_text("abc")
        assert detect(tmp_path) == "test-char"
        assert load_tokenizer(tmp_path).vocab_size == load_tokenizer(sensevoice_dir).vocab_size
        assert load_encoder(tmp_path, device="meta", x=1) == ("loaded", tmp_path, "meta", {"x": 1})
        with pytest.raises(ValueError, match="already taken"):
            register("test-char")(CharEncoder)
        (tmp_path / "config.yaml").write_text("model: SenseVoiceSmall\n")   # now two kinds claim it
        with pytest.raises(ValueError, match="looks like several encoder kinds .*say which with encoder.type"):
            load_tokenizer(tmp_path)
        assert load_tokenizer(tmp_path, encoder_type="test-char").vocab_size > 0
    finally:
        del ENCODERS["test-char"]


def test_missing_file_is_named(sensevoice_dir, tmp_path):
    copy = shutil.copytree(sensevoice_dir, tmp_path / "sv")
    (copy / "am.mvn").unlink()
    (copy / "model.pt").unlink()
    assert load_tokenizer(copy).vocab_size == load_tokenizer(sensevoice_dir).vocab_size
    with pytest.raises(FileNotFoundError, match="am.mvn"):
        load_encoder(copy)


def test_load_tokenizer_imports_no_encoder_framework(sensevoice_dir, hf_dir, tmp_path):
    """The text-only stage: tokenizers load without funasr, transformers' models or any weights."""
    dirs = {}
    for name, src in (("sensevoice", sensevoice_dir), ("hf", hf_dir)):
        dirs[name] = shutil.copytree(src, tmp_path / name,
                                     ignore=shutil.ignore_patterns("model.pt", "*.safetensors"))
    script = textwrap.dedent(f"""
        import sys
        from tasu.encoders import load_tokenizer
        assert load_tokenizer({str(dirs['sensevoice'])!r}).encode({TEXT!r})
        assert not [m for m in sys.modules if m.startswith(("funasr", "transformers"))]
        assert load_tokenizer({str(dirs['hf'])!r}).encode({TEXT!r})
        loaded = [m for m in sys.modules if m.startswith("funasr") or ".modeling_" in m]
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", script], check=True)


# --- SenseVoiceSmall -----------------------------------------------------------------------------

def test_sensevoice_tokenizer(sensevoice_dir):
    tokenizer = load_tokenizer(sensevoice_dir)
    pieces = json.loads((sensevoice_dir / "tokens.json").read_text())
    assert tokenizer.vocab_size == len(pieces) and tokenizer.blank_id == 0
    assert isinstance(tokenizer, Vocabulary)   # what simulation asks of it
    ids = tokenizer.encode(TEXT)
    assert ids and 0 not in ids and max(ids) < tokenizer.vocab_size
    assert tokenizer.decode(ids) == TEXT
    assert [tokenizer.id_to_piece(i) for i in ids] == [pieces[i] for i in ids]
    assert tokenizer.id_to_piece(0) == "<blank>"
    unknown = tokenizer.encode("turn on the ü lights")   # <unk> is the blank's id: dropped
    assert 0 not in unknown and tokenizer.decode(unknown).split() == ["turn", "on", "the", "lights"]
    assert tokenizer.encode(TEXT.title()) == ids and tokenizer.encode(TEXT.upper()) == ids   # a lower-case vocabulary


def test_a_word_sentencepiece_cannot_spell_leaves_no_bare_word_start_label(sensevoice_dir, small_ctc, capsys):
    """SentencePiece spells "7" as "▁" + <unk>: the <unk> was dropped and the bare "▁" kept, so "turn 7 on"
    had a label more than "turn on", and "7" alone was simulated as "▁" rather than refused."""
    from tasu.cli import main

    for tokenizer in (load_tokenizer(sensevoice_dir), small_ctc.tokenizer):
        assert tokenizer.encode("turn 7 on") == tokenizer.encode("turn on")
        assert tokenizer.encode("7") == tokenizer.encode("7 77") == []
        spelt = [tokenizer.id_to_piece(i) for i in tokenizer.encode("turn 7on")]   # "on" keeps its word start
        assert tokenizer.sp.decode_pieces(spelt) == "turn on" and "\u2581" in spelt
    assert main(["simulate", "--encoder", str(sensevoice_dir), "--text", "7"]) == 1
    assert "spells no token of the encoder's vocabulary" in capsys.readouterr().err


def test_sensevoice_tokens_json_must_match(sensevoice_dir, tmp_path):
    copy = shutil.copytree(sensevoice_dir, tmp_path / "sv")
    (copy / "tokens.json").write_text(json.dumps(["<unk>", "a"]))
    with pytest.raises(ValueError, match="tokens.json"):
        load_tokenizer(copy)


def test_sensevoice_frames_and_posteriors(sensevoice):
    feats, lengths = sensevoice.extract_features(batch(1.0, 1.5))
    expected = [math.ceil(fbank_frames(s) / 6) for s in (1.0, 1.5)]   # LFR: 7 frames every 6
    assert feats.shape == (2, max(expected), 560) and lengths.tolist() == expected
    log_probs, out_lengths = sensevoice(feats, lengths)
    assert out_lengths.tolist() == expected                          # the 4 query frames are gone
    assert_log_probs(log_probs, out_lengths, sensevoice.vocab_size)


def test_sensevoice_matches_funasr_inference_minus_prefix(sensevoice):
    """Our forward == funasr's own SenseVoiceSmall.inference (auto, withitn) without 4 frames."""
    feats, lengths = sensevoice.extract_features(batch(1.2))
    ctc = sensevoice.model.ctc
    captured = []
    original = ctc.log_softmax
    ctc.log_softmax = lambda x: captured.append(original(x)) or captured[-1]
    try:
        sensevoice.model.inference(feats.clone(), lengths.clone(), data_type="fbank", language="auto",
                                   use_itn=True, device="cpu", key=["utt"],
                                   tokenizer=type("Tok", (), {"decode": lambda self, ids: ""})())
    finally:
        del ctc.log_softmax
    reference = captured[0]
    ours, out_lengths = sensevoice(feats, lengths)
    assert reference.shape[1] == ours.shape[1] + 4
    torch.testing.assert_close(ours, reference[:, 4:])
    # blank: SenseVoiceSmall's default blank_id and funasr's CTC loss (torch's default blank) agree
    assert sensevoice.blank_id == sensevoice.model.blank_id == ctc.ctc_loss.blank == 0


def test_sensevoice_query_options(sensevoice_dir, sensevoice):
    feats, lengths = sensevoice.extract_features(batch(1.0))
    woitn = load_encoder(sensevoice_dir, text_norm="woitn")
    assert not torch.allclose(woitn(feats, lengths)[0], sensevoice(feats, lengths)[0])
    with pytest.raises(ValueError, match="language"):
        load_encoder(sensevoice_dir, language="klingon")


# --- Hugging Face CTC ----------------------------------------------------------------------------

def test_hf_tokenizer(hf_dir):
    tokenizer = load_tokenizer(hf_dir)
    vocab = json.loads((hf_dir / "vocab.json").read_text())
    assert tokenizer.vocab_size == len(vocab) and tokenizer.blank_id == vocab["<pad>"]
    assert isinstance(tokenizer, Vocabulary)
    ids = tokenizer.encode("Hello   World's")
    assert [tokenizer.id_to_piece(i) for i in ids] == list("HELLO|WORLD'S")
    assert tokenizer.decode(ids) == "HELLO WORLD'S"             # upper-case vocabulary, double L kept
    assert tokenizer.encode("héllo") == tokenizer.encode("hllo")  # é is not in the vocabulary
    assert tokenizer.encode("he\u0301llo") == tokenizer.encode("héllo")   # NFKC: decomposed spelt as composed
    assert tokenizer.id_to_piece(tokenizer.blank_id) == "<blank>"


def test_hf_frames_and_posteriors(hf_dir):
    encoder = load_encoder(hf_dir)
    feats, lengths = encoder.extract_features(batch(1.0, 1.5))
    assert feats.shape == (2, 24000) and lengths.tolist() == [16000, 24000]
    log_probs, out_lengths = encoder(feats, lengths)
    assert out_lengths.tolist() == [49, 74]                      # conv strides 5 * 8 * 8 = 320
    assert_log_probs(log_probs, out_lengths, encoder.vocab_size)
    if encoder._use_attention_mask:                              # padding is masked out
        alone, _ = encoder(*encoder.extract_features(batch(1.0)))
        torch.testing.assert_close(log_probs[0, :49], alone[0], atol=1e-4, rtol=1e-4)


def test_an_hf_encoder_refuses_a_waveform_too_short_for_one_frame(hf_dir):
    """Shorter than the convolutional front-end's receptive field, alone it failed in torch, and beside a
    longer waveform it was given 0 frames."""
    from tasu.encoders.base import ShortWaveformError

    encoder = load_encoder(hf_dir)
    field = encoder.min_samples
    assert field == 10 + 7 * 5 + 7 * 5 * 8   # the fixture's kernels (10, 8, 8) and strides (5, 8, 8)
    for waves in ([torch.zeros(field - 1)], [waveform(1.0), torch.zeros(field - 1)]):
        with pytest.raises(ShortWaveformError, match=rf"waveform\(s\) \[{len(waves) - 1}\] of the batch are shorter "
                                                     rf"than the encoder's receptive field \({field} samples"):
            encoder.extract_features(waves)
    feats, lengths = encoder.extract_features([torch.zeros(field)])
    assert encoder(feats, lengths)[1].tolist() == [1]


def test_an_hf_model_for_another_sample_rate_is_refused_when_it_loads(hf_dir, tmp_path):
    # tasu feeds every encoder 16 kHz audio; an 8 kHz model would read it at the wrong speed
    other = tmp_path / "8k"
    shutil.copytree(hf_dir, other)
    config = json.loads((other / "preprocessor_config.json").read_text())
    (other / "preprocessor_config.json").write_text(json.dumps({**config, "sampling_rate": 8000}))
    message = (rf"^{re.escape(str(other))}/preprocessor_config.json \(sampling_rate\): the model takes 8000 Hz "
               r"audio, and tasu feeds encoders 16000 Hz audio only")
    with pytest.raises(ValueError, match=message):
        load_encoder(other)


@pytest.mark.parametrize("layout", ["sensevoice", "small_ctc"])
def test_a_funasr_layout_for_another_sample_rate_is_refused_before_anything_is_built_on_it(
        layout, sensevoice_dir, small_ctc, tmp_path):
    if layout == "sensevoice":
        shutil.copytree(sensevoice_dir, tmp_path / "16k")
    else:
        small_ctc.save(tmp_path / "16k")
    assert load_tokenizer(tmp_path / "16k").vocab_size > 2
    for fs, message in ((8000, "the model takes 8000 Hz audio, and tasu feeds encoders 16000 Hz audio only"),
                        ("8k", "'8k' is not a sample rate in Hz")):
        other = tmp_path / str(fs)
        shutil.copytree(tmp_path / "16k", other)
        config = yaml.safe_load((other / "config.yaml").read_text())
        config["frontend_conf"]["fs"] = fs
        (other / "config.yaml").write_text(yaml.safe_dump(config))
        where = rf"^{re.escape(str(other))}/config.yaml \(frontend_conf.fs\): "
        with pytest.raises(ValueError, match=where + re.escape(message)):
            load_tokenizer(other)   # the text-only stage: before a model is trained for it
        with pytest.raises(ValueError, match=where + re.escape(message)):
            load_encoder(other)


def test_an_hf_model_copies_its_own_files_only_and_the_copy_gives_the_same_posteriors(hf_dir, tmp_path):
    from tasu.encoders.registry import backend

    source = tmp_path / "trained"
    shutil.copytree(hf_dir, source)
    (source / "checkpoint-500").mkdir()                    # what a Trainer leaves beside the model
    (source / "checkpoint-500" / "optimizer.pt").write_bytes(b"state")
    (source / ".done").write_text("")
    backend(source).copy_model(source, tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == sorted(p.name for p in hf_dir.iterdir())
    original, copy = load_encoder(source), load_encoder(tmp_path / "copy")
    feats, lengths = original.extract_features(batch(1.0, 1.5))
    torch.testing.assert_close(copy(feats, lengths), original(feats, lengths), atol=0, rtol=0)


def test_a_flat_copy_refuses_two_files_of_one_name(tmp_path):
    from tasu.encoders.base import copy_flat

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "tokens.txt").write_text(d)
    with pytest.raises(ValueError, match=r"b/tokens.txt and .*a/tokens.txt are both named tokens.txt"):
        copy_flat([tmp_path / "a" / "tokens.txt", tmp_path / "b" / "tokens.txt"], tmp_path / "copy")


# --- the small trainable encoder -----------------------------------------------------------------

def test_train_sentencepiece_reserves_blank(small_ctc):
    tokenizer = small_ctc.tokenizer
    assert tokenizer.id_to_piece(0) == "<blank>" and tokenizer.sp.id_to_piece(0) == "<blank>"
    assert tokenizer.sp.unk_id() == 1
    for sentence in SENTENCES:
        ids = tokenizer.encode(sentence)
        assert min(ids) >= 2 and tokenizer.decode(ids) == sentence


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_small_ctc_training_steps_reduce_loss(small_ctc, precision):
    import copy

    model = copy.deepcopy(small_ctc).train().requires_grad_(True)
    feats, lengths = model.extract_features(batch(1.0, 1.3, 0.9))
    labels = [torch.tensor(model.tokenizer.encode(s)) for s in SENTENCES[:3]]
    targets = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True)
    target_lengths = torch.tensor([len(x) for x in labels])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model.ctc_loss(feats, lengths, targets, target_lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    before = feats.clone()
    model(feats, lengths)
    torch.testing.assert_close(feats, before)     # funasr scales its input in place; we don't let it


def test_small_ctc_intermediate_ctc_loss_reads_the_lower_blocks_through_the_same_head(small_ctc):
    """Intermediate CTC: (1 - w) x the final CTC loss + w x the CTC loss of block 1's output through
    the final norm and head, which is what a one-block encoder with the same weights emits."""
    from tasu.encoders.small_ctc import SmallCTCEncoder

    model = small_ctc.eval()
    feats, lengths = model.extract_features(batch(1.0, 1.3))
    labels = [torch.tensor(model.tokenizer.encode(s)) for s in SENTENCES[:2]]
    targets = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True)
    target_lengths = torch.tensor([len(x) for x in labels])
    lower = SmallCTCEncoder(model.tokenizer, {**TINY_SMALL_CTC, "encoder_conf": {
        **TINY_SMALL_CTC["encoder_conf"], "num_blocks": 1}}).eval()
    lower.frontend.cmvn = model.frontend.cmvn
    missing, unexpected = lower.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("encoder.encoders.") for k in unexpected)
    with torch.no_grad():
        final = model.ctc_loss(feats, lengths, targets, target_lengths)
        inter = lower.ctc_loss(feats, lengths, targets, target_lengths)
        mixed = model.ctc_loss(feats, lengths, targets, target_lengths, inter_weight=0.3, inter_block=1)
    assert abs(final - inter) > 1e-3  # the two heads' inputs differ: the test can tell them apart
    torch.testing.assert_close(mixed, 0.7 * final + 0.3 * inter)
    assert all(not block._forward_hooks for block in model.blocks)
    # blocks are counted from 1, the last one's output is the final CTC's, and the final head must train
    for weight, block in ((0.3, 0), (0.3, 2), (1.0, 1), (-0.3, 1)):
        with pytest.raises(ValueError, match=rf"intermediate CTC weight {weight:g} at block {block}: the weight "
                                             r"must lie in \(0, 1\) and the block in 1..1 \(the encoder has 2 blocks\)"):
            model.ctc_loss(feats, lengths, targets, target_lengths, inter_weight=weight, inter_block=block)
    model.check_inter_ctc(0.0, 7)  # no intermediate CTC: any block


def test_small_ctc_log_posteriors_stay_float32_under_bf16_autocast(small_ctc):
    """bf16 training autocasts the encoder body; its CTC head still gives float32 log-posteriors
    that normalise to float32 accuracy (bf16 ones are off by ~1 %, summed over every frame)."""
    feats, lengths = small_ctc.extract_features(batch(1.0, 0.7))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        log_probs, _ = small_ctc(feats, lengths)
    assert log_probs.dtype == torch.float32
    torch.testing.assert_close(log_probs.logsumexp(-1), torch.zeros(log_probs.shape[:2]), atol=1e-5, rtol=0)


def test_small_ctc_save_load(small_ctc, tmp_path):
    from tasu.encoders.small_ctc import SmallCTCEncoder

    small_ctc.save(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == [
        "am.mvn", "bpe.model", "config.yaml", "configuration.json", "model.pt", "tokens.json"]
    assert detect(tmp_path / "enc") == "small_ctc"
    loaded = load_encoder(tmp_path / "enc")
    assert isinstance(loaded, SmallCTCEncoder) and not loaded.training
    assert load_tokenizer(tmp_path / "enc").encode(TEXT) == small_ctc.tokenizer.encode(TEXT)
    waves = batch(1.0, 0.7)
    feats, lengths = loaded.extract_features(waves)
    torch.testing.assert_close(small_ctc.frontend.cmvn, loaded.frontend.cmvn)
    assert lengths.tolist() == [math.ceil(fbank_frames(s) / 4) for s in (1.0, 0.7)]
    log_probs, out_lengths = loaded(feats, lengths)
    assert_log_probs(log_probs, out_lengths, small_ctc.vocab_size)
    small_ctc.eval()
    torch.testing.assert_close(log_probs, small_ctc(*small_ctc.extract_features(waves))[0])


def test_a_small_ctc_save_killed_half_way_leaves_the_saved_encoder(small_ctc, tmp_path, monkeypatch):
    small_ctc.save(tmp_path / "enc")
    for file in (tmp_path / "enc").iterdir():
        file.write_text(f"the earlier {file.name}")   # what a save that replaced it would lose

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)   # after config.yaml, before model.pt
    with pytest.raises(KeyboardInterrupt):
        small_ctc.save(tmp_path / "enc")
    assert {p.name: p.read_text() for p in (tmp_path / "enc").iterdir()} == {
        name: f"the earlier {name}" for name in ["am.mvn", "bpe.model", "config.yaml", "configuration.json",
                                                 "model.pt", "tokens.json"]}


def test_tasu_programs_import_funasr_lean_and_complete_it_on_use(small_ctc, sensevoice_dir, tmp_path):
    """After use_lean_import (the tasu command does it) a small CTC encoder loads without funasr's
    import of all its models; the first use of anything else of the package completes that import
    in the same module objects, and a SenseVoice model (which needs the registry) still loads."""
    small_ctc.save(tmp_path / "enc")
    probe = textwrap.dedent(f"""
        import sys
        from tasu.encoders import load_encoder
        from tasu.funasr_import import use_lean_import
        def everything():  # what funasr's own __init__ imports, AutoModel's module among them
            return "funasr.auto.auto_model" in sys.modules
        use_lean_import()
        encoder = load_encoder({str(tmp_path / "enc")!r})
        assert not everything(), sorted(m for m in sys.modules if m.startswith("funasr"))
        import funasr
        assert not everything()
        from funasr import AutoModel                          # completes the package
        assert everything() and AutoModel.__name__ == "AutoModel" and funasr.__version__
        from funasr.models.sense_voice.model import SenseVoiceEncoderSmall
        assert type(encoder.encoder) is SenseVoiceEncoderSmall   # its module was not imported twice
        assert load_encoder({str(sensevoice_dir)!r}).vocab_size > 0
    """)
    subprocess.run([sys.executable, "-c", probe], check=True)


@pytest.mark.parametrize("lean", [True, False])
def test_loading_an_encoder_leaves_the_root_logger_as_it_was(sensevoice_dir, lean):
    """funasr's package __init__ calls logging.basicConfig(level=INFO): every library's INFO messages were
    printed from then on, and in one process running command after command (the API, a notebook) a later
    command's warnings went to the stderr of the one that loaded the encoder."""
    probe = textwrap.dedent(f"""
        import logging
        from tasu.encoders import load_encoder
        from tasu.funasr_import import use_lean_import
        if {lean}:
            use_lean_import()
        before = (logging.root.level, list(logging.root.handlers))
        assert load_encoder({str(sensevoice_dir)!r}).vocab_size > 0
        import funasr.auto.auto_model   # the package's __init__ has run
        assert (logging.root.level, list(logging.root.handlers)) == before, (before, logging.root.handlers)
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_sensevoice_completes_funasr_first(sensevoice_dir, monkeypatch):
    """SenseVoiceSmall finds its encoder by registry name: loading it completes a lean funasr."""
    import tasu.encoders.sensevoice as sensevoice_module

    calls = []
    original = sensevoice_module.full_funasr
    monkeypatch.setattr(sensevoice_module, "full_funasr", lambda: calls.append(1) or original())
    assert load_encoder(sensevoice_dir).vocab_size > 0 and calls == [1]


def test_small_ctc_needs_cmvn(small_ctc):
    from tasu.encoders.small_ctc import SmallCTCEncoder

    fresh = SmallCTCEncoder(small_ctc.tokenizer, TINY_SMALL_CTC)
    with pytest.raises(RuntimeError, match="fit_cmvn"):
        fresh.extract_features(batch(1.0))


def test_a_waveform_shorter_than_a_frame_shift_is_refused_not_a_crash(small_ctc):
    """funasr's fbank kills the process on an empty waveform; the features refuse it by index."""
    with pytest.raises(ValueError, match=r"waveform\(s\) \[1\] of the batch are shorter than one 10 ms frame"):
        small_ctc.extract_features([waveform(0.5, 0), torch.zeros(0)])
    feats, lengths = small_ctc.extract_features([torch.zeros(160)])   # one frame shift: features
    assert lengths.tolist() == [1] and torch.isfinite(feats).all()


# --- the command line ----------------------------------------------------------------------------

def test_an_am_mvn_of_another_width_or_unreadable_is_refused_naming_it(small_ctc, tmp_path):
    """funasr cuts a CMVN to the features' width: SenseVoice's 560-dim am.mvn beside a 320-dim model ran
    with the wrong statistics, exit 0; a narrower one failed at the first batch, a blank line was an
    IndexError, neither naming the file."""
    from tasu.encoders.fbank import write_cmvn

    small_ctc.save(tmp_path / "enc")
    mvn = tmp_path / "enc" / "am.mvn"
    good = mvn.read_text()
    for width in (560, 80):
        write_cmvn(mvn, torch.stack([torch.zeros(width), torch.ones(width)]))
        with pytest.raises(ValueError, match=rf"^{mvn}: CMVN of {width}-dim features, but the frontend gives 320 "
                                             r"\(lfr_m 4 x n_mels 80\)"):
            load_encoder(tmp_path / "enc")
    mvn.write_text(good + "\n")
    with pytest.raises(ValueError, match=rf"^{mvn}: line 9 is blank"):
        load_encoder(tmp_path / "enc")
    for text in ("<Nnet>\n</Nnet>\n", good.replace(" ]", " x ]")):
        mvn.write_text(text)
        with pytest.raises(ValueError, match=rf"^{mvn}: not a Kaldi nnet CMVN file"):
            load_encoder(tmp_path / "enc")
    mvn.write_text(good)
    torch.testing.assert_close(load_encoder(tmp_path / "enc").frontend.cmvn, small_ctc.frontend.cmvn)


def test_cmvn_is_estimated_utterance_by_utterance_as_over_all_frames():
    """estimate_cmvn sums per utterance (no concatenated copy) and must give funasr's CMVN of all the
    frames at once: shift = -mean, scale = 1 / the population deviation; no frames is an error."""
    from tasu.encoders.fbank import estimate_cmvn

    gen = torch.Generator().manual_seed(0)
    utterances = [torch.randn(n, 6, generator=gen) * torch.linspace(0.5, 8, 6) + torch.linspace(-20, 5, 6)
                  for n in (7, 30, 1, 64)]
    frames = torch.cat(utterances).double()
    expected = torch.stack([-frames.mean(0), 1.0 / frames.std(0, unbiased=False)]).float()
    torch.testing.assert_close(estimate_cmvn(utterances), expected, rtol=1e-6, atol=1e-6)
    constant = estimate_cmvn([torch.full((5, 6), 3.0)])  # a constant dimension: clamped, not infinite
    assert torch.isfinite(constant).all() and constant[1].max() == pytest.approx(1e5)
    with pytest.raises(ValueError, match="no feature frames"):
        estimate_cmvn([torch.zeros(0, 6)])


def test_tasu_simulate_on_sensevoice_dir(sensevoice_dir, capsys):
    from tasu.cli import main

    assert main(["simulate", "--encoder", str(sensevoice_dir), "--text", TEXT]) == 0
    out = capsys.readouterr().out
    tokenizer = load_tokenizer(sensevoice_dir)
    assert any(tokenizer.id_to_piece(i) in out for i in tokenizer.encode(TEXT))


class _RunsACommand:
    def __reduce__(self):
        import os
        return (os.system, ("touch ran",))


def test_released_weights_holding_python_objects_are_refused_naming_the_file(tmp_path, monkeypatch):
    """torch refused them (weights_only) with a message about weights_only that named no file."""
    from fixtures import save_tiny_llm

    from tasu.llm import ModelFilesError, load_llm

    monkeypatch.chdir(tmp_path)
    write_sensevoice_dir(tmp_path / "enc")
    torch.save({"encoder.weight": _RunsACommand()}, tmp_path / "enc" / "model.pt")
    with pytest.raises(ValueError, match=rf"^{tmp_path}/enc/model.pt: holds Python objects besides tensors"):
        load_encoder(tmp_path / "enc")
    save_tiny_llm(tmp_path / "llm")
    (tmp_path / "llm" / "model.safetensors").unlink()
    torch.save({"lm_head.weight": _RunsACommand()}, tmp_path / "llm" / "pytorch_model.bin")
    with pytest.raises(ModelFilesError, match=rf"^{tmp_path}/llm: a weights file \(pytorch_model.bin\) holds Python"):
        load_llm(tmp_path / "llm")
    assert not (tmp_path / "ran").exists()
    write_hf_ctc_dir(tmp_path / "hf", "wav2vec2")   # the Hugging Face CTC loader too (it gave torch's message)
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save({"lm_head.weight": _RunsACommand()}, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(ValueError, match=rf"^{tmp_path}/hf: a weights file \(pytorch_model.bin\) holds Python"):
        load_encoder(tmp_path / "hf")
    assert not (tmp_path / "ran").exists()


def test_a_weights_file_that_is_no_pickle_is_named_for_what_it_is(tmp_path):
    """A git-lfs pointer (a model repository cloned without git-lfs) or a damaged file was said to hold
    Python objects that could run code, or was 'KeyError: 101'."""
    write_sensevoice_dir(tmp_path / "enc")
    model = tmp_path / "enc" / "model.pt"
    model.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 936000000\n")
    with pytest.raises(ValueError, match=r"model.pt: a git-lfs pointer, not the weights: .* run 'git lfs pull'"):
        load_encoder(tmp_path / "enc")
    for junk in (b'{"encoder.weight": [1, 2]}', b"hello, not weights " * 8):
        model.write_bytes(junk)
        with pytest.raises(ValueError, match=r"model.pt: not a readable weights file, damaged or cut short \("):
            load_encoder(tmp_path / "enc")


def test_model_files_that_cannot_be_read_are_named(tmp_path):
    """json's and transformers' messages named no file ('JSONDecodeError', "'list' object has no attribute
    'get'", "look at the above report")."""
    import json

    from tasu.encoders import load_tokenizer

    for name, text, problem in [("tokens.json", "{not json", "not JSON .*: a file of the model's release"),
                                ("configuration.json", "[]", "not a JSON object whose file_path_metas is one"),
                                ("config.yaml", "- a list\n", "the top level must be a mapping"),
                                ("config.yaml", "model: [", "not valid YAML")]:
        write_sensevoice_dir(tmp_path / name)
        (tmp_path / name / name).write_text(text)
        with pytest.raises(ValueError, match=rf"{name}/{re.escape(name)}: {problem}"):
            load_tokenizer(tmp_path / name)
    write_hf_ctc_dir(tmp_path / "hf", "wav2vec2")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["vocab_size"] += 8
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"hf: the weights do not fit the CTC encoder its config.json describes"):
        load_encoder(tmp_path / "hf")


def test_integer_data_for_a_floating_point_weight_is_refused(tmp_path):
    """torch's load_state_dict casts it: int64 weights loaded, and the encoder wrote garbage posteriors."""
    write_sensevoice_dir(tmp_path / "enc")
    model = tmp_path / "enc" / "model.pt"
    state = torch.load(model, weights_only=True)
    name = next(n for n, v in state.items() if v.is_floating_point())
    state[name] = (state[name] * 1000).to(torch.int64)
    torch.save(state, model)
    with pytest.raises(ValueError, match=rf"model.pt: {re.escape(name)} holds torch.int64 values, and .* is a "
                                         r"floating-point weight: not this model's weights"):
        load_encoder(tmp_path / "enc")


def test_a_nan_or_infinity_in_the_weights_or_the_cmvn_is_refused_naming_the_file(small_ctc, tmp_path):
    """Loaded, one NaN made every posterior NaN: compression kept no frame, and every recording decoded to
    the same text as silence would, exit 0 (the log said "no speech"). An infinity too."""
    from safetensors.torch import load_file, save_file

    from fixtures import save_tiny_llm
    from tasu.encoders.fbank import write_cmvn
    from tasu.llm import load_llm
    from tasu.weights import first_non_finite

    write_sensevoice_dir(tmp_path / "enc")
    model = tmp_path / "enc" / "model.pt"
    state = torch.load(model, weights_only=True)
    name = next(n for n, v in state.items() if v.is_floating_point() and v.dim() == 2)
    for bad in (float("nan"), float("-inf")):
        spoilt = {**state, name: state[name].clone()}
        spoilt[name][0, -1] = bad
        torch.save(spoilt, model)
        with pytest.raises(ValueError, match=rf"^{model}: {re.escape(name)} holds NaN or infinite values: the file is "
                                             "damaged, or the model's training diverged"):
            load_encoder(tmp_path / "enc")
    write_hf_ctc_dir(tmp_path / "hf", "wav2vec2")
    save_tiny_llm(tmp_path / "llm")
    for root, load, what in ((tmp_path / "hf", load_encoder, "CTC encoder"), (tmp_path / "llm", load_llm, "LLM")):
        weights = load_file(root / "model.safetensors")
        name = sorted(n for n, v in weights.items() if v.dim() == 2)[0]
        weights[name][-1, 0] = float("nan")
        save_file(weights, root / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ValueError, match=rf"^{root}: the {what}'s weights: {re.escape(name)} holds NaN"):
            load(root)
    small_ctc.save(tmp_path / "small")
    for bad in (float("nan"), float("inf")):
        cmvn = torch.stack([torch.zeros(320), torch.ones(320)])
        cmvn[1, 7] = bad
        write_cmvn(tmp_path / "small" / "am.mvn", cmvn)
        with pytest.raises(ValueError, match=rf"^{tmp_path}/small/am.mvn: the CMVN holds NaN or infinite values"):
            load_encoder(tmp_path / "small")
    # the sum that tells: float16 sums in float32 (70000 ones overflow float16), float8 too (no CPU sum);
    # a finite tensor whose sum overflows is looked at value by value
    assert torch.ones(70000, dtype=torch.float16).sum().isinf()
    fine = [("ones", torch.ones(70000, dtype=torch.float16)), ("ids", torch.arange(3)),
            ("big", torch.full((4,), 3e38)), ("f8", torch.ones(300, dtype=torch.float8_e4m3fn))]
    assert first_non_finite(fine) is None
    spoilt = torch.tensor([1.0, float("inf")])
    assert first_non_finite([("a", torch.ones(3, dtype=torch.bfloat16)), ("b", spoilt)]) == "b"
    assert first_non_finite([("f8", torch.tensor([1.0, float("nan")]).to(torch.float8_e4m3fn))]) == "f8"


def _drop(path, keep) -> None:
    from safetensors.torch import load_file, save_file
    save_file({k: v for k, v in load_file(path).items() if keep(k)}, path, metadata={"format": "pt"})


def test_weights_that_lack_tensors_of_the_model_are_refused_not_initialised_at_random(tmp_path):
    """transformers loaded a CTC model without its head (a pretraining-only release), or an LLM without a
    layer, with those tensors random and a warning: a frozen encoder or LLM part noise, exit 0."""
    from fixtures import save_tiny_llm

    from tasu.llm import ModelFilesError, load_llm

    write_hf_ctc_dir(tmp_path / "hf", "wav2vec2")
    _drop(tmp_path / "hf" / "model.safetensors", lambda k: not k.startswith("lm_head."))
    with pytest.raises(ModelFilesError, match=rf"^{tmp_path}/hf: the weights lack 2 tensors of the CTC encoder "
                                              r"\(lm_head.bias, lm_head.weight\), which would start random"):
        load_encoder(tmp_path / "hf")
    save_tiny_llm(tmp_path / "llm")
    load_llm(tmp_path / "llm")   # tied embeddings: lm_head.weight is not in the file, and is not missing
    _drop(tmp_path / "llm" / "model.safetensors", lambda k: ".layers.1." not in k)
    with pytest.raises(ModelFilesError, match=rf"^{tmp_path}/llm: the weights lack \d+ tensors of the LLM "
                                              r"\(model.layers.1.input_layernorm.weight, .*, \.\.\.\)"):
        load_llm(tmp_path / "llm")
    (tmp_path / "llm" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")   # cut short
    with pytest.raises(ModelFilesError, match=rf"^{tmp_path}/llm: a safetensors weights file is damaged or cut short"):
        load_llm(tmp_path / "llm")


def test_a_ctc_vocabulary_spelling_ids_the_head_lacks_is_refused(tmp_path):
    """vocab.json with ids past config.json's vocab_size loaded; the first transcript spelling one failed in
    simulation ("token ids must be in [0, 32)"), naming no file."""
    write_hf_ctc_dir(tmp_path / "hf", "wav2vec2")
    vocab = json.loads((tmp_path / "hf" / "vocab.json").read_text())
    size = json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"]
    (tmp_path / "hf" / "vocab.json").write_text(json.dumps(vocab | {"\u00c9": size}))
    with pytest.raises(ValueError, match=rf"^{tmp_path}/hf/vocab.json: spells ids up to {size}, but config.json "
                                         rf"vocab_size is {size}"):
        load_tokenizer(tmp_path / "hf")


def test_a_funasr_config_without_its_frontend_or_with_another_blank_is_named(tmp_path):
    """No frontend_conf was a KeyError naming no file; model_conf.blank_id 5 was ignored (blank 0 used)."""
    write_sensevoice_dir(tmp_path / "enc")
    config = yaml.safe_load((tmp_path / "enc" / "config.yaml").read_text())
    (tmp_path / "enc" / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in config.items()
                                                                 if k != "frontend_conf"}))
    with pytest.raises(ValueError, match=rf"^{tmp_path}/enc/config.yaml: no frontend_conf section"):
        load_encoder(tmp_path / "enc")
    config["model_conf"] = {**(config.get("model_conf") or {}), "blank_id": 5}
    (tmp_path / "enc" / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=rf"^{tmp_path}/enc/config.yaml: model_conf.blank_id is 5: tasu reads"):
        load_tokenizer(tmp_path / "enc")


@pytest.mark.parametrize("field, value", [("frame_shift", 0), ("frame_length", -25), ("lfr_n", 0), ("lfr_m", 0),
                                          ("n_mels", 0), ("lfr_n", 6.5), ("frame_shift", "10")])
def test_a_frontend_conf_the_fbank_cannot_run_is_refused_when_the_config_is_read(tmp_path, field, value):
    """frame_shift 0 killed the process with SIGFPE at the first batch, lfr_n 0 was a ZeroDivisionError:
    neither said which file or field."""
    write_sensevoice_dir(tmp_path / "enc")
    config = yaml.safe_load((tmp_path / "enc" / "config.yaml").read_text())
    config["frontend_conf"][field] = value
    (tmp_path / "enc" / "config.yaml").write_text(yaml.safe_dump(config))
    expected = rf"^{tmp_path}/enc/config.yaml: frontend_conf.{field} is {re.escape(repr(value))}: it must be"
    with pytest.raises(ValueError, match=expected):
        load_tokenizer(tmp_path / "enc")
    with pytest.raises(ValueError, match=expected):
        load_encoder(tmp_path / "enc")


def test_a_bf16_hugging_face_ctc_release_is_read_in_float32(tmp_path):
    """transformers kept it in bf16 (dtype "auto"), and its first batch of float32 samples failed in torch."""
    from transformers import AutoModelForCTC

    write_hf_ctc_dir(tmp_path / "hf", "wav2vec2")
    shutil.copytree(tmp_path / "hf", tmp_path / "bf16")
    AutoModelForCTC.from_pretrained(tmp_path / "hf", dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    encoder = load_encoder(tmp_path / "bf16")
    assert {p.dtype for p in encoder.parameters()} == {torch.float32}
    feats, lengths = encoder.extract_features([waveform(0.5)])
    assert encoder(feats, lengths)[0].dtype == torch.float32


def test_a_damaged_or_mismatched_model_pt_is_named(tmp_path):
    """An interrupted copy gave 'Invalid argument' or EOFError, a CTC head of another size torch's multi-line
    size mismatch: none named the file."""
    write_sensevoice_dir(tmp_path / "enc")
    weights = tmp_path / "enc" / "model.pt"
    good = weights.read_bytes()
    for damaged in (good[:len(good) // 2], b""):
        weights.write_bytes(damaged)
        with pytest.raises(ValueError, match=rf"^{weights}: not a readable weights file, damaged or cut short"):
            load_encoder(tmp_path / "enc")
    state = torch.load(io.BytesIO(good), weights_only=True)
    state["ctc.ctc_lo.weight"] = torch.zeros(7, state["ctc.ctc_lo.weight"].shape[1])
    torch.save(state, weights)
    with pytest.raises(ValueError, match=rf"^{weights}: does not fit .* \(size mismatch for ctc.ctc_lo.weight: "):
        load_encoder(tmp_path / "enc")


def test_hf_tokenizer_feeds_a_vocabulary_of_jamo_its_text_as_it_is(tmp_path):
    """NFKC composes jamo into syllables: a jamo-level vocabulary lost every character of its text."""
    from transformers import Wav2Vec2CTCTokenizer

    from tasu.encoders.tokenizers import HFCTCTokenizer

    vocab = ["<pad>", "<unk>", "|", "ㄱ", "ㅏ", "ㄴ"]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    hf = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                              word_delimiter_token="|")
    assert HFCTCTokenizer(hf, len(vocab), 0).encode("ㄱㅏㄴ ㄱㅏ") == [3, 4, 5, 2, 3, 4]
