"""One simulated replica's share of its stage's all-reduce (``bsp``, ``bsp_delayed``): a ring
inside a node, the two-level all-reduce when the stage spans nodes, as transfers on the links.

For the replicas on node n (``g_n`` of them, in rank order) and ``m`` nodes:

1. a ring reduce-scatter among the node's replicas: ``g_n - 1`` steps of ``nbytes / g_n``;
2. with m > 1, ``g_min`` rings across the nodes at once, ring i joining each node's i-th
   replica: ``2 (m - 1)`` steps of ``nbytes / (g_min m)`` (a node's replicas beyond ``g_min``
   wait);
3. a ring all-gather among the node's replicas, as step 1.

A step sends one chunk to the next member and waits for the previous member's; each transfer
holds the ports and pays the latency like any message, so on otherwise idle links one all-reduce
takes ``cost.hierarchical_allreduce_s`` (on one node, ``cost.ring_allreduce_s``). The steps
inside a node are priced on ``Network.collective`` when it is given (a link measured as an
all-reduce), else on the node's message link. With
``bsp_delayed`` the all-reduce of tick c runs beside the replica's work and is waited for at
tick c + 1; a last blocking one at the end carries the final update.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipedbn.sim.engine import Process, Signal, Transfer, Wait
from pipedbn.sim.inputs import SyncPolicy
from pipedbn.sim.wires import Wires


class AllReduce:
    """Replica ``j`` of a stage on ``ranks`` all-reducing ``nbytes`` at each tick."""

    def __init__(self, wires: Wires, ranks: Sequence[int], j: int, nbytes: float,
                 policy: SyncPolicy) -> None:
        self.wires, self.rank, self.nbytes, self.policy = wires, ranks[j], nbytes, policy
        net = wires.network
        size = net.node_size if net.inter is not None and net.node_size else None
        nodes: dict[int, list[int]] = {}
        for k in sorted(ranks):
            nodes.setdefault(0 if size is None else k // size, []).append(k)
        groups = list(nodes.values())
        self.local = next(g for g in groups if self.rank in g)
        g_min = min(len(g) for g in groups)
        i = self.local.index(self.rank)
        self.across = [g[i] for g in groups] if len(groups) > 1 and i < g_min else []
        self.shard = nbytes / (g_min * len(groups))
        self.sent: dict[tuple[str, int], int] = {}
        self.got: dict[tuple[str, int], int] = {}
        self.pending: Signal | None = None

    def _ring(self, kind: str, members: list[int], steps: int, chunk: float,
              outgoing: list[Transfer]) -> Process:
        me = members.index(self.rank)
        nxt, prv = members[(me + 1) % len(members)], members[me - 1]
        for _ in range(steps):
            n = self.sent.get((kind, nxt), 0)
            t = self.wires.channel(kind, self.rank, nxt).message(n)
            self.sent[kind, nxt] = n + 1
            self.wires.transmit(t, chunk, link=self.wires.network.collective
                                if kind == "ar-in" else None)
            outgoing.append(t)
            n = self.got.get((kind, prv), 0)
            r = self.wires.channel(kind, prv, self.rank).message(n)
            self.got[kind, prv] = n + 1
            self.wires.engine.post(r)
            yield Wait(r.done)

    def allreduce(self, done: Signal | None = None) -> Process:
        """One all-reduce (``done`` fires when this replica holds the sum)."""
        outgoing: list[Transfer] = []
        g = len(self.local)
        yield from self._ring("ar-in", self.local, g - 1, self.nbytes / g, outgoing)
        if self.across:
            yield from self._ring("ar-across", self.across, 2 * (len(self.across) - 1),
                                  self.shard, outgoing)
        yield from self._ring("ar-in", self.local, g - 1, self.nbytes / g, outgoing)
        for t in outgoing:
            yield Wait(t.done)
        if done is not None:
            self.wires.engine.fire(done)

    def tick(self) -> Process:
        if self.policy.kind != "bsp_delayed":
            yield from self.allreduce()
            return
        if self.pending is not None:  # apply tick c - 1's sum before starting tick c's
            yield Wait(self.pending)
        self.pending = Signal()
        self.wires.engine.spawn(self.allreduce(self.pending))

    def finish(self) -> Process:
        """``AllReduceSync.finish``: final rounds until every replica has flagged its end;
        after the drain every replica flags the first (no re-plan here), so one."""
        if self.pending is not None:
            yield Wait(self.pending)
        yield from self.allreduce()
