"""The G2P replace dictionary: longest match, never inside markup, malformed lines, reload."""
import json
import os

import pytest

from cosyvoice.text.frontend import TextFrontend
from cosyvoice.text.g2p_dict import DEFAULT_G2P_DICT, G2PDictionary
from cosyvoice.text.markup import TextRun, render


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _apply(dictionary, text):
    return render(dictionary.apply([TextRun(text)]))


@pytest.fixture
def dict_path(tmp_path):
    return _write(tmp_path / "dict.jsonl", [
        '{"重庆": "[ch][óng]庆"}',
        '{"银行": "银[h][áng]"}',
        '{"行长": "hang2 zhang3"}',
        '{"银行行长": "{yin2 hang2 hang2 zhang3}"}',
        '{"朝阳": "[zh][āo]阳"}',
        '{"朝阳区": "{chao2}阳区"}',
    ])


def test_replacement_in_markup_and_numeric_pinyin(dict_path):
    d = G2PDictionary(dict_path)
    assert d.notices == []
    assert _apply(d, "去重庆") == "去[ch][óng]庆"
    assert _apply(d, "找行长") == "找[h][áng][zh][ǎng]"


def test_longest_match_wins(dict_path):
    d = G2PDictionary(dict_path)
    assert _apply(d, "银行行长来了") == "[y][ín][h][áng][h][áng][zh][ǎng]来了"
    assert _apply(d, "朝阳区的朝阳") == "[ch][áo]阳区的[zh][āo]阳"


def test_overlap_leftmost_match_taken(dict_path):
    # "银行长" holds both 银行 and 行长; the match that starts first is used, the other is not forced
    d = G2PDictionary(dict_path)
    assert _apply(d, "银行长") == "银[h][áng]长"


def test_never_inside_markup(dict_path):
    frontend = TextFrontend(dict_path)
    result = frontend.process("[ch][óng]庆和重庆<strong>银行</strong>")
    assert result.marked == "[ch][óng]庆和[ch][óng]庆<strong>银[h][áng]</strong>"
    # a dictionary word spelled with markup already is left as the user wrote it
    assert frontend.process("重[q][ìng]").marked == "重[q][ìng]"


def test_malformed_lines_reported_and_skipped(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [
        '{"重庆": "[ch][óng]庆"}',
        '{"银行": 银[h][áng]}',            # 2: not JSON
        '["行长", "hang2"]',               # 3: not an object
        '{"音乐": "音[yue4]"}',             # 4: fine (friendly markup)
        '{"长大": "[zh][ǎng"}',            # 5: fine as JSON, but "[zh]" lacks a final
        '{"还有": ""}',                    # 6: empty replacement
        '',
        '{"了解": "{liao9}解"}',            # 8: bad pinyin
        '{"觉得": "[j][ué]得"}',            # 9: fine
    ])
    d = G2PDictionary(path)
    joined = "\n".join(d.notices)
    for line in (2, 3, 5, 6, 8):
        assert f"bad.jsonl line {line}:" in joined
    for line in (1, 4, 7, 9):
        assert f"line {line}:" not in joined
    assert set(d.entries) == {"重庆", "音乐", "觉得"}
    assert _apply(d, "重庆的音乐，觉得") == "[ch][óng]庆的音[y][uè]，[j][ué]得"


def test_duplicate_word_reported(tmp_path):
    path = _write(tmp_path / "dup.jsonl", ['{"重庆": "[ch][óng]庆"}', '{"重庆": "{zhong4}庆"}'])
    d = G2PDictionary(path)
    assert any("line 2" in n and "line 1" in n for n in d.notices)
    assert _apply(d, "重庆") == "[zh][òng]庆"


def test_reloaded_when_file_changes(tmp_path):
    path = _write(tmp_path / "live.jsonl", ['{"重庆": "[ch][óng]庆"}'])
    frontend = TextFrontend(path)
    assert frontend.process("银行").marked == "银行"
    _write(path, ['{"重庆": "[ch][óng]庆"}', '{"银行": "银[h][áng]"}'])
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert frontend.process("银行").marked == "银[h][áng]"
    _write(path, ['{"银行": "银[h][áng]"', '{"重庆": "[ch][óng]庆"}'])
    result = frontend.process("银行重庆")
    assert result.marked == "银行[ch][óng]庆"
    assert any("line 1" in n for n in result.notices)


def test_missing_file_is_a_notice(tmp_path):
    result = TextFrontend(tmp_path / "nope.jsonl").process("银行")
    assert result.marked == "银行"
    assert any("not found" in n for n in result.notices)


def test_shipped_dictionary_is_small_and_clean():
    d = G2PDictionary(DEFAULT_G2P_DICT)
    assert d.notices == []
    for line in DEFAULT_G2P_DICT.read_text(encoding="utf-8").splitlines():
        assert len(json.loads(line)) == 1                  # one word per line, GLM-TTS style
    assert _apply(d, "我觉得重庆的银行还有音乐梦想。") == "我觉得[ch][óng]庆的银[h][áng]还有音乐梦想。"


def test_example_dictionary_loads_as_an_opt_in(capsys):
    example = DEFAULT_G2P_DICT.parent / "examples" / "G2P_replace_dict.example.jsonl"
    d = G2PDictionary(example)
    assert d.notices == [] and len(d.entries) > 100
    assert _apply(d, "我觉得还有快乐。") == "我[j][ué]得[h][ái]有快[l][è]。"
    from cosyvoice.text.cli import main
    assert main(["还有", "--g2p-dict", str(example)]) == 0
    assert "markup:     [h][ái]有" in capsys.readouterr().out


def test_replacement_with_a_pause_is_skipped(tmp_path):
    path = _write(tmp_path / "p.jsonl", ['{"重庆": "[ch][óng][pause:0.5]庆"}', '{"银行": "银[h][áng]"}'])
    d = G2PDictionary(path)
    assert list(d.entries) == ["银行"]
    assert any("p.jsonl line 1" in n and "cannot hold a pause" in n for n in d.notices)
