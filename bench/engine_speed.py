"""Speed of our CosyVoice3 engine on CPU: LLM prefill and per-token time, flow, HiFT, RTF, streaming
(first chunk and whole request against one-shot), peak RSS.

    python bench/engine_speed.py --json OUT [--model-dir DIR] [--tokens 250] [--threads 2] [--int8] [--bf16]
                                 [--stages llm,flow,stream] [--update] [--keep-dir DIR] [--slots 4]
                                 [--compare-onednn]

The llm stage also times the decode scheduler (exact fp32): llm_ms_per_token / llm_single_tokens_per_s
= one request in a 1-slot batch, llm_lone_in_batch_ms_per_token = one request in a --slots batch,
llm_batch_tokens_per_s = --slots requests decoding at once (--batch-tokens steps each).
--compare-onednn adds the same single and batch decoding on oneDNN projections with attention in
torch ops (the decoder before the rows kernel), in the same interleaved run.
The stream stage times whole requests of --tokens tokens, LLM included: oneshot_total_s, then
streamed with a new voice (stream_first_chunk_cold_s, stream_total_cold_s) and with a voice already
used (stream_first_chunk_s, stream_total_s).

Without --model-dir a model dir with the released sizes (Qwen2-0.5B-shaped LLM, 22-layer DiT,
512-channel HiFT) and random weights is written in the official layout to a temporary dir first
(in a child process, so its memory does not count), using the tiny fixture's tokenizer and yaml
as templates. Exactly --tokens speech tokens are decoded (stop ids masked): 250 = 10 s of audio.

--int8  also times the weight-only int8 LLM and reports how often its greedy choice agrees with fp32.
--bf16  also times the flow under bfloat16 autocast and reports the mel error against fp32.
A full-size run takes several minutes on 2 cores; --stages/--update split it into shorter runs
that fill one JSON file, and every finished measurement is written at once.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("COSYVOICE_SHARED", ROOT.parent / "shared"))   # bench/gpu_check.sh points it at its carried copy
FIXTURE = SHARED / "fixtures" / "cosyvoice3-tiny"
PROMPT_WAV = SHARED / "audio" / "zero_shot_prompt.wav"
PROMPT_TEXT = "希望你以后能够做的比我还好呦。"
TEXT = ("收到好友从远方寄来的生日礼物，那份意外的惊喜与深深的祝福让我心中充满了甜蜜的快乐，"
        "笑容如花儿般绽放。")

# Released Fun-CosyVoice3-0.5B sizes.
QWEN_FULL = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
             "intermediate_size": 4864, "vocab_size": 151936, "max_window_layers": 24}
YAML_FULL = {  # yaml key (matched at any indent) -> value
    "llm_input_size": 896, "llm_output_size": 896,
    "channels": 1024,                       # PreLookaheadLayer
    "dim": 1024, "depth": 22, "heads": 16, "dim_head": 64, "ff_mult": 2,
    "base_channels": 512, "cond_channels": 512,
}
TIME_FEATURES = 256
POS_CONV_KERNEL, POS_CONV_GROUPS = 31, 16


# ---------------------------------------------------------------------------------------------
# A full-size random model dir in the official layout


def full_size_yaml(template: str) -> str:
    text = template
    for key, value in YAML_FULL.items():
        # numeric values only: `!ref <...>` lines take the value from the top-level key
        text, count = re.subn(rf"^(\s*){key}:[ \t]*\d[\d.]*[ \t]*$", rf"\g<1>{key}: {value}", text, flags=re.MULTILINE)
        if count != 1:
            raise RuntimeError(f"template yaml: expected one '{key}:' line, found {count}")
    return text


def _matrix(gen: torch.Generator, rows: int, cols: int) -> torch.Tensor:
    return torch.randn(rows, cols, generator=gen) / math.sqrt(cols)


def llm_state(cfg, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """llm.pt keys of CosyVoice3LM around Qwen2ForCausalLM (sizes from an LLMConfig), lm_head tied to embed_tokens."""
    h, n_layers, inter = cfg.hidden_size, cfg.num_layers, cfg.intermediate_size
    q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    speech_rows = cfg.speech_vocab_size
    embed = torch.randn(cfg.text_vocab_size, h, generator=gen) * 0.5
    state = {"llm.model.model.embed_tokens.weight": embed}
    for i in range(n_layers):
        p = f"llm.model.model.layers.{i}."
        state.update({
            p + "self_attn.q_proj.weight": _matrix(gen, q_size, h), p + "self_attn.q_proj.bias": 0.1 * torch.randn(q_size, generator=gen),
            p + "self_attn.k_proj.weight": _matrix(gen, kv_size, h), p + "self_attn.k_proj.bias": 0.1 * torch.randn(kv_size, generator=gen),
            p + "self_attn.v_proj.weight": _matrix(gen, kv_size, h), p + "self_attn.v_proj.bias": 0.1 * torch.randn(kv_size, generator=gen),
            p + "self_attn.o_proj.weight": _matrix(gen, h, q_size),
            p + "mlp.gate_proj.weight": _matrix(gen, inter, h), p + "mlp.up_proj.weight": _matrix(gen, inter, h),
            p + "mlp.down_proj.weight": _matrix(gen, h, inter),
            p + "input_layernorm.weight": 1 + 0.1 * torch.randn(h, generator=gen),
            p + "post_attention_layernorm.weight": 1 + 0.1 * torch.randn(h, generator=gen),
        })
    state["llm.model.model.norm.weight"] = 1 + 0.1 * torch.randn(h, generator=gen)
    state["llm.model.lm_head.weight"] = embed            # tied: saved once, as in the release
    state["llm_decoder.weight"] = _matrix(gen, speech_rows, h)
    state["speech_embedding.weight"] = torch.randn(speech_rows, h, generator=gen) * 0.5
    return state


def flow_state(cfg, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """flow.pt keys of CausalMaskedDiffWithDiT (PreLookaheadLayer + DiT estimator), sizes from a FlowConfig."""
    est = cfg.dit
    n_in, n_out, spk = cfg.token_dim, cfg.mel_dim, cfg.spk_embed_dim
    channels, lookahead = cfg.lookahead_channels, cfg.lookahead
    dim, depth, heads, dim_head = est.dim, est.depth, est.heads, est.dim_head
    ff = int(dim * est.ff_mult)
    mel, mu, spk_dim, out = est.mel_dim, est.mu_dim, est.spk_dim, est.out_channels
    inner = heads * dim_head

    def linear(prefix: str, rows: int, cols: int) -> dict[str, torch.Tensor]:
        return {prefix + ".weight": _matrix(gen, rows, cols), prefix + ".bias": 0.02 * torch.randn(rows, generator=gen)}

    def conv(prefix: str, c_out: int, c_in: int, k: int) -> dict[str, torch.Tensor]:
        w = torch.randn(c_out, c_in, k, generator=gen) / math.sqrt(c_in * k)
        return {prefix + ".weight": w, prefix + ".bias": 0.02 * torch.randn(c_out, generator=gen)}

    e = "decoder.estimator."
    state = {"input_embedding.weight": torch.randn(cfg.vocab_size, n_in, generator=gen) * 0.5}
    state |= linear("spk_embed_affine_layer", n_out, spk)
    state |= conv("pre_lookahead_layer.conv1", channels, n_in, lookahead + 1)
    state |= conv("pre_lookahead_layer.conv2", n_in, channels, 3)
    state |= linear(e + "time_embed.time_mlp.0", dim, TIME_FEATURES)
    state |= linear(e + "time_embed.time_mlp.2", dim, dim)
    state |= linear(e + "input_embed.proj", dim, 2 * mel + mu + spk_dim)
    state |= conv(e + "input_embed.conv_pos_embed.conv1.0", dim, dim // POS_CONV_GROUPS, POS_CONV_KERNEL)
    state |= conv(e + "input_embed.conv_pos_embed.conv2.0", dim, dim // POS_CONV_GROUPS, POS_CONV_KERNEL)
    state[e + "rotary_embed.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, dim_head, 2).float() / dim_head)
    for i in range(depth):
        b = f"{e}transformer_blocks.{i}."
        state |= linear(b + "attn_norm.linear", 6 * dim, dim)
        for name in ("to_q", "to_k", "to_v"):
            state |= linear(b + "attn." + name, inner, dim)
        state |= linear(b + "attn.to_out.0", dim, inner)
        state |= linear(b + "ff.ff.0.0", ff, dim)
        state |= linear(b + "ff.ff.2", dim, ff)
    state |= linear(e + "norm_out.linear", 2 * dim, dim)
    state |= linear(e + "proj_out", out, dim)
    return state


def hift_state(config, template_keys: list[str]) -> dict[str, torch.Tensor]:
    """hift.pt keys as the fixture has them (weight norm as parametrizations), shapes of the full size.

    The key set does not depend on the channel counts, so the fixture's keys are the template; shapes
    and freshly initialised values come from our own vocoder built at the full size.
    """
    from cosyvoice.engines.cosyvoice3 import hift as hift_module

    torch.manual_seed(0)
    ours = hift_module.CausalHiFT(config).state_dict()
    gain, direction = ".parametrizations.weight.original0", ".parametrizations.weight.original1"
    state: dict[str, torch.Tensor] = {}
    for key in template_keys:
        if key.endswith(gain) or key.endswith(direction):
            base = key[:-len(gain)]
            weight = ours[hift_module._key_map(base + ".weight")].float()
            if key.endswith(gain):
                state[key] = weight.flatten(1).norm(dim=1).view(-1, *([1] * (weight.dim() - 1)))
            else:
                state[key] = weight.clone()
        else:
            state[key] = ours[hift_module._key_map(key)].float().clone()
    return state


def build_random_model_dir(out: Path, template: Path = FIXTURE) -> None:
    from cosyvoice.engines.cosyvoice3.config import ModelConfig
    from cosyvoice.engines.cosyvoice3.model_dir import QWEN_DIR

    out.mkdir(parents=True, exist_ok=True)
    (out / "cosyvoice3.yaml").write_text(full_size_yaml((template / "cosyvoice3.yaml").read_text()))
    qwen_dir = out / QWEN_DIR
    qwen_dir.mkdir(exist_ok=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(template / QWEN_DIR / name, qwen_dir / name)
    qwen = json.loads((template / QWEN_DIR / "config.json").read_text()) | QWEN_FULL
    (qwen_dir / "config.json").write_text(json.dumps(qwen, indent=2))

    cfg = ModelConfig.from_model_dir(out)         # the sizes just written, read as the engine reads them
    gen = torch.Generator().manual_seed(1986)
    torch.save(llm_state(cfg.llm, gen), out / "llm.pt")
    torch.save(flow_state(cfg.flow, gen), out / "flow.pt")
    template_keys = list(torch.load(template / "hift.pt", map_location="cpu", weights_only=True))
    torch.save(hift_state(cfg.hift, template_keys), out / "hift.pt")
    prebuilt = os.environ.get("COSYVOICE_TINY_ONNX")   # a dir with the two files, where `onnx` is not installed
    if prebuilt:
        for name in ("campplus.onnx", "speech_tokenizer_v3.onnx"):
            shutil.copy(Path(prebuilt) / name, out / name)
    else:
        from tests.tiny_onnx import write_tiny_onnx

        write_tiny_onnx(out)


# ---------------------------------------------------------------------------------------------
# Measurements


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def never_stop(sampling, speech_token_size: int):
    """The released sampler with every stop id masked, so decoding runs as long as we pull."""
    from cosyvoice.engines.cosyvoice3.sampling import ras_pick

    def sample(logp: torch.Tensor, decoded: list[int], generator) -> int:
        logp[speech_token_size:] = -float("inf")
        return ras_pick(logp, decoded, sampling, generator)
    return sample


def greedy(speech_token_size: int, follow: list[int] | None = None, picks: list[int] | None = None):
    """Argmax over speech ids; with `follow`, record the argmax in `picks` but return follow[step]."""
    def sample(logp: torch.Tensor, decoded: list[int], generator) -> int:
        best = int(logp[:speech_token_size].argmax())
        if follow is None:
            return best
        picks.append(best)
        return follow[len(decoded)]
    return sample


def exactly(sampler, n_tokens: int, stop_id: int):
    """`sampler` for the first n_tokens picks, then a stop id."""
    def sample(logp: torch.Tensor, decoded: list[int], generator) -> int:
        return stop_id if len(decoded) >= n_tokens else sampler(logp, decoded, generator)
    return sample


def streaming(model, inputs, sampler, sample_rate: int) -> dict:
    """Whole requests through the engine's model, LLM included, same tokens each time: one-shot, then
    streamed with the voice's prompt prefix not yet cached (cold), then streamed again (warm: what
    every later request with that voice gets)."""
    def seeded() -> torch.Generator:
        return torch.Generator(device=model.device).manual_seed(0)

    out: dict = {}
    started = time.perf_counter()
    wav, tokens = model.tts(inputs, generator=seeded(), sampler=sampler, max_token_text_ratio=10_000)
    out["oneshot_total_s"] = round(time.perf_counter() - started, 2)
    out["oneshot_audio_s"] = round(wav.shape[1] / sample_rate, 2)
    model.forget_voice_prefixes()
    for name in ("cold", "warm"):
        started = time.perf_counter()
        first, total = None, 0
        for chunk in model.tts_stream(inputs, generator=seeded(), sampler=sampler, max_token_text_ratio=10_000):
            first = first or round(time.perf_counter() - started, 2)
            total += chunk.shape[1]
        suffix = "_cold" if name == "cold" else ""
        out[f"stream_first_chunk{suffix}_s"] = first
        out[f"stream_total{suffix}_s"] = round(time.perf_counter() - started, 2)
        out["stream_audio_s"] = round(total / sample_rate, 2)
    out["stream_total_ratio"] = round(out["stream_total_s"] / out["oneshot_total_s"], 3)
    out["stream_total_cold_ratio"] = round(out["stream_total_cold_s"] / out["oneshot_total_s"], 3)
    return out


def decode(model, inputs, n_tokens: int, sampler, seed: int = 0, raw: bool = False) -> tuple[list[int], float, float]:
    """(tokens, prefill seconds incl. the first pick, ms per later token).

    raw: the LLM's own output, without the silence filter (so step i is token i, for agreement counts)."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    if raw:
        stream: Iterator[int] = model.llm.generate(inputs.text_ids, inputs.prompt_text_ids, inputs.llm_prompt_tokens,
                                                   sampling=model.config.sampling, max_token_text_ratio=10_000,
                                                   generator=generator, sampler=sampler)
    else:
        stream = model.speech_tokens(inputs, generator=generator, sampler=sampler, max_token_text_ratio=10_000)
    started = time.perf_counter()
    tokens = [next(stream)]
    first = time.perf_counter()
    for token in stream:
        tokens.append(token)
        if len(tokens) == n_tokens:
            break
    stream.close()
    done = time.perf_counter()
    if len(tokens) < n_tokens:
        raise RuntimeError(f"decoding stopped after {len(tokens)} tokens")
    return tokens, first - started, 1000 * (done - first) / max(1, len(tokens) - 1)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode_requests(llm, cfg, inputs, count: int, seed: int = 0):
    sampler = never_stop(cfg.sampling, cfg.llm.speech_token_size)
    return [llm.decode_request(inputs.text_ids, inputs.prompt_text_ids, inputs.llm_prompt_tokens,
                               sampling=cfg.sampling, max_token_text_ratio=10_000,
                               generator=torch.Generator(device=llm.device).manual_seed(seed + i),
                               sampler=sampler)
            for i in range(count)]


def real_slot_capacity(cfg) -> int:
    """The engine's slot capacity (prompt positions + the most tokens the flow noise allows)."""
    from cosyvoice.engines.cosyvoice3.engine import PREFILL_POSITIONS
    from cosyvoice.engines.cosyvoice3.model import max_speech_tokens

    return PREFILL_POSITIONS + max_speech_tokens(cfg.token_mel_ratio, 0)


def load_bench_llm(model_dir: Path, cfg, placement):
    """The LLM loaded in its precision the way the engine loads it."""
    from cosyvoice.engines.cosyvoice3.devices import half_projections
    from cosyvoice.engines.cosyvoice3.llm import load_llm
    from cosyvoice.engines.cosyvoice3.model_dir import LLM_WEIGHTS

    return half_projections(load_llm(model_dir / LLM_WEIGHTS, cfg.llm, placement.device, placement.dtype),
                            placement.llm_precision)


def prepared_decoder(llm, placement, slots: int, capacity: int, cuda_graphs: bool, cpu_kernel: str = "auto"):
    """A SlotDecoder for `llm`, prepared the way the engine prepares it (twins share the weights)."""
    from cosyvoice.engines.cosyvoice3.scheduler import prepare_batched_decoding

    return prepare_batched_decoding(llm, slots, capacity, cuda_graphs=cuda_graphs, cpu_kernel=cpu_kernel,
                                    autocast=placement.llm_autocast())


def llm_batching(model_dir: Path, cfg, inputs, n_tokens: int, slots: int, placement, cuda_graphs: bool,
                 compare_onednn: bool = False) -> dict:
    """Decode speed of the scheduler's SlotDecoder (exact fp32 on CPU): one request in a 1-slot batch
    (single), one request alone in a `slots`-slot batch (lone), and `slots` requests at once (batch).

    Each LLM is prepared for its slot count as the engine prepares it, at the engine's slot capacity. The CPU is shared, so the
    decoders take their steps in turn (single, lone, batch, single, ...) and each sums only its own
    step times: a burst of load elsewhere hits all alike, and the ratios stay fair.
    compare_onednn (CPU) adds single and batch decoders as they were before the rows kernel: oneDNN
    projections and per-row attention in torch ops (llm_onednn_* keys)."""
    from cosyvoice.engines.cosyvoice3.scheduler import decoder_mode

    capacity = real_slot_capacity(cfg)
    llm = load_bench_llm(model_dir, cfg, placement)     # every decoder below shares its weights
    runs = {"single": (prepared_decoder(llm, placement, 1, capacity, cuda_graphs), 1),
            "lone": (prepared_decoder(llm, placement, slots, capacity, cuda_graphs), 1),
            "batch": (prepared_decoder(llm, placement, slots, capacity, cuda_graphs), slots)}
    if compare_onednn:
        for name, count in (("onednn_single", 1), ("onednn_batch", slots)):
            decoder = prepared_decoder(llm, placement, count, capacity, False, cpu_kernel="onednn")
            decoder.fused_attention = False
            runs[name] = (decoder, count)
    seconds = dict.fromkeys(runs, 0.0)
    with torch.inference_mode(), placement.llm_autocast()():
        for decoder, count in runs.values():
            for slot, request in enumerate(_decode_requests(decoder.llm, cfg, inputs, count)):
                decoder.admit(request, slot)
        for _ in range(n_tokens - 1):
            for name, (decoder, _) in runs.items():
                synchronize(placement.device)
                started = time.perf_counter()
                decoder.step()
                synchronize(placement.device)
                seconds[name] += time.perf_counter() - started
    steps = max(1, n_tokens - 1)
    single_s, lone_s, batch_s = (seconds[k] / steps for k in ("single", "lone", "batch"))
    result = {
        "llm_slots": slots,
        "llm_batching_mode": decoder_mode(runs["batch"][0]),
        "llm_batch_steps": steps,
        "llm_ms_per_token": round(1000 * single_s, 1),
        "llm_single_tokens_per_s": round(1 / single_s, 2),
        "llm_lone_in_batch_ms_per_token": round(1000 * lone_s, 1),
        "llm_batch_tokens_per_s": round(slots / batch_s, 2),
        "llm_batch_speedup": round(single_s * slots / batch_s, 2),
        "llm_lone_in_batch_ratio": round(lone_s / single_s, 3),
    }
    if compare_onednn:
        onednn_single_s, onednn_batch_s = seconds["onednn_single"] / steps, seconds["onednn_batch"] / steps
        result.update({
            "llm_onednn_batching_mode": decoder_mode(runs["onednn_batch"][0]),
            "llm_onednn_ms_per_token": round(1000 * onednn_single_s, 1),
            "llm_onednn_batch_tokens_per_s": round(slots / onednn_batch_s, 2),
            "llm_onednn_batch_speedup": round(onednn_single_s * slots / onednn_batch_s, 2),
            "llm_rows_kernel_single_gain": round(onednn_single_s / single_s, 2),
            "llm_rows_kernel_batch_gain": round(onednn_batch_s / batch_s, 2),
        })
    return result


STAGES = ("llm", "flow", "stream", "int8", "bf16")


def run(model_dir: Path, n_tokens: int, stages: tuple[str, ...], result: dict, save, slots: int = 4,
        batch_tokens: int | None = None, device: str = "cpu", precision: str = "fp32",
        cuda_graphs: bool = True, compare_onednn: bool = False) -> dict:
    """Measure `stages` in order; `save(result)` after each one, so a long run that is cut short
    still leaves what it measured."""
    from cosyvoice.audio.prompt import load_prompt_audio
    from cosyvoice.engines.base import Style
    from cosyvoice.engines.cosyvoice3 import CosyVoice3Engine

    result.update({"model_dir": str(model_dir), "tokens": n_tokens, "threads": torch.get_num_threads()})
    started = time.perf_counter()
    engine = CosyVoice3Engine(model_dir, device=device, precision=precision, batch_slots=slots,
                              cuda_graphs=cuda_graphs)
    result.update({"device": str(engine.placement.device), "precision": engine.placement.precision,
                   "cuda_graphs": engine.scheduler.cuda_graphs})
    result["load_s"] = round(time.perf_counter() - started, 2)
    model, cfg = engine.model, engine.config
    voice = engine.prepare_voice(load_prompt_audio(PROMPT_WAV).audio, PROMPT_TEXT)
    inputs, _ = engine._inputs(TEXT, voice, Style("zero_shot"))
    result["prompt_tokens"] = voice.features.speech_tokens.shape[1]
    sampler = never_stop(cfg.sampling, cfg.llm.speech_token_size)
    feats = voice.features
    save(result)

    if "llm" in stages:
        tokens, prefill_s, ms_per_token = decode(model, inputs, n_tokens, sampler)
        result["llm_prefill_s"] = round(prefill_s, 3)
        result["llm_engine_ms_per_token"] = round(ms_per_token, 1)   # through the engine's scheduler
        save(result)
        result.update(llm_batching(model_dir, cfg, inputs, batch_tokens or n_tokens, slots, engine.placement,
                                   cuda_graphs, compare_onednn and engine.placement.device.type == "cpu"))
        save(result)
    else:  # flow and HiFT cost does not depend on which tokens they render
        tokens = torch.randint(0, cfg.llm.speech_token_size, (n_tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    token_tensor = torch.tensor([tokens])

    mel = flow_and_hift(model, token_tensor, feats, stages, result, save, engine.sample_rate)
    if all(k in result for k in ("llm_prefill_s", "llm_ms_per_token", "flow_s", "hift_s")):
        llm_s = result["llm_prefill_s"] + result["llm_ms_per_token"] * (n_tokens - 1) / 1000
        result["rtf"] = round((llm_s + result["flow_s"] + result["hift_s"]) / result["audio_s"], 3)

    if "stream" in stages:
        result.update(streaming(model, inputs, exactly(sampler, n_tokens, cfg.llm.speech_token_size),
                                engine.sample_rate))
    result["peak_rss_mib"] = max(result.get("peak_rss_mib", 0), round(peak_rss_mib()))
    save(result)

    if "bf16" in stages:
        result.update(bf16_flow(model, token_tensor, feats, mel))
        save(result)
    if "int8" in stages:
        result.update(int8_llm(model, cfg, inputs, n_tokens, sampler))
        result["peak_rss_mib"] = max(result["peak_rss_mib"], round(peak_rss_mib()))
        save(result)
    return result


def flow_and_hift(model, token_tensor, feats, stages, result: dict, save, sample_rate: int):
    """The flow stage (flow_s; hift_s and audio_s with "flow"); the mel, or None when neither stage runs."""
    mel = None
    if "flow" in stages or "bf16" in stages:
        started = time.perf_counter()
        mel = model.flow_mel(token_tensor, feats.speech_tokens, feats.prompt_mel, feats.embedding,
                             streaming=False, finalize=True)
        result["flow_s"] = round(time.perf_counter() - started, 2)
        save(result)
    if "flow" in stages:
        started = time.perf_counter()
        wav = model.vocode(mel, finalize=True)
        result["hift_s"] = round(time.perf_counter() - started, 2)
        result["audio_s"] = round(wav.shape[1] / sample_rate, 2)
        save(result)
    return mel


def bf16_flow(model, token_tensor, feats, mel) -> dict:
    """The flow under bfloat16 autocast: its time and its mel error against float32 `mel`."""
    started = time.perf_counter()
    mel_bf16 = model.flow.inference(token_tensor, feats.speech_tokens, feats.prompt_mel, feats.embedding,
                                    model.noise.flow_z, streaming=False, finalize=True, bf16=True)
    err = (mel_bf16 - mel).abs()
    return {"bf16_flow_s": round(time.perf_counter() - started, 2), "bf16_mel_max_abs_err": round(err.max().item(), 4),
            "bf16_mel_mean_abs_err": round(err.mean().item(), 5), "mel_abs_max": round(mel.abs().max().item(), 3)}


def int8_llm(model, cfg, inputs, n_tokens: int, sampler) -> dict:
    """The int8 LLM (model.llm quantised in place): its speed and its greedy agreement with float32."""
    from cosyvoice.engines.cosyvoice3.quantize import quantize_int8

    reference, _, _ = decode(model, inputs, n_tokens, greedy(cfg.llm.speech_token_size), raw=True)
    quantize_int8(model.llm)
    _, prefill_q, ms_q = decode(model, inputs, n_tokens, sampler)
    free_run, _, _ = decode(model, inputs, n_tokens, greedy(cfg.llm.speech_token_size), raw=True)
    same_prefix = next((i for i, (a, b) in enumerate(zip(free_run, reference)) if a != b), n_tokens)
    picks: list[int] = []
    decode(model, inputs, n_tokens, greedy(cfg.llm.speech_token_size, follow=reference, picks=picks), raw=True)
    agree = sum(a == b for a, b in zip(picks, reference)) / len(reference)
    return {"int8_llm_prefill_s": round(prefill_q, 3), "int8_llm_ms_per_token": round(ms_q, 1),
            "int8_greedy_same_prefix_tokens": same_prefix, "int8_greedy_teacher_forced_agreement": round(agree, 4)}


def prepare_model_dir(args, temp_holder: list) -> Path:
    """--model-dir, or the full-size random dir (kept in --keep-dir, else a temporary one), built in a
    child process so that building the weights does not count in this process's peak RSS."""
    if args.model_dir is not None:
        return args.model_dir
    if args.keep_dir is not None:
        model_dir = args.keep_dir
    else:
        temp_holder.append(tempfile.TemporaryDirectory(prefix="cv3-bench-"))
        model_dir = Path(temp_holder[0].name) / "Fun-CosyVoice3-0.5B-random"
    if not (model_dir / "hift.pt").is_file():
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--json", "-", "--threads", str(args.threads),
                        "--build-only", str(model_dir)], check=True)
        print(f"random full-size model dir built in {time.perf_counter() - started:.0f} s: {model_dir}",
              file=sys.stderr)
    return model_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="model dir to time (default: full-size random weights)")
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--tokens", type=int, default=250, help="speech tokens to decode (25 per second)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=4, help="decode batch slots for the batching figures")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="fp32", help="auto, fp32, fp16 or bf16 (half precision only on CUDA)")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="do not capture the decode step (CUDA)")
    parser.add_argument("--batch-tokens", type=int, help="tokens per batching measurement (default --tokens)")
    parser.add_argument("--compare-onednn", action="store_true",
                        help="also time single and batch decoding on oneDNN with torch-op attention (CPU)")
    parser.add_argument("--int8", action="store_true", help="also time the int8 LLM and its greedy agreement")
    parser.add_argument("--bf16", action="store_true", help="also time the bf16 flow and its mel error")
    parser.add_argument("--keep-dir", type=Path, help="build the random model dir here and keep it (reused if present)")
    parser.add_argument("--stages", default="llm,flow,stream",
                        help=f"comma-separated subset of {','.join(STAGES)} (--int8/--bf16 add theirs)")
    parser.add_argument("--update", action="store_true",
                        help="merge into an existing --json file instead of replacing it (for runs split in parts)")
    parser.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.build_only:
        build_random_model_dir(args.build_only)
        return 0

    temps: list[tempfile.TemporaryDirectory] = []
    model_dir = prepare_model_dir(args, temps)
    stages = tuple(x for x in args.stages.split(",") if x) + ("int8",) * args.int8 + ("bf16",) * args.bf16
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s): {', '.join(sorted(unknown))}")
    result: dict = {}
    if args.update and args.json.is_file():
        result = json.loads(args.json.read_text())
    result["random_weights"] = args.model_dir is None

    def save(partial: dict) -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(partial, indent=2) + "\n")
        print(json.dumps(partial), file=sys.stderr, flush=True)

    try:
        result = run(model_dir, args.tokens, stages, result, save, slots=args.slots, batch_tokens=args.batch_tokens,
                     device=args.device, precision=args.precision, cuda_graphs=not args.no_cuda_graphs, compare_onednn=args.compare_onednn)
    finally:
        for temp in temps:
            temp.cleanup()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
