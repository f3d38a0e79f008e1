"""SenseVoice's frontend, shared by the SenseVoice and small CTC encoders: funasr's ``WavFrontend``.

80-dim Kaldi fbank (25 ms / 10 ms, hamming) -> low frame rate stacking (LFR: ``lfr_m`` frames every
``lfr_n``; SenseVoice 7 and 6, so 560 dims every 60 ms) -> global CMVN from ``am.mvn``. ``am.mvn`` is
a Kaldi nnet1 text file: an ``<AddShift>`` row (minus the mean) and a ``<Rescale>`` row (one over the
standard deviation), which is what funasr's ``load_cmvn`` reads and what :func:`write_cmvn` writes.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from tasu.encoders.base import ShortWaveformError
from tasu.funasr_import import funasr_class
from tasu.weights import ModelFilesError

if TYPE_CHECKING:
    from funasr.frontends.wav_frontend import WavFrontend


# The frontend_conf entries funasr's fbank and LFR stacking divide or count by, and their defaults.
_FRAME_MS = {"frame_length": 25, "frame_shift": 10}
_COUNTS = {"n_mels": 80, "lfr_m": 1, "lfr_n": 1}


def check_frontend_conf(conf: dict, where: str) -> None:
    """Refuse a ``frontend_conf`` (of config file ``where``) that funasr's frontend cannot run.

    A frame shift of 0 killed the process with SIGFPE (no message) at the first batch, an ``lfr_n`` of
    0 was a ZeroDivisionError naming no file: frame sizes must be at least one 16 kHz sample, the mel
    and LFR counts positive whole numbers.
    """
    for name, default in _FRAME_MS.items():
        value = conf.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value * 16 < 1:
            raise ModelFilesError(f"{where}: frontend_conf.{name} is {value!r}: it must be a number of "
                                  "milliseconds, at least one sample (1/16 ms at 16 kHz)")
    for name, default in _COUNTS.items():
        value = conf.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelFilesError(f"{where}: frontend_conf.{name} is {value!r}: it must be a whole number, 1 or more")


def build_wav_frontend(frontend_conf: dict, cmvn_file: str | Path | None) -> WavFrontend:
    """A ``WavFrontend`` from a config.yaml ``frontend_conf``, with dither off.

    funasr's default dither is 1.0 and the released SenseVoiceSmall config does not override it,
    so funasr's own inference adds random noise to every fbank; a frozen encoder that produces
    training targets should give the same posteriors for the same audio, so dither is 0 here.
    """
    conf = {k: v for k, v in frontend_conf.items() if k != "cmvn_file"}
    conf["dither"] = 0.0
    WavFrontend = funasr_class("funasr.frontends.wav_frontend", "WavFrontend")
    frontend = WavFrontend(**conf)
    if cmvn_file is not None:
        frontend.cmvn_file = str(cmvn_file)
        frontend.cmvn = read_cmvn(cmvn_file, frontend)
    return frontend


def read_cmvn(path: str | Path, frontend: WavFrontend) -> torch.Tensor:
    """funasr's ``load_cmvn`` of ``path``, refused naming the file where it fails or does not fit.

    funasr's ``apply_cmvn`` cuts the CMVN to the features' width, so a wider one (SenseVoice's 560-dim
    am.mvn beside a 320-dim small CTC model) normalised with the wrong statistics and exit 0, and a
    narrower one failed at the first batch in torch; a blank line was an IndexError. None named the file.
    """
    load_cmvn = funasr_class("funasr.frontends.wav_frontend", "load_cmvn")
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    blank = next((n for n, line in enumerate(lines, 1) if not line.strip()), None)
    if blank is not None:   # funasr's reader looks at each line's first word
        raise ModelFilesError(f"{path}: line {blank} is blank, and funasr's CMVN reader fails on it: remove it")
    try:
        cmvn = load_cmvn(str(path))
        problem = "no values" if cmvn.numel() == 0 else None
    except (IndexError, ValueError) as e:   # a row cut short, two rows of different widths, not numbers
        problem = f"{type(e).__name__}: {e}"
    if problem:
        raise ModelFilesError(f"{path}: not a Kaldi nnet CMVN file with an <AddShift> and a <Rescale> row "
                              f"({problem})")
    if not bool(torch.isfinite(cmvn).all()):   # every feature NaN: the encoder kept no frame of any recording
        raise ModelFilesError(f"{path}: the CMVN holds NaN or infinite values: a damaged file, or statistics of "
                              "features that never varied")
    width, dim = cmvn.shape[1], frontend.output_size()
    if width != dim:
        raise ModelFilesError(f"{path}: CMVN of {width}-dim features, but the frontend gives {dim} "
                              f"(lfr_m {frontend.lfr_m} x n_mels {frontend.n_mels}): the am.mvn of another model?")
    return cmvn


def wav_frontend_features(frontend: WavFrontend, waveforms: Sequence[torch.Tensor]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mono float waveforms in [-1, 1] -> padded LFR(+CMVN) features [B, T, D] and lengths [B]."""
    waves = [torch.as_tensor(w, dtype=torch.float32).reshape(-1) for w in waveforms]
    lengths = torch.tensor([w.numel() for w in waves])
    shift = int(frontend.fs * frontend.frame_shift / 1000)
    short = [i for i, n in enumerate(lengths.tolist()) if n < shift]
    if short:  # the fbank library crashes the process on an empty waveform: refuse it here
        raise ShortWaveformError(short, [int(lengths[i]) for i in short],
                                 f"shorter than one {frontend.frame_shift} ms frame shift ({shift} samples): "
                                 "no features")
    with torch.no_grad():
        feats, feat_lengths = frontend(pad_sequence(waves, batch_first=True), lengths)
    return feats, feat_lengths.to(torch.long)


def estimate_cmvn(utterances: Sequence[torch.Tensor]) -> torch.Tensor:
    """[2, D] CMVN in funasr's convention (row 0 added, row 1 multiplied) from unpadded features
    [T_i, D], one tensor an utterance. The statistics are summed utterance by utterance in float64
    (mean first, then the deviation from it): no concatenated copy, since a training set's features
    can be most of a process's memory."""
    frames = sum(len(u) for u in utterances)
    if frames == 0:
        raise ValueError("estimate_cmvn: no feature frames")
    mean = sum(u.double().sum(0) for u in utterances) / frames
    std = (sum(((u.double() - mean) ** 2).sum(0) for u in utterances) / frames).sqrt().clamp_min(1e-5)
    return torch.stack([-mean, 1.0 / std]).float()


def write_cmvn(path: str | Path, cmvn: torch.Tensor) -> None:
    """Write a [2, D] CMVN as the Kaldi nnet1 ``am.mvn`` text SenseVoice ships."""
    dim = cmvn.shape[1]

    def row(values: torch.Tensor) -> str:
        return "<LearnRateCoef> 0 [ " + " ".join(f"{v:.8g}" for v in values.tolist()) + " ]"

    lines = ["<Nnet>", f"<Splice> {dim} {dim}", "[ 0 ]",
             f"<AddShift> {dim} {dim}", row(cmvn[0]),
             f"<Rescale> {dim} {dim}", row(cmvn[1]), "</Nnet>"]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
