"""Continuous batching of the CosyVoice3 LLM: a request's speech tokens do not depend on who else is
decoding, requests join and leave at any step, and the engine serves concurrent callers through it."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from conftest import FIXTURE, ZERO_SHOT_PROMPT, ZERO_SHOT_TRANSCRIPT
from cosyvoice.audio.prompt import load_prompt_audio
from cosyvoice.engines.base import Style
from cosyvoice.engines.cosyvoice3 import CosyVoice3Engine
from cosyvoice.engines.cosyvoice3.config import ModelConfig, SamplingConfig
from cosyvoice.engines.cosyvoice3.llm import SlotDecoder, load_llm
from cosyvoice.engines.cosyvoice3.quantize import Int8Linear, quantize_int8
from cosyvoice.engines.cosyvoice3.sampling import ras_pick, ras_sampler
from cosyvoice.engines.cosyvoice3.cpu_decode_kernel import RowsLinear
from cosyvoice.engines.cosyvoice3.scheduler import (DecodeScheduler, PackedLinear, prepare_batched_decoding,
                                                    row_invariant_twin)
from cosyvoice.parity import load_case
from tiny_onnx import make_tiny_model_dir

torch.set_num_threads(2)

CFG = ModelConfig.from_model_dir(FIXTURE)
CASES = {name: load_case(FIXTURE, f"{name}.pt") for name in ("llm_ras_seeded", "llm_teacher_forced", "llm_greedy")}
# (case, seed, max_token_text_ratio): four requests of clearly different lengths
REQUESTS = [("llm_ras_seeded", 11, 3.0), ("llm_teacher_forced", 12, 6.0), ("llm_greedy", 13, 2.0),
            ("llm_ras_seeded", 14, 5.0)]
# step at which each request joins, per scenario (how many requests decode beside request 0)
SCENARIOS = {1: [0], 2: [0, 4], 4: [0, 3, 7, 12]}


def never_stop(logp: torch.Tensor, decoded: list[int], generator) -> int:
    """RAS with the stop ids masked, so each request runs exactly to its own length limit."""
    logp[CFG.llm.speech_token_size:] = -float("inf")
    return ras_pick(logp, decoded, CFG.sampling, generator)


def request(llm, index: int):
    name, seed, ratio = REQUESTS[index]
    case = CASES[name]
    return llm.decode_request(case["text"], case["prompt_text"], case["prompt_speech_token"],
                              sampling=CFG.sampling, max_token_text_ratio=ratio,
                              generator=torch.Generator().manual_seed(seed), sampler=never_stop)


def run_plan(decoder: SlotDecoder, llm, joins: dict[int, int]) -> dict[int, list[int]]:
    """Drive `decoder` step by step; request i is admitted (prefilled) before step joins[i]."""
    tokens: dict[int, list[int]] = {i: [] for i in joins}
    owner: dict[int, int] = {}
    step = 0
    with torch.inference_mode():
        while step <= max(joins.values()) or decoder.busy():
            for index in [i for i, at in joins.items() if at == step]:
                slot = decoder.free_slots()[-1]          # fill from the last slot: rows move around
                first = decoder.admit(request(llm, index), slot)
                tokens[index].append(first)
                owner[slot] = index
            for slot, token in decoder.step().items():
                if token is not None:
                    tokens[owner[slot]].append(token)
            step += 1
    return tokens


def make_llm(quantized: bool):
    llm = load_llm(FIXTURE / "llm.pt", CFG.llm)
    return quantize_int8(llm) if quantized else llm


# (label, int8, kernel, exact): how the step computes rows; a kernel = only busy slots on it (CPU
# default: our rows kernel), None = every slot, padded.
MODES = [("fp32-busy-rows", False, "rows", True), ("fp32-busy-rows-onednn", False, "onednn", True),
         ("int8-busy-rows", True, "auto", True),
         ("fp32-padded", False, None, True), ("fp32-masked-all-slots", False, None, False)]


@pytest.mark.parametrize("label, quantized, kernel, exact", MODES, ids=[m[0] for m in MODES])
def test_tokens_identical_alone_and_beside_others(label, quantized, kernel, exact) -> None:
    llm = make_llm(quantized)
    compact = kernel is not None
    if compact:
        llm = row_invariant_twin(llm, 4, kernel)
        assert llm is not None, "this CPU's kernels are not row-invariant; the engine would pad"
        want = {"rows": RowsLinear, "onednn": PackedLinear, "auto": Int8Linear}[kernel]
        assert isinstance(llm.layers[0].mlp.down, want)
    # The engine's decoder: with our kernel loaded, exact attention runs fused (one call per layer).
    decoder = SlotDecoder(llm, slots=4, capacity=512, exact=exact, compact=compact,
                          fused_attention=kernel in ("rows", "auto"))
    alone = {i: run_plan(decoder, llm, {i: 0})[i] for i in range(4)}
    lengths = sorted(len(t) for t in alone.values())
    assert len(set(lengths)) == 4 and lengths[0] >= 10, lengths     # really different lengths
    for count, starts in SCENARIOS.items():
        together = run_plan(decoder, llm, dict(enumerate(starts)))
        assert together == {i: alone[i] for i in range(count)}, f"{count} concurrent requests"


def test_int8_rows_are_quantised_one_by_one() -> None:
    # A loud row beside a quiet one would set a shared activation scale and change the quiet row's result.
    layer = quantize_int8(load_llm(FIXTURE / "llm.pt", CFG.llm)).layers[0].mlp.down
    assert isinstance(layer, Int8Linear) and layer.packed is not None
    quiet = torch.randn(1, layer.in_features)
    with torch.inference_mode():
        alone = layer(quiet)[0]
        beside_loud = layer(torch.cat([quiet, 100 * torch.randn(1, layer.in_features)]))[0]
    assert torch.equal(alone, beside_loud)


def test_fixture_greedy_tokens_come_out_of_a_full_four_slot_batch() -> None:
    # The official greedy decode, in slot 2 of a 4-slot batch while three other requests decode.
    llm = row_invariant_twin(make_llm(False), 4)
    decoder = SlotDecoder(llm, slots=4, capacity=512, fused_attention=True)
    case = CASES["llm_greedy"]
    greedy = SamplingConfig(top_p=0.8, top_k=1, win_size=10, tau_r=1.1)
    target = llm.decode_request(case["text"], case["prompt_text"], case["prompt_speech_token"], sampling=greedy,
                                min_token_text_ratio=case["min_token_text_ratio"],
                                max_token_text_ratio=case["max_token_text_ratio"], sampler=ras_sampler(greedy))
    got: list[int] = []
    with torch.inference_mode():
        for slot, index in ((0, 0), (1, 1), (3, 3)):
            decoder.admit(request(llm, index), slot)
        got.append(decoder.admit(target, 2))
        while decoder.requests[2] is not None:
            token = decoder.step().get(2)
            if token is not None:
                got.append(token)
    assert got == case["tokens"].tolist()


def test_scheduler_threads_join_leave_and_free_slots_of_closed_consumers() -> None:
    llm = make_llm(False)
    scheduler = DecodeScheduler(prepare_batched_decoding(llm, 2, 512))
    try:
        assert scheduler.compact
        alone = [list(scheduler.submit(request(llm, i))) for i in range(4)]
        # A consumer that walks away after 3 tokens must not hold its slot: with 2 slots, four more
        # requests still complete.
        quitter = scheduler.submit(request(llm, 0))
        assert [next(quitter) for _ in range(3)] == alone[0][:3]
        quitter.close()
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda i: list(scheduler.submit(request(llm, i))), range(4)))
        assert together == alone
    finally:
        scheduler.close()


@pytest.mark.parametrize("compact", [True, False])
def test_a_request_decodes_at_most_max_ahead_beyond_its_consumer_while_others_go_on(compact) -> None:
    llm = make_llm(False)
    scheduler = DecodeScheduler(prepare_batched_decoding(llm, 2, 512), max_ahead=2)
    scheduler.decoder.compact = compact          # padded rows: the waiting one is computed, not sampled
    try:
        alone = [list(scheduler.submit(request(llm, i))) for i in (0, 1)]
        slow = request(llm, 0)
        slow_tokens = scheduler.submit(slow)
        taken = [next(slow_tokens)]
        # The other request runs to its end while the slow consumer takes nothing...
        assert list(scheduler.submit(request(llm, 1))) == alone[1]
        # ...and the slow one has not decoded more than 2 (+ the one in the step under way) past its consumer.
        assert len(slow.decoded) <= len(taken) + 3 < len(alone[0])
        taken += list(slow_tokens)
        assert taken == alone[0]                 # the pauses change nothing in its tokens
    finally:
        scheduler.close()


def test_a_request_too_long_for_a_slot_fails_alone_and_the_cache_bounds_the_rest() -> None:
    llm = make_llm(False)
    lengths = [request(llm, i).prefill_len for i in range(4)]
    short, long = lengths.index(min(lengths)), lengths.index(max(lengths))
    capacity = lengths[short] + 6
    assert lengths[long] >= capacity
    scheduler = DecodeScheduler(prepare_batched_decoding(llm, 2, capacity))
    try:
        with pytest.raises(ValueError, match="positions"):
            list(scheduler.submit(request(llm, long)))
        # the next request is served, cut at what its slot holds (its own limit is longer)
        assert len(list(scheduler.submit(request(llm, short)))) == 6
    finally:
        scheduler.close()


# ---- the engine -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(FIXTURE, tmp_path_factory.mktemp("cv3sched") / "model")


def test_eight_concurrent_synthesize_calls_equal_each_alone(model_dir) -> None:
    engine = CosyVoice3Engine(model_dir, device="cpu", precision="fp32", batch_slots=4)
    voice = engine.prepare_voice(load_prompt_audio(ZERO_SHOT_PROMPT).audio, ZERO_SHOT_TRANSCRIPT)
    texts = ["你好，今天天气很好。", "收到好友从远方寄来的生日礼物。", "谢谢。", "我们明天见吧，不见不散。"]
    jobs = [(texts[i % 4], seed, mode) for i, (seed, mode) in
            enumerate([(3, "zero_shot"), (4, "cross_lingual"), (5, "zero_shot"), (6, "cross_lingual"),
                       (7, "zero_shot"), (8, "zero_shot"), (9, "cross_lingual"), (10, "zero_shot")])]

    def synth(job, stream=False):
        text, seed, mode = job
        return np.concatenate(list(engine.synthesize(text, voice, Style(mode), seed, lambda p: None, stream=stream)))

    alone = [synth(job, stream=index % 2 == 1) for index, job in enumerate(jobs)]
    assert engine.scheduler.most_in_one_step == 1
    start = threading.Barrier(8)

    def together(index):
        start.wait()
        return synth(jobs[index], stream=index % 2 == 1)

    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(together, range(8)))
    assert len({a.size for a in alone}) > 4                  # different lengths, so they join and leave apart
    assert engine.scheduler.most_in_one_step == 4            # all slots were shared at some step
    for index, (a, b) in enumerate(zip(alone, outputs)):
        assert a.size > 0
        assert np.array_equal(a, b), f"request {index} changed when decoded beside others"


def test_engine_flags_are_reported_and_int8_is_real(model_dir) -> None:
    engine = CosyVoice3Engine(model_dir, device="cpu", precision="fp32", quantize="int8", batch_slots=3)
    info = engine.version_info()
    assert (info["batch_slots"], info["quantize"], info["cuda_graphs"]) == (3, "int8", False)
    assert isinstance(engine.model.llm.layers[0].mlp.gate_up, Int8Linear)
    default = CosyVoice3Engine(model_dir, device="cpu", precision="fp32")
    assert default.version_info()["batch_slots"] == 2 and default.version_info()["quantize"] is None
    assert isinstance(default.model.llm.layers[0].mlp.gate_up, RowsLinear)
    with pytest.raises(ValueError, match="quantize"):
        CosyVoice3Engine(model_dir, device="cpu", quantize="int4")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture exists only on CUDA")
def test_cuda_graph_step_gives_the_same_tokens_as_the_plain_step() -> None:
    results = []
    for graphs in (False, True):
        llm = load_llm(FIXTURE / "llm.pt", CFG.llm, device="cuda")
        scheduler = DecodeScheduler(prepare_batched_decoding(llm, 4, 512, cuda_graphs=graphs))
        try:
            with ThreadPoolExecutor(4) as pool:
                results.append(list(pool.map(lambda i: list(scheduler.submit(request_on(llm, i))), range(4))))
        finally:
            scheduler.close()
    assert results[0] == results[1]


def request_on(llm, index: int):
    name, seed, ratio = REQUESTS[index]
    case = CASES[name]
    return llm.decode_request(case["text"], case["prompt_text"], case["prompt_speech_token"],
                              sampling=CFG.sampling, max_token_text_ratio=ratio,
                              generator=torch.Generator(device=llm.device).manual_seed(seed), sampler=never_stop)
