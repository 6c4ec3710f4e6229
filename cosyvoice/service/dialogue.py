"""Dialogue scripts: the turn grammar, the speaker mapping, and the request/result types.

    [S1] 你好，今天去哪儿？            speaker tags, mapped to saved voices (S1=narrator, S2=小王)
    [S2] (开心地说) Let's go to the park.   an optional (instruction) right after the speaker
    小王: 好呀！                         or Name: line, where the name is a saved voice (or mapped)

A line without a speaker continues the previous turn. This module only parses; the dialogue itself
is a service operation (`SynthesisService.synthesize_dialogue`): every turn goes through the same
validate/text/voice/synthesize stages, and the joined audio is saved once, with one sidecar.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosyvoice.errors import UserInputError

MAX_TURNS = 200
GAP_RANGE = (0.0, 5.0)
_TAG = re.compile(r"^\[(?P<tag>[^\[\]]{1,64})\]\s*(?P<rest>.*)$")
_NAMED = re.compile(r"^(?P<tag>[^:：\[\]()（）]{1,64}?)\s*[:：]\s*(?P<rest>.*)$")
_INSTRUCTION = re.compile(r"^[(（](?P<instruction>[^()（）]{1,200})[)）]\s*(?P<rest>.*)$")


@dataclass
class Turn:
    speaker: str
    text: str
    instruction: str = ""


@dataclass
class DialogueRequest:
    """What a client sent, untyped: the service checks every field (seed exactly as for speech)."""
    script: Any
    voices: Any = None          # speaker → saved voice name or id (dict, or "S1=narrator, S2=小王")
    gap: Any = 0.4
    seed: Any = None
    speed: Any = 1.0


@dataclass
class TurnResult:
    speaker: str
    voice: str                  # the saved voice's name
    start_s: float
    end_s: float
    request_id: str
    voice_id: str = ""


@dataclass
class DialogueResult:
    request_id: str
    path: Path
    sample_rate: int
    audio_seconds: float
    seed: int
    rtf: float = 0.0
    turns: list[TurnResult] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def parse_mapping(value: object) -> dict[str, str]:
    """Speaker → voice, from a dict or text such as "S1=narrator, S2=小王" (one pair per comma or line)."""
    if value is None or value == "":
        return {}
    pairs: list[tuple[Any, Any]]
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, str):
        pairs = []
        for part in re.split(r"[,，\n]", value):
            if part.strip():
                speaker, sep, voice = part.partition("=")
                if not sep or not speaker.strip() or not voice.strip():
                    raise UserInputError(f"Speaker mapping {part.strip()[:40]!r} must look like S1=voice name.")
                pairs.append((speaker, voice))
    else:
        raise UserInputError("The speaker mapping must be text like 'S1=narrator, S2=小王' or a JSON object.")
    mapping = {}
    for speaker, voice in pairs:
        if not isinstance(speaker, str) or not isinstance(voice, str):
            raise UserInputError("Speaker names and voice names in the mapping must be text.")
        mapping[speaker.strip()] = voice.strip()
    return mapping


def parse_script(script: object) -> list[Turn]:
    if not isinstance(script, str) or not script.strip():
        raise UserInputError("The dialogue script is empty. Write one turn per line: [S1] 你好 / [S2] Hello.")
    turns: list[Turn] = []
    for number, raw in enumerate(script.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        match = _TAG.match(line) or _NAMED.match(line)
        if match is None:
            if not turns:
                raise UserInputError(f"Line {number} of the script names no speaker; start it with [S1] or Name:.")
            turns[-1].text += " " + line
            continue
        rest = match.group("rest").strip()
        instruction = ""
        found = _INSTRUCTION.match(rest)
        if found:
            instruction, rest = found.group("instruction").strip(), found.group("rest").strip()
        if not rest:
            raise UserInputError(f"Line {number} of the script has a speaker but nothing to say.")
        turns.append(Turn(match.group("tag").strip(), rest, instruction))
    if len(turns) > MAX_TURNS:
        raise UserInputError(f"The script has {len(turns)} turns; the limit is {MAX_TURNS}. Split it.")
    return turns


def synthesize_dialogue(service, script: object, mapping: object = None, gap: object = 0.4, seed: object = None,
                        speed: object = 1.0, request_id: str | None = None) -> DialogueResult:
    """Translate loose arguments (UI fields, tests) into a DialogueRequest for `service.synthesize_dialogue`."""
    return service.synthesize_dialogue(DialogueRequest(script=script, voices=mapping, gap=gap, seed=seed,
                                                       speed=speed), request_id)


def gap_field(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserInputError("The gap between turns must be a number of seconds.")
    try:
        gap = float(value)
    except (ValueError, OverflowError):
        raise UserInputError(f"The gap between turns must be a number of seconds; got {str(value)[:20]!r}.") from None
    if not GAP_RANGE[0] <= gap <= GAP_RANGE[1]:
        raise UserInputError(f"A gap of {gap:g} s is out of range; choose {GAP_RANGE[0]:g}–{GAP_RANGE[1]:g} s.")
    return gap
