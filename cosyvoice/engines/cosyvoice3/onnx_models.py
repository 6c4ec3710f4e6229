"""The two released onnx models of the CosyVoice3 frontend, run through onnxruntime.

* campplus.onnx (CAM++ speaker verification net): input (B, T, 80) float32 = the Kaldi fbank of
  the 16 kHz prompt with each bin's mean over time removed (features.campplus_input); output
  (B, 192) float32 speaker embedding, not normalised (the flow L2-normalises it, the LLM ignores it).
* speech_tokenizer_v3.onnx (S3 tokenizer): inputs `feats` (1, 128, T) float32 = whisper log-mel
  of the 16 kHz prompt at 100 frames/s, and `feats_length` (1,) int32 = T; output `indices` with
  25 tokens per second (about T / 4), ids in [0, 6561). The official frontend refuses prompts
  longer than 30 s here (whisper-style encoder limit), so does `SpeechTokenizer.tokens`.

Input/output names are read from each session rather than assumed. Facts about how the official
frontend combines the results (zero-shot prompt alignment) are in `features.align_prompt`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from torch import Tensor

from cosyvoice.engines.cosyvoice3.model_dir import download_hint
from cosyvoice.errors import ModelDirError, UserInputError

MAX_PROMPT_SECONDS = 30.0
WHISPER_FRAMES_PER_SECOND = 100


def _providers(device: str) -> list:
    """CUDA first when the device asks for it and this onnxruntime build has it, CPU always last."""
    import onnxruntime as ort

    providers: list = []
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(str(device).split(":", 1)[1]) if ":" in str(device) else 0
        providers.append(("CUDAExecutionProvider", {"device_id": index}))
    elif str(device).startswith("cuda"):
        logger.bind(req="-").info("onnxruntime has no CUDA provider here: the speech tokenizer and campplus run on "
                                  "the CPU (pip install onnxruntime-gpu in place of onnxruntime to run them on the GPU)")
    providers.append("CPUExecutionProvider")
    return providers


def _default_threads() -> int:
    # Feature extraction is a small part of a request; do not fight torch for every core.
    return max(1, min(4, torch.get_num_threads()))


class OnnxModel:
    """One onnxruntime session over `path`; a missing or unreadable file is a ModelDirError."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelDirError(f"{self.path.name} is missing from {self.path.parent} "
                                f"(get the model with: {download_hint(self.path.parent)})")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or _default_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3                      # errors only; ort's warnings are noise here
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                                providers=_providers(device))
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise ModelDirError(f"{self.path.name} in {self.path.parent} cannot be loaded by onnxruntime "
                                f"({type(err).__name__}: {str(err).strip()[:200]}); download it again with: "
                                f"{download_hint(self.path.parent)}") from err
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()

    def _run(self, feeds: list[np.ndarray]) -> np.ndarray:
        if len(feeds) != len(self.input_names):
            raise ModelDirError(f"{self.path.name} takes {len(self.input_names)} inputs "
                                f"({', '.join(self.input_names)}), expected {len(feeds)}")
        return self.session.run([self.output_names[0]], dict(zip(self.input_names, feeds)))[0]


class CampPlus(OnnxModel):
    """Speaker embedding from the mean-normalised Kaldi fbank."""

    def embed(self, fbank: Tensor) -> Tensor:
        """(1, T, 80) or (T, 80) float -> (1, 192) float32 on the CPU."""
        if fbank.dim() == 2:
            fbank = fbank.unsqueeze(0)
        feats = fbank.detach().to("cpu", torch.float32).contiguous().numpy()
        embedding = self._run([feats])
        return torch.from_numpy(np.ascontiguousarray(embedding, dtype=np.float32)).reshape(1, -1)


class SpeechTokenizer(OnnxModel):
    """Discrete speech tokens (25 per second) from the whisper log-mel."""

    def tokens(self, log_mel: Tensor, length: int | Tensor | None = None) -> Tensor:
        """(1, 128, T) float, length T -> (1, T_tok) int64 on the CPU.

        Raises UserInputError for more than 30 s of audio (T > 3000), as the official frontend.
        """
        frames = log_mel.shape[-1]
        if length is None:
            length = frames
        length = int(length.reshape(-1)[0].item()) if isinstance(length, Tensor) else int(length)
        seconds = length / WHISPER_FRAMES_PER_SECOND
        if seconds > MAX_PROMPT_SECONDS:
            raise UserInputError(f"the prompt audio is {seconds:.1f} s long; the speech tokenizer takes at most "
                                 f"{MAX_PROMPT_SECONDS:.0f} s, use a shorter recording")
        feats = log_mel.detach().to("cpu", torch.float32).contiguous().numpy()
        ids = self._run([feats, np.array([length], dtype=np.int32)])
        return torch.from_numpy(np.asarray(ids).astype(np.int64).reshape(1, -1))
