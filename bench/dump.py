"""Benchmark of posterior dumps: audio training steps and decode batches read from a dump vs the live encoder.

    python bench/dump.py

Prints ``name: value`` lines. The models are ``bench/engine.py``'s (the tiny SenseVoice, a 4-layer
Qwen2 of width 256, linear-silu with hidden 256) and its 16 utterances of 2-4 s, so the encoder is
a small share of a step here: with SenseVoice-Small (234M parameters) beside a small LLM the share,
and so the gain, is larger. The ratios, measured in one process, are what to watch.

- dump_s: ``dump_posteriors`` over the 16 utterances, one job (encoder load included): the one-off cost.
- train_audio_step_ms, train_dump_step_ms: one training step of a batch of 8, in the main process as
  the trainer runs it: (the frozen encoder + compression, or nothing) -> projector -> LLM
  forward/backward -> AdamW; train_dump_vs_audio_speedup = audio / dump. Medians of 9 interleaved
  rounds after 2 warm-up rounds.
- collate_audio_ms, collate_dump_ms: building that batch (reading the wav files, or the ark entries),
  which the DataLoader workers do beside the steps.
- decode_audio_ms, decode_dump_ms: ``decode_records`` on the 16 utterances (beam 4, batch 8, 20 new
  tokens) with audio and with posteriors input; decode_dump_vs_audio_speedup = audio / dump.

The batch's loss and the hypotheses from the dump must be the live encoder's (the loss within 1e-5 of
itself); the benchmark stops with one line where they are not.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from engine import BATCH, build  # noqa: E402
from timing import check_reference, median_ms  # noqa: E402

WARMUP, ROUNDS = 2, 11


def bench_train(cfg, records, dumped, reader) -> dict[str, float]:
    from tasu.data.prompts import load_prompts
    from tasu.model_io import build_model
    from tasu.train.collate import Collator

    torch.manual_seed(0)
    model = build_model(cfg, audio=True).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokenizer = model.encoder.tokenizer
    out, steps, losses = {}, {}, {}
    for mode, recs in (("audio", records), ("dump", dumped)):
        collator = Collator(load_prompts(), model.prompt_tokenizer, tokenizer,
                            mode="audio" if mode == "audio" else "posteriors", dumps=reader)
        out[f"collate_{mode}_ms"] = median_ms(lambda: collator(recs[:BATCH], seed=0), repeats=5, warmup=1)
        batch = collator(recs[:BATCH], seed=0)

        def loss(batch=batch) -> torch.Tensor:
            post = batch.posteriors
            if post is None:
                post = model.encode_audio(batch.waveforms, cfg.compress)
            return model(post, batch.text).loss

        def step(loss=loss) -> None:
            loss().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        with torch.no_grad():   # before any step: both on the same weights
            losses[mode] = float(loss())
        steps[mode] = step
    # the dump's rows are the live encoder's, though computed in other batches of utterances, which can move
    # them in their last float bits (equal losses measured here); 1e-5 of the loss leaves room for that
    check_reference("dump.py: the loss of a batch from the dump (relative)",
                    abs(losses["dump"] - losses["audio"]) / abs(losses["audio"]), 1e-5)
    times = {mode: [] for mode in steps}
    for _ in range(ROUNDS):
        for mode, step in steps.items():
            times[mode].append(median_ms(step, repeats=1, warmup=0))
    for mode in steps:
        out[f"train_{mode}_step_ms"] = statistics.median(times[mode][WARMUP:])
    out["train_dump_vs_audio_speedup"] = out["train_audio_step_ms"] / out["train_dump_step_ms"]
    return out


def bench_decode(cfg, records, dumped, reader) -> dict[str, float]:
    from tasu.data.prompts import load_prompts
    from tasu.decode import DecodeOptions, decode_records
    from tasu.model_io import build_model

    torch.manual_seed(0)
    model = build_model(cfg, audio=True).eval()
    prompts = load_prompts()
    runs, hypotheses = {}, {}
    for mode, recs, kind in (("audio", records, "audio"), ("dump", dumped, "posteriors")):
        options = DecodeOptions(input=kind, beam=4, batch_size=8, max_new_tokens=20)

        def run(mode=mode, recs=recs, options=options) -> None:
            hypotheses[mode] = dict(decode_records(model, cfg, prompts, recs, options, dumps=reader))

        runs[mode] = run
    times = {mode: [] for mode in runs}
    for _ in range(5):
        for mode, run in runs.items():
            times[mode].append(median_ms(run, repeats=1, warmup=0))
    differ = [key for key, hyp in hypotheses["audio"].items() if hypotheses["dump"].get(key) != hyp]
    if differ:
        raise SystemExit(f"dump.py: {len(differ)} of the {len(records)} hypotheses decoded from the dump differ from "
                         f"the live encoder's (the first: {differ[0]})")
    out = {f"decode_{mode}_ms": statistics.median(t[1:]) for mode, t in times.items()}
    out["decode_dump_vs_audio_speedup"] = out["decode_audio_ms"] / out["decode_dump_ms"]
    return out


def main() -> None:
    import time

    from tasu.data.records import iter_records
    from tasu.dump import DumpReader, dump_posteriors, identity

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = build(root)
        start = time.perf_counter()
        dump_posteriors([str(root / "test.jsonl")], str(root / "post"), cfg.encoder.path, compress=cfg.compress)
        print(f"dump_s: {time.perf_counter() - start:.6g}", flush=True)
        records = list(iter_records(str(root / "test.jsonl")))
        dumped = list(iter_records(str(root / "post" / "test.jsonl")))
        reader = DumpReader(identity(cfg.encoder.path, cfg.encoder.type, cfg.compress))
        for bench in (bench_train, bench_decode):
            for name, value in bench(cfg, records, dumped, reader).items():
                print(f"{name}: {value:.6g}", flush=True)


if __name__ == "__main__":
    main()
