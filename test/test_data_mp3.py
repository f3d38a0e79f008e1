"""MP3 streams that state no length: counted from their frames, as soundfile alone cannot."""
import io

import numpy as np
import pytest
import soundfile

from tasu.data.audio import AudioError, AudioInfo, audio_info, load_audio
from tasu.data.mp3 import Counted, count_unstated, frame_at

# A Layer III frame of silence (MPEG-1, 64 kbit/s, 48 kHz, mono): header, then zeros (192 bytes)
SILENT_FRAME = bytes([0xFF, 0xFB, 0x54, 0xC0]) + bytes(188)
ID3 = b"ID3\x04\x00\x00" + bytes([0, 0, 7, 104]) + bytes(1000)   # a 1000-byte ID3v2 tag (7 * 128 + 104)


def speech_like() -> np.ndarray:
    """A tone, then noise: a variable-bitrate encoder spends few bits on the first and many on the second."""
    t = np.arange(3 * 48000) / 48000
    noise = np.random.default_rng(0).standard_normal(3 * 48000) * 0.3
    return np.concatenate([0.3 * np.sin(2 * np.pi * 300 * t), noise]).astype(np.float32)


def test_frame_headers_are_read_as_the_standard_defines_them():
    assert frame_at(SILENT_FRAME, 0) == (192, 1152, 64, 17)
    assert frame_at(bytes([0xFF, 0xF3, 0x40, 0x00]), 0) == (104, 576, 32, 17)   # MPEG-2, 22.05 kHz, stereo
    assert frame_at(bytes([0xFF, 0xFB, 0x04, 0x00]), 0) is None     # "free" bitrate
    assert frame_at(b"TAG" + bytes(125), 0) is None                # an ID3v1 tag at the end


def test_a_stream_that_states_no_length_is_counted_frame_by_frame(tmp_path):
    data = ID3 + SILENT_FRAME * 50 + b"TAG" + bytes(125)
    assert count_unstated(data) == Counted(50 * 1152, constant_rate=True)
    # soundfile's estimate counts the tag's bytes as audio: the whole file was 'truncated'
    (tmp_path / "cbr.mp3").write_bytes(data)
    assert soundfile.info(tmp_path / "cbr.mp3").frames > 50 * 1152
    assert audio_info(str(tmp_path / "cbr.mp3")) == AudioInfo(50 * 1152, 48000)
    assert load_audio(str(tmp_path / "cbr.mp3")).shape == (50 * 1152 // 3,)
    assert load_audio(f"cat {tmp_path}/cbr.mp3 |").shape == (50 * 1152 // 3,)


def test_a_variable_bitrate_stream_without_its_header_is_refused_not_read_in_part(tmp_path):
    """soundfile estimates such a stream's length from its first frame, reads that much and stops:
    6 s of audio were read as about 1.5 s, silently."""
    encoded = io.BytesIO()
    soundfile.write(encoded, speech_like(), 48000, format="MP3", bitrate_mode="VARIABLE")
    data = encoded.getvalue()
    assert count_unstated(data) is None   # soundfile's own files state their length (a Xing header) ...
    assert audio_info(_write(tmp_path / "tagged.mp3", data)) == AudioInfo(6 * 48000, 48000)
    headerless = data[frame_at(data, 0).size:]   # ... without that first frame they do not
    counted = count_unstated(headerless)
    assert not counted.constant_rate and counted.samples > 6 * 48000
    path = _write(tmp_path / "vbr.mp3", headerless)
    assert soundfile.info(path).frames < 3 * 48000   # what soundfile would read
    for source, remedy in ((path, "re-encode it"), (f"cat {path} |", "write WAV there instead")):
        for read in (audio_info, load_audio):
            with pytest.raises(AudioError, match=r"an MP3 that states no length \(no Xing/Info header\) at a variable "
                                                 rf"bitrate: soundfile reads \d+ of its \d+ samples; {remedy}"):
                read(source)


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)
