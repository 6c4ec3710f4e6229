"""Parity of our cosyvoice3 engine against cases computed by the official implementation.

Each module in this package checks one family of cases in a fixture dir's `cases/` and yields
CaseResult rows; `python -m cosyvoice.parity --model-dir DIR` runs them all.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

# Families, in the order they are reported; each module has run(model_dir, audio_dir) -> Iterator[CaseResult].
FAMILIES = ("tokenizer", "frontend", "llm", "flow", "hift", "tts")
# Families whose models can run on another device: their run() also takes device= (outputs compared on CPU).
DEVICE_FAMILIES = ("llm", "flow", "hift", "tts")

# Allowed error = this factor x the official float64-vs-float32 figure for that output.
FLOAT64_FACTOR = 10.0
FRONTEND_TOLERANCE = 1e-4


@dataclass
class CaseResult:
    name: str                      # "flow_nonstream.mel"
    max_abs_err: float | None      # None when the case could not run
    tolerance: float
    passed: bool
    note: str = ""

    def line(self) -> str:
        err = "-" if self.max_abs_err is None else f"{self.max_abs_err:.3g}"
        status = "PASS" if self.passed else ("SKIP" if self.max_abs_err is None and not self.note.startswith("error") else "FAIL")
        text = f"{self.name:<44} err {err:>10}  tol {self.tolerance:.3g}  {status}"
        return text + (f"  ({self.note})" if self.note else "")


def load_case(model_dir: Path, file: str) -> dict:
    return torch.load(Path(model_dir) / "cases" / file, map_location="cpu", weights_only=False)


def float64_tolerance(model_dir: Path, case: str, output: str, factor: float = FLOAT64_FACTOR) -> float:
    """10x the float64-vs-float32 figure the fixture's manifest gives for `case`.`output`."""
    manifest = json.loads((Path(model_dir) / "cases" / "manifest.json").read_text())
    figures = manifest[case]["reproducibility"]["float64_vs_float32_max_abs_diff"]
    return factor * float(figures[output])


def compare(name: str, ours: torch.Tensor, expected: torch.Tensor, tolerance: float) -> CaseResult:
    if tuple(ours.shape) != tuple(expected.shape):
        return CaseResult(name, float("inf"), tolerance, False,
                          f"shape {tuple(ours.shape)} != expected {tuple(expected.shape)}")
    err = (ours.detach().cpu().double() - expected.double()).abs().max().item() if ours.numel() else 0.0
    return CaseResult(name, err, tolerance, err <= tolerance)


def exact(name: str, ours, expected) -> CaseResult:
    ours_list = ours.tolist() if hasattr(ours, "tolist") else list(ours)
    expected_list = expected.tolist() if hasattr(expected, "tolist") else list(expected)
    same = ours_list == expected_list
    note = "" if same else f"first difference at {_first_diff(ours_list, expected_list)}"
    return CaseResult(name, 0.0 if same else 1.0, 0.0, same, note)


def _first_diff(a: list, b: list) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))
