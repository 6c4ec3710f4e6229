"""The one table of synthesis modes: validation, UI, CLI choices and API docs all read it.

Adding a mode means one row here and a prompt builder in each engine that can render it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    id: str
    label: str                  # what the UI and the messages call it
    steps: str                  # the UI's how-to line for this mode
    needs_transcript: bool      # the prompt recording's transcript is required
    needs_instruction: bool     # a natural-language instruction is required


MODES: tuple[Mode, ...] = (
    Mode("zero_shot", "3s极速复刻 (zero-shot)",
         "**步骤 Steps:** 1. 上传或录制 3–15 秒参考音频 Upload/record a 3–15 s prompt · "
         "2. 输入参考音频的文本 Type its exact transcript · 3. 输入要合成的文本 Type the new text · 4. 生成 Generate",
         needs_transcript=True, needs_instruction=False),
    Mode("cross_lingual", "跨语种复刻 (cross-lingual)",
         "**步骤 Steps:** 1. 上传或录制参考音频 Upload/record a prompt (any language, no transcript needed) · "
         "2. 输入要合成的文本 (可为另一种语言) Type the text, in any language · 3. 生成 Generate",
         needs_transcript=False, needs_instruction=False),
    Mode("instruct", "自然语言控制 (instruct)",
         "**步骤 Steps:** 1. 上传或录制参考音频 Upload/record a prompt (gives the voice) · "
         "2. 选择或输入指令 Pick or type an instruction (四川话, 更快 faster, 开心 happy …) · "
         "3. 输入要合成的文本 Type the text · 4. 生成 Generate",
         needs_transcript=False, needs_instruction=True),
)
MODE_IDS: tuple[str, ...] = tuple(mode.id for mode in MODES)
BY_ID: dict[str, Mode] = {mode.id: mode for mode in MODES}


def get_mode(mode_id: str) -> Mode | None:
    return BY_ID.get(mode_id)

