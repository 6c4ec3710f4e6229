"""Audio for HTTP clients: float32 mono samples → wav | mp3 | flac | opus | aac | pcm bytes, with PyAV.

`StreamEncoder.feed` returns the bytes ready so far, so a response can be sent while the audio is
still being made; `encode` is the one-shot form. pcm is raw 16-bit little-endian mono (what
OpenAI's API calls pcm); wav streams with an open-ended header (sizes 0xFFFFFFFF), as players expect.
flac is the exception: its STREAMINFO header holds the total sample count, which only a seekable
writer can fill in, so a flac response is written whole to memory by libsndfile and sent at `finish`
(a streamed flac with a count of 0 is legal but libsndfile/soundfile and ffprobe cannot read it).
The audio reaching here is already limited to -1 dBFS true peak (cosyvoice.audio.mastering); lossy codecs
rebuild the waveform and overshoot that by up to ~1.5 dB on speech, so mp3/aac/opus get a further
fixed LOSSY_HEADROOM_DB (one gain for the whole response: no pumping) and mp3/aac a bitrate high
enough that their overshoot stays small.
"""
from __future__ import annotations

import io
import struct

import numpy as np

FORMATS = ("wav", "mp3", "flac", "opus", "aac", "pcm")
CONTENT_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "opus": "audio/ogg",
                 "aac": "audio/aac", "pcm": "audio/pcm"}
# response_format -> (PyAV container, codec, sample format the encoder takes)
_CODECS = {"mp3": ("mp3", "libmp3lame", "fltp"),
           "opus": ("ogg", "libopus", "flt"), "aac": ("adts", "aac", "fltp")}
OPUS_RATES = (48000, 24000, 16000, 12000, 8000)
LOSSY_HEADROOM_DB = {"mp3": 1.0, "aac": 1.0, "opus": 1.5}   # measured overshoot: bench/clipping.py, README
# the encoders' defaults overshoot by up to 2.3 dB (lame) and 1.5 dB (ffmpeg's aac) on speech; these do not
_BIT_RATES = {"mp3": 128000, "aac": 128000}


def _int16(samples: np.ndarray) -> bytes:
    """16-bit little-endian PCM converted by libsndfile, exactly as outputs/ WAVs are written."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(samples, dtype=np.float32).reshape(-1), 24000, format="RAW", subtype="PCM_16",
             endian="LITTLE")
    return buffer.getvalue()


def _flac(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit FLAC written by libsndfile to a seekable buffer, so STREAMINFO has the real sample count."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(samples, dtype=np.float32).reshape(-1), sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def wav_header(sample_rate: int, data_bytes: int | None = None) -> bytes:
    """A 16-bit mono WAV header; without a length (streaming) the sizes say 'to the end of the stream'."""
    size = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16) + b"data" + struct.pack("<I", size))


class _Sink(io.RawIOBase):
    """Where the muxer writes: bytes are collected and handed out by `take`; not seekable, so muxers
    write streamable output (no header rewritten at the end)."""

    def __init__(self):
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


class StreamEncoder:
    def __init__(self, response_format: str, sample_rate: int):
        if response_format not in FORMATS:
            raise ValueError(f"unknown format {response_format!r}; one of {', '.join(FORMATS)}")
        self.format, self.sample_rate = response_format, int(sample_rate)
        self._started = False
        self._pts = 0
        self._whole: list[np.ndarray] = []          # flac: everything, written at finish
        if response_format in _CODECS:
            import av

            container_format, codec, self._sample_format = _CODECS[response_format]
            rate = self.sample_rate
            if codec == "libopus" and rate not in OPUS_RATES:
                raise ValueError(f"opus cannot encode {rate} Hz audio")
            self._sink = _Sink()
            self._container = av.open(self._sink, mode="w", format=container_format)
            stream = self._container.add_stream(codec, rate=rate)
            assert isinstance(stream, av.AudioStream)    # an audio codec gives an audio stream
            stream.layout = "mono"
            self._stream = stream
            if response_format in _BIT_RATES:
                stream.codec_context.bit_rate = _BIT_RATES[response_format]
            self._av = av

    def feed(self, samples: np.ndarray) -> bytes:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self.format == "pcm":
            return _int16(samples)
        if self.format == "flac":
            self._whole.append(samples)
            return b""
        if self.format == "wav":
            head = b"" if self._started else wav_header(self.sample_rate)
            self._started = True
            return head + _int16(samples)
        if samples.size == 0:
            return self._sink.take()
        data = np.clip(samples * 10 ** (-LOSSY_HEADROOM_DB[self.format] / 20), -1.0, 1.0).reshape(1, -1)
        frame = self._av.AudioFrame.from_ndarray(data, format=self._sample_format, layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += samples.size
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        if self.format == "wav" and not self._started:
            self._started = True
            return wav_header(self.sample_rate)
        if self.format in ("pcm", "wav"):
            return b""
        if self.format == "flac":
            return _flac(np.concatenate(self._whole) if self._whole else np.zeros(0, np.float32), self.sample_rate)
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()


def encode(samples: np.ndarray, sample_rate: int, response_format: str) -> bytes:
    """The whole clip in one format; wav gets a header with its real sizes."""
    if response_format == "wav":
        pcm = _int16(samples)
        return wav_header(sample_rate, len(pcm)) + pcm
    encoder = StreamEncoder(response_format, sample_rate)
    return encoder.feed(samples) + encoder.finish()
