"""GPU figures for the README, all from one run on one device (bench/gpu_check.sh runs it):

    python bench/gpu_figures.py --model-dir DIR --json OUT [--device cuda] [--precisions fp16,auto]
                                [--slots 4,16] [--streams 1,4,16] [--tokens 100] [--agreement-tokens 50]

Per precision: the decode step at 1 slot and at each --slots (CUDA graphs on and off; tokens/s, the
engine's slot capacity), streaming requests through the engine at each --streams concurrency (first
audio, audio seconds per second), peak GPU memory per part, and agreement with CPU float32 on the
same model dir: speech-token agreement under teacher forcing (the CPU's greedy tokens fed back) and
the flow's mel error on the same tokens. Every timer is synchronised with the device. Ratios compare
configurations of this run only (graphs on/off, fp16/auto, 1 vs N slots); nothing is compared with
figures from another machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import engine_speed as es  # noqa: E402  (the model-dir builder, samplers and decode timing it shares)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def decode_figures(model_dir: Path, cfg, inputs, placement, slots_list, tokens: int) -> dict:
    """llm_batching (single = 1 slot, batch = N slots) for each N, graphs on and off."""
    out: dict = {}
    for graphs in (True, False):
        for slots in slots_list:
            reset_peak(placement.device)
            figures = es.llm_batching(model_dir, cfg, inputs, tokens, slots, placement, graphs)
            key = f"graphs_{'on' if graphs else 'off'}_slots{slots}"
            out[key] = {"ms_per_token_1_slot": figures["llm_ms_per_token"],
                        "tokens_per_s_1_slot": figures["llm_single_tokens_per_s"],
                        "tokens_per_s_all_slots": figures["llm_batch_tokens_per_s"],
                        "batch_speedup": round(figures["llm_batch_tokens_per_s"] / figures["llm_single_tokens_per_s"], 2),
                        "mode": figures["llm_batching_mode"], "peak_gib": peak_gib(placement.device)}
            print(f"  decode {key}: {out[key]}", file=sys.stderr, flush=True)
    if slots_list:
        first = slots_list[0]
        on, off = out[f"graphs_on_slots{first}"], out[f"graphs_off_slots{first}"]
        out["graphs_speedup_1_slot"] = round(off["ms_per_token_1_slot"] / on["ms_per_token_1_slot"], 2)
    return out


def concurrent_streams(engine, inputs, sampler, count: int) -> dict:
    """`count` streaming requests at once through the engine's model: first audio and audio s per s."""
    firsts: list[float] = [0.0] * count
    audio = [0] * count
    start = threading.Barrier(count + 1)

    def one(index: int) -> None:
        generator = torch.Generator(device=engine.model.device).manual_seed(index)
        start.wait()
        began = time.perf_counter()
        for chunk in engine.model.tts_stream(inputs, generator=generator, sampler=sampler, max_token_text_ratio=10_000):
            chunk = chunk.cpu()                         # the listener has it: synchronised with the device
            if not firsts[index]:
                firsts[index] = time.perf_counter() - began
            audio[index] += chunk.shape[1]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    seconds = sum(audio) / engine.sample_rate
    return {"first_audio_ms_median": round(1000 * sorted(firsts)[count // 2], 1),
            "first_audio_ms_max": round(1000 * max(firsts), 1),
            "audio_s_per_s": round(seconds / wall, 2), "rtf": round(wall / (seconds / count), 3)}


def stream_figures(model_dir: Path, device: str, precision: str, streams_list, tokens: int) -> tuple[dict, object]:
    from cosyvoice.audio.prompt import load_prompt_audio
    from cosyvoice.engines.base import Style
    from cosyvoice.engines.cosyvoice3 import CosyVoice3Engine

    engine = CosyVoice3Engine(model_dir, device=device, precision=precision, batch_slots=max(streams_list))
    voice = engine.prepare_voice(load_prompt_audio(es.PROMPT_WAV).audio, es.PROMPT_TEXT)
    inputs, _ = engine._inputs(es.TEXT, voice, Style("zero_shot"))
    cfg = engine.config
    sampler = es.exactly(es.never_stop(cfg.sampling, cfg.llm.speech_token_size), tokens, cfg.llm.speech_token_size)
    out: dict = {"info": {k: engine.version_info()[k] for k in ("precision", "llm_precision", "flow_precision",
                                                                "batch_slots", "decode_batching", "cuda_graphs")}}
    concurrent_streams(engine, inputs, sampler, 1)                     # warm-up: voice prefix, kernels
    for count in streams_list:
        reset_peak(engine.placement.device)
        out[f"streams_{count}"] = concurrent_streams(engine, inputs, sampler, count)
        out[f"streams_{count}"]["peak_gib"] = peak_gib(engine.placement.device)
        print(f"  {count} streams: {out[f'streams_{count}']}", file=sys.stderr, flush=True)
    return out, (engine, inputs, voice)


def agreement(reference, engine, inputs, voice, tokens: int) -> dict:
    """The engine's LLM (its precision) teacher-forced on the CPU fp32 greedy tokens, and its flow's mel
    on those tokens against the CPU's."""
    cfg = engine.config
    size = cfg.llm.speech_token_size
    ref_tokens, _, _ = es.decode(reference, inputs, tokens, es.greedy(size), raw=True)
    picks: list[int] = []
    with engine.placement.llm_autocast()():
        es.decode(engine.model, inputs, tokens, es.greedy(size, follow=ref_tokens, picks=picks), raw=True)
    feats = voice.features
    token_tensor = torch.tensor([ref_tokens])
    ref_mel = reference.flow_mel(token_tensor, feats.speech_tokens, feats.prompt_mel, feats.embedding,
                                 streaming=False, finalize=True)
    mel = engine.model.flow_mel(token_tensor, feats.speech_tokens, feats.prompt_mel, feats.embedding,
                                streaming=False, finalize=True).float().cpu()
    err = (mel - ref_mel).abs()
    return {"teacher_forced_token_agreement": round(sum(a == b for a, b in zip(picks, ref_tokens)) / len(ref_tokens), 4),
            "mel_max_abs_err": round(err.max().item(), 4), "mel_mean_abs_err": round(err.mean().item(), 5),
            "mel_abs_max": round(ref_mel.abs().max().item(), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precisions", default="fp16,auto")
    parser.add_argument("--slots", default="4,16", help="batch slot counts for the decode figures (1 is always there)")
    parser.add_argument("--streams", default="1,4,16", help="concurrent streaming requests")
    parser.add_argument("--tokens", type=int, default=100, help="speech tokens per request (25 per second of audio)")
    parser.add_argument("--agreement-tokens", type=int, default=50)
    args = parser.parse_args(argv)
    slots_list = [int(x) for x in args.slots.split(",")]
    streams_list = [int(x) for x in args.streams.split(",")]
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "python": sys.version.split()[0], "tokens": args.tokens}

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")

    from cosyvoice.engines.cosyvoice3.model import CosyVoice3Model

    reference = CosyVoice3Model.load(args.model_dir, "cpu") if args.agreement_tokens else None
    for precision in args.precisions.split(","):
        print(f"precision {precision}", file=sys.stderr, flush=True)
        streams, (engine, inputs, voice) = stream_figures(args.model_dir, args.device, precision, streams_list,
                                                          args.tokens)
        part = {"streaming": streams}
        save()
        part["decode"] = decode_figures(args.model_dir, engine.config, inputs, engine.placement, slots_list,
                                        args.tokens)
        if reference is not None:
            part["agreement_vs_cpu_fp32"] = agreement(reference, engine, inputs, voice, args.agreement_tokens)
        result[precision] = part
        engine.scheduler.close()
        del engine
        save()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
