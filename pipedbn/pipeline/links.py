"""Links between two stages of a plan, whatever their replica counts.

Micro-batch ``m`` is handled by replica ``m mod r`` of a stage with ``r`` replicas, so the
replica of stage s-1 that sends ``m`` and the replica of stage s that receives it are both known
from ``m`` alone. A replica keeps one ``Receiver`` per replica below that can send to it and one
``Sender`` per replica above; it takes its micro-batches in stream order, each from the link it
must come on. Every sender handles its micro-batches in stream order too, so no link ever holds
a micro-batch that its receiver needs later than one it needs now: the smallest micro-batch not
yet taken can always move, and the routing cannot deadlock.

A link ends with END (the stream is over) or PLAN (the run re-plans at micro-batch ``m``: every
micro-batch before it has been sent, none after it will be); a replica's input ends when every
one of its links has ended the same way.

With a label top layer every DATA message carries the micro-batch's labels (int64 class
indices) as an extra tensor in the same message (``transport.Extra``); a PROBE message carries
none. Without labels the messages are as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pipedbn.pipeline.context import Ending, MicroBatch, RankContext, Role
from pipedbn.pipeline.transport import DATA, END, PROBE, Extra, Receiver, Sender

LABELS: tuple[Extra, ...] = (((), torch.int64),)
"""What a labelled link carries beside each micro-batch's rows: one class index per row."""


def feeds(senders: int, receivers: int, i: int, j: int) -> bool:
    """Whether replica ``i`` of a stage with ``senders`` replicas ever sends to replica ``j``
    of the next stage (``receivers`` replicas): some ``m`` has ``m % senders == i`` and
    ``m % receivers == j``, i.e. ``i`` and ``j`` agree modulo their gcd."""
    g = math.gcd(senders, receivers)
    return i % g == j % g


class Inbox:
    """A replica's input from the replicas of the stage below, in stream order."""

    def __init__(self, role: Role, ctx: RankContext, shape: tuple[int, int], timeout: float,
                 on_beat: Callable[[], None] | None = None, labelled: bool = False) -> None:
        """``shape``: (rows, features) of a full micro-batch; ``timeout`` bounds every wait
        but the first (``ctx.setup_timeout``); ``on_beat``: called on each heartbeat;
        ``labelled``: the micro-batches carry labels (the module doc)."""
        self.labelled = labelled
        extras = LABELS if labelled else ()
        below = role.plan.stages[role.stage - 1]
        self.upstream = below.replicas
        self.receivers: dict[int, Receiver] = {}
        for i, rank in enumerate(below.ranks):
            if feeds(below.replicas, role.replicas, i, role.replica):
                self.receivers[i] = Receiver(rank, *shape, ctx.dtype, ctx.device, timeout,
                                             role.name, on_beat=on_beat,
                                             first_timeout=ctx.setup_timeout, extras=extras)
        self.ending = Ending(END)
        """How the input ended (once ``take`` has returned None, or after ``finish``)."""

    def take(self, m: int) -> MicroBatch | None:
        """Micro-batch ``m`` (its rows valid until the next call), or None if the input ended
        before it; ``ending`` then says how and where."""
        receiver = self.receivers[m % self.upstream]
        kind, got, x = receiver.get()
        pieces = []
        while kind == PROBE:
            if got != m:
                raise RuntimeError(f"received the probe of micro-batch {got}, expected {m}")
            assert x is not None
            pieces.append(x.clone())  # the buffer is reused
            kind, got, x = receiver.get()
        probe = torch.cat(pieces) if pieces else None
        if kind == DATA:
            if got != m:  # the neighbour runs a different schedule: configs differ
                raise RuntimeError(f"received micro-batch {got}, expected {m}")
            assert x is not None
            if self.labelled:  # (a copy: the slot's buffer is reused by the next message)
                return MicroBatch(m, x, probe, receiver.extras[0].clone())
            return MicroBatch(m, x, probe)
        self._ended(kind, got, first=m % self.upstream)
        return None

    def finish(self) -> Ending:
        """After the last expected micro-batch: every link must end."""
        self._ended(END, -1, first=None)
        return self.ending

    def _ended(self, kind: int, at: int, first: int | None) -> None:
        ends = {} if first is None else {first: (kind, at)}
        for i, receiver in self.receivers.items():
            if i not in ends:
                k, got, x = receiver.get()
                if x is not None:
                    raise RuntimeError(f"received micro-batch {got} after the end of the input")
                ends[i] = (k, got)
        kinds = set(ends.values())
        if len(kinds) != 1:
            raise RuntimeError(f"the replicas below ended their streams differently: {ends}")
        (kind, at), = kinds
        self.ending = Ending(kind, at)


class Outbox:
    """A replica's output to the replicas of the stage above: ``m`` goes to replica ``m % r``."""

    def __init__(self, role: Role, ctx: RankContext, shape: tuple[int, int], window: int,
                 timeout: float, labelled: bool = False) -> None:
        """``shape``: (rows, features) of a full micro-batch; at most ``window`` messages in
        flight per link, each wait bounded by ``timeout``; a heartbeat after a quarter of
        ``ctx.timeout`` of quiet; ``labelled``: the micro-batches carry labels."""
        self.labelled = labelled
        extras = LABELS if labelled else ()
        above = role.plan.stages[role.stage + 1]
        self.downstream = above.replicas
        self.senders: dict[int, Sender] = {}
        for j, rank in enumerate(above.ranks):
            if feeds(role.replicas, above.replicas, role.replica, j):
                s = Sender(rank, *shape, ctx.dtype, ctx.device, window, timeout, role.name,
                           beat_every=ctx.timeout / 4, extras=extras)
                if role.replicas > 1:
                    # the replica above reads another link while this one is quiet: never
                    # wait on a heartbeat it has not taken (its posted receives, transport.POSTED
                    # of them, hold two)
                    s.max_beats = 2
                self.senders[j] = s

    def send(self, m: int, x: torch.Tensor, probe: torch.Tensor | None = None,
             labels: torch.Tensor | None = None) -> None:
        """Micro-batch ``m``'s rows ``x`` and, on a labelled link, its ``labels`` (one
        message), after its probe."""
        sender = self.senders[m % self.downstream]
        if probe is not None:
            for piece in probe.split(sender.max_rows):
                sender.send(m, piece, PROBE)
        if self.labelled:
            assert labels is not None, f"micro-batch {m} has lost its labels"
            sender.send(m, x, DATA, (labels,))
        else:
            sender.send(m, x, DATA)

    def beat_if_quiet(self) -> None:
        for s in self.senders.values():
            s.beat_if_quiet()

    @property
    def in_flight(self) -> int:
        return max(s.in_flight for s in self.senders.values())

    @property
    def max_in_flight(self) -> int:
        return max(s.max_in_flight for s in self.senders.values())

    def close(self, ending: Ending) -> None:
        for s in self.senders.values():
            s.close(ending.kind, ending.at)
