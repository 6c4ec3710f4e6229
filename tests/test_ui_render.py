"""The WebUI renders in a real headless browser with every control a user needs."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# In CI the browser is installed by .ci/run, so a missing one is a failure there, not a skip.
requires_browser = pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                                      reason="chromium not installed (apt-get install chromium)")


@requires_browser
def test_ui_renders_all_controls(lite_app):
    assert CHROMIUM, "chromium is required in CI"
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", lite_app.url],
            capture_output=True, text=True, timeout=120)
    dom = out.stdout
    for label in ["3s极速复刻", "跨语种复刻", "自然语言控制", "合成文本", "参考音频", "参考音频文本",
                  "随机种子", "🎲", "语速", "流式播放", "生成 Generate", "合成音频", "下载 Download",
                  "引擎 Engine", "lite", "队列 Queue", "发音标注"]:
        assert label in dom, f"'{label}' missing from the rendered page"
    # Upload and microphone are both offered for the prompt.
    assert "microphone" in dom.lower() or "record" in dom.lower()


@requires_browser
def test_preview_shows_the_pieces_and_the_count_follows_the_text(lite_app, tmp_path):
    from browser import browser_page

    text = "第一句话比较短。第二句话也不长。[pause:0.5]这是暂停之后的一句话。"
    with browser_page(lite_app.url) as page:
        box = page.locator("#text-input textarea")
        box.fill(text)
        page.get_by_text(f"{len(text)} / 300").wait_for(timeout=10000)
        page.get_by_role("button", name="预览 Preview").click()
        preview = page.locator("#text-preview")
        preview.get_by_text("pause 0.5 s").wait_for(timeout=15000)
        shown = preview.inner_text()
        page.screenshot(path=str(tmp_path / "preview.png"), full_page=True)
    assert "pieces:     2, 1 pause" in shown
    assert "第一句话比较短。第二句话也不长。" in shown and "这是暂停之后的一句话。" in shown
    assert (tmp_path / "preview.png").stat().st_size > 10000
