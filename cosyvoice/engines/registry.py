"""Pick and build the engine from one EngineConfig (declared with its flags in cosyvoice.settings):
`auto` means cosyvoice3 when a complete model dir exists, else lite."""
from __future__ import annotations

from pathlib import Path

from loguru import logger

from cosyvoice.settings import ENGINE_CHOICES, EngineConfig
from cosyvoice.engines.base import Engine
from cosyvoice.engines.cosyvoice3.model_dir import download_hint


def resolve_engine_name(name: str, model_dir: Path) -> str:
    if name != "auto":
        return name
    from cosyvoice.engines.cosyvoice3.model_dir import is_complete

    if is_complete(model_dir):
        return "cosyvoice3"
    logger.bind(req="-").info(f"no complete model dir at {model_dir}; using the embedded lite engine "
                              f"(get the neural engine with: {download_hint(model_dir)})")
    return "lite"


def create_engine(config: EngineConfig = EngineConfig()) -> Engine:
    name = resolve_engine_name(config.engine, Path(config.model_dir))
    if name == "lite":
        from cosyvoice.engines.lite import LiteEngine

        return LiteEngine()
    if name == "cosyvoice3":
        from cosyvoice.engines.cosyvoice3 import CosyVoice3Engine

        return CosyVoice3Engine(Path(config.model_dir), device=config.device, precision=config.precision,
                                llm_weights=config.llm_weights, batch_slots=config.batch_slots,
                                quantize=config.quantize, cuda_graphs=config.cuda_graphs,
                                stream_cache_gb=config.stream_cache_gb)
    raise ValueError(f"unknown engine '{name}'; choose one of {', '.join(ENGINE_CHOICES)}")
