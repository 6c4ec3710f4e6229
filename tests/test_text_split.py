"""Sentence splitting: sentence punctuation first, then commas; markup never cut."""
from cosyvoice.text.markup import parse
from cosyvoice.text.split import split_items


def _split(text, limit=80):
    return split_items(parse(text), limit)


def test_sentences():
    assert _split("今天天气很好。我们去公园吧！你来吗？") == ["今天天气很好。", "我们去公园吧！", "你来吗？"]


def test_english_sentences_and_decimals():
    assert _split("It is 3.5 meters long. We measured it twice! OK?") == [
        "It is 3.5 meters long.", "We measured it twice! OK?"]


def test_closing_quote_stays_with_sentence():
    assert _split("他说：“走吧。”然后走了。") == ["他说：“走吧。”", "然后走了。"]


def test_long_sentence_split_at_commas():
    text = "第一部分说的是天气，第二部分说的是交通，第三部分说的是吃饭。"
    pieces = _split(text, limit=12)
    assert pieces == ["第一部分说的是天气，", "第二部分说的是交通，", "第三部分说的是吃饭。"]
    assert "".join(pieces) == text


def test_commas_packed_up_to_limit():
    assert _split("一二，三四，五六，七八。", limit=7) == ["一二，三四，", "五六，七八。"]


def test_over_long_clause_cut_between_words():
    pieces = _split("one two three four five six seven eight nine ten", limit=15)
    assert len(pieces) > 1 and all(len(p.replace(" ", "")) <= 15 for p in pieces)
    assert " ".join(pieces) == "one two three four five six seven eight nine ten"


def test_markup_never_cut():
    text = "[h][ào][h][ào][h][ào][h][ào][M][AY0][N][UW1][T][h][ào]"
    for piece in _split(text, limit=3):
        parse(piece)
    assert "".join(_split(text, limit=3)) == text
    assert "[M][AY0][N][UW1][T]" in _split(text, limit=3)


def test_strong_span_closed_and_reopened():
    pieces = _split("<strong>很长的句子很长，很长的句子很长</strong>。", limit=8)
    assert pieces == ["<strong>很长的句子很长，</strong>", "<strong>很长的句子很长</strong>。"]


def test_closing_tag_stays_with_sentence():
    assert _split("<strong>好好学习。</strong>天天向上。") == ["<strong>好好学习。</strong>", "天天向上。"]


def test_short_fragment_joined():
    assert _split("嗯。今天我们讲一个故事。") == ["嗯。今天我们讲一个故事。"]


def test_punctuation_only_pieces_dropped_but_tags_kept():
    assert _split("你好。。。……[breath]") == ["你好。。。……[breath]"]
    assert _split("……。") == []


def test_newline_breaks():
    assert _split("第一行的内容在这里\n第二行的内容在这里") == ["第一行的内容在这里", "第二行的内容在这里"]
