"""Pick and build the engine from one EngineConfig: `auto` means cosyvoice3 when a complete model dir
exists, else lite. add_engine_args/EngineConfig.from_args are the argparse side front ends use."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

from loguru import logger

from .base import Engine
from .cosyvoice3.model_dir import DEFAULT_MODEL_DIR, LLM_WEIGHTS, download_hint

ENGINE_CHOICES = ("auto", "lite", "cosyvoice3")
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Flags every front end (WebUI, CLI, benchmarks) shares for choosing and placing the engine."""
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                        help="auto: cosyvoice3 when --model-dir is complete, else the embedded lite engine")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="auto: on CUDA the LLM in bf16 (fp16 without native bf16), the flow in fp16, HiFT fp32; "
                             "fp32 on CPU (see README, Precision)")
    parser.add_argument("--llm-weights", default=LLM_WEIGHTS,
                        help="LLM checkpoint in the model dir: llm.pt, or llm.rl.pt where the dir has it")
    parser.add_argument("--batch-slots", type=int, default=None,
                        help="requests decoded together by the LLM (default 4 on CUDA, 2 on CPU)")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="int8 LLM projections (fbgemm, CPU only); faster, nearly the same tokens")
    parser.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                        help="run the one-token decode step without CUDA graph capture")
    parser.add_argument("--stream-cache-gb", type=float, default=None,
                        help="memory for the flow caches of all streaming requests together (default: half the "
                             "device's free memory at start); when full, streams stop caching (slower, same audio)")


@dataclass(frozen=True)
class EngineConfig:
    """Everything that chooses and places the engine; built once by a front end and passed in whole."""
    engine: str = "auto"                 # auto: cosyvoice3 when model_dir is complete, else lite
    model_dir: Path = DEFAULT_MODEL_DIR
    device: str = "auto"
    precision: str = "auto"
    llm_weights: str = LLM_WEIGHTS
    batch_slots: int | None = None       # None: 4 on CUDA, 2 on CPU
    quantize: str | None = None          # None or "int8" (CPU)
    cuda_graphs: bool = True
    stream_cache_gb: float | None = None   # None: half the device's free memory at start

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "EngineConfig":
        """The config from parsed add_engine_args flags."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def engine_from_args(args: argparse.Namespace) -> Engine:
    return create_engine(EngineConfig.from_args(args))


def resolve_engine_name(name: str, model_dir: Path) -> str:
    if name != "auto":
        return name
    from .cosyvoice3.model_dir import is_complete

    if is_complete(model_dir):
        return "cosyvoice3"
    logger.bind(req="-").info(f"no complete model dir at {model_dir}; using the embedded lite engine "
                              f"(get the neural engine with: {download_hint(model_dir)})")
    return "lite"


def create_engine(config: EngineConfig = EngineConfig()) -> Engine:
    name = resolve_engine_name(config.engine, Path(config.model_dir))
    if name == "lite":
        from .lite import LiteEngine

        return LiteEngine()
    if name == "cosyvoice3":
        from .cosyvoice3 import CosyVoice3Engine

        return CosyVoice3Engine(Path(config.model_dir), device=config.device, precision=config.precision,
                                llm_weights=config.llm_weights, batch_slots=config.batch_slots,
                                quantize=config.quantize, cuda_graphs=config.cuda_graphs,
                                stream_cache_gb=config.stream_cache_gb)
    raise ValueError(f"unknown engine '{name}'; choose one of {', '.join(ENGINE_CHOICES)}")
