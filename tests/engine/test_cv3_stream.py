"""Streaming that does not redo its past: each chunk solves only its new mel frames (and a voice's
prompt frames once per voice), and the audio is what re-rendering every window would give.

Exactness is checked with the flow in float64, where the two ways agree to the last bit. In float32
they agree within rounding (mel within 1e-5); the tiny fixture's random-weight HiFT amplifies mel
rounding into audio differences of ~1e-3, as the official code's own float32-vs-float64 figure for
this fixture shows (3e-3), so float32 audio is held to the fixture's float-noise tolerance."""
from __future__ import annotations

import pytest
import torch

from cosyvoice.engines.cosyvoice3 import model as model_module
from cosyvoice.engines.cosyvoice3.model import CosyVoice3Model, SynthesisInputs
from cosyvoice.parity import float64_tolerance, load_case

from conftest import FIXTURE

torch.set_num_threads(2)
N_TOKENS = 250          # 10 s of audio: chunks after 28, 78 and 178 tokens, then the final one


@pytest.fixture(scope="module")
def model() -> CosyVoice3Model:
    return CosyVoice3Model.load(FIXTURE)


@pytest.fixture(scope="module")
def model64() -> CosyVoice3Model:
    """The fixture model with its flow in float64 (HiFT stays float32)."""
    exact = CosyVoice3Model.load(FIXTURE)
    exact.flow.double()
    return exact


def voice_with_prompt(n_tokens: int) -> SynthesisInputs:
    """The fixture's voice with its prompt said over and over, cut to n_tokens (and 2 mel frames each)."""
    text, flow = load_case(FIXTURE, "tts_greedy.pt"), load_case(FIXTURE, "token2wav.pt")
    return SynthesisInputs(text_ids=text["text"], prompt_text_ids=text["prompt_text"],
                           llm_prompt_tokens=text["llm_prompt_speech_token"],
                           flow_prompt_tokens=flow["prompt_token"].repeat(1, 4)[:, :n_tokens],
                           prompt_mel=flow["prompt_feat"].repeat(1, 4, 1)[:, :2 * n_tokens],
                           embedding=flow["embedding"])


@pytest.fixture(scope="module")
def long_voice() -> SynthesisInputs:
    """A 69-token prompt: two whole attention blocks of it lie before any speech token can reach them."""
    return voice_with_prompt(69)


def speech_tokens() -> list[int]:
    return (load_case(FIXTURE, "token2wav.pt")["token"][0].tolist() * 20)[:N_TOKENS]


def forced(tokens: list[int]):
    def sample(logp, decoded, generator):
        return tokens[len(decoded)] if len(decoded) < len(tokens) else 6562
    return sample


def stream(model: CosyVoice3Model, inputs: SynthesisInputs, tokens: list[int]) -> tuple[list[torch.Tensor], list]:
    hops: list[tuple[int, int]] = []
    chunks = list(model.tts_stream(inputs, sampler=forced(tokens), on_chunk=lambda o, h: hops.append((o, h))))
    return chunks, hops


def rerendered(model: CosyVoice3Model, inputs: SynthesisInputs, tokens: list[int], hops,
               mels: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """How streaming worked before: every chunk re-runs the flow over all tokens so far and keeps the
    new frames, and HiFT over all frames so far and keeps the new samples. `mels` gets each chunk's mel."""
    ratio, lookahead = model.token_mel_ratio, model.lookahead
    voice = (inputs.flow_prompt_tokens, inputs.prompt_mel, inputs.embedding)
    mel = torch.zeros(1, 80, 0)
    pieces, emitted = [], 0
    for offset, hop in hops:
        window = torch.tensor([tokens[:offset + hop + lookahead]])
        new = model.flow_mel(window, *voice, streaming=True, finalize=False)[:, :, offset * ratio:]
        if mels is not None:
            mels.append(new)
        mel = torch.cat([mel, new], dim=2)
        speech = model.vocode(mel, finalize=False)
        pieces.append(speech[:, emitted:])
        emitted = speech.shape[1]
    offset = hops[-1][0] + hops[-1][1]
    new = model.flow_mel(torch.tensor([tokens]), *voice, streaming=True, finalize=True)[:, :, offset * ratio:]
    if mels is not None:
        mels.append(new)
    mel = torch.cat([mel, new], dim=2)
    pieces.append(model.vocode(mel, finalize=True)[:, emitted:])
    return pieces


def assert_close(ours: list[torch.Tensor], reference: list[torch.Tensor], tolerance: float = 1e-5) -> None:
    assert [c.shape for c in ours] == [c.shape for c in reference]
    for a, b in zip(ours, reference):
        assert (a.double() - b.double()).abs().max().item() <= tolerance


def capture_stream_mel(model: CosyVoice3Model, monkeypatch) -> list[torch.Tensor]:
    mels: list[torch.Tensor] = []
    original = model.stream_mel

    def recording(*args, **kwargs):
        mels.append(original(*args, **kwargs))
        return mels[-1]

    monkeypatch.setattr(model, "stream_mel", recording)
    return mels


@pytest.mark.parametrize("prompt_tokens, expected_hops", [
    (69, [(0, 31), (31, 50), (81, 100)]),   # 6 tokens fill the prompt's last block: first hop 25 + 6
    (60, [(0, 15), (15, 50), (65, 100)]),   # 15 tokens fill it (over half a block): the first chunk is cut there
])
def test_streamed_audio_equals_rerendering_every_window(model64, prompt_tokens, expected_hops):
    voice = voice_with_prompt(prompt_tokens)
    tokens = speech_tokens()
    chunks, hops = stream(model64, voice, tokens)
    assert hops == expected_hops
    assert sum(c.shape[1] for c in chunks) == N_TOKENS * 2 * 480
    assert_close(chunks, rerendered(model64, voice, tokens, hops))


def test_float32_stream_is_the_rerendering_within_rounding(model, long_voice, monkeypatch):
    tokens = speech_tokens()
    ours_mel = capture_stream_mel(model, monkeypatch)
    chunks, hops = stream(model, long_voice, tokens)
    reference_mel: list[torch.Tensor] = []
    reference = rerendered(model, long_voice, tokens, hops, reference_mel)
    assert_close(ours_mel, reference_mel, 1e-5)
    assert_close(chunks, reference, float64_tolerance(FIXTURE, "token2wav", "tts_speech"))


def count_solved_frames(model: CosyVoice3Model, monkeypatch) -> list[int]:
    solved: list[int] = []
    estimator = model.flow.estimator
    original = estimator.velocity_after

    def counting(x, *args, **kwargs):
        solved.append(x.shape[-1])
        return original(x, *args, **kwargs)

    monkeypatch.setattr(estimator, "velocity_after", counting)
    return solved


def test_each_frame_is_solved_once_and_the_voice_prompt_once_per_voice(model64, long_voice, monkeypatch):
    model = model64
    model.forget_voice_prefixes()
    solved = count_solved_frames(model, monkeypatch)
    tokens = speech_tokens()
    prompt_frames = long_voice.prompt_mel.shape[1]
    first, _ = stream(model, long_voice, tokens)
    # Every frame (prompt and speech) once per solver step: 10 steps.
    assert sum(solved) == 10 * (prompt_frames + N_TOKENS * 2)

    solved.clear()
    second, _ = stream(model, long_voice, tokens)
    # The same voice again: its first 100 prompt frames (two whole blocks no speech token reaches) are
    # not solved again, and the audio is the same.
    assert sum(solved) == 10 * (prompt_frames - 100 + N_TOKENS * 2)
    assert_close(second, first)


def test_a_stream_over_its_cache_budget_keeps_the_same_audio(model64, long_voice, monkeypatch):
    model = model64
    tokens = speech_tokens()
    reference, hops = stream(model, long_voice, tokens)
    solved = count_solved_frames(model, monkeypatch)
    # No room beyond the voice prefix: every chunk solves again from the end of the prefix.
    monkeypatch.setattr(model_module, "STREAM_CACHE_BYTES", 1)
    capped, capped_hops = stream(model, long_voice, tokens)
    assert capped_hops == hops
    assert_close(capped, reference)
    assert sum(solved) > 10 * (long_voice.prompt_mel.shape[1] - 100 + N_TOKENS * 2)
