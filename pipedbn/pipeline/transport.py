"""Point-to-point links between neighbouring stages over ``torch.distributed``.

A message is a header ``int64[m, rows, kind]`` followed by a payload of the link's static shape
``(max_rows, features)``; a partial micro-batch travels padded and the receiver slices ``rows``
(the padding is never trained on). ``kind`` is DATA, END (end of stream), PLAN (end of this
plan's part of the stream: the run re-plans at micro-batch ``m``) or BEAT: a link that has
carried nothing for a quarter of the timeout carries a heartbeat instead, so a stage that waits a
long time for its first micro-batch (the greedy schedule, a long streaming offset) can tell a
quiet peer from a hung one; a stage that is itself waiting passes heartbeats on. PROBE messages
come just before the DATA of their micro-batch and carry its held-out probe (``probe.py``), in
pieces of at most ``max_rows``. The sender keeps at
most ``window`` messages in flight (back-pressure: it waits for the oldest before sending more);
the receiver keeps two receives posted (double buffering), so END and PLAN are sent twice. Every
wait is bounded by ``timeout``; a failure raises ``LinkError`` naming both the stage that saw it
and the peer it lost. Headers live on the payload's device, so the same code runs on gloo and NCCL.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

DATA, END, BEAT, PLAN, PROBE = 0, 1, 2, 3, 4
TERMINAL = (END, PLAN)


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


def _post(op: Callable[..., dist.Work | None], t: torch.Tensor, peer: int, what: str
          ) -> dist.Work:
    """``dist.isend``/``dist.irecv``, which raise at once when the peer is already gone."""
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


class Sender:
    def __init__(self, dst: int, max_rows: int, features: int, dtype: torch.dtype,
                 device: torch.device, window: int, timeout: float, name: str,
                 beat_every: float | None = None) -> None:
        self.dst, self.max_rows, self.features = dst, max_rows, features
        self.dtype, self.device, self.window, self.timeout = dtype, device, window, timeout
        self.name = name
        self._pending: deque[tuple[list[dist.Work], torch.Tensor, torch.Tensor]] = deque()
        self.max_in_flight = 0
        self.beat_every = timeout / 4 if beat_every is None else beat_every
        self._last_send = -math.inf  # the first call to beat_if_quiet says the stream began
        self.max_beats: int | None = None
        self._beats = 0

    @property
    def in_flight(self) -> int:
        """Messages sent that are not known to be taken by the peer. gloo confirms a send only
        when it is waited on, so on gloo this is an upper bound: the window's worth at most."""
        while self._pending and all(w.is_completed() for w in self._pending[0][0]):
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
            self.send(-1, torch.zeros(0, self.features, dtype=self.dtype, device=self.device),
                      BEAT)

    def _retire_oldest(self) -> None:
        works, _, _ = self._pending.popleft()
        for w in works:
            _wait(w, self.timeout, f"{self.name}: lost stage {self.dst} while sending",
                  self.dst)

    def send(self, m: int, x: torch.Tensor, kind: int = DATA) -> None:
        while len(self._pending) >= self.window:
            self._retire_oldest()
        if kind != BEAT:
            self._beats = 0
        rows = x.shape[0]
        assert x.shape[1:] == (self.features,) and rows <= self.max_rows, (x.shape, self.features)
        if rows < self.max_rows:
            padded = torch.zeros(self.max_rows, self.features, dtype=self.dtype,
                                 device=self.device)
            padded[:rows] = x
            x = padded
        header = torch.tensor([m, rows, kind], dtype=torch.int64, device=self.device)
        what = f"{self.name}: lost stage {self.dst} while sending"
        works = [_post(dist.isend, header, self.dst, what),
                 _post(dist.isend, x.contiguous(), self.dst, what)]
        self._pending.append((works, header, x))  # keep both alive until sent
        self._last_send = time.monotonic()
        self.max_in_flight = max(self.max_in_flight, len(self._pending))

    def close(self, kind: int = END, m: int = -1) -> None:
        """Send end-of-stream (or PLAN at micro-batch ``m``) and wait until every message has
        been taken."""
        assert kind in TERMINAL
        empty = torch.zeros(0, self.features, dtype=self.dtype, device=self.device)
        for _ in range(2):  # one for each receive the peer keeps posted
            self.send(m, empty, kind)
        while self._pending:
            self._retire_oldest()


class Receiver:
    def __init__(self, src: int, max_rows: int, features: int, dtype: torch.dtype,
                 device: torch.device, timeout: float, name: str,
                 on_beat: Callable[[], None] | None = None,
                 first_timeout: float | None = None) -> None:
        """``first_timeout`` bounds the wait for the first message (the peer may still be
        setting up); ``timeout`` every later one."""
        self.src, self.timeout, self.name, self.on_beat = src, timeout, name, on_beat
        self._first_timeout = first_timeout if first_timeout is not None else timeout
        self._slots = [(torch.empty(3, dtype=torch.int64, device=device),
                        torch.empty(max_rows, features, dtype=dtype, device=device))
                       for _ in range(2)]
        self._works: list[list[dist.Work]] = [[], []]
        self._next = 0
        self._pending_repost: int | None = None
        for k in range(2):
            self._post(k)

    def _post(self, k: int) -> None:
        header, payload = self._slots[k]
        what = f"{self.name}: lost stage {self.src} while receiving"
        self._works[k] = [_post(dist.irecv, header, self.src, what),
                          _post(dist.irecv, payload, self.src, what)]

    def get(self) -> tuple[int, int, torch.Tensor | None]:
        """The next message that is not a heartbeat: ``(DATA | PROBE, m, x)``, with ``x`` valid
        until the next call, or ``(END | PLAN, m, None)``, after which the link is done."""
        self._flush()
        while True:
            k = self._next
            self._take(k)
            header, payload = self._slots[k]
            m, rows, kind = header.tolist()
            if kind in TERMINAL:
                self._take((k + 1) % 2)  # the second copy fills the receive posted ahead
                return kind, m, None
            if kind == BEAT:
                if self.on_beat is not None:
                    self.on_beat()
                self._repost(k)
                continue
            self._pending_repost = k  # the consumer is done with slot k at the next call
            return kind, m, payload[:rows]

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
        self._next = (k + 1) % 2

    def _take(self, k: int) -> None:
        timeout, self._first_timeout = self._first_timeout, self.timeout
        for w in self._works[k]:
            _wait(w, timeout, f"{self.name}: lost stage {self.src} while receiving", self.src)
