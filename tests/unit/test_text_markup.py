"""Markup: canonical CosyVoice3 tokens, friendlier input forms, and checks with clear messages."""
import pytest

from cosyvoice.errors import UserInputError
from cosyvoice.text.markup import (CmuWord, MarkupError, PinyinSyllable, Tag, TextRun, parse, render,
                                   to_markup)
from cosyvoice.text.special_tokens import ADDED_SPECIAL_TOKENS

# input -> canonical markup (expected outputs written by hand from the token table)
CONVERSIONS = [
    ("[h][ào]", "[h][ào]"),
    ("{hao4}", "[h][ào]"),
    ("[hao4]", "[h][ào]"),
    ("[chong2]庆", "[ch][óng]庆"),
    ("{chong2 qing4}", "[ch][óng][q][ìng]"),
    ("[hào]", "[h][ào]"),
    ("{lv4}", "[l][ǜ]"),
    ("{lü4}", "[l][ǜ]"),
    ("{nv3}", "[n][ǚ]"),
    ("{nve4}", "[n][vè]"),
    ("{lüe4}", "[l][vè]"),
    ("{ma5}", "[m][a]"),
    ("{ma0}", "[m][a]"),
    ("{de5}", "[d][e]"),
    ("{er2}", "[ér]"),
    ("{ai4}", "[ài]"),
    ("{yao4}", "[y][ào]"),
    ("{wu3}", "[w][ǔ]"),
    ("{yu2}", "[y][ú]"),
    ("{ju1}", "[j][ū]"),
    ("{jü3}", "[j][ǔ]"),
    ("{xue2}", "[x][ué]"),
    ("{liu4}", "[l][iù]"),
    ("{gui4}", "[g][uì]"),
    ("{xiong2}", "[x][ióng]"),
    ("[j][ǐ]予好评", "[j][ǐ]予好评"),
    ("{M AY0 N UW1 T}", "[M][AY0][N][UW1][T]"),
    ("[M AY0 N UW1 T]", "[M][AY0][N][UW1][T]"),
    ("[M][AY0][N][UW1][T]", "[M][AY0][N][UW1][T]"),
    ("他[laughter]笑了[breath]", "他[laughter]笑了[breath]"),
    ("<strong>勇气</strong>与<laughter>智慧</laughter>", "<strong>勇气</strong>与<laughter>智慧</laughter>"),
    ("You are a helpful assistant.<|endofprompt|>你好", "You are a helpful assistant.<|endofprompt|>你好"),
    ("[1]、[注]、【重要】、[Note]", "[1]、[注]、【重要】、[Note]"),
    ("{中文}", "{中文}"),
]


@pytest.mark.parametrize("text, expected", CONVERSIONS)
def test_conversion(text, expected):
    assert to_markup(text) == expected
    assert to_markup(expected) == expected          # the canonical form is stable


def test_converted_tokens_are_tokenizer_tokens():
    allowed = set(ADDED_SPECIAL_TOKENS)
    for text, _ in CONVERSIONS[:30]:
        for item in parse(text):
            if isinstance(item, PinyinSyllable):
                assert f"[{item.final}]" in allowed
                assert not item.initial or f"[{item.initial}]" in allowed
            elif isinstance(item, CmuWord):
                assert all(f"[{p}]" in allowed for p in item.phones)


def test_items():
    items = parse("去重[q][ìng]{M AY0 N UW1 T} [M][AY0][breath]<|endofprompt|>")
    assert items == [
        TextRun("去重"), PinyinSyllable("q", "ìng", "qing4"), CmuWord(("M", "AY0", "N", "UW1", "T")),
        TextRun(" "), CmuWord(("M", "AY0")), Tag("[breath]"), Tag("<|endofprompt|>"),
    ]
    assert render(items) == "去重[q][ìng][M][AY0][N][UW1][T] [M][AY0][breath]<|endofprompt|>"


def test_bare_final_is_a_syllable_without_initial():
    assert parse("[ài]") == [PinyinSyllable("", "ài", "ai4")]


def test_numeric_forms():
    assert [s.numeric for s in parse("{lv4}{nve4}{ma0}[y][ǔ]")] == ["lv4", "nve4", "ma5", "yu3"]


# text -> (quoted piece, 1-based position, words the message must contain)
ERRORS = [
    ("你好[abc]", "[abc]", 3, "Unknown markup token"),
    ("[laugh]", "[laugh]", 1, "Unknown markup token"),
    ("好<b>x</b>", "<b>", 2, "Unknown tag"),
    ("<|endoftext|>", "<|endoftext|>", 1, "Unknown tag"),
    ("一个{bv4}", "{bv4}", 3, "not a Mandarin syllable"),
    ("[b][ǚ]", "[b][ǚ]", 1, "not a Mandarin syllable"),
    ("[iào]", "[iào]", 1, "[y][ào]"),
    ("谢{xie5}", "{xie5}", 2, "cannot be expressed"),
    ("{er5}", "{er5}", 1, "cannot be expressed"),
    ("{n2}", "{n2}", 1, "cannot be expressed"),
    ("{hao}", "{hao}", 1, "neither numeric pinyin"),
    ("[h]好", "[h]", 1, "followed directly by a final"),
    ("[h] [ào]", "[h]", 1, "followed directly by a final"),
    ("a[AX]", "[AX]", 2, "not a CMU phone"),
    ("[M][AY3]", "[AY3]", 4, "not a CMU phone"),
    ("{M AY5 N}", "{M AY5 N}", 1, "AY5"),
    ("<strong>重点", "<strong>", 1, "never closed"),
    ("重点</strong>", "</strong>", 3, "does not match"),
    ("<strong>a<strong>b</strong></strong>", "<strong>", 10, "opens again"),
    ("<strong><laughter>a</strong></laughter>", "</strong>", 20, "does not match"),
    ("<laughter>笑", "<laughter>", 1, "never closed"),
]


@pytest.mark.parametrize("text, piece, position, words", ERRORS)
def test_error_messages(text, piece, position, words):
    with pytest.raises(MarkupError) as info:
        parse(text)
    err = info.value
    assert isinstance(err, UserInputError)
    assert err.piece == piece and err.position == position
    message = str(err)
    assert f'"{piece}"' in message and f"character {position}" in message and words in message


def test_case_count():
    assert len(CONVERSIONS) + len(ERRORS) >= 30


def test_pauses_parse_in_both_forms_and_render_canonically():
    from cosyvoice.text.markup import Pause, render
    items = parse('一[pause:0.8]二<break time="250ms"/>三[Pause: 2s]<break time=\'1.5s\'>')
    assert [i for i in items if isinstance(i, Pause)] == [Pause(0.8), Pause(0.25), Pause(2.0), Pause(1.5)]
    assert render(items) == "一[pause:0.8]二[pause:0.25]三[pause:2][pause:1.5]"
    with pytest.raises(MarkupError, match="Unknown markup token"):      # not a pause, as before
        parse("[pausing]")
