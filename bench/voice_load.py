"""Saved voice vs. upload: the voice stage's cost when features are loaded from the library instead of
extracted from the recording, as a same-run ratio.

    python bench/voice_load.py [--engine cosyvoice3|lite] [--repeats 5] [--json OUT]

cosyvoice3 runs on the tiny fixture (its onnx stand-ins from tests/tiny_onnx.py): the extraction
there is the real feature pipeline (resampling, whisper mel, speech tokenizer, fbank, campplus,
prompt mel) on the real 3.5 s prompt, so the ratio is what a saved voice saves per first use.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SHARED = ROOT.parent / "shared"
FIXTURE = SHARED / "fixtures" / "cosyvoice3-tiny"
PROMPT_WAV = SHARED / "audio" / "zero_shot_prompt.wav"
PROMPT_TEXT = "希望你以后能够做的比我还好呦。"


def make_engine(name: str, work: Path):
    if name == "lite":
        from cosyvoice.engines.lite import LiteEngine

        return LiteEngine()
    import torch

    from cosyvoice.engines.cosyvoice3 import CosyVoice3Engine
    from tiny_onnx import make_tiny_model_dir

    torch.set_num_threads(2)
    return CosyVoice3Engine(make_tiny_model_dir(FIXTURE, work / "model"), device="cpu", precision="fp32")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("cosyvoice3", "lite"), default="cosyvoice3")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from cosyvoice.audio.prompt import load_prompt_audio
    from cosyvoice.voices.library import VoiceLibrary

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        engine = make_engine(args.engine, work)
        engine.prepare_voice(load_prompt_audio(PROMPT_WAV).audio, None)      # lazy set-up out of the timing
        library = VoiceLibrary(work / "voices")
        entry = library.add("bench", PROMPT_WAV, PROMPT_TEXT, engine=engine)
        extract, load = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            engine.prepare_voice(load_prompt_audio(PROMPT_WAV).audio, None)   # what an upload's voice stage does
            extract.append(time.perf_counter() - started)
            started = time.perf_counter()
            _, notice = library.load_voice(library.resolve("bench"), engine, None)  # what a saved voice's stage does
            load.append(time.perf_counter() - started)
            assert notice is None, notice
    result = {"engine": args.engine, "repeats": args.repeats, "voice_id": entry.id,
              "extract_s_median": statistics.median(extract), "load_s_median": statistics.median(load)}
    result["load_over_extract"] = result["load_s_median"] / result["extract_s_median"]
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
