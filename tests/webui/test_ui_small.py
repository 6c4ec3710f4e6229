"""The WebUI's small things a user notices (issue 19 item 8): each checked once, most in Chromium.

Unit parts first (no app): player slices, the page's request thread, the Backend's filter and CPU,
the preset marks, the spoken-length estimate. Then one browser session over the real lite app.
"""
from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from browser import browser_session, requires_browser
from conftest import ROOT, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT

from cosyvoice.ui import backend
from cosyvoice.engines.lite.engine import LiteEngine
from cosyvoice.errors import UserInputError
from cosyvoice.service.requests import RequestRegistry
from cosyvoice.ui.runs import PageRun, player_slices
from cosyvoice.ui.studio import preset_choices, seed_problem, spoken_length

ARTIFACTS = ROOT / "tests" / "artifacts"


def test_player_slices_are_short_and_lose_nothing():
    chunk = np.random.default_rng(0).standard_normal(22050 * 4 + 123).astype(np.float32)
    slices = list(player_slices(chunk, 22050))
    assert max(len(s) for s in slices) <= 22050 // 2 + 1
    assert np.array_equal(np.concatenate(slices), chunk)


def slow_events(jobs: RequestRegistry, request_id: str, steps: int = 20, fail: bool = False):
    jobs.open(request_id, "zero_shot")
    jobs.update(request_id, state="running")
    for step in range(steps):
        time.sleep(0.02)
        yield step
    if fail:
        raise UserInputError("bad text")
    jobs.update(request_id, state="done")


def test_a_run_whose_page_left_finishes_and_says_so():
    jobs = RequestRegistry()
    run = PageRun("r1", "zero_shot", lambda: slow_events(jobs, "r1"), jobs).start()
    next(iter(run.events()))
    run.page_left()
    assert run.finished.wait(5)
    assert jobs.get("r1").state == "done (page closed)" and run.outcome == "done"


def test_cancel_ends_the_run_as_cancelled_and_errors_reach_the_page():
    jobs = RequestRegistry()
    run = PageRun("r2", "zero_shot", lambda: slow_events(jobs, "r2"), jobs).start()
    run.cancel()
    assert list(run.events()) == [] or run.outcome == "cancelled"
    assert run.finished.wait(5) and jobs.get("r2").state == "cancelled (by user)"
    assert jobs.get("r2").finished_at is not None

    failing = PageRun("r3", "zero_shot", lambda: slow_events(jobs, "r3", 2, fail=True), jobs).start()
    with pytest.raises(UserInputError, match="bad text"):
        list(failing.events())


def test_backend_filter_applies_to_the_jobs_and_cpu_is_measured_while_busy():
    jobs = RequestRegistry()
    for request_id in ("aa11", "bb22", "aa33"):
        jobs.open(request_id, "zero_shot")
    assert [row[0] for row in backend.job_rows(jobs.snapshot(), "aa")] == ["aa33", "aa11"]
    assert len(backend.job_rows(jobs.snapshot(), "")) == 3
    backend.process_facts(LiteEngine(), time.time())
    stop = time.time() + 0.6
    worker = threading.Thread(target=lambda: [None for _ in iter(lambda: time.time() > stop, True)])
    worker.start()
    worker.join()
    cpu = next(line for line in backend.process_facts(LiteEngine(), time.time()).splitlines() if "CPU" in line)
    assert float(cpu.split("|")[2].split("%")[0]) > 10, cpu


def test_backend_log_shows_the_newest_line_first(tmp_path):
    (tmp_path / "runtime.log").write_text("t1 | INFO    | req=aa11 | older\nt2 | INFO    | req=aa11 | newer\n")
    assert backend.log_tail(tmp_path).splitlines()[0].endswith("newer")


def test_presets_the_lite_engine_cannot_render_are_marked():
    choices = preset_choices(LiteEngine())
    marked = [label for label, _ in choices if label.startswith("⚠️")]
    assert 0 < len(marked) < len(choices)
    assert all("not rendered by lite" in label for label in marked)


def test_spoken_length_and_seed_explanation():
    assert spoken_length("你" * 2000) == "≈ 8.3 min of audio at speed 1 (estimate)"
    assert spoken_length("Hello there.[pause:2]") == "≈ 3 s of audio at speed 1 (estimate)"
    assert "negative" in seed_problem(-5, 2**31 - 1) and seed_problem(5, 2**31 - 1) is None


@pytest.mark.slow
@requires_browser
def test_small_things_in_the_browser(lite_app):
    ARTIFACTS.mkdir(exist_ok=True)
    with browser_session() as open_page:
        page = open_page(lite_app.url)
        assert page.locator("#random-seed").inner_text().strip() == "🎲 随机 Random seed"
        # the player's "buffering" mark follows its waiting/playing events
        marks = page.evaluate("""() => { const probe = document.createElement('audio');
          document.querySelector('#output-audio').appendChild(probe);
          probe.dispatchEvent(new Event('waiting')); const before = document.body.dataset.playerWaiting;
          probe.currentTime = 1.5; probe.dispatchEvent(new Event('waiting')); const waiting = document.body.dataset.playerWaiting;
          probe.dispatchEvent(new Event('playing')); const playing = document.body.dataset.playerWaiting;
          probe.remove(); return [before, waiting, playing]; }""")
        assert marks[0] != "1" and marks[1:] == ["1", "0"], marks
        # layout in the order of the steps: prompt audio, transcript, then the new text
        boxes = [page.locator(sel).bounding_box()["y"] for sel in ("#prompt-audio", "#prompt-text", "#text-input")]
        assert boxes == sorted(boxes), boxes
        page.locator("#prompt-audio input[type=file]").set_input_files(str(ZERO_SHOT_PROMPT))
        page.locator("#prompt-text textarea").fill(ZERO_SHOT_TRANSCRIPT)
        page.locator("#text-input textarea").fill("今天天气很好。")
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="生成 Generate").click()
        page.locator("#result").get_by_text("Saved").wait_for(timeout=60000)
        page.wait_for_function("() => document.querySelector('#output-audio audio')?.duration > 0", timeout=30000)

        # a negative seed is explained, and the player no longer holds the previous audio
        page.locator("input[type=number]").first.fill("-5")
        page.get_by_role("button", name="生成 Generate").click()
        page.locator("#result").get_by_text("negative").wait_for(timeout=15000)
        page.wait_for_function("() => { const a = document.querySelector('#output-audio audio');"
                               " return !a || !(a.duration > 0); }", timeout=10000)
        page.screenshot(path=str(ARTIFACTS / "small_negative_seed.png"), full_page=True)

        # Preview wraps and estimates the length
        page.get_by_role("button", name="预览 Preview").click()
        page.locator("#text-preview").get_by_text("of audio at speed 1").wait_for(timeout=15000)

        # Save voice twice: the recording stays for the second save
        first, second = f"first{uuid.uuid4().hex[:6]}", f"second{uuid.uuid4().hex[:6]}"
        page.get_by_label("音色名称 Voice name").fill(first)
        page.get_by_role("button", name="保存音色 Save voice").click()
        page.get_by_text(f"Saved voice {first}").wait_for(timeout=60000)
        assert page.locator("#prompt-audio audio").count() > 0
        page.get_by_label("音色名称 Voice name").fill(second)
        page.get_by_role("button", name="保存音色 Save voice").click()
        page.get_by_text(f"Saved voice {second}").wait_for(timeout=60000)
        page.screenshot(path=str(ARTIFACTS / "small_voice_saved_twice.png"), full_page=True)

        # Dialogue: a new error replaces an old success
        page.get_by_role("tab", name="对话 Dialogue").click()
        page.get_by_label("对话脚本 Script").fill("[S1] 你好。")
        page.get_by_label("说话人 → 音色 Speakers → voices").fill(f"S1={first}")
        page.get_by_role("button", name="生成对话 Generate dialogue").click()
        page.wait_for_function("() => /Saved|Failed/.test(document.querySelector('#dialogue-result').innerText)",
                               timeout=60000)
        assert "Saved" in page.locator("#dialogue-result").inner_text(), page.locator("#dialogue-result").inner_text()
        page.get_by_label("说话人 → 音色 Speakers → voices").fill("S1=nobody-saved-this")
        page.get_by_role("button", name="生成对话 Generate dialogue").click()
        page.locator("#dialogue-result").get_by_text("Failed").wait_for(timeout=30000)
        assert "已保存" not in page.locator("#dialogue-result").inner_text()
        page.screenshot(path=str(ARTIFACTS / "small_dialogue_error.png"), full_page=True)
        for tab in ("历史 History", "后台 Backend"):
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(2500)
            page.screenshot(path=str(ARTIFACTS / f"tab_{tab.split()[-1].lower()}.png"), full_page=True)


def test_use_via_api_lists_synthesize_with_named_parameters(lite_app):
    info = lite_app.client().view_api(return_format="dict", print_info=False)
    assert set(info["named_endpoints"]) == {"/synthesize"}
    names = [p["parameter_name"] for p in info["named_endpoints"]["/synthesize"]["parameters"]]
    assert names == ["text", "mode", "prompt_wav", "prompt_text", "instruct_text", "seed", "speed", "stream",
                     "normalize", "voice"]
