"""The one small interface every engine implements.

The service owns validation, text processing, audio decoding, saving and logging; an engine only
turns (prepared voice, one text piece, style, seed) into audio chunks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from cosyvoice.modes import MODE_IDS


@dataclass(frozen=True)
class Capabilities:
    prompt_sample_rates: tuple[int, ...]   # rates the voice stage takes the prompt at (logged per request)
    modes: tuple[str, ...] = MODE_IDS      # mode ids this engine renders


@dataclass
class PromptAudio:
    """Decoded prompt recording: mono float32 in [-1, 1] at its original rate (>= 16 kHz), trimmed."""
    samples: np.ndarray
    sample_rate: int
    sha1: str                      # identity of the decoded samples, used as the voice cache key

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass
class Voice:
    """Engine-specific features of a prompt, prepared once and cached by the service."""
    prompt_text: str | None
    features: Any = None


@dataclass(frozen=True)
class Style:
    mode: str                       # a mode id from cosyvoice.modes
    instruct_text: str = ""         # natural-language instruction (instruct mode)
    speed: float = 1.0


@dataclass
class Progress:
    message: str                    # e.g. "speech tokens 120/~180"
    stage: str | None = None        # the engine entered this part of its work ("llm", "flow", "hift"): traced
    notice: bool = False            # something the user asked for that could not be rendered: shown and logged


ProgressCallback = Callable[[Progress], None]


class Engine(Protocol):
    name: str
    sample_rate: int
    model_label: str                # what /version and the UI call the model
    device: str

    def capabilities(self) -> Capabilities: ...

    def parallelism(self) -> int:
        """How many requests this engine synthesises well at once (the service's default admission width)."""
        ...

    def startup_notices(self) -> list[str]:
        """What a user should know about this engine as configured (shown at start-up and in the UI)."""
        ...

    def text_token_counter(self) -> Callable[[str], int] | None:
        """How many tokens the model reads for a text (English pieces are packed by it), or None."""
        ...

    def style_notices(self, style: Style) -> list[str]:
        """Plain-words notices for parts of the style this engine cannot render (may be empty)."""
        ...

    def prepare_voice(self, audio: PromptAudio, prompt_text: str | None) -> Voice: ...

    def synthesize(self, text: str, voice: Voice, style: Style, seed: int,
                   on_progress: ProgressCallback, stream: bool = False) -> Iterator[np.ndarray]:
        """Yield float32 mono chunks at `sample_rate` for one text piece (frontend markup form).

        Same (text, voice, style, seed, stream) must give identical samples. (Streaming may differ from
        non-streaming: the neural engine's streaming flow attends block-causally.)
        """
        ...

    def version_info(self) -> dict[str, Any]:
        """Extra fields for /version (model dir identity, token rate, ...)."""
        ...

    # -- saved voices (cosyvoice.voices.library): features stored once, loaded instead of extracted ----------
    def feature_identity(self) -> str:
        """Engine + model identity: stored features made under another identity are recomputed."""
        ...

    def export_voice(self, voice: Voice) -> dict[str, np.ndarray]:
        """The voice's features as plain numeric/str arrays (saved as npz, loaded without pickle)."""
        ...

    def import_voice(self, arrays: dict[str, np.ndarray], prompt_text: str | None) -> Voice:
        """The inverse of export_voice; raises ValueError when the arrays do not fit this engine."""
        ...
