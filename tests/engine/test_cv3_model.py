"""CosyVoice3 synthesis core against the official outputs of the tiny fixture."""
from __future__ import annotations

import pytest
import torch

from cosyvoice.engines.cosyvoice3.model import SILENT_TOKENS, CosyVoice3Model, SynthesisInputs
from cosyvoice.errors import EngineError
from cosyvoice.parity import float64_tolerance, load_case
from cosyvoice.parity.tts import GREEDY
from cosyvoice.engines.cosyvoice3.sampling import ras_sampler

from conftest import FIXTURE

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def model() -> CosyVoice3Model:
    return CosyVoice3Model.load(FIXTURE)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


def forced_sampler(tokens: list[int], stop: int):
    """Decode exactly `tokens`, then a stop id."""
    def sample(logp, decoded, generator):
        step = sample.calls
        sample.calls += 1
        return tokens[step] if step < len(tokens) else stop
    sample.calls = 0
    return sample


def voice_inputs(text_case: dict, flow_case: dict) -> SynthesisInputs:
    return SynthesisInputs(text_ids=text_case["text"], prompt_text_ids=text_case["prompt_text"],
                           llm_prompt_tokens=text_case["llm_prompt_speech_token"],
                           flow_prompt_tokens=flow_case["prompt_token"], prompt_mel=flow_case["prompt_feat"],
                           embedding=flow_case["embedding"])


def test_token2wav_matches_official(model):
    case = load_case(FIXTURE, "token2wav.pt")
    wav = model.token2wav(case["token"], case["prompt_token"], case["prompt_feat"], case["embedding"],
                          finalize=True, streaming=False)
    assert max_abs(wav, case["tts_speech"]) <= float64_tolerance(FIXTURE, "token2wav", "tts_speech")


def test_greedy_tts_matches_official(model):
    case = load_case(FIXTURE, "tts_greedy.pt")
    inputs = SynthesisInputs(case["text"], case["prompt_text"], case["llm_prompt_speech_token"],
                             case["flow_prompt_speech_token"], case["prompt_speech_feat"], case["flow_embedding"])
    wav, tokens = model.tts(inputs, sampler=ras_sampler(GREEDY))
    assert tokens == case["llm_tokens"].tolist()
    assert max_abs(wav, case["tts_speech"]) <= float64_tolerance(FIXTURE, "tts_greedy", "tts_speech")


def test_long_silence_runs_are_cut_to_five(model):
    silent = sorted(SILENT_TOKENS)
    decoded = [100] + silent[:8] + [200] + silent[:3] + [300]
    inputs = voice_inputs(load_case(FIXTURE, "tts_greedy.pt"), load_case(FIXTURE, "token2wav.pt"))
    kept = list(model.speech_tokens(inputs, sampler=forced_sampler(decoded, stop=6562)))
    assert kept == [100] + silent[:5] + [200] + silent[:3] + [300]


def test_streaming_equals_block_causal_render_of_official_mel(model):
    """Chunks cut at attention-block boundaries must join into exactly the one-shot block-causal
    rendering: the official flow_stream_final mel, vocoded in one go."""
    flow_case = load_case(FIXTURE, "flow_stream_final.pt")
    target = flow_case["token"][0].tolist()
    inputs = voice_inputs(load_case(FIXTURE, "tts_greedy.pt"), flow_case)
    hops: list[tuple[int, int]] = []
    chunks = list(model.tts_stream(inputs, sampler=forced_sampler(target, stop=6562),
                                   on_chunk=lambda offset, hop: hops.append((offset, hop))))

    # 23 prompt tokens: first hop 25 + 2 padding (fills whole 25-token blocks), cut once 3 more arrived.
    assert hops == [(0, 27)]
    assert len(chunks) == 2
    # The official first streaming chunk's mel gives the first chunk's audio: (2 * 27 - 8) frames of 480 samples.
    official_first = model.vocode(load_case(FIXTURE, "flow_stream_chunk.pt")["mel"], finalize=False)
    tol = float64_tolerance(FIXTURE, "token2wav", "tts_speech")
    assert max_abs(chunks[0], official_first) <= tol

    whole = torch.cat(chunks, dim=1)
    expected = model.vocode(flow_case["mel"], finalize=True)
    assert whole.shape[1] == len(target) * 2 * 480
    assert max_abs(whole, expected) <= tol


def test_streaming_hops_grow_within_a_request_and_restart_for_the_next(model, monkeypatch):
    """Chunk bookkeeping only, so flow and HiFT are replaced by shape-exact stand-ins."""
    ratio, lookahead, per_frame = model.token_mel_ratio, model.lookahead, model.samples_per_frame

    class FakeStream:
        """Numbers each mel frame after the prompt; hands out each one once, like FlowStream."""
        returned = 0

        def advance(self, tokens, *, finalize):
            n = (tokens.shape[1] - (0 if finalize else lookahead)) * ratio
            frames = torch.arange(self.returned, n, dtype=torch.float32).expand(1, 80, -1)
            self.returned = n
            return frames

    def fake_vocode(mel, *, finalize):
        frames = mel.shape[2] if finalize else mel.shape[2] - 8
        return mel[:, :1, :frames].repeat_interleave(per_frame, dim=2)[:, 0]

    monkeypatch.setattr(model, "flow_stream", lambda *voice: FakeStream())
    monkeypatch.setattr(model, "vocode", fake_vocode)
    case = load_case(FIXTURE, "token2wav.pt")
    inputs = voice_inputs(load_case(FIXTURE, "tts_greedy.pt"), case)
    tokens = (case["token"][0].tolist() * 5)[:250]

    def run() -> tuple[list[tuple[int, int]], torch.Tensor]:
        hops: list[tuple[int, int]] = []
        chunks = list(model.tts_stream(inputs, sampler=forced_sampler(tokens, stop=6562),
                                       on_chunk=lambda offset, hop: hops.append((offset, hop))))
        return hops, torch.cat(chunks, dim=1)

    hops, audio = run()
    assert hops == [(0, 27), (27, 50), (77, 100)]
    # Every frame is emitted once, in order: the stand-in's frame numbers come out as 0, 1, 2, ...
    frame_ids = audio[0, ::per_frame]
    assert frame_ids.tolist() == list(range(len(tokens) * ratio))
    assert run()[0] == hops


def test_speed_stretches_the_waveform(model):
    case = load_case(FIXTURE, "token2wav.pt")
    fast = model.token2wav(case["token"], case["prompt_token"], case["prompt_feat"], case["embedding"], speed=2.0)
    assert fast.shape[1] == int(case["token"].shape[1] * 2 / 2.0) * 480


def test_out_of_memory_names_the_stage(model, monkeypatch):
    case = load_case(FIXTURE, "token2wav.pt")

    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model.hift, "inference", exhausted)
    with pytest.raises(EngineError) as info:
        model.token2wav(case["token"], case["prompt_token"], case["prompt_feat"], case["embedding"])
    assert info.value.stage == "hift"
    assert "memory" in str(info.value)
