"""Three parts of the WebUI built inside its Blocks: the saved-voice controls of the Synthesize tab (a
voice dropdown and a 保存音色 Save voice row), the 对话 Dialogue tab and the 历史 History tab.

Every event here is internal to the page: api_visibility="private" keeps it out of "Use via API".
"""
from __future__ import annotations

import uuid
from typing import Any

import gradio as gr
import numpy as np
import soundfile as sf

from cosyvoice.errors import StudioError
from cosyvoice.service.synthesis import SynthesisService

NO_VOICE = ""


def playable(path) -> tuple[int, "np.ndarray"]:
    """A saved WAV as (rate, samples) for a player: Gradio checks a file path with ffprobe, which the
    bundled ffmpeg does not include, and the check failed the whole event."""
    samples, rate = sf.read(str(path), dtype="float32")
    return rate, samples
PRIVATE: dict[str, Any] = {"api_visibility": "private"}


def voice_choices(service: SynthesisService) -> list[tuple[str, str]]:
    choices = [("— 上传参考音频 Upload a prompt below —", NO_VOICE)]
    for entry in service.library.usable_entries():
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
            entry = service.library.resolve(voice_id)
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
                   f"{', with transcript' if entry.transcript else ', no transcript: cross-lingual/instruct only'}); "
                   f"it is in the Saved voice list, the recording stays here")
        # The new voice is listed, not selected: selecting a voice clears the upload, and the user may
        # want to save the same recording again (another name) or keep using it.
        return message, gr.update(choices=voice_choices(service))

    button.click(save, inputs=[name, prompt_wav, prompt_text], outputs=[status, dropdown], **PRIVATE)


def dialogue_tab(service: SynthesisService) -> None:
    """对话 Dialogue: a script of [S1]/[S2] (or Name:) turns, each spoken by a saved voice, as one file."""
    from cosyvoice.service.dialogue import synthesize_dialogue

    with gr.Tab("对话 Dialogue"):
        gr.Markdown("每行一句 One turn per line: `[S1] 你好，今天去哪儿？` / `[S2] (开心地说) Let's go to the park.` "
                    "or `小王: 好呀`. 说话人映射到已保存音色 Map each speaker to a saved voice: `S1=narrator, S2=小王` "
                    "(a `Name:` speaker that is itself a saved voice needs no mapping).")
        with gr.Row():
            with gr.Column(scale=3):
                script = gr.Textbox(label="对话脚本 Script", lines=8,
                                    placeholder="[S1] 你好，今天去哪儿？\n[S2] Let's go to the park.")
                mapping = gr.Textbox(label="说话人 → 音色 Speakers → voices", placeholder="S1=narrator, S2=小王")
            with gr.Column(scale=2):
                gap = gr.Slider(0.0, 3.0, value=0.4, step=0.05, label="轮次间隔 Gap between turns (s)")
                seed = gr.Number(value=0, precision=0, minimum=0, label="随机种子 Seed")
                button = gr.Button("生成对话 Generate dialogue", variant="primary")
                audio = gr.Audio(label="对话音频 Dialogue", interactive=False, type="filepath")
                summary = gr.Markdown(elem_id="dialogue-result")

    def run(script_text: str, mapping_text: str, gap_s: float, seed_value: float):
        request_id = uuid.uuid4().hex[:6]
        try:
            result = synthesize_dialogue(service, script_text, mapping_text, gap_s,
                                         int(seed_value) if seed_value is not None else None, request_id=request_id)
        except StudioError as err:
            return None, f"❌ **失败 Failed** · req `{request_id}`  \n{err}"
        turns = " · ".join(f"{t.speaker}={t.voice} {t.start_s:.1f}–{t.end_s:.1f} s" for t in result.turns)
        text = f"✅ 已保存 Saved `{result.path.name}` · {result.audio_seconds:.2f} s · seed {result.seed}  \n{turns}"
        text += "".join(f"  \n⚠️ {notice}" for notice in result.notices)
        return playable(result.path), text

    button.click(lambda: (None, "⏳ 生成中 Generating…"), outputs=[audio, summary], queue=False, **PRIVATE).then(
        run, inputs=[script, mapping, gap, seed], outputs=[audio, summary], **PRIVATE)


HISTORY_COLUMNS = ["时间 Time", "模式 Mode", "音色 Voice", "文本 Text", "种子 Seed", "时长 Duration (s)", "文件 File"]


def history_rows(service: SynthesisService, limit: int = 50) -> tuple[list[list], list[dict]]:
    """(table rows, their records) of the newest results in outputs/, from their sidecars."""
    from cosyvoice.service.history import list_history

    records = list_history(service.config.outputs_dir, limit)
    names = {entry.id: entry.name for entry in service.library.usable_entries()}
    rows = []
    for r in records:
        text = str(r.get("text", ""))
        voice = str(r.get("voice", ""))
        rows.append([str(r.get("created", ""))[:19].replace("T", " "), r.get("mode", ""),
                     names.get(voice, voice) or "(upload)",
                     text if len(text) <= 40 else text[:39] + "…", r.get("seed", ""), r.get("duration", ""),
                     r.get("file", "")])
    return rows, records


def history_tab(service: SynthesisService, form: dict) -> gr.Tab:
    """History: the last results (newest first) with play, download and "use these settings again",
    which fills the main form (`form`: mode, text, instruct_text, seed, speed, voice, prompt_text components)."""
    with gr.Tab("历史 History") as tab:
        refresh = gr.Button("刷新 Refresh", size="sm")
        table = gr.Dataframe(headers=HISTORY_COLUMNS, value=history_rows(service)[0], interactive=False, wrap=True,
                             elem_id="history-table")
        records = gr.State(history_rows(service)[1])
        with gr.Row():
            player = gr.Audio(label="播放 Play", type="filepath", interactive=False)
            download = gr.File(label="下载 Download", interactive=False)
        reuse = gr.Button("使用这些设置 Use these settings again")
        chosen = gr.State(None)

    def reload():
        rows, found = history_rows(service)
        return rows, found

    def pick(found: list[dict], event: gr.SelectData):
        row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        if not found or row is None or row >= len(found):
            return gr.skip(), gr.skip(), None
        record = found[row]
        return playable(record["path"]), record["path"], record

    def settings(record: dict | None):
        if not record or record.get("mode") == "dialogue":
            raise gr.Error("Pick a single-voice result in the table first (dialogues are repeated in the 对话 tab).",
                           print_exception=False)
        try:
            voice = service.library.resolve(record["voice"]).id if record.get("voice") else NO_VOICE
        except StudioError:
            gr.Warning(f"The voice {record['voice']!r} of that result is no longer saved; pick one or upload a prompt.")
            voice = NO_VOICE
        if voice == NO_VOICE and record.get("prompt_text"):
            gr.Info("The prompt recording itself is not kept with a result: the one in the upload box (if any) "
                    "stays, and its transcript was filled in from the result.", duration=8)
        transcript = record.get("prompt_text") if voice == NO_VOICE and record.get("prompt_text") else gr.skip()
        return (record.get("mode", "zero_shot"), record.get("text", ""), record.get("instruct_text", ""),
                record.get("seed", 0), record.get("speed", 1.0),
                gr.update(choices=voice_choices(service), value=voice), transcript)

    refresh.click(reload, outputs=[table, records], queue=False, **PRIVATE)
    tab.select(reload, outputs=[table, records], queue=False, **PRIVATE)
    table.select(pick, inputs=records, outputs=[player, download, chosen], queue=False, **PRIVATE)
    reuse.click(settings, inputs=chosen, outputs=[form["mode"], form["text"], form["instruct_text"], form["seed"],
                                                  form["speed"], form["voice"], form["prompt_text"]],
                queue=False, **PRIVATE)
    return tab
