"""espeak-ng through ctypes, with the library and its data from the `espeakng-loader` wheel.

libespeak-ng keeps global state (current voice, parameters, callback, and wave-generator state such
as the pitch-flutter phase that no API call resets), so every call goes through one process-wide
lock and runs on a freshly loaded library: the same text, parameters and seed then give the same
samples in any call of any process. Loading and initialising costs about 5 ms.
"""
from __future__ import annotations

import _ctypes
import ctypes
import ctypes.util
import threading
from dataclasses import dataclass

import numpy as np

from cosyvoice.errors import EngineError

# espeak_AUDIO_OUTPUT: deliver samples to the callback inside espeak_Synth, no audio device
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_POSITION_TYPE
_POS_CHARACTER = 1
# espeak_Synth flags
_CHARS_UTF8 = 1
_PHONEMES_INPUT = 0x100            # text may hold [[...]] phoneme mnemonics
_END_PAUSE = 0x1000
# espeak_PARAMETER
_RATE, _VOLUME, _PITCH, _RANGE, _PUNCTUATION, _CAPITALS, _WORDGAP = 1, 2, 3, 4, 5, 6, 7
# phoneme trace mode: 1 = espeak mnemonics
_TRACE_MNEMONICS = 1

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.c_void_p)


@dataclass
class EspeakParams:
    voice: str = "cmn"             # espeak voice name, optionally with a variant: "en-us+f2"
    rate: int = 175                # words per minute (espeak's default)
    pitch: int = 50                # 0..100 around the voice's base pitch
    pitch_range: int = 50          # 0..100 intonation range
    volume: int = 100              # 0..200


@dataclass
class EspeakOutput:
    samples: np.ndarray            # float32 mono in [-1, 1]
    sample_rate: int
    phonemes: str                  # espeak's own trace of the phonemes it spoke


class _Binding:
    """The loaded library with declared signatures; created once per process."""

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        libc = ctypes.CDLL(ctypes.util.find_library("c"))

        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetPhonemeTrace.argtypes = [ctypes.c_int, ctypes.c_void_p]
        lib.espeak_SetPhonemeTrace.restype = None
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint),
                                     ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        lib.espeak_Terminate.argtypes = []
        lib.espeak_Terminate.restype = ctypes.c_int

        libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t)]
        libc.open_memstream.restype = ctypes.c_void_p
        libc.fflush.argtypes = [ctypes.c_void_p]
        libc.fflush.restype = ctypes.c_int
        libc.fclose.argtypes = [ctypes.c_void_p]
        libc.fclose.restype = ctypes.c_int
        libc.free.argtypes = [ctypes.c_void_p]
        libc.free.restype = None

        self.lib, self.libc = lib, libc
        self.chunks: list[np.ndarray] = []
        # keep a reference: ctypes frees the trampoline when the Python object goes away
        self._callback = _SynthCallback(self._collect)
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                                 espeakng_loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise EngineError("espeak-ng failed to initialise (data directory unreadable?)", stage="load")
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, count, events) -> int:
        if count > 0 and wav:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0   # 0 = keep going

    def close(self) -> None:
        """Free espeak's buffers and unload the library, so the next load starts from clean state."""
        self.lib.espeak_Terminate()
        _ctypes.dlclose(self.lib._handle)


_lock = threading.Lock()
_sample_rate: int | None = None


def sample_rate() -> int:
    global _sample_rate
    with _lock:
        if _sample_rate is None:
            binding = _Binding()
            _sample_rate = binding.sample_rate
            binding.close()
        return _sample_rate


def speak(text: str, params: EspeakParams, seed: int = 0, phoneme_input: bool = False) -> EspeakOutput:
    """Synthesise `text` with one voice; returns the samples and the phonemes espeak spoke."""
    with _lock:
        binding = _Binding()
        try:
            return _speak_locked(binding, text, params, seed, phoneme_input)
        finally:
            binding.close()


def _speak_locked(b: _Binding, text: str, params: EspeakParams, seed: int,
                  phoneme_input: bool) -> EspeakOutput:
    """One espeak_Synth call on a freshly loaded library; the caller holds _lock."""
    lib, libc = b.lib, b.libc
    if lib.espeak_SetVoiceByName(params.voice.encode()) != 0:
        raise EngineError(f"espeak-ng has no voice '{params.voice}'")
    for parameter, value in ((_RATE, params.rate), (_VOLUME, params.volume), (_PITCH, params.pitch),
                             (_RANGE, params.pitch_range), (_PUNCTUATION, 0), (_CAPITALS, 0),
                             (_WORDGAP, 0)):
        lib.espeak_SetParameter(parameter, int(value), 0)
    lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)

    buffer, size = ctypes.c_void_p(), ctypes.c_size_t()
    stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    if not stream:
        raise EngineError("could not open a memory stream for the espeak phoneme trace")
    b.chunks = []
    try:
        lib.espeak_SetPhonemeTrace(_TRACE_MNEMONICS, stream)
        data = text.encode("utf-8") + b"\0"
        flags = _CHARS_UTF8 | _END_PAUSE | (_PHONEMES_INPUT if phoneme_input else 0)
        status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, flags, None, None)
        lib.espeak_Synchronize()
    finally:
        lib.espeak_SetPhonemeTrace(0, None)
        libc.fflush(stream)
        trace = ctypes.string_at(buffer, size.value).decode("utf-8", "replace") if size.value else ""
        libc.fclose(stream)
        libc.free(buffer)
    if status != 0:
        raise EngineError(f"espeak-ng failed on the text (status {status})")
    chunks, b.chunks = b.chunks, []
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return EspeakOutput(pcm.astype(np.float32) / 32768.0, b.sample_rate, trace.strip())
