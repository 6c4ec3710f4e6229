"""Prompt recordings: what users upload is decoded, checked, mixed down and trimmed."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

import audio_variants
from conftest import AUDIO, ZERO_SHOT_PROMPT
from cosyvoice.audio.prompt import load_prompt_audio
from cosyvoice.errors import UserInputError


def test_official_demo_prompt_passes_without_warning():
    loaded = load_prompt_audio(ZERO_SHOT_PROMPT)
    assert loaded.warnings == []
    assert 3.0 <= loaded.audio.seconds <= 3.5
    assert loaded.audio.sample_rate == 24000 and loaded.audio.samples.ndim == 1


@pytest.mark.parametrize("name", ["cross_lingual_prompt.wav", "f5_basic_ref_en.wav", "f5_basic_ref_zh.wav"])
def test_shared_prompts_load(name):
    loaded = load_prompt_audio(AUDIO / name)
    assert 3.0 < loaded.audio.seconds < 15.0 and loaded.warnings == []


def test_multichannel_is_mixed_to_mono(tmp_path):
    loaded = load_prompt_audio(audio_variants.resampled(tmp_path, 48000, channels=6))
    assert loaded.original_channels == 6 and loaded.original_rate == 48000
    assert loaded.audio.samples.ndim == 1
    assert "6 ch mixed to mono" in loaded.describe()


def test_mp3_and_flac_and_ogg_decode(tmp_path):
    data, rate = sf.read(ZERO_SHOT_PROMPT, dtype="float32")
    for fmt, ext in (("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")):
        path = tmp_path / f"p.{ext}"
        sf.write(path, data, rate, format=fmt)
        loaded = load_prompt_audio(path)
        assert abs(loaded.original_seconds - len(data) / rate) < 0.1, fmt


def test_m4a_decodes_through_pyav(tmp_path):
    av = pytest.importorskip("av")
    data, rate = sf.read(ZERO_SHOT_PROMPT, dtype="float32")
    path = tmp_path / "p.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        frame = av.AudioFrame.from_ndarray((data[None, :] * 32767).astype(np.int16), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    loaded = load_prompt_audio(path)
    assert abs(loaded.original_seconds - len(data) / rate) < 0.2


def test_silence_is_trimmed(tmp_path):
    data, rate = sf.read(ZERO_SHOT_PROMPT, dtype="float32")
    padded = np.concatenate([np.zeros(2 * rate, np.float32), data, np.zeros(3 * rate, np.float32)])
    path = tmp_path / "padded.wav"
    sf.write(path, padded, rate)
    loaded = load_prompt_audio(path)
    assert loaded.original_seconds > 8
    assert abs(loaded.audio.seconds - load_prompt_audio(ZERO_SHOT_PROMPT).audio.seconds) < 0.1


@pytest.mark.parametrize("make,expected", [
    (lambda t: audio_variants.cut(t, 1.0), "at least 2 s"),
    (lambda t: audio_variants.resampled(t, 6000), "6000 Hz; at least 8000 Hz"),
    (audio_variants.not_audio, "could not be read as audio"),
])
def test_refusals_name_the_problem(tmp_path, make, expected):
    with pytest.raises(UserInputError, match=expected.replace(".", r"\.")):
        load_prompt_audio(make(tmp_path))


def test_silent_and_empty_files_are_refused(tmp_path):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(48000 * 4, np.float32), 48000)
    with pytest.raises(UserInputError, match="silent"):
        load_prompt_audio(silent)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(UserInputError, match="empty"):
        load_prompt_audio(empty)


@pytest.mark.parametrize("seconds,warned", [(2.5, True), (5.0, False), (20.0, True)])
def test_borderline_lengths_are_accepted_with_advice(tmp_path, seconds, warned):
    path = audio_variants.cut(tmp_path, seconds) if seconds < 3 else audio_variants.long(tmp_path, seconds)
    loaded = load_prompt_audio(path)
    assert bool(loaded.warnings) == warned
    if warned:
        assert "3–15 s" in loaded.warnings[0]


def test_a_steady_tone_or_a_dc_offset_is_not_taken_as_a_voice(tmp_path):
    rate = 24000
    t = np.arange(5 * rate) / rate
    for name, signal in (("sine.wav", 0.3 * np.sin(2 * np.pi * 220 * t)),
                         ("hum.wav", 0.2 * np.sin(2 * np.pi * 50 * t) + 0.1 * np.sin(2 * np.pi * 100 * t)),
                         ("dc.wav", np.full_like(t, 0.5))):
        path = tmp_path / name
        sf.write(path, signal.astype(np.float32), rate)
        with pytest.raises(UserInputError, match="tone or hum|silent"):
            load_prompt_audio(path)


def test_a_header_with_absurd_channels_is_refused_by_its_layout(tmp_path):
    import struct

    channels, rate, frames = 1000, 16000, 1600
    data = np.zeros(frames * channels, np.int16).tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16) + b"data" + struct.pack("<I", len(data))
    path = tmp_path / "many.wav"
    path.write_bytes(header + data)
    with pytest.raises(UserInputError, match="1000 channels; at most 8"):
        load_prompt_audio(path)


def test_devices_fifos_directories_links_and_missing_files_get_one_message(tmp_path):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.wav"
    link.symlink_to(ZERO_SHOT_PROMPT)
    messages = set()
    for path in ("/dev/zero", fifo, tmp_path, link, tmp_path / "missing.wav"):
        with pytest.raises(UserInputError) as refused:
            load_prompt_audio(path)
        messages.add(str(refused.value))
    assert len(messages) == 1 and "Upload the recording again" in messages.pop()


def test_decoded_length_is_bounded_for_every_decoder(tmp_path):
    import av

    rate = 16000
    flac = tmp_path / "long.flac"                 # read by soundfile: refused from its header
    sf.write(flac, np.zeros(rate * 200, np.float32), rate, format="FLAC")
    m4a = tmp_path / "long.m4a"                   # only PyAV reads it: refused while it decodes
    with av.open(str(m4a), "w") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        for _ in range(200):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, rate), np.float32), format="fltp", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    for path in (flac, m4a):
        with pytest.raises(UserInputError, match="at most 120 s are read"):
            load_prompt_audio(path)


@pytest.mark.parametrize("kind", sorted(audio_variants.ENCODED))
def test_browser_and_phone_recordings_decode(tmp_path, kind):
    """webm/opus (what browsers and phones record), m4a (voice memos), ogg opus and raw aac."""
    reference = load_prompt_audio(ZERO_SHOT_PROMPT)
    loaded = load_prompt_audio(audio_variants.encoded(tmp_path, kind))
    assert loaded.original_rate == 48000 and loaded.warnings == []
    assert abs(loaded.audio.seconds - reference.audio.seconds) < 0.1
    level = 20 * np.log10(np.sqrt(np.mean(loaded.audio.samples ** 2)) / np.sqrt(np.mean(reference.audio.samples ** 2)))
    assert abs(level) < 1.0          # the same recording at the same level, not noise or a wrong sample format


@pytest.mark.parametrize("rate", [8000, 11025])
def test_telephone_rate_recording_is_upsampled_with_a_notice(tmp_path, rate):
    loaded = load_prompt_audio(audio_variants.resampled(tmp_path, rate))
    assert loaded.audio.sample_rate == 16000 and loaded.original_rate == rate
    assert any(f"{rate} Hz" in w and "upsampled to 16000 Hz" in w for w in loaded.warnings)
    assert f"{rate} Hz upsampled to 16000 Hz" in loaded.describe()
    spectrum = np.abs(np.fft.rfft(loaded.audio.samples))
    freqs = np.fft.rfftfreq(len(loaded.audio.samples), 1 / 16000)
    # the speech band is kept, and no mirror image of it above the original Nyquist frequency
    assert spectrum[(freqs > 200) & (freqs < rate / 2 - 200)].mean() > 20 * spectrum[freqs > rate / 2 + 300].mean()


def test_forty_second_prompt_is_cut_to_its_best_window(tmp_path):
    loaded = load_prompt_audio(audio_variants.long(tmp_path, 40.0))
    assert 14.0 <= loaded.audio.seconds <= 15.0
    notice = next(w for w in loaded.warnings if "clones best from 3–15 s" in w)
    assert "were kept (" in notice and "transcript must say exactly" in notice


def test_best_window_is_the_dense_clean_speech(tmp_path):
    path, start, end = audio_variants.long_mixed(tmp_path)
    loaded = load_prompt_audio(path)
    assert np.abs(loaded.audio.samples).max() < 0.999           # the clipped stretch was left out
    notice = next(w for w in loaded.warnings if "clones best from 3–15 s" in w)
    kept = [float(x) for x in notice.split("kept (")[1].split(" s into")[0].split("–")]
    overlap = min(kept[1], end) - max(kept[0], start)
    assert overlap >= 0.9 * (kept[1] - kept[0])                 # (almost) all of it from the clean dense part


def test_twenty_second_prompt_is_also_cut_to_at_most_fifteen_seconds(tmp_path):
    """Over 15 s of sound clones worse: it is trimmed with the same notice, not only past the 30 s limit."""
    loaded = load_prompt_audio(audio_variants.long(tmp_path, 20.0))
    assert 3.0 <= loaded.audio.seconds <= 15.05
    assert any("clones best from 3–15 s" in w and "were kept (" in w for w in loaded.warnings)
