"""Validation: what a client sent (raw JSON or form values) becomes typed fields, one message per mistake.

Every front end hands raw values to the service, and these functions are the only place they are
checked, so a seed or a speed is refused with the same words on the UI, /v1, dialogue and the CLI.
"""
from __future__ import annotations

import math
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from cosyvoice.service.dialogue import DialogueRequest, Turn, gap_field, parse_mapping, parse_script
from cosyvoice.errors import UserInputError
from cosyvoice.modes import BY_ID, MODE_IDS, Mode, get_mode

MAX_SEED = 2**32 - 1
SPEED_RANGE = (0.5, 2.0)
AUTO = "auto"        # the service picks: instruction → instruct, transcript → zero-shot, else cross-lingual


@dataclass
class SynthesisRequest:
    """What a client sent, untyped: the service checks every field before using it."""
    text: Any
    mode: Any = "zero_shot"          # a mode id, or "auto" (the service decides once the voice is known)
    prompt_wav: Any = None
    prompt_text: Any = ""
    instruct_text: Any = ""
    seed: Any = None                 # None, "" or negative: pick one (and log it, so it can be repeated)
    speed: Any = 1.0
    stream: Any = False
    normalize: Any = True
    voice: Any = None                # a saved voice's name or id (cosyvoice.voices.library), in place of prompt_wav


@dataclass(frozen=True)
class ValidRequest:
    text: str
    mode: Mode | None                # None: "auto", decided in the voice stage
    prompt_wav: str
    prompt_text: str
    instruct_text: str
    seed: int
    speed: float
    stream: bool
    normalize: bool
    voice: str | None = None         # as sent until the voice stage; the resolved id after it

    @property
    def chosen_mode(self) -> Mode:
        """The mode, for the stages after the voice stage (which decides an "auto" one)."""
        if self.mode is None:
            raise RuntimeError("the mode is read before the voice stage decided it")
        return self.mode


@dataclass(frozen=True)
class ValidDialogue:
    turns: list[Turn]
    mapping: dict[str, str]
    gap_s: float
    seed: int
    speed: float


@contextmanager
def about(param: str) -> Iterator[None]:
    """Tag a refusal with the request field it is about (`err.param`), for front ends to name it."""
    try:
        yield
    except UserInputError as err:
        if err.param is None:
            err.param = param
        raise


def text_field(value: Any, what: str, limit: int, required: bool) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise UserInputError(f"The {what} must be text (a string), not {type(value).__name__}.")
    value = value.strip()
    if required and not value:
        raise UserInputError(f"The {what} is empty. Type what the voice should say." if what == "text"
                             else f"The {what} is empty.")
    if len(value) > limit:
        raise UserInputError(f"The {what} is {len(value)} characters long; the limit is {limit}. "
                             f"Shorten it{' or split it into several requests' if what == 'text' else ''}.")
    return value


def number_field(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise UserInputError(f"The {what} must be a number, not true/false.")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise UserInputError(f"The {what} must be a number; got {value[:20]!r}.") from None
    if not isinstance(value, (int, float)):
        raise UserInputError(f"The {what} must be a number, not {type(value).__name__}.")
    try:
        number = float(value)                   # an int of 400 digits does not fit a float
    except OverflowError:
        raise UserInputError(f"The {what} is far too large a number.") from None
    if not math.isfinite(number):
        raise UserInputError(f"The {what} must be a finite number; got {value}.")
    return number


def seed_field(value: Any) -> int | None:
    """A whole number from 0 to MAX_SEED; None (pick one) for nothing, "" or a negative number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = number_field(value, "seed")
    except UserInputError as err:
        raise UserInputError(f"{err} Use a whole number from 0 to {MAX_SEED}.") from None
    if number != int(number):
        raise UserInputError(f"Seed {value} is not a whole number; use a whole number from 0 to {MAX_SEED}.")
    if number < 0:
        return None
    if number > MAX_SEED:
        raise UserInputError(f"Seed {int(number)} is out of range; use a whole number from 0 to {MAX_SEED}.")
    return int(number)


def switch_field(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise UserInputError(f"The {what} switch must be true or false; got {str(value)[:20]!r}.")


def speed_field(value: Any) -> float:
    speed = number_field(value, "speed")
    if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
        raise UserInputError(f"Speed {speed:g} is out of range; choose between {SPEED_RANGE[0]} and {SPEED_RANGE[1]}.")
    return speed


def mode_field(value: Any, engine_modes: tuple[str, ...], engine_name: str) -> Mode | None:
    if value == AUTO:
        return None
    mode = get_mode(value) if isinstance(value, str) else None
    if mode is None:
        raise UserInputError(f"Unknown mode {str(value)[:30]!r}. Choose one of: {', '.join(MODE_IDS)} or {AUTO}.")
    return check_mode_supported(mode, engine_modes, engine_name)


def check_mode_supported(mode: Mode, engine_modes: tuple[str, ...], engine_name: str) -> Mode:
    if mode.id not in engine_modes:
        raise UserInputError(f"The {engine_name} engine cannot do {mode.label}.")
    return mode


def auto_mode(instruction: str, has_transcript: bool) -> Mode:
    """The mode "auto" means: instruct when told how to speak, else zero-shot when the voice's transcript
    is known, else cross-lingual."""
    if instruction.strip():
        return BY_ID["instruct"]
    return BY_ID["zero_shot" if has_transcript else "cross_lingual"]


def voice_field(value: Any, prompt_wav: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or len(value) > 100:
        raise UserInputError("The voice must be the name or id of a saved voice (text, at most 100 characters).")
    if prompt_wav:
        raise UserInputError("Give either a saved voice or a prompt recording, not both.")
    return value.strip()


def check_mode_needs(mode: Mode, prompt_text: str, instruct_text: str, saved_voice: bool) -> None:
    if mode.needs_transcript and not prompt_text and not saved_voice:     # a saved voice brings its own
        raise UserInputError(f"{mode.label} needs the transcript of the prompt recording. Type exactly "
                             "what is said in it, or use 跨语种复刻 (cross-lingual), which needs none.")
    if mode.needs_instruction and not instruct_text:
        raise UserInputError(f"{mode.label} needs an instruction, e.g. 请用四川话说 or "
                             "'speak very fast'. Pick a preset or type one.")


def validate_request(request: SynthesisRequest, limits, engine_modes: tuple[str, ...],
                     engine_name: str) -> ValidRequest:
    """Every check on what a client sent, in the order a user fills the form (`limits`: a ServiceConfig)."""
    with about("mode"):
        mode = mode_field(request.mode, engine_modes, engine_name)
    with about("text"):
        text = text_field(request.text, "text", limits.max_text_chars, required=True)
    with about("voice"):
        voice = voice_field(request.voice, request.prompt_wav)
        if voice is None and (not request.prompt_wav or not isinstance(request.prompt_wav, str)):
            label = mode.label if mode else "Voice cloning"
            raise UserInputError(f"{label} needs a prompt recording: upload or record 3–15 s of the voice to clone.")
    with about("prompt_text"):
        prompt_text = text_field(request.prompt_text, "prompt transcript", limits.max_prompt_text_chars, False)
    with about("instruct_text"):
        instruct_text = text_field(request.instruct_text, "instruction", limits.max_instruct_chars, False)
    with about("mode"):
        if mode is None and voice is None:                 # an upload: what was typed decides
            mode = check_mode_supported(auto_mode(instruct_text, bool(prompt_text)), engine_modes, engine_name)
        if mode is not None:
            check_mode_needs(mode, prompt_text, instruct_text, saved_voice=voice is not None)
    with about("speed"):
        speed = speed_field(request.speed)
    with about("seed"):
        seed = seed_field(request.seed)
    with about("stream"):
        stream = switch_field(request.stream, "stream")
    with about("normalize"):
        normalize = switch_field(request.normalize, "normalize")
    return ValidRequest(text=text, mode=mode, prompt_wav=request.prompt_wav, prompt_text=prompt_text,
                        instruct_text=instruct_text, seed=secrets.randbelow(MAX_SEED) if seed is None else seed,
                        speed=speed, stream=stream, normalize=normalize, voice=voice)


def validate_dialogue(request: DialogueRequest, limits) -> ValidDialogue:
    """The script, mapping, gap, seed and speed of a dialogue; each turn is then checked like a request."""
    with about("script"):
        turns = parse_script(request.script)
    with about("voices"):
        mapping = parse_mapping(request.voices)
    with about("gap"):
        gap_s = gap_field(request.gap)
    with about("seed"):
        seed = seed_field(request.seed)
    with about("speed"):
        speed = speed_field(request.speed)
    total = sum(len(turn.text) for turn in turns)
    if total > limits.max_text_chars:
        with about("script"):
                raise UserInputError(f"The script holds {total} characters to speak; the limit is "
                                 f"{limits.max_text_chars}. Split it into several dialogues.")
    return ValidDialogue(turns, mapping, gap_s, secrets.randbelow(MAX_SEED) if seed is None else seed, speed)
