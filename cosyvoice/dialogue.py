"""Dialogue: a script of turns, each spoken by a saved voice, joined into one file.

    [S1] 你好，今天去哪儿？            speaker tags, mapped to saved voices (S1=narrator, S2=小王)
    [S2] (开心地说) Let's go to the park.   an optional (instruction) right after the speaker
    小王: 好呀！                         or Name: line, where the name is a saved voice (or mapped)

A line without a speaker continues the previous turn. Every turn is one request through
SynthesisService (its own id `<dialogue id>-<turn>`, limits and log lines); the joined result is
saved to outputs/ under the dialogue's id, turns separated by `gap` seconds of silence.
"""
from __future__ import annotations

import re
import uuid
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserInputError
from .history import TEXT_KEPT, write_sidecar
from .log import request_logger
from .modes import mode_for_voice
from .outputs import output_path, write_wav_atomic
from .service import MAX_SEED, SynthesisRequest, SynthesisService

MAX_TURNS = 50
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
class TurnResult:
    speaker: str
    voice: str                  # the saved voice's name
    start_s: float
    end_s: float
    request_id: str


@dataclass
class DialogueResult:
    request_id: str
    path: Path
    sample_rate: int
    audio_seconds: float
    seed: int
    turns: list[TurnResult] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def parse_mapping(value: object) -> dict[str, str]:
    """Speaker → voice, from a dict or text such as "S1=narrator, S2=小王" (one pair per comma or line)."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        pairs = value.items()
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


def synthesize_dialogue(service: SynthesisService, script: object, mapping: object = None, gap: object = 0.4,
                        seed: object = None, speed: object = 1.0, request_id: str | None = None) -> DialogueResult:
    """Speak every turn with its voice, in order, and save the joined audio as one output file."""
    request_id = request_id or uuid.uuid4().hex[:6]
    log = request_logger(request_id)
    try:
        turns = parse_script(script)
        voices = parse_mapping(mapping)
        gap_s = _gap(gap)
        base_seed = int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) and seed >= 0 \
            else int(np.random.default_rng().integers(MAX_SEED))
        total = sum(len(t.text) for t in turns)
        if total > service.config.max_text_chars:
            raise UserInputError(f"The script holds {total} characters to speak; the limit is "
                                 f"{service.config.max_text_chars}. Split it into several dialogues.")
        entries = {}
        for turn in turns:
            if turn.speaker not in entries:
                entries[turn.speaker] = service.voices.resolve(voices.get(turn.speaker, turn.speaker))
    except UserInputError as err:
        log.warning(f"dialogue refused: {err}")
        raise
    log.info(f"dialogue: {len(turns)} turn(s), {len(entries)} voice(s) "
             f"({', '.join(f'{s}={e.name}' for s, e in entries.items())}), gap {gap_s:g} s, seed {base_seed}")
    rate = service.engine.sample_rate
    silence = np.zeros(int(round(gap_s * rate)), np.float32)
    parts: list[np.ndarray] = []
    results: list[TurnResult] = []
    notices: list[str] = []
    position = 0
    for index, turn in enumerate(turns, start=1):
        entry = entries[turn.speaker]
        mode = mode_for_voice(turn.instruction or "", bool(entry.transcript))
        turn_id = f"{request_id}-{index}"
        request = SynthesisRequest(text=turn.text, mode=mode, voice=entry.id, instruct_text=turn.instruction,
                                   seed=(base_seed + index - 1) % (MAX_SEED + 1), speed=speed)
        chunks, result = [], None
        for event in service.run(request, turn_id):
            if event.chunk is not None:
                chunks.append(event.chunk)
            if event.result is not None:
                result = event.result
        audio = np.concatenate(chunks)
        notices += [n for n in result.notices if n not in notices]
        if parts:
            parts.append(silence)
            position += len(silence)
        parts.append(audio)
        results.append(TurnResult(turn.speaker, entry.name, position / rate, (position + len(audio)) / rate, turn_id))
        position += len(audio)
    samples = np.concatenate(parts)
    path = write_wav_atomic(output_path(Path(service.config.outputs_dir), request_id), samples, rate)
    try:
        write_sidecar(path, {"request_id": request_id, "created": datetime.now().isoformat(timespec="milliseconds"),
                             "mode": "dialogue", "voice": ", ".join(sorted({e.name for e in entries.values()})),
                             "text": script[:TEXT_KEPT], "seed": base_seed, "gap": gap_s,
                             "voices": {s: e.name for s, e in entries.items()},
                             "duration": round(len(samples) / rate, 3),
                             "engine": service.engine.name})
    except OSError as err:
        log.warning(f"dialogue saved, but its history entry could not be written: {err}")
    log.success(f"saved dialogue {path.as_posix()} ({len(samples) / rate:.2f} s audio, {len(turns)} turns)")
    return DialogueResult(request_id, path, rate, len(samples) / rate, base_seed, results, notices)


def _gap(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserInputError("The gap between turns must be a number of seconds.")
    try:
        gap = float(value)
    except ValueError:
        raise UserInputError(f"The gap between turns must be a number of seconds; got {str(value)[:20]!r}.") from None
    if not GAP_RANGE[0] <= gap <= GAP_RANGE[1]:
        raise UserInputError(f"A gap of {gap:g} s is out of range; choose {GAP_RANGE[0]:g}–{GAP_RANGE[1]:g} s.")
    return gap
