"""Audio reading: files, Kaldi arks, wav.scp pipes, segments, conversion to 16 kHz mono float32."""
import os
import shutil

import kaldiio
import numpy as np
import pytest
import soundfile

from tasu.data.audio import AudioError, AudioInfo, audio_info, load_audio

RATE = 16000


def tone(n, rate=RATE, freq=440.0, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


@pytest.fixture
def wav(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, tone(RATE), RATE, subtype="PCM_16")
    return str(path)


@pytest.fixture
def flac(tmp_path):
    path = tmp_path / "a.flac"
    soundfile.write(path, tone(RATE), RATE)
    return str(path)


def truncate(src, dst, keep):
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[:keep if keep >= 0 else len(data) + keep])
    return str(dst)


def test_wav_and_flac_read_as_16k_mono_float32(wav, flac):
    for path in (wav, flac):
        x = load_audio(path)
        assert x.dtype == np.float32 and x.shape == (RATE,)
        np.testing.assert_allclose(x, tone(RATE), atol=1e-4)
        assert audio_info(path) == AudioInfo(RATE, RATE)
        assert audio_info(path).duration == 1.0


@pytest.mark.parametrize("rate,channels", [(8000, 1), (44100, 2)])
def test_other_rates_and_channels_are_converted(tmp_path, rate, channels):
    left, right = tone(rate * 2, rate, amp=0.6), tone(rate * 2, rate, amp=0.2)
    data = np.stack([left, right], axis=1) if channels == 2 else left
    path = tmp_path / f"in_{rate}.wav"
    soundfile.write(path, data, rate, subtype="FLOAT")
    x = load_audio(str(path))
    assert x.dtype == np.float32 and x.shape == (2 * RATE,)
    expected = tone(2 * RATE, amp=0.4 if channels == 2 else 0.6)
    np.testing.assert_allclose(x[1000:-1000], expected[1000:-1000], atol=0.01)
    assert audio_info(str(path)) == AudioInfo(2 * rate, rate)


def test_segments_of_files(wav):
    np.testing.assert_array_equal(load_audio(wav, start=0.25, end=0.5), load_audio(wav)[4000:8000])
    assert load_audio(wav, start=0.75).shape == (4000,)
    assert audio_info(wav, start=0.25, end=0.5) == AudioInfo(4000, RATE)
    # Kaldi's extract-segments rule: an end up to 0.5 s past the audio is cut back, further is an error.
    assert load_audio(wav, start=0.5, end=1.3).shape == (8000,)
    with pytest.raises(AudioError, match=r"^u1: .*a\.wav: segment end 1\.600 s is past the end of "
                                         r"the audio \(1\.000 s\)$"):
        load_audio(wav, key="u1", start=0.5, end=1.6)
    with pytest.raises(AudioError, match=r"segment start 1\.000 s is not before the end of the audio"):
        audio_info(wav, start=1.0)
    # a segment shorter than a 10 ms frame holds no speech: refused with its key
    with pytest.raises(AudioError, match=r"^u1: .*a\.wav: 159 samples at 16000 Hz: shorter than one 10 ms frame"):
        load_audio(wav, key="u1", start=0.5, end=0.5 + 159 / 16000)
    assert load_audio(wav, start=0.5, end=0.51).shape == (160,)
    with pytest.raises(AudioError, match=r"^u1: .*a\.wav: 15\d samples at 16000 Hz: shorter than one 10 ms"):
        audio_info(wav, key="u1", start=0.5, end=0.5 + 159 / 16000)


def test_missing_and_truncated_files(tmp_path, wav, flac):
    with pytest.raises(AudioError) as e:
        load_audio(str(tmp_path / "nope.wav"), key="u1")
    assert str(e.value) == f"u1: {tmp_path / 'nope.wav'}: no such file"
    with pytest.raises(AudioError) as e:   # a newline in a path split the one-line message in two
        load_audio(str(tmp_path / "a\nb.wav"), key="u1")
    odd = str(tmp_path / "a\nb.wav")
    assert str(e.value) == f"u1: {odd!r}: no such file" and "\n" not in str(e.value)

    cut = truncate(wav, tmp_path / "cut.wav", 44 + 10000)
    for fn in (load_audio, audio_info):
        with pytest.raises(AudioError) as e:
            fn(cut, key="u2")
        assert str(e.value) == (f"u2: {cut}: truncated: the WAV header announces 32000 bytes of "
                                "samples, 10000 follow it")

    cut = truncate(flac, tmp_path / "cut.flac", os.path.getsize(flac) // 2)
    for fn in (load_audio, audio_info):
        with pytest.raises(AudioError, match=r"^u3: .*cut\.flac: truncated or corrupt: .*samples.*\(.+\)$"):
            fn(cut, key="u3")

    (tmp_path / "text.wav").write_text("not audio at all")
    with pytest.raises(AudioError, match=r"text\.wav: cannot read: .*Format not recognised"):
        load_audio(str(tmp_path / "text.wav"))


@pytest.fixture
def arks(tmp_path):
    """A wav-in-ark (8 kHz mono, 16 kHz stereo; int16) and a float ark (vectors, one matrix)."""
    pcm = (tone(8000, 8000) * 32767).astype(np.int16)
    wav_ark, wav_scp = tmp_path / "wav.ark", tmp_path / "wav.scp"
    with kaldiio.WriteHelper(f"ark,scp:{wav_ark},{wav_scp}") as writer:
        writer["mono8k"] = (8000, pcm)
        writer["stereo16k"] = (RATE, np.stack([pcm, pcm // 2], axis=1))
    wave = tone(1600, amp=0.25)
    kaldiio.save_ark(str(tmp_path / "feats.ark"),
                     {"vector": wave, "row": wave[None, :], "column": wave[:, None],
                      "fbank": np.zeros((10, 80), np.float32)},
                     scp=str(tmp_path / "feats.scp"))
    scp = {}
    for name in (wav_scp, tmp_path / "feats.scp"):
        for line in open(name):
            key, path = line.split()
            scp[key] = path
    return scp


def test_audio_entries_of_an_ark_are_read_and_checked_as_files_are(tmp_path):
    """kaldiio's AUDIO entries (ESPnet's flac.ark) hold a sound file's bytes: soundfile read an Ogg entry
    damaged inside as the samples before the damage, silently."""
    noise = (np.random.default_rng(0).standard_normal(3 * RATE) * 0.1).astype(np.float32)
    ark, scp = tmp_path / "audio.ark", tmp_path / "audio.scp"
    kaldiio.save_ark(str(ark), {"flac": (RATE, noise)}, scp=str(scp), write_function="soundfile",
                     write_kwargs={"format": "flac"})
    kaldiio.save_ark(str(tmp_path / "ogg.ark"), {"ogg": (RATE, noise)}, scp=str(tmp_path / "ogg.scp"),
                     write_function="soundfile", write_kwargs={"format": "ogg"}, append=False)
    entry = scp.read_text().split()[1]
    assert audio_info(entry) == AudioInfo(3 * RATE, RATE)
    np.testing.assert_allclose(load_audio(entry), noise, atol=1 / 32768)
    data = bytearray((tmp_path / "ogg.ark").read_bytes())
    data[len(data) // 2] ^= 0x55
    (tmp_path / "ogg.ark").write_bytes(data)
    with pytest.raises(AudioError, match=r"truncated or corrupt: the AUDIO entry announces 48000 samples, \d+ can"):
        load_audio((tmp_path / "ogg.scp").read_text().split()[1])


def test_samples_that_are_not_numbers_are_refused(tmp_path):
    """A float WAV can hold NaN or infinite samples; every row the encoder makes of them is NaN."""
    samples = np.zeros(8000, np.float32)
    samples[[10, 20]] = [np.nan, np.inf]
    soundfile.write(tmp_path / "nan.wav", samples, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"^u1: .*nan\.wav: 2 samples are not finite numbers \(NaN or infinite\)$"):
        load_audio(str(tmp_path / "nan.wav"), key="u1")


def test_arrays_of_any_pcm_type_are_scaled_and_what_is_not_audio_is_refused():
    """Unsigned PCM (8-bit WAV's kind, and 16- or 32-bit from other tools) is centred and scaled as
    signed PCM is; bool, complex or text arrays and a rate that is no whole number of Hz are refused."""
    from tasu.data.audio import to_16k_mono

    ramp = np.linspace(-0.5, 0.5, 1600)
    for dtype in (np.uint8, np.uint16, np.uint32):
        half = 2 ** (8 * np.dtype(dtype).itemsize - 1)
        unsigned = (ramp * half + half).astype(dtype)
        assert np.allclose(to_16k_mono(unsigned, 16000, "<array>"), ramp, atol=1 / 64)
    for samples, kind in ((np.zeros(1600, bool), "bool"), (np.zeros(1600, complex), "complex128")):
        with pytest.raises(AudioError, match=f"samples of type {kind}: not audio"):
            to_16k_mono(samples, 16000, "<array>")
    # np.array of Python ints is int64: int16 values were scaled by 2**63, to silence, and decoded as such
    with pytest.raises(AudioError, match="samples of type int64: no PCM format is 64-bit"):
        to_16k_mono((ramp * 30000).astype(np.int64), 16000, "<array>")
    for rate in (16000.7, "16000", True, float("nan"), float("inf")):
        with pytest.raises(AudioError, match="not a whole number of Hz"):
            to_16k_mono(np.zeros(1600, np.float32), rate, "<array>")
    assert to_16k_mono(np.zeros(1600, np.float32), 16000.0, "<array>").shape == (1600,)


def test_a_sample_rate_no_audio_has_is_refused(tmp_path):
    """A damaged header (or sample_rate=1 handed to Speech2Text) would be resampled to 16,000 times the
    samples: many gigabytes for a second of audio."""
    from tasu.data.audio import to_16k_mono

    soundfile.write(tmp_path / "slow.wav", np.zeros(100, np.int16), 100)
    for read in (load_audio, audio_info):   # validation finds it from the header
        with pytest.raises(AudioError, match=r"slow\.wav: sample rate 100 Hz: not audio \(tasu reads 1000-384000"):
            read(str(tmp_path / "slow.wav"))
    with pytest.raises(AudioError, match="sample rate 1 Hz"):
        to_16k_mono(np.zeros(16000, np.float32), 1, "<array>")


def test_wav_in_ark(arks):
    x = load_audio(arks["mono8k"])
    assert x.dtype == np.float32 and x.shape == (RATE,)
    np.testing.assert_allclose(x[100:-100], tone(RATE)[100:-100], atol=0.01)
    assert audio_info(arks["mono8k"]) == AudioInfo(8000, 8000)
    x = load_audio(arks["stereo16k"])
    np.testing.assert_allclose(x, 0.75 * tone(8000, 8000), atol=1e-3)  # mean of 1 and 1/2
    assert audio_info(arks["stereo16k"]) == AudioInfo(8000, RATE)
    assert load_audio(arks["mono8k"], start=0.5).shape == (8000,)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_a_wav_in_ark_of_any_sample_format_reads_as_the_file_does(tmp_path, subtype):
    """kaldiio reads 8- and 16-bit PCM only: a 24- or 32-bit or a float entry passed validation, then
    stopped decoding ("bytes_per_sample must be 1, 2, 4 or 8")."""
    wav = tmp_path / "x.wav"
    soundfile.write(wav, 0.5 * tone(8000, 8000), 8000, subtype=subtype)
    ark = tmp_path / "x.ark"
    ark.write_bytes(b"first " + wav.read_bytes() + b"second " + wav.read_bytes())
    for offset in (len(b"first "), len(b"first second ") + wav.stat().st_size):
        assert audio_info(f"{ark}:{offset}") == audio_info(str(wav))
        np.testing.assert_array_equal(load_audio(f"{ark}:{offset}"), load_audio(str(wav)))
    # a streamed header (no length) ran on into the next entry: its key and header read as samples
    streamed = bytearray(wav.read_bytes())
    at = streamed.index(b"data") + 4
    streamed[at:at + 4] = b"\xff\xff\xff\xff"
    ark.write_bytes(b"first " + streamed + b"second " + wav.read_bytes())
    for read in (audio_info, load_audio):
        with pytest.raises(AudioError, match="the WAV header gives no length"):
            read(f"{ark}:6")


def test_float_vectors_in_ark_are_waveforms_and_other_matrices_are_features(arks):
    for key in ("vector", "row", "column"):
        np.testing.assert_array_equal(load_audio(arks[key]), tone(1600, amp=0.25))
        assert audio_info(arks[key]) == AudioInfo(1600, RATE)
    assert audio_info(arks["vector"], matrix_rate=8000) == AudioInfo(1600, 8000)
    assert load_audio(arks["vector"], matrix_rate=8000).shape == (3200,)
    with pytest.raises(AudioError) as e:
        load_audio(arks["fbank"], key="f")
    assert str(e.value) == (f"f: {arks['fbank']}: a 10x80 matrix is features, not a waveform "
                            "(a waveform is a vector or a one-row/one-column matrix)")


def test_ark_offset_past_the_end_truncation_and_bad_offsets(tmp_path, arks, wav):
    ark = arks["mono8k"].rsplit(":", 1)[0]
    size = os.path.getsize(ark)
    for fn in (load_audio, audio_info):
        with pytest.raises(AudioError) as e:
            fn(f"{ark}:{size + 10}", key="u1")
        assert str(e.value) == f"u1: {ark}:{size + 10}: offset {size + 10} is past the end of the ark ({size} bytes)"

    cut = truncate(ark, tmp_path / "cut.ark", -100)
    offset = arks["stereo16k"].rsplit(":", 1)[1]
    for fn in (load_audio, audio_info):
        with pytest.raises(AudioError, match=r"truncated: the WAV header announces 32000 bytes of "
                                             r"samples, 31900 follow it$"):
            fn(f"{cut}:{offset}")

    feats = arks["row"].rsplit(":", 1)
    cut = truncate(feats[0], tmp_path / "cut_feats.ark", int(feats[1]) + 100)
    with pytest.raises(AudioError, match=r"truncated: the 1x1600 FM needs 6400 bytes, 85 are left"):
        audio_info(f"{cut}:{feats[1]}")

    with pytest.raises(AudioError, match=r"no audio at offset 1: the entry starts with b'ono8k'"):
        audio_info(f"{ark}:1")
    with pytest.raises(AudioError, match=r"nope\.ark:0: no such ark file$"):
        audio_info(str(tmp_path / "nope.ark:0"))

    shutil.copy(wav, tmp_path / "take:12")   # a file named like an entry was "no such ark file"
    assert audio_info(str(tmp_path / "take:12")) == audio_info(wav)


@pytest.mark.parametrize("name", ["sh payload.sh |", "|sh payload.sh #", "-"])
def test_an_ark_named_like_a_command_is_read_as_a_file(arks, tmp_path, monkeypatch, name):
    """kaldiio opens an ark name that ends or begins with '|' as a shell command ('-' as stdin):
    an ark entry is a file, whatever its name, and a data file cannot run anything through it."""
    monkeypatch.chdir(tmp_path)
    ark, offset = arks["mono8k"].rsplit(":", 1)
    shutil.copy(ark, tmp_path / name)
    (tmp_path / "payload.sh").write_text(f"touch {tmp_path}/ran\ncat {ark}\n")
    np.testing.assert_array_equal(load_audio(f"{name}:{offset}"), load_audio(arks["mono8k"]))
    assert not (tmp_path / "ran").exists()


def test_pipe_commands(wav, tmp_path):
    x = load_audio(f"cat {wav} |")
    np.testing.assert_array_equal(x, load_audio(wav))
    assert audio_info(f"cat {wav} |") == AudioInfo(RATE, RATE)
    assert load_audio(f"cat {wav} |", start=0.5).shape == (8000,)

    with pytest.raises(AudioError) as e:
        load_audio(f"cat {tmp_path}/nope.wav |", key="u1")
    assert str(e.value) == (f"u1: cat {tmp_path}/nope.wav |: command failed (exit status 1): "
                            f"cat: {tmp_path}/nope.wav: No such file or directory")
    with pytest.raises(AudioError, match=r"command wrote no audio to its standard output$"):
        audio_info("true |")
    with pytest.raises(AudioError) as e:   # libsndfile's message named a BytesIO object
        audio_info("echo hello |", key="u2")
    assert str(e.value) == ("u2: echo hello |: the command's output (6 bytes, starting b'hello\\n') is not audio "
                            "(Format not recognised.)")


def test_a_pipe_s_output_cut_or_damaged_is_refused_as_a_file_is(wav, tmp_path):
    """soundfile reads a cut WAV, or an Ogg stream damaged inside, from memory as the samples there
    are: through a wav.scp command (``cat`` exits 0) both passed, and trained with the whole transcript."""
    data = open(wav, "rb").read()
    (tmp_path / "cut.wav").write_bytes(data[:len(data) // 3])
    with pytest.raises(AudioError, match=r"truncated: the WAV header announces 32000 bytes of samples, 10637 follow"):
        audio_info(f"cat {tmp_path}/cut.wav |")
    noise = (np.random.default_rng(0).standard_normal(3 * RATE) * 0.1).astype(np.float32)
    soundfile.write(tmp_path / "damaged.ogg", noise, RATE, subtype="VORBIS")
    ogg = bytearray((tmp_path / "damaged.ogg").read_bytes())
    ogg[len(ogg) // 2] ^= 0x55
    (tmp_path / "damaged.ogg").write_bytes(ogg)
    with pytest.raises(AudioError, match=r"truncated or corrupt: the command's output announces 48000 samples, "):
        load_audio(f"cat {tmp_path}/damaged.ogg |")

    # A FLAC stream written to a pipe states no length (STREAMINFO's 36-bit sample count is 0): soundfile
    # cannot read it from memory ("psf_fseek() failed"), said with the way round
    soundfile.write(tmp_path / "streamed.flac", noise, RATE)
    flac = bytearray((tmp_path / "streamed.flac").read_bytes())
    flac[21] &= 0xF0
    flac[22:26] = bytes(4)
    (tmp_path / "streamed.flac").write_bytes(flac)
    with pytest.raises(AudioError, match=r"the command's output is FLAC that states no length \(written to a "
                                         r"pipe\): write WAV instead"):
        load_audio(f"cat {tmp_path}/streamed.flac |")

    # A header written before the length was known (sox with an effect, ffmpeg to a pipe) is read to the end.
    at = data.index(b"data") + 4
    for placeholder in (0x7FFFF000, 0xFFFFFFFF):
        (tmp_path / "streamed.wav").write_bytes(data[:at] + placeholder.to_bytes(4, "little") + data[at + 4:])
        np.testing.assert_array_equal(load_audio(f"cat {tmp_path}/streamed.wav |"), load_audio(wav))
        assert audio_info(f"cat {tmp_path}/streamed.wav |") == AudioInfo(RATE, RATE)


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed (apt-get install sox)")
def test_sox_pipe_resamples_and_converts(wav):
    x = load_audio(f"sox {wav} -r 8000 -c 2 -t wav - |")
    assert x.shape == (RATE,)
    np.testing.assert_allclose(x[200:-200], tone(RATE)[200:-200], atol=0.02)
    assert audio_info(f"sox {wav} -r 8000 -t wav - |") == AudioInfo(8000, 8000)


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    """Opening a FIFO named like a wav blocked tasu validate --check-audio for ever."""
    fifo = tmp_path / "ff.wav"
    os.mkfifo(fifo)
    for fn in (audio_info, load_audio):
        with pytest.raises(AudioError, match="not a regular file but a pipe, socket or device"):
            fn(str(fifo), key="u1")
    with pytest.raises(AudioError, match="not a regular ark file but a pipe, socket or device"):
        audio_info(f"{fifo}:0")


def test_float_samples_on_the_int16_scale_are_refused_naming_the_file(tmp_path):
    """A float WAV (or Kaldi float vector) holding int16 values reached the encoder ~32768 times too loud
    and was decoded as noise, exit 0; floats past full scale (a float recorder's headroom) are still audio."""
    tone = 0.5 * np.sin(np.linspace(0, 200, 16000)).astype(np.float32)
    soundfile.write(tmp_path / "loud.wav", 8 * tone, 16000, subtype="FLOAT")   # a 32-bit float recorder: +12 dBFS
    assert np.abs(load_audio(str(tmp_path / "loud.wav"))).max() > 3.9
    soundfile.write(tmp_path / "scaled.wav", tone * 32767, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=rf"{tmp_path / 'scaled.wav'}: float samples reach 16383.5, and float audio "
                                         r"lies in \[-1, 1\]: int16 values stored as floats\?"):
        load_audio(str(tmp_path / "scaled.wav"))
    kaldiio.save_ark(str(tmp_path / "v.ark"), {"u": tone * 32767}, scp=str(tmp_path / "v.scp"))
    entry = (tmp_path / "v.scp").read_text().split()[1]
    with pytest.raises(AudioError, match="float samples reach 16383.5"):
        load_audio(entry)


def test_an_error_met_without_its_line_is_placed_at_the_first_record_of_its_key_and_path(tmp_path):
    """A training step reads audio where the record's line is not known: the same key may be in
    several files (one utterance, several tasks), with its own path in each."""
    asr, slu = tmp_path / "asr.jsonl", tmp_path / "slu.jsonl"
    asr.write_text('{"key": "u1", "task": "ASR", "target": "hi", "path": "a.wav"}\n')
    slu.write_text('not json\n{"key": "u0", "task": "SLU_scenario", "target": "x", "path": "b.wav"}\n'
                   '{"key": "u1", "task": "SLU_scenario", "target": "iot", "path": "b.wav"}\n')
    error = AudioError("b.wav", "1 samples are not finite numbers (NaN or infinite)", key="u1")
    placed = error.placed([str(asr), str(slu)])
    assert str(placed) == f"{slu}:3: path: 1 samples are not finite numbers (NaN or infinite) (b.wav)"
    assert error.placed([str(asr)]) is error   # no such record (any more): the error as it was
