"""How an experiment's training sources mix over an epoch, batch by batch, as the trainer plans them.

    python bench/data_mix.py --config conf/train_text.yaml encoder.path=exp/encoder llm.path=exp/llm \
        'data.train=["dump/train/ASR.text_only.jsonl","dump/text_only/ASR.text_only.jsonl"]'

Plans epoch 0 of rank 0 with the config's data settings and the trainer's batching lengths
(``Collator.length``: prompt + speech rows + target tokens), without collating anything, then
prints each source's share of the records in each tenth of the epoch's batches, its global share,
and the largest gap between the two (in points). With ``--order stream`` it plans the stream order
instead (files read start to end through the shuffle buffer).
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasu.cli import at_least  # noqa: E402


def main() -> None:
    from tasu.config import load_config
    from tasu.data.batching import StreamingBatches
    from tasu.data.prompts import load_prompts
    from tasu.data.records import iter_records
    from tasu.encoders import load_tokenizer
    from tasu.llm import PromptTokenizer, load_llm_tokenizer
    from tasu.train.collate import Collator
    from tasu.experiment import ExperimentConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--order", choices=["shuffle", "stream"], help="default: the config's data.order")
    parser.add_argument("--parts", type=at_least(1), default=10, help="stretches of the epoch (default 10)")
    parser.add_argument("overrides", nargs="*", help="key.path=value, as for tasu train")
    args = parser.parse_args()

    cfg = load_config(ExperimentConfig, args.config, args.overrides)
    d = cfg.data
    prompts = load_prompts(d.prompts)
    collator = Collator(prompts, PromptTokenizer(load_llm_tokenizer(cfg.llm.path)),
                        load_tokenizer(cfg.encoder.path, cfg.encoder.type), d.mode, d.audio_ratio)
    batches = StreamingBatches(d.train, collator.length, max_tokens=d.max_tokens, max_batch_size=d.max_batch_size,
                               min_length=d.min_length, max_length=d.max_length, order=args.order or d.order,
                               shuffle_buffer=d.shuffle_buffer, sort_window=d.sort_window, seed=cfg.train.seed,
                               read_kwargs={"prompts": prompts, "require_transcript": d.mode == "text"})
    source_of = {}   # (key, task) -> file: keys are unique within a file, tasks tell the files of one set apart
    for source in d.train:
        for record in iter_records(source.path):
            other = source_of.setdefault((record.key, record.task), source.path)
            if other != source.path:   # (the same file twice in data.train is one source here)
                sys.exit(f"data_mix.py: key {record.key} (task {record.task}) is in {other} and in {source.path}: "
                         "this tool tells the files apart by key and task, so their shares cannot be measured")
    plan = [[source_of[r.key, r.task] for r in b.records] for b in batches]
    overall = collections.Counter(s for b in plan for s in b)
    total = sum(overall.values())
    if len(plan) < args.parts:
        sys.exit(f"data_mix.py: the epoch has {len(plan)} batches, fewer than --parts {args.parts}")
    bounds = [i * len(plan) // args.parts for i in range(args.parts + 1)]   # the whole epoch; sizes differ by 1 at most
    sizes = "-".join(str(n) for n in sorted({end - start for start, end in zip(bounds, bounds[1:])}))
    print(f"# {len(plan)} batches, {total} records, stretches of {sizes} batches, order {batches.order}")
    worst = 0.0
    for source in d.train:
        share = overall[source.path] / total
        row = []
        for start, end in zip(bounds, bounds[1:]):
            counts = collections.Counter(s for b in plan[start:end] for s in b)
            part = counts[source.path] / max(sum(counts.values()), 1)
            worst = max(worst, abs(part - share))
            row.append(f"{100 * part:.0f}")
        print(f"{source.path}: global {100 * share:.1f} %, per stretch {' '.join(row)}")
    print(f"largest_gap_points: {100 * worst:.1f}")


if __name__ == "__main__":
    main()
