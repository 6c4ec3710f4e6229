"""The shared text frontend: process(), the `text` command, syntax help, language detection."""
import time

import pytest

from cosyvoice.errors import UserInputError
from cosyvoice.text.cli import main
from cosyvoice.text.frontend import TextFrontend
from cosyvoice.text.help import SYNTAX_HELP
from cosyvoice.text.lang import detect_language
from cosyvoice.text.markup import MarkupError, parse


@pytest.fixture(scope="module")
def frontend():
    return TextFrontend()          # the shipped starter dictionary


def test_process_end_to_end(frontend):
    result = frontend.process("我在重庆的银行存了2000元。然后{hao4}好休息！ It takes a {M AY0 N UW1 T}.")
    assert result.normalized == ("我在重庆的银行存了两千元。然后[h][ào]好休息！ It takes a [M][AY0][N][UW1][T].")
    assert result.marked == ("我在[ch][óng]庆的银[h][áng]存了两千元。然后[h][ào]好休息！ "
                             "It takes a [M][AY0][N][UW1][T].")
    assert result.pieces == ["我在[ch][óng]庆的银[h][áng]存了两千元。", "然后[h][ào]好休息！",
                             "It takes a [M][AY0][N][UW1][T]."]
    assert result.notices == []
    assert result.language == "mixed"


def test_pieces_respect_limit_and_parse(frontend):
    text = "，".join(["这是一段需要切分的很长的文字"] * 12) + "。"
    result = frontend.process(text, max_piece_chars=30)
    assert len(result.pieces) > 1
    for piece in result.pieces:
        parse(piece)
        assert len(piece) <= 30
    assert "".join(result.pieces) == result.marked


def test_invalid_markup_rejected_with_position(frontend):
    with pytest.raises(MarkupError, match=r'"\[xyz\]" at character 4'):
        frontend.process("你好啊[xyz]")


@pytest.mark.parametrize("text", ["", "   ", "。。。！", "<strong></strong>"])
def test_nothing_to_read(frontend, text):
    with pytest.raises(UserInputError):
        frontend.process(text)


def test_instruction_prefix_leads_every_piece(frontend):
    result = frontend.process("用四川话说<|endofprompt|>今天有2个好消息。明天还有3个坏消息。")
    assert result.pieces == ["用四川话说<|endofprompt|>今天有两个好消息。",
                             "用四川话说<|endofprompt|>明天[h][ái]有三个坏消息。"]


def test_fast_after_warm_up(frontend):
    text = ("我在2026年3月5日去了重庆的银行，花了$5.99和¥100，气温-5℃，跑了5km。"
            "It costs $5 in 1999, call 555-123-4567. [h][ào]{M AY0 N UW1 T}<strong>重要</strong>[breath]") * 4
    text = text[:500]
    frontend.process(text)
    start = time.perf_counter()
    for _ in range(5):
        frontend.process(text)
    assert (time.perf_counter() - start) / 5 < 0.05


def test_syntax_help_example_is_valid(frontend):
    example = SYNTAX_HELP.split("Example: `")[1].split("`")[0]
    result = frontend.process(example)
    assert "[ch][óng]" in result.marked and "[M][AY0][N][UW1][T]" in result.marked
    assert "{hao4}" in SYNTAX_HELP and "[h][ào]" in SYNTAX_HELP


@pytest.mark.parametrize("text, lang", [
    ("今天天气很好", "zh"), ("The weather is fine", "en"), ("我用iPhone拍照", "mixed"),
    ("佢哋喺度食緊飯", "yue"), ("[h][ào]", "zh"), ("[M][AY0]", "en"), ("[h][ào][M][AY0]", "mixed"),
])
def test_detect_language(text, lang):
    assert detect_language(text) == lang


def test_cli_prints_normalized_markup_and_pieces(capsys):
    assert main(["我有2个{hao4}朋友。住在重庆！"]) == 0
    out = capsys.readouterr().out
    assert "normalized: 我有两个[h][ào]朋友。住在重庆！" in out
    assert "markup:     我有两个[h][ào]朋友。住在[ch][óng]庆！" in out
    assert "1. 我有两个[h][ào]朋友。" in out and "2. 住在[ch][óng]庆！" in out


def test_cli_options(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text('{"朋友": "[p][éng]{you5}"}\n', encoding="utf-8")
    assert main(["我有2个朋友", "--no-normalize", "--g2p-dict", str(path)]) == 0
    out = capsys.readouterr().out
    assert "markup:     我有2个[p][éng][y][ou]" in out
    assert main(["短句，短句，短句。", "--max-piece-chars", "4"]) == 0
    assert "3. 短句。" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert main(["坏的[zzz]标注"]) == 1
    assert '"[zzz]" at character 3' in capsys.readouterr().err
    assert main(["好", "--g2p-dict", str(tmp_path / "missing.jsonl")]) == 2
