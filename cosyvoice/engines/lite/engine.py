"""The embedded lite engine: espeak-ng speech moved toward the prompt voice with WORLD.

It never sounds like the speaker -- it is a formant synthesiser with the prompt's pitch and
average spectral envelope -- but it reads exactly what the markup says, runs on one core, and says
plainly which parts of a style it cannot render.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
from loguru import logger

from cosyvoice.engines.base import Capabilities, Progress, ProgressCallback, PromptAudio, Style, Voice
from cosyvoice.engines.cosyvoice3.model_dir import DEFAULT_MODEL_DIR, download_hint
from cosyvoice.errors import UserInputError
from cosyvoice.text.instruct import Instruction, parse_instruction

from cosyvoice.engines.lite import espeak, matching
from cosyvoice.engines.lite.frontend import ESPEAK_VOICES, Segment, plan_segments

NEURAL_HINT = f"{download_hint(DEFAULT_MODEL_DIR)}, then ./run.sh --engine cosyvoice3"
# a sentence per language whose espeak rendering defines each base voice's statistics
REFERENCE_TEXTS = {
    "zh": "重庆是一座美丽的城市，我们明天一起去看看长江和嘉陵江交汇的地方，然后吃一顿正宗的火锅。",
    "yue": "今日天气好好，我哋一齐去行山，然后去饮茶食点心，好唔好呀？",
    "en": "The quick brown fox jumps over the lazy dog, and then we walk home together before dinner.",
}
OUTPUT_RMS = 0.07                     # speech level of the output before style volume
# espeak voice variants tried as the base; the one whose envelope statistics (after the F0-ratio
# warp) lie nearest the prompt's is used for that voice
BASE_VARIANTS = ("", "m1", "m2", "m3", "f2", "f3", "f4", "f5")
MIN_PROMPT_VOICED_SECONDS = 0.5
# emotion -> (F0 factor, F0-spread factor, spectral tilt added, speed factor, volume factor)
EMOTION_SHAPES: dict[str, tuple[float, float, float, float, float]] = {
    "happy": (1.08, 1.35, 0.15, 1.06, 1.2),
    "sad": (0.93, 0.55, -0.25, 0.85, 0.7),
    "angry": (1.04, 1.4, 0.35, 1.08, 1.6),
}


@dataclass
class StyleRender:
    """A style reduced to what this engine applies."""
    speed: float = 1.0
    volume: float = 1.0
    shaping: matching.Shaping = field(default_factory=matching.Shaping)
    cantonese: bool = False
    cannot: list[str] = field(default_factory=list)        # things asked for and not rendered
    dialect_dropped: bool = False


@dataclass
class LiteVoiceFeatures:
    """What prepare_voice caches: the prompt's statistics and per-language conversions."""
    stats: matching.VoiceStats
    variant: str
    conversions: dict[str, matching.Conversion] = field(default_factory=dict)


class LiteEngine:
    name = "lite"
    device = "cpu"

    def __init__(self, sample_rate: int = 24000):
        self.sample_rate = int(sample_rate)
        self.model_label = "lite (espeak-ng + WORLD voice matching)"
        self._references: dict[str, matching.VoiceStats] = {}
        self._reference_lock = threading.Lock()

    # --- interface ---------------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        return Capabilities(prompt_sample_rates=(matching.WORLD_RATE,))

    def parallelism(self) -> int:
        return 2              # espeak-ng and WORLD are single-threaded; two requests keep two cores busy

    def text_token_counter(self):
        return None           # no model tokenizer: the frontend's documented estimate is used

    def startup_notices(self) -> list[str]:
        return ["内置 lite 引擎只是近似音色 The embedded lite engine only approximates the voice "
                "(espeak-ng speech moved toward the prompt's pitch and timbre). For real cloning: "
                f"{NEURAL_HINT}"]

    def version_info(self) -> dict[str, Any]:
        import pyworld

        return {"engine": "lite", "synthesiser": "espeak-ng " + _espeak_version(),
                "voice_matching": f"WORLD (pyworld {getattr(pyworld, '__version__', '?')}), dio F0",
                "note": f"the lite engine does not clone voices; get the neural engine with: {NEURAL_HINT}"}

    def style_notices(self, style: Style) -> list[str]:
        render = self._render_style(style)
        notices = []
        for what in render.cannot:
            tail = "synthesised in plain Mandarin" if render.dialect_dropped and what == render.cannot[0] \
                else "synthesised without it"
            notices.append(f"the lite engine cannot do {what}; {tail}")
        return notices

    def prepare_voice(self, audio: PromptAudio, prompt_text: str | None) -> Voice:
        x = matching.to_rate(np.asarray(audio.samples, dtype=np.float64), audio.sample_rate, matching.WORLD_RATE)
        try:
            stats = matching.voice_stats(x)
        except ValueError:
            stats = None
        if stats is None or stats.voiced_frames * matching.FRAME_MS / 1000 < MIN_PROMPT_VOICED_SECONDS:
            raise UserInputError("the prompt recording has too little voiced speech to match "
                                 f"(need at least {MIN_PROMPT_VOICED_SECONDS:g} s of voice)")
        distances = {v: matching.base_voice_distance(self._reference("zh", v), stats) for v in BASE_VARIANTS}
        variant = min(distances, key=distances.__getitem__)
        features = LiteVoiceFeatures(stats=stats, variant=variant)
        return Voice(prompt_text=prompt_text, features=features)

    def synthesize(self, text: str, voice: Voice, style: Style, seed: int,
                   on_progress: ProgressCallback, stream: bool = False) -> Iterator[np.ndarray]:
        render = self._render_style(style)
        segments, unvoiced = self._plan(text, render)
        for token in dict.fromkeys(unvoiced):
            on_progress(Progress(f"the lite engine cannot render {token}; left a short pause", notice=True))
        pending: list[np.ndarray] = []
        for index, segment in enumerate(segments):
            on_progress(Progress(f"lite segment {index + 1}/{len(segments)}"))
            audio = self._render_segment(segment, voice, render, seed + index)
            if stream:
                yield audio
            else:
                pending.append(audio)
        on_progress(Progress("lite done"))
        if not stream:
            yield np.concatenate(pending) if pending else np.zeros(0, dtype=np.float32)

    # --- extras used by tests and the bench ------------------------------------------------------

    def spoken_phonemes(self, text: str, style: Style | None = None) -> str:
        """The phonemes espeak speaks for `text` (markup form), from espeak's own trace."""
        render = self._render_style(style or Style(mode="zero_shot"))
        segments, _ = self._plan(text, render)
        traces = []
        for segment in segments:
            if segment.lang != "pause":
                traces.append(espeak.speak(segment.text, self._espeak_params(segment, render, ""),
                                           phoneme_input=segment.phoneme_input).phonemes)
        return "\n".join(traces)

    def synthesize_plain(self, text: str, style: Style | None = None, seed: int = 0) -> np.ndarray:
        """espeak output without voice matching, at `sample_rate` (the benchmark's baseline)."""
        render = self._render_style(style or Style(mode="zero_shot"))
        segments, _ = self._plan(text, render)
        parts = [self._render_segment(s, None, render, seed + i) for i, s in enumerate(segments)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    # --- internals ---------------------------------------------------------------------------

    def _plan(self, text: str, render: StyleRender) -> tuple[list[Segment], list[str]]:
        from cosyvoice.text.markup import parse

        return plan_segments(parse(text), cantonese=render.cantonese)

    def _render_style(self, style: Style) -> StyleRender:
        render = StyleRender(speed=float(style.speed))
        if style.mode != "instruct" or not style.instruct_text.strip():
            return render
        ins: Instruction = parse_instruction(style.instruct_text)
        shaping = render.shaping
        render.speed *= ins.speed
        render.volume *= ins.volume
        shaping.pitch *= ins.pitch
        shaping.expressiveness *= ins.expressiveness
        if ins.emotion in EMOTION_SHAPES:
            pitch, expressiveness, tilt, speed, volume = EMOTION_SHAPES[ins.emotion]
            shaping.pitch *= pitch
            shaping.expressiveness *= expressiveness
            shaping.tilt += tilt
            render.speed *= speed
            render.volume *= volume
        if ins.whisper:
            shaping.whisper = True
        if ins.dialect == "Cantonese":
            render.cantonese = True
        elif ins.dialect:
            render.cannot.append(ins.dialect_as_written or ins.dialect)
            render.dialect_dropped = True
        for part in ins.unrecognised:
            render.cannot.append(f"“{part}”")
        return render

    def _espeak_params(self, segment: Segment, render: StyleRender, variant: str) -> espeak.EspeakParams:
        name = ESPEAK_VOICES[segment.lang] + (f"+{variant}" if variant else "")
        rate = int(np.clip(round(175 * render.speed), 80, 450))
        return espeak.EspeakParams(voice=name, rate=rate)

    def _reference(self, lang: str, variant: str) -> matching.VoiceStats:
        key = f"{lang}+{variant}"
        with self._reference_lock:
            if key not in self._references:
                params = espeak.EspeakParams(voice=ESPEAK_VOICES[lang] + (f"+{variant}" if variant else ""))
                out = espeak.speak(REFERENCE_TEXTS[lang], params)
                x = matching.to_rate(out.samples, out.sample_rate, matching.WORLD_RATE)
                self._references[key] = matching.voice_stats(x)
            return self._references[key]

    def _conversion(self, voice: Voice, lang: str) -> matching.Conversion:
        features: LiteVoiceFeatures = voice.features
        if lang not in features.conversions:
            source = self._reference(lang, features.variant)
            features.conversions[lang] = matching.plan_conversion(source, features.stats)
        return features.conversions[lang]

    def _render_segment(self, segment: Segment, voice: Voice | None, render: StyleRender, seed: int) -> np.ndarray:
        if segment.lang == "pause":
            return np.zeros(int(round(segment.pause / render.speed * self.sample_rate)), dtype=np.float32)
        variant = voice.features.variant if voice is not None else ""
        params = self._espeak_params(segment, render, variant)
        out = espeak.speak(segment.text, params, seed=seed, phoneme_input=segment.phoneme_input)
        logger.debug(f"espeak [{params.voice}] {segment.text!r} -> {out.phonemes!r}")
        x = matching.to_rate(out.samples, out.sample_rate, matching.WORLD_RATE)
        conversion = self._conversion(voice, segment.lang) if voice is not None else None
        shaping = render.shaping
        if segment.emphasis:
            shaping = matching.Shaping(pitch=shaping.pitch * 1.06, expressiveness=shaping.expressiveness * 1.2,
                                       tilt=shaping.tilt + 0.1, whisper=shaping.whisper)
        if conversion is not None or shaping != matching.Shaping():
            x = matching.convert(x, conversion, shaping)
        reference = self._reference(segment.lang, variant)
        gain = OUTPUT_RMS / max(reference.rms, 1e-6) * render.volume * (1.4 if segment.emphasis else 1.0)
        if shaping.whisper:
            gain *= 0.6
        y = matching.to_rate(x * gain, matching.WORLD_RATE, self.sample_rate)
        return _limit(y).astype(np.float32)

    # --- saved voices: the prompt statistics and the chosen base variant ---------------------------

    def feature_identity(self) -> str:
        return f"lite/world-stats-v1/{matching.WORLD_RATE}"

    def export_voice(self, voice: Voice) -> dict[str, np.ndarray]:
        features: LiteVoiceFeatures = voice.features
        stats = features.stats
        arrays = {"variant": np.array(features.variant),
                  "scalars": np.array([stats.log_f0_median, stats.log_f0_spread, stats.voiced_frames, stats.rms],
                                      dtype=np.float64),
                  "mean_log_envelope": np.asarray(stats.mean_log_envelope)}
        if stats.coded_mean is not None and stats.coded_std is not None:
            arrays["coded_mean"], arrays["coded_std"] = np.asarray(stats.coded_mean), np.asarray(stats.coded_std)
        return arrays

    def import_voice(self, arrays: dict[str, np.ndarray], prompt_text: str | None) -> Voice:
        variant = str(arrays["variant"])
        if variant not in BASE_VARIANTS:
            raise ValueError(f"unknown base variant {variant!r}")
        median, spread, voiced, rms = (float(v) for v in np.asarray(arrays["scalars"], dtype=np.float64))
        envelope = np.asarray(arrays["mean_log_envelope"], dtype=np.float64)
        if envelope.shape != (matching.FFT_SIZE // 2 + 1,):
            raise ValueError(f"envelope has shape {envelope.shape}")
        stats = matching.VoiceStats(log_f0_median=median, log_f0_spread=spread, voiced_frames=int(voiced),
                                    mean_log_envelope=envelope, rms=rms,
                                    coded_mean=arrays.get("coded_mean"), coded_std=arrays.get("coded_std"))
        return Voice(prompt_text=prompt_text, features=LiteVoiceFeatures(stats=stats, variant=variant))


def _limit(y: np.ndarray) -> np.ndarray:
    """Soft limiter: leaves normal levels alone, bends peaks above 0.9 toward 1."""
    out = y.copy()
    over = np.abs(out) > 0.9
    out[over] = np.sign(out[over]) * (0.9 + 0.1 * np.tanh((np.abs(out[over]) - 0.9) / 0.1))
    return out


def _espeak_version() -> str:
    try:
        from importlib.metadata import version

        return f"(espeakng-loader {version('espeakng-loader')})"
    except Exception:   # metadata is informative only
        return ""
