"""One simulated replica's ``ReplicaSync`` (``pipedbn/pipeline/replicas.py``): its clock, its
peers' clocks, the updates in flight."""

from __future__ import annotations

from collections.abc import Sequence

from pipedbn.sim.engine import Process, Transfer, Wait
from pipedbn.sim.inputs import SyncPolicy
from pipedbn.sim.wires import Wires


class Replicas:
    """Replica ``j`` of a stage on ``ranks``; a tick sends ``nbytes`` (its layers' parameter
    delta) to every peer."""

    def __init__(self, wires: Wires, ranks: Sequence[int], j: int, nbytes: float,
                 policy: SyncPolicy) -> None:
        self.wires, self.rank, self.nbytes, self.policy = wires, ranks[j], nbytes, policy
        self.peers = [k for i, k in enumerate(ranks) if i != j]
        self.stale = 0 if policy.kind == "bsp" else policy.staleness
        self.keep = 2 * policy.staleness + 4  # sends kept unconfirmed (``ReplicaSync._send``)
        self.clock = 0
        self.received = {k: 0 for k in self.peers}  # messages taken from each peer
        self.peer_clock = {k: 0 for k in self.peers}
        self.finished: set[int] = set()
        self.sent: list[list[Transfer]] = []

    def send(self, final: bool) -> Process:
        batch = []
        for k in self.peers:
            t = self.wires.channel("sync", self.rank, k).message(self.clock - 1 + final)
            t.final = final
            self.wires.transmit(t, self.nbytes, self.policy.messages)
            batch.append(t)
        self.sent.append(batch)
        while len(self.sent) > self.keep:
            for t in self.sent.pop(0):
                yield Wait(t.done)

    def post(self, k: int) -> Transfer:
        """``_post_receive``: a buffer posted for peer k's next update."""
        t = self.wires.channel("sync", k, self.rank).message(self.received[k])
        self.wires.engine.post(t)
        return t

    def take(self, k: int, t: Transfer) -> Process:
        """``_take``: wait for a posted update."""
        yield Wait(t.done)
        self.received[k] += 1
        if t.final:
            self.finished.add(k)
        else:
            self.peer_clock[k] += 1

    def receive(self, k: int) -> Process:
        yield from self.take(k, self.post(k))

    def tick(self) -> Process:
        self.clock += 1
        yield from self.send(final=False)
        if self.policy.kind == "bsp":  # every peer's receive posted first, then taken
            posted = [(k, self.post(k)) for k in self.peers if k not in self.finished]
            for k, t in posted:
                yield from self.take(k, t)
            return
        for k in self.peers:
            while k not in self.finished and self.peer_clock[k] < self.clock - self.stale:
                yield from self.receive(k)

    def finish(self) -> Process:
        yield from self.send(final=True)
        for k in self.peers:
            while k not in self.finished:
                yield from self.receive(k)
        for batch in self.sent:
            for t in batch:
                yield Wait(t.done)
