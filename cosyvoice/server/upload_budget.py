"""Disk is a budget: how much one client may upload to Gradio's upload cache, and how much it may hold.

Uploads stay in the cache until the hourly sweep, so without a bound one script can fill the disk
in seconds. Three limits, all flags of app.py:
- per client, uploads in the last minute (`--uploads-per-minute`)          → 429 + Retry-After;
- per client, megabytes uploaded in the last minute (`--upload-mb-per-minute`) → 429 + Retry-After;
- all clients together, bytes in the cache folder (`--upload-cache-mb`)       → 507 + Retry-After.
An upload is charged its declared size when admitted (its Content-Length) and its real size once it
is in, so uploads running side by side cannot slip past the total together.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

WINDOW_S = 60.0
MEASURE_EVERY_S = 1.0
SWEEP_EVERY_S = 600          # app.build_ui's delete_cache: uploads older than an hour go every 10 minutes


@dataclass(frozen=True)
class UploadRefusal:
    status: int                # 429 (this client) or 507 (the cache as a whole)
    message: str
    retry_after_s: int


@dataclass
class UploadBudget:
    folder: Callable[[], str]
    per_minute: int = 60
    bytes_per_minute: int = 128 * 2**20
    cache_bytes: int = 2 * 2**30
    _recent: dict[str, deque] = field(default_factory=dict)     # client -> deque of (time, bytes, is an upload)
    _in_flight: int = 0
    _measured: tuple[float, int] = (-1e9, 0)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, client: str, declared: int) -> UploadRefusal | None:
        """Take an upload of `declared` bytes (0 when unknown) into the budget, or say why not."""
        now = time.monotonic()
        with self._lock:
            recent = self._window(client, now)
            refusal = self._client_refusal(recent, declared, now) or self._cache_refusal(declared, now)
            if refusal is None:
                recent.append((now, declared, True))
                self._in_flight += declared
            return refusal

    def settle(self, client: str, declared: int, received: int) -> None:
        """The upload is over: its real size replaces the declared one in the client's minute."""
        with self._lock:
            self._in_flight -= declared
            recent = self._recent.get(client)
            if recent is not None and received > declared:
                recent.append((time.monotonic(), received - declared, False))
            self._measured = (-1e9, 0)              # measure the folder again on the next upload

    def cache_used(self) -> int:
        with self._lock:
            return self._cache_total(time.monotonic())

    def _window(self, client: str, now: float) -> deque:
        recent = self._recent.setdefault(client, deque())
        while recent and now - recent[0][0] > WINDOW_S:
            recent.popleft()
        if len(self._recent) > 10000:           # bounded memory under a spray of addresses
            self._recent.pop(next(iter(self._recent)))
        return recent

    def _client_refusal(self, recent: deque, declared: int, now: float) -> UploadRefusal | None:
        count = sum(1 for _, _, upload in recent if upload)
        used = sum(size for _, size, _ in recent)
        if count < self.per_minute and used + declared <= self.bytes_per_minute:
            return None
        wait = max(1, round(WINDOW_S - (now - recent[0][0]))) if recent else 1
        return UploadRefusal(429, f"Too many uploads from your address: at most {self.per_minute} uploads and "
                                  f"{self.bytes_per_minute / 2**20:.0f} MB a minute (you sent {count} and "
                                  f"{used / 2**20:.1f} MB). Try again in {wait} s.", wait)

    def _cache_refusal(self, declared: int, now: float) -> UploadRefusal | None:
        total = self._cache_total(now)
        if total + declared <= self.cache_bytes:
            return None
        return UploadRefusal(507, f"The server's upload space is full ({total / 2**20:.0f} MB of "
                                  f"{self.cache_bytes / 2**20:.0f} MB; uploads are kept up to an hour). "
                                  f"Try again later; the operator can raise --upload-cache-mb.", SWEEP_EVERY_S)

    def _cache_total(self, now: float) -> int:
        measured_at, size = self._measured
        if now - measured_at > MEASURE_EVERY_S:
            size = upload_folder_size(self.folder())
            self._measured = (now, size)
        return size + self._in_flight


def upload_folder_size(folder: str | Path) -> int:
    """Bytes under Gradio's upload/cache folder (the budget, the soak benchmark)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
