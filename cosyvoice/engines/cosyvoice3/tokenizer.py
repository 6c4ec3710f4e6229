"""CosyVoice3 text tokenizer: Qwen2 byte-level BPE plus CosyVoice3's special tokens.

Built with the `tokenizers` library so transformers is not needed; it is set up the way
transformers builds Qwen2TokenizerFast from vocab.json + merges.txt, so ids match the official
frontend exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from cosyvoice.engines.cosyvoice3.config import read_json_object
from cosyvoice.errors import ModelDirError
from cosyvoice.text.special_tokens import ADDED_SPECIAL_TOKENS, SPECIAL_TOKEN_IDS

# Qwen2's pre-tokenization: contractions, letter runs (with one leading non-letter), single digits,
# punctuation runs, newlines, and whitespace that does not swallow the space before a word.
QWEN2_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


class CosyVoice3Tokenizer:
    def __init__(self, token_dir: str | Path):
        self.token_dir = Path(token_dir)
        tokenizer_json = self.token_dir / "tokenizer.json"
        if tokenizer_json.is_file():
            try:
                self._tok = Tokenizer.from_file(str(tokenizer_json))
            except Exception as err:  # tokenizers raises a bare Exception on bad json
                raise ModelDirError(f"{self._name('tokenizer.json')}: cannot be loaded ({err})") from err
        else:
            self._tok = self._from_vocab_and_merges()

        specials = self._base_specials() + [t for t in ADDED_SPECIAL_TOKENS]
        # Specials are cut out of the raw text before NFC and BPE, and keep their neighbours' spaces.
        self._tok.add_special_tokens([
            AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
            for t in specials
        ])
        # None where the vocabulary lacks a token; the check below refuses such a model dir.
        self.special_token_ids: dict[str, int | None] = {t: self._tok.token_to_id(t) for t in specials}
        for token, expected in SPECIAL_TOKEN_IDS.items():
            got = self.special_token_ids.get(token)
            if got != expected:
                raise ModelDirError(
                    f"{self._name('vocab.json')}: special token {token!r} would get id {got}, expected "
                    f"{expected}; the vocabulary does not have the Qwen2 layout the CosyVoice3 LLM needs")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    @property
    def backend(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (specials included), e.g. to save a tokenizer.json."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def _name(self, file: str) -> str:
        return f"{self.token_dir.name}/{file}"

    def _from_vocab_and_merges(self) -> Tokenizer:
        vocab_path, merges_path = self.token_dir / "vocab.json", self.token_dir / "merges.txt"
        vocab = read_json_object(vocab_path)
        if not merges_path.is_file():
            raise ModelDirError(f"{self._name(merges_path.name)}: not found in {self.token_dir.parent}")

        # Same reading rules as transformers' Qwen2Tokenizer: strip each line, skip blanks and the
        # "#version" header; a later duplicate of a pair keeps the first rank.
        merges: list[tuple[str, str]] = []
        seen: set[tuple[str, str]] = set()
        with merges_path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines):
                line = line.strip()
                if not line or (number == 0 and line.startswith("#version:")):
                    continue
                pair = tuple(line.split())
                if len(pair) != 2:
                    raise ModelDirError(f"{self._name('merges.txt')}: line {number + 1} is not a pair: {line!r}")
                if pair not in seen:
                    seen.add(pair)
                    merges.append(pair)
        try:
            model = BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                        end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
        except Exception as err:
            raise ModelDirError(f"{self._name('merges.txt')}: does not fit vocab.json ({err})") from err

        tok = Tokenizer(model)
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        return tok

    def _base_specials(self) -> list[str]:
        """<|endoftext|>, <|im_start|>, <|im_end|> in id order, as tokenizer_config.json lists them."""
        path = self.token_dir / "tokenizer_config.json"
        if not path.is_file():
            raise ModelDirError(f"{self._name(path.name)}: not found in {self.token_dir.parent}")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
            decoder = config.get("added_tokens_decoder", {})
            by_id = sorted((int(i), entry["content"]) for i, entry in decoder.items())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError,
                ValueError) as err:
            raise ModelDirError(f"{self._name(path.name)}: cannot read added_tokens_decoder ({err})") from err
        return [content for _, content in by_id]
