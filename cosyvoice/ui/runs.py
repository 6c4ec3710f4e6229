"""Studio requests that live on the server, not in the page: a request started from the WebUI runs in
its own thread, so closing the tab neither loses the result nor leaves a ghost "running" job, and the
取消 Cancel button can stop it. Also the player's chunking for streamed playback.

Only the UI uses this: the API front ends keep their client connection for the whole request.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import numpy as np

from cosyvoice.ops import metrics
from cosyvoice.errors import StudioError
from cosyvoice.service.requests import RequestRegistry
from cosyvoice.ops.log import request_logger

# Streamed audio reaches the browser as HLS segments, one per chunk handed to Gradio. The player polls
# the playlist about once per its target duration (the longest segment, rounded up), so whole engine
# segments of 4-5 s made it wait seconds with audio ready on the server. Half-second slices keep the
# target at 1 s: the playlist is re-read every second or sooner.
PLAYER_SLICE_S = 0.5
_END = object()

# "缓冲中 buffering" on the output player while playback, once started, waits for audio the server has
# not sent yet (media events do not bubble, so they are caught on the way down). An emptied or not yet
# started player also fires "waiting"; that is not buffering, and the result line says what happens.
PLAYER_HEAD = """<style>
body[data-player-waiting="1"] #output-audio::after { content: "⏳ 缓冲中 Buffering: waiting for the next audio…";
  display: block; padding: 4px 8px; font-size: 0.9em; }
</style>
<script>
(() => {
  const mark = (waiting) => (event) => {
    if (waiting && !(event.target.currentTime > 0)) return;
    if (event.target.closest && event.target.closest("#output-audio"))
      document.body.dataset.playerWaiting = waiting ? "1" : "0";
  };
  document.addEventListener("waiting", mark(true), true);
  for (const name of ["playing", "ended", "emptied", "pause"]) document.addEventListener(name, mark(false), true);
})();
</script>"""


def player_slices(chunk: np.ndarray, sample_rate: int, slice_s: float = PLAYER_SLICE_S) -> Iterator[np.ndarray]:
    """`chunk` cut into consecutive slices of at most `slice_s` seconds (the last may be shorter)."""
    step = max(1, int(round(slice_s * sample_rate)))
    for start in range(0, len(chunk), step):
        yield chunk[start:start + step]


class PageRun:
    """One request the page started: the service's events are read by a worker thread and handed on
    while a page listens; after the page leaves, the request runs to its end unheard.

    `start()` begins; `events()` is what the page iterates (a StudioError is re-raised there);
    `page_left()` and `cancel()` are the two ways a page stops listening.
    """

    def __init__(self, request_id: str, mode: str, events: Callable[[], Iterator], requests: RequestRegistry):
        self.request_id, self.mode, self._make_events, self.requests = request_id, mode, events, requests
        self._queue: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self._page_gone = threading.Event()
        self.finished = threading.Event()
        self.outcome: str | None = None      # "done", "failed", "cancelled" once finished

    def start(self) -> "PageRun":
        threading.Thread(target=self._work, daemon=True, name=f"ui-request-{self.request_id}").start()
        return self

    def cancel(self) -> None:
        self._cancelled.set()

    def page_left(self) -> None:
        self._page_gone.set()

    def events(self, heartbeat_s: float = 1.0) -> Iterator:
        """The service's events; None every `heartbeat_s` without one, so the page's generator reaches a
        yield often and Gradio can close it when the tab goes away."""
        while True:
            try:
                item = self._queue.get(timeout=heartbeat_s)
            except queue.Empty:
                yield None
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _work(self) -> None:
        log = request_logger(self.request_id)
        stream = self._make_events()
        try:
            for event in stream:
                if self._cancelled.is_set():
                    getattr(stream, "close", lambda: None)()   # the service leaves its queue place or worker at once
                    self._end_cancelled(log)
                    return
                if not self._page_gone.is_set():
                    self._queue.put(event)
            self.outcome = "done"
            if self._page_gone.is_set():
                self.requests.end_unattended(self.request_id, "done", "page closed")
                log.info("finished after its page was closed; the result is in the History tab")
        except StudioError as err:           # the service has logged and counted it already
            self.outcome = "failed"
            self._queue.put(err)
        except Exception as err:             # never lose the thread silently
            self.outcome = "failed"
            log.error(f"the page's request thread stopped: {type(err).__name__}: {err}")
            self._queue.put(StudioError(f"Internal error (request {self.request_id}); see logs/runtime.log."))
        finally:
            self._queue.put(_END)
            self.finished.set()

    def _end_cancelled(self, log) -> None:
        why = "page closed" if self._page_gone.is_set() else "by user"
        self.outcome = "cancelled"
        self.requests.end_unattended(self.request_id, "cancelled", why)
        metrics.REQUESTS.labels(self.mode, "cancelled").inc()
        log.warning(f"cancelled ({why}) before it finished; nothing was saved")


class PageRuns:
    """The run each browser session has going, so its Cancel button finds it."""

    def __init__(self):
        self._runs: dict[str, PageRun] = {}
        self._lock = threading.Lock()

    def add(self, session: str, run: PageRun) -> PageRun:
        with self._lock:
            self._runs = {key: r for key, r in self._runs.items() if not r.finished.is_set()}
            self._runs[session] = run
        return run

    def cancel(self, session: str) -> PageRun | None:
        with self._lock:
            run = self._runs.get(session)
        if run is not None and not run.finished.is_set():
            run.cancel()
            return run
        return None
