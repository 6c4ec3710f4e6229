"""Natural-language style instructions: the UI's presets (for both engines) and the parser the lite
engine reads them with.

Instructions are kept bare (no system prompt, no <|endofprompt|>). The neural engine does not parse
them: it wraps them into the form CosyVoice3 was trained on (engines/cosyvoice3/engine.py,
instruct_prompt_text). The lite engine needs to know what was asked for (faster, louder, happy,
Cantonese, ...) and what it could not understand: `parse_instruction`. Presets use the phrasings of
the official CosyVoice3 instruct list.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from cosyvoice.text.special_tokens import END_OF_PROMPT, SYSTEM_PROMPT

# (label shown in the UI, bare instruction) -- the UI dropdown
PRESETS: list[tuple[str, str]] = [
    ("粤语 / Cantonese", "请用广东话表达。"),
    ("四川话 / Sichuanese", "请用四川话表达。"),
    ("上海话 / Shanghainese", "请用上海话表达。"),
    ("东北话 / Northeastern Mandarin", "请用东北话表达。"),
    ("闽南话 / Hokkien", "请用闽南话表达。"),
    ("天津话 / Tianjin dialect", "请用天津话表达。"),
    ("大声 / Louder", "Please say a sentence as loudly as possible."),
    ("轻声 / Softer", "Please say a sentence in a very soft voice."),
    ("慢速 / Slower", "请用尽可能慢地语速说一句话。"),
    ("快速 / Faster", "请用尽可能快地语速说一句话。"),
    ("开心 / Happy", "请非常开心地说一句话。"),
    ("伤心 / Sad", "请非常伤心地说一句话。"),
    ("生气 / Angry", "请非常生气地说一句话。"),
    ("耳语 / Whisper", "请用耳语的方式轻声说一句话。"),
    ("小猪佩奇 / Peppa Pig style", "我想体验一下小猪佩奇风格，可以吗？"),
    ("机器人 / Robot", "你可以尝试用机器人的方式解答吗？"),
]


DIALECTS: dict[str, tuple[str, ...]] = {
    # canonical name -> ways of writing it (Chinese, English)
    "Cantonese": ("广东话", "廣東話", "粤语", "粵語", "粤话", "cantonese"),
    "Sichuanese": ("四川话", "川话", "sichuanese", "sichuan dialect"),
    "Shanghainese": ("上海话", "沪语", "shanghainese", "shanghai dialect"),
    "Northeastern Mandarin": ("东北话", "northeastern"),
    "Hokkien": ("闽南话", "闽南语", "台语", "hokkien", "minnan"),
    "Tianjin dialect": ("天津话", "tianjin"),
    "Gansu dialect": ("甘肃话", "gansu"),
    "Guizhou dialect": ("贵州话", "guizhou"),
    "Henan dialect": ("河南话", "henan"),
    "Hubei dialect": ("湖北话", "hubei"),
    "Hunan dialect": ("湖南话", "hunan"),
    "Jiangxi dialect": ("江西话", "jiangxi"),
    "Ningxia dialect": ("宁夏话", "ningxia"),
    "Shanxi dialect": ("山西话", "shanxi"),
    "Shaanxi dialect": ("陕西话", "shaanxi"),
    "Shandong dialect": ("山东话", "shandong"),
    "Yunnan dialect": ("云南话", "yunnan"),
}

# attribute -> patterns (checked on lower-cased text); order matters where phrases overlap
_PATTERNS: list[tuple[str, str]] = [
    ("less_expressive", r"没有感情|没感情|不带感情|面无表情|平淡|平静|单调|冷静|monoton\w*|flat(ly)?\b|"
                        r"calm(ly)?|emotionless|without emotion|neutral(ly)?"),
    ("more_expressive", r"富有感情|感情丰富|有感情|抑扬顿挫|生动|夸张|声情并茂|expressive(ly)?|lively|"
                        r"dramatic(ally)?|emotional(ly)?|animated"),
    ("happy", r"开心|高兴|快乐|愉快|欢快|兴奋|喜悦|欢乐|happ(y|ily)|cheerful(ly)?|joyful(ly)?|"
              r"excited(ly)?|glad(ly)?"),
    ("sad", r"伤心|难过|悲伤|沮丧|忧伤|哭腔|委屈|\bsad(ly)?\b|sorrowful(ly)?|upset|depressed|melanchol\w*|unhappy"),
    ("angry", r"生气|愤怒|恼火|气愤|发火|暴躁|angr(y|ily)|furious(ly)?|\bmad\b|rage"),
    ("whisper", r"耳语|悄悄话|悄悄|低语|气声|whisper\w*"),
    ("faster", r"(?<![愉痛凉])快(?!乐)|加速|语速加快|fast(er)?|quick(ly|er)?|speed up|rapid(ly)?|hurried(ly)?"),
    ("slower", r"慢|缓慢|slow(ly|er)?|unhurried"),
    ("louder", r"大声|响亮|洪亮|音量(大|高|加大|提高)|提高音量|loud(ly|er)?|shout\w*|yell\w*"),
    ("softer", r"轻声|小声|轻柔|柔和|温柔|音量(小|低|减小|降低)|降低音量|soft(ly|er)?|quiet(ly|er)?|gentl[ey]|"
               r"gently|hushed"),
    ("higher", r"音调(更)?高|声调(更)?高|(更)?高的?(音调|声调|嗓音)|高音调?|提高音调|尖细|higher(-| )?(pitch|voice|tone)?|"
               r"high(-| )pitched|raise the pitch"),
    ("lower", r"音调(更)?低|声调(更)?低|(更)?低的?(音调|声调|嗓音)|低音调?|降低音调|低沉|浑厚|lower(-| )?(pitch|voice|tone)?|"
              r"low(-| )pitched|deep(er)? voice|deeply"),
]
_STRONG = re.compile(r"尽可能|尽量|非常|特别|极其|极|十分|超级|very|extremely|as \w+ as possible|really|super")
_MILD = re.compile(r"稍微|稍稍|略微|一点|一些|有点|slightly|a (little )?bit|a little|somewhat")

# words that only carry the request itself ("please say it ...")
_FILLER_ZH = ("请你", "请", "你可以", "可以吗", "可以", "我想", "用", "以", "的方式", "方式", "的语气", "语气",
              "的语速", "语速", "的声音", "声音", "的语调", "语调", "说一句话", "说这句话", "一句话", "这句话",
              "说话", "表达", "朗读", "读", "说", "地", "的", "得", "更加", "更", "一点", "一些", "些", "很",
              "来", "吧", "呢", "啊", "并且", "并", "而且", "和", "且", "同时", "再", "要", "把", "它", "尝试",
              "试着", "帮我", "一下", "点")
_FILLER_EN = {"please", "say", "speak", "read", "talk", "a", "an", "the", "sentence", "this", "that", "it",
              "in", "with", "voice", "tone", "as", "possible", "more", "bit", "little", "and", "way", "manner",
              "style", "of", "to", "me", "you", "can", "could", "would", "try", "be", "is", "words", "text",
              "like", "using", "use", "rather", "sound", "sounding", "make", "pitch", "speed", "volume",
              "also", "but", "while", "very", "extremely", "really", "slightly", "somewhat", "quite", "so",
              "your", "my", "them", "these", "lines", "line", "please,", "tell", "bit,"}


@dataclass(frozen=True)
class Instruction:
    """What an instruction asks for, as multipliers the lite engine can apply directly."""
    text: str                                   # the instruction without the model's wrapper
    speed: float = 1.0
    volume: float = 1.0                         # amplitude factor
    pitch: float = 1.0                          # F0 factor
    expressiveness: float = 1.0                 # F0 spread factor
    emotion: str | None = None                  # "happy", "sad", "angry"
    whisper: bool = False
    dialect: str | None = None                  # canonical name, e.g. "Cantonese", "Sichuanese"
    dialect_as_written: str | None = None       # e.g. "四川话"
    recognised: tuple[str, ...] = ()            # attribute names understood, in order
    unrecognised: tuple[str, ...] = field(default=())   # parts of the text nobody understood


# A user may paste an instruction in the model's own form: "<system prompt> ...<|endofprompt|>".
_SYSTEM_PROMPT_AT_START = re.compile(r"^\s*" + re.escape(SYSTEM_PROMPT.rstrip(".")) + r"\.?", flags=re.I)


def _strip_wrapper(text: str) -> str:
    """Remove the model's system prompt and end-of-prompt token, if present."""
    return _SYSTEM_PROMPT_AT_START.sub("", text.replace(END_OF_PROMPT, " ").strip()).strip()


def _clauses(text: str) -> list[str]:
    parts = re.split(r"[，,。.;；！!？?\n]+|\band\b|\bbut\b|并且|而且|同时", text)
    return [p.strip() for p in parts if p and p.strip()]


def _residue(clause: str, spans: list[tuple[int, int]]) -> str:
    """What is left of a clause once understood phrases, intensity words and filler are removed."""
    kept = "".join(ch if not any(a <= i < b for a, b in spans) else " " for i, ch in enumerate(clause))
    kept = _STRONG.sub(" ", kept)
    kept = _MILD.sub(" ", kept)
    for word in sorted(_FILLER_ZH, key=len, reverse=True):
        kept = kept.replace(word, " ")
    words = [w for w in re.findall(r"[a-z']+|[\u4e00-\u9fff]+", kept) if w not in _FILLER_EN]
    han = "".join(w for w in words if re.match(r"[\u4e00-\u9fff]", w))
    latin = [w for w in words if w.isascii() and len(w) > 2]
    if len(han) >= 2 or latin:
        return " ".join([han] + latin).strip()
    return ""


# attribute name -> (Instruction field it scales, step per unit of strength, +1 up / -1 down)
_SCALINGS: dict[str, tuple[str, float, int]] = {
    "faster": ("speed", 0.3, 1), "slower": ("speed", 0.3, -1),
    "louder": ("volume", 0.6, 1), "softer": ("volume", 0.6, -1),
    "higher": ("pitch", 0.12, 1), "lower": ("pitch", 0.12, -1),
    "more_expressive": ("expressiveness", 0.4, 1), "less_expressive": ("expressiveness", 0.6, -1),
}


def parse_instruction(text: str) -> Instruction:
    """Recognise style attributes in a Chinese or English instruction; keep what is not understood."""
    body = _strip_wrapper(text or "")
    scales = {"speed": 1.0, "volume": 1.0, "pitch": 1.0, "expressiveness": 1.0}
    emotion: str | None = None
    whisper = False
    dialect = written = None
    recognised: list[str] = []
    unrecognised: list[str] = []

    for clause in _clauses(body):
        low = clause.lower()
        strength = 2.0 if _STRONG.search(low) else 0.5 if _MILD.search(low) else 1.0
        spans: list[tuple[int, int]] = []
        for name, forms in DIALECTS.items():
            for form in forms:
                at = low.find(form)
                if at >= 0:
                    dialect, written = name, clause[at:at + len(form)]
                    spans.append((at, at + len(form)))
                    recognised.append("dialect")
                    break
        generic = re.search(r"(?:用|讲|说)([\u4e00-\u9fff]{2,3}?(?:话|方言))", clause)
        if dialect is None and generic and not re.search("[句说]", generic.group(1)):
            dialect = written = generic.group(1)
            spans.append(generic.span(1))
            recognised.append("dialect")
        for name, pattern in _PATTERNS:
            for m in re.finditer(pattern, low):
                if any(a < m.end() and m.start() < b for a, b in spans):
                    continue
                spans.append(m.span())
                recognised.append(name)
                if name in _SCALINGS:
                    attribute, step, direction = _SCALINGS[name]
                    factor = 1.0 + step * strength
                    scales[attribute] = scales[attribute] * factor if direction > 0 else scales[attribute] / factor
                elif name in ("happy", "sad", "angry"):
                    emotion = name
                elif name == "whisper":
                    whisper = True
                break          # one match per attribute per clause
        leftover = _residue(low, spans)
        if leftover:
            unrecognised.append(clause)

    return Instruction(text=body, **scales, emotion=emotion, whisper=whisper, dialect=dialect, dialect_as_written=written,
                       recognised=tuple(dict.fromkeys(recognised)), unrecognised=tuple(unrecognised))
