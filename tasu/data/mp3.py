"""The length of an MP3 stream that does not state it, counted from its frame headers.

soundfile (libsndfile with mpg123) takes an MP3's length from the Xing/Info (LAME) or VBRI header in
its first frame. Without one (an encoder writing to a pipe, ``ffmpeg -write_xing 0``, some older
encoders) it estimates the length from the file's size and the first frame's bitrate, and reads that
many samples and no more:

- at a constant bitrate the estimate counts an ID3 tag's bytes as audio, so it announces a few
  hundred samples that cannot be read (a whole file looked "truncated");
- at a variable bitrate it can be a fraction of the stream (6 s of speech read as 1.1 s, silently).

Each frame header gives the frame's size, so walking them counts the frames exactly: a decoder
gives ``samples_per_frame`` samples for each (no gapless trimming without a LAME header).
"""
from __future__ import annotations

from typing import NamedTuple

# kbit/s for bitrate indices 1-14, by (MPEG-1, layer); MPEG-2 and 2.5 share theirs
_BITRATES = {
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version bits


class Frame(NamedTuple):
    size: int       # bytes, header included
    samples: int    # samples (per channel) it decodes to
    bitrate: int    # kbit/s
    side_info: int  # bytes of Layer III side information after the header (where a Xing header starts)


class Counted(NamedTuple):
    samples: int         # what a decoder gives: every frame's samples
    constant_rate: bool  # one bitrate throughout


def frame_at(data: bytes, pos: int) -> Frame | None:
    """The MPEG audio frame whose header starts at ``data[pos]``, or None where none does."""
    if pos + 4 > len(data) or data[pos] != 0xFF or data[pos + 1] & 0xE0 != 0xE0:
        return None
    version, layer = (data[pos + 1] >> 3) & 3, 4 - ((data[pos + 1] >> 1) & 3)
    index, rate_index, padding = data[pos + 2] >> 4, (data[pos + 2] >> 2) & 3, (data[pos + 2] >> 1) & 1
    if version == 1 or layer == 4 or index in (0, 15) or rate_index == 3:   # reserved, or free format
        return None
    mpeg1 = version == 3
    bitrate, rate = _BITRATES[mpeg1, layer][index - 1], _SAMPLE_RATES[version][rate_index]
    mono = data[pos + 3] >> 6 == 3
    if layer == 1:
        return Frame((12000 * bitrate // rate + padding) * 4, 384, bitrate, 0)
    per_frame = 1152 if mpeg1 or layer == 2 else 576
    side_info = 0 if layer == 2 else (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    return Frame(per_frame // 8 * 1000 * bitrate // rate + padding, per_frame, bitrate, side_info)


def count_unstated(data: bytes) -> Counted | None:
    """The decoded length of the MP3 stream ``data`` when it states none; None when it does (a Xing,
    Info or VBRI header in its first frame: soundfile's length is then exact) or holds no frame."""
    pos = _after_id3(data)
    while pos + 4 <= len(data):   # the first frame: a header whose next one follows it (not a stray 0xFF)
        frame = frame_at(data, pos)
        if frame is not None and (pos + frame.size >= len(data) or frame_at(data, pos + frame.size)):
            break
        pos += 1
    else:
        return None
    xing = pos + 4 + frame.side_info
    if data[xing:xing + 4] in (b"Xing", b"Info") or data[pos + 36:pos + 40] == b"VBRI":
        return None
    samples, rates = 0, set()
    while frame is not None and pos + frame.size <= len(data):   # to an ID3v1 tag, junk, or a cut frame
        samples += frame.samples
        rates.add(frame.bitrate)
        pos += frame.size
        frame = frame_at(data, pos)
    return Counted(samples, len(rates) == 1)


def _after_id3(data: bytes) -> int:
    """Where the audio starts: past an ID3v2 tag (its size is 4 x 7 bits), if any."""
    if len(data) < 10 or data[:3] != b"ID3":
        return 0
    size = (data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14 | (data[8] & 0x7F) << 7 | (data[9] & 0x7F)
    return 10 + size + (10 if data[5] & 0x10 else 0)   # (a footer repeats the header)
