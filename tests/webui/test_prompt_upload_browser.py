"""Recordings as people have them, uploaded in headless Chromium: a browser's webm and a phone's m4a
go in through the upload button, an 8 kHz call recording and a 40 s ramble are used with a notice.
Screenshots land in tests/artifacts/ for a person to look at."""
from __future__ import annotations

import pytest
import soundfile as sf

import audio_variants
from browser import browser_session, requires_browser
from conftest import ROOT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app

pytestmark = [pytest.mark.slow, requires_browser]
ARTIFACTS = ROOT / "tests" / "artifacts"
UPLOAD_BUTTON = "input[type=file][data-testid*='Upload a recording']"


@pytest.fixture(scope="module")
def upload_app(tmp_path_factory):
    app = start_app(tmp_path_factory.mktemp("prompt_upload"), "--engine", "lite")
    yield app
    stop_app(app)


def generate(page, text: str = "你好。") -> str:
    page.locator("#prompt-text textarea").fill(ZERO_SHOT_TRANSCRIPT)
    page.locator("#text-input textarea").fill(text)
    page.get_by_role("button", name="生成 Generate").click()
    page.locator("#result").get_by_text("Saved").or_(page.locator("#result").get_by_text("Failed")).first.wait_for(
        timeout=60000)
    return page.locator("#result").inner_text()


def toasts(page) -> str:
    return "\n".join(page.locator(".toast-body").all_inner_texts())


@pytest.mark.parametrize("kind", ["webm", "m4a"])
def test_browser_and_phone_recordings_upload_and_clone(upload_app, kind, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    recording = audio_variants.encoded(tmp_path, kind)
    with browser_session() as open_page:
        page = open_page(upload_app.url)
        page.locator(UPLOAD_BUTTON).set_input_files(str(recording))
        page.locator("#prompt-audio audio").first.wait_for(state="attached", timeout=20000)
        assert "Invalid file type" not in toasts(page)
        # the 3.5 s recording is playable: its length shows once the browser has read the metadata
        page.locator("#prompt-audio").get_by_text("0:03").first.wait_for(timeout=20000)
        result = generate(page)
        page.screenshot(path=str(ARTIFACTS / f"prompt_upload_{kind}.png"), full_page=True)
    assert "Saved" in result, result
    [saved] = upload_app.outputs_dir.glob(f"output_*_{result.split('req ')[-1].strip()[:6]}.wav")
    assert sf.info(saved).duration > 0.3


@pytest.mark.parametrize("make,notice", [
    (lambda tmp: audio_variants.resampled(tmp, 8000), "upsampled to 16000 Hz"),
    (lambda tmp: audio_variants.long(tmp, 40.0), "were kept ("),
])
def test_telephone_and_overlong_recordings_are_used_with_a_notice(upload_app, make, notice, tmp_path):
    recording = make(tmp_path)
    with browser_session() as open_page:
        page = open_page(upload_app.url)
        page.locator("#prompt-audio input[type=file]").set_input_files(str(recording))
        page.locator("#prompt-audio audio").first.wait_for(state="attached", timeout=20000)
        result = generate(page)
        page.get_by_text(notice).first.wait_for(timeout=10000)
        page.screenshot(path=str(ARTIFACTS / f"prompt_notice_{recording.stem}.png"), full_page=True)
    assert "Saved" in result, result
    log = upload_app.log_text()
    assert notice in log                                       # the notice (and the kept span) is logged too
