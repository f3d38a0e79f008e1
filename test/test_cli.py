"""The ``tasu`` command's error lines: one line a failure, the traceback only when asked for."""
import subprocess

from tasu.cli import main
from tasu.errors import describe_error


def test_errors_become_one_line():
    worker = RuntimeError("Caught AudioError in DataLoader worker process 0.\n"
                          "Original Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
                          "tasu.data.audio.AudioError: u1: a.wav: truncated: 10 bytes follow the header\n")
    assert describe_error(worker) == "u1: a.wav: truncated: 10 bytes follow the header"
    assert describe_error(OSError(28, "No space left on device", "/exp/x/loss.tsv")) == \
        "/exp/x/loss.tsv: No space left on device"
    assert describe_error(FileNotFoundError("exp/x holds no complete checkpoint yet")) == \
        "exp/x holds no complete checkpoint yet"
    assert describe_error(RuntimeError("size mismatch\n  for w")) == \
        "RuntimeError: size mismatch; for w (--debug or TASU_DEBUG=1 shows the traceback)"


def test_a_failing_command_prints_one_line_and_exits_1(tmp_path, capsys):
    assert main(["results", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tasu results: error: ") and err.count("\n") == 1
    out = subprocess.run(["tasu", "score", "--ref", str(tmp_path / "r"), "--hyp", str(tmp_path / "h"),
                          "--metric", "wer", "--debug"], capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback (most recent call last)" in out.stderr   # --debug: where it failed
    assert "tasu score: error: " not in out.stderr   # no command prints its own errors past --debug


def test_a_process_of_several_names_its_rank(tmp_path, capsys, monkeypatch):
    """Two ranks of a failed training printed two 'tasu train: error:' lines, the cause and the other
    rank's knock-on error, alike."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["results", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err.startswith("tasu results (rank 1): error: ")


def test_counts_and_sizes_are_checked_while_the_command_line_is_read(tmp_path, capsys):
    """A beam of 0, a batch of -5 or --nbest -1 stopped only after the model had loaded, or (analyze's
    batch size) was taken as 'everything in one batch'; --repetition-penalty nan and --wer HI < LO
    named no option. Nothing here exists: each is refused before anything is opened."""
    import pytest

    nothing = str(tmp_path / "none")
    cases = [(["decode", "--exp", nothing, "--data", nothing, "--out", nothing, "--beam", "0"],
              "argument --beam: must be at least 1, got 0"),
             (["analyze", "--config", nothing, "--data", nothing, "--out", nothing, "--batch-size", "-5"],
              "argument --batch-size: must be at least 1, got -5"),
             (["transcribe", "--exp", nothing, "--nbest", "-1", nothing],
              "argument --nbest: must be at least 0, got -1"),
             (["dump-posteriors", "--config", nothing, "--data", nothing, "--out", nothing, "--nj", "x"],
              "argument --nj: expected a whole number, got 'x'")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        # one line (argparse's usage block is not printed), naming the command
        assert stop.value.code == 2 and capsys.readouterr().err == (f"tasu {argv[0]}: error: {message} "
                                                                    f"(tasu {argv[0]} --help lists the options)\n")
    assert main(["decode", "--exp", nothing, "--data", nothing, "--out", nothing, "--repetition-penalty", "nan"]) == 1
    assert capsys.readouterr().err == "tasu decode: error: repetition_penalty must be > 0 (1: off), got nan\n"
    assert main(["simulate", "--encoder", nothing, "--text", "a", "--wer", "0.5", "0.1"]) == 1
    assert "--wer 0.5 0.1: need 0 <= LO <= HI <= 1" in capsys.readouterr().err


def test_set_takes_only_key_value_words(tmp_path, capsys):
    """'tasu transcribe --exp E --set k=v a.wav': --set took the audio file too, and the command said
    'the following arguments are required: audio'. A word without '=' is now refused with the remedy;
    after '--', or with --set last, the same command line parses."""
    import pytest

    from tasu.cli import get_parser

    nothing = str(tmp_path / "none")
    for argv in (["transcribe", "--exp", nothing, "--set", "llm.path=/m", "a.wav"],
                 ["dump-posteriors", "--config", nothing, "--data", nothing, "--out", nothing, "--set", "topk"]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        assert capsys.readouterr().err.strip().endswith(
            f"argument --set: {argv[-1]!r} is not KEY=VALUE (put --set after the other arguments, "
            f"or '--' between its last KEY=VALUE and them) (tasu {argv[0]} --help lists the options)")
    for argv in (["transcribe", "--exp", nothing, "--set", "llm.path=/m", "b=1", "--", "a.wav"],
                 ["transcribe", "--exp", nothing, "a.wav", "--set", "llm.path=/m", "b=1"]):
        args = get_parser().parse_args(argv)
        assert (args.audio, args.overrides) == (["a.wav"], ["llm.path=/m", "b=1"])


def test_key_value_overrides_may_follow_the_options(tmp_path, capsys):
    """'--resume train.max_steps=3' was 'unrecognized arguments': argparse reads positionals in one run.
    Where overrides are an option (--set) a stray KEY=VALUE stays an error."""
    import pytest

    config = tmp_path / "train.yaml"
    config.write_text("optim: {lr: 1.0e-3}\n")
    assert main(["train", "--config", str(config), "optim.lr=0.02", "--dry-run", "train.seed=5"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.02" in out and "seed: 5" in out
    with pytest.raises(SystemExit):
        main(["decode", "--exp", "e", "--data", "d", "--out", "o", "llm.path=x"])
    assert "unrecognized arguments: llm.path=x" in capsys.readouterr().err
