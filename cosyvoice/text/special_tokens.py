"""The CosyVoice3 tokenizer's added special tokens, in the order that fixes their ids.

The Qwen2 vocabulary ends at 151642; <|endoftext|>, <|im_start|>, <|im_end|> are 151643-151645
(from tokenizer_config.json) and every token below gets the next id in list order, from 151646.
These are also exactly the bracket tokens the text frontend accepts as markup.
"""
from __future__ import annotations

BASE_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
FIRST_ADDED_ID = 151646

# CosyVoice3's prompt convention: a system part, then END_OF_PROMPT, then what is to be spoken.
# The released model was trained with SYSTEM_PROMPT (plus an instruction in instruct mode) as that part.
END_OF_PROMPT = "<|endofprompt|>"
SYSTEM_PROMPT = "You are a helpful assistant."

# Control tokens and paralinguistic tags.
TAG_TOKENS = (END_OF_PROMPT,) + tuple("""
    [breath] <strong> </strong> [noise] [laughter] [cough] [clucking] [accent]
    [quick_breath] <laughter> </laughter> [hissing] [sigh] [vocalized-noise] [lipsmack] [mn]
    <|endofsystem|>
""".split())

# CMU (ARPAbet) phones; vowels come bare and with stress digits 0-2.
CMU_PHONES = tuple("""
    AA AA0 AA1 AA2 AE AE0 AE1 AE2 AH AH0 AH1 AH2 AO AO0 AO1 AO2 AW AW0 AW1 AW2 AY AY0 AY1 AY2 B
    CH D DH EH EH0 EH1 EH2 ER ER0 ER1 ER2 EY EY0 EY1 EY2 F G HH IH IH0 IH1 IH2 IY IY0 IY1 IY2
    JH K L M N NG OW OW0 OW1 OW2 OY OY0 OY1 OY2 P R S SH T TH UH UH0 UH1 UH2 UW UW0 UW1 UW2 V W
    Y Z ZH
""".split())

# Pinyin pieces: initials and tone-marked finals (the set has gaps; see text.markup).
PINYIN_PIECES = tuple("""
    a ai an ang ao b c ch d e ei en eng f g h i ian in ing iu ià iàn iàng iào iá ián iáng iáo
    iè ié iòng ióng iù iú iā iān iāng iāo iē iě iōng iū iǎ iǎn iǎng iǎo iǒng iǔ j k l m n o ong
    ou p q r s sh t u uang ue un uo uà uài uàn uàng uá uái uán uáng uè ué uì uí uò uó uā uāi
    uān uāng uē uě uī uō uǎ uǎi uǎn uǎng uǐ uǒ vè w x y z zh à ài àn àng ào á ái án áng áo è èi
    èn èng èr é éi én éng ér ì ìn ìng í ín íng ò òng òu ó óng óu ù ùn ú ún ā āi ān āng āo ē ēi
    ēn ēng ě ěi ěn ěng ěr ī īn īng ō ōng ōu ū ūn ǎ ǎi ǎn ǎng ǎo ǐ ǐn ǐng ǒ ǒng ǒu ǔ ǔn ǘ ǚ ǜ
""".split())

ADDED_SPECIAL_TOKENS: tuple[str, ...] = (
    TAG_TOKENS + tuple(f"[{p}]" for p in CMU_PHONES) + tuple(f"[{p}]" for p in PINYIN_PIECES)
)

SPECIAL_TOKEN_IDS: dict[str, int] = {
    **{tok: 151643 + i for i, tok in enumerate(BASE_SPECIAL_TOKENS)},
    **{tok: FIRST_ADDED_ID + i for i, tok in enumerate(ADDED_SPECIAL_TOKENS)},
}
