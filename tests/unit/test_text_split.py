"""Packing sentences into pieces by the official CosyVoice rules (split_paragraph with 80/60/20).

The expected pieces below are worked out by hand from those rules; the character count of each
sentence is noted beside it (zh counts every character, punctuation included).
"""
from functools import lru_cache
from pathlib import Path

import pytest

from cosyvoice.text.markup import Pause, parse
from cosyvoice.text.split import Packing, Piece, estimate_tokens, split_items

TOKENIZER_DIR = Path("/work/shared/fixtures/cosyvoice3-tiny/CosyVoice-BlankEN")

A = "春天来了，公园里的花都开了，红的像火，粉的像霞，白的像雪。"        # 29
B = "孩子们在草地上奔跑，笑声传得很远很远。"                            # 19
C = "老人们坐在长椅上，慢慢地聊着过去的事情。"                          # 20
D = "妈妈说：“早点回家吃饭。”"                                          # 妈妈说：4 + “早点回家吃饭。”9
Q = "他说“早点回家吃饭。”"                                              # 11, one sentence ending 。”
E = "我们答应了。"                                                      # 6
F = "太阳慢慢落山了，天边的云被染成了金色，整个城市安静下来。"          # 28
G = "晚饭很香！"                                                        # 5
H = "好。"                                                              # 2


def _split(text, rules=Packing(), lang="zh", count_tokens=None):
    return [p.text if isinstance(p, Piece) else p for p in split_items(parse(text), lang, rules, count_tokens)]


def test_sentence_lengths_as_noted():
    assert [len(s) for s in (A, B, C, D, Q, E, F, G, H)] == [29, 19, 20, 13, 11, 6, 28, 5, 2]


@pytest.mark.parametrize("paragraph, expected", [
    # one sentence without final punctuation: the official frontend ends it with 。
    ("今天天气很好", ["今天天气很好。"]),
    # three short sentences share one piece (18 characters)
    ("今天天气很好。我们去公园吧！你来吗？", ["今天天气很好。我们去公园吧！你来吗？"]),
    # 8 sentences: A+B+C+妈妈说： = 72 > 60, adding “早点回家吃饭。” would make 81 > 80: cut there
    (A + B + C + D + E + F + G + H, [A + B + C + "妈妈说：", "“早点回家吃饭。”" + E + F + G + H]),
    # the closing quote stays with its sentence: A+B+C+Q = 79, then E would make 85
    (A + B + C + Q + E + F + G + H, [A + B + C + Q, E + F + G + H]),
    # a last piece under 20 characters joins the one before, even past 80 (82)
    (A + B + C + Q + "好的。", [A + B + C + Q + "好的。"]),
    # a last piece of exactly 20 stays on its own
    (A + B + C + Q + C, [A + B + C + Q, C]),
    # no cut while the piece has 60 or fewer: A+F = 57, so A+F+A = 86 stays together
    (A + F + A + C, [A + F + A, C]),
    # a paragraph ending in a mark and no closing quote gets no extra 。
    (A + B + C + Q[:-1], [A + B + C + Q[:-1]]),
])
def test_chinese_paragraphs_pack_like_the_official_frontend(paragraph, expected):
    assert _split(paragraph) == expected


def test_pieces_never_cut_inside_a_sentence_below_the_limit():
    pieces = _split(A * 8)                      # eight 29-character sentences
    assert pieces == [A * 3] * 2 + [A * 2]      # 87 > 80 only once 58 < 60 has been passed
    assert all(p.endswith("。") for p in pieces)


@lru_cache(maxsize=1)
def _fixture_count():
    from cosyvoice.engines.cosyvoice3.tokenizer import CosyVoice3Tokenizer
    tokenizer = CosyVoice3Tokenizer(TOKENIZER_DIR)
    return lambda text: len(tokenizer.encode(text))


EN = ["The morning was cold and bright.", " We walked to the old harbour together.",
      ' My sister said: "Look at the boats!"', " Nobody answered her.",
      " The water was calm; the gulls were loud.", " We stayed there until noon.", " Then we went home.", " Fine."]


def test_english_is_counted_in_the_fixture_tokenizers_tokens():
    count = _fixture_count()
    # tokens per sentence on the tiny fixture BPE (it has only 745 merges, so words take several)
    assert [count(s) for s in EN] == [17, 18, 25, 14, 23, 16, 10, 3]
    assert count("".join(EN[:4])) == 74 and count("".join(EN[:5])) > 80
    # 74 > 60 and adding the water sentence passes 80: cut; the rest (52 tokens) is one piece
    assert _split("".join(EN), lang="en", count_tokens=count) == [
        "".join(EN[:4]), "".join(EN[4:]).strip()]
    # counted in characters the same text would be cut elsewhere: the tokenizer decides
    assert _split("".join(EN), lang="zh") != _split("".join(EN), lang="en", count_tokens=count)


def test_english_final_mark_and_decimal_point():
    assert _split("We waited in the rain, and it never came", lang="en") == [
        "We waited in the rain, and it never came."]
    assert _split("It is 3.5 meters long. We measured it twice! OK?", lang="en") == [
        "It is 3.5 meters long. We measured it twice! OK?"]


def test_token_estimate_without_a_tokenizer():
    assert estimate_tokens("The morning was cold and bright.") == 7          # a token per word and the stop
    assert estimate_tokens("I [M][AY0][N][UW1][T] don't") == 1 + 5 + 2  # I, five phones, don + 't
    assert estimate_tokens("internationalization") == 4


def test_over_long_sentence_cut_at_clauses_only_past_the_sentence_limit():
    sentence = A[:-1] + "，" + F                                            # 57 characters, one sentence
    assert _split(sentence) == [sentence]
    assert _split(sentence, Packing(max_sentence_units=40)) == [
        "春天来了，公园里的花都开了，红的像火，粉的像霞，白的像雪，太阳慢慢落山了，",  # 37; +11 would pass 40
        "天边的云被染成了金色，整个城市安静下来。"]


def test_over_long_clause_cut_between_words_then_anywhere():
    words = "one two three four five six seven eight nine ten"
    pieces = _split(words, Packing(max_piece_units=15, max_sentence_units=15))
    assert len(pieces) > 1 and all(len(p) <= 15 for p in pieces)
    assert " ".join(pieces) == words + "。"
    han = "一二三四五六七八九十" * 3
    assert _split(han, Packing(max_piece_units=12, max_sentence_units=12)) == [han[:12], han[12:24], han[24:] + "。"]


def test_comma_split_option():
    rules = Packing(max_piece_units=8, comma_split=True)
    # clauses of 4: 8 fits, 12 would pass 8 with 8 > 6 already: cut
    assert _split("一二三，四五六，七八九，十一二。", rules) == ["一二三，四五六，", "七八九，十一二。"]
    assert _split("一二三，四五六，七八九，十一二。", Packing(max_piece_units=8)) == ["一二三，四五六，七八九，十一二。"]


def test_markup_never_cut():
    text = "[h][ào][h][ào][h][ào][h][ào][M][AY0][N][UW1][T][h][ào]"
    rules = Packing(max_piece_units=3, max_sentence_units=3)
    pieces = _split(text, rules)
    for piece in pieces:
        parse(piece)
    assert "".join(pieces) == text + "。"
    assert "[M][AY0][N][UW1][T]" in pieces


def test_strong_span_closed_and_reopened():
    rules = Packing(max_piece_units=8, max_sentence_units=8)
    pieces = _split("<strong>很长的句子很长，很长的句子很长</strong>。", rules)
    assert pieces == ["<strong>很长的句子很长，</strong>", "<strong>很长的句子很长</strong>。"]


def test_closing_tag_stays_with_sentence_and_tags_do_not_count():
    rules = Packing(max_piece_units=4, min_piece_units=3, merge_units=0)
    assert _split("<strong>好好学习。</strong>天天向上。", rules) == ["<strong>好好学习。</strong>", "天天向上。"]


def test_punctuation_only_pieces_dropped_but_tags_kept():
    # …… is no sentence mark, so the paragraph gets its final 。 as the official frontend adds it
    assert _split("你好。。。……[breath]") == ["你好。。。……[breath]。"]
    assert _split("你好。[breath]") == ["你好。[breath]"]
    assert _split("……。") == []


def test_pause_ends_a_piece_and_stays_in_place():
    assert _split("第一句话[pause:0.8]第二句话。<break time=\"1.5s\"/>") == [
        "第一句话。", Pause(0.8), "第二句话。", Pause(1.5)]


def test_pause_inside_a_span_keeps_both_pieces_valid():
    pieces = _split("<strong>先说这个[pause:0.5]再说那个</strong>")
    assert pieces == ["<strong>先说这个。</strong>", Pause(0.5), "<strong>再说那个</strong>。"]
    for piece in pieces:
        if isinstance(piece, str):
            parse(piece)


def test_line_breaks_end_sentences_but_are_not_read():
    assert _split("第一行的内容\n第二行的内容") == ["第一行的内容第二行的内容。"]
    assert _split("标题 Hello\nWorld 正文") == ["标题 Hello World 正文。"]
    assert _split("First line\nsecond line", lang="en") == ["First line second line."]
    rules = Packing(max_piece_units=6, min_piece_units=5, merge_units=0)
    assert _split("第一行的内容\n第二行的内容", rules) == ["第一行的内容", "第二行的内容。"]


def test_trailing_chinese_commas_become_a_full_stop():
    assert _split("我们走吧，，") == ["我们走吧。"]
    assert _split("我们走吧、<strong>好</strong>，[breath]") == ["我们走吧、<strong>好</strong>。[breath]"]
    assert _split("We go,", lang="en") == ["We go,."]            # the official frontend leaves English as it is
