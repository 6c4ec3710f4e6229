"""Peak memory (RSS) of our CosyVoice3 engine on CPU against the official code, in one run.

    python bench/memory.py --json OUT --official-src DIR --official-python PY
                           [--keep-dir DIR] [--model-dir DIR] [--tokens 250] [--threads 2] [--streams 4]
                           [--cases ours-idle,ours-oneshot,ours-streams,official-oneshot]

Every case runs in a child process of its own, so each peak is that case's alone: the child's
highest RSS seen by polling it every 20 ms and, in the child, the kernel's high-water mark (VmHWM) at
the end of each phase (loaded, voice, request; reset after each, so each phase's peak is its own),
with the RSS at that moment (what stays resident). The case's peak is the highest of these and the
child's ru_maxrss.

  ours-idle         CosyVoice3Engine on CPU, fp32, default batch slots, loaded and idle
  ours-oneshot      the same engine, one one-shot zero-shot request
  ours-streams      the engine with --streams batch slots, --streams streaming requests at once
  official-oneshot  FunAudioLLM/CosyVoice's CosyVoice3 on the same model dir, one one-shot
                    `inference_zero_shot` request

The request: prompt shared/audio/zero_shot_prompt.wav with its transcript, the 40-character Chinese
text of bench/engine_speed.py, and exactly --tokens speech tokens (random weights never stop on
their own): in both codes the sampler sees every stop id masked until --tokens tokens are out, then
gives the first stop id (ours: engine_speed's never_stop/exactly; official: the LLM's sampling_ids
wrapped the same way; both lift the 20-tokens-per-text-token length cap). The official text frontend is skipped (text_frontend=False: no ttsfrd or
wetext here); the text is plain Chinese, which that frontend would leave as it is.

Model dir: without --model-dir, the full-size random dir of bench/engine_speed.py (built in a child
process; kept in --keep-dir and reused when given). The official loader calls
Qwen2ForCausalLM.from_pretrained on CosyVoice-BlankEN, so a stub model.safetensors holding only
model.norm.weight is written there when it is missing (as in the tiny fixture): transformers
initialises the rest and llm.pt overwrites every weight. The released dir holds the full Qwen2
weights there (about 1 GB), which the official loader would read as well; our engine never reads
that file. campplus.onnx and speech_tokenizer_v3.onnx are the tiny stand-ins of tests/tiny_onnx.py
in both codes (the released ones are about 28 MB and 0.9 GB).

The official code is not part of this repository: --official-src is a checkout of
FunAudioLLM/CosyVoice with its third_party/Matcha-TTS submodule filled in, --official-python an
interpreter whose environment has what its inference imports (hyperpyyaml, transformers 4.51,
onnxruntime, openai-whisper, inflect, omegaconf, diffusers, x-transformers, conformer, einops,
librosa, lightning, modelscope) and the same torch as ours. torchaudio has no build for that torch,
so bench/official_shim/ holds a stand-in `torchaudio` with the three things the official inference
path uses (load, transforms.Resample, compliance.kaldi.fbank) on soundfile and our own
torchaudio-exact features; it is put on PYTHONPATH for the official child only.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIM = Path(__file__).resolve().parent / "official_shim"
CASES = ("ours-idle", "ours-oneshot", "ours-streams", "official-oneshot")
MARK = "MEMORY-MARK "
POLL_S = 0.02


# ---------------------------------------------------------------------------------------------
# Child side: stdlib at module level only, since the official child runs under another interpreter
# where our `cosyvoice` package must not be importable (the official one has the same name).


def _status_mib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024)      # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def released_mib() -> int | None:
    """RSS after handing freed heap back to the OS (glibc malloc_trim), or None where there is no glibc:
    what a request leaves resident that nothing uses any more, as against what is still live."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return _status_mib("VmRSS")


def mark(phase: str, **extra) -> None:
    """Tell the parent this process's peak RSS during `phase` (since the previous mark) and its RSS now,
    then restart the peak (VmHWM) from the current RSS, so the next phase's peak is its own."""
    print(MARK + json.dumps({"phase": phase, "peak_mib": _status_mib("VmHWM"), "rss_mib": _status_mib("VmRSS"),
                             **extra}), flush=True)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def child_ours(case: str, args) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(args.threads)
    from bench.engine_speed import PROMPT_TEXT, PROMPT_WAV, TEXT, exactly, never_stop
    from cosyvoice.audio.prompt import load_prompt_audio
    from cosyvoice.engines.base import Style
    from cosyvoice.engines.cosyvoice3 import CosyVoice3Engine

    slots = args.streams if case == "ours-streams" else None
    engine = CosyVoice3Engine(args.model_dir, device="cpu", precision="fp32", batch_slots=slots,
                              stream_cache_gb=args.stream_cache_gb)
    mark("loaded", batch_slots=engine.scheduler.slots, decode_batching=engine.scheduler.mode)
    if case == "ours-idle":
        return
    cfg = engine.config
    voice = engine.prepare_voice(load_prompt_audio(PROMPT_WAV).audio, PROMPT_TEXT)
    inputs, _ = engine._inputs(TEXT, voice, Style("zero_shot"))
    mark("voice")

    def sampler():
        return exactly(never_stop(cfg.sampling, cfg.llm.speech_token_size), args.tokens, cfg.llm.speech_token_size)

    def generator(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    if case == "ours-oneshot":
        wav, tokens = engine.model.tts(inputs, generator=generator(0), sampler=sampler(), max_token_text_ratio=10_000)
        mark("request", tokens=len(tokens), audio_s=round(wav.shape[1] / engine.sample_rate, 2),
             rss_after_trim_mib=released_mib())
        return

    audio = [0] * args.streams
    errors: list[BaseException] = []

    def listen(i: int) -> None:
        try:
            for piece in engine.model.tts_stream(inputs, generator=generator(i), sampler=sampler(),
                                                 max_token_text_ratio=10_000):
                audio[i] += piece.shape[1]
        except BaseException as err:  # reported below, in the main thread
            errors.append(err)

    threads = [threading.Thread(target=listen, args=(i,)) for i in range(args.streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    mark("request", streams=args.streams, audio_s=[round(n / engine.sample_rate, 2) for n in audio],
         stream_cache_gb=round(engine.stream_cache_bytes / 2**30, 2), rss_after_trim_mib=released_mib())


def child_official(args) -> None:
    """The official CosyVoice3 class on CPU: load, then one one-shot zero-shot request."""
    import torch

    torch.set_num_threads(args.threads)
    from cosyvoice.cli.cosyvoice import CosyVoice3

    cosy = CosyVoice3(str(args.model_dir))
    mark("loaded")
    llm = cosy.model.llm
    stop_id = llm.speech_token_size

    def capped(weighted_scores, decoded_tokens, sampling, ignore_eos=True):
        # Same rule as ours (bench/engine_speed.py never_stop + exactly): stop ids masked, then a stop.
        if len(decoded_tokens) >= args.tokens:
            return stop_id
        weighted_scores[stop_id:] = -float("inf")
        return llm.sampling(weighted_scores, decoded_tokens, sampling)

    llm.sampling_ids = capped
    released_inference = llm.inference

    def uncapped_inference(*args_, **kwargs):
        # The official cap is 20 speech tokens per text token; ours is lifted in the same way (10_000).
        kwargs.setdefault("max_token_text_ratio", 10_000)
        return released_inference(*args_, **kwargs)

    llm.inference = uncapped_inference
    samples = 0
    for output in cosy.inference_zero_shot(args.text, args.prompt_text, str(args.prompt_wav), stream=False,
                                           text_frontend=False):
        samples += output["tts_speech"].shape[1]
    mark("request", audio_s=round(samples / cosy.sample_rate, 2), rss_after_trim_mib=released_mib())


# ---------------------------------------------------------------------------------------------
# Parent side


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def measure(command: list[str], env: dict[str, str], cwd: Path, log) -> dict:
    """Run `command`, polling its RSS; its peak (ru_maxrss and polled), phase marks and wall time."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=log, text=True)
    marks: list[dict] = []

    def read_marks() -> None:
        for line in proc.stdout:
            if line.startswith(MARK):
                marks.append(json.loads(line[len(MARK):]))
            else:
                print(line, end="", file=log)

    reader = threading.Thread(target=read_marks, daemon=True)
    reader.start()
    polled = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        polled = max(polled, _rss_bytes(proc.pid))
        time.sleep(POLL_S)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{command[-1]!r} child failed with exit code {proc.returncode}; see the log")
    phases = {m.pop("phase"): m for m in marks}
    peak = max([round(usage.ru_maxrss / 1024), round(polled / 2**20)] + [m["peak_mib"] for m in phases.values()])
    return {"peak_rss_mib": peak, "polled_peak_rss_mib": round(polled / 2**20),
            "wall_s": round(time.perf_counter() - started, 1),
            "phases": phases}


def write_qwen_stub(model_dir: Path) -> None:
    """CosyVoice-BlankEN/model.safetensors holding only model.norm.weight (ones), for the official
    loader's from_pretrained; safetensors layout: header length, JSON header, raw little-endian data."""
    from_config = json.loads((model_dir / "CosyVoice-BlankEN" / "config.json").read_text())
    hidden = int(from_config["hidden_size"])
    target = model_dir / "CosyVoice-BlankEN" / "model.safetensors"
    if target.is_file():
        return
    header = json.dumps({"model.norm.weight": {"dtype": "F32", "shape": [hidden], "data_offsets": [0, 4 * hidden]},
                         "__metadata__": {"format": "pt"}}).encode()
    header += b" " * (-len(header) % 8)
    target.write_bytes(struct.pack("<Q", len(header)) + header + struct.pack(f"<{hidden}f", *([1.0] * hidden)))


def model_dir_for(args, temps: list) -> Path:
    from bench.engine_speed import prepare_model_dir

    model_dir = prepare_model_dir(args, temps)
    write_qwen_stub(model_dir)
    return model_dir


def child_command(python: str, case: str, args, model_dir: Path, extra: list[str] = ()) -> list[str]:
    return [python, str(Path(__file__).resolve()), "--json", "-", "--model-dir", str(model_dir),
            "--tokens", str(args.tokens), "--threads", str(args.threads), "--streams", str(args.streams),
            *(["--stream-cache-gb", str(args.stream_cache_gb)] if args.stream_cache_gb is not None else []),
            *extra, "--child", case]


def run(args) -> dict:
    sys.path.insert(0, str(ROOT))
    from bench.engine_speed import PROMPT_TEXT, PROMPT_WAV, TEXT
    from cosyvoice.engines.cosyvoice3.engine import zero_shot_prompt_text

    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown case(s): {', '.join(sorted(unknown))}")
    if "official-oneshot" in cases and (args.official_src is None or args.official_python is None):
        raise SystemExit("official-oneshot needs --official-src and --official-python")

    temps: list[tempfile.TemporaryDirectory] = []
    model_dir = model_dir_for(args, temps)
    threads = str(args.threads)
    base_env = os.environ | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(), "cpus": os.cpu_count(), "threads": args.threads,
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "model_dir": str(model_dir), "random_weights": args.model_dir is None, "tokens": args.tokens,
        "streams": args.streams, "stream_cache_gb": args.stream_cache_gb, "loadavg_start": [round(x, 2) for x in os.getloadavg()], "cases": {},
    }
    log = sys.stderr
    try:
        for case in cases:
            if case == "official-oneshot":
                src = args.official_src.resolve()
                env = base_env | {"PYTHONPATH": os.pathsep.join(
                    [str(SHIM), str(src), str(src / "third_party" / "Matcha-TTS")])}
                command = child_command(str(args.official_python), case, args, model_dir,
                                        ["--text", TEXT, "--prompt-text", zero_shot_prompt_text(PROMPT_TEXT),
                                         "--prompt-wav", str(PROMPT_WAV)])
                cwd = src
            else:
                env, command, cwd = base_env, child_command(sys.executable, case, args, model_dir), ROOT
            print(f"--- {case}", file=log, flush=True)
            result["cases"][case] = measure(command, env, cwd, log)
            print(json.dumps({case: result["cases"][case]}), file=log, flush=True)
            save(args.json, result)
    finally:
        for temp in temps:
            temp.cleanup()
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    ours, official = result["cases"].get("ours-oneshot"), result["cases"].get("official-oneshot")
    if ours and official:
        result["oneshot_ratio_ours_over_official"] = round(ours["peak_rss_mib"] / official["peak_rss_mib"], 3)
    save(args.json, result)
    return result


def save(path: Path, result: dict) -> None:
    if str(path) == "-":
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def table(result: dict) -> str:
    lines = [f"{result['date']}, {result['cpu']}, {result['threads']} threads, {result['tokens']} tokens",
             "| case | peak RSS (MiB) | loading peak | loaded RSS | request peak | RSS after | after malloc_trim | wall (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for case, row in result["cases"].items():
        loaded, request = row["phases"].get("loaded", {}), row["phases"].get("request", {})
        cells = [loaded.get("peak_mib"), loaded.get("rss_mib"), request.get("peak_mib"), request.get("rss_mib"),
                 request.get("rss_after_trim_mib")]
        lines.append(f"| {case} | {row['peak_rss_mib']} | " + " | ".join("-" if c is None else str(c) for c in cells)
                     + f" | {row['wall_s']} |")
    if "oneshot_ratio_ours_over_official" in result:
        lines.append(f"one-shot peak, ours / official: {result['oneshot_ratio_ours_over_official']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--model-dir", type=Path, help="model dir (default: full-size random weights)")
    parser.add_argument("--keep-dir", type=Path, help="build the random model dir here and keep it (reused if present)")
    parser.add_argument("--tokens", type=int, default=250, help="speech tokens per request (25 per second of audio)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, default=4, help="concurrent streaming requests (ours-streams)")
    parser.add_argument("--stream-cache-gb", type=float,
                        help="the engine's flow cache budget for all streams (default: the engine's, half the free RAM)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--official-src", type=Path, help="checkout of FunAudioLLM/CosyVoice with Matcha-TTS filled in")
    parser.add_argument("--official-python", type=Path, help="interpreter with the official code's dependencies")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--text", help=argparse.SUPPRESS)
    parser.add_argument("--prompt-text", help=argparse.SUPPRESS)
    parser.add_argument("--prompt-wav", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "official-oneshot":
        child_official(args)
        return 0
    if args.child:
        child_ours(args.child, args)
        return 0
    result = run(args)
    print(table(result))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
