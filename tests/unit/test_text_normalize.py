"""Normalization: numbers, dates, symbols read the way a person would (expected outputs written by hand)."""
import pytest

from cosyvoice.text.frontend import TextFrontend
from cosyvoice.text.normalize import normalize_text

ZH_CASES = [
    ("我有2个苹果", "我有两个苹果"),
    ("第2名", "第二名"),
    ("12岁", "十二岁"),
    ("2000人", "两千人"),
    ("2026人", "两千零二十六人"),
    ("10005元", "一万零五元"),
    ("200块", "两百块"),
    ("1,234,567人", "一百二十三万四千五百六十七人"),
    ("共有20000人", "共有两万人"),
    ("110米栏", "一百一十米栏"),
    ("圆周率3.14", "圆周率三点一四"),
    ("0.5", "零点五"),
    ("增长50%", "增长百分之五十"),
    ("下降-3.5%", "下降负百分之三点五"),
    ("20%-30%", "百分之二十到百分之三十"),
    ("今天是2026年3月5日", "今天是二零二六年三月五日"),
    ("2026-03-05开会", "二零二六年三月五日开会"),
    ("1998年出生", "一九九八年出生"),
    ("3年", "三年"),
    ("90年代", "九十年代"),
    ("现在是8:30", "现在是八点三十分"),
    ("时间14:05:09", "时间十四点零五分九秒"),
    ("下午2:00见", "下午两点见"),
    ("电话13812345678", "电话幺三八幺二三四五六七八"),
    ("座机010-88886666", "座机零幺零，八八八八六六六六"),
    ("价格¥100", "价格一百元"),
    ("花了$5.99", "花了五点九九美元"),
    ("气温-5℃", "气温零下五摄氏度"),
    ("今天25°C", "今天二十五摄氏度"),
    ("跑了5km", "跑了五公里"),
    ("重3.5kg", "重三点五公斤"),
    ("比分3:2", "比分三比二"),
    ("1+1=2", "一加一等于二"),
    ("3/4的人", "四分之三的人"),
    ("3-5天", "三到五天"),
    ("版本1.2.3", "版本一点二点三"),
    ("1.5万人", "一点五万人"),
    ("007号", "零零七号"),
    ("4G网络", "四G网络"),
    ("AT&T很好", "AT和T很好"),
    ("没有数字的句子。", "没有数字的句子。"),
]

EN_CASES = [
    ("I have 2 apples and 3.14 pies", "I have two apples and three point one four pies"),
    ("1,234,567 people", "one million two hundred thirty-four thousand five hundred sixty-seven people"),
    ("It has 115 pages.", "It has one hundred fifteen pages."),
    ("I was born in 1999.", "I was born in nineteen ninety-nine."),
    ("Back in 2005, and in 2010", "Back in two thousand five, and in twenty ten"),
    ("On March 5, 2026 we met.", "On March fifth, twenty twenty-six we met."),
    ("The 1990s were great.", "The nineteen nineties were great."),
    ("It costs $5.99.", "It costs five dollars and ninety-nine cents."),
    ("It costs $1 and $0.50.", "It costs one dollar and fifty cents."),
    ("$1.5 million", "one point five million dollars"),
    ("Call 555-123-4567 now.", "Call five five five, one two three, four five six seven now."),
    ("It is 8:30 am.", "It is eight thirty a m."),
    ("Meet at 12:00.", "Meet at twelve o'clock."),
    ("See you at 8 p.m. today", "See you at eight p m today"),
    ("He came 1st and she 22nd.", "He came first and she twenty-second."),
    ("Up 50% today, -3.5% yesterday.", "Up fifty percent today, minus three point five percent yesterday."),
    ("It was -5°C outside.", "It was minus five degrees Celsius outside."),
    ("Run 5 km or 1 km.", "Run five kilometers or one kilometer."),
    ("3/4 of people, 1/2 cup.", "three quarters of people, one half cup."),
    ("Pages 3-5.", "Pages three to five."),
    ("Dr. Smith vs. Mr. Jones", "Doctor Smith versus Mister Jones"),
    ("Version 1.2.3", "Version one point two point three"),
    ("Room 007", "Room zero zero seven"),
    ("1+1=2", "one plus one equals two"),
    ("The 4G network", "The four G network"),
    ("I need 5GB now", "I need five gigabytes now"),
]

MIXED_CASES = [
    ("我买了3个iPhone", "我买了三个iPhone"),
    ("他跑了5km, 用了20 min", "他跑了五公里, 用了二十分钟"),
    ("价格是$20，约合¥140", "价格是二十美元，约合一百四十元"),
    ("I love 北京 2008年奥运会", "I love 北京 二零零八年奥运会"),
    ("我们 have 3 cats", "我们 have three cats"),
]


@pytest.mark.parametrize("text, expected", ZH_CASES)
def test_chinese(text, expected):
    assert normalize_text(text, "zh") == expected


@pytest.mark.parametrize("text, expected", EN_CASES)
def test_english(text, expected):
    assert normalize_text(text, "en") == expected


@pytest.mark.parametrize("text, expected", MIXED_CASES)
def test_mixed(text, expected):
    assert normalize_text(text, "zh") == expected


def test_case_count():
    assert len(ZH_CASES) + len(EN_CASES) + len(MIXED_CASES) >= 60


def test_no_digits_left_behind():
    text = "v2.0.1.4 build 12a3, .5 and 9"
    assert not any(ch.isdigit() for ch in normalize_text(text, "en"))


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    return TextFrontend(None)


def test_markup_passes_through_untouched(frontend):
    result = frontend.process("第3个[h][ào]，{M AY0 N UW1 T}有5个[breath]<strong>2</strong>")
    assert result.normalized == "第三个[h][ào]，[M][AY0][N][UW1][T]有五个[breath]<strong>二</strong>"


def test_normalization_can_be_switched_off(frontend):
    result = frontend.process("我有2个苹果，花了$5.99。", normalize=False)
    assert result.marked == "我有2个苹果，花了$5.99。"
    assert frontend.process("我有2个苹果。").marked == "我有两个苹果。"


def test_english_text_read_in_english(frontend):
    assert frontend.process("I have 2 cats.").marked == "I have two cats."


def test_footnote_brackets_stay_text(frontend):
    assert frontend.process("见[1]和【重要】。").marked == "见[一]和【重要】。"
