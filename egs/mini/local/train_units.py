#!/usr/bin/env python3
"""Train the mini recipe's CTC units: a SentencePiece model of the train transcripts (blank = id 0).

Usage (from egs/mini, after local/make_corpus.py):

    python local/train_units.py --data-dir data --out exp/units/bpe.model

The encoder (local/train_encoder.py) emits these units and the LLM (local/train_llm.py) learns to
read them, so they are made once, first, and both read the same file: the two can then train at the
same time. Defaults: BPE of 200 pieces, ~17 units a sentence (500 pieces learned slower in the
encoder's short training: dev greedy CTC WER / CER 88 / 87 vs 77 / 63 after 2 epochs).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from tasu.data.kaldi_dir import DataDirError, read_data_dir
from tasu.encoders import train_sentencepiece


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="holds train/ (a Kaldi dir with text)")
    parser.add_argument("--out", default="exp/units/bpe.model", help="the SentencePiece model to write")
    parser.add_argument("--unit", choices=["char", "bpe"], default="bpe", help="CTC units (default: bpe)")
    parser.add_argument("--vocab-size", type=int, default=200, help="upper bound of BPE pieces (default: 200)")
    return parser


def main() -> None:
    args = get_parser().parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    try:
        texts = [r.target for r in read_data_dir(Path(args.data_dir) / "train")]
    except DataDirError as e:
        raise SystemExit(f"train_units.py: {e}") from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # trained beside, then moved: a killed run never leaves half a model under the name
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tokenizer = train_sentencepiece(texts, args.vocab_size if args.unit == "bpe" else 64,
                                        Path(tmp) / "units", model_type=args.unit)
        shutil.move(Path(tmp) / "units.model", out)
    logging.info("units: %s, %d incl. blank, from %d transcripts -> %s", args.unit, tokenizer.vocab_size,
                 len(texts), out)


if __name__ == "__main__":
    main()
