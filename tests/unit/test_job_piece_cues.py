"""A job line long enough to be voiced in several pieces gets a subtitle cue per piece, timed from its audio."""
from __future__ import annotations

import numpy as np
import soundfile as sf
import srt

from cosyvoice.jobs import model, result
from unit.test_batch_jobs import service, setup, wait_final  # noqa: F401  (fixtures: lite service, store, worker)

LONG = "今天天气很好，我们一起去公园散步吧。" * 7       # 126 characters: over the 80 of one piece


def test_a_long_line_gets_a_cue_per_piece_and_a_short_one_a_single_cue(setup):  # noqa: F811
    store, worker, jobs_dir = setup
    specs = model.check_lines([model.line_from_object(text, n, {"voice": "narrator", "seed": 2}, 300)
                               for n, text in enumerate(["Short line.", LONG], 1)])
    job_id = store.create(specs, "json")
    worker(1).start()
    job = wait_final(store, job_id)
    assert job["state"] == "done"
    rows = store.lines(job_id)
    samples, rate, cues = result.stitch(job, rows, jobs_dir)
    parsed = list(srt.parse(result.srt_text(cues)))
    assert [c.index for c in parsed] == list(range(1, len(parsed) + 1))
    assert parsed[0].content == "Short line." and len(parsed) >= 3          # the long line is two pieces or more
    long_cues = [c for c in cues if c.custom_id == rows[1]["custom_id"]]
    line_start, line_end = cues[0].end, len(samples) / rate
    assert abs(long_cues[0].start - line_start) < 0.002 and abs(long_cues[-1].end - line_end) < 0.002
    assert all(a.end <= b.start + 1e-3 for a, b in zip(long_cues, long_cues[1:]))
    assert "".join(c.text for c in long_cues).count("我们一起去公园散步") == 7     # every word in one cue
    for cue in long_cues:                                                   # each cue spans sound
        body = samples[int(cue.start * rate): int(cue.end * rate)]
        assert np.sqrt(np.mean(body ** 2)) > 0.01
    vtt = result.vtt_text(cues)
    assert len({line for line in vtt.splitlines() if line.startswith(rows[1]["custom_id"])}) == len(long_cues)
    line_audio, _ = sf.read(jobs_dir / rows[1]["audio_path"], dtype="float32")
    assert abs(long_cues[-1].end - long_cues[0].start - len(line_audio) / rate) < 0.002
