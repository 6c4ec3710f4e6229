"""Voice lookup cost with the library's index vs. re-reading every voice.json (the old `get`), as a
same-run ratio.

    python bench/voice_lookup.py [--voices 200] [--lookups 200]

Builds a library of N voices in a temp folder (one real save, the rest copies with their own id and
name, so no audio is decoded N times), then times `resolve(name)` with the index warm against a
forced re-read before each lookup (what every lookup cost before the index).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT_WAV = ROOT.parent / "shared" / "audio" / "zero_shot_prompt.wav"


def build(root: Path, count: int):
    from cosyvoice.voices.names import new_voice_id
    from cosyvoice.voices.library import VoiceLibrary

    library = VoiceLibrary(root)
    first = library.add("voice 0", PROMPT_WAV)
    for n in range(1, count):
        voice_id = new_voice_id()
        shutil.copytree(first.folder, root / voice_id)
        meta = json.loads((root / voice_id / "voice.json").read_text())
        meta.update(id=voice_id, name=f"voice {n}")
        (root / voice_id / "voice.json").write_text(json.dumps(meta))
    return VoiceLibrary(root)


def per_lookup_ms(library, names: list[str], reread: bool) -> float:
    started = time.perf_counter()
    for name in names:
        if reread:
            library._index_stamp = None          # what the old get did: every voice.json read again
        library.resolve(name)
    return (time.perf_counter() - started) / len(names) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", type=int, default=200)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from loguru import logger

    logger.remove()
    with tempfile.TemporaryDirectory() as tmp:
        library = build(Path(tmp) / "voices", args.voices)
        names = [f"voice {n % args.voices}" for n in range(args.lookups)]
        indexed, reread = [], []
        for _ in range(args.repeats):           # interleaved, so load on the machine hits both alike
            reread.append(per_lookup_ms(library, names[: max(1, args.lookups // 10)], reread=True))
            indexed.append(per_lookup_ms(library, names, reread=False))
    fast, slow = statistics.median(indexed), statistics.median(reread)
    print(f"{args.voices} voices: resolve() {fast:.3f} ms with the index, {slow:.2f} ms re-reading every "
          f"voice.json; index = {fast / slow * 100:.1f} % of the re-read cost ({slow / fast:.0f}x faster)")


if __name__ == "__main__":
    main()
