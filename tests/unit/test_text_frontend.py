"""The shared text frontend: process(), the `text` command, syntax help, language detection."""

import pytest

from cosyvoice.errors import UserInputError
from cosyvoice.text.cli import main
from cosyvoice.text.frontend import TextFrontend, format_preview
from cosyvoice.text.help import SYNTAX_HELP
from cosyvoice.text.lang import detect_language
from cosyvoice.text.markup import MarkupError, Pause, parse

TOKENIZER_DIR = "/work/shared/fixtures/cosyvoice3-tiny/CosyVoice-BlankEN"


@pytest.fixture(scope="module")
def frontend():
    return TextFrontend()          # the shipped starter dictionary


def test_process_end_to_end(frontend):
    result = frontend.process("我在重庆的银行存了2000元。然后{hao4}好休息！ It takes a {M AY0 N UW1 T}.")
    assert result.normalized == ("我在重庆的银行存了两千元。然后[h][ào]好休息！ It takes a [M][AY0][N][UW1][T].")
    assert result.marked == ("我在[ch][óng]庆的银[h][áng]存了两千元。然后[h][ào]好休息！ "
                             "It takes a [M][AY0][N][UW1][T].")
    # three short sentences: one piece, as the official frontend packs them
    assert result.pieces == [result.marked]
    # 20 Chinese characters and marks, "It takes a" (10), five phones, "."; the space after ！ is not counted
    assert result.items == result.pieces and result.piece_units == [20 + 10 + 5 + 1]
    assert result.unit == "characters"
    assert result.notices == []
    assert result.language == "mixed"


def test_long_sentence_cut_only_past_the_sentence_limit():
    text = "，".join(["这是一段需要切分的很长的文字"] * 12) + "。"          # one sentence of 180 characters
    assert TextFrontend().process(text).pieces == [text]
    result = TextFrontend(max_sentence_units=30).process(text)
    assert len(result.pieces) > 1
    for piece, units in zip(result.pieces, result.piece_units):
        parse(piece)
        assert len(piece) == units <= 30
    assert "".join(result.pieces) == result.marked


def test_old_keyword_still_sets_the_piece_length(frontend):
    text = "第一句话在这里。第二句话在这里。第三句话在这里。"
    assert frontend.process(text, max_piece_chars=10).pieces == ["第一句话在这里。", "第二句话在这里。", "第三句话在这里。"]
    assert frontend.process(text).pieces == [text]


def test_english_counted_in_the_engines_tokens():
    from cosyvoice.engines.cosyvoice3.tokenizer import CosyVoice3Tokenizer
    tokenizer = CosyVoice3Tokenizer(TOKENIZER_DIR)
    count = lambda text: len(tokenizer.encode(text))  # noqa: E731
    text = ('The morning was cold and bright. We walked to the old harbour together. My sister said: '
            '"Look at the boats!" Nobody answered her. The water was calm; the gulls were loud. Then we went home.')
    counted = TextFrontend(count_tokens=count).process(text, normalize=False)
    assert counted.unit == "tokens"
    assert counted.pieces == ['The morning was cold and bright. We walked to the old harbour together. My sister '
                              'said: "Look at the boats!" Nobody answered her.',
                              "The water was calm; the gulls were loud. Then we went home."]
    assert counted.piece_units == [count(counted.pieces[0]), count(" " + counted.pieces[1])]
    estimated = TextFrontend().process(text, normalize=False)
    assert estimated.unit == "estimated tokens" and estimated.pieces == [text]     # ~35 estimated tokens


@pytest.mark.parametrize("text", ["[pause:0.5]", "<break time=\"500ms\"/>"])
def test_pause_forms(frontend, text):
    result = frontend.process(f"先说这个{text}再说那个。")
    assert result.items == ["先说这个。", Pause(0.5), "再说那个。"]
    assert result.pieces == ["先说这个。", "再说那个。"] and result.pauses == [Pause(0.5)]
    assert "pause" not in result.marked and "break" not in result.marked


def test_pause_in_seconds_and_repeated(frontend):
    result = frontend.process('<break time="1.5s"/>一。[pause:2][pause:0.05]二。')
    assert result.items == [Pause(1.5), "一。", Pause(2.0), Pause(0.05), "二。"]


@pytest.mark.parametrize("bad", ["[pause:20]", "[pause:0.01]", "[pause:soon]", "<break time=\"5\"/>",
                                 "<break time=\"20000ms\"/>", "<break/>"])
def test_bad_pause_explained(frontend, bad):
    with pytest.raises(UserInputError) as err:
        frontend.process(f"你好{bad}再见")
    message = str(err.value)
    assert f'"{bad}" at character 3' in message
    assert "0.05–10 seconds" in message and "[pause:0.8]" in message and '<break time="800ms"/>' in message


def test_pause_not_allowed_in_instruction(frontend):
    with pytest.raises(UserInputError, match="after <\\|endofprompt\\|>"):
        frontend.process("慢慢说[pause:1]<|endofprompt|>你好。")


def test_invalid_markup_rejected_with_position(frontend):
    with pytest.raises(MarkupError, match=r'"\[xyz\]" at character 4'):
        frontend.process("你好啊[xyz]")


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text_is_the_callers_to_report(frontend, text):
    with pytest.raises(ValueError):
        frontend.process(text)


@pytest.mark.parametrize("text", ["。。。！", "<strong></strong>", "[pause:1]"])
def test_nothing_to_read(frontend, text):
    with pytest.raises(UserInputError, match="Nothing to read: the text has no words"):
        frontend.process(text)


@pytest.mark.parametrize("text", ["😀😀👍", "مرحبا بالعالم", "😀！[pause:1]"])
def test_unreadable_text_says_what_to_write(frontend, text):
    with pytest.raises(UserInputError, match="no Chinese or English words.*Write it in Chinese or English"):
        frontend.process(text)


def test_instruction_prefix_leads_every_piece(frontend):
    result = frontend.process("用四川话说<|endofprompt|>今天有2个好消息。[pause:0.5]明天还有3个坏消息。")
    assert result.items == ["用四川话说<|endofprompt|>今天有两个好消息。", Pause(0.5),
                            "用四川话说<|endofprompt|>明天还有三个坏消息。"]
    assert result.piece_units == [9, 10]              # the instruction is not counted


def test_syntax_help_example_is_valid(frontend):
    example = SYNTAX_HELP.split("Example: `")[1].split("`")[0]
    result = frontend.process(example)
    assert "[ch][óng]" in result.marked and "[M][AY0][N][UW1][T]" in result.marked
    assert "{hao4}" in SYNTAX_HELP and "[h][ào]" in SYNTAX_HELP
    assert "[pause:0.8]" in SYNTAX_HELP and '<break time="800ms"/>' in SYNTAX_HELP
    assert result.pauses == [Pause(0.5)]


def test_preview_numbers_pieces_with_units_and_shows_pauses(frontend):
    preview = format_preview(frontend.process("我有2个朋友。[pause:0.8]住在重庆！"))
    assert preview.splitlines() == [
        "normalized: 我有两个朋友。[pause:0.8]住在重庆！",
        "markup:     我有两个朋友。住在[ch][óng]庆！",
        "language:   zh (pieces counted in characters)",
        "pieces:     2, 1 pause",
        "  1. (7) 我有两个朋友。",
        "     ‖ pause 0.8 s",
        "  2. (5) 住在[ch][óng]庆！",
    ]


@pytest.mark.parametrize("text, lang", [
    ("今天天气很好", "zh"), ("The weather is fine", "en"), ("我用iPhone拍照", "mixed"),
    ("佢哋喺度食緊飯", "yue"), ("[h][ào]", "zh"), ("[M][AY0]", "en"), ("[h][ào][M][AY0]", "mixed"),
])
def test_detect_language(text, lang):
    assert detect_language(text) == lang


def test_cli_prints_the_preview(capsys):
    text = "我有2个{hao4}朋友。住在重庆！"
    assert main([text, "[pause:1]", "好。"]) == 0
    out = capsys.readouterr().out
    assert out == format_preview(TextFrontend().process(text + " [pause:1] 好。")) + "\n"
    assert "markup:     我有两个[h][ào]朋友。住在[ch][óng]庆！  好。" in out
    assert "1. (13) 我有两个[h][ào]朋友。住在[ch][óng]庆！" in out and "‖ pause 1 s" in out and "2. ( 2) 好。" in out


def test_cli_counts_english_with_a_tokenizer(capsys):
    assert main(["We walked home.", "--tokenizer", TOKENIZER_DIR]) == 0
    assert "pieces counted in tokens" in capsys.readouterr().out
    assert main(["We walked home."]) == 0
    assert "(4) We walked home." in capsys.readouterr().out            # estimated: 3 words and the stop


def test_cli_options(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text('{"朋友": "[p][éng]{you5}"}\n', encoding="utf-8")
    assert main(["我有2个朋友", "--no-normalize", "--g2p-dict", str(path)]) == 0
    out = capsys.readouterr().out
    assert "markup:     我有2个[p][éng][y][ou]" in out
    assert main(["短句，短句，短句。"]) == 0
    assert "1. (9) 短句，短句，短句。" in capsys.readouterr().out
    assert main(["短句，短句，短句。", "--max-sentence-units", "4"]) == 0
    assert "3. (3) 短句。" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert main(["坏的[zzz]标注"]) == 1
    assert '"[zzz]" at character 3' in capsys.readouterr().err
    assert main(["好", "--g2p-dict", str(tmp_path / "missing.jsonl")]) == 2


def _printed_pieces(out):
    return [line.split(") ", 1)[1] for line in out.splitlines() if line.startswith("  ") and ") " in line]


def test_cli_prints_the_official_pieces_for_a_chinese_paragraph(capsys):
    # 8 sentences of 29, 19, 20, 4 (妈妈说：), 9 (“早点回家吃饭。”), 6, 28, 5 and 2 characters:
    # the first piece stops at 72 because the quote would make it 81; the rest (50) is one piece
    first = ("春天来了，公园里的花都开了，红的像火，粉的像霞，白的像雪。孩子们在草地上奔跑，笑声传得很远很远。"
             "老人们坐在长椅上，慢慢地聊着过去的事情。妈妈说：")
    second = "“早点回家吃饭。”我们答应了。太阳慢慢落山了，天边的云被染成了金色，整个城市安静下来。晚饭很香！好。"
    assert main([first + second]) == 0
    out = capsys.readouterr().out
    assert _printed_pieces(out) == [first, second]
    assert "1. (72) " in out and "2. (50) " in out


def test_cli_prints_the_official_pieces_for_an_english_paragraph(capsys):
    first = ('The morning was cold and bright. We walked to the old harbour together. '
             'My sister said: "Look at the boats!" Nobody answered her.')
    second = "The water was calm; the gulls were loud. We stayed there until noon. Then we went home. Fine."
    assert main([first + " " + second, "--tokenizer", TOKENIZER_DIR, "--no-normalize"]) == 0
    out = capsys.readouterr().out
    assert _printed_pieces(out) == [first, second]
    assert "1. (74) " in out                          # fixture tokenizer tokens, as in test_text_split


def test_chinese_instruction_does_not_make_english_count_in_characters(frontend):
    result = frontend.process("请用欢快的语气说<|endofprompt|>We walked home. It was late.")
    assert result.language == "en" and result.unit == "estimated tokens"
    assert result.pieces == ["请用欢快的语气说<|endofprompt|>We walked home. It was late."]
