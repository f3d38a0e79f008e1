"""Tiny, randomly initialised instances of the real model classes, saved in their real layouts.

Each writer builds the actual class a user's directory would hold (funasr's ``SenseVoiceSmall``,
transformers' ``Wav2Vec2ForCTC`` / ``HubertForCTC`` / ``Qwen2ForCausalLM`` with a real fast
tokenizer) from a tiny config and saves it the way the release or ``save_pretrained`` does, so tests
load them through tasu's loaders exactly as a user's download would be loaded.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import sentencepiece as spm
import torch
import yaml

SENTENCES = [
    "turn on the kitchen lights", "turn off the bedroom lights", "what is the weather like today",
    "set an alarm for seven in the morning", "play some music in the living room",
    "what time is it in dublin", "remind me to call alice tomorrow", "how cold is it outside",
]

SENSEVOICE_BPE = "chn_jpn_yue_eng_ko_spectok.bpe.model"
TINY_SENSEVOICE_ENCODER = {
    "output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 2, "tp_blocks": 1,
    "dropout_rate": 0.1, "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1,
    "input_layer": "pe", "pos_enc_class": "SinusoidalPositionEncoder", "normalize_before": True,
    "kernel_size": 11, "sanm_shfit": 0, "selfattention_layer_type": "sanm",
}


def waveform(seconds: float, seed: int = 0) -> torch.Tensor:
    """A deterministic 16 kHz test signal in [-1, 1]: two tones and a little noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    wave = 0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.2 * torch.sin(2 * torch.pi * 1250 * t)
    return wave + 0.05 * torch.randn(t.shape, generator=g)


def write_sensevoice_dir(root: Path) -> Path:
    """A SenseVoiceSmall directory in the released layout, with a tiny encoder and BPE vocabulary.

    The BPE model keeps SentencePiece's default ids (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2) as
    SenseVoice's does; config.yaml leaves ``bpemodel`` and ``cmvn_file`` null and
    configuration.json names them, as in the release.
    """
    from tasu.encoders.fbank import write_cmvn
    from tasu.funasr_import import full_funasr

    SenseVoiceSmall = full_funasr().models.sense_voice.model.SenseVoiceSmall

    root.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES), model_prefix=str(root / "bpe"), vocab_size=60,
        model_type="bpe", character_coverage=1.0, minloglevel=2)
    (root / "bpe.model").rename(root / SENSEVOICE_BPE)
    (root / "bpe.vocab").unlink()
    sp = spm.SentencePieceProcessor(model_file=str(root / SENSEVOICE_BPE))
    vocab = sp.get_piece_size()

    config = {
        "encoder": "SenseVoiceEncoderSmall", "encoder_conf": TINY_SENSEVOICE_ENCODER,
        "model": "SenseVoiceSmall",
        "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
        "frontend": "WavFrontend",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                          "frame_shift": 10, "lfr_m": 7, "lfr_n": 6, "cmvn_file": None},
        "dataset": "SenseVoiceCTCDataset",
        "dataset_conf": {"batch_type": "token", "sos": "${model_conf.sos}", "eos": "${model_conf.eos}"},
        "optim": "adamw", "optim_conf": {"lr": 0.00002},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    (root / "configuration.json").write_text(json.dumps({
        "framework": "pytorch", "task": "auto-speech-recognition", "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"}, "model_name_in_hub": {"ms": "", "hf": ""},
        "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                            "tokenizer_conf": {"bpemodel": SENSEVOICE_BPE},
                            "frontend_conf": {"cmvn_file": "am.mvn"}}}), encoding="utf-8")
    (root / "tokens.json").write_text(json.dumps([sp.id_to_piece(i) for i in range(vocab)]),
                                      encoding="utf-8")
    g = torch.Generator().manual_seed(0)
    write_cmvn(root / "am.mvn", torch.stack([-10 - torch.rand(560, generator=g),
                                             0.2 + 0.1 * torch.rand(560, generator=g)]))
    torch.manual_seed(0)
    model = SenseVoiceSmall(encoder="SenseVoiceEncoderSmall", encoder_conf=TINY_SENSEVOICE_ENCODER,
                            input_size=560, vocab_size=vocab, **config["model_conf"])
    torch.save(model.state_dict(), root / "model.pt")
    return root


HF_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "'"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]


def write_hf_ctc_dir(root: Path, architecture: str) -> Path:
    """A ``save_pretrained`` directory of a tiny ``Wav2Vec2ForCTC`` or ``HubertForCTC``.

    The wav2vec2 one uses layer-norm feature encoding with an attention mask, the HuBERT one
    group-norm without (like wav2vec2-base), so both padding conventions are exercised.
    """
    from transformers import (HubertConfig, HubertForCTC, Wav2Vec2Config, Wav2Vec2CTCTokenizer,
                              Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC)

    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(HF_VOCAB)}), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(str(root / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    layer_norm = architecture == "wav2vec2"
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=layer_norm)
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                 conv_dim=(16, 16, 16), conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8),
                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                 vocab_size=len(HF_VOCAB), pad_token_id=tokenizer.pad_token_id,
                 feat_extract_norm="layer" if layer_norm else "group")
    torch.manual_seed(0)
    if architecture == "wav2vec2":
        model = Wav2Vec2ForCTC(Wav2Vec2Config(do_stable_layer_norm=True, **sizes))
    else:
        model = HubertForCTC(HubertConfig(**sizes))
    model.save_pretrained(str(root))
    tokenizer.save_pretrained(str(root))
    extractor.save_pretrained(str(root))
    return root


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLM_CORPUS = ["transcribe the audio", "translate the speech into german", "turn on the kitchen lights",
              "what is the weather like today", "user assistant system", "hello world"]


def save_tiny_llm(path: Path, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """A random 2-layer Qwen2 and a byte-level BPE tokenizer (Qwen's special tokens) in ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(LLM_CORPUS * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = chat_template
    torch.manual_seed(0)
    # initializer_range: with Qwen's 0.02 the frozen tied embeddings (row norm 0.02 * sqrt(32)) cap
    # every logit near 0.6, so no trainable part could ever fit a target.
    config = Qwen2Config(vocab_size=304, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, initializer_range=0.3)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def score_json(value: float, metric: str = "wer") -> str:
    """A score.json as tasu score writes it (its counts give ``value``), without the scored files' digests."""
    if metric == "acc":
        snt, counts = 10000, {"correct": round(value * 100)}
    else:
        errors = round(value * 1000)   # over 100 %: insertions
        sub = min(errors, 100000)
        snt, counts = 1000, {"wrd": 100000, "corr": 100000 - sub, "sub": sub, "del": 0, "ins": errors - sub, "s_err": 0}
    return json.dumps({"metric": metric, "norm": "none", "snt": snt, "value": value, "counts": counts, "details": {},
                       "missing_keys": [], "extra_keys": [], "empty": 0, "looping": 0})


def save_llm_without_tokenizer(llm: Path, dest: Path) -> Path:
    """A copy of the LLM directory ``llm`` without its tokenizer files, as an incomplete download is."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(llm / name, dest / name)
    return dest


@contextlib.contextmanager
def lock_held_elsewhere(directory: Path, what: str) -> Iterator[int]:
    """Another process holding ``tasu.lock.DirLock`` on ``directory`` while in the block; yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from tasu.lock import DirLock; "
                               f"DirLock({str(directory)!r}, {what!r}).acquire(); print('held', flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait()
