"""Saved outputs are complete files with predictable names, and old ones are cleaned up."""
from __future__ import annotations

import re

import os
import time
from datetime import datetime

import numpy as np
import pytest
import soundfile as sf

from cosyvoice.service.outputs import output_path, remove_expired, write_wav_atomic


def test_name_has_timestamp_a_server_made_unique_part_and_request_id(tmp_path):
    names = {output_path(tmp_path, "7f3a01", datetime(2026, 11, 22, 10, 31, 5)).name for _ in range(50)}
    assert len(names) == 50          # the same request id at the same second never shares a file
    assert all(re.fullmatch(r"output_20261122_103105_[0-9a-f]{8}_7f3a01\.wav", name) for name in names)


def test_write_is_complete_and_leaves_no_temporary(tmp_path):
    samples = np.sin(np.linspace(0, 100, 24000)).astype(np.float32) * 0.5
    path = write_wav_atomic(tmp_path / "output_x.wav", samples, 24000)
    data, rate = sf.read(path, dtype="float32")
    assert rate == 24000 and len(data) == 24000
    assert np.max(np.abs(data - samples)) < 1e-3
    assert [p.name for p in tmp_path.iterdir()] == ["output_x.wav"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import cosyvoice.service.outputs as outputs

    def broken_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(outputs.sf, "write", broken_write)
    with pytest.raises(OSError):
        write_wav_atomic(tmp_path / "output_y.wav", np.zeros(10, np.float32), 24000)
    assert list(tmp_path.iterdir()) == []


def test_retention_removes_only_old_outputs_and_stale_partials(tmp_path):
    now = time.time()
    old = tmp_path / "output_20260101_000000_aaaaaa.wav"
    fresh = tmp_path / "output_20261122_000000_bbbbbb.wav"
    stale_partial = tmp_path / ".output_x.abc.partial"
    other = tmp_path / "keep_me.txt"
    for path in (old, fresh, stale_partial, other):
        path.write_bytes(b"x")
    os.utime(old, (now - 8 * 86400, now - 8 * 86400))
    os.utime(stale_partial, (now - 2 * 3600, now - 2 * 3600))
    os.utime(other, (now - 30 * 86400, now - 30 * 86400))
    removed = remove_expired(tmp_path, retention_days=7, now=now)
    assert set(removed) == {old, stale_partial}
    assert fresh.exists() and other.exists()
