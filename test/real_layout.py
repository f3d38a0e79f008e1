"""Model directories at the released sizes, made from nothing: SenseVoiceSmall and Qwen2.5-1.5B shapes.

    write_sensevoice_small(Path("sv"))                     # 234 M parameters, 25,055 BPE pieces
    write_qwen25_1p5b(Path("llm"), num_hidden_layers=2)    # hidden 1,536, vocabulary 151,936

No weights can be downloaded, but the released architectures are public: these writers put the
published configuration values, file names and state-dict key names into a directory with random
weights, so that the real loaders (``tasu.encoders.load_encoder``, ``tasu.llm.load_llm``) can be
tested and benchmarked at the real sizes. The expected key names and shapes are written out here
from the published configuration (SenseVoiceSmall's ``config.yaml``: 1 + 49 SANM blocks, 20
time-pooling blocks, width 512, 4 heads, FFN 2,048, FSMN kernel 11, LFR 7/6 on 80 mel bins; Qwen2.5-
1.5B's ``config.json``), not read back from the code under test.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

SENSEVOICE_VOCAB = 25_055
SENSEVOICE_BPE = "chn_jpn_yue_eng_ko_spectok.bpe.model"
SENSEVOICE_CONFIG = {
    "encoder": "SenseVoiceEncoderSmall",
    "encoder_conf": {"output_size": 512, "attention_heads": 4, "linear_units": 2048, "num_blocks": 50,
                     "tp_blocks": 20, "dropout_rate": 0.1, "positional_dropout_rate": 0.1,
                     "attention_dropout_rate": 0.1, "input_layer": "pe",
                     "pos_enc_class": "SinusoidalPositionEncoder", "normalize_before": True,
                     "kernel_size": 11, "sanm_shfit": 0, "selfattention_layer_type": "sanm"},
    "model": "SenseVoiceSmall",
    "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
    "tokenizer": "SentencepiecesTokenizer",
    "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
    "frontend": "WavFrontend",
    "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10,
                      "lfr_m": 7, "lfr_n": 6, "cmvn_file": None},
}
# SenseVoice's rich-transcription tags, the first user pieces of its BPE model after <unk> <s> </s>
SENSEVOICE_TAGS = (["<|zh|>", "<|en|>", "<|yue|>", "<|ja|>", "<|ko|>", "<|nospeech|>", "<|HAPPY|>", "<|SAD|>",
                    "<|ANGRY|>", "<|NEUTRAL|>", "<|Speech|>", "<|BGM|>", "<|Laughter|>", "<|Applause|>",
                    "<|withitn|>", "<|woitn|>"])


def sensevoice_small_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the released SenseVoiceSmall ``model.pt``, from its published configuration."""
    d, ff, k, lfr = 512, 2048, 11, 80 * 7
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (16, lfr)}   # 7 + 7 languages + 2 text norms

    def block(prefix: str, width_in: int) -> None:
        shapes.update({
            f"{prefix}.self_attn.linear_out.weight": (d, d), f"{prefix}.self_attn.linear_out.bias": (d,),
            f"{prefix}.self_attn.linear_q_k_v.weight": (3 * d, width_in),
            f"{prefix}.self_attn.linear_q_k_v.bias": (3 * d,),
            f"{prefix}.self_attn.fsmn_block.weight": (d, 1, k),
            f"{prefix}.feed_forward.w_1.weight": (ff, d), f"{prefix}.feed_forward.w_1.bias": (ff,),
            f"{prefix}.feed_forward.w_2.weight": (d, ff), f"{prefix}.feed_forward.w_2.bias": (d,),
            f"{prefix}.norm1.weight": (width_in,), f"{prefix}.norm1.bias": (width_in,),
            f"{prefix}.norm2.weight": (d,), f"{prefix}.norm2.bias": (d,),
        })

    block("encoder.encoders0.0", lfr)
    for i in range(49):
        block(f"encoder.encoders.{i}", d)
    shapes.update({"encoder.after_norm.weight": (d,), "encoder.after_norm.bias": (d,)})
    for i in range(20):
        block(f"encoder.tp_encoders.{i}", d)
    shapes.update({"encoder.tp_norm.weight": (d,), "encoder.tp_norm.bias": (d,),
                   "ctc.ctc_lo.weight": (SENSEVOICE_VOCAB, d), "ctc.ctc_lo.bias": (SENSEVOICE_VOCAB,)})
    return shapes


def write_sentencepiece(path: Path, size: int, user_pieces: list[str]) -> None:
    """A BPE SentencePiece model of exactly ``size`` pieces: <unk> <s> </s>, ``user_pieces``, then
    letters and word-initial (▁) letter sequences; SentencePiece's own default ids, as SenseVoice's."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.trainer_spec.model_type = pb.TrainerSpec.BPE
    model.trainer_spec.vocab_size = size
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.escape_whitespaces = True
    Piece = pb.ModelProto.SentencePiece
    pieces = [("<unk>", Piece.UNKNOWN), ("<s>", Piece.CONTROL), ("</s>", Piece.CONTROL)]
    pieces += [(p, Piece.USER_DEFINED) for p in user_pieces]
    letters = "abcdefghijklmnopqrstuvwxyz'"
    normal = ["▁", *letters] + [f"▁{c}" for c in letters]
    n = 0
    while len(pieces) + len(normal) < size:   # ▁aa, ▁ab, ...: distinct word-initial letter strings
        word, q = "", n
        while True:
            word, q = letters[q % 26] + word, q // 26
            if q == 0:
                break
        normal.append(f"▁{word}{letters[n % 26]}")
        n += 1
    pieces += [(p, Piece.NORMAL) for p in normal[:size - len(pieces)]]
    for i, (text, kind) in enumerate(pieces):
        piece = model.pieces.add()
        piece.piece, piece.type, piece.score = text, kind, -float(i)
    path.write_bytes(model.SerializeToString())


def write_sensevoice_small(root: Path, seed: int = 0) -> Path:
    """SenseVoiceSmall's released layout at its real size, with random weights (~940 MB model.pt)."""
    from tasu.encoders.fbank import write_cmvn
    from tasu.encoders.layout import write_configuration_json

    root.mkdir(parents=True, exist_ok=True)
    write_sentencepiece(root / SENSEVOICE_BPE, SENSEVOICE_VOCAB, SENSEVOICE_TAGS)
    (root / "config.yaml").write_text(yaml.safe_dump(SENSEVOICE_CONFIG, sort_keys=False), encoding="utf-8")
    write_configuration_json(root, SENSEVOICE_BPE)
    g = torch.Generator().manual_seed(seed)
    write_cmvn(root / "am.mvn", torch.stack([-10 - torch.rand(560, generator=g), 0.2 + 0.1 * torch.rand(560, generator=g)]))
    state = {}
    for name, shape in sensevoice_small_shapes().items():
        if name.endswith(("norm1.weight", "norm2.weight", "after_norm.weight", "tp_norm.weight")):
            state[name] = torch.ones(shape)
        elif name.endswith(".bias"):
            state[name] = torch.zeros(shape)
        else:
            state[name] = torch.randn(shape, generator=g) * (1 / shape[-1]) ** 0.5
    torch.save(state, root / "model.pt")
    return root


QWEN25_1P5B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960,
    "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151_936,
    "max_position_embeddings": 32_768, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
    "hidden_act": "silu", "bos_token_id": 151_643, "eos_token_id": 151_645,
}
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
                 "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                 "<|repo_name|>", "<|file_sep|>"]
QWEN_REGULAR = 151_643   # byte-level BPE entries before the special tokens (ids 151,643 - 151,664)
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_qwen_tokenizer(root: Path) -> None:
    """A byte-level BPE tokenizer with Qwen2.5's sizes: 151,643 entries then its 22 special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    pairs = [(a, b) for a in alphabet for b in alphabet]        # two-symbol entries and their merges,
    triples = ((a + b, c) for a, b in pairs for c in alphabet)  # then three-symbol ones up to the size
    merges = pairs + [next(triples) for _ in range(QWEN_REGULAR - len(alphabet) - len(pairs))]
    vocab = {c: i for i, c in enumerate(alphabet + [a + b for a, b in merges])}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens(QWEN_SPECIALS)    # ids 151,643 ... 151,664, in Qwen's order
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.save_pretrained(root)


def write_qwen25_1p5b(root: Path, num_hidden_layers: int = 28, seed: int = 0) -> Path:
    """A Qwen2 with Qwen2.5-1.5B's configuration (fewer layers when asked) and random weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    write_qwen_tokenizer(root)
    values = {k: v for k, v in QWEN25_1P5B.items() if k not in ("architectures", "model_type")}
    config = Qwen2Config(**{**values, "num_hidden_layers": num_hidden_layers})
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(root)
    return root


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
