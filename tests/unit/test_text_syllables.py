"""Every tone-marked syllable pypinyin can produce converts to tokenizer tokens or is reported."""
import pytest
from pypinyin.pinyin_dict import pinyin_dict

from cosyvoice.text.markup import MarkupError, PinyinSyllable, parse, render_item, syllable, syllable_from_marked
from cosyvoice.text.special_tokens import ADDED_SPECIAL_TOKENS, PINYIN_PIECES

ALLOWED = set(ADDED_SPECIAL_TOKENS)
INITIALS = sorted((p for p in PINYIN_PIECES if p.isascii() and not set(p) & set("aeiouv")), key=len, reverse=True)
FINALS = {p for p in PINYIN_PIECES if p not in INITIALS}
CONSONANTS = set("bcdfghjklmnpqrstwxyz")


def _all_readings() -> set[str]:
    readings = set()
    for value in pinyin_dict.values():
        readings.update(value.split(","))
    return readings


def _needed_final(reading: str) -> str:
    """The final token a reading needs, worked out directly from its spelling."""
    for initial in INITIALS:
        if reading.startswith(initial) and len(reading) > len(initial) and reading[len(initial)] not in CONSONANTS:
            reading = reading[len(initial):]
            break
    return reading.replace("ü", "v")


def test_whole_syllable_table():
    readings = _all_readings()
    assert len(readings) > 1400
    expressible, reported = [], []
    for reading in sorted(readings):
        try:
            syl = syllable_from_marked(reading)
        except MarkupError as err:
            assert "cannot be expressed" in str(err), (reading, str(err))
            assert _needed_final(reading) not in FINALS, reading
            reported.append(reading)
            continue
        expressible.append(reading)
        # tokens exist, spell the reading back, and the numeric form leads to the same tokens
        assert f"[{syl.final}]" in ALLOWED, reading
        assert not syl.initial or f"[{syl.initial}]" in ALLOWED, reading
        assert (syl.initial + syl.final).replace("v", "ü") == reading, (reading, syl)
        assert syllable(syl.numeric) == syl, reading
        assert parse(render_item(syl)) == [syl], reading
    assert len(expressible) > 0.9 * len(readings)
    # the documented gaps are among the reported ones
    for gap in ("er", "xie", "ń", "ê̄", "hm"):
        if gap in readings:
            assert gap in reported


@pytest.mark.parametrize("numeric, tokens", [
    ("hao4", "[h][ào]"), ("zhong1", "[zh][ōng]"), ("yue4", "[y][uè]"), ("yun2", "[y][ún]"),
    ("wai4", "[w][ài]"), ("ou3", "[ǒu]"), ("e4", "[è]"), ("ang2", "[áng]"), ("lve4", "[l][vè]"),
    ("qiong2", "[q][ióng]"), ("zi5", "[z][i]"), ("men5", "[m][en]"), ("shang5", "[sh][ang]"),
])
def test_numeric_to_tokens(numeric, tokens):
    assert render_item(syllable(numeric)) == tokens


@pytest.mark.parametrize("numeric", ["xie5", "jia5", "er5", "gua5", "lve3", "lv5", "lv1", "n4", "hng1"])
def test_inexpressible_numeric_is_reported(numeric):
    with pytest.raises(MarkupError, match="cannot be expressed"):
        syllable(numeric)


@pytest.mark.parametrize("numeric", ["bv4", "fi1", "zhiang2", "iao4", "x6"])
def test_impossible_numeric_is_reported(numeric):
    with pytest.raises(MarkupError):
        syllable(numeric)
