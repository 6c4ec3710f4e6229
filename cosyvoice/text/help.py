"""Markup syntax help shown beside the text box (Chinese with English)."""
from __future__ import annotations

SYNTAX_HELP = """\
**发音标注 / Pronunciation markup**

- 拼音（数字声调）/ pinyin with tone digits: `{hao4}` `[chong2]` `{chong2 qing4}`；ü 写作 `v` 或 `ü`：`{lv4}` `{nve4}`；轻声 / neutral tone: `{ma5}` 或 `{ma0}`
- 规范形式 / canonical form: `[h][ào]` `[ch][óng]`；零声母用 y/w / zero initial with y/w: `[y][ào]` `[w][ǔ]`，或单独韵母 / or a bare final: `[ài]` `[ér]`
- 英文音素 (CMU/ARPAbet，元音带重音 0/1/2) / English phones: `{M AY0 N UW1 T}` 或 / or `[M][AY0][N][UW1][T]`
- 标签 / tags: `[breath]` `[laughter]` `[noise]` `[cough]` `[sigh]` `[quick_breath]` `<strong>重读</strong>` `<laughter>笑着说</laughter>`
- 停顿 / pauses: `[pause:0.8]`（秒 / seconds）或 / or `<break time="800ms"/>`、`<break time="1.5s"/>`，0.05–10 秒；停顿处断开分段 / a pause also ends a piece
- 分段 / pieces: 连续的句子合成一段（约 80 字，英文按 token 计），不在句中切断 / consecutive sentences share a piece (~80 characters, English counted in tokens); sentences are not cut
- 数字、日期、单位会自动读出，可在选项中关闭 / numbers, dates and units are read out automatically (can be switched off).
- 其他方括号如 `[1]` `[注]` `【重要】` 按普通文字处理 / other brackets stay plain text.

例 / Example: `我们去{chong2}庆的[y][ín][h][áng]，<strong>[breath]别迟到</strong>。[pause:0.5] It takes a {M AY0 N UW1 T}.`

有的拼音没有对应的标记（如轻声 `xie5`、`er5`），会提示出错而不是读错。Some syllables have no token (e.g. neutral `xie5`, `er5`); they are reported, not misread.
"""
