"""Tokenizer parity: every case of cases/tokenizer_cases.json, ids and decoded text exactly."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from cosyvoice.engines.cosyvoice3.model_dir import QWEN_DIR
from cosyvoice.engines.cosyvoice3.tokenizer import CosyVoice3Tokenizer
from cosyvoice.parity import CaseResult, exact


def run(model_dir: Path, audio_dir: Path | None = None) -> Iterator[CaseResult]:
    fixture = json.loads((Path(model_dir) / "cases" / "tokenizer_cases.json").read_text(encoding="utf-8"))
    tokenizer = CosyVoice3Tokenizer(Path(model_dir) / QWEN_DIR)

    expected_ids = fixture["special_token_ids"]
    ours = {token: tokenizer.special_token_ids.get(token) for token in expected_ids}
    wrong = [t for t in expected_ids if ours[t] != expected_ids[t]]
    extra = sorted(set(tokenizer.special_token_ids) - set(expected_ids))
    note = (f"{len(wrong)} ids differ, first {wrong[0]!r}: {ours[wrong[0]]} != {expected_ids[wrong[0]]}" if wrong
            else f"tokens not in the fixture: {extra[:3]}" if extra else "")
    ok = not wrong and not extra
    yield CaseResult("tokenizer.special_token_ids", 0.0 if ok else 1.0, 0.0, ok, note)

    for index, case in enumerate(fixture["cases"]):
        name = f"tokenizer.case{index:02d}"
        yield exact(f"{name}.ids", tokenizer.encode(case["text"]), case["ids"])
        decoded = tokenizer.decode(case["ids"], skip_special_tokens=True)
        same = decoded == case["decoded_skip_special"]
        yield CaseResult(f"{name}.decoded", 0.0 if same else 1.0, 0.0, same,
                         "" if same else f"{decoded!r} != {case['decoded_skip_special']!r}")
