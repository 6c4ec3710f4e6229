"""VoiceResolver: which voice a request speaks with, and its engine features, through one LRU cache.

A saved voice is looked up once (by id, or by name → id) and the entry itself travels with the
request; an uploaded prompt is decoded once. Features come from one cache keyed by where they came
from, with hit/miss metrics on every path.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

from cosyvoice.ops import metrics
from cosyvoice.audio.prompt import LoadedPrompt, load_prompt_audio
from cosyvoice.engines.base import Engine, Voice
from cosyvoice.errors import UserInputError
from cosyvoice.voices.library import VoiceEntry, VoiceLibrary


@dataclass(frozen=True)
class VoiceSource:
    """Where a request's voice comes from: a saved entry, or a decoded upload; plus the transcript the
    model reads (None when the mode needs none)."""
    prompt_text: str | None
    entry: VoiceEntry | None = None
    upload: LoadedPrompt | None = None   # an uploaded recording (audio + description + warnings)

    def cache_key(self, engine_name: str) -> Hashable:
        if self.entry is not None:
            return ("saved", engine_name, self.entry.id, self.entry.sha256, self.prompt_text)
        assert self.upload is not None, "a voice source is a saved voice or an upload"
        return ("upload", engine_name, self.upload.audio.sha1, self.prompt_text)


class VoiceResolver:
    def __init__(self, library: VoiceLibrary, engine: Engine, cache_size: int = 16):
        self.library, self.engine, self.cache_size = library, engine, cache_size
        self._cache: OrderedDict[Hashable, Voice] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, name_or_id: str) -> VoiceEntry:
        """The saved voice a name or id means (VoiceNotFound otherwise); callers keep the entry."""
        return self.library.resolve(name_or_id)

    def upload(self, prompt_wav: str, log):
        loaded = load_prompt_audio(prompt_wav)
        rates = "/".join(str(r) for r in self.engine.capabilities().prompt_sample_rates)
        log.info(f"prompt audio: {loaded.describe()} → {rates} Hz for the engine")
        return loaded          # its warnings (upsampled, trimmed) become the request's notices

    def features(self, source: VoiceSource, log, notices: list[str]) -> Voice:
        """The engine's features for the source: cached, else loaded from the library or extracted."""
        key = source.cache_key(self.engine.name)
        with self._lock:
            voice = self._cache.get(key)
            if voice is not None:
                self._cache.move_to_end(key)
        if voice is not None:
            metrics.VOICE_CACHE.labels("hit").inc()
            log.info("voice features ready (cache hit)")
            return voice
        metrics.VOICE_CACHE.labels("miss").inc()
        started = time.perf_counter()
        voice, how = self._make(source, notices)
        with self._lock:
            self._cache[key] = voice
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        log.info(f"voice features ready (cache miss, {how}, {time.perf_counter() - started:.3f} s)")
        return voice

    def _make(self, source: VoiceSource, notices: list[str]) -> tuple[Voice, str]:
        if source.entry is None:
            assert source.upload is not None, "a voice source is a saved voice or an upload"
            return self.engine.prepare_voice(source.upload.audio, source.prompt_text), "extracted"
        voice, notice = self.library.load_voice(source.entry, self.engine, source.prompt_text)
        if notice:
            notices.append(notice)
            return voice, "recomputed from the saved recording"
        return voice, "loaded from the voice library, not extracted"

    def saved_source(self, entry: VoiceEntry, mode, transcript: Callable[[str], str]) -> VoiceSource:
        """A saved voice as the source; the mode's transcript rule checked against what was saved."""
        if mode.needs_transcript and not entry.transcript:
            raise UserInputError(f"Voice {entry.name!r} was saved without a transcript, which {mode.label} "
                                 f"needs. Use 跨语种复刻 (cross-lingual), or save the voice again with its transcript.")
        return VoiceSource(transcript(entry.transcript) if mode.needs_transcript else None, entry=entry)
