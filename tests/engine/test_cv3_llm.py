"""CosyVoice3 LLM: parity with the official model, strict llm.pt loading, per-request sampling state."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import FIXTURE
from cosyvoice.engines.cosyvoice3.config import ModelConfig, SamplingConfig
from cosyvoice.engines.cosyvoice3 import quantize as quantize_module
from cosyvoice.engines.cosyvoice3.llm import load_llm
from cosyvoice.engines.cosyvoice3.quantize import quantize_int8
from cosyvoice.errors import ModelDirError
from cosyvoice.parity import llm as llm_parity
from cosyvoice.parity import float64_tolerance, load_case

torch.set_num_threads(2)

LLM_KEY = "llm.model.model.layers.1.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return ModelConfig.from_model_dir(FIXTURE)


@pytest.fixture(scope="module")
def model(cfg: ModelConfig):
    return load_llm(FIXTURE / "llm.pt", cfg.llm)


@pytest.fixture(scope="module")
def request_case() -> dict:
    return load_case(FIXTURE, "llm_ras_seeded.pt")


def _tokens(model, case: dict, sampling: SamplingConfig, seed: int | None, **kwargs) -> list[int]:
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return list(model.generate(case["text"], case["prompt_text"], case["prompt_speech_token"],
                               sampling=sampling, generator=generator, **kwargs))


def test_parity_family_passes() -> None:
    results = list(llm_parity.run(FIXTURE, None))
    names = {r.name for r in results}
    assert {"llm_teacher_forced.logits", "llm_greedy.tokens", "llm_greedy.stop_token",
            "llm_ras_seeded.tokens"} <= names
    failed = [r.line() for r in results if not r.passed]
    assert not failed, "\n".join(failed)


# ---- strict loading -------------------------------------------------------------------------

def _model_dir_with(tmp_path: Path, state: dict | None = None, raw: bytes | None = None) -> Path:
    shutil.copy(FIXTURE / "cosyvoice3.yaml", tmp_path / "cosyvoice3.yaml")
    (tmp_path / "CosyVoice-BlankEN").symlink_to(FIXTURE / "CosyVoice-BlankEN")
    if raw is not None:
        (tmp_path / "llm.pt").write_bytes(raw)
    else:
        torch.save(state, tmp_path / "llm.pt")
    return tmp_path


def _fixture_state() -> dict:
    return torch.load(FIXTURE / "llm.pt", map_location="cpu", weights_only=True)


def _load(model_dir: Path) -> None:
    load_llm(model_dir / "llm.pt", ModelConfig.from_model_dir(model_dir).llm)


def test_missing_key(tmp_path: Path) -> None:
    state = _fixture_state()
    del state[LLM_KEY]
    with pytest.raises(ModelDirError, match=rf"llm\.pt: missing key '{LLM_KEY}'"):
        _load(_model_dir_with(tmp_path, state))


def test_extra_key(tmp_path: Path) -> None:
    state = _fixture_state()
    state["llm_embedding.weight"] = torch.zeros(2, 16)  # a CosyVoice2 LLM has this table
    with pytest.raises(ModelDirError, match=r"llm\.pt: unexpected key 'llm_embedding\.weight'"):
        _load(_model_dir_with(tmp_path, state))


def test_wrong_shape(tmp_path: Path) -> None:
    state = _fixture_state()
    state[LLM_KEY] = state[LLM_KEY][:-1]
    with pytest.raises(ModelDirError, match=rf"llm\.pt: key '{LLM_KEY}' has shape \(39, 16\)"):
        _load(_model_dir_with(tmp_path, state))


def test_truncated_file(tmp_path: Path) -> None:
    raw = (FIXTURE / "llm.pt").read_bytes()
    with pytest.raises(ModelDirError, match=r"llm\.pt: not a readable torch checkpoint"):
        _load(_model_dir_with(tmp_path, raw=raw[: len(raw) // 2]))


def test_missing_file(tmp_path: Path) -> None:
    model_dir = _model_dir_with(tmp_path, raw=b"")
    (model_dir / "llm.pt").unlink()
    with pytest.raises(ModelDirError, match=r"llm\.pt: not found"):
        _load(model_dir)


def test_tied_lm_head_is_not_kept(model) -> None:
    # Qwen's 151936-row head is never needed: the only big table kept is the input embedding.
    big = [name for name, p in model.named_parameters() if p.shape[0] == model.cfg.text_vocab_size]
    assert big == ["embed_tokens.weight"]


# ---- decoding -------------------------------------------------------------------------------

def test_same_seed_same_tokens_and_global_rng_untouched(model, cfg: ModelConfig, request_case: dict) -> None:
    before = torch.get_rng_state()
    first = _tokens(model, request_case, cfg.sampling, seed=7)
    second = _tokens(model, request_case, cfg.sampling, seed=7)
    other = _tokens(model, request_case, cfg.sampling, seed=8)
    assert torch.equal(before, torch.get_rng_state())  # every draw came from the request's generator
    assert first and first == second
    assert other != first


def test_interleaved_requests_do_not_interfere(model, cfg: ModelConfig, request_case: dict) -> None:
    short = load_case(FIXTURE, "llm_teacher_forced.pt")
    alone_a = _tokens(model, request_case, cfg.sampling, seed=1)
    alone_b = _tokens(model, short, cfg.sampling, seed=2)

    runs = {
        "a": model.generate(request_case["text"], request_case["prompt_text"], request_case["prompt_speech_token"],
                            sampling=cfg.sampling, generator=torch.Generator().manual_seed(1)),
        "b": model.generate(short["text"], short["prompt_text"], short["prompt_speech_token"],
                            sampling=cfg.sampling, generator=torch.Generator().manual_seed(2)),
    }
    got: dict[str, list[int]] = {"a": [], "b": []}
    while runs:
        for name in list(runs):
            token = next(runs[name], None)
            if token is None:
                del runs[name]
            else:
                got[name].append(token)
    assert got == {"a": alone_a, "b": alone_b}


def test_length_limits_and_released_min_length_quirk(model, cfg: ModelConfig, request_case: dict) -> None:
    seen: list[torch.Tensor] = []

    def never_stop(logp: torch.Tensor, decoded: list[int], generator) -> int:
        seen.append(logp.clone())
        return 0

    text_len = request_case["text"].shape[1]
    tokens = _tokens(model, request_case, cfg.sampling, seed=None, sampler=never_stop,
                     min_token_text_ratio=1.0, max_token_text_ratio=2.0)
    assert len(tokens) == 2 * text_len  # max_len = len(text) * max ratio, prompt text not counted
    sos, eos = cfg.llm.sos_id, cfg.llm.eos_id
    # Before min_len only id speech_token_size (sos in CosyVoice3) is masked; eos stays possible.
    assert all(torch.isinf(step[sos]) and torch.isfinite(step[eos]) for step in seen[:text_len])
    assert all(torch.isfinite(step[sos]) for step in seen[text_len:])


def test_stop_id_ends_decoding_and_is_not_yielded(model, cfg: ModelConfig, request_case: dict) -> None:
    script = [5, 6, cfg.llm.eos_id, 7]
    tokens = _tokens(model, request_case, cfg.sampling, seed=None,
                     sampler=lambda logp, decoded, generator: script[len(decoded)])
    assert tokens == [5, 6]


def test_empty_prompt_speech(model, cfg: ModelConfig, request_case: dict) -> None:
    tokens = list(model.generate(request_case["text"], request_case["prompt_text"],
                                 torch.zeros(1, 0, dtype=torch.int32), sampling=cfg.sampling,
                                 generator=torch.Generator().manual_seed(3)))
    assert all(0 <= t < cfg.llm.speech_token_size for t in tokens)


def test_text_without_endofprompt_is_refused(model, cfg: ModelConfig, request_case: dict) -> None:
    with pytest.raises(ValueError, match="endofprompt"):
        model.generate(request_case["text"], torch.zeros(1, 0, dtype=torch.int32),
                       request_case["prompt_speech_token"], sampling=cfg.sampling)


@pytest.mark.parametrize("packed", [True, False], ids=["fbgemm", "fallback"])
def test_int8_keeps_predictions(cfg: ModelConfig, packed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # x86 CPUs run the fbgemm-packed product; other machines the weight-only kernels. Both must hold up.
    if packed and torch.backends.quantized.engine not in ("x86", "fbgemm"):
        pytest.skip("this torch build has no x86 int8 engine")
    if not packed:
        monkeypatch.setattr(quantize_module, "_pack_for_fbgemm", lambda *args: None)
    case = load_case(FIXTURE, "llm_teacher_forced.pt")
    forced = case["forced_tokens"].tolist()
    quantized = quantize_int8(load_llm(FIXTURE / "llm.pt", cfg.llm))
    assert (quantized.layers[0].mlp.down.packed is not None) == packed
    logits: list[torch.Tensor] = []
    list(quantized.generate(case["text"], case["prompt_text"], case["prompt_speech_token"], sampling=cfg.sampling,
                            sampler=lambda logp, decoded, g: forced[len(decoded)] if len(decoded) < len(forced)
                            else cfg.llm.eos_id,
                            on_logits=lambda step: logits.append(step.clone())))
    ours = torch.stack(logits[: len(forced)])
    expected = case["logits"]
    assert (ours - expected).abs().max() < 0.1 * expected.abs().max()
    assert (ours.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.75


# ---- the prefill / decode_one_token seam ----------------------------------------------------

def _teacher_forced_logits(model, case: dict, capacity: int) -> torch.Tensor:
    """Official teacher-forced decoding driven through prefill() and decode_one_token() directly,
    the way a scheduler would drive them (no generate loop)."""
    embeds = model.prefill_embeddings(case["text"], case["prompt_text"], case["prompt_speech_token"])
    cache = model.new_cache(capacity)
    steps = [model.prefill(embeds, cache)[0]]
    position = embeds.shape[1]
    for token in case["forced_tokens"].tolist()[:-1]:
        steps.append(model.decode_one_token(torch.tensor([[token]]), position, cache)[0])
        position += 1
    return torch.stack(steps)


def test_prefill_and_decode_one_token_reproduce_the_official_logits(model) -> None:
    case = load_case(FIXTURE, "llm_teacher_forced.pt")
    tolerance = float64_tolerance(FIXTURE, "llm_teacher_forced", "logits")
    n_prompt = case["text"].shape[1] + case["prompt_text"].shape[1] + case["prompt_speech_token"].shape[1] + 2
    roomy = _teacher_forced_logits(model, case, capacity=n_prompt + 512)
    assert roomy.shape == case["logits"].shape
    assert (roomy - case["logits"]).abs().max() <= tolerance
    # A cache that starts too small grows while decoding and must give the same numbers.
    tight = _teacher_forced_logits(model, case, capacity=1)
    assert torch.equal(tight, roomy)
