"""Text normalization: numbers, dates, times, money, units and symbols written out as words.

Works on plain text only (the frontend never hands it markup). Each number is read in the
language around it: the nearest letter on either side decides (Han -> Chinese, Latin ->
English), and a number with no letters nearby follows the text as a whole.
"""
from __future__ import annotations

import re
from typing import Callable

# --- Chinese numbers ------------------------------------------------------------------------

ZH_DIGITS = "零一二三四五六七八九"
_ZH_PLACES = ("", "十", "百", "千")
_ZH_GROUPS = ("", "万", "亿", "万亿")


def _zh_group(n: int, leading: bool) -> str:
    """0 < n < 10000 -> e.g. 2305 -> 两千三百零五."""
    out = ""
    zero_pending = False
    for place in (3, 2, 1, 0):
        d = n // 10 ** place % 10
        if d == 0:
            zero_pending = bool(out)
            continue
        if zero_pending:
            out += "零"
            zero_pending = False
        if d == 2 and (place == 3 or (place == 2 and leading and not out)):
            out += "两"
        elif d == 1 and place == 1 and leading and not out:
            out += ""                     # 十五, not 一十五, at the start of a number
        else:
            out += ZH_DIGITS[d]
        out += _ZH_PLACES[place]
    return out


def zh_int(n: int) -> str:
    """Cardinal reading: 2026 -> 两千零二十六, 10005 -> 一万零五, 20000 -> 两万."""
    if n < 0:
        return "负" + zh_int(-n)
    if n == 0:
        return "零"
    groups = []
    while n:
        groups.append(n % 10000)
        n //= 10000
    out = ""
    need_zero = False
    for index in range(len(groups) - 1, -1, -1):
        g = groups[index]
        if g == 0:
            need_zero = bool(out)
            continue
        if out and (need_zero or g < 1000):
            out += "零"
        text = _zh_group(g, leading=not out)
        if index and text == "二":
            text = "两"                   # 两万, 两亿
        out += text + _ZH_GROUPS[index]
        need_zero = False
    return out


def zh_digits(s: str, one: str = "一") -> str:
    """Digit by digit: 2026 -> 二零二六; phone numbers read 1 as 幺."""
    return "".join(one if ch == "1" else ZH_DIGITS[int(ch)] for ch in s if ch.isdigit())


def _split_number(s: str) -> tuple[bool, str, str]:
    """'-1,234.50' -> (negative, '1234', '50'): the parts both languages read."""
    negative = s[:1] in "-−"
    whole, _, frac = s[1 if negative else 0:].replace(",", "").partition(".")
    return negative, whole, frac


def zh_number(s: str) -> str:
    """A written number (integer or decimal, maybe signed) as spoken in Chinese."""
    negative, whole, frac = _split_number(s)
    sign = "负" if negative else ""
    if len(whole) > 1 and whole.startswith("0") or len(whole) > 16:
        text = zh_digits(whole)
    else:
        text = zh_int(int(whole or "0"))
        text = "二" if text == "两" else text
    if frac:
        text += "点" + zh_digits(frac)
    return sign + text


# --- English numbers ------------------------------------------------------------------------

_EN_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
            "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_EN_SCALES = ((10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"))
_EN_DIGIT_WORDS = _EN_ONES[:10]


def _en_below_1000(n: int) -> str:
    parts = []
    if n >= 100:
        parts.append(f"{_EN_ONES[n // 100]} hundred")
        n %= 100
    if n >= 20:
        parts.append(_EN_TENS[n // 10] + (f"-{_EN_ONES[n % 10]}" if n % 10 else ""))
    elif n or not parts:
        parts.append(_EN_ONES[n])
    return " ".join(parts)


def en_int(n: int) -> str:
    """123456 -> one hundred twenty-three thousand four hundred fifty-six."""
    if n < 0:
        return "minus " + en_int(-n)
    if n < 1000:
        return _en_below_1000(n)
    parts = []
    for value, name in _EN_SCALES:
        if n >= value:
            parts.append(f"{en_int(n // value)} {name}")
            n %= value
    if n:
        parts.append(_en_below_1000(n))
    return " ".join(parts)


def en_digits(s: str) -> str:
    return " ".join(_EN_DIGIT_WORDS[int(ch)] for ch in s if ch.isdigit())


def en_number(s: str) -> str:
    negative, whole, frac = _split_number(s)
    sign = "minus " if negative else ""
    if len(whole) > 1 and whole.startswith("0") or len(whole) > 15:
        text = en_digits(whole)
    else:
        text = en_int(int(whole or "0"))
    if frac:
        text += " point " + en_digits(frac)
    return sign + text


_EN_ORDINAL_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                         "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}


def en_ordinal(n: int) -> str:
    """22 -> twenty-second, 40 -> fortieth."""
    words = en_int(n)
    head, sep, last = max(words.rpartition(" "), words.rpartition("-"), key=lambda t: len(t[0]))
    if last in _EN_ORDINAL_IRREGULAR:
        last = _EN_ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def en_year(n: int) -> str:
    """1999 -> nineteen ninety-nine, 2005 -> two thousand five, 2026 -> twenty twenty-six."""
    if n % 1000 == 0 or 2000 <= n < 2010:
        return en_int(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{en_int(high)} hundred"
    return f"{en_int(high)} {'oh ' + _EN_ONES[low] if low < 10 else en_int(low)}"


# --- units, money ---------------------------------------------------------------------------

# symbol -> (Chinese, English singular, English plural)
UNITS: dict[str, tuple[str, str, str]] = {
    "km/h": ("公里每小时", "kilometer per hour", "kilometers per hour"),
    "m/s": ("米每秒", "meter per second", "meters per second"),
    "km²": ("平方公里", "square kilometer", "square kilometers"),
    "m²": ("平方米", "square meter", "square meters"),
    "cm²": ("平方厘米", "square centimeter", "square centimeters"),
    "m³": ("立方米", "cubic meter", "cubic meters"),
    "km": ("公里", "kilometer", "kilometers"),
    "cm": ("厘米", "centimeter", "centimeters"),
    "mm": ("毫米", "millimeter", "millimeters"),
    "kg": ("公斤", "kilogram", "kilograms"),
    "mg": ("毫克", "milligram", "milligrams"),
    "ml": ("毫升", "milliliter", "milliliters"),
    "mL": ("毫升", "milliliter", "milliliters"),
    "kWh": ("千瓦时", "kilowatt hour", "kilowatt hours"),
    "kW": ("千瓦", "kilowatt", "kilowatts"),
    "GHz": ("吉赫兹", "gigahertz", "gigahertz"),
    "MHz": ("兆赫兹", "megahertz", "megahertz"),
    "kHz": ("千赫兹", "kilohertz", "kilohertz"),
    "Hz": ("赫兹", "hertz", "hertz"),
    "TB": ("TB", "terabyte", "terabytes"),
    "GB": ("GB", "gigabyte", "gigabytes"),
    "MB": ("MB", "megabyte", "megabytes"),
    "KB": ("KB", "kilobyte", "kilobytes"),
    "ms": ("毫秒", "millisecond", "milliseconds"),
    "min": ("分钟", "minute", "minutes"),
    "℃": ("摄氏度", "degree Celsius", "degrees Celsius"),
    "°C": ("摄氏度", "degree Celsius", "degrees Celsius"),
    "℉": ("华氏度", "degree Fahrenheit", "degrees Fahrenheit"),
    "°F": ("华氏度", "degree Fahrenheit", "degrees Fahrenheit"),
    "°": ("度", "degree", "degrees"),
    "g": ("克", "gram", "grams"),
    "m": ("米", "meter", "meters"),
    "L": ("升", "liter", "liters"),
    "h": ("小时", "hour", "hours"),
    "s": ("秒", "second", "seconds"),
    "W": ("瓦", "watt", "watts"),
    "V": ("伏", "volt", "volts"),
}

# prefix symbol -> (Chinese, English singular, English plural, English minor unit singular/plural)
CURRENCIES: dict[str, tuple[str, str, str, str, str]] = {
    "$": ("美元", "dollar", "dollars", "cent", "cents"),
    "US$": ("美元", "dollar", "dollars", "cent", "cents"),
    "¥": ("元", "yuan", "yuan", "fen", "fen"),
    "￥": ("元", "yuan", "yuan", "fen", "fen"),
    "€": ("欧元", "euro", "euros", "cent", "cents"),
    "£": ("英镑", "pound", "pounds", "penny", "pence"),
    "HK$": ("港币", "Hong Kong dollar", "Hong Kong dollars", "cent", "cents"),
}
_SCALE_WORDS = {"万": ("万", None), "亿": ("亿", None), "k": ("千", "thousand"), "K": ("千", "thousand"),
                "million": ("百万", "million"), "billion": ("十亿", "billion"), "trillion": ("万亿", "trillion"),
                "M": ("百万", "million"), "B": ("十亿", "billion")}

# Chinese measure words after which a lone 2 is read 两.
_ZH_MEASURE = set("个位只条张本件次天年岁名项家台辆部块把双对份杯碗瓶斤里米克吨分秒周层页步种样门节所座棵头匹场篇首句点倍届期集章间")

_MONTHS = ("January February March April May June July August September October November "
           "December").split()

# --- language of a spot ---------------------------------------------------------------------

_HAN_RE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def _is_han(ch: str) -> bool:
    return bool(_HAN_RE.match(ch))


def _is_latin(ch: str) -> bool:
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z")


_ACRONYM = re.compile(r"[A-Z]{1,4}")


def _latin_word(text: str, pos: int) -> str:
    start = end = pos
    while start > 0 and _is_latin(text[start - 1]):
        start -= 1
    while end < len(text) and _is_latin(text[end]):
        end += 1
    return text[start:end]


def _lang_at(text: str, start: int, end: int, default: str) -> str:
    """Language of the nearest letter to the span [start, end); the left side wins a tie.

    A short capitalised acronym (4G, 5GB, AT&T) does not make a number English when Chinese
    follows close by: "4G网络" is read 四G.
    """
    left = start - 1
    right = end
    fallback = None
    steps = 0
    while left >= 0 or right < len(text):
        for pos in (left, right):
            if 0 <= pos < len(text):
                ch = text[pos]
                if _is_han(ch):
                    return "zh"
                if _is_latin(ch):
                    if not _ACRONYM.fullmatch(_latin_word(text, pos)):
                        return "en"
                    fallback = fallback or "en"
        left -= 1
        right += 1
        steps += 1
        if fallback and steps > 8:
            break
    return fallback or default


# --- rules ----------------------------------------------------------------------------------

Rule = tuple[re.Pattern, Callable[[re.Match, str], str]]
_NUM = r"\d+(?:\.\d+)?"
_SIGNED = r"[-−]?\d+(?:\.\d+)?"


def _date_ymd(m: re.Match, lang: str) -> str:
    y, mo, d = m.group("y"), int(m.group("mo")), int(m.group("d"))
    if not (1 <= mo <= 12 and 1 <= d <= 31):
        return m.group(0)
    if lang == "zh":
        return f"{zh_digits(y)}年{zh_int(mo).replace('两', '二')}月{zh_int(d).replace('两', '二')}日"
    return f"{_MONTHS[mo - 1]} {en_ordinal(d)}, {en_year(int(y))}"


def _en_year(m: re.Match, lang: str) -> str:
    if lang != "en":
        return m.group(0)
    return m.group(1) + en_year(int(m.group(2)))


def _time(m: re.Match, lang: str) -> str:
    groups = m.groupdict()
    h, mi, s = int(groups["h"]), int(groups.get("mi") or 0), groups.get("s")
    ampm = (m.group("ampm") or "").lower().replace(".", "").replace(" ", "")
    if lang == "zh":
        prefix = {"am": "上午", "pm": "下午"}.get(ampm, "")
        out = prefix + ("两" if h == 2 else zh_int(h)) + "点"
        if mi or s:
            out += ("零" if mi < 10 else "") + zh_int(mi) + "分"
        if s:
            out += zh_int(int(s)) + "秒"
        return out
    out = en_int(h)
    if mi == 0 and not s:
        out += " o'clock" if not ampm else ""
    else:
        out += " " + (f"oh {_EN_ONES[mi]}" if mi < 10 else en_int(mi))
        if s:
            out += f" and {en_int(int(s))} second{'s' if int(s) != 1 else ''}"
    if ampm:
        out += " " + " ".join(ampm)
        rest = m.string[m.end():]
        if m.group("ampm").endswith(".") and (not rest.strip() or re.match(r"\s+[A-Z]", rest)):
            out += "."            # "8 p.m." ending a sentence keeps its full stop
    return out


def _phone_cn_mobile(m: re.Match, lang: str) -> str:
    d = m.group(0)
    if lang == "zh":
        return zh_digits(d, one="幺")
    return ", ".join(en_digits(part) for part in (d[:3], d[3:7], d[7:]))


def _phone_groups(m: re.Match, lang: str) -> str:
    plus = m.group("cc")
    groups = [g for g in re.split(r"[^\d]+", m.group("num")) if g]
    if lang == "zh":
        out = "，".join(zh_digits(g, one="幺") for g in groups)
        return (f"加{zh_digits(plus)}，" if plus else "") + out
    out = ", ".join(en_digits(g) for g in groups)
    return (f"plus {en_digits(plus)}, " if plus else "") + out


def _money(m: re.Match, lang: str) -> str:
    zh, one, many, minor_one, minor_many = CURRENCIES[m.group("cur")]
    amount = m.group("amt").replace(",", "")
    scale = m.group("scale")
    sign = m.group("sign") or ""
    if lang == "zh":
        spoken = zh_number(amount)
        if scale:
            spoken += _SCALE_WORDS[scale][0]
        return ("负" if sign else "") + spoken + zh
    prefix = "minus " if sign else ""
    if scale:
        return f"{prefix}{en_number(amount)} {_SCALE_WORDS[scale][1] or scale} {many}"
    whole, _, frac = amount.partition(".")
    units = int(whole or "0")
    cents = int((frac + "00")[:2]) if frac else 0
    if frac and len(frac) > 2:
        return f"{prefix}{en_number(amount)} {many}"
    parts = []
    if units or not cents:
        parts.append(f"{en_int(units)} {one if units == 1 else many}")
    if cents:
        parts.append(f"{en_int(cents)} {minor_one if cents == 1 else minor_many}")
    return prefix + " and ".join(parts)


def _percent(m: re.Match, lang: str) -> str:
    value = m.group(1)
    per_mille = m.group(2) == "‰"
    negative = value[:1] in "-−"
    value = value.lstrip("-−")
    if lang == "zh":
        return ("负" if negative else "") + ("千分之" if per_mille else "百分之") + zh_number(value)
    return ("minus " if negative else "") + en_number(value) + (" per mille" if per_mille else " percent")


def _unit(m: re.Match, lang: str) -> str:
    value, unit = m.group(1), m.group(2)
    zh, one, many = UNITS[unit]
    if lang == "zh":
        spoken = zh_number(value)
        if spoken == "二" and value == "2":
            spoken = "两"
        if value.startswith(("-", "−")) and unit in ("℃", "°C", "℉", "°F"):
            spoken = "零下" + zh_number(value[1:])
        return spoken + zh
    plural = value.lstrip("-−") != "1"
    return f"{en_number(value)} {many if plural else one}"


def _en_ordinal(m: re.Match, lang: str) -> str:
    return en_ordinal(int(m.group(1)))


def _fraction(m: re.Match, lang: str) -> str:
    num, den = int(m.group(1)), int(m.group(2))
    if den == 0:
        return m.group(0)
    if lang == "zh":
        return f"{zh_int(den).replace('两', '二')}分之{zh_int(num).replace('两', '二')}"
    if den == 2:
        name = "half" if num == 1 else "halves"
    elif den == 4:
        name = "quarter" if num == 1 else "quarters"
    else:
        name = en_ordinal(den) + ("" if num == 1 else "s")
    return f"{en_int(num)} {name}"


def _range(m: re.Match, lang: str) -> str:
    a, b = m.group(1), m.group(2)
    if lang == "zh":
        return f"{zh_number(a)}到{zh_number(b)}"
    return f"{en_number(a)} to {en_number(b)}"


def _ratio(m: re.Match, lang: str) -> str:
    a, b = m.group(1), m.group(2)
    if lang == "zh":
        return f"{zh_number(a)}比{zh_number(b)}"
    return f"{en_number(a)} to {en_number(b)}"


_MATH_ZH = {"+": "加", "=": "等于", "×": "乘", "*": "乘", "÷": "除以", "<": "小于", ">": "大于"}
_MATH_EN = {"+": "plus", "=": "equals", "×": "times", "*": "times", "÷": "divided by",
            "<": "is less than", ">": "is greater than"}


_MATH_PART = re.compile(r"\s*([+=×*÷<>])\s*")


def _math(m: re.Match, lang: str) -> str:
    """1+1=2 -> 一加一等于二 / one plus one equals two."""
    parts = _MATH_PART.split(m.group(0))
    out = []
    for index, part in enumerate(parts):
        if index % 2:
            out.append(_MATH_ZH[part] if lang == "zh" else f" {_MATH_EN[part]} ")
        else:
            out.append(zh_number(part) if lang == "zh" else en_number(part))
    return "".join(out)


def _dotted(m: re.Match, lang: str) -> str:
    """Version numbers and addresses: 1.2.3 -> 一点二点三 / one point two point three."""
    parts = m.group(0).split(".")
    if lang == "zh":
        return "点".join(zh_number(p) for p in parts)
    return " point ".join(en_number(p) for p in parts)


def _decade(m: re.Match, lang: str) -> str:
    """1990s -> nineteen nineties, 80s -> eighties; in Chinese 九十年代."""
    year = m.group(1)
    if lang == "zh":
        return (zh_digits(year[:2]) if len(year) == 4 else "") + zh_int(int(year[-2:])) + "年代"
    words = en_year(int(year)) if len(year) == 4 else en_int(int(year))
    head, sep, last = max(words.rpartition(" "), words.rpartition("-"), key=lambda t: len(t[0]))
    last = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return head + sep + last


def _month_day_year(m: re.Match, lang: str) -> str:
    return f"{m.group(1)} {en_ordinal(int(m.group(2)))}, {en_year(int(m.group(3)))}"


def _percent_range(m: re.Match, lang: str) -> str:
    a, b = m.group(1), m.group(2)
    if lang == "zh":
        return f"百分之{zh_number(a)}到百分之{zh_number(b)}"
    return f"{en_number(a)} to {en_number(b)} percent"


def _number(m: re.Match, lang: str) -> str:
    s = m.group(0)
    if lang == "zh":
        spoken = zh_number(s)
        after = m.string[m.end():m.end() + 1]
        if s == "2" and after in _ZH_MEASURE and m.string[m.start() - 1:m.start()] != "第":
            return "两"
        return spoken
    return en_number(s)


def _scaled(m: re.Match, lang: str) -> str:
    """1.5万 / 3亿 / 2 million: the scale word kept, the number read on its own."""
    value, scale = m.group(1), m.group(2)
    if lang == "zh":
        spoken = zh_number(value)
        if spoken == "二":
            spoken = "两"
        return spoken + _SCALE_WORDS.get(scale, (scale,))[0]
    return f"{en_number(value)} {scale}"


def _symbol(table: dict[str, tuple[str, str]]) -> Callable[[re.Match, str], str]:
    def replace(m: re.Match, lang: str) -> str:
        zh, en = table[m.group(0).strip()]
        return zh if lang == "zh" else f" {en} "
    return replace


_SYMBOLS = {"&": ("和", "and"), "@": ("艾特", "at"), "№": ("第", "number")}

_EN_ABBREVIATIONS = {"Mr.": "Mister", "Mrs.": "Missus", "Ms.": "Miz", "Dr.": "Doctor", "Prof.": "Professor",
                     "St.": "Saint", "vs.": "versus", "etc.": "et cetera", "e.g.": "for example",
                     "i.e.": "that is", "No.": "number", "approx.": "approximately"}


def _abbreviation(m: re.Match, lang: str) -> str:
    word = m.group(0)
    if word == "No." and not re.match(r"\s*\d", m.string[m.end():]):
        return word
    return _EN_ABBREVIATIONS[word]


def _unit_pattern() -> str:
    names = sorted(UNITS, key=len, reverse=True)
    return "|".join(re.escape(u) for u in names)


_CUR = "|".join(re.escape(c) for c in sorted(CURRENCIES, key=len, reverse=True))
_D = r"(?<![\d.])"          # not inside a longer number
_NEG = r"(?<![\dA-Za-z.])[-−]"   # a minus sign, not a hyphen (COVID-19) or a range (3-5)
_E = r"(?![\d])"

RULES: list[Rule] = [
    # 1,234,567 -> 1234567 (only well-formed thousands groups)
    (re.compile(r"(?<![\d,])\d{1,3}(?:,\d{3})+(?![\d,]\d)"), lambda m, lang: m.group(0).replace(",", "")),
    (re.compile(r"|".join(re.escape(a) for a in _EN_ABBREVIATIONS) + r"(?=\s|$)"), _abbreviation),
    (re.compile(_D + r"(?P<y>\d{4})[-/.](?P<mo>\d{1,2})[-/.](?P<d>\d{1,2})" + _E), _date_ymd),
    (re.compile(_D + r"(?P<y>\d{4})年(?P<mo>\d{1,2})月(?P<d>\d{1,2})[日号]"), _date_ymd),
    (re.compile(r"\b(" + "|".join(_MONTHS) + r")\s+(\d{1,2})(?:st|nd|rd|th)?,\s*(\d{4})\b"), _month_day_year),
    (re.compile(_D + r"(\d{4})(?=年(?!代|前|后|间|来|多|左右|以上|以下))"), lambda m, lang: zh_digits(m.group(1))),
    (re.compile(r"(?<![\d:])(?P<h>[01]?\d|2[0-3]):(?P<mi>[0-5]\d)(?::(?P<s>[0-5]\d))?(?![\d:])"
                r"(?:\s?(?P<ampm>[AaPp]\.?[Mm]\.?)(?![A-Za-z]))?"), _time),
    (re.compile(r"(?<![\d:.])(?P<h>1[0-2]|0?[1-9])\s?(?P<ampm>[AaPp]\.?[Mm]\.?)(?![A-Za-z])"), _time),
    (re.compile(r"(?<![\d+])1[3-9]\d{9}(?!\d)"), _phone_cn_mobile),
    (re.compile(r"(?:\+(?P<cc>\d{1,3})[\s-]?)?(?P<num>(?<![\d+])(?:(?:\(\d{2,4}\)\s?|\d{2,4}[-\s])\d{3,4}[-\s]\d{4}|0\d{2,3}-\d{7,8})(?![\d-]))"),
     _phone_groups),
    (re.compile(r"(?P<sign>[-−])?(?P<cur>" + _CUR + r")\s?(?P<amt>\d+(?:,\d{3})*(?:\.\d+)?)"
                r"(?:\s?(?P<scale>万|亿|million|billion|trillion|[kKMB])(?![A-Za-z]))?"), _money),
    (re.compile(_D + r"(\d+(?:\.\d+)?)\s?[%％]?\s?[-~～—–]\s?(\d+(?:\.\d+)?)\s?[%％]"), _percent_range),
    (re.compile(_D + r"((?:" + _NEG + r")?\d+(?:\.\d+)?)\s?([%％‰])"), _percent),
    (re.compile(r"(" + _NEG + r"\d+(?:\.\d+)?)\s?(℃|°C|℉|°F)"), _unit),
    (re.compile(r"(?<![\d.])((?:1[0-9]|20)?[0-9]0)s(?![A-Za-z])"), _decade),
    (re.compile(_D + r"(\d+(?:\.\d+)?)\s?(" + _unit_pattern() + r")(?![A-Za-z²³])"), _unit),
    (re.compile(_D + r"(\d+)(?:st|nd|rd|th)(?![A-Za-z])"), _en_ordinal),
    (re.compile(r"((?:\b(?:in|since|by|from|until|till|of|year|before|after|during|around|circa|"
                + "|".join(_MONTHS) + r")\s+)|(?:\b(?:In|Since|By|From|Until|Before|After|During)\s+))"
                r"(1[1-9]\d\d|20\d\d)(?![\d.,]\d)(?!\s?(?:%|[A-Za-z]))"), _en_year),
    (re.compile(_D + r"(\d+)/(\d+)" + _E + r"(?!/)"), _fraction),
    (re.compile(_D + r"(\d+(?:\.\d+)?)\s?[-~～—–]\s?(\d+(?:\.\d+)?)" + _E), _range),
    (re.compile(_D + r"(\d+)\s?:\s?(\d+)" + _E), _ratio),
    (re.compile(_D + r"\d+(?:\.\d+){2,}" + _E), _dotted),
    (re.compile(_D + _NUM + r"(?:\s?[+=×*÷<>]\s?" + _NUM + r")+" + _E), _math),
    (re.compile(_D + r"(\d+(?:\.\d+)?)\s?(万|亿|million|billion|trillion)(?![A-Za-z])"), _scaled),
    (re.compile(_NEG + r"\d+(?:\.\d+)?" + _E), _number),
    (re.compile(_D + r"\d+(?:\.\d+)?" + _E), _number),
    (re.compile(r"\d+"), _number),
    (re.compile(r"\s?[&@№]\s?"), _symbol(_SYMBOLS)),
]

_SPACES = re.compile(r"[ \t]{2,}")
_SPACE_BEFORE_PUNCT = re.compile(r" +(?=[,.!?;:，。！？；：])")


def normalize_text(text: str, default_lang: str = "zh") -> str:
    """Write numbers, dates, times, money, units and symbols out as words (zh, en, or mixed)."""
    if not any(ch.isdigit() or ch in "&@№%‰$¥￥€£℃℉°" or ch == "." for ch in text):
        return text
    for pattern, replace in RULES:
        text = pattern.sub(lambda m: _spaced(m, replace(m, _lang_at(m.string, m.start(), m.end(), default_lang))),
                           text)
    text = _SPACES.sub(" ", text)
    return _SPACE_BEFORE_PUNCT.sub("", text)


def _spaced(m: re.Match, spoken: str) -> str:
    """Keep English words apart from the letters or digits they were glued to ("5km" in English)."""
    if not spoken or not _is_latin(spoken.strip()[:1] or " "):
        return spoken
    before = m.string[m.start() - 1:m.start()]
    after = m.string[m.end():m.end() + 1]
    if before and (before.isalnum() or _is_han(before)) and not spoken.startswith(" "):
        spoken = " " + spoken
    if after and (after.isalnum() or _is_han(after)) and not spoken.endswith(" "):
        spoken += " "
    return spoken
