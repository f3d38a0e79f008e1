"""The ``tasu`` command: one subcommand per step of a recipe.

    tasu validate dump/test/ASR.jsonl --check-audio
    tasu simulate --encoder /models/SenseVoiceSmall --text "turn on the kitchen lights"
    tasu train --config conf/train_text.yaml --exp-dir exp/text
    tasu train-simulator --encoder exp/encoder --data dump/train/ASR.jsonl --out exp/simulator
    tasu dump-posteriors --config exp/curriculum/config.yaml --data dump/test/ASR.jsonl --out dump/posteriors/test
    tasu decode --exp exp/text --data dump/test/ASR.jsonl --out exp/text/decode/test
    tasu transcribe --exp exp/text recording.wav other.flac
    tasu export --exp exp/text --out exported/text
    tasu analyze --config exp/text/config.yaml --data dump/dev/ASR.jsonl --out exp/analyze/dev
    tasu score --ref exp/x/decode/test/ref.trn --hyp exp/x/decode/test/hyp.trn --metric wer
    tasu results exp > RESULTS.md

Each subcommand parses its arguments here and calls one library function; imports are done inside
the subcommand so that ``tasu validate`` does not pay for torch or transformers, and funasr's
classes are imported without funasr's import of all its models (:mod:`tasu.funasr_import`).

Whatever goes wrong ends as one line on stderr, ``tasu COMMAND: error: ...``, and exit status 1
(:mod:`tasu.errors`; 2 for a command line that does not parse, as argparse has it); ``--debug`` (or
``TASU_DEBUG=1``) lets the traceback through instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from tasu.errors import DEBUG_ENV, run_reporting
from tasu.funasr_import import use_lean_import



def _validate(args: argparse.Namespace) -> int:
    from tasu.data.validate import run_validate

    return run_validate(args.data, prompts=args.prompts, check_audio=args.check_audio or args.read_audio,
                        read_audio=args.read_audio, unlabelled=args.unlabelled, allow_pipes=args.allow_pipes)


def _simulate(args: argparse.Namespace) -> int:
    from tasu.encoders import load_tokenizer
    from tasu.simulate import show_simulation

    config, encoder, encoder_type, cfg = _simulation_config(args)
    tokenizer = load_tokenizer(encoder, encoder_type=encoder_type)   # no weights, no framework
    print(show_simulation(tokenizer, args.text, config, topk=args.topk, seed=args.seed, step=args.step,
                          samples=args.samples, encoder_identity=_simulated_for(config, encoder, encoder_type, cfg)))
    return 0


def _simulated_for(config, encoder: str, encoder_type: str, cfg):
    """What a learned simulator's teacher is compared with (``tasu.dump.identity``; hashing the encoder's
    files is for it alone): the experiment's encoder and compression, or without ``--config`` the
    encoder's files alone (no compression nor load options are given)."""
    from tasu.compress import CompressConfig
    from tasu.dump import identity

    if config.name != "learned":
        return None
    if cfg is not None:
        return identity(cfg.encoder.path, cfg.encoder.type, cfg.compress, cfg.encoder.options)
    ident = identity(encoder, encoder_type, CompressConfig())
    del ident["compress"]
    return ident


def _simulation_config(args: argparse.Namespace):
    """The simulation to show, the encoder whose tokenizer it uses and the experiment config: a training
    config's (with overrides; ``--encoder`` replaces its ``encoder.path``), or the ones the flags describe
    (no config: None)."""
    from tasu.config import ConfigError, load_config, require_dir
    from tasu.simulate import SimulationConfig, WERSchedule
    from tasu.experiment import ExperimentConfig

    if args.config:
        flags = [f for f in ("alpha_min", "alpha_max", "drop_prob", "insert_ratio", "sub_prob", "confusion", "wer",
                             "simulator", "simulator_path", "temperature") if getattr(args, f) is not None]
        if flags:
            raise ConfigError(f"--config gives the simulation: override it as simulation.KEY=VALUE, not "
                              f"--{flags[0].replace('_', '-')}")
        overrides = list(args.overrides) + ([f"encoder.path={args.encoder}"] if args.encoder else []) + \
            ([f"encoder.type={args.encoder_type}"] if args.encoder_type != "auto" else [])
        cfg = load_config(ExperimentConfig, args.config, overrides)
        require_dir("encoder.path", cfg.encoder.path, "pass --encoder DIR (or set it in the config)")
        return cfg.simulation, cfg.encoder.path, cfg.encoder.type, cfg
    if args.overrides:
        raise ConfigError("KEY=VALUE overrides need --config")
    if not args.encoder:
        raise ConfigError("--encoder DIR is needed (its tokenizer), or --config with an encoder.path")

    def value(name, default):
        return default if getattr(args, name) is None else getattr(args, name)

    if args.wer is not None and not 0 <= args.wer[0] <= args.wer[1] <= 1:   # NaN fails it too
        raise ConfigError(f"--wer {args.wer[0]} {args.wer[1]}: need 0 <= LO <= HI <= 1 (rates: 0.1 is 10 %)")
    wer = None if args.wer is None else WERSchedule(start=tuple(args.wer), end=tuple(args.wer))
    try:
        return SimulationConfig(alpha=(value("alpha_min", 0.0), value("alpha_max", 0.1)),
                                drop_prob=value("drop_prob", 0.05), insert_ratio=value("insert_ratio", 0.0),
                                sub_prob=value("sub_prob", 0.0), confusion=value("confusion", "random"), wer=wer,
                                name=value("simulator", "rules"), path=args.simulator_path,
                                temperature=value("temperature", 0.5)), args.encoder, args.encoder_type, None
    except ValueError as e:   # e.g. --simulator learned without --simulator-path or --wer
        raise ConfigError(f"simulation: {e}") from None


def _train(args: argparse.Namespace) -> int:
    from tasu.config import load_config
    from tasu.experiment import ExperimentConfig, check_schedule

    cfg = load_config(ExperimentConfig, args.config, args.overrides)
    check_schedule(cfg)
    if args.dry_run:   # a config check (recipes run one before their first stage): the trainer is not imported
        from tasu.model_io import dump_config

        print(dump_config(cfg), end="")
        return 0
    from tasu.train.trainer import train

    train(cfg, args.exp_dir, resume=args.resume, allow_pipes=args.allow_pipes)
    return 0


def _train_simulator(args: argparse.Namespace) -> int:
    from tasu.train.simulator import load_simulator_training_config, train_simulator

    overrides = list(args.overrides) + ([f"encoder.path={args.encoder}"] if args.encoder else []) + \
        ([f"device={args.device}"] if args.device else [])
    cfg = load_simulator_training_config(args.config, overrides)
    report = train_simulator(cfg, args.data, args.out, resume=args.resume, allow_pipes=args.allow_pipes)
    on = "" if report.get("held_out", True) else " (on the calibration transcripts: too few others)"
    for row in report.get("rows", []):
        print(f"asked WER {100 * row['asked']:.1f} %: simulated token error rate {100 * row['simulated']:.1f} %{on}")
    return 0


def _decode(args: argparse.Namespace) -> int:
    from tasu.decode import run_decode

    return run_decode(args.exp, args.data, args.out, checkpoint=args.checkpoint, input_kind=args.input,
                      beam=args.beam, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                      no_repeat_ngram_size=args.no_repeat_ngram_size, repetition_penalty=args.repetition_penalty,
                      device=args.device, overrides=args.overrides, allow_pipes=args.allow_pipes,
                      seed=args.seed)


def _dump_posteriors(args: argparse.Namespace) -> int:
    from tasu.config import load_config, require_dir
    from tasu.dump import dump_posteriors
    from tasu.experiment import ExperimentConfig

    overrides = list(args.overrides) + ([f"encoder.path={args.encoder}"] if args.encoder else [])
    cfg = load_config(ExperimentConfig, args.config, overrides)
    require_dir("encoder.path", cfg.encoder.path, "pass --encoder DIR (or set it in the config)")
    print(dump_posteriors(args.data, args.out, cfg.encoder.path, cfg.encoder.type, cfg.compress, nj=args.nj,
                          job=args.job, batch_size=args.batch_size, device=args.device,
                          allow_pipes=args.allow_pipes, encoder_options=cfg.encoder.options,
                          remake_stale=args.remake_stale))
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    from tasu.api import Speech2Text
    from tasu.data.audio import NOT_RUN, AudioError, audio_info, is_command

    for path in args.audio:   # every file readable, from its header, before the model loads
        if is_command(path) and not args.allow_pipes:   # a file named "x; rm y |" in a folder a glob read
            raise AudioError(path, NOT_RUN)
        audio_info(path)
    fields = {}
    for field in args.field:   # before the model loads
        name, eq, value = field.partition("=")
        if not eq or not name.isidentifier() or not value.strip():
            usage_error("tasu transcribe", f"--field {field}: write NAME=VALUE, e.g. --field hotword=Dublin")
        if name in ("task", "nbest", "sample_rate", "audio"):
            usage_error("tasu transcribe", f"--field {field}: {name} is no prompt field"
                        + (" (--task names the task)" if name == "task" else ""))
        fields[name] = value
    s2t = Speech2Text.from_pretrained(args.exp, checkpoint=args.checkpoint, device=args.device,
                                      overrides=tuple(args.overrides), beam=args.beam,
                                      max_new_tokens=args.max_new_tokens, allow_pipes=args.allow_pipes)

    def line(text: str) -> str:  # one line per answer, as in hyp.trn
        return " ".join(text.split())

    for path in args.audio:   # one at a time: a line appears as soon as its file is done
        shown = repr(path) if "\t" in path or path.splitlines() != [path] else path   # a tab or line break: quoted
        if args.nbest:
            for rank, hyp in enumerate(s2t(path, task=args.task, nbest=args.nbest, **fields), 1):
                print(f"{shown}\t{rank}\t{hyp.score:.4f}\t{line(hyp.text)}", flush=True)
        else:
            print(f"{shown}\t{line(s2t(path, task=args.task, **fields))}", flush=True)
    return 0


def _export(args: argparse.Namespace) -> int:
    from tasu.export import export

    out = export(args.exp, args.out, checkpoint=args.checkpoint, overrides=args.overrides)
    print(f"exported {args.exp} ({args.checkpoint}) to {out}", file=sys.stderr)
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from tasu.analyze import report, run_analyze
    from tasu.config import load_config
    from tasu.experiment import ExperimentConfig

    overrides = list(args.overrides) + ([f"encoder.path={args.encoder}"] if args.encoder else [])
    cfg = load_config(ExperimentConfig, args.config, overrides)
    summary = run_analyze(cfg, args.data, args.out, limit=args.limit, batch_size=args.batch_size, seed=args.seed,
                          allow_pipes=args.allow_pipes, device=args.device, match_wer=args.match_wer)
    print(report(summary), end="")
    return 0


def _score(args: argparse.Namespace) -> int:
    from tasu.score import run_score

    return run_score(args.ref, args.hyp, args.metric, norm=args.norm, out_dir=args.out,
                     bleu_tokenize=args.bleu_tokenize, missing=args.missing)


def _results(args: argparse.Namespace) -> int:
    from tasu.results import run_results

    return run_results(args.exp_root, compare=args.compare)


def at_least(least: int):
    """An argparse type: a whole number of at least ``least``, refused while the command line is read
    (before any model loads) with the option named."""
    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value
    return whole_number


def key_value(text: str) -> str:
    """The argparse type of ``--set``: one ``KEY=VALUE``. ``--set`` takes every word after it, so an
    audio file written after it would be taken as an override and the files reported missing."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (put --set after the other arguments, "
                                         "or '--' between its last KEY=VALUE and them)")
    return text


def usage_error(prog: str, message: str) -> NoReturn:
    """A command line that does not parse: one line (argparse printed its usage block first), exit 2."""
    print(f"{prog}: error: {message} ({prog} --help lists the options)", file=sys.stderr)
    sys.exit(2)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with its usage errors as one line (subcommands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        usage_error(self.prog, message)


class _RaisingParser(argparse.ArgumentParser):
    """argparse's parser, with its usage errors raised as ValueError (argparse's message): for checks of
    options written elsewhere, which name their own source."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def check_decode_options(words: list[str]) -> None:
    """Check ``tasu decode`` options (``["--beam", "4"]``) as ``tasu decode`` does, by its own parser and
    settings (names, types, ranges; audio input) without decoding: a ValueError says what is wrong. A
    recipe checks its decode settings so before training, not at its decode stage hours later."""
    from tasu.decode import DecodeOptions

    args = get_parser(_RaisingParser).parse_args(["decode", "--exp", "", "--data", "", "--out", "", *words])
    DecodeOptions(input=args.input, beam=args.beam, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                  no_repeat_ngram_size=args.no_repeat_ngram_size, repetition_penalty=args.repetition_penalty,
                  seed=args.seed)


def get_parser(parser_class: type[argparse.ArgumentParser] = _Parser) -> argparse.ArgumentParser:
    """The ``tasu`` command line; ``parser_class``, that of it and its subcommands, says what a usage error does."""
    parser = parser_class(prog="tasu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # from deepspeed
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help=f"on an error, show the traceback instead of one line (also: {DEBUG_ENV}=1)")
    pipes = argparse.ArgumentParser(add_help=False)
    pipes.add_argument("--allow-pipes", action="store_true",
                       help="run the shell commands of audio paths ending in '|' (wav.scp pipes); "
                            "without it such a record is an error. Only for data you trust")

    trained = argparse.ArgumentParser(add_help=False)   # decode and transcribe: a trained model, beam search
    trained.add_argument("--checkpoint", default="best",
                         help="best (lowest validation loss; last when never validated), last, or step_N")
    trained.add_argument("--beam", type=at_least(1), default=4, help="beam size")
    trained.add_argument("--max-new-tokens", type=at_least(1), default=200, help="hard cap on each output's length")
    trained.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "npu"])
    trained.add_argument("--set", dest="overrides", nargs="+", action="extend", type=key_value, default=[],
                         metavar="KEY=VALUE",
                         help="change the saved config, e.g. llm.path=DIR when the base models moved")

    p = sub.add_parser("validate", help="check JSONL data files (and their audio) before training",
                       parents=[common, pipes])
    p.add_argument("data", nargs="+", help="JSONL files, one record per line")
    p.add_argument("--prompts", default=None,
                   help="prompts JSONL every task must appear in (default: the English prompt set)")
    p.add_argument("--check-audio", action="store_true",
                   help="also open every audio file header / ark offset and sum the hours")
    p.add_argument("--read-audio", action="store_true",
                   help="--check-audio, and read every sample too (damaged compressed data, NaN, int16 "
                        "values stored as floats): as slow as reading the corpus once")
    p.add_argument("--unlabelled", action="store_true",
                   help="records may lack a target: audio to transcribe, as tasu decode reads it")
    p.set_defaults(func=_validate)

    p = sub.add_parser("simulate", help="print the simulated CTC posteriors of a transcript",
                       parents=[common])
    p.add_argument("--encoder", default=None,
                   help="encoder directory, its tokenizer all that is read (else the config's encoder.path)")
    p.add_argument("--encoder-type", default="auto",
                   help="a registered encoder backend (sensevoice, small_ctc, hf_ctc, espnet, ...) "
                        "or auto: detected from the files of --encoder (default)")
    p.add_argument("--text", required=True, help="the transcript to simulate")
    p.add_argument("--topk", type=at_least(1), default=3, help="entries to print per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None,
                   help="experiment YAML whose simulation section to show (KEY=VALUE overrides after it)")
    p.add_argument("--step", type=at_least(0), default=0, help="training step (where a WER schedule stands)")
    p.add_argument("--samples", type=at_least(1), default=1, help="draws the mean token error rate is taken over")
    p.add_argument("--alpha-min", type=float, default=None, help="smoothing alpha ~ U(min, max) (0)")
    p.add_argument("--alpha-max", type=float, default=None, help="(0.1)")
    p.add_argument("--drop-prob", type=float, default=None, help="probability of dropping a token row (0.05)")
    p.add_argument("--insert-ratio", type=float, default=None,
                   help="inserted rows (repeats and blanks) per token (0)")
    p.add_argument("--sub-prob", type=float, default=None, help="probability of substituting a token (0)")
    p.add_argument("--confusion", default=None, choices=["random", "spelling"],
                   help="where substitutes come from: any token, or tokens spelt alike (random)")
    p.add_argument("--wer", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="WER-controlled simulation: exact-count edits at a rate drawn from [LO, HI] "
                        "(the learned simulator: its condition)")
    p.add_argument("--simulator", default=None, help="a registered simulator: rules (default) or learned")
    p.add_argument("--simulator-path", default=None, help="the learned simulator's directory (tasu train-simulator)")
    p.add_argument("--temperature", type=float, default=None, help="the learned simulator's sampling temperature (0.5)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="with --config: e.g. simulation.drop_prob=0.1")
    p.set_defaults(late_overrides=True)   # KEY=VALUE anywhere on the line (main)
    p.set_defaults(func=_simulate)

    p = sub.add_parser("train", help="train a speech LLM (text-only, audio or mixed) on DeepSpeed",
                       parents=[common, pipes])
    p.add_argument("--config", required=True, help="experiment YAML (see tasu/experiment.py)")
    p.add_argument("--exp-dir", help="experiment directory: checkpoints, logs, tensorboard")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in --exp-dir (optimizer, scheduler, data position)")
    p.add_argument("--dry-run", action="store_true", help="check the config and print it resolved; train nothing")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1e-4")
    p.set_defaults(late_overrides=True)   # KEY=VALUE anywhere on the line (main)
    p.set_defaults(func=_train)

    p = sub.add_parser("train-simulator", help="train the learned posterior simulator on a frozen encoder's "
                       "posteriors of clean and degraded audio", parents=[common, pipes])
    p.add_argument("--config", default=None, help="simulator YAML (see tasu/train/simulator.py); default: its defaults")
    p.add_argument("--data", required=True, nargs="+",
                   help="JSONL records with audio (or posterior dump entries) and a transcript")
    p.add_argument("--out", required=True, help="the simulator's directory: config.json, model.safetensors, "
                   "report.json, checkpoints/")
    p.add_argument("--encoder", default=None, help="the teacher encoder's directory (else the config's encoder.path)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "npu"])
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.max_steps=500")
    p.set_defaults(late_overrides=True)   # KEY=VALUE anywhere on the line (main)
    p.set_defaults(func=_train_simulator)

    p = sub.add_parser("decode", help="beam-search decode a JSONL file with a trained model into hyp.trn/ref.trn",
                       parents=[common, pipes, trained], allow_abbrev=False)   # the recipe refuses --input, not --inp
    p.add_argument("--exp", required=True, help="experiment dir (or one checkpoint dir)")
    p.add_argument("--data", required=True, help="JSONL records to decode, of any task")
    p.add_argument("--out", required=True,
                   help="output dir: hyp.trn, ref.trn, decode.json, decode.log; run again to resume")
    p.add_argument("--input", default="audio", choices=["audio", "simulated", "posteriors"],
                   help="simulated: posteriors simulated from each record's transcript; posteriors: the "
                        "encoder's, read from a dump (the JSONL tasu dump-posteriors writes); neither loads "
                        "encoder weights")
    p.add_argument("--batch-size", type=at_least(1), default=8, help="utterances per batch (sorted by length)")
    p.add_argument("--no-repeat-ngram-size", type=at_least(0), default=0, help="> 0: no n-gram repeats in an output")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1: penalise tokens already generated")
    p.add_argument("--seed", type=int, default=0,
                   help="--input simulated: which draw of the simulated posteriors (each record's rows are "
                        "seeded by its key and this)")
    p.set_defaults(func=_decode)

    p = sub.add_parser("dump-posteriors", help="run the frozen encoder once over JSONL files and keep its "
                       "compressed posteriors (Kaldi ark/scp) for audio training and decoding", parents=[common, pipes])
    p.add_argument("--config", required=True,
                   help="experiment YAML (a recipe's conf, or an experiment's config.yaml): its encoder and "
                        "compress sections")
    p.add_argument("--data", required=True, nargs="+", help="JSONL files with audio (distinct file names)")
    p.add_argument("--out", required=True, help="dump directory: ark/scp, one JSONL per input with each "
                   "record's entry, dump.json, .done; run again to resume (finished jobs are kept, a killed "
                        "job is redone whole: a large set is best split, --nj)")
    p.add_argument("--encoder", default=None, help="encoder directory (else the config's encoder.path)")
    p.add_argument("--nj", type=at_least(1), default=1, help="jobs the recordings are split over")
    p.add_argument("--job", type=int, default=None,
                   help="run only this job (1..NJ), e.g. one of a job runner's array; without it every "
                        "unfinished job runs, then the JSONL files and .done are written")
    p.add_argument("--batch-size", type=at_least(1), default=8, help="recordings per encoder batch")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "npu"])
    p.add_argument("--remake-stale", action="store_true",
                   help="a dump in --out made from other input files (or contents, or audio changed since) or "
                        "--nj, by this encoder and compression, is removed and made anew (else refused); the "
                        "recipes pass it")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", type=key_value, default=[],
                   metavar="KEY=VALUE",
                   help="config overrides, e.g. compress.topk=16")
    p.set_defaults(func=_dump_posteriors)

    p = sub.add_parser("transcribe", help="print a trained model's output for audio files, one line each",
                       parents=[common, trained, pipes])
    p.add_argument("--exp", required=True, help="experiment, checkpoint or exported directory")
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, mp3; any rate and channels)")
    p.add_argument("--task", default="ASR", help="a task of the model's prompt set (default: ASR)")
    p.add_argument("--field", action="append", default=[], metavar="NAME=VALUE",
                   help="a field the task's prompts are filled from, the same for every file "
                        "(e.g. --task hotword --field hotword=Dublin); repeatable")
    p.add_argument("--nbest", type=at_least(0), default=0,
                   help="> 0: print the n best hypotheses, as FILE<TAB>rank<TAB>score<TAB>text")
    p.set_defaults(func=_transcribe)

    p = sub.add_parser("export", help="write a trained model as one directory (LoRA merged, encoder copied)",
                       parents=[common])
    p.add_argument("--exp", required=True, help="experiment dir (or one checkpoint dir)")
    p.add_argument("--out", required=True, help="the new directory")
    p.add_argument("--checkpoint", default="best", help="best, last, or step_N")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", type=key_value, default=[],
                   metavar="KEY=VALUE",
                   help="change the saved config, e.g. llm.path=DIR when the base models moved")
    p.set_defaults(func=_export)

    p = sub.add_parser("analyze", help="compare real (compressed) and simulated posteriors of a set with audio",
                       parents=[common, pipes])
    p.add_argument("--data", required=True, nargs="+", help="JSONL records with audio and a transcript")
    p.add_argument("--out", required=True, help="output dir: summary.json, report.txt, entropy.png, top1_mass.png")
    p.add_argument("--config", default=None,
                   help="experiment YAML whose simulation and compress sections are compared (default: tasu's)")
    p.add_argument("--encoder", default=None, help="encoder directory (else the config's encoder.path)")
    p.add_argument("--limit", type=int, default=None, help="analyze the first N records only")
    p.add_argument("--batch-size", type=at_least(1), default=8)
    p.add_argument("--seed", type=int, default=0, help="seed of the simulation")
    p.add_argument("--match-wer", action="store_true",
                   help="simulate each utterance at the token error rate of its real rows (how the rows err, "
                        "not how much; the rules then make exact-count edits, as with simulation.wer)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "npu"])
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. simulation.drop_prob=0.1")
    p.set_defaults(late_overrides=True)   # KEY=VALUE anywhere on the line (main)
    p.set_defaults(func=_analyze)

    p = sub.add_parser("score", help="score hypotheses: WER/CER with alignments, BLEU/chrF, accuracy",
                       parents=[common])
    p.add_argument("--ref", required=True, help="reference file, key<TAB>text lines (Kaldi 'key text' also read)")
    p.add_argument("--hyp", required=True, help="hypothesis file, key<TAB>text lines (a key alone = empty hypothesis)")
    p.add_argument("--metric", required=True, choices=["wer", "cer", "bleu", "acc"],
                   help="cer counts characters without spaces; acc is exact match of the normalised label")
    p.add_argument("--norm", default=None, choices=["basic", "whisper", "none"],
                   help="text normaliser (default: basic for wer/cer/acc, none for bleu)")
    p.add_argument("--bleu-tokenize", default="auto",
                   help="sacrebleu tokenizer: auto (char when most references are Japanese, Thai, Lao, Khmer "
                        "or Myanmar, zh when most contain Han characters, else 13a), zh, 13a, intl, char, none")
    p.add_argument("--out", default=None, help="directory for score.json, result.txt, alignment.txt "
                   "(default: the hypothesis file's directory)")
    p.add_argument("--missing", default="error", choices=["error", "empty"],
                   help="a reference with no hypothesis: an error (default: its decode stopped partway), or "
                        "scored as an empty hypothesis (all deletions) and listed")
    p.set_defaults(func=_score)

    p = sub.add_parser("results", help="collect every score.json under EXP_ROOT into RESULTS.md tables",
                       parents=[common])
    p.add_argument("exp_root", help="directory of experiments: EXP_ROOT/<exp_tag>/.../score.json")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="experiments A and B side by side per dataset and metric, with B - A")
    p.set_defaults(func=_results)
    return parser


def main(argv: list[str] | None = None) -> int:
    use_lean_import()
    parser = get_parser()
    args, rest = parser.parse_known_args(argv)
    # KEY=VALUE overrides may stand anywhere ('--resume train.max_steps=3'): argparse takes positionals
    # in one run only and would call the later ones unrecognized
    late = [a for a in rest if "=" in a and not a.startswith("-")]
    if late and getattr(args, "late_overrides", False):
        args.overrides += late
        rest = [a for a in rest if a not in late]
    prog = f"tasu {args.command}"
    if rest:
        usage_error(prog, f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "train" and not args.dry_run and not args.exp_dir:
        usage_error(prog, "--exp-dir is required")
    if args.command == "transcribe" and args.nbest > args.beam:   # before the model loads
        usage_error(prog, f"--nbest {args.nbest} is more hypotheses than --beam {args.beam} keeps: raise --beam "
                          f"to {args.nbest} or more")
    prog = f"tasu {args.command}"
    if os.environ.get("WORLD_SIZE", "1") != "1":   # one process of several: whose line is whose
        prog += f" (rank {os.environ.get('RANK', '?')})"
    return run_reporting(prog, lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
