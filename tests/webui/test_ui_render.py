"""The WebUI renders in a real headless browser with every control a user needs."""
from __future__ import annotations

import subprocess
import tempfile

import httpx

from browser import CHROMIUM, requires_browser


def test_every_tab_sits_in_one_tab_strip(lite_app):
    """A component made between two tabs splits Gradio's tab strip in two; the page must show one."""
    config = httpx.get(f"{lite_app.url}/config", timeout=30).json()
    kinds = [c.get("type") for c in config["components"]]
    labels = [c.get("props", {}).get("label") for c in config["components"] if c.get("type") == "tabitem"]
    assert kinds.count("tabs") == 1, labels
    assert [label.split()[-1] for label in labels] == ["Synthesize", "Dialogue", "Jobs", "History", "Backend"]


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
