#!/usr/bin/env python3
"""Train the mini recipe's frozen CTC encoder: tasu's SmallCTCEncoder on the synthesised train audio.

Usage (from egs/mini, after local/make_corpus.py and local/train_units.py):

    python local/train_encoder.py --data-dir data --units exp/units/bpe.model --exp-dir exp/encoder
    python local/train_encoder.py --data-dir data --units exp/units/bpe.model --exp-dir exp/encoder --epochs 2

What it writes::

    exp/encoder/{config.yaml,model.pt,bpe.model,tokens.json,am.mvn,configuration.json}
        the encoder, loadable with tasu.encoders.load_encoder / load_tokenizer (small_ctc layout)
    exp/encoder/ctc_greedy/<set>/{hyp,ref}.trn          greedy CTC output, key<TAB>text
    exp/encoder/ctc_greedy/<set>/{wer,cer}/score.json   scored by tasu.score (tasu results reads them)
    exp/encoder/train_info.json                         sizes, epochs, time, numbers

Steps: the units (local/train_units.py: BPE of 200 pieces from the train transcripts), fbank features
stacked to 60 ms frames (LFR 6/6), computed once and kept in memory (the frontend would otherwise cost
as much as the model), CTC training for a fixed number of epochs, the first one through the batches
shortest first (SortaGrad), with a warm-up + cosine learning rate (so the result depends on the seed
only; ``--max-minutes`` stops early on a slow machine and says so), then greedy CTC decoding of dev,
test and test_ood: the baseline that TASU's LLM-side decoding has to beat.

Why these defaults (seed 1, one core each, two runs at a time; dev / test / test_ood greedy CTC WER):
the corpus has many voices and few sentences a voice, and what limits the encoder is how much
distinct speech it hears. On 3000 training utterances, 9 epochs fitted the recordings (training loss
2.4 a sentence) at 38.8 / 39.9 / 60.8; SpecAugment on the same run kept the loss at 46 and gave
64.2 / 65.1 / 73.3. On 6000 utterances (the corpus default) about the same number of steps
generalises: 5 epochs 28.5 / 27.8 / 48.5, 6 epochs 24.2 / 23.8 / 44.6, 8 epochs 20.0 / 17.7 / 41.0
(training loss 0.9); 9000 utterances for 3 epochs (about as many steps as 6000 for 5) gave 30.0 /
29.0 / 49.5, no better (each corpus size deals its own dev and test sentences). Without masks, 10
epochs were the default: with 1200-frame batches each epoch from 7 to 10 lowered the test WER of every one of the
recipe's three seeds (egs/mini/NOTES.md, "Epochs"): test / test_ood 15.6 ± 0.2 / 39.3 ± 2.7 with 10,
17.7 ± 1.3 / 39.4 ± 2.6 with 9, 19.3 ± 1.2 / 41.8 ± 3.0 with 8, 20.6 ± 2.0 / 44.5 ± 1.9 with 7, and
the text-only TASU model read speech better with each (zero-shot test 4.9 ± 0.1, 5.3 ± 0.1, 5.8 ±
0.4, 6.6 ± 0.1). The tenth no longer helped unseen voices and took the training loss to 0.1. Each
epoch costs ~1 min (~50 s on the fast Intel Xeon host of those runs).
The default since then: 12 epochs with two frequency masks of up to 8 mel bins a training utterance
(SpecAugment without its time masks), drawn anew each epoch. The model no longer fits its training
recordings (loss ~0.9 a sentence after 12 epochs, against 0.1 after 10 without masks), and unseen
voices gain most: on the corpora of the three-seed run at 292fabf (AMD EPYC, bf16, one core each),
test / test_ood 15.2 / 29.5 and 15.8 / 35.7 for seeds 1 and 2 against 14.8 / 35.3 and 15.3 / 41.1,
the held-out flite voice 35.5 and 44.0 against 46.8 and 53.4. With 10 epochs the masks cost test
WER (three seeds 17.6 ± 1.7 / 34.5 ± 1.2 against 15.2 ± 0.3 / 38.9 ± 3.2): the two more epochs buy it
back, for ~1.3 min. On the same corpora, SpecAugment with two time masks of up to 5 frames (300 ms)
as well kept the loss at 18 and gave 28.6 / 40.3 and 32.6 / 46.1; dropout 0.1 (seed 1) 14.5 / 34.8
in 20 % more time; per-utterance mean normalisation after the global CMVN (seeds 1, 2) 16.6 / 34.1
and 19.1 / 39.4: what the frequency masks give, neither of these does (egs/mini/NOTES.md, "Frequency
masks").
Since b44e705 the output of block 3 of 6 also goes through the final norm and the CTC head, and its
CTC loss weighs 0.3 beside the final one's 0.7 (intermediate CTC, Lee and Watanabe 2021; in
SmallCTCEncoder.ctc_loss): a regulariser that adds no parameter and leaves the saved model and its
decoding as they were. On the dc49c5f run's corpora (the same as today's), every seed read every set
better: dev / test / test_ood 14.4 / 12.0 / 28.4, 13.6 / 14.0 / 31.4, 15.5 / 14.6 / 30.9 against
15.0 / 15.2 / 29.5, 14.5 / 15.8 / 35.7, 16.4 / 14.8 / 32.6; more masking (three masks of up to 8 bins,
or two of up to 12) read test worse in every seed and unseen voices no better (NOTES.md, "Intermediate
CTC").
80 ms frames (LFR 8/8, a quarter less compute) lost 4-5 points: test 25.0 with the same batch budget,
25.4 with batches of 600 frames (as many steps), against 20.5 (seed 1, Intel Xeon). Batches of 400 and
600 frames lost (test 26.0, 22.8); 1200 is as accurate (test on seeds 1, 2, 3, 1234: -1.0, +0.8,
-1.6, +1.4 points against 800) and 5 % faster (two epochs side by side on one host): the default.
Earlier settings (3000 utterances): dropout 0.1 with SpecAugment and 5-30 dB noise at lr 2e-3 was at
87 / 85 WER / CER after 3 epochs; SortaGrad took 6 epochs from 51 to 46 WER; lr 6e-3 and batches of
~10 utterances learned no faster; BPE 100 (dev 47 / 21 after 6 epochs) was read worse by the LLM
(4.8 vs 3.4 % WER), BPE 500 learned slower. 60 ms frames cost two thirds of the compute of 40 ms
ones, and 200-piece units need no finer steps. Time masks and dropout stay available
(``--time-masks 2``, ``--encoder-conf '{"dropout_rate": 0.1}'``) for longer runs.
Vocal tract length perturbation (each utterance's mel axis warped by a factor from [0.9, 1.1] or
[0.8, 1.2], anew each epoch; seed 1) gave 23.6 / 21.4 / 43.5 and 25.9 / 21.8 / 43.7 against
24.0 / 21.0 / 44.3 without: no gain, so it is not here. Nor is weight averaging over the last
epochs (icefall's --avg): with the masks it moved each seed by about a point either way (NOTES.md).
Half of test_ood is the held-out flite voice (rms: 34-41 % WER over the three seeds with the masks
and intermediate CTC, 35-44 with the masks alone, 47-53 without, against 22-23 % for the held-out
espeak-ng variants): training hears only three other flite speakers.
The recipe trains it on one core beside the LLM (local/train_models.sh): 10 epochs in float32 took
9.0 min on a fast Intel Xeon host, 13.6-16.1 on a 2-core AMD EPYC (flushing denormals to zero,
tasu.device, once took an older setting from ~24 min to ~16 on a slow Intel Xeon host). Where the CPU
has native bf16 (AVX512-BF16 or AMX; both hosts do) the steps run under bf16 autocast, with weights,
optimizer and the CTC head in float32 (``--precision``): a step 1.7x as fast on the AMD host
(bench/encoder_bf16.py), the whole run 556-569 s there against 816-966 s in float32, and the recipe's
three seeds read test / test_ood at 15.2 +- 0.3 / 38.9 +- 3.2 against float32's 15.8 +- 1.0 /
38.2 +- 2.6 (egs/mini/NOTES.md, "Precision and machines"; 10 epochs, no masks). The 12 masked epochs
take 608-642 s there (two three-seed runs), and read 15.3 +- 0.5 / 32.6 +- 3.1; with intermediate
CTC 647-661 s, 13.5 +- 1.4 / 30.3 +- 1.6 (b44e705). oneDNN keeps the
bf16 kernels and reordered weights of every batch shape it meets (up to 1024): two epochs on the AMD
host peaked at 1.78 GB. With at most 64 kept (ONEDNN_PRIMITIVE_CACHE_CAPACITY, set below unless the
caller set it) they peaked at 1.40 GB, as float32 does, in the same time and with a bit-identical
model.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path

os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")  # read when oneDNN starts: before torch
import torch
from torch.nn.utils.rnn import pad_sequence

from tasu.cli import at_least
from tasu.data.audio import AudioError, load_audio
from tasu.data.kaldi_dir import DataDirError, read_data_dir
from tasu.data.records import Record
from tasu.device import cpu_has_bf16, flush_denormals
from tasu.encoders import load_encoder
from tasu.encoders.fbank import estimate_cmvn, wav_frontend_features
from tasu.encoders.small_ctc import SmallCTCEncoder
from tasu.encoders.tokenizers import SentencePieceTokenizer
from tasu.fileio import write_atomic
from tasu.funasr_import import use_lean_import
from tasu.score import score_files

EVAL_SETS = ("dev", "test", "test_ood")


def true_or_false(text: str) -> bool:
    if text not in ("true", "false"):   # anything else read as false: a typo trained without SpecAugment
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text == "true"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="holds train/ and the eval sets (Kaldi dirs)")
    parser.add_argument("--exp-dir", default="exp/encoder", help="where the encoder and its decodes go")
    parser.add_argument("--units", default="exp/units/bpe.model",
                        help="SentencePiece model of the CTC units, blank = 0 (local/train_units.py)")
    parser.add_argument("--encoder-conf", type=json.loads, default={"dropout_rate": 0.0},
                        help='JSON overrides of SmallCTCEncoder encoder_conf (default: \'{"dropout_rate": 0.0}\')')
    parser.add_argument("--frontend-conf", type=json.loads, default={"lfr_m": 6, "lfr_n": 6},
                        help='JSON overrides of SmallCTCEncoder frontend_conf (default: \'{"lfr_m": 6, "lfr_n": 6}\': '
                             '60 ms frames, as SenseVoice\'s 7/6 stacking gives)')
    parser.add_argument("--epochs", type=at_least(1), default=12, help="training epochs (default: 12)")
    parser.add_argument("--max-minutes", type=float, default=30.0,
                        help="stop training after this much wall time, even mid-epoch: a cap for very slow "
                             "machines, far above the ~10 min on one core (default: 30; 0 = none)")
    parser.add_argument("--batch-frames", type=int, default=1200,
                        help="batch budget: utterances x longest LFR frame count (default: 1200, ~30 "
                             "utterances: as accurate as 800 over four corpora and ~5 %% faster; see NOTES.md)")
    parser.add_argument("--sorted-epochs", type=int, default=1,
                        help="epochs that go through the batches shortest first, before shuffled ones "
                             "(SortaGrad; default: 1)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW; default: 3e-3)")
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--spec-augment", type=true_or_false, default=True,
                        help="SpecAugment the training features (default: true, with the defaults below: two "
                             "frequency masks of up to 8 mel bins and no time masks, which read unseen voices "
                             "better; see NOTES.md)")
    parser.add_argument("--freq-masks", type=int, default=2)
    parser.add_argument("--freq-width", type=int, default=8, help="widest frequency mask, in mel bins")
    parser.add_argument("--time-masks", type=int, default=0)
    parser.add_argument("--time-width", type=int, default=5,
                        help="longest time mask, in LFR frames (at most a fifth of the utterance)")
    parser.add_argument("--inter-ctc-weight", type=float, default=0.3,
                        help="weight of the intermediate CTC loss (Lee and Watanabe, 2021; 0 = none; default: "
                             "0.3: every seed read every set better; see NOTES.md)")
    parser.add_argument("--inter-ctc-block", type=int, default=3,
                        help="the block whose output the intermediate CTC loss reads (of 6; default: 3)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="training arithmetic: bf16 autocast (weights, optimizer and the CTC head stay "
                             "float32) or fp32; auto = bf16 where the CPU has it natively (default: auto)")
    parser.add_argument("--eval-sets", nargs="*", default=list(EVAL_SETS))
    parser.add_argument("--seed", type=int, default=1234)
    return parser


def compute_features(encoder: SmallCTCEncoder, records: list[Record],
                     chunk: int = 64) -> tuple[list[torch.Tensor], float]:
    """Features of each utterance, unpadded, through the encoder's frontend as it stands (LFR,
    plus CMVN once it has one): computed once, reused every epoch; and the hours of audio. The
    audio is read a chunk at a time, so only the features stay in memory (half the size of the
    waveforms: 0.5 GB for the 4.4 h of the full train set)."""
    feats, samples = [], 0
    for i in range(0, len(records), chunk):
        waves = [torch.from_numpy(load_audio(r.path, key=r.key)) for r in records[i:i + chunk]]
        samples += sum(len(w) for w in waves)
        padded, lengths = wav_frontend_features(encoder.frontend, waves)
        feats.extend(padded[b, :n].clone() for b, n in enumerate(lengths.tolist()))
    return feats, samples / 16000 / 3600


def fit_cmvn(encoder: SmallCTCEncoder, raw: list[torch.Tensor]) -> list[torch.Tensor]:
    """Global CMVN from un-normalised train features, given to the encoder's frontend and applied to
    them in place, so the train audio goes through the fbank once and its features are held once."""
    encoder.frontend.cmvn = estimate_cmvn(raw)
    shift, scale = encoder.frontend.cmvn
    for f in raw:  # the same arithmetic as funasr's apply_cmvn: (x + shift) * scale
        f.add_(shift).mul_(scale)
    return raw


def make_batches(lengths: list[int], batch_frames: int) -> list[list[int]]:
    """Indices grouped by length so that (batch size x longest) stays under ``batch_frames``."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > batch_frames:
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


def spec_augment(x: torch.Tensor, n_mels: int, args, gen: torch.Generator) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) on one utterance's LFR features [T, lfr_m * n_mels], a copy.

    ``--freq-masks`` bands of up to ``--freq-width`` mel bins and ``--time-masks`` spans of up to
    ``--time-width`` frames are set to 0, the CMVN mean. An LFR frame stacks ``lfr_m`` fbank frames,
    so a mel band is masked in each of them alike. Time warping is left out, as in most CTC recipes.
    """
    x = x.clone()
    frames = x.view(x.shape[0], -1, n_mels)
    for _ in range(args.freq_masks):
        width = int(torch.randint(0, args.freq_width + 1, (1,), generator=gen))
        start = int(torch.randint(0, n_mels - width + 1, (1,), generator=gen))
        frames[:, :, start:start + width] = 0.0
    for _ in range(args.time_masks):
        width = int(torch.randint(0, min(args.time_width, x.shape[0] // 5) + 1, (1,), generator=gen))
        start = int(torch.randint(0, x.shape[0] - width + 1, (1,), generator=gen))
        x[start:start + width] = 0.0
    return x


def collate(feats: list[torch.Tensor], labels: list[list[int]], batch: list[int], augment=None):
    chosen = [feats[i] if augment is None else augment(feats[i]) for i in batch]
    x = pad_sequence(chosen, batch_first=True)
    x_len = torch.tensor([len(feats[i]) for i in batch])
    y = pad_sequence([torch.tensor(labels[i]) for i in batch], batch_first=True)
    y_len = torch.tensor([len(labels[i]) for i in batch])
    return x, x_len, y, y_len


def train(encoder: SmallCTCEncoder, feats: list[torch.Tensor], labels: list[list[int]], args) -> dict:
    """CTC training for ``args.epochs`` epochs (batch order shuffled by a seeded generator)."""
    batches = make_batches([len(f) for f in feats], args.batch_frames)
    total = args.epochs * len(batches)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)

    def lr_lambda(step: int) -> float:  # linear warm-up, then cosine to 5 % of the peak
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = (step - args.warmup_steps) / max(1, total - args.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16" \
        else contextlib.nullcontext
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    n_mels = encoder.config["frontend_conf"]["n_mels"]
    augment = (lambda f: spec_augment(f, n_mels, args, gen)) if args.spec_augment else None
    encoder.train()
    start, step, stopped_early = time.time(), 0, False
    for epoch in range(1, args.epochs + 1):
        # SortaGrad (Amodei et al., 2016): short utterances first while the CTC alignments form
        if epoch > args.sorted_epochs:
            rng.shuffle(batches)
        loss_sum, utts = 0.0, 0
        for batch in batches:
            x, x_len, y, y_len = collate(feats, labels, batch, augment)
            with autocast():
                loss = encoder.ctc_loss(x, x_len, y, y_len, args.inter_ctc_weight, args.inter_ctc_block)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), 5.0)
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += loss.item() * len(batch)
            utts += len(batch)
            if args.max_minutes and time.time() - start > 60 * args.max_minutes:
                stopped_early = True
                break
        logging.info("epoch %d: ctc loss %.3f per utterance, %d steps, %.0f s", epoch, loss_sum / max(utts, 1),
                     step, time.time() - start)
        if stopped_early:
            logging.warning("stopped after %.1f min (--max-minutes %g), in epoch %d of %d: the result now "
                            "depends on this machine's speed", (time.time() - start) / 60, args.max_minutes,
                            epoch, args.epochs)
            break
    encoder.eval()
    return {"epochs": epoch, "steps": step, "stopped_early": stopped_early, "precision": args.precision,
            "inter_ctc": {"weight": args.inter_ctc_weight, "block": args.inter_ctc_block},
            "train_seconds": round(time.time() - start, 1)}


@torch.no_grad()
def greedy_decode(encoder: SmallCTCEncoder, feats: list[torch.Tensor], batch_frames: int) -> list[str]:
    """Argmax per frame, repeats merged, blanks removed: the encoder's own transcript."""
    hyps = [""] * len(feats)
    for batch in make_batches([len(f) for f in feats], batch_frames):
        x = pad_sequence([feats[i] for i in batch], batch_first=True)
        log_probs, lengths = encoder(x, torch.tensor([len(feats[i]) for i in batch]))
        for b, i in enumerate(batch):
            ids = torch.unique_consecutive(log_probs[b, :lengths[b]].argmax(-1))
            hyps[i] = encoder.tokenizer.decode([t for t in ids.tolist() if t != encoder.blank_id])
    return hyps


def write_trn(path: Path, keys: list[str], texts: list[str]) -> None:
    write_atomic(path, "".join(f"{k}\t{t}\n" for k, t in zip(keys, texts)))


def main() -> None:
    args = get_parser().parse_args()
    if not Path(args.units).is_file():
        raise SystemExit(f"train_encoder.py: --units {args.units}: no such file (local/train_units.py makes it)")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    t0 = time.time()
    torch.manual_seed(args.seed)
    flush_denormals()  # a trained model's steps run up to twice as fast on x86 (tasu.device)
    if args.precision == "auto":
        args.precision = "bf16" if cpu_has_bf16() else "fp32"
    use_lean_import()  # funasr's encoder classes without its import of every model it has
    data_dir, exp_dir = Path(args.data_dir), Path(args.exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)

    # 1. units (blank = 0) and the train set's labels in them
    train_set = read_data_dir(data_dir / "train")
    tokenizer = SentencePieceTokenizer(args.units)
    labels = [tokenizer.encode(r.target) for r in train_set]
    logging.info("units: %s, %d incl. blank", args.units, tokenizer.vocab_size)

    # 2. model, CMVN from the train audio, features once
    encoder = SmallCTCEncoder(tokenizer, {"encoder_conf": args.encoder_conf, "frontend_conf": args.frontend_conf})
    try:  # before the features are computed: a bad setting costs no time
        encoder.check_inter_ctc(args.inter_ctc_weight, args.inter_ctc_block)
    except ValueError as e:
        raise SystemExit(f"train_encoder.py: --inter-ctc-weight / --inter-ctc-block: {e}") from None
    raw, hours = compute_features(encoder, train_set)
    feats = fit_cmvn(encoder, raw)
    n_params = sum(p.numel() for p in encoder.parameters())
    logging.info("encoder: %.2f M parameters; %d train utterances (%.2f h), features after %.1f s; "
                 "training in %s, intermediate CTC weight %g at block %d", n_params / 1e6, len(feats), hours,
                 time.time() - t0, args.precision, args.inter_ctc_weight, args.inter_ctc_block)

    # 3. train, save
    info = train(encoder, feats, labels, args)
    encoder.save(exp_dir)

    # 4. greedy CTC decoding of the eval sets with the saved (reloaded) encoder, scored
    encoder = load_encoder(exp_dir)
    info.update(vocab_size=tokenizer.vocab_size, parameters=n_params, results={})
    for name in args.eval_sets:
        records = read_data_dir(data_dir / name)
        keys, refs = [r.key for r in records], [r.target for r in records]
        hyps = greedy_decode(encoder, compute_features(encoder, records)[0], args.batch_frames)
        out = exp_dir / "ctc_greedy" / name
        write_trn(out / "hyp.trn", keys, hyps)
        write_trn(out / "ref.trn", keys, refs)
        for metric in ("wer", "cer"):
            result = score_files(out / "ref.trn", out / "hyp.trn", metric, out_dir=out / metric)
            info["results"].setdefault(name, {})[metric] = round(result.value, 2)
    info["total_seconds"] = round(time.time() - t0, 1)
    write_atomic(exp_dir / "train_info.json", json.dumps(info, indent=1) + "\n")
    logging.info("greedy CTC %s", " ".join(f"{n}: WER {r['wer']:.1f} % CER {r['cer']:.1f} %"
                                          for n, r in info["results"].items()))
    logging.info("train_encoder: done in %.1f s (%.1f s of CPU time) -> %s", info["total_seconds"],
                 time.process_time(), exp_dir)


if __name__ == "__main__":
    try:
        main()
    except (DataDirError, AudioError, OSError) as e:  # a corpus that is missing, unreadable or empty: one line
        raise SystemExit(f"train_encoder.py: {e}") from None
