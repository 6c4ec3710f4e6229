"""The lite engine speaks forced readings exactly: proven with espeak's own phoneme trace."""
from __future__ import annotations

import pytest

from cosyvoice.engines.lite import LiteEngine
from cosyvoice.engines.lite import espeak

# marked text -> phonemes espeak must speak for the forced syllable (espeak cmn / en mnemonics;
# Mandarin tones as Chao digits: 55 = 1st, 35 = 2nd, 21/214 = 3rd, 51 = 4th, 2x/33 = neutral)
MANDARIN = [
    ("[h][ào]奇心", "XAu51"),
    ("重庆是[ch][óng]庆", "ts.hong35"),
    ("银行[h][áng]长", "XA35N"),
    ("[x][íng]走", "S;i35N"),
    ("音乐[y][uè]器", "jyE51"),
    ("快乐[l][è]园", "l@51"),
    ("长[zh][ǎng]大", "ts.A21N"),
    ("[ch][áng]短", "ts.hA35N"),
    ("[d][ōu]是", "tou55"),
    ("[d][ū]市", "tu55"),
    ("我[j][ué]得", "tS;yE35"),
    ("睡[j][iào]", "tS;jAu51"),
    ("[l][ǜ]色", "ly51"),
    ("[n][ǚ]儿", "ny21"),
    ("[x][ū]要", "S;y55"),
    ("[j][ǔ]办", "tS;y21"),
    ("[ài]情", "ai51"),
    ("[ér]子", "@r35"),
    ("[y][ào]求", "jAu51"),
    ("东西[x][i]", "S;i22"),
    ("[zh][ōng]国", "ts.ong55"),
    ("[r][ì]本", "z.i.51"),
]
ENGLISH = [
    ("I [M][AY0][N][UW1][T] it", "maIn'u:t"),
    ("a [M][IH1][N][AH0][T] ago", "m'In@t"),
    ("[R][EH1][K][ER0][D] it", "r'Ek3d"),
    ("to [R][IH0][K][AO1][R][D]", "rIk'O:rd"),
    ("[L][IY1][D] the way", "l'i:d"),
    ("[L][EH1][D] pipe", "l'Ed"),
    ("[T][AH0][M][EY1][T][OW2]", "t@m'eIt,oU"),
]


@pytest.fixture(scope="module")
def engine() -> LiteEngine:
    return LiteEngine()


def _toneless_stress(trace: str) -> str:
    return trace.replace("'", "").replace(",", "")


@pytest.mark.parametrize("text,expected", MANDARIN)
def test_forced_pinyin_is_spoken(engine, text, expected):
    trace = _toneless_stress(engine.spoken_phonemes(text))
    assert expected in trace, f"{text}: espeak spoke {trace!r}"


@pytest.mark.parametrize("text,expected", ENGLISH)
def test_forced_cmu_word_is_spoken(engine, text, expected):
    trace = engine.spoken_phonemes(text)
    assert expected in trace, f"{text}: espeak spoke {trace!r}"


def test_forced_reading_overrides_the_default(engine):
    # 长 alone defaults to cháng; forcing zhǎng must change what is spoken
    plain = _toneless_stress(engine.spoken_phonemes("长大"))
    forced = _toneless_stress(engine.spoken_phonemes("[zh][ǎng]大"))
    assert "ts.hA" not in forced and "ts.A21" in forced
    assert plain != forced


@pytest.mark.parametrize("word,espeak_own,pypinyin_reading", [
    ("便宜", "piE51n", "phiE35n"),      # espeak: biàn yí; correct (cheap): pián yi
    ("角色", "tS;jAu21", "tS;yE35"),    # espeak: jiǎo sè; correct: jué sè
])
def test_pypinyin_reading_beats_espeak_dictionary(engine, word, espeak_own, pypinyin_reading):
    own = _toneless_stress(espeak.speak(word, espeak.EspeakParams(voice="cmn")).phonemes)
    ours = _toneless_stress(engine.spoken_phonemes(word))
    assert espeak_own in own
    assert pypinyin_reading in ours and espeak_own not in ours


def test_neutral_tone_and_u_umlaut_spelling(engine):
    trace = _toneless_stress(engine.spoken_phonemes("[l][ǜ]色的[n][ǚ]孩子"))
    assert "ly51" in trace and "ny21" in trace
    assert "(en)" not in trace          # no syllable fell back to English letter reading


def test_mixed_language_piece_uses_both_voices(engine):
    trace = engine.spoken_phonemes("我喜欢 Python 和[h][ào]奇心")
    assert "XAu51" in _toneless_stress(trace)
    assert "(en)" not in trace           # English words go to the English voice, not letter by letter


def test_cantonese_style_speaks_jyutping(engine):
    from cosyvoice.engines.base import Style

    trace = engine.spoken_phonemes("你好", Style(mode="instruct", instruct_text="请用广东话表达。"))
    mandarin = engine.spoken_phonemes("你好")
    assert trace != mandarin
    assert "ou2" in trace                 # 好 hou2 in Cantonese
