"""The WebUI's saved-voice parts, built inside app.build_ui's Blocks: a voice dropdown, a 保存音色
Save voice row, and (from their own modules) the 对话 Dialogue and History tabs.

Every event here is internal to the page: api_visibility="private" keeps it out of "Use via API".
"""
from __future__ import annotations

import uuid

import gradio as gr

from .errors import StudioError
from .service import SynthesisService

NO_VOICE = ""
PRIVATE = {"api_visibility": "private"}


def voice_choices(service: SynthesisService) -> list[tuple[str, str]]:
    choices = [("— 上传参考音频 Upload a prompt below —", NO_VOICE)]
    for entry in service.voices.voices():
        transcript = "" if entry.transcript else " · no transcript"
        choices.append((f"{entry.name} ({entry.duration:.1f} s{transcript})", entry.id))
    return choices


def voice_dropdown(service: SynthesisService) -> gr.Dropdown:
    """The saved-voice picker; its value (a voice id, or "" for none) goes to the service as `voice`."""
    return gr.Dropdown(voice_choices(service), value=NO_VOICE, label="已保存音色 Saved voice",
                       info="选择后无需上传 Pick one instead of uploading a prompt", allow_custom_value=False)


def wire_voice_dropdown(service: SynthesisService, dropdown: gr.Dropdown, prompt_wav: gr.Audio,
                        prompt_text: gr.Textbox) -> None:
    """Choosing a voice fills the transcript box from it and clears any upload; a new upload clears the choice."""

    def chosen(voice_id: str):
        if not voice_id:
            return gr.skip(), gr.skip()
        try:
            entry = service.voices.get(voice_id)
        except StudioError as err:
            raise gr.Error(str(err), print_exception=False) from None
        return None, entry.transcript

    dropdown.change(chosen, inputs=dropdown, outputs=[prompt_wav, prompt_text], queue=False, **PRIVATE)
    dropdown.focus(lambda: gr.update(choices=voice_choices(service)), outputs=dropdown, queue=False, **PRIVATE)
    prompt_wav.upload(lambda: NO_VOICE, outputs=dropdown, queue=False, **PRIVATE)


def save_voice_row(service: SynthesisService, prompt_wav: gr.Audio, prompt_text: gr.Textbox,
                   dropdown: gr.Dropdown) -> None:
    """保存音色 Save voice: the prompt of the current request goes into the library under a name."""
    with gr.Row():
        name = gr.Textbox(label="音色名称 Voice name", placeholder="e.g. narrator / 小王", scale=3)
        button = gr.Button("保存音色 Save voice", scale=1)
    status = gr.Markdown()

    def save(voice_name: str, audio_path: str | None, transcript: str):
        request_id = uuid.uuid4().hex[:6]
        try:
            entry = service.save_voice(voice_name, audio_path, transcript, request_id=request_id)
        except StudioError as err:
            raise gr.Error(f"{err} (req {request_id})", print_exception=False) from None
        message = (f"✅ 已保存音色 Saved voice **{entry.name}** ({entry.duration:.1f} s"
                   f"{', with transcript' if entry.transcript else ', no transcript: cross-lingual/instruct only'})")
        return message, gr.update(choices=voice_choices(service), value=entry.id)

    button.click(save, inputs=[name, prompt_wav, prompt_text], outputs=[status, dropdown], **PRIVATE)
