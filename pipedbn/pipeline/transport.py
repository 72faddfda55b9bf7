"""Point-to-point links between neighbouring stages over ``torch.distributed``.

A message is ONE tensor of bytes, of the link's static size: the payload's ``(max_rows,
features)``, then any extra tensors the link carries per row (``extras``: a label per sample,
say), then a header ``int64[m, rows, kind]`` (``Layout``; replica sync packs its header the same
way). One ``isend``/``irecv`` per message: gloo pays its per-message cost once, not once for the
header and once for the payload. A partial micro-batch travels padded and the receiver slices
``rows`` (the padding is never trained on, and is not cleared: it holds an earlier message's
rows). ``kind`` is DATA, END (end of stream), PLAN (end of this plan's part of the stream: the
run re-plans at micro-batch ``m``) or BEAT: a link that has carried nothing for a quarter of the
timeout carries a heartbeat instead, so a stage that waits a long time for its first micro-batch
(the greedy schedule, a long streaming offset) can tell a quiet peer from a hung one; a stage
that is itself waiting passes heartbeats on. PROBE messages come just before the DATA of their
micro-batch and carry its held-out probe (``probe.py``), in pieces of at most ``max_rows``. The
sender keeps at most ``window`` messages in flight (back-pressure: it waits for the oldest
before sending more), each in one of ``window`` send buffers allocated once; the receiver keeps
``POSTED`` receives posted, so END and PLAN are sent that many times. gloo moves a message only
once its receive is posted, so these are the micro-batches that can land while the stage
trains: with two, one wake-up that waits for the host's timer tick (milliseconds on a shared
machine) left the stage idle; with four the mean overhead per micro-batch was ~9% lower in
8 interleaved pairs, its median unchanged (docs/benchmarks.md). No buffer is allocated per
message. Every wait is bounded by ``timeout``; a failure raises ``LinkError`` naming both the
stage that saw it and the peer it lost. Buffers live on the payload's device, so the same code
runs on gloo and NCCL (on CUDA the receiver reads the header to the host: one sync a message).
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

DATA, END, BEAT, PLAN, PROBE = 0, 1, 2, 3, 4
TERMINAL = (END, PLAN)
POSTED = 4
"""Receives a ``Receiver`` keeps posted; a ``Sender`` ends its link with as many END/PLAN copies."""


class LinkError(RuntimeError):
    """A neighbour stage failed, vanished or stopped answering; ``peer`` is its rank."""

    def __init__(self, message: str, peer: int, timed_out: bool = False) -> None:
        super().__init__(message)
        self.peer = peer
        self.timed_out = timed_out


def _reason(e: Exception) -> str:
    """The gist of a backend error: gloo's says e.g. ``[.../pair.cc:537] Read error [127.0.0.1]:
    44759: Connection reset by peer. This is typically caused by ...``."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", text)
    return text.split(". This is typically")[0]


def _world() -> dist.ProcessGroup:
    world = dist.group.WORLD
    if world is None:
        raise RuntimeError("the default process group is not initialised")
    return world


def isend(t: torch.Tensor, peer: int) -> dist.Work:
    """``dist.isend(t, peer)`` on the default group, straight to its ``ProcessGroup``: the
    Python wrapper's checks (group lookup, rank translation, torch-function dispatch) cost
    20-40 µs a call here, one call per micro-batch on each side of every link."""
    return _world().send([t], peer, 0)


def irecv(t: torch.Tensor, peer: int) -> dist.Work:
    """``dist.irecv(t, peer)`` on the default group, the same way as ``isend``."""
    return _world().recv([t], peer, 0)


def _post(op: Callable[..., dist.Work | None], t: torch.Tensor, peer: int, what: str
          ) -> dist.Work:
    """``isend``/``irecv``, which raise at once when the peer is already gone."""
    try:
        work = op(t, peer)
    except Exception as e:
        raise LinkError(f"{what}: {_reason(e)}", peer) from None
    assert work is not None  # None only for a rank outside the group
    return work


def _wait(work: dist.Work, timeout: float, what: str, peer: int) -> None:
    try:
        ok = work.wait(timedelta(seconds=timeout))
    except Exception as e:  # gloo raises on a closed peer or a timeout
        first = _reason(e)
        timed_out = "timed out" in first.lower() or "timeout" in first.lower()
        if timed_out:
            first = f"no answer in {timeout:g} s (is it hung?): {first}"
        raise LinkError(f"{what}: {first}", peer, timed_out) from None
    if ok is False:
        raise LinkError(f"{what}: no answer in {timeout:g} s (is it hung?)", peer, True)


Extra = tuple[tuple[int, ...], torch.dtype]
"""An extra tensor a link carries with each message: its shape after the rows (``()`` for one
value a row, e.g. an int64 label) and its dtype."""

_HEADER = 3  # int64 m, rows, kind


def _align(n: int) -> int:
    return -(-n // 8) * 8


@dataclass(frozen=True)
class Layout:
    """Where each part of a link's message lies in its bytes: the payload ``(max_rows,
    features)`` of ``dtype`` at 0, each extra (``max_rows`` rows of it) after, 8-aligned, and
    the header last."""

    max_rows: int
    features: int
    dtype: torch.dtype
    extras: tuple[Extra, ...] = ()

    @property
    def _parts(self) -> list[tuple[int, int]]:
        """(offset, bytes) of the payload and of each extra."""
        es = torch.empty(0, dtype=self.dtype).element_size()
        parts, at = [(0, self.max_rows * self.features * es)], 0
        for tail, dtype in self.extras:
            at = _align(at + parts[-1][1])
            n = self.max_rows * math.prod(tail) * torch.empty(0, dtype=dtype).element_size()
            parts.append((at, n))
        return parts

    @property
    def header_at(self) -> int:
        at, n = self._parts[-1]
        return _align(at + n)

    @property
    def nbytes(self) -> int:
        return self.header_at + 8 * _HEADER

    def buffer(self, device: torch.device) -> _Message:
        return _Message(self, torch.zeros(self.nbytes, dtype=torch.uint8, device=device))


class _Message:
    """One message buffer and its typed views (made once: views cost allocations)."""

    def __init__(self, layout: Layout, buf: torch.Tensor) -> None:
        self.buf = buf
        parts = layout._parts
        at, n = parts[0]
        self.payload = buf[at : at + n].view(layout.dtype).view(layout.max_rows,
                                                               layout.features)
        self.extras = [buf[a : a + k].view(dtype).view(layout.max_rows, *tail)
                       for (a, k), (tail, dtype) in zip(parts[1:], layout.extras, strict=True)]
        h = layout.header_at
        self.header = buf[h : h + 8 * _HEADER].view(torch.int64)
        # on the CPU the header is read and written through numpy: no tensor per message
        self._np = self.header.numpy() if buf.device.type == "cpu" else None

    def write_header(self, m: int, rows: int, kind: int) -> None:
        if self._np is not None:
            self._np[0], self._np[1], self._np[2] = m, rows, kind
        else:
            self.header.copy_(torch.tensor([m, rows, kind], dtype=torch.int64),
                              non_blocking=True)

    def read_header(self) -> tuple[int, int, int]:
        if self._np is not None:
            return int(self._np[0]), int(self._np[1]), int(self._np[2])
        m, rows, kind = self.header.tolist()
        return m, rows, kind


class Sender:
    def __init__(self, dst: int, max_rows: int, features: int, dtype: torch.dtype,
                 device: torch.device, window: int, timeout: float, name: str,
                 beat_every: float | None = None, extras: Sequence[Extra] = ()) -> None:
        """``extras``: the tensors each message carries beside the payload (``Extra``)."""
        self.dst, self.max_rows, self.features = dst, max_rows, features
        self.dtype, self.device, self.window, self.timeout = dtype, device, window, timeout
        self.name = name
        self.layout = Layout(max_rows, features, dtype, tuple(extras))
        self._free = [self.layout.buffer(device) for _ in range(window)]
        self._pending: deque[tuple[dist.Work, _Message]] = deque()
        self._what = f"{name}: lost stage {dst} while sending"
        self.max_in_flight = 0
        self.beat_every = timeout / 4 if beat_every is None else beat_every
        self._last_send = -math.inf  # the first call to beat_if_quiet says the stream began
        self.max_beats: int | None = None
        self._beats = 0

    @property
    def in_flight(self) -> int:
        """Messages sent that are not known to be taken by the peer. gloo confirms a send only
        when it is waited on, so on gloo this is an upper bound: the window's worth at most."""
        while self._pending and self._pending[0][0].is_completed():
            self._retire_oldest()
        return len(self._pending)

    def beat_if_quiet(self) -> None:
        """Send a heartbeat if the link has been quiet for ``beat_every``. A stage calls this
        when it has nothing else to send: usually the peer is waiting for it and the window
        holds only earlier heartbeats, already taken; otherwise it waits like any send. With
        ``max_beats`` set, at most that many heartbeats follow one another, so that a peer that
        reads another link meanwhile (a replicated stage feeds it) never makes this stage wait."""
        if self.max_beats is not None and self._beats >= self.max_beats:
            return
        if time.monotonic() - self._last_send > self.beat_every:
            self._beats += 1
            self.send(-1, None, BEAT)

    def _retire_oldest(self) -> None:
        work, msg = self._pending.popleft()
        _wait(work, self.timeout, self._what, self.dst)
        self._free.append(msg)

    def send(self, m: int, x: torch.Tensor | None, kind: int = DATA,
             extras: Sequence[torch.Tensor] = ()) -> None:
        """Send ``x`` (rows of the payload; None: no rows) and its ``extras`` (as many rows
        each, in the order of the link's ``extras``) as message ``kind`` of micro-batch ``m``."""
        while not self._free:
            self._retire_oldest()
        if kind != BEAT:
            self._beats = 0
        msg = self._free.pop()
        rows = 0
        if x is not None:
            rows = x.shape[0]
            assert x.shape[1:] == (self.features,) and rows <= self.max_rows, \
                (x.shape, self.features)
            (msg.payload if rows == self.max_rows else msg.payload[:rows]).copy_(x)
        assert len(extras) in (0, len(msg.extras)), "a message carries all its extras or none"
        for view, e in zip(msg.extras, extras, strict=False):
            assert e.shape[0] == rows, (e.shape, rows)
            view[:rows].copy_(e)
        msg.write_header(m, rows, kind)
        self._pending.append((_post(isend, msg.buf, self.dst, self._what), msg))
        self._last_send = time.monotonic()
        self.max_in_flight = max(self.max_in_flight, len(self._pending))

    def close(self, kind: int = END, m: int = -1) -> None:
        """Send end-of-stream (or PLAN at micro-batch ``m``) and wait until every message has
        been taken."""
        assert kind in TERMINAL
        for _ in range(POSTED):  # one for each receive the peer keeps posted
            self.send(m, None, kind)
        while self._pending:
            self._retire_oldest()


class Receiver:
    def __init__(self, src: int, max_rows: int, features: int, dtype: torch.dtype,
                 device: torch.device, timeout: float, name: str,
                 on_beat: Callable[[], None] | None = None,
                 first_timeout: float | None = None, extras: Sequence[Extra] = ()) -> None:
        """``first_timeout`` bounds the wait for the first message (the peer may still be
        setting up); ``timeout`` every later one; ``extras`` as the sender's."""
        self.src, self.timeout, self.name, self.on_beat = src, timeout, name, on_beat
        self._first_timeout = first_timeout if first_timeout is not None else timeout
        self.layout = Layout(max_rows, features, dtype, tuple(extras))
        self._slots = [self.layout.buffer(device) for _ in range(POSTED)]
        self._works: list[dist.Work | None] = [None] * POSTED
        self._what = f"{name}: lost stage {src} while receiving"
        self._next = 0
        self._pending_repost: int | None = None
        self._rows = 0
        for k in range(POSTED):
            self._post(k)

    def _post(self, k: int) -> None:
        self._works[k] = _post(irecv, self._slots[k].buf, self.src, self._what)

    def get(self) -> tuple[int, int, torch.Tensor | None]:
        """The next message that is not a heartbeat: ``(DATA | PROBE, m, x)``, with ``x`` valid
        until the next call (its extras in ``extras``), or ``(END | PLAN, m, None)``, after
        which the link is done."""
        self._flush()
        while True:
            k = self._next
            self._take(k)
            msg = self._slots[k]
            m, rows, kind = msg.read_header()
            if kind in TERMINAL:
                for j in range(1, POSTED):  # the other copies fill the receives posted ahead
                    self._take((k + j) % POSTED)
                return kind, m, None
            if kind == BEAT:
                if self.on_beat is not None:
                    self.on_beat()
                self._repost(k)
                continue
            self._pending_repost = k  # the consumer is done with slot k at the next call
            self._rows = rows
            return kind, m, msg.payload if rows == self.layout.max_rows else msg.payload[:rows]

    @property
    def extras(self) -> list[torch.Tensor]:
        """The extra tensors of the message ``get`` returned last (valid as long as it)."""
        k = self._pending_repost
        if k is None:
            return []
        return [e[: self._rows] for e in self._slots[k].extras]

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Yields ``(m, x)`` until the end of the stream (probes skipped)."""
        while True:
            kind, m, x = self.get()
            if x is None:
                return
            if kind == DATA:
                yield m, x

    def _flush(self) -> None:
        if self._pending_repost is not None:
            self._repost(self._pending_repost)
            self._pending_repost = None

    def _repost(self, k: int) -> None:
        self._post(k)
        self._next = (k + 1) % POSTED

    def _take(self, k: int) -> None:
        timeout, self._first_timeout = self._first_timeout, self.timeout
        work = self._works[k]
        assert work is not None
        _wait(work, timeout, self._what, self.src)
