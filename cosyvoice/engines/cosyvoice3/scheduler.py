"""Continuous batching for the CosyVoice3 LLM: one worker thread owns the model and decodes every
request in flight together, one token per step, in a fixed number of slots.

    synthesize() thread ─submit(request)─> pending ─admit (prefill alone, into a free slot)─┐
          ^                                                                                 v
          └──── tokens, then DONE ─── per-request queue <── step(): one token for every busy slot

A request joins between any two steps and leaves its slot as soon as it stops (or its consumer
closes the token iterator). With `max_ahead`, a request whose consumer has not taken that many of
its tokens yet sits out the steps until it does: on CPU the LLM and a streaming request's flow share
the same cores, and decoding far ahead would only slow the chunk its listener is waiting for.
The KV cache is one static SlotCache (slots x capacity positions), allocated once.

Batch invariance (a request's tokens do not depend on who else is decoding): each request samples
with its own seeded generator, attends only to its own slot, and the projections are computed so
that one row's result does not depend on the others:

* CPU: the projections run on our rows kernel (cpu_decode_kernel.RowsLinear: each output element computed
  the same way whatever the number of rows, and 4 rows cost little more than 1), or where it cannot
  be built on oneDNN with weights prepacked at the slot count (also row-invariant on the CPUs we
  measured, but 4 rows cost it 1.2-1.4x one row). Either is checked at start-up; then only busy slots are
  computed and a lone request pays nothing for the empty ones. int8 rows are quantised one row at a
  time (see quantize.Int8Linear). Where the check fails, every step computes all slots (padded), so
  the shapes never change.
  prepare_batched_decoding() builds these projections on a twin of the LLM (weights shared) and returns
  the SlotDecoder; the engine hands that decoder to DecodeScheduler.
* CUDA: every step runs all slots at fixed shapes over the whole cache with per-row masks, and is
  captured once as a CUDA graph (cuda_graphs=True; CapturedStep owns every tensor the graph reads).
  The worker decodes on its own CUDA stream, under the LLM's autocast (devices.PRECISION_PLAN).
"""
from __future__ import annotations

import contextlib
import enum
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from loguru import logger
from torch import Tensor, nn

from cosyvoice.engines.cosyvoice3.cpu_decode_kernel import LANES, RowsLinear, load_rows_kernel, why_not
from cosyvoice.engines.cosyvoice3.devices import Autocast
from cosyvoice.engines.cosyvoice3.llm import CosyVoice3LM, DecodeRequest, DecodeRows, SlotCache, SlotDecoder

class _End(enum.Enum):
    DONE = "done"


DONE = _End.DONE   # end of one request's tokens


# ---------------------------------------------------------------------------------------------
# Row-invariant projections on CPU


def _onednn_linear_available() -> bool:
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear(nn.Module):
    """nn.Linear with its weight prepacked for oneDNN at a fixed batch size (float32, CPU).

    Packed for the slot count, this kernel computes each output row the same way for 1..N rows, which
    plain F.linear does not (its small-M paths differ from M=1); it is also faster than F.linear for
    a few rows on the CPUs we measured.
    """

    def __init__(self, linear: nn.Linear, batch: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().float(), batch)
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    @property
    def weight(self) -> Tensor:
        """The plain (out, in) weight, unpacked (for inspection; forward uses the packed one)."""
        return self.packed.to_dense()

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).float().contiguous()
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)


def rows_are_independent(linear: nn.Module, in_features: int, slots: int) -> bool:
    """Does `linear` give row 0 the same bits alone, among `slots` rows, and at every row index?"""
    gen = torch.Generator().manual_seed(0)
    row = torch.randn(1, in_features, generator=gen)
    with torch.inference_mode():
        alone = linear(row)[0]
        for count in range(2, slots + 1):
            others = torch.randn(count, in_features, generator=gen)
            for index in range(count):
                batch = others.clone()
                batch[index] = row[0]
                if not torch.equal(linear(batch)[index], alone):
                    return False
    return True


CPU_KERNELS = ("auto", "rows", "onednn")


def _row_invariant_projection(llm: CosyVoice3LM, slots: int, kernel: str):
    """A function nn.Linear -> row-invariant projection for `kernel`, or None (with the reason logged)."""
    if kernel not in CPU_KERNELS:
        raise ValueError(f"CPU decode kernel must be one of {', '.join(CPU_KERNELS)}, got {kernel!r}")
    candidates: list[tuple[str, Callable[[nn.Linear], nn.Module]]] = []
    cfg = llm.cfg
    in_features = (cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.intermediate_size)
    if kernel in ("auto", "rows"):
        if any(n % LANES for n in in_features):
            logger.info("The CPU decode kernel needs projection widths that are multiples of {}, not {}; "
                        "decoding uses oneDNN", LANES, in_features)
        elif load_rows_kernel():
            candidates.append(("rows", lambda linear: RowsLinear(linear, slots)))
        else:
            logger.warning("The CPU decode kernel is not available ({}); decoding uses oneDNN instead, about "
                           "1.3x slower for one request and 1.7x for four", why_not())
    if kernel in ("auto", "onednn") and _onednn_linear_available():
        candidates.append(("onednn", lambda linear: PackedLinear(linear, slots)))
    hidden, inner = cfg.hidden_size, cfg.intermediate_size
    for name, make in candidates:
        if rows_are_independent(make(nn.Linear(hidden, inner)), hidden, slots):
            return make
        logger.info("The {} kernel gives rows that depend on the batch here; not used", name)
    return None


def row_invariant_twin(llm: CosyVoice3LM, slots: int, kernel: str = "auto") -> CosyVoice3LM | None:
    """On CPU float32: `llm`'s twin (weights shared) whose projections give a row the same bits for 1..slots
    rows (RowsLinear, else oneDNN's PackedLinear; `kernel` forces one; int8 ones already do and are kept);
    None where there is no such kernel. `llm` itself is not changed."""
    from cosyvoice.engines.cosyvoice3.quantize import Int8Linear

    if llm.device.type != "cpu" or llm.dtype != torch.float32:
        return None
    int8 = [m for m in llm.modules() if isinstance(m, Int8Linear)]
    if any(m.packed is None for m in int8):
        return None        # only the fbgemm int8 path quantises row by row
    make = None
    if any(isinstance(m, nn.Linear) for m in llm.modules()):
        make = _row_invariant_projection(llm, slots, kernel)
        if make is None:
            logger.info("No row-invariant kernel for the LLM's projections; every decode step computes all slots")
            return None

    def replace(module: nn.Module) -> nn.Module:
        if isinstance(module, nn.Linear) and make is not None:
            return make(module)
        if isinstance(module, Int8Linear):
            module.row_wise_rows = max(module.row_wise_rows, slots)
            return module
        raise TypeError(f"unexpected projection {type(module).__name__}")

    return llm.with_projections(replace)


# ---------------------------------------------------------------------------------------------
# CUDA graph of the all-slots step

StepFn = Callable[[], Tensor]


def capture_cuda_graph(step: StepFn, device: torch.device) -> tuple[Callable[[], None], Tensor]:
    """Warm `step` up on a side stream (as torch requires), capture it as a CUDA graph; (replay, output)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph.replay, out


def run_eagerly(step: StepFn, device: torch.device) -> tuple[Callable[[], None], Tensor]:
    """The capture contract without a graph (CPU, tests): replay re-runs `step` into the same output."""
    out = step()

    def replay() -> None:
        out.copy_(step())
    return replay, out


class CapturedStep:
    """decode_rows over all slots with masks, captured once as a CUDA graph and replayed per step.

    A graph keeps raw device addresses, not references: every tensor the step reads or writes (tokens,
    slot indices, positions, the cache, the logits) is owned by this object or the cache it was given,
    so none can be freed and reused while the graph lives. Replay copies a step's inputs into them."""

    def __init__(self, llm: CosyVoice3LM, cache: SlotCache, capture=capture_cuda_graph,
                 autocast: Autocast = contextlib.nullcontext):
        device, slots = llm.device, cache.slots
        self.llm, self.cache = llm, cache
        self.tokens = torch.zeros(slots, 1, dtype=torch.long, device=device)
        self.slots = torch.arange(slots, device=device)
        self.positions = torch.zeros(slots, dtype=torch.long, device=device)
        self.rows = DecodeRows(self.slots, self.positions, exact=False)
        # Warm-up and capture write position 0 of every slot only, which every prefill overwrites.
        with autocast():
            self.replay, self.logits = capture(lambda: llm.decode_rows(self.tokens, self.rows, cache), device)

    def owned_inputs(self) -> list[Tensor]:
        """Every tensor the captured step reads beside the cache and the weights."""
        return [self.tokens, self.slots, self.positions]

    def __call__(self, tokens: Tensor, rows: DecodeRows) -> Tensor:
        self.tokens.copy_(tokens)
        self.positions.copy_(rows.positions)
        self.replay()
        return self.logits


def prepare_batched_decoding(llm: CosyVoice3LM, slots: int, capacity: int, *, cuda_graphs: bool = False,
                             cpu_kernel: str = "auto", autocast: Autocast = contextlib.nullcontext,
                             capture=capture_cuda_graph) -> SlotDecoder:
    """The batch-invariant SlotDecoder for where `llm` lives (see the module docstring): on CPU busy rows
    only, on a row-invariant twin of `llm` (`cpu_kernel`: auto, rows or onednn), else all slots padded;
    on CUDA all slots masked, the step captured as a CUDA graph when `cuda_graphs` (under `autocast`).
    `llm` is not changed; decode with the returned decoder's `llm`."""
    if slots < 1:
        raise ValueError(f"batch slots must be at least 1, got {slots}")
    on_cuda = llm.device.type == "cuda"
    twin = None if on_cuda else row_invariant_twin(llm, slots, cpu_kernel)
    compact = twin is not None                                        # compact: CPU float32
    fused = compact and llm.cfg.head_dim % LANES == 0 and load_rows_kernel()
    decoder = SlotDecoder(twin or llm, slots, capacity, exact=not on_cuda, compact=compact, fused_attention=fused)
    if cuda_graphs and on_cuda:
        decoder.step_fn = CapturedStep(llm, decoder.cache, capture, autocast)
    return decoder


def decoder_mode(decoder: SlotDecoder) -> str:
    if decoder.compact:
        kernels = sorted({"rows kernel" if isinstance(m, RowsLinear) else "oneDNN" for m in decoder.llm.modules()
                          if isinstance(m, (RowsLinear, PackedLinear))}) or ["int8"]
        attention = ", fused attention" if decoder.fused_attention else ""
        return f"busy slots only ({', '.join(kernels)}{attention})"
    if decoder.exact:
        return "all slots, padded"
    return "all slots, masked" + (", CUDA graph" if isinstance(decoder.step_fn, CapturedStep) else "")


# ---------------------------------------------------------------------------------------------
# The scheduler


@dataclass
class Ticket:
    request: DecodeRequest
    out: "queue.Queue[int | BaseException | _End]" = field(default_factory=queue.Queue)
    cancelled: bool = False


class DecodeScheduler:
    """Owns `decoder` (from prepare_batched_decoding) and decodes on it in one worker thread; generate() has
    the signature of CosyVoice3LM.generate and may be called from any number of threads at once.
    `autocast` is entered by the worker around every prefill and step (autocast is per thread)."""

    def __init__(self, decoder: SlotDecoder, max_ahead: int | None = None,
                 autocast: Autocast = contextlib.nullcontext):
        self.decoder = decoder
        self.llm = decoder.llm
        self.max_ahead = max_ahead   # tokens a request may decode beyond what its consumer took; None: no limit
        self._autocast = autocast
        device = self.llm.device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._lock = threading.Condition()
        self._pending: deque[Ticket] = deque()
        self._active: dict[int, Ticket] = {}
        self._closed = False
        self.most_in_one_step = 0    # the largest number of requests decoded in one step (logs, tests)
        self._thread = threading.Thread(target=self._work, name="cv3-decode", daemon=True)
        self._thread.start()

    @property
    def slots(self) -> int:
        return self.decoder.slots

    @property
    def compact(self) -> bool:
        return self.decoder.compact

    @property
    def cuda_graphs(self) -> bool:
        return isinstance(self.decoder.step_fn, CapturedStep)

    @property
    def mode(self) -> str:
        return decoder_mode(self.decoder)

    def generate(self, text_ids: Tensor, prompt_text_ids: Tensor, prompt_speech_tokens: Tensor,
                 **kwargs) -> Iterator[int]:
        """Like CosyVoice3LM.generate, decoded by the worker beside the other requests."""
        request = self.llm.decode_request(text_ids, prompt_text_ids, prompt_speech_tokens, **kwargs)
        return self.submit(request)

    def submit(self, request: DecodeRequest) -> Iterator[int]:
        ticket = Ticket(request)
        with self._lock:
            if self._closed:
                raise RuntimeError("the decode scheduler was closed")
            self._pending.append(ticket)
            self._lock.notify()
        return self._receive(ticket)

    def _receive(self, ticket: Ticket) -> Iterator[int]:
        try:
            while True:
                item = ticket.out.get()
                if self.max_ahead is not None:
                    with self._lock:          # the worker may be waiting for this consumer to catch up
                        self._lock.notify()
                if item is DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # Closed early (client gone, token cap reached): free the slot at the next step.
            ticket.cancelled = True
            with self._lock:
                self._lock.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=10)

    # -- worker ---------------------------------------------------------------------------------

    def _work(self) -> None:
        stream = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with torch.inference_mode(), stream, self._autocast():
            while True:
                with self._lock:
                    while not self._closed and not self._pending and not self._active:
                        self._lock.wait()
                    if self._closed:
                        self._fail_all(RuntimeError("the decode scheduler was closed"))
                        return
                    joining = []
                    free = self.decoder.free_slots()
                    while free and self._pending:
                        ticket = self._pending.popleft()
                        if not ticket.cancelled:
                            joining.append((free.pop(0), ticket))
                for slot, ticket in joining:
                    self._admit(slot, ticket)
                for slot in [s for s, t in self._active.items() if t.cancelled]:
                    self.decoder.release(slot)
                    del self._active[slot]
                waiting = self._waiting_for_consumers()
                if self._active and len(waiting) == len(self._active):
                    with self._lock:          # every request is ahead of its consumer: sleep until one takes
                        self._lock.wait(timeout=0.05)
                elif self._active:
                    self._step(waiting)

    def _waiting_for_consumers(self) -> frozenset[int]:
        if self.max_ahead is None:
            return frozenset()
        return frozenset(slot for slot, ticket in self._active.items() if ticket.out.qsize() > self.max_ahead)

    def _admit(self, slot: int, ticket: Ticket) -> None:
        if self._stream is not None:
            # The request's prefill embeddings were made on its caller's (default) stream.
            self._stream.wait_stream(torch.cuda.default_stream(self.llm.device))
            ticket.request.embeds.record_stream(self._stream)
        try:
            token = self.decoder.admit(ticket.request, slot)
        except Exception as err:  # one bad request must not stop the worker
            self.decoder.release(slot)
            ticket.out.put(err)
            return
        if token is not None:
            ticket.out.put(token)
        if self.decoder.requests[slot] is None:
            ticket.out.put(DONE)
        else:
            self._active[slot] = ticket

    def _step(self, waiting: frozenset[int] = frozenset()) -> None:
        self.most_in_one_step = max(self.most_in_one_step, len(self._active) - len(waiting))
        try:
            tokens = self.decoder.step(skip=waiting)
        except Exception as err:
            logger.exception("LLM decode step failed; ending the {} request(s) in flight", len(self._active))
            for slot, ticket in self._active.items():
                self.decoder.release(slot)
                ticket.out.put(err)
            self._active.clear()
            return
        for slot, token in tokens.items():
            ticket = self._active[slot]
            if isinstance(token, Exception):
                logger.error("LLM decode: {}", token)
                ticket.out.put(token)
                del self._active[slot]
                continue
            if token is not None:
                ticket.out.put(token)
            if self.decoder.requests[slot] is None:
                ticket.out.put(DONE)
                del self._active[slot]

    def _fail_all(self, err: BaseException) -> None:
        for ticket in list(self._active.values()) + list(self._pending):
            ticket.out.put(err)
        self._active.clear()
        self._pending.clear()
