"""The real sizes load through the real loaders: SenseVoiceSmall (234 M parameters, 25,055 pieces) and a
Qwen2 with Qwen2.5-1.5B's widths and vocabulary (2 of its 28 layers, to stay fast), random weights."""
import pytest
import torch

from fixtures import waveform
from real_layout import (QWEN25_1P5B, SENSEVOICE_VOCAB, read_json, sensevoice_small_shapes, write_qwen25_1p5b,
                         write_sensevoice_small)
from tasu.encoders import detect, load_encoder, load_tokenizer


@pytest.fixture(scope="module")
def sensevoice_small(tmp_path_factory):
    return write_sensevoice_small(tmp_path_factory.mktemp("real") / "SenseVoiceSmall")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return write_qwen25_1p5b(tmp_path_factory.mktemp("real") / "Qwen2.5-1.5B", num_hidden_layers=2)


def test_sensevoice_small_loads_with_the_released_keys_and_shapes(sensevoice_small):
    assert detect(sensevoice_small) == "sensevoice"
    tokenizer = load_tokenizer(sensevoice_small)
    assert (tokenizer.vocab_size, tokenizer.blank_id) == (SENSEVOICE_VOCAB, 0)
    assert tokenizer.id_to_piece(4) == "<|en|>" and tokenizer.encode("hello") and 0 not in tokenizer.encode("hi")

    encoder = load_encoder(sensevoice_small)
    built = {k: tuple(v.shape) for k, v in encoder.model.state_dict().items()}
    assert built == sensevoice_small_shapes()        # every released key, nothing more, same shapes
    assert sum(p.numel() for p in encoder.parameters()) == pytest.approx(234.0e6, rel=0.002)

    feats, lengths = encoder.extract_features([waveform(1.0)])
    assert feats.shape[-1] == 560                     # 80 mel bins x LFR 7, every 6 frames
    log_probs, frames = encoder(feats, lengths)
    assert log_probs.shape == (1, int(frames[0]), SENSEVOICE_VOCAB) and int(frames[0]) == lengths[0]
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(1, int(frames[0])))


def test_qwen25_shapes_load_with_their_tokenizer_and_train_a_projector_step(qwen, sensevoice_small):
    from tasu.llm import PromptTokenizer, load_llm, load_llm_tokenizer
    from tasu.model import SpeechLLM
    from tasu.simulate import simulate

    config = read_json(qwen / "config.json")
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
                "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        assert config[key] == QWEN25_1P5B[key], key
    assert config["rope_parameters"]["rope_theta"] == QWEN25_1P5B["rope_theta"]   # transformers 5 nests it
    llm = load_llm(qwen)
    assert llm.get_input_embeddings().weight.shape == (151_936, 1536)
    assert not any(p.requires_grad for p in llm.parameters())
    tokenizer = load_llm_tokenizer(qwen)
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tokenizer.eos_token_id == 151645

    # the original projector at these sizes: LayerNorm(25,055) -> Linear 2,048 -> SiLU -> Linear 1,536
    model = SpeechLLM(llm, tokenizer, _projector(), encoder=None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 2 * 25_055 + 25_055 * 2048 + 2048 + 2048 * 1536 + 1536
    ids = [load_tokenizer(sensevoice_small).encode("turn on the kitchen lights")]
    post = simulate(ids, SENSEVOICE_VOCAB, generator=torch.Generator().manual_seed(0))
    text = PromptTokenizer(tokenizer)(["Transcribe the audio."], ["turn on the kitchen lights"])
    out = model(post, text)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _projector():
    from tasu.projectors import build_projector

    return build_projector("linear-silu", SENSEVOICE_VOCAB, 1536, hidden=2048)
