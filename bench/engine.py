"""Benchmark of the engine around the model, on CPU with small real models: training, data, decoding.

    python bench/engine.py

Prints ``name: value`` lines; every timing is the median of several repetitions after a warm-up.
The models are built in a temporary directory the way the tests build theirs (``test/fixtures.py``):
the tiny SenseVoice (2 blocks of width 32, BPE vocabulary of 60) and a Qwen2 with the fixtures'
tokenizer but wider and deeper than theirs (4 layers, hidden 256, intermediate 704, 8 heads / 2
key-value heads), so that the LLM, not Python overhead, is most of a step; the projector is
linear-silu with hidden 256. Absolute numbers say little about real sizes (SenseVoice-Small and a
1.5B LLM on a GPU); the ratios and the data-loader rate are what to watch.

- train_text_tokens_per_s, train_audio_tokens_per_s (and *_step_ms): one training step of a batch of
  8 utterances (2-4 s of audio, 5-8 words each) in text-only and in audio mode: posteriors
  (simulation, or the frozen encoder + compression) -> projector -> LLM forward/backward -> AdamW on
  the projector, in one process with plain ``torch.optim.AdamW`` (no DeepSpeed: its engine adds a
  fixed cost per step that does not depend on the mode). The batch is collated beforehand, as the
  trainer's DataLoader workers collate in parallel with the step. Medians of 9 rounds of one step
  of each mode (after 2 warm-up rounds), interleaved so that a change in machine load hits both.
  Tokens are counted as the trainer's log counts them: prompt + speech rows + target.
  text_vs_audio_train_speedup = text tokens/s over audio tokens/s.
- loader_records_per_s_shuffle, loader_records_per_s_stream: ``StreamingBatches`` + the trainer's
  ``Collator`` in text mode over 4,000 generated records in three source files (length-sorted
  windows, LLM and encoder tokenisation), in one process (what one DataLoader worker delivers), in
  the training default order (each epoch a permutation of all sources, read by offset) and in the
  stream order (each file read start to end through a shuffle buffer: the order training used
  before sources were mixed). Medians of interleaved rounds; loader_shuffle_vs_stream is their ratio.
- order_peak_mb_1M, index_build_s_1M, index_load_s_1M: the memory the shuffled order takes for an
  epoch of a 1,000,000-record file (tracemalloc peak while the first batch is planned: line
  index + permutation), and the time to build the line index and to load it from its cache.
- decode_rtf: ``decode_records`` on 16 utterances of 2-4 s of audio, beam 4, batch 8, 20 new tokens
  (the untrained model rarely stops before that): decode wall time / audio seconds.
"""
from __future__ import annotations

import json
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "test"))

from fixtures import SENTENCES, save_tiny_llm, waveform, write_sensevoice_dir  # noqa: E402
from timing import median_ms  # noqa: E402

BATCH, LOADER_RECORDS, LOADER_ROUNDS, DECODE_RECORDS = 8, 4000, 7, 16
TRAIN_WARMUP, TRAIN_ROUNDS = 2, 11
WORDS = "turn on off the kitchen bedroom lights what is weather like today set an alarm play music".split()


def build(root: Path):
    """Model directories, 16 test utterances with audio, and the experiment config pointing at them."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tasu.config import load_config
    from tasu.experiment import ExperimentConfig

    save_tiny_llm(root / "llm")
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=304, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                                 num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
                                 tie_word_embeddings=True)).save_pretrained(root / "llm")
    write_sensevoice_dir(root / "enc")
    (root / "wav").mkdir()
    with open(root / "test.jsonl", "w", encoding="utf-8") as f:
        for i in range(DECODE_RECORDS):
            wav = root / "wav" / f"u{i}.wav"
            sf.write(wav, waveform(2.0 + (i % 5) * 0.5, seed=i).numpy(), 16000)
            f.write(json.dumps({"key": f"u{i}", "task": "ASR", "target": SENTENCES[i % len(SENTENCES)],
                                "path": str(wav)}) + "\n")
    return load_config(ExperimentConfig, None, [
        f"encoder.path={root / 'enc'}", f"llm.path={root / 'llm'}", "projector.name=linear-silu",
        "projector.options={hidden: 256}"])


def bench_train(cfg, records) -> dict[str, float]:
    from tasu.data.prompts import load_prompts
    from tasu.simulate import build_simulator
    from tasu.model_io import build_model
    from tasu.train.collate import Collator

    torch.manual_seed(0)
    model = build_model(cfg, audio=True).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokenizer = model.encoder.tokenizer
    simulator = build_simulator(cfg.simulation, tokenizer)
    steps, tokens = {}, {}
    for mode in ("text", "audio"):
        batch = Collator(load_prompts(), model.prompt_tokenizer, tokenizer, mode=mode)(records[:BATCH], seed=0)

        def step(batch=batch, mode=mode) -> None:
            if mode == "text":
                post = simulator(batch.token_ids, torch.Generator().manual_seed(0))
            else:
                post = model.encode_audio(batch.waveforms, cfg.compress)
            model(post, batch.text).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens[mode] = int(batch.text.lengths.sum() + post.lengths.sum())

        steps[mode] = step
    times = {mode: [] for mode in steps}
    for _ in range(TRAIN_ROUNDS):
        for mode, step in steps.items():
            times[mode].append(median_ms(step, repeats=1, warmup=0))
    out = {}
    for mode in steps:
        ms = statistics.median(times[mode][TRAIN_WARMUP:])
        out[f"train_{mode}_step_ms"] = ms
        out[f"train_{mode}_tokens_per_s"] = tokens[mode] / (ms / 1000)
    out["text_vs_audio_train_speedup"] = out["train_text_tokens_per_s"] / out["train_audio_tokens_per_s"]
    return out


def bench_loader(cfg, root: Path) -> dict[str, float]:
    from tasu.data.batching import StreamingBatches
    from tasu.data.prompts import load_prompts
    from tasu.encoders import load_tokenizer
    from tasu.llm import PromptTokenizer, load_llm_tokenizer
    from tasu.train.collate import Collator

    rng = random.Random(0)
    paths = [root / f"loader{n}.jsonl" for n in range(3)]
    for n, path in enumerate(paths):
        with open(path, "w", encoding="utf-8") as f:
            for i in range(n, LOADER_RECORDS, 3):
                text = " ".join(rng.choices(WORDS, k=rng.randint(4, 16)))
                f.write(json.dumps({"key": f"r{i:06d}", "task": "ASR", "target": text, "path": f"wav/r{i}.wav"}) + "\n")
    prompts = load_prompts()
    collator = Collator(prompts, PromptTokenizer(load_llm_tokenizer(cfg.llm.path)), load_tokenizer(cfg.encoder.path))
    d = cfg.data
    epochs = {}
    for order in ("shuffle", "stream"):
        batches = StreamingBatches([str(p) for p in paths], collator.length, max_tokens=d.max_tokens,
                                   order=order, shuffle_buffer=d.shuffle_buffer, sort_window=d.sort_window,
                                   read_kwargs={"prompts": prompts, "require_transcript": True}, collate=collator)

        def epoch(batches=batches) -> None:
            assert sum(len(b.records) for b in batches) == LOADER_RECORDS

        epochs[order] = epoch
    times = {order: [] for order in epochs}
    for _ in range(LOADER_ROUNDS):
        for order, epoch in epochs.items():
            times[order].append(median_ms(epoch, repeats=1, warmup=0))
    out = {f"loader_records_per_s_{order}": LOADER_RECORDS / (statistics.median(t[1:]) / 1000)
           for order, t in times.items()}
    out["loader_shuffle_vs_stream"] = out["loader_records_per_s_shuffle"] / out["loader_records_per_s_stream"]
    return out


def bench_order_memory(root: Path) -> dict[str, float]:
    import time
    import tracemalloc

    from tasu.data.batching import StreamingBatches
    from tasu.data.line_index import line_offsets

    path = root / "million.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(1_000_000):
            f.write(f'{{"key": "r{i:07d}", "task": "ASR", "target": "{WORDS[i % len(WORDS)]} {i % 97}"}}\n')
    start = time.perf_counter()
    line_offsets(path)
    built = time.perf_counter() - start
    start = time.perf_counter()
    line_offsets(path)
    loaded = time.perf_counter() - start
    batches = StreamingBatches([str(path)], lambda r: len(r.target), max_tokens=3000, sort_window=500)
    tracemalloc.start()
    next(iter(batches))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"order_peak_mb_1M": peak / 2**20, "index_build_s_1M": built, "index_load_s_1M": loaded}


def bench_decode(cfg, records) -> dict[str, float]:
    from tasu.data.prompts import load_prompts
    from tasu.decode import DecodeOptions, DecodeStats, decode_records
    from tasu.model_io import build_model

    torch.manual_seed(0)
    model = build_model(cfg, audio=True).eval()
    prompts = load_prompts()
    options = DecodeOptions(beam=4, batch_size=8, max_new_tokens=20)
    runs: list[DecodeStats] = []

    def decode() -> None:
        runs.append(DecodeStats())
        assert len(list(decode_records(model, cfg, prompts, records, options, runs[-1]))) == len(records)

    ms = median_ms(decode, repeats=3, warmup=1)
    return {"decode_rtf": (ms / 1000) / runs[-1].audio_seconds}


def main() -> None:
    from tasu.data.records import iter_records

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = build(root)
        records = list(iter_records(str(root / "test.jsonl")))
        for bench in (lambda: bench_train(cfg, records), lambda: bench_loader(cfg, root),
                      lambda: bench_order_memory(root), lambda: bench_decode(cfg, records)):
            for name, value in bench().items():
                print(f"{name}: {value:.6g}", flush=True)


if __name__ == "__main__":
    main()
