"""How close does the lite engine get to a prompt voice, and what does it cost?

    python bench/lite_quality.py [--audio ../shared/audio] [--quick]

For every prompt recording: speaker similarity (resemblyzer) as a margin -- similarity to its own
prompt minus the mean similarity to the other prompts -- for plain espeak and for matched output;
median-F0 error against the prompt; English word error rate with pocketsphinx for plain and
matched speech; real-time factor on one thread for a ~10 s utterance with the voice cached.

Bench-only dependencies: resemblyzer, pocketsphinx (pip install resemblyzer pocketsphinx).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosyvoice.engines.base import PromptAudio, Style  # noqa: E402
from cosyvoice.engines.lite import LiteEngine  # noqa: E402
from cosyvoice.engines.lite import matching  # noqa: E402

ZH_SENTENCES = [
    "今天天气很好，我们一起去公园散步吧。",
    "这本书讲述了一个普通人在大城市里奋斗的故事。",
    "请在下一个路口向左转，然后直走大约五百米。",
    "他每天早上六点起床，先跑步，再吃早饭。",
]
EN_SENTENCES = [
    "The weather is nice today, so we will walk in the park.",
    "Please turn left at the next corner and go straight ahead.",
    "She bought three apples and a loaf of bread at the market.",
    "My brother works at a small hospital near the river.",
]
RTF_TEXT = ("今天天气很好，我们一起去公园散步吧。这本书讲述了一个普通人在大城市里奋斗的故事。"
            "请在下一个路口向左转，然后直走大约五百米。")


def load_prompt(path: Path) -> PromptAudio:
    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    samples = samples.mean(axis=1)
    return PromptAudio(samples, rate, hashlib.sha1(samples.tobytes()).hexdigest())


def median_f0(samples: np.ndarray, rate: int) -> float:
    x = matching.to_rate(samples, rate, matching.WORLD_RATE)
    return matching.voice_stats(x).median_f0


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref = re.findall(r"[a-z']+", reference.lower())
    hyp = re.findall(r"[a-z']+", hypothesis.lower())
    d = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, start=1):
        prev, d[0] = d.copy(), i
        for j, h in enumerate(hyp, start=1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r != h))
    return d[len(hyp)] / max(len(ref), 1)


class Recogniser:
    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=16000, loglevel="FATAL")

    def __call__(self, samples: np.ndarray, rate: int) -> str:
        x = matching.to_rate(samples, rate, 16000)
        pcm = (np.clip(x / max(np.abs(x).max(), 1e-6) * 0.7, -1, 1) * 32767).astype(np.int16)
        self.decoder.start_utt()
        self.decoder.process_raw(pcm.tobytes(), full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "audio")
    parser.add_argument("--quick", action="store_true", help="two sentences per language")
    parser.add_argument("--rtf-only", action="store_true", help="only the real-time factor")
    args = parser.parse_args()

    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    engine = LiteEngine(sample_rate=24000)
    prompts = sorted(args.audio.glob("*.wav"))
    if args.rtf_only:
        report_rtf(engine, load_prompt(prompts[0]))
        return
    from resemblyzer import VoiceEncoder, preprocess_wav

    zh, en = (ZH_SENTENCES[:2], EN_SENTENCES[:2]) if args.quick else (ZH_SENTENCES, EN_SENTENCES)
    rate = engine.sample_rate
    encoder = VoiceEncoder(device="cpu", verbose=False)
    recognise = Recogniser()
    plain_style = Style(mode="zero_shot")

    def embed(samples: np.ndarray, sr: int) -> np.ndarray:
        return encoder.embed_utterance(preprocess_wav(samples.astype(np.float32), source_sr=sr))

    def speak(text: str, voice) -> np.ndarray:
        return np.concatenate(list(engine.synthesize(text, voice, plain_style, 0, lambda p: None)))

    names = [p.stem for p in prompts]
    prompt_audio = {p.stem: load_prompt(p) for p in prompts}
    prompt_emb = {n: embed(a.samples, a.sample_rate) for n, a in prompt_audio.items()}

    # plain espeak: the same base voice whatever the prompt
    plain_zh = [engine.synthesize_plain(t) for t in zh]
    plain_en = [engine.synthesize_plain(t) for t in en]
    plain_emb = embed(np.concatenate(plain_zh + plain_en), rate)
    plain_wer = float(np.mean([word_error_rate(t, recognise(a, rate)) for t, a in zip(en, plain_en)]))

    rows = []
    for name in names:
        audio = prompt_audio[name]
        voice = engine.prepare_voice(audio, None)
        out_zh = [speak(t, voice) for t in zh]
        out_en = [speak(t, voice) for t in en]
        emb = embed(np.concatenate(out_zh + out_en), rate)
        others = [o for o in names if o != name]

        def margin(e: np.ndarray) -> float:
            own = float(e @ prompt_emb[name])
            return own - float(np.mean([e @ prompt_emb[o] for o in others]))

        f0_prompt = median_f0(audio.samples, audio.sample_rate)
        f0_out = median_f0(np.concatenate(out_zh + out_en), rate)
        wer = float(np.mean([word_error_rate(t, recognise(a, rate)) for t, a in zip(en, out_en)]))
        rows.append(dict(prompt=name, own=float(emb @ prompt_emb[name]), margin=margin(emb),
                         plain_margin=margin(plain_emb), f0_prompt=f0_prompt, f0_out=f0_out,
                         f0_err=abs(f0_out / f0_prompt - 1), wer=wer))

    print(f"{'prompt':24s} {'own sim':>8s} {'margin':>8s} {'plain margin':>13s} {'F0 prompt':>10s} "
          f"{'F0 out':>8s} {'F0 err':>7s} {'WER':>6s}")
    for r in rows:
        print(f"{r['prompt']:24s} {r['own']:8.3f} {r['margin']:+8.3f} {r['plain_margin']:+13.3f} "
              f"{r['f0_prompt']:10.1f} {r['f0_out']:8.1f} {r['f0_err']:7.1%} {r['wer']:6.2f}")
    mean_margin = np.mean([r["margin"] for r in rows])
    mean_plain = np.mean([r["plain_margin"] for r in rows])
    matched_wer = np.mean([r["wer"] for r in rows])
    print(f"mean margin: matched {mean_margin:+.3f}, plain espeak {mean_plain:+.3f}")
    print(f"English WER: plain espeak {plain_wer:.2f}, matched (mean over prompts) {matched_wer:.2f}")
    report_rtf(engine, prompt_audio[names[0]])


def report_rtf(engine: LiteEngine, prompt: PromptAudio) -> None:
    """Real-time factor on one thread with the voice analysis cached (wall clock and CPU time)."""
    voice = engine.prepare_voice(prompt, None)
    synth = lambda: np.concatenate(list(engine.synthesize(RTF_TEXT, voice, Style(mode="zero_shot"), 0,  # noqa: E731
                                                          lambda p: None)))
    synth()                                                  # warm-up: base-voice references
    wall, cpu = time.perf_counter(), time.process_time()
    y = synth()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    seconds = len(y) / engine.sample_rate
    print(f"RTF (1 thread, {seconds:.1f} s utterance, voice cached): wall {wall / seconds:.3f}, "
          f"CPU {cpu / seconds:.3f}")


if __name__ == "__main__":
    main()
