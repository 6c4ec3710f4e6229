"""How many lite-engine outputs clip before mastering (the engine's own samples) and after (what the
service saves): peak, full-scale runs, true peak, loudness, and decoded peaks of mp3/aac/opus.

    .venv/bin/python bench/clipping.py            # prints a table and the before/after counts
"""
from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cosyvoice.audio.prompt import load_prompt_audio  # noqa: E402
from cosyvoice.audio.encode import encode  # noqa: E402
from cosyvoice.engines.base import Style  # noqa: E402
from cosyvoice.engines.lite import LiteEngine  # noqa: E402
from cosyvoice.audio.mastering import integrated_loudness  # noqa: E402
from cosyvoice.service.synthesis import ServiceConfig, SynthesisRequest, SynthesisService  # noqa: E402

AUDIO = ROOT.parent / "shared" / "audio"
TEXTS = ["今天天气很好。", "啊！快跑！！着火了！！！", "Stop right there! WATCH OUT!", "你好。",
         "收到！马上出发，大家注意安全！", "Hello, this is a very loud announcement!"]
PROMPTS = {"zero_shot_prompt.wav": "希望你以后能够做的比我还好呦。"}


def full_scale_runs(samples: np.ndarray, threshold: float = 0.999, run: int = 2) -> int:
    """Runs of `run` or more consecutive samples at or above `threshold` (what a listener hears as clipping)."""
    hot = np.abs(samples) >= threshold
    edges = np.diff(np.concatenate([[0], hot.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int(np.sum(ends - starts >= run))


def decoded_peak_db(samples: np.ndarray, rate: int, fmt: str) -> float:
    import av

    with av.open(io.BytesIO(encode(samples, rate, fmt))) as container:
        data = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    return float(20 * np.log10(np.abs(data).max() + 1e-12))


def figures(samples: np.ndarray, rate: int) -> dict:
    peak = float(np.abs(samples).max())
    return {"peak_db": 20 * np.log10(peak + 1e-12), "true_peak_db": 20 * np.log10(np.abs(resample_poly(samples, 4, 1)).max()),
            "runs": full_scale_runs(samples), "over": int(np.sum(np.abs(samples) >= 0.999)),
            "lufs": integrated_loudness(samples, rate)}


def main() -> None:
    engine = LiteEngine(sample_rate=24000)
    rate = engine.sample_rate
    before_clipped = after_clipped = total = 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        service = SynthesisService(engine, ServiceConfig(outputs_dir=Path(tmp)))
        for prompt, transcript in PROMPTS.items():
            voice = engine.prepare_voice(load_prompt_audio(AUDIO / prompt).audio, transcript)
            for text in TEXTS:
                for seed in (1, 2, 3):
                    raw = np.concatenate(list(engine.synthesize(text, voice, Style(mode="zero_shot"), seed,
                                                                lambda p: None)))
                    result = service.synthesize(SynthesisRequest(text=text, prompt_wav=str(AUDIO / prompt),
                                                                 prompt_text=transcript, seed=seed))
                    saved, _ = sf.read(result.path, dtype="float32")
                    b, a = figures(raw, rate), figures(saved, rate)
                    lossy = {fmt: decoded_peak_db(saved, rate, fmt) for fmt in ("mp3", "aac", "opus")}
                    total += 1
                    rows.append((b, a, lossy))
                    before_clipped += b["over"] > 0
                    after_clipped += a["over"] > 0
                    print(f"{text[:18]:20s} seed {seed}: before peak {b['peak_db']:+6.2f} dBFS "
                          f"(true {b['true_peak_db']:+6.2f}) runs {b['runs']:3d}, {b['lufs']:6.1f} LUFS | after "
                          f"peak {a['peak_db']:+6.2f} (true {a['true_peak_db']:+6.2f}) runs {a['runs']}, "
                          f"{a['lufs']:6.1f} LUFS | decoded " +
                          " ".join(f"{k} {v:+5.2f}" for k, v in lossy.items()))
    print(f"outputs with samples at full scale (|x| >= 0.999): before {before_clipped} of {total}, "
          f"after {after_clipped} of {total}")
    print(f"full-scale runs (>= 2 samples): before {sum(b['runs'] for b, _, _ in rows)}, "
          f"after {sum(a['runs'] for _, a, _ in rows)}")
    print(f"highest sample peak after {max(a['peak_db'] for _, a, _ in rows):+.2f} dBFS, true peak "
          f"{max(a['true_peak_db'] for _, a, _ in rows):+.2f} (before {max(b['true_peak_db'] for b, _, _ in rows):+.2f})")
    print("highest decoded peak: " + ", ".join(f"{fmt} {max(l[fmt] for _, _, l in rows):+.2f} dBFS"
                                               for fmt in ("mp3", "aac", "opus")))
    print(f"loudness change by the limiter: at most "
          f"{max(b['lufs'] - a['lufs'] for b, a, _ in rows):.1f} LU")


if __name__ == "__main__":
    main()
