"""One memory budget for the flow caches of every stream in flight: streams that do not fit stop caching
(same audio, slower) instead of running the device out of memory, and finished streams give it back."""
from __future__ import annotations

import gc
from concurrent.futures import ThreadPoolExecutor

import torch

from conftest import FIXTURE
from cosyvoice.engines.cosyvoice3.flow import FlowStream, StreamCacheBudget
from cosyvoice.engines.cosyvoice3.model import CosyVoice3Model
from test_cv3_stream import forced, speech_tokens, voice_with_prompt

torch.set_num_threads(2)


class WatchedBudget(StreamCacheBudget):
    """Records the most bytes held at once."""
    most = 0

    def claim(self, key: int, nbytes: int) -> bool:
        granted = super().claim(key, nbytes)
        self.most = max(self.most, self.used_bytes)
        return granted


def streamed(model: CosyVoice3Model, inputs, tokens) -> torch.Tensor:
    return torch.cat(list(model.tts_stream(inputs, sampler=forced(tokens))), dim=1)


def test_streams_share_one_budget_keep_their_audio_and_release_it() -> None:
    model = CosyVoice3Model.load(FIXTURE)
    model.flow.double()                       # float64 flow: cached and re-solved frames agree to the bit
    inputs, tokens = voice_with_prompt(69), speech_tokens()[:120]
    alone = streamed(model, inputs, tokens)
    stream = model.flow_stream(inputs.flow_prompt_tokens, inputs.prompt_mel, inputs.embedding)
    one_stream = 300 * stream.bytes_per_frame()          # room for about one stream's caches, not three
    model.stream_budget = budget = WatchedBudget(one_stream)
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda _: streamed(model, inputs, tokens), range(3)))
    for audio in together:
        torch.testing.assert_close(audio, alone, rtol=0, atol=1e-6)
    assert 0 < budget.most <= one_stream
    gc.collect()
    assert budget.used_bytes == 0                         # every finished stream gave its claim back


def test_a_dropped_stream_gives_its_claim_back() -> None:
    model = CosyVoice3Model.load(FIXTURE)
    model.stream_budget = budget = StreamCacheBudget(1 << 40)
    inputs, tokens = voice_with_prompt(69), speech_tokens()
    chunks = model.tts_stream(inputs, sampler=forced(tokens))
    next(chunks)
    assert budget.used_bytes > 0
    chunks.close()                                        # the listener went away mid-stream
    del chunks
    gc.collect()
    assert budget.used_bytes == 0


def own_bytes(stream: FlowStream) -> int:
    """Bytes of the key/value buffers the stream holds of its own (not a voice prefix it only reads)."""
    return sum(tensor.untyped_storage().nbytes() for cache in stream.caches if not cache.shared
               for tensor in (*cache.keys, *cache.values))


def test_the_budget_counts_what_a_stream_holds_after_every_chunk(monkeypatch) -> None:
    model = CosyVoice3Model.load(FIXTURE)
    inputs, tokens = voice_with_prompt(69), speech_tokens()
    probe = model.flow_stream(inputs.flow_prompt_tokens, inputs.prompt_mel, inputs.embedding)
    model.stream_budget = budget = StreamCacheBudget(300 * probe.bytes_per_frame())   # refuses the later chunks
    held: list[tuple[bool, bool, int, int]] = []     # (final, frames cached, own bytes, bytes counted)
    advance = FlowStream.advance

    def watched(stream: FlowStream, token: torch.Tensor, *, finalize: bool) -> torch.Tensor:
        mel = advance(stream, token, finalize=finalize)
        held.append((finalize, stream.cached_frames == stream.returned, own_bytes(stream), budget.used_bytes))
        return mel

    monkeypatch.setattr(FlowStream, "advance", watched)
    streamed(model, inputs, tokens)
    assert [cached for final, cached, _, _ in held if not final] == [True, False, False]   # one cached, two refused
    for _, _, own, counted in held:
        assert own == counted                 # refused and final chunks grow no buffer the budget does not count
    assert held[-1][2:] == (0, 0)             # the last chunk leaves nothing cached behind
