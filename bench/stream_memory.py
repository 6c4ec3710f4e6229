"""Where the memory of streamed CosyVoice3 requests goes, chunk by chunk (CPU).

    python bench/stream_memory.py MODEL_DIR [--streams 4] [--tokens 150] [--prompt-tokens 87]
                                  [--budget-gb 7.19] [--threads 2] [--json OUT]

Loads only the flow and HiFT of MODEL_DIR (fp32; the LLM is not needed: each stream is fed the same
fixed pseudo-random speech tokens), a synthetic voice (random prompt tokens, prompt mel and speaker
vector of --prompt-tokens tokens: the memory does not depend on their values), and runs --streams
`tts_stream` calls at once, each in its own thread. A sampler thread reads the RSS every 5 ms.
At every chunk it records, per stream: its mel frames, the bytes its flow caches really hold
(distinct key/value buffers, counted once even when shared), what the stream budget counts, and
the process's RSS and the highest RSS since the previous record. The baseline is the RSS with the
models loaded and the voice prefix made. Each stream's audio is hashed (sha256 of the float32
samples), so two versions of the engine can be checked for the same audio to the bit.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cosyvoice.engines.cosyvoice3.config import ModelConfig  # noqa: E402
from cosyvoice.engines.cosyvoice3.flow import FlowStream, load_flow  # noqa: E402
from cosyvoice.engines.cosyvoice3.hift import load_hift  # noqa: E402
from cosyvoice.engines.cosyvoice3.model import CosyVoice3Model, SynthesisInputs  # noqa: E402
from cosyvoice.engines.cosyvoice3.noise import constructor_noise  # noqa: E402

GIB = 2 ** 30


class Peak:
    """RSS high-water mark between reads, from a 5 ms sampler thread."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.high = self.process.memory_info().rss
        self.ever = self.high
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            rss = self.process.memory_info().rss
            self.high = max(self.high, rss)
            self.ever = max(self.ever, rss)

    def take(self) -> tuple[int, int]:
        """(RSS now, highest RSS since the last take)."""
        rss = self.process.memory_info().rss
        high, self.high = max(self.high, rss), rss
        return rss, high

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def cache_bytes(streams: list[FlowStream]) -> tuple[int, int]:
    """(bytes of all distinct key/value buffers of these streams, of those only rows that hold frames)."""
    seen: dict[int, int] = {}
    filled = 0
    for stream in streams:
        for cache in stream.caches:
            for tensor in (*cache.keys, *cache.values):
                storage = tensor.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
                filled += cache.frames * tensor[0, 0].numel() * tensor.shape[0] * tensor.element_size()
    return sum(seen.values()), filled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=150)
    parser.add_argument("--prompt-tokens", type=int, default=87)
    parser.add_argument("--budget-gb", type=float, default=7.19, help="all streams' cache budget (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    config = ModelConfig.from_model_dir(args.model_dir)
    flow = load_flow(args.model_dir, config.flow)
    hift = load_hift(args.model_dir, config.hift, "cpu", torch.float32)
    tokens = torch.Generator().manual_seed(1)
    speech = torch.randint(0, config.flow.vocab_size, (args.tokens,), generator=tokens).tolist()

    def decode(*_args, **_kwargs):
        yield from speech

    budget = None if args.budget_gb == 0 else int(args.budget_gb * GIB)
    model = CosyVoice3Model(config, None, flow, hift, constructor_noise(config.flow, config.hift),  # type: ignore[arg-type]
                            decode=decode, stream_cache_bytes=budget)
    n = args.prompt_tokens
    inputs = SynthesisInputs(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long),
                             torch.zeros(1, 0, dtype=torch.long),
                             torch.randint(0, config.flow.vocab_size, (1, n), generator=tokens),
                             torch.randn(1, 2 * n, config.flow.mel_dim, generator=tokens),
                             torch.randn(1, config.flow.spk_embed_dim, generator=tokens))
    model.flow_stream(inputs.flow_prompt_tokens, inputs.prompt_mel, inputs.embedding)   # the voice prefix, once
    streams: list[FlowStream] = []
    made = model.flow_stream

    def recording(*a, **k):
        stream = made(*a, **k)
        streams.append(stream)
        return stream

    model.flow_stream = recording  # type: ignore[method-assign]
    peak = Peak()
    base = peak.take()[0]
    records: list[dict] = []
    lock = threading.Lock()
    samples = [0] * args.streams
    digests = [""] * args.streams

    def record(i: int, final: bool) -> None:
        with lock:
            rss, high = peak.take()
            held, filled = cache_bytes(streams)
            row = {"t": round(time.perf_counter() - start, 2), "stream": i, "final": final,
                   "audio_s": round(samples[i] / config.hift.sampling_rate, 2),
                   "frames": [s.returned for s in streams],
                   "cache_gib": round(held / GIB, 3), "cache_filled_gib": round(filled / GIB, 3),
                   "budget_gib": round((model.stream_budget.used_bytes if model.stream_budget else 0) / GIB, 3),
                   "rss_over_base_gib": round((rss - base) / GIB, 3), "high_over_base_gib": round((high - base) / GIB, 3)}
            records.append(row)
            print(json.dumps(row), flush=True)

    def listen(i: int) -> None:
        pieces = list()
        for piece in model.tts_stream(inputs, sampler=None):
            samples[i] += piece.shape[1]
            pieces.append(piece)
            record(i, False)
        record(i, True)
        audio = torch.cat(pieces, dim=1).contiguous().numpy()
        digests[i] = hashlib.sha256(audio.tobytes()).hexdigest()[:16]

    start = time.perf_counter()
    threads = [threading.Thread(target=listen, args=(i,)) for i in range(args.streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    peak.stop()
    summary = {"streams": args.streams, "tokens": args.tokens, "prompt_tokens": n, "budget_gb": args.budget_gb,
               "base_rss_gib": round(base / GIB, 3), "peak_over_base_gib": round((peak.ever - base) / GIB, 3),
               "audio_s": round(samples[0] / config.hift.sampling_rate, 2),
               "wall_s": round(time.perf_counter() - start, 1), "audio_sha256": digests}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
