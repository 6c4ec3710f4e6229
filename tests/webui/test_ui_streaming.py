"""Streamed playback in headless Chromium keeps playing after its first chunk while the server is ahead.

The output player's currentTime is sampled every 100 ms; a stall is a run of samples where it stands
still. The server's progress comes from the request's log lines ("piece k/n vocoded (x s audio)"), so a
stall only counts against us when the server had already made more audio than the player had played.
"""
from __future__ import annotations

import re
import time
from datetime import datetime

import pytest

from browser import browser_session, requires_browser
from conftest import ROOT, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT, start_app, stop_app

pytestmark = [pytest.mark.slow, requires_browser]
ARTIFACTS = ROOT / "tests" / "artifacts"
SENTENCES = "今天天气很好，我们一起去公园散步吧。春天来了，花儿都开了，鸟儿在树上唱歌。"
MAX_STALL_S = 0.3
PLAYER_STATE = """() => { const a = document.querySelector('#output-audio audio'); if (!a) return null;
  return [a.currentTime, a.buffered.length ? a.buffered.end(a.buffered.length - 1) : 0, a.ended]; }"""
VOCODED = re.compile(r"^(\S+ \S+) \| INFO +\| req=(\w+) \| piece \d+/\d+ vocoded \(([\d.]+) s audio\)")


@pytest.fixture(scope="module")
def stream_app(tmp_path_factory):
    app = start_app(tmp_path_factory.mktemp("ui_stream"), "--engine", "lite", "--max-text-chars", "2000")
    yield app
    stop_app(app)


def sample_playback(page, give_up_s: float = 400) -> list[tuple[float, float, float]]:
    """(wall time, currentTime, buffered end) every 100 ms from Generate until the player ends."""
    samples = []
    started = time.time()
    while time.time() - started < give_up_s:
        state = page.evaluate(PLAYER_STATE)
        if state:
            samples.append((time.time(), state[0], state[1]))
            if state[2]:
                return samples
        page.wait_for_timeout(100)
    raise AssertionError(f"playback did not end within {give_up_s} s; last {samples[-3:]}")


def server_audio_by(log_text: str, request_id: str) -> list[tuple[float, float]]:
    """(wall time, seconds of audio the server had made by then) from the request's log lines."""
    made, total = [], 0.0
    for line in log_text.splitlines():
        found = VOCODED.match(line)
        if found and found.group(2) == request_id:
            total += float(found.group(3))
            when = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            made.append((when, total))
    return made


def stalls(samples, made) -> list[dict]:
    """Runs where playback stood still after the first audio although the server had more ready."""
    found, still_since = [], None
    first = next(i for i, s in enumerate(samples) if s[1] > 0)
    for (t0, pos0, _), (t1, pos1, _) in zip(samples[first:], samples[first + 1:]):
        if abs(pos1 - pos0) < 1e-4:
            still_since = still_since or t0
            continue
        if still_since is not None:
            ready = max((audio for when, audio in made if when <= still_since), default=0.0)
            found.append({"at_audio_s": round(pos0, 2), "stood_s": round(t0 - still_since, 2),
                          "server_had_s": round(ready, 2)})
        still_since = None
    return found


def test_streamed_playback_keeps_playing_while_the_server_is_ahead(stream_app):
    ARTIFACTS.mkdir(exist_ok=True)
    text = (SENTENCES * 20)[:600]
    with browser_session() as open_page:
        page = open_page(stream_app.url)
        page.locator("#prompt-audio input[type=file]").set_input_files(str(ZERO_SHOT_PROMPT))
        page.locator("#prompt-text textarea").fill(ZERO_SHOT_TRANSCRIPT)
        page.locator("#text-input textarea").fill(text)
        page.get_by_label("流式播放 Stream while synthesising").check()
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="生成 Generate").click()
        samples = sample_playback(page)
        result = page.locator("#result").inner_text()
        page.screenshot(path=str(ARTIFACTS / "streamed_playback_done.png"), full_page=True)
    request_id = re.search(r"req `?(\w+)", result).group(1)
    made = server_audio_by((stream_app.log_dir / "runtime.log").read_text(encoding="utf-8"), request_id)
    assert "Saved" in result and made, (result, made)
    total_audio = made[-1][1]
    played = samples[-1][1]
    assert played >= total_audio - 0.5, f"the player played {played:.1f} s of {total_audio:.1f} s"
    every = stalls(samples, made)
    print(f"playback stalls after the first audio: {every}")
    long_stalls = [s for s in every
              if s["stood_s"] > MAX_STALL_S and s["server_had_s"] > s["at_audio_s"] + 1.0]
    assert not long_stalls, f"playback stood still while the server was ahead: {long_stalls}"
