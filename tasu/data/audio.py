"""Audio reading: every kind of ``path`` a record can hold, returned as 16 kHz mono float32.

The encoders all want 16 kHz mono, and corpora arrive as anything else, so conversion happens
here, on the fly, once: channels are averaged and other rates resampled with soxr. A ``path`` is

- a file soundfile reads (wav, flac, ogg, ...);
- a Kaldi archive entry ``file.ark:offset`` (the offset of the value, as a Kaldi scp gives it),
  holding one of: a wav file (Kaldi ``wav-copy``, ESPnet ``format_wav_scp.sh``); a kaldiio
  soundfile entry (``AUDIO``, ESPnet's ``flac.ark``); or a float vector, or a matrix with one row or
  one column, holding a waveform. Kaldi stores no sample rate with a vector, so the caller gives it
  (``matrix_rate``, 16 kHz by default), and the values are taken as they are: in [-1, 1] (beyond
  ``MAX_FLOAT_PEAK`` they are refused, as any float audio is: int16 values stored as floats). Any
  other matrix is features, not audio, and is an error;
- a ``wav.scp`` command ending in ``|`` (``sox in.sph -t wav - |``): run by ``/bin/sh``; its
  standard output must be audio that soundfile reads. Running a data file's commands is running
  whatever its author wrote, so the commands that read records (``tasu validate --check-audio``,
  ``tasu decode``, audio training) refuse such a path (``command_refused``) unless the user passes
  ``--allow-pipes``: recipes do, for the data they wrote themselves. ``tasu transcribe`` and the
  Python API (``Speech2Text``, ``allow_pipes=True``) refuse a file name ending in ``|`` the same way.

A segment (``start``/``end`` in seconds, Kaldi's ``segments``) is cut after reading; files are
read from ``start`` to ``end`` only. As Kaldi's ``extract-segments`` does, an ``end`` at most
``MAX_OVERSHOOT`` seconds past the end of the audio is cut back to it; further is an error.

Every failure is one ``AudioError`` naming the record key (when given), the path and what is
wrong: missing file, truncated file, an ark offset past the end, a format that cannot be read, a
command that failed (with its stderr). ``audio_info`` answers "how long is it" by reading only
headers (for an ark entry, the header at its offset), so ``tasu validate --check-audio`` is cheap;
it still detects a file or ark entry shorter than its header announces. For a command it has to
run the command, and its output is checked as a file is.
"""
from __future__ import annotations

import io
import os
import re
import stat
import struct
import subprocess
from typing import NamedTuple

import numpy as np
import soundfile
import soxr
from kaldiio.matio import read_kaldi

from tasu.data import mp3
from tasu.data.records import DataError, iter_records_with_lines

SAMPLE_RATE = 16000
RATES = (1000, 384000)   # sample rates read as audio: anything else is a damaged header or a wrong argument
MAX_OVERSHOOT = 0.5  # seconds; Kaldi's extract-segments --max-overshoot default
MAX_FLOAT_PEAK = 64.0  # past it, floats are int16 values (speech peaks in the thousands), not a 32-bit float
#                       recording over full scale (field recorders keep headroom above 0 dBFS)

_STREAMED = 0x7FFFF000  # a WAV data size from here up: "length unknown" (see _wav_layout)
_ARK_PATH = re.compile(r"(.+):(\d+)")
# Exceptions the libraries raise for data they cannot read (kaldiio asserts on bad markers).
_READ_ERRORS = (OSError, RuntimeError, ValueError, EOFError, AssertionError, struct.error)


class AudioError(Exception):
    """Audio that cannot be read: ``KEY: PATH: message`` (``PATH: message`` without a key)."""

    def __init__(self, path: str, message: str, key: str | None = None):
        self.path, self.message, self.key = path, message, key
        super().__init__(str(self))

    @property
    def shown(self) -> str:
        """The path as printed: quoted when it holds a newline or another control character (one line)."""
        return self.path if self.path.isprintable() else repr(self.path)

    def __str__(self) -> str:
        where = f"{self.key}: {self.shown}" if self.key else self.shown
        return f"{where}: {self.message}"

    def located(self, file: str, line: int) -> DataError:
        """The same problem as the ``path`` field of the record at ``file``:``line``."""
        return DataError(file, line, "path", f"{self.message} ({self.shown})")

    def placed(self, files: list[str]) -> Exception:
        """The same problem at the line of the first record of ``files`` with this key and path.

        For audio read where the record's line is not known (a training step's batch): reading the
        files again costs one pass, once, on the way out. Itself when no record matches (a file
        changed since it was read)."""
        for file in files:
            for line, record in iter_records_with_lines(file, on_error=lambda _: None, require_target=False):
                if record.key == self.key and record.path == self.path:
                    return self.located(file, line)
        return self


class AudioInfo(NamedTuple):
    """Length of a recording (or segment) at its own sample rate."""

    num_samples: int
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


class _Bad(Exception):
    """Internal: what is wrong, before the public functions add key and path."""


def load_audio(path: str, key: str | None = None, start: float | None = None,
               end: float | None = None, matrix_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The samples of ``path`` (from ``start`` to ``end`` seconds) as 16 kHz mono float32.

    Shorter than one 10 ms frame, a recording holds no speech (and an empty waveform crashes
    funasr's fbank, killing the process): it is refused with its key and path, here and by
    :func:`audio_info`, so validation and batching refuse it before any encoder sees it."""
    try:
        kind, target = _parse(path)
        if kind == "file":
            samples, rate = _read_file(target, start, end)
        else:
            samples, rate = _read_pipe(target) if kind == "pipe" else _read_ark(*target, matrix_rate)
            first, last = _segment(len(samples), rate, start, end)
            samples = samples[first:last]
    except _Bad as e:
        raise AudioError(path, str(e), key) from None
    except _READ_ERRORS as e:
        raise AudioError(path, f"cannot read: {e}", key) from None
    return to_16k_mono(samples, rate, path, key)


def to_16k_mono(samples: np.ndarray, rate: int, path: str, key: str | None = None) -> np.ndarray:
    """Samples ``[T]`` or ``[T, C]`` at ``rate`` as the encoders take them: 16 kHz mono float32.

    The one conversion of all audio, read here or handed over as an array (``Speech2Text``), so the
    same recording gives the same samples however it arrives: integer PCM is scaled to [-1, 1) as
    soundfile scales a WAV file's samples, channels are averaged, other rates resampled with soxr, and
    a result shorter than one 10 ms frame, samples that are NaN or infinite (a float file can hold
    them), and floats beyond ``MAX_FLOAT_PEAK`` (int16 values stored as floats: a Kaldi float vector,
    an array scaled by hand) are refused (see :func:`load_audio`) as an ``AudioError`` naming ``path`` (and ``key``).
    """
    _refuse_odd_rate(rate, path, key)
    samples = np.asarray(samples)
    if samples.dtype.kind not in "iuf":   # bool, complex, text, objects: no scale makes them audio
        raise AudioError(path, f"samples of type {samples.dtype}: not audio (PCM integers or floats)", key)
    if samples.dtype.kind in "iu" and samples.dtype.itemsize > 4:   # np.array of Python ints: int16 values
        raise AudioError(path, f"samples of type {samples.dtype}: no PCM format is 64-bit, so no scale is "   # at 1e-15
                               "known; give int16/int32 PCM (e.g. .astype(np.int16)) or floats in [-1, 1]", key)
    was_float = samples.dtype.kind == "f"
    samples = _to_float(samples)
    if not np.isfinite(samples).all():   # a float file can hold them; the encoder would write NaN rows
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise AudioError(path, f"{bad} samples are not finite numbers (NaN or infinite)", key)
    peak = float(max(samples.max(initial=0.0), -samples.min(initial=0.0))) if was_float else 0.0   # no |x| copy
    if peak > MAX_FLOAT_PEAK:   # the encoder heard it ~32768 times too loud, and decoded noise
        raise AudioError(path, f"float samples reach {peak:.6g}, and float audio lies in [-1, 1]: int16 values "
                               "stored as floats? Divide them by 32768, or give int16 PCM", key)
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, rate, SAMPLE_RATE)
    _refuse_too_short(len(samples), SAMPLE_RATE, path, key)
    return np.ascontiguousarray(samples, dtype=np.float32)


def audio_info(path: str, key: str | None = None, start: float | None = None,
               end: float | None = None, matrix_rate: int = SAMPLE_RATE) -> AudioInfo:
    """Samples and sample rate of ``path`` (of its ``start``..``end`` segment), from headers only."""
    try:
        kind, target = _parse(path)
        if kind == "file":
            frames, rate = _file_info(target)
        elif kind == "ark":
            frames, rate = _ark_info(*target, matrix_rate)
        else:
            samples, rate = _read_pipe(target)   # the command has written it all: decoding it is cheap
            frames = len(samples)
        first, last = _segment(frames, rate, start, end)
    except _Bad as e:
        raise AudioError(path, str(e), key) from None
    except _READ_ERRORS as e:
        raise AudioError(path, f"cannot read: {e}", key) from None
    _refuse_odd_rate(rate, path, key)
    _refuse_too_short(last - first, rate, path, key)
    return AudioInfo(last - first, rate)


def _refuse_odd_rate(rate: int, path: str, key: str | None) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) or \
            not np.isfinite(rate) or rate != int(rate):   # NaN: int() raised "cannot convert float NaN"
        raise AudioError(path, f"sample rate {rate!r}: not a whole number of Hz", key)
    if not RATES[0] <= rate <= RATES[1]:   # resampling 1 Hz to 16 kHz would ask for 16,000 times the samples
        raise AudioError(path, f"sample rate {rate} Hz: not audio (tasu reads {RATES[0]}-{RATES[1]} Hz)", key)


def _refuse_too_short(samples: int, rate: int, path: str, key: str | None) -> None:
    if samples * 100 < rate:
        raise AudioError(path, f"{samples} samples at {rate} Hz: shorter than one 10 ms frame, "
                               "no speech fits in it", key)


def is_command(path: str) -> bool:
    """Whether reading ``path`` would run it as a shell command (it ends in ``|``)."""
    return path.rstrip().endswith("|")


NOT_RUN = ("a shell command (it ends in '|'), not run unless asked: "
           "pass --allow-pipes to run the commands of data you trust")


def command_refused(path: str) -> str:
    """Why a command ``path`` is not run: the message of the ``path`` problem it becomes."""
    return f"{path!r} is {NOT_RUN}"


def require_audio_path(path: str | None, file: str, line: int, allow_pipes: bool, needed_for: str) -> None:
    """What a reader of records checks before it reads any audio: the record's ``path`` is there
    (``needed_for`` says what needs it) and is no shell command unless the user allowed commands."""
    if path is None:
        raise DataError(file, line, "path", f"missing: {needed_for}")
    if is_command(path) and not allow_pipes:
        raise DataError(file, line, "path", command_refused(path))


def path_kind(path: str) -> str:
    """How a record's ``path`` (a ``wav.scp`` entry) is read: ``"pipe"`` (run as a shell command),
    ``"ark"`` (an offset into a Kaldi archive) or ``"file"``. A writer of entries asks it, so that a
    file whose name ends in ``|`` or ``:123`` is refused rather than written as something else. By the
    entry's form alone, as Kaldi's readers go: tasu itself reads an existing file named ``take:12``
    when there is no archive ``take``."""
    return _parse(path, by_form=True)[0]


def audio_file(path: str) -> str | None:
    """The file a record's ``path`` reads (an ark entry's archive), or None for a command."""
    kind, target = _parse(path)
    return None if kind == "pipe" else target[0] if kind == "ark" else target


def _parse(path: str, by_form: bool = False) -> tuple[str, object]:
    """``("pipe", command)``, ``("ark", (file, offset))`` or ``("file", path)``."""
    if is_command(path):
        return "pipe", path.rstrip()[:-1]
    match = _ARK_PATH.fullmatch(path)
    if match and (by_form or os.path.exists(match.group(1)) or not os.path.isfile(path)):   # a file "take:12"
        return "ark", (match.group(1), int(match.group(2)))
    return "file", path


def _segment(frames: int, rate: int, start: float | None, end: float | None) -> tuple[int, int]:
    """First and last (exclusive) sample of the ``start``..``end`` segment of ``frames`` samples."""
    if frames == 0:
        raise _Bad("holds no samples")
    first = 0 if start is None else int(round(start * rate))
    last = frames if end is None else int(round(end * rate))
    if first >= frames:
        raise _Bad(f"segment start {start:.3f} s is not before the end of the audio "
                   f"({frames / rate:.3f} s)")
    if last > frames:
        if (last - frames) / rate > MAX_OVERSHOOT:
            raise _Bad(f"segment end {end:.3f} s is past the end of the audio ({frames / rate:.3f} s)")
        last = frames
    return first, last


# ----- files -------------------------------------------------------------------------------------

def _file_info(path: str) -> tuple[int, int]:
    _check_wav_header(path)
    with soundfile.SoundFile(path) as f:
        frames, rate = _frames(f, path), f.samplerate
        if frames and f.format not in ("WAV", "WAVEX"):
            # Compressed formats state their length up front; reading the last frame proves the
            # file really is that long (a cut FLAC fails here, not in the middle of training).
            try:
                f.seek(frames - 1)
                last = f.read(1)
            except soundfile.LibsndfileError as e:
                raise _Bad(f"truncated or corrupt: the header announces {frames} samples, the last "
                           f"cannot be read ({e.error_string})") from None
            if len(last) != 1:
                raise _Bad(f"truncated: the header announces {frames} samples, fewer can be read")
    return frames, rate


def _read_file(path: str, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    _check_wav_header(path)
    with soundfile.SoundFile(path) as f:
        first, last = _segment(_frames(f, path), f.samplerate, start, end)
        try:
            f.seek(first)
            samples = f.read(last - first, dtype="float32", always_2d=True)
        except soundfile.LibsndfileError as e:
            raise _Bad(f"truncated or corrupt: reading samples {first} to {last} failed "
                       f"({e.error_string})") from None
        if len(samples) != last - first:
            raise _Bad(f"truncated: {last - first} samples expected from sample {first}, "
                       f"{len(samples)} read")
        return samples, f.samplerate


def _frames(f: soundfile.SoundFile, source: str | bytes) -> int:
    """The samples of ``f`` (opened from the file ``source``, or from the bytes ``source``): its own
    count, but for an MP3 that states no length, the count of its frames (see ``tasu.data.mp3``)."""
    if f.format != "MP3":
        return f.frames
    data = source
    if isinstance(source, str):
        with open(source, "rb") as raw:
            data = raw.read()
    counted = mp3.count_unstated(data)
    if counted is None:   # its Xing/Info or VBRI header states it
        return f.frames
    if counted.samples > f.frames:   # soundfile reads its estimate and stops: part of the speech, silently
        varying = "" if counted.constant_rate else " at a variable bitrate"
        remedy = ("re-encode it with the header (lame and ffmpeg write one to a file), or decode it in a wav.scp "
                  "command (ffmpeg -i FILE -f wav - |)") if isinstance(source, str) else \
            "write WAV there instead (ffmpeg -f wav -)"
        raise _Bad(f"an MP3 that states no length (no Xing/Info header){varying}: soundfile reads {f.frames} of "
                   f"its {counted.samples} samples; {remedy}")
    return counted.samples


def _open_file(path: str, what: str = "file"):
    """``(size, binary file)`` of ``path``; a FIFO, socket or device is refused (opening or reading one
    can block for ever: a validation hung on a FIFO named like a wav)."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            raise _Bad(f"not a regular {what} but a pipe, socket or device: audio is read from files")
        return os.path.getsize(path), open(path, "rb")
    except FileNotFoundError:
        raise _Bad(f"no such {what}") from None


def _check_wav_header(path: str) -> None:
    """Missing file, or a RIFF/WAVE file shorter than its header says (soundfile hides that)."""
    size, f = _open_file(path)
    with f:
        if f.read(4) == b"RIFF":
            _wav_layout(f, 0, size)


def _wav_layout(f, base: int, size: int, in_ark: bool = False) -> tuple[int, int, int]:
    """``(sample rate, frame bytes, data bytes)`` of the RIFF/WAVE file at byte ``base`` of ``f``.

    ``size`` is where the file (or the ark) ends: a data chunk announcing more bytes than are left
    is a truncated file. A header written before its length was known (to a pipe) says so with
    0xFFFFFFFF (ffmpeg) or 0x7FFFF000 (sox): ``_STREAMED`` and up. A file's samples then run to its
    end, but an ark entry's end cannot be told from the next entry (``in_ark``).
    """
    f.seek(base)
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise _Bad("not a RIFF/WAVE header")
    pos, fmt = base + 12, None
    while True:
        f.seek(pos)
        chunk = f.read(8)
        if len(chunk) < 8:
            raise _Bad("truncated: the WAV file ends before its data chunk")
        chunk_id, chunk_size = chunk[:4], int.from_bytes(chunk[4:], "little")
        if chunk_id == b"fmt ":
            body = f.read(16)
            if len(body) < 16:
                raise _Bad("truncated: the WAV fmt chunk is cut short")
            _, _, rate, _, frame_bytes, _ = struct.unpack("<HHIIHH", body)
            if rate == 0 or frame_bytes == 0:
                raise _Bad(f"bad WAV fmt chunk (rate {rate}, {frame_bytes} bytes per frame)")
            fmt = (rate, frame_bytes)
        elif chunk_id == b"data":
            if fmt is None:
                raise _Bad("the WAV data chunk comes before its fmt chunk")
            left = size - (pos + 8)
            if chunk_size >= _STREAMED:
                if in_ark:
                    raise _Bad("the WAV header gives no length (a streamed header): in an ark, where its "
                               "samples end cannot be told; write the entry with its length")
                chunk_size = left
            elif chunk_size > left:
                raise _Bad(f"truncated: the WAV header announces {chunk_size} bytes of samples, "
                           f"{max(left, 0)} follow it")
            return fmt[0], fmt[1], chunk_size
        pos += 8 + chunk_size + (chunk_size & 1)


# ----- Kaldi archives ----------------------------------------------------------------------------

_MATRIX_BYTES = {b"FM": 4, b"FV": 4, b"DM": 8, b"DV": 8}
_COMPRESSED = (b"CM", b"CM2", b"CM3")


def _ark_info(ark: str, offset: int, matrix_rate: int) -> tuple[int, int]:
    """Length of the ark entry at ``offset``, read from its header, after checking it is whole."""
    size, f = _open_file(ark, "ark file")
    with f:
        if offset >= size:
            raise _Bad(f"offset {offset} is past the end of the ark ({size} bytes)")
        f.seek(offset)
        magic = f.read(5)
        if magic[:4] == b"RIFF":
            rate, frame_bytes, data_bytes = _wav_layout(f, offset, size, in_ark=True)
            return data_bytes // frame_bytes, rate
        if magic[:2] == b"\0B":
            return _vector_length(f, offset, size), matrix_rate
        if magic == b"AUDIO":
            data = _kaldiio_audio_bytes(f, size)
            try:
                with soundfile.SoundFile(io.BytesIO(data)) as entry:
                    return _frames(entry, data), entry.samplerate
            except soundfile.LibsndfileError as e:
                raise _Bad(f"the AUDIO entry ({len(data)} bytes) is not audio ({e.error_string})") from None
    raise _Bad(f"no audio at offset {offset}: the entry starts with {magic!r}, not a wav, an AUDIO "
               "entry or a binary vector/matrix (is the offset the one the scp gives?)")


def _vector_length(f, offset: int, size: int) -> int:
    """Samples of the Kaldi binary vector/matrix at ``offset`` (a one-row/column matrix is a vector)."""
    f.seek(offset + 2)
    kind = f.read(4).split(b" ")[0]
    name = kind.decode("latin-1")
    f.seek(offset + 3 + len(kind))
    try:
        if kind in _MATRIX_BYTES:
            if kind.endswith(b"M"):
                _, rows, _, cols = struct.unpack("<BiBi", f.read(10))
            else:
                rows, (_, cols) = 1, struct.unpack("<Bi", f.read(5))
            payload = rows * cols * _MATRIX_BYTES[kind]
        elif kind in _COMPRESSED:
            _, _, rows, cols = struct.unpack("<ffii", f.read(16))
            payload = {b"CM": 8 * cols + rows * cols, b"CM2": 2 * rows * cols, b"CM3": rows * cols}[kind]
        else:
            raise _Bad(f"unknown Kaldi binary type {name!r} at offset {offset}")
    except struct.error:
        raise _Bad(f"truncated: the ark ends inside the header of the {name} at offset {offset}"
                   ) from None
    if rows < 0 or cols < 0:
        raise _Bad(f"bad {name} header at offset {offset}: {rows}x{cols}")
    left = size - f.tell()
    if payload > left:
        raise _Bad(f"truncated: the {rows}x{cols} {name} needs {payload} bytes, "
                   f"{left} are left in the ark")
    if rows != 1 and cols != 1:
        raise _Bad(f"a {rows}x{cols} matrix is features, not a waveform "
                   "(a waveform is a vector or a one-row/one-column matrix)")
    return rows * cols


def _kaldiio_audio_bytes(f, size: int) -> bytes:
    """The soundfile bytes of a kaldiio ``AUDIO`` entry (``f`` is just past the tag)."""
    width = f.read(1)
    length = int.from_bytes(f.read(width[0]), "little") if width else 0
    data = f.read(length)
    if not width or len(data) < length:
        raise _Bad(f"truncated: the AUDIO entry announces {length} bytes, {len(data)} are left")
    return data


def _read_ark(ark: str, offset: int, matrix_rate: int) -> tuple[np.ndarray, int]:
    _ark_info(ark, offset, matrix_rate)  # the header checks: offset, truncation, features
    # Opened here, not by kaldiio.load_mat: kaldiio runs an ark name that begins or ends in '|' as a
    # shell command, and a data file's ark name is untrusted ("cmd |:3" is a valid file name).
    with open(ark, "rb") as f:
        f.seek(offset)
        magic = f.read(5)
        if magic[:4] == b"RIFF":   # soundfile reads every WAV sample format; kaldiio 8- and 16-bit PCM only
            return _ark_wav(f, offset)
        if magic == b"AUDIO":   # a sound file's bytes (ESPnet's flac.ark), checked as a file is
            return _read_bytes(_kaldiio_audio_bytes(f, os.fstat(f.fileno()).st_size), "the AUDIO entry")
        f.seek(offset)
        value = read_kaldi(f)
    return np.asarray(value, dtype=np.float32).reshape(-1), matrix_rate


def _ark_wav(f, offset: int) -> tuple[np.ndarray, int]:
    """``(samples [T, C] float32, rate)`` of the WAV file at ``offset`` of ark ``f`` (checked whole by
    ``_ark_info``), scaled as soundfile scales a WAV file's samples."""
    _, _, data_bytes = _wav_layout(f, offset, os.fstat(f.fileno()).st_size, in_ark=True)   # f at the samples
    end = f.tell() + data_bytes
    f.seek(offset)
    samples, rate = soundfile.read(io.BytesIO(f.read(end - offset)), dtype="float32", always_2d=True)
    return samples, rate


def _to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM scaled to [-1, 1) (unsigned PCM, 8-bit WAV's kind, centred first); floats as they are."""
    if samples.dtype.kind == "u":
        half = float(2 ** (8 * samples.dtype.itemsize - 1))
        return ((samples.astype(np.float64) - half) / half).astype(np.float32)
    if samples.dtype.kind == "i":
        return samples.astype(np.float32) / float(2 ** (8 * samples.dtype.itemsize - 1))
    return samples.astype(np.float32, copy=False)


# ----- commands ----------------------------------------------------------------------------------

def _run(command: str) -> bytes:
    proc = subprocess.run(command, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise _Bad(f"command failed (exit status {proc.returncode}): "
                   f"{' | '.join(err[-3:]) if err else 'no message on stderr'}")
    if not proc.stdout:
        raise _Bad("command wrote no audio to its standard output")
    return proc.stdout


def _read_pipe(command: str) -> tuple[np.ndarray, int]:
    return _read_bytes(_run(command), "the command's output")


def _read_bytes(data: bytes, what: str) -> tuple[np.ndarray, int]:
    """The samples of a sound file held in memory (a command's output, an ark's AUDIO entry), checked
    as a file's are: from memory soundfile reads a cut WAV or a damaged Ogg stream as the samples
    there are, without a word. (A WAV header written before its length was known, by sox with an
    effect or ffmpeg to a pipe, is read to the end: soundfile counts the samples there are.)"""
    if data[:4] == b"RIFF":
        _wav_layout(io.BytesIO(data), 0, len(data))
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            announced, rate = _frames(f, data), f.samplerate
            if announced >= _STREAMED:   # a FLAC stream written to a pipe: soundfile cannot read it from memory
                raise _Bad(f"{what} is {f.format} that states no length (written to a pipe): write WAV "
                           "instead (sox -t wav -, ffmpeg -f wav -)")
            samples = f.read(announced, dtype="float32", always_2d=True)   # in one read: a short one is damage
    except soundfile.LibsndfileError as e:   # its message names the BytesIO object, not the source
        raise _Bad(f"{what} ({len(data)} bytes, starting {data[:12]!r}) is not audio ({e.error_string})") from None
    if len(samples) < announced:
        raise _Bad(f"truncated or corrupt: {what} announces {announced} samples, {len(samples)} can be read")
    return samples, rate
