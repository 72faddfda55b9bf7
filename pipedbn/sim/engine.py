"""The event engine under the simulator: processes, shared cores and point-to-point transfers.

A *process* is a generator that yields what it does next:

- ``Work(seconds, cpu=True)``: run for ``seconds`` of CPU time; with ``cpu=False`` a plain delay
  (a straggler's sleep, a GPU kernel) that uses no host core;
- ``Wait(signal)``: block until the ``Signal`` fires (at once if it already has).

*Shared cores*: with ``cores`` set, every CPU activity running at once progresses at
``min(1, cores / n)`` (processor sharing). All of them share one rate, so the engine keeps one
*virtual* clock of CPU work done per activity and a heap of virtual finish times; delays sit in a
heap of real times. An event costs O(log n).

*Transfers* model a message on a link: it starts once the sender has posted it, the receiver has
posted a buffer for it and the sender's egress port and the receiver's ingress port are free (one
message's bytes at a time each way per rank, a NIC); it holds both ports for ``occupy`` seconds
(its bytes) and arrives ``delay`` seconds later (its latency, which messages in flight overlap).
On a host link (loopback gloo) both are CPU work like any other.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field


class Signal:
    """A one-shot event: ``at`` is when it fired (NaN until then)."""

    __slots__ = ("fired", "at", "waiters")

    def __init__(self) -> None:
        self.fired = False
        self.at = math.nan
        self.waiters: list[Generator[object, None, None]] = []


@dataclass(frozen=True)
class Work:
    seconds: float
    """How long the work takes with a core of its own (CPU) or at all (a delay)."""
    cpu: bool = True
    """Whether it needs a host core (shared when more CPU work runs than there are cores)."""


@dataclass(frozen=True)
class Wait:
    signal: Signal
    """Resume when this fires."""


Process = Generator[object, None, None]


@dataclass
class Transfer:
    """One message from rank ``src`` to rank ``dst`` (``done`` fires when it has arrived)."""

    src: int
    dst: int
    occupy: float = 0.0
    """Seconds it holds the ports (bytes / bandwidth)."""
    delay: float = 0.0
    """Seconds from leaving the ports to arriving (latency)."""
    cpu: bool = False
    final: bool = False
    """The sender's last update (a replica's FINAL)."""
    posted: Signal = field(default_factory=Signal)
    """The receiver has posted a buffer for it."""
    done: Signal = field(default_factory=Signal)
    seq: int = -1
    """Its place in the order of sends (-1: not sent yet or started)."""


def _call(f: Callable[[Transfer], None], t: Transfer) -> Callable[[], None]:
    return lambda: f(t)


class Engine:
    def __init__(self, cores: float | None = None, background: float = 0.0) -> None:
        """``background``: CPU-bound work of other jobs that shares the cores all along, in
        activities (1.5: one busy process and one half busy)."""
        if cores is not None and not cores > 0:
            raise ValueError(f"cores is {cores!r}; give a number > 0, or None for no limit")
        self.cores, self.background = cores, background
        self.now = 0.0
        self._seq = itertools.count()  # ties resolve in creation order: deterministic
        self._ready: deque[Process] = deque()
        self._delays: list[tuple[float, int, Callable[[], None]]] = []  # (real end, seq, then)
        self._cpu: list[tuple[float, int, Callable[[], None]]] = []  # (virtual end, seq, then)
        self._virtual = 0.0  # CPU seconds each running CPU activity has received so far
        # sent transfers not yet started, per sender and per receiver, each in order of sending
        self._by_src: dict[int, list[Transfer]] = {}
        self._by_dst: dict[int, list[Transfer]] = {}
        self._busy_out: set[int] = set()
        self._busy_in: set[int] = set()
        self._live = 0

    def spawn(self, process: Process) -> None:
        self._live += 1
        self._ready.append(process)

    def fire(self, signal: Signal) -> None:
        if signal.fired:
            return
        signal.fired, signal.at = True, self.now
        self._ready.extend(signal.waiters)
        signal.waiters.clear()

    def start(self, seconds: float, cpu: bool, then: Callable[[], None]) -> None:
        """Begin an activity; ``then()`` runs when it ends."""
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError(f"an activity of {seconds!r} s; durations must be finite and >= 0")
        if cpu and self.cores is not None:
            heapq.heappush(self._cpu, (self._virtual + seconds, next(self._seq), then))
        else:
            heapq.heappush(self._delays, (self.now + seconds, next(self._seq), then))

    def send(self, t: Transfer) -> None:
        """Post a transfer; it starts as soon as its receiver and both ports allow."""
        t.seq = next(self._seq)
        self._by_src.setdefault(t.src, []).append(t)
        self._by_dst.setdefault(t.dst, []).append(t)
        self._try_transfers([t])

    def post(self, t: Transfer) -> None:
        """The receiver has a buffer ready for ``t``."""
        self.fire(t.posted)
        if t.seq >= 0:
            self._try_transfers([t])

    def _try_transfers(self, candidates: list[Transfer]) -> None:
        """Start, in order of sending, those of ``candidates`` that can start. Only a send, a
        post or freed ports let a transfer start, and each call names the transfers that event
        concerns, so the result is that of trying every waiting transfer in order."""
        for t in candidates:
            if (t.seq >= 0 and t.posted.fired and t.src not in self._busy_out
                    and t.dst not in self._busy_in):
                self._by_src[t.src].remove(t)
                self._by_dst[t.dst].remove(t)
                t.seq = -1
                self._busy_out.add(t.src)
                self._busy_in.add(t.dst)
                self.start(t.occupy, t.cpu, _call(self._sent, t))

    def _sent(self, t: Transfer) -> None:
        self._busy_out.discard(t.src)
        self._busy_in.discard(t.dst)
        self.start(t.delay, t.cpu, lambda: self.fire(t.done))
        waiting = self._by_src.get(t.src, []) + self._by_dst.get(t.dst, [])
        self._try_transfers(sorted(waiting, key=lambda w: w.seq))

    def _rate(self) -> float:
        n = len(self._cpu) + self.background
        return 1.0 if self.cores is None or n <= self.cores else self.cores / n

    def run(self) -> float:
        """Run every process to its end; returns the time the last activity ended."""
        while True:
            while self._ready:
                self._step(self._ready.popleft())
            if not self._delays and not self._cpu:
                break
            rate = self._rate()
            t_cpu = (self.now + (self._cpu[0][0] - self._virtual) / rate if self._cpu
                     else math.inf)
            t_delay = self._delays[0][0] if self._delays else math.inf
            t = max(min(t_cpu, t_delay), self.now)
            self._virtual += (t - self.now) * rate
            self.now = t
            done = []
            while self._delays and self._delays[0][0] <= t:
                done.append(heapq.heappop(self._delays)[1:])
            while self._cpu and self._cpu[0][0] <= self._virtual + 1e-12:
                done.append(heapq.heappop(self._cpu)[1:])
            for _, then in sorted(done, key=lambda d: d[0]):
                then()
        if self._live:
            raise RuntimeError(f"deadlock: {self._live} process(es) wait for something that "
                               "never happens (a window, buffer or peer the model never frees)")
        return self.now

    def _step(self, process: Process) -> None:
        try:
            request = next(process)
        except StopIteration:
            self._live -= 1
            return
        if isinstance(request, Work):
            self.start(request.seconds, request.cpu, lambda: self._ready.append(process))
        elif isinstance(request, Wait):
            if request.signal.fired:
                self._ready.append(process)
            else:
                request.signal.waiters.append(process)
        else:
            raise TypeError(f"a process yielded {request!r}; yield Work or Wait")
