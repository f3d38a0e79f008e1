#!/usr/bin/env python3
"""Train the mini recipe's frozen LLM: a tiny Qwen2 with a real tokenizer that can read encoder units.

Usage (from egs/mini, after local/make_corpus.py and local/train_units.py):

    python local/train_llm.py --data-dir data --units exp/units/bpe.model --out-dir exp/llm     # full: ~10 min
    python local/train_llm.py --data-dir data --units exp/units/bpe.model --out-dir exp/llm --steps 400

What it writes::

    exp/llm/{config.json,generation_config.json,model.safetensors}      Qwen2ForCausalLM
    exp/llm/{tokenizer.json,tokenizer_config.json,special_tokens_map.json,chat_template.jinja}
        read by tasu.llm.load_llm / load_llm_tokenizer (transformers AutoModelForCausalLM / AutoTokenizer)
    exp/llm/encoder_units.json    encoder unit id -> LLM token id (blank -> null)
    exp/llm/ppl.txt               dev perplexities, unit-reading WER and scenario accuracy

The tokenizer (built with the ``tokenizers`` library, saved as a ``PreTrainedTokenizerFast``):
Qwen2's byte-level BPE pipeline trained on the training text and the prompts (so nearly every word is
one token and nothing is unknown), Qwen's specials ``<|endoftext|>`` (pad), ``<|im_start|>``,
``<|im_end|>`` (EOS), and one special token ``<|u:PIECE|>`` per encoder unit. Its chat template is
Qwen's without the default system turn (a 3 M-parameter model gains nothing from one).

Why the LLM learns to read encoder units: a real LLM reads SenseVoice's BPE pieces as text, so a
projector can map posteriors onto something the LLM already understands; a tiny LLM trained on plain
sentences knows no such thing. So most examples are in the exact chat format the speech LLM uses
(``tasu.llm.PromptTokenizer``), with the sentence spelled in encoder units where the speech goes::

    <|im_start|>user\\nTranscribe the speech into text.<|u:▁|><|u:t|><|u:u|>...<|im_end|>\\n
    <|im_start|>assistant\\nturn on the lights<|im_end|>

and the same with an SLU_scenario prompt and the scenario label as the answer. Units are dropped or
replaced at random (``--unit-noise``), as real posteriors are imperfect. Loss is on the answer and
its ``<|im_end|>`` only. The other ``--plain-ratio`` of examples are plain sentences
(``<|endoftext|>`` sentence ``<|endoftext|>``, loss on all), which give the LM its sentence prior.
Training text = data/train (audio transcripts) + data/text_only; dev is only evaluated.

Why grammar sentences only, mostly ASR (measured on one seed's corpus, 1000 steps, dev WER of reading
clean units): a model this small learns "the template, and which slot value's units are in the span"
long before it learns to align units to words by position. Sentences of random words, which can only
be read by aligning, took a third or half of the ASR examples in earlier defaults and kept it at
33 % (30 % random) and 40 % (50 % random, 1500 steps); with none it read at 10.4 %, and with fewer
SLU and plain examples (10 % / 5 %) at 3.5 %, with scenario accuracy from 100 % down to 81 % (20 %
SLU brings it back). Writing the answer in the encoder's pieces instead of words, so that reading is
copying, did not help either: no copying had emerged after 800 steps (a transformer learns to copy
by an "induction" mechanism that takes thousands of steps to form).
Steps are fixed (``--steps``) so that the model depends on the seed only; ``--max-minutes`` caps
the wall time on a slow machine.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import re
import time
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from tasu.cli import at_least
from tasu.data.prompts import load_prompts
from tasu.device import flush_denormals
from tasu.encoders import load_tokenizer as load_encoder_tokenizer
from tasu.encoders.tokenizers import SentencePieceTokenizer
from tasu.fileio import atomic_files, write_atomic
from tasu.score import score

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
BPE_VOCAB = 2000  # an upper bound: the text supports ~1,500 tokens, enough for every word to be one
PROMPT_WEIGHT = 10
CHAT_TEMPLATE = ("{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
                 " + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}"
                 "{{ '<|im_start|>assistant\\n' }}{%- endif %}")
TASKS = ("ASR", "SLU_scenario")
MARK = "\x00"  # stands for the speech span while a prompt is rendered


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="holds train/, text_only/ and dev/ (text, scenario)")
    parser.add_argument("--units", default="exp/units/bpe.model",
                        help="the encoder's units, which become LLM tokens: its SentencePiece model "
                             "(local/train_units.py) or any encoder dir tasu loads")
    parser.add_argument("--out-dir", default="exp/llm")
    parser.add_argument("--prompts", default=None, help="prompts JSONL (default: tasu's English set)")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=768)
    parser.add_argument("--steps", type=at_least(1), default=1800,
                        help="optimizer steps (default: 1800: reading clean dev units fell from 3.4 %% WER "
                             "at 1200 to 0.8 %% at 1800; on the current corpus 1.9 %% at 1400, 1.3 %% at "
                             "1550, 0.6 %% at 1800; see NOTES.md)")
    parser.add_argument("--max-minutes", type=float, default=30.0,
                        help="stop after this much wall time: a cap for very slow machines, far above the ~10 min "
                             "on one core beside the encoder (default: 30; 0 = none)")
    parser.add_argument("--batch-size", type=at_least(1), default=16,
                        help="examples per step (default: 16: more, smaller steps learn to read units sooner)")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="peak learning rate (AdamW; default 1e-3: 3e-3 learned the sentence prior but "
                             "hardly to read units)")
    parser.add_argument("--warmup-steps", type=int, default=40)
    parser.add_argument("--plain-ratio", type=float, default=0.05, help="share of plain-sentence examples (default: 0.05)")
    parser.add_argument("--slu-ratio", type=float, default=0.2,
                        help="share of SLU_scenario among the unit-reading examples, the rest is ASR (default: 0.2)")
    parser.add_argument("--random-ratio", type=float, default=0.0,
                        help="share of ASR unit-reading examples whose sentence is random training words "
                             "(default: 0: they need positional reading, which this model learns too slowly "
                             "to gain from them in a short run)")
    parser.add_argument("--unit-noise", type=float, default=0.05,
                        help="probability of dropping, and of replacing, each unit in a spelling")
    parser.add_argument("--seed", type=int, default=1234)
    return parser


def read_table(path: Path) -> dict[str, str]:
    """A Kaldi table file: key -> rest of the line."""
    table = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(" ")
        table[key] = value.strip()
    return table


def read_text_set(data_dir: Path, name: str) -> list[tuple[str, str]]:
    """``(sentence, scenario)`` pairs of a data dir, in key order."""
    text, scenario = read_table(data_dir / name / "text"), read_table(data_dir / name / "scenario")
    lacking = sorted(text.keys() - scenario.keys())
    if lacking:   # a KeyError's traceback named the key alone
        raise SystemExit(f"train_llm.py: {data_dir / name / 'scenario'}: no line for {lacking[0]}, which text "
                         f"has ({len(lacking)} such)")
    return [(text[k], scenario[k]) for k in sorted(text)]


def unit_token(piece: str) -> str:
    return f"<|u:{piece}|>"


def build_tokenizer(sentences: list[str], prompt_texts: list[str],
                    unit_pieces: list[str | None]) -> tuple[PreTrainedTokenizerFast, list[int | None]]:
    """Qwen2's byte-level BPE pipeline trained on our text, and the LLM token of each encoder unit.

    The pipeline (NFC, Qwen2's pre-tokenising regex, byte-level BPE) is exactly what transformers'
    ``Qwen2Tokenizer`` rebuilds from tokenizer.json when ``AutoTokenizer`` loads a qwen2 directory,
    so the saved tokenizer encodes the same way after loading. Byte-level means nothing is ever
    unknown. The prompts (rendered in the chat template) are part of the BPE's training text, as
    often as ``PROMPT_WEIGHT`` sentences each: they are in every instruction example.

    Each encoder unit gets its own special token ``<|u:PIECE|>`` (``unit_pieces[i]`` None: blank or
    ``<unk>``, no token). Returns the tokenizer and the LLM id of each unit. (Mapping a unit onto the
    BPE token with its text instead, ``▁kitchen`` -> ``Ġkitchen``, read worse after the same training.)
    """
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, min_frequency=2, special_tokens=[PAD, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    chat = [f"{IM_START}user\n{p}{IM_END}\n{IM_START}assistant\n" for p in prompt_texts]
    tk.train_from_iterator(sentences + chat * PROMPT_WEIGHT, trainer=trainer)

    # Special added tokens are cut out before normalisation and pre-tokenisation: a unit token never
    # merges with its neighbours, and generation can drop it with skip_special_tokens.
    tk.add_special_tokens([AddedToken(unit_token(p), special=True, normalized=False)
                           for p in unit_pieces if p is not None])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=IM_END, pad_token=PAD,
                                        chat_template=CHAT_TEMPLATE, model_max_length=1024)
    unit_ids = [None if p is None else tokenizer.convert_tokens_to_ids(unit_token(p)) for p in unit_pieces]
    return tokenizer, unit_ids


class Examples:
    """Token ids of training / evaluation examples in the speech LLM's chat format."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, prompts, unit_ids: list[int], encoder_tokenizer):
        self.tok, self.enc = tokenizer, encoder_tokenizer
        self.unit_ids = unit_ids  # encoder id -> LLM id (None for the blank)
        self.labels = [i for i, u in enumerate(unit_ids) if u is not None]
        self.pad, self.eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.prompts = {task: [self._split_prompt(p) for p in prompts.prompts(task)] for task in TASKS}

    def _split_prompt(self, prompt: str) -> tuple[list[int], list[int]]:
        """Ids before and after the speech span of a rendered prompt (cut where ``<speech>`` goes)."""
        text = self.tok.apply_chat_template([{"role": "user", "content": prompt + MARK}], tokenize=False,
                                            add_generation_prompt=True)
        before, after = text.split(MARK)
        return self.ids(before), self.ids(after)

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def units(self, sentence: str, noise: float, rng: random.Random) -> list[int]:
        """The sentence spelled in encoder units (as LLM ids), each dropped / replaced w.p. ``noise``."""
        out = []
        for u in self.enc.encode(sentence):
            r = rng.random()
            if r < noise:
                continue
            if r < 2 * noise:
                u = rng.choice(self.labels)
            out.append(self.unit_ids[u])
        return out

    def instruction(self, task: str, sentence: str, scenario: str, noise: float,
                    rng: random.Random) -> tuple[list[int], list[int]]:
        """(input ids, labels): prompt + units -> answer + EOS, loss on the answer only."""
        before, after = rng.choice(self.prompts[task])
        prompt = before + self.units(sentence, noise, rng) + after
        answer = self.ids(sentence if task == "ASR" else scenario) + [self.eos]
        return prompt + answer, [-100] * len(prompt) + answer

    def plain(self, sentence: str) -> tuple[list[int], list[int]]:
        ids = [self.pad] + self.ids(sentence) + [self.pad]
        return ids, [-100] + ids[1:]

    def batch(self, pairs: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        """Right-padded input_ids / attention_mask / labels."""
        width = max(len(ids) for ids, _ in pairs)
        input_ids = torch.full((len(pairs), width), self.pad)
        labels = torch.full((len(pairs), width), -100)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for b, (ids, lab) in enumerate(pairs):
            input_ids[b, :len(ids)], labels[b, :len(lab)], mask[b, :len(ids)] = torch.tensor(ids), torch.tensor(lab), 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def random_words(words: list[str], n: int, rng: random.Random) -> str:
    """``n`` words drawn uniformly from the training vocabulary: a "sentence" no grammar predicts, so
    the only way to transcribe its units is to read them word by word. For long runs: in a short one
    the model does not learn that positional reading, and these examples only take steps from the
    grammar sentences (see the module docstring)."""
    return " ".join(rng.choice(words) for _ in range(n))


def build_model(tokenizer: PreTrainedTokenizerFast, args) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_heads, max_position_embeddings=1024, rope_theta=10000.0,
        tie_word_embeddings=True, bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return Qwen2ForCausalLM(config)


def train(model, examples: Examples, sentences: list[tuple[str, str]], args) -> dict:
    """``args.steps`` AdamW steps on freshly drawn batches (seeded), warm-up + cosine LR."""
    rng = random.Random(args.seed)
    words = sorted({w for s, _ in sentences for w in s.split()})
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)

    def lr_lambda(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = min(1.0, (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    model.train()
    start, stopped_early = time.time(), False
    for step in range(1, args.steps + 1):
        # one kind of example per batch: an SLU prompt is ~15x longer than a plain sentence, and
        # mixed batches would pad every plain sentence to it
        if rng.random() < args.plain_ratio:
            kind = "plain"
        else:
            kind = "SLU_scenario" if rng.random() < args.slu_ratio else "ASR"
        pairs = []
        for sentence, scenario in (rng.choice(sentences) for _ in range(args.batch_size)):
            if kind == "ASR" and rng.random() < args.random_ratio:
                sentence = random_words(words, len(sentence.split()), rng)
            pairs.append(examples.plain(sentence) if kind == "plain" else
                         examples.instruction(kind, sentence, scenario, args.unit_noise, rng))
        loss = model(**examples.batch(pairs)).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr = scheduler.get_last_lr()[0]   # this step's: after scheduler.step() it is the next one's
        scheduler.step()
        if step % 50 == 0 or step == args.steps:
            logging.info("step %d: loss %.3f, lr %.2e, %.0f s", step, loss.item(), lr,
                         time.time() - start)
        if args.max_minutes and time.time() - start > 60 * args.max_minutes:
            stopped_early = True
            logging.warning("stopped at step %d of %d after %.1f min (--max-minutes %g): the result now "
                            "depends on this machine's speed", step, args.steps, (time.time() - start) / 60,
                            args.max_minutes)
            break
    model.eval()
    return {"steps": step, "stopped_early": stopped_early, "train_seconds": round(time.time() - start, 1)}


@torch.no_grad()
def perplexity(model, examples: Examples, pairs: list[tuple[list[int], list[int]]], batch_size: int = 64) -> float:
    """exp(mean cross-entropy over the tokens that carry a label)."""
    total, count = 0.0, 0
    for i in range(0, len(pairs), batch_size):
        batch = examples.batch(pairs[i:i + batch_size])
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += model(**batch).loss.item() * n
        count += n
    return math.exp(total / max(count, 1))


@torch.no_grad()
def read_units(model, examples: Examples, task: str, sentences: list[str], batch_size: int = 64) -> list[str]:
    """Greedy answers to the first ``task`` prompt followed by the clean units of each sentence."""
    before, after = examples.prompts[task][0]
    outputs = []
    for i in range(0, len(sentences), batch_size):
        prompts = [before + examples.units(s, 0.0, random.Random(0)) + after for s in sentences[i:i + batch_size]]
        width = max(map(len, prompts))
        ids = torch.tensor([[examples.pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=40, do_sample=False,
                             eos_token_id=examples.eos, pad_token_id=examples.pad)
        outputs += examples.tok.batch_decode(out[:, width:], skip_special_tokens=True)
    return [re.sub(r"\s+", " ", o).strip() for o in outputs]


def evaluate(model, examples: Examples, dev: list[tuple[str, str]], test: list[tuple[str, str]]) -> dict:
    """Dev perplexities (plain sentences; ASR answers given clean units), unit-reading WER, SLU accuracy;
    the unit-reading WER of the test text too (evaluated only, never trained on)."""
    rng = random.Random(0)
    result = {
        "ppl_plain": perplexity(model, examples, [examples.plain(s) for s, _ in dev]),
        "ppl_asr_given_units": perplexity(model, examples,
                                          [examples.instruction("ASR", s, c, 0.0, rng) for s, c in dev]),
    }
    keys = [f"dev{i:05d}" for i in range(len(dev))]
    hyps = read_units(model, examples, "ASR", [s for s, _ in dev])
    result["wer_reading_units"] = score(dict(zip(keys, (s for s, _ in dev))), dict(zip(keys, hyps)), "wer")[0].value
    labels = read_units(model, examples, "SLU_scenario", [s for s, _ in dev])
    result["acc_scenario_from_units"] = 100 * sum(h == c for h, (_, c) in zip(labels, dev)) / len(dev)
    if test:  # the ceiling of every system on the test set: the LLM given perfect units
        keys = [f"test{i:05d}" for i in range(len(test))]
        hyps = read_units(model, examples, "ASR", [s for s, _ in test])
        result["wer_reading_units_test"] = score(dict(zip(keys, (s for s, _ in test))), dict(zip(keys, hyps)),
                                                 "wer")[0].value
    return result


def main() -> None:
    args = get_parser().parse_args()
    units = Path(args.units)
    if not units.exists():
        raise SystemExit(f"train_llm.py: --units {units}: no such file or directory (local/train_units.py makes it)")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    t0 = time.time()
    torch.manual_seed(args.seed)
    flush_denormals()  # a trained model's steps run up to twice as fast on x86 (tasu.device)
    data_dir, out_dir = Path(args.data_dir), Path(args.out_dir)

    # 1. text: all training text (audio transcripts + text-only), dev for evaluation only
    training = read_text_set(data_dir, "train") + read_text_set(data_dir, "text_only")
    dev = read_text_set(data_dir, "dev")
    test = read_text_set(data_dir, "test") if (data_dir / "test" / "text").exists() else []

    # 2. tokenizer: specials + encoder units + words; units as LLM ids
    enc_tok = SentencePieceTokenizer(units) if units.is_file() else load_encoder_tokenizer(units)
    prompts = load_prompts(args.prompts)
    # blank and SentencePiece's <unk> are never labels, so they get no LLM token
    pieces = [None if i == enc_tok.blank_id or re.fullmatch(r"<.*>", p) else p
              for i, p in enumerate(enc_tok.id_to_piece(i) for i in range(enc_tok.vocab_size))]
    tokenizer, unit_ids = build_tokenizer([s for s, _ in training], [p for t in TASKS for p in prompts.prompts(t)],
                                          pieces)
    examples = Examples(tokenizer, prompts, unit_ids, enc_tok)
    per_word = sum(len(examples.ids(s)) for s, _ in dev) / sum(len(s.split()) for s, _ in dev)
    logging.info("tokenizer: %d tokens (%d encoder units), %.2f per dev word; %d training sentences",
                 len(tokenizer), len(examples.labels), per_word, len(training))

    # 3. model, training
    model = build_model(tokenizer, args)
    n_params = sum(p.numel() for p in model.parameters())
    logging.info("Qwen2: %.2f M parameters (hidden %d, %d layers)", n_params / 1e6, args.hidden_size, args.num_layers)
    info = train(model, examples, training, args)

    # 4. save where tasu.llm.load_llm / load_llm_tokenizer read it
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_files(out_dir) as scratch:   # a save killed half-way leaves the files it was replacing
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        (scratch / "encoder_units.json").write_text(json.dumps(unit_ids) + "\n", encoding="utf-8")

    # 5. dev numbers
    result = evaluate(model, examples, dev, test)
    info.update(parameters=n_params, vocab_size=len(tokenizer), dev_tokens_per_word=round(per_word, 3),
                **{k: round(v, 3) for k, v in result.items()})
    lines = [f"{k} {v}" for k, v in info.items()]
    write_atomic(out_dir / "ppl.txt", "\n".join(lines) + "\n")
    logging.info("dev: perplexity %.2f (plain), %.3f (ASR answer given units); reading units: WER %.1f %%, "
                 "scenario accuracy %.1f %%", result["ppl_plain"], result["ppl_asr_given_units"],
                 result["wer_reading_units"], result["acc_scenario_from_units"])
    logging.info("train_llm: done in %.1f s (%.1f s of CPU time) -> %s", time.time() - t0, time.process_time(),
                 out_dir)


if __name__ == "__main__":
    try:
        main()
    except OSError as e:  # a corpus or units file that is not there or not readable: one line
        raise SystemExit(f"train_llm.py: {e}") from None
