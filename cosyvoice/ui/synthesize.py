"""The Synthesize tab: its form, its handlers (UI streaming, Cancel) and the `/synthesize` endpoint of
Gradio's API. Raw values go to the service, which validates; this module only translates events.
"""
from __future__ import annotations

import random
from types import SimpleNamespace
from typing import TYPE_CHECKING

import gradio as gr
from loguru import logger

from cosyvoice.ui import voices as ui_voices
from cosyvoice.audio.prompt import PROMPT_SUFFIXES, recording_as_wav
from cosyvoice.errors import StudioError
from cosyvoice.server.http_guard import request_id_of
from cosyvoice.modes import BY_ID as MODES_BY_ID, MODES
from cosyvoice.service.synthesis import MAX_SEED, SynthesisRequest
from cosyvoice.text.help import SYNTAX_HELP
from cosyvoice.ui.runs import PageRun, player_slices
from cosyvoice.ui.studio import PRESET_INFO, preset_choices, seed_problem, spoken_length

if TYPE_CHECKING:
    from cosyvoice.server.app import Studio


class SynthesizeTab:
    """The tab's handlers, bound to the studio (its service, engine and the page's running requests)."""

    def __init__(self, studio: "Studio"):
        self.service, self.engine, self.page_runs = studio.service, studio.engine, studio.page_runs

    def char_count(self, text) -> str:
        used = len(text.strip()) if isinstance(text, str) else 0
        limit = self.service.config.max_text_chars
        mark = "⚠️ " if used > limit else ""
        return f"{mark}{used} / {limit} 字符 characters"

    def preview(self, text, normalize=True) -> str:
        """What the engines will be given: the same lines as `python -m cosyvoice text`."""
        try:
            return f"{self.service.preview_text(text, normalize)}\nlength:     {spoken_length(text)}"
        except StudioError as err:
            return f"⚠️ {err}"

    def generate_ui(self, mode, text, prompt_wav, prompt_text, instruct_text, seed, speed, stream, normalize,
                    voice=None, request: gr.Request | None = None):
        """UI handler: clears the last result, reports queue place and progress, streams (rate, chunk) to
        the player, then offers the saved file; an error stays in the result area until the next request.

        The request runs in its own thread (ui_runs.PageRun): closing the tab does not stop it, Cancel does."""
        synthesis = SynthesisRequest(text=text, mode=mode, prompt_wav=prompt_wav, prompt_text=prompt_text,
                                     instruct_text=instruct_text, seed=seed, speed=speed, stream=stream,
                                     normalize=normalize, voice=voice)
        request_id = _request_id(request)
        problem = seed_problem(seed, MAX_SEED)
        if problem:
            yield None, None, f"❌ **失败 Failed** · req `{request_id}`  \n{problem}"
            return
        mode_label = mode if isinstance(mode, str) and mode in MODES_BY_ID else "unknown"
        run = PageRun(request_id, mode_label, lambda: self.service.run(synthesis, request_id), self.service.requests)
        self.page_runs.add(getattr(request, "session_hash", None) or request_id, run).start()
        # The download box and summary are cleared at once; the player keeps its stream open (a None there
        # would end the streamed playlist before the first chunk).
        yield gr.skip(), None, f"⏳ 已提交 Submitted · req `{request_id}`"
        try:
            yield from self._page_events(run, request_id)
        except StudioError as err:
            yield None, None, f"❌ **失败 Failed** · req `{request_id}`  \n{err}"
        finally:
            run.page_left()
        if run.outcome == "cancelled":
            yield None, None, f"⏹ 已取消 Cancelled · req `{request_id}`: nothing was saved."

    def _page_events(self, run: PageRun, request_id: str):
        for event in run.events():
            if event is None:                # heartbeat: nothing new
                yield gr.skip(), gr.skip(), gr.skip()
                continue
            if event.notice:
                gr.Warning(event.notice, duration=8)      # toasts go away; the summary keeps every notice
            if event.progress is not None:
                yield gr.skip(), gr.skip(), f"⏳ {event.progress[1]} · req `{request_id}`"
            if event.chunk is not None:
                for piece in player_slices(event.chunk, self.engine.sample_rate):
                    yield (self.engine.sample_rate, piece), gr.skip(), gr.skip()
            if event.result is not None:
                r = event.result
                summary = (f"✅ 已保存 Saved `{r.saved.name}` · {r.audio_seconds:.2f} s · RTF {r.rtf:.2f} · "
                           f"seed {r.seed} · engine `{self.engine.name}` · req `{r.request_id}`")
                summary += "".join(f"  \n⚠️ {notice}" for notice in r.notices)
                yield gr.skip(), str(r.saved), summary

    def cancel_ui(self, request: gr.Request | None = None):
        run = self.page_runs.cancel(getattr(request, "session_hash", None) or "")
        if run is None:
            return gr.skip()
        return f"⏹ 正在取消 Cancelling · req `{run.request_id}`…"

    def synthesize_api(self, text: str, mode: str = "zero_shot", prompt_wav: str | None = None,
                       prompt_text: str = "", instruct_text: str = "", seed: int = 0, speed: float = 1.0,
                       stream: bool = False, normalize: bool = True, voice: str = "",
                       request: gr.Request | None = None) -> str:
        """Synthesise `text` and return the saved WAV (mode: zero_shot | cross_lingual | instruct).

        voice: a saved voice's name or id, used instead of prompt_wav/prompt_text (GET /v1/audio/voices).
        """
        synthesis = SynthesisRequest(text=text, mode=mode, prompt_wav=prompt_wav, prompt_text=prompt_text,
                                     instruct_text=instruct_text, seed=seed, speed=speed, stream=stream,
                                     normalize=normalize, voice=voice)
        request_id = _request_id(request)
        try:
            return str(self.service.synthesize(synthesis, request_id).saved)
        except StudioError as err:
            raise gr.Error(f"{err} (req {request_id})", print_exception=False) from None



def _request_id(request: gr.Request | None) -> str:
    """An incoming X-Request-ID (from a proxy) names the request in the log; otherwise a fresh id."""
    headers = getattr(request, "headers", None) or {}
    raw = [(b"x-request-id", headers["x-request-id"].encode("latin-1"))] if "x-request-id" in headers else []
    return request_id_of({"headers": raw})


def raw(component):
    """`component` handing the service exactly what the client sent: typed checks and their messages
    live there, not in Gradio's converters. (An instance attribute, not a subclass: Gradio writes a
    .pyi stub beside the source of every component subclass.)"""
    component.preprocess = lambda payload: payload
    return component


def _recording_for_prompt_box(path: str) -> bytes:
    """The upload button's file as WAV, so the prompt box can play it; a bad file is said in a toast and the log."""
    try:
        return recording_as_wav(path)
    except StudioError as err:
        logger.warning(f"uploaded recording refused: {err}")
        raise gr.Error(str(err), print_exception=False) from None



def synthesize_tab(studio: "Studio") -> dict:
    """Lay out and wire the Synthesize tab; the form's components, for the History tab's "use again"."""
    tab = SynthesizeTab(studio)
    with gr.Tab("合成 Synthesize"):      # everything inside, the hidden API inputs too: one tab strip for all tabs
        form = _form(studio, tab)
        _wire(studio, tab, form)
        _api_endpoint(tab)
    return dict(mode=form.mode, text=form.text, instruct_text=form.instruct_text, seed=form.seed, speed=form.speed,
                voice=form.saved_voice, prompt_text=form.prompt_text)


def _form(studio: "Studio", tab: SynthesizeTab) -> SimpleNamespace:
    """The tab's components: the request form on the left, seed/speed/options and the result on the right."""
    with gr.Row():
        with gr.Column(scale=3):
            mode = raw(gr.Radio([(m.label, m.id) for m in MODES], value=MODES[0].id, label="模式 Mode"))
            steps = gr.Markdown(MODES[0].steps)
            saved_voice = ui_voices.voice_dropdown(studio.service)
            prompt_wav = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="prompt-audio",
                                  label="参考音频 Prompt audio (3–15 s; upload or record)")
            # Gradio's audio box refuses .webm (browsers call it video/webm): this button takes it
            recording = gr.UploadButton("上传录音 Upload a recording (webm, m4a, ogg, opus, aac, wav, mp3, flac)",
                                        file_types=["audio", *PROMPT_SUFFIXES], size="sm", elem_id="prompt-upload")
            recording.upload(_recording_for_prompt_box, recording, prompt_wav, api_visibility="private")
            prompt_text = raw(gr.Textbox(label="参考音频文本 Prompt transcript", lines=2, elem_id="prompt-text",
                                     placeholder="参考音频里说的话 Exactly what the prompt recording says"))
            with gr.Row(visible=False) as instruct_row:
                preset = gr.Dropdown(preset_choices(studio.engine), label="指令预设 Instruction presets",
                                     value=None, scale=1, info=PRESET_INFO)
                instruct_text = raw(gr.Textbox(label="指令 Instruction", scale=2,
                                           placeholder="例如 e.g. 请用四川话说 / speak very fast"))
            text = raw(gr.Textbox(label="合成文本 Text to synthesise", lines=5, elem_id="text-input",
                              placeholder="输入要合成的文本 Type the text to speak…"))
            with gr.Row():
                char_count = gr.Markdown(tab.char_count(""), elem_id="char-count")
                preview_button = gr.Button("预览 Preview", size="sm", scale=0, min_width=120)
            preview_box = gr.Code(label="预览 Preview: normalized text, markup and pieces", language=None,
                                  visible=False, interactive=False, elem_id="text-preview", wrap_lines=True)
            with gr.Accordion("发音标注 Pronunciation markup", open=False):
                gr.Markdown(SYNTAX_HELP)
        with gr.Column(scale=2):
            with gr.Row():
                seed = raw(gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED,
                                 label="随机种子 Seed (same input + seed = same audio)", scale=3))
                dice = gr.Button("🎲 随机 Random seed", scale=1, min_width=110, elem_id="random-seed")
            speed = raw(gr.Slider(0.5, 2.0, value=1.0, step=0.05, label="语速 Speed"))
            stream = raw(gr.Checkbox(value=False, label="流式播放 Stream while synthesising"))
            normalize = raw(gr.Checkbox(value=True, label="文本规范化 Read numbers, dates and symbols as words"))
            with gr.Row():
                generate = gr.Button("生成 Generate", variant="primary", scale=3)
                cancel = gr.Button("取消 Cancel", variant="stop", scale=1, elem_id="cancel")
            audio_out = gr.Audio(label="合成音频 Output", streaming=True, autoplay=True, interactive=False,
                                 elem_id="output-audio")
            file_out = gr.File(label="下载 Download", interactive=False)
            result_md = gr.Markdown(elem_id="result")
            ui_voices.save_voice_row(studio.service, prompt_wav, prompt_text, saved_voice)
    return SimpleNamespace(mode=mode, steps=steps, saved_voice=saved_voice, prompt_wav=prompt_wav,
                           prompt_text=prompt_text, instruct_row=instruct_row, preset=preset,
                           instruct_text=instruct_text, text=text, char_count=char_count,
                           preview_button=preview_button, preview_box=preview_box, seed=seed, dice=dice, speed=speed,
                           stream=stream, normalize=normalize, generate=generate, cancel=cancel, audio_out=audio_out,
                           file_out=file_out, result_md=result_md)


def _wire(studio: "Studio", tab: SynthesizeTab, form: SimpleNamespace) -> None:
    """The tab's events: mode-dependent fields, presets, the dice, character count, preview, Generate, Cancel."""
    private = {"queue": False, "api_visibility": "private"}
    form.mode.change(lambda m: (MODES_BY_ID[m].steps, gr.update(visible=MODES_BY_ID[m].needs_instruction),
                                gr.update(visible=MODES_BY_ID[m].needs_transcript)),
                     inputs=form.mode, outputs=[form.steps, form.instruct_row, form.prompt_text], **private)
    form.preset.change(lambda instruction: instruction or gr.skip(),
                       inputs=form.preset, outputs=form.instruct_text, **private)
    form.dice.click(lambda: random.randint(0, MAX_SEED), outputs=form.seed, **private)
    ui_voices.wire_voice_dropdown(studio.service, form.saved_voice, form.prompt_wav, form.prompt_text)
    form.text.change(tab.char_count, inputs=form.text, outputs=form.char_count, show_progress="hidden", **private)
    form.preview_button.click(lambda t, n: gr.update(value=tab.preview(t, n), visible=True),
                              inputs=[form.text, form.normalize], outputs=form.preview_box, **private)
    # The player is emptied by its own quick event first: inside the streaming handler a None would
    # end the stream's playlist, and an empty player must not keep the previous (or a failed) result.
    form.generate.click(lambda: None, outputs=form.audio_out, show_progress="hidden", **private).then(
        tab.generate_ui,
        inputs=[form.mode, form.text, form.prompt_wav, form.prompt_text, form.instruct_text, form.seed, form.speed,
                form.stream, form.normalize, form.saved_voice],
        # "undocumented": scripts that stream may call /generate, but "Use via API" shows only
        # /synthesize, the endpoint meant for clients.
        outputs=[form.audio_out, form.file_out, form.result_md], api_name="generate", api_visibility="undocumented",
        show_progress="minimal", show_progress_on=[form.result_md])
    form.cancel.click(tab.cancel_ui, outputs=form.result_md, **private)


def _api_endpoint(tab: SynthesizeTab) -> None:
    """Gradio's `/synthesize` API endpoint (shown in "Use via API")."""
    # The API endpoint gets real components (hidden) so uploads and the returned file are handled by
    # Gradio's file machinery: clients send a file and receive the saved WAV.
    with gr.Column(visible=False):
        # Labels name the parameters in "Use via API"; the defaults make its example run as shown
        # (cross-lingual needs no transcript of the example recording).
        api_inputs = [raw(gr.Textbox(label="text", value="你好，欢迎使用语音合成工作室。")),
                      raw(gr.Textbox(label="mode", value="cross_lingual")),
                      gr.Audio(type="filepath", label="prompt_wav"),
                      raw(gr.Textbox(label="prompt_text")), raw(gr.Textbox(label="instruct_text")),
                      raw(gr.Number(label="seed", value=0, precision=0)), raw(gr.Number(label="speed", value=1.0)),
                      raw(gr.Checkbox(label="stream")), raw(gr.Checkbox(label="normalize", value=True)),
                      raw(gr.Textbox(label="voice", value=""))]
        api_output = gr.File()
        api_button = gr.Button()
    api_button.click(tab.synthesize_api, inputs=api_inputs, outputs=api_output, api_name="synthesize")
