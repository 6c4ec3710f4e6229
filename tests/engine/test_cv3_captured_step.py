"""The captured (CUDA-graph) decode step, its logic proven on CPU: the step object owns every index tensor
the graph reads (a graph keeps raw addresses), replaying it gives the plain step's tokens, and on CUDA
(when there is one) it still does after the allocator has been churned."""
from __future__ import annotations

import gc

import pytest
import torch

from conftest import FIXTURE
from cosyvoice.engines.cosyvoice3.config import ModelConfig
from cosyvoice.engines.cosyvoice3.llm import SlotDecoder, load_llm
from cosyvoice.engines.cosyvoice3.sampling import ras_pick
from cosyvoice.engines.cosyvoice3.scheduler import CapturedStep, prepare_batched_decoding, run_eagerly
from cosyvoice.parity import load_case

torch.set_num_threads(2)

CFG = ModelConfig.from_model_dir(FIXTURE)
CASES = [load_case(FIXTURE, f"{name}.pt") for name in ("llm_ras_seeded", "llm_teacher_forced", "llm_greedy")]


def never_stop(logp, decoded, generator) -> int:
    logp[CFG.llm.speech_token_size:] = -float("inf")
    return ras_pick(logp, decoded, CFG.sampling, generator)


def requests(llm, count: int = 3):
    return [llm.decode_request(case["text"], case["prompt_text"], case["prompt_speech_token"], sampling=CFG.sampling,
                               max_token_text_ratio=2.0 + index,
                               generator=torch.Generator(device=llm.device).manual_seed(index), sampler=never_stop)
            for index, case in enumerate(CASES[:count])]


def decode_all(decoder: SlotDecoder, llm, churn=lambda: None) -> dict[int, list[int]]:
    tokens: dict[int, list[int]] = {}
    with torch.inference_mode():
        for slot, request in enumerate(requests(llm)):
            tokens[slot] = [decoder.admit(request, slot)]
        while decoder.busy():
            churn()
            for slot, token in decoder.step().items():
                if token is not None:
                    tokens[slot].append(token)
    return tokens


def test_the_captured_step_owns_every_index_tensor_it_reads() -> None:
    llm = load_llm(FIXTURE / "llm.pt", CFG.llm)
    decoder = SlotDecoder(llm, slots=4, capacity=512, exact=False, compact=False)
    with torch.inference_mode():
        step = CapturedStep(llm, decoder.cache, capture=run_eagerly)
    owned = {id(t) for t in step.owned_inputs()}
    assert {id(step.rows.slots), id(step.rows.positions), id(step.tokens)} <= owned
    assert step.rows.ends_tensor is None and torch.equal(step.slots, torch.arange(4))


def test_replaying_the_captured_step_gives_the_plain_steps_tokens() -> None:
    llm = load_llm(FIXTURE / "llm.pt", CFG.llm)
    plain = decode_all(SlotDecoder(llm, slots=4, capacity=512, exact=False, compact=False), llm)
    captured = SlotDecoder(llm, slots=4, capacity=512, exact=False, compact=False)
    with torch.inference_mode():
        captured.step_fn = CapturedStep(llm, captured.cache, capture=run_eagerly)
    garbage = []
    replayed = decode_all(captured, llm, churn=lambda: garbage.append(torch.full((4096,), 7)))
    assert replayed == plain and min(len(t) for t in plain.values()) > 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs exist only on CUDA")
def test_cuda_graph_tokens_survive_allocator_churn() -> None:
    llm = load_llm(FIXTURE / "llm.pt", CFG.llm, device="cuda")
    plain = decode_all(prepare_batched_decoding(llm, 4, 512, cuda_graphs=False), llm)
    decoder = prepare_batched_decoding(llm, 4, 512, cuda_graphs=True)
    assert isinstance(decoder.step_fn, CapturedStep)
    gc.collect()

    def churn() -> None:
        # Allocate and free many blocks of the sizes a step uses, so freed addresses get reused.
        blocks = [torch.randint(0, 4, (n,), device="cuda") for n in (4, 8, 64, 4096) for _ in range(16)]
        del blocks
        load_llm(FIXTURE / "llm.pt", CFG.llm, device="cuda")   # another model comes and goes

    assert decode_all(decoder, llm, churn) == plain
