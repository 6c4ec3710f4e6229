"""End-to-end parity: token2wav (flow + HiFT) and a whole non-streaming request with greedy decoding."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from cosyvoice.engines.cosyvoice3.config import SamplingConfig
from cosyvoice.engines.cosyvoice3.model import CosyVoice3Model, SynthesisInputs
from cosyvoice.engines.cosyvoice3.sampling import ras_sampler

from cosyvoice.parity import CaseResult, compare, exact, float64_tolerance, load_case

# top_k 1 turns the nucleus draw into an argmax; tau_r 1.1 can never trigger the repetition resample.
GREEDY = SamplingConfig(top_p=0.8, top_k=1, win_size=10, tau_r=1.1)


def run(model_dir: Path, audio_dir: Path | None = None, device: str = "cpu") -> Iterator[CaseResult]:
    model_dir = Path(model_dir)
    model = CosyVoice3Model.load(model_dir, device)

    case = load_case(model_dir, "token2wav.pt")
    wav = model.token2wav(case["token"], case["prompt_token"], case["prompt_feat"], case["embedding"],
                          finalize=case["finalize"], streaming=case["stream"], speed=case["speed"])
    yield compare("token2wav.tts_speech", wav, case["tts_speech"],
                  float64_tolerance(model_dir, "token2wav", "tts_speech"))

    case = load_case(model_dir, "tts_greedy.pt")
    inputs = SynthesisInputs(text_ids=case["text"], prompt_text_ids=case["prompt_text"],
                             llm_prompt_tokens=case["llm_prompt_speech_token"],
                             flow_prompt_tokens=case["flow_prompt_speech_token"],
                             prompt_mel=case["prompt_speech_feat"], embedding=case["flow_embedding"])
    wav, tokens = model.tts(inputs, speed=case["speed"], sampler=ras_sampler(GREEDY))
    yield exact("tts_greedy.llm_tokens", tokens, case["llm_tokens"])
    yield compare("tts_greedy.tts_speech", wav, case["tts_speech"],
                  float64_tolerance(model_dir, "tts_greedy", "tts_speech"))
