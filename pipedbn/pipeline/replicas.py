"""Replicas of one stage combine their updates: the seed's data-parallel sync policies.

A stage with ``r`` replicas trains replica ``m mod r`` on micro-batch ``m``. The stream is cut
into *rounds* of ``sync_every * r`` micro-batches the stage trains on (about ``sync_every`` per
replica), and every replica ticks its clock before it handles its first micro-batch of the next
round: a round boundary is a point of the stream, so replicas that see different micro-batches
(a layer frozen on some of them, a partial round at the end) still tick together, and a replica
that waits at a boundary holds back nothing that its peers need to reach it. At each tick it
sends its peers
its own update since its last tick (the change of every parameter, the way a worker pushes its
update to a parameter server) and adds the updates it receives to its parameters, so each
micro-batch's update is applied once on every replica. Velocities (momentum), persistent chains,
sparsity statistics and random streams stay with their replica.

- ``bsp``: at tick ``c`` every replica waits for every peer's tick ``c``, then sets its
  parameters to (parameters at the last sync) + the updates of all replicas *in replica order*.
  Replicas are bit-for-bit equal after each sync and the run is deterministic.
- ``ssp``: at tick ``c`` a replica takes its peers' updates up to their tick ``c - s`` (waiting
  only for a peer more than ``s`` ticks behind) and goes on: no replica runs more than ``s``
  ticks ahead of the slowest. Taking exactly the ``s``-stale updates keeps it reproducible for a
  given plan, although replicas differ in rounding until the end of the stream.
- ``adaptive``: SSP whose staleness follows the measured speeds: a replica ``rho`` times faster
  than its slowest peer may run ``ceil(rho) - 1`` ticks ahead (at most ``staleness``), and every
  ``barrier_every`` micro-batches all replicas meet (staleness 0).

At the end of its part of the stream a replica sends its last update marked FINAL and takes
every peer's remaining updates, so all replicas end with every update; replica 0's state is the
layer's state from then on.
"""

from __future__ import annotations

import math
import time
from collections import deque

import torch
import torch.distributed as dist

from pipedbn.config import BalancerConfig
from pipedbn.model.rbm import RBM, layer_seed
from pipedbn.observe.monitor import Metrics
from pipedbn.pipeline.transport import _post, _wait

TICK, FINAL = 0, 1


class ReplicaSync:
    def __init__(self, layers: list[RBM], ranks: tuple[int, ...], replica: int,
                 cfg: BalancerConfig, boundaries: list[int], timeout: float, name: str,
                 metrics: Metrics, cuts: set[int] | None = None, seed: int = 0,
                 tb_every: int = 1) -> None:
        """``boundaries``: the first micro-batch of each round after the first; ``cuts``: those
        that are checkpoints (``round_boundaries``). Every tick goes to ``metrics.jsonl``; to
        TensorBoard only the first tick at or past each multiple of ``tb_every`` (a summary
        per tick cost 8 replicas on 2 cores a fifth of their time)."""
        self.tb_every, self._tb_next = max(1, tb_every), 0
        self.cuts, self.seed = cuts or set(), seed
        self.layers, self.ranks, self.replica = layers, ranks, replica
        self.policy, self.every, self.max_stale = cfg.sync, cfg.sync_every, cfg.staleness
        self.barrier = max(1, math.ceil(cfg.barrier_every / cfg.sync_every))
        self.timeout, self.name, self.metrics = timeout, name, metrics
        self.peers = [k for k in range(len(ranks)) if k != replica]
        self.snapshot = self._flat()
        self.clock = 0
        self.boundaries = deque(boundaries)
        self.handled = 0
        self.peer_clock = {k: 0 for k in self.peers}
        self.peer_speed = {k: 0.0 for k in self.peers}
        self.finished: set[int] = set()
        self._sent: deque[tuple[list[dist.Work], torch.Tensor]] = deque()
        per = max(1, 8 // self.snapshot.element_size())  # elements per int64 of the header
        self._header_at = -(-self.snapshot.numel() // per) * per
        self._msg_len = self._header_at + 3 * per
        self._t_tick = time.perf_counter()
        self.speed = 0.0  # seconds per micro-batch of this replica since its last tick

    def _views(self) -> list[torch.Tensor]:
        """What replicas exchange: every parameter of the stage's layers, in layer order."""
        return [p for layer in self.layers for p in layer.parameters()]

    def _flat(self) -> torch.Tensor:
        return torch.cat([v.reshape(-1) for v in self._views()])

    def _add(self, delta: torch.Tensor) -> None:
        i = 0
        for v in self._views():
            v.add_(delta[i:i + v.numel()].view_as(v))
            i += v.numel()

    def _set(self, flat: torch.Tensor) -> None:
        i = 0
        for v in self._views():
            v.copy_(flat[i:i + v.numel()].view_as(v))
            i += v.numel()

    @property
    def next_boundary(self) -> float:
        return self.boundaries[0] if self.boundaries else math.inf

    def tick(self) -> int | None:
        """The clock tick at ``next_boundary``: call it before the first micro-batch at or after
        the boundary, having handled everything before it (and count handled micro-batches in
        ``handled``, for the replica's speed). Returns the boundary if it is a checkpoint."""
        m = self.boundaries.popleft()
        cut = m in self.cuts
        self._tick(m, cut)
        if cut:
            self._reset(m)
            return m
        return None

    def drain(self, stop: int) -> list[int]:
        """At the end of this replica's part: tick every boundary up to the last checkpoint
        at or before ``stop`` (every replica does, so the cut holds every update before it);
        returns those checkpoints."""
        last = max((c for c in self.cuts if c <= stop and c in self.boundaries), default=None)
        done = []
        while last is not None and self.boundaries and self.boundaries[0] <= last:
            c = self.tick()
            if c is not None:
                done.append(c)
        return done

    def _reset(self, m: int) -> None:
        """At a checkpoint: every replica takes replica 0's state (which holds every update
        before ``m``, the checkpoint's), with no velocity of its own and a new random stream,
        as when a plan starts its replicas there; a run resumed from ``m`` does the same."""
        parts = [t for layer in self.layers for t in layer.running_buffers()]
        flat = torch.cat([self.snapshot] + [t.reshape(-1) for t in parts])
        if self.replica == 0:
            works = [_post(dist.isend, flat, self.ranks[k],
                           f"{self.name}: lost replica {k} at a checkpoint")
                     for k in self.peers if k not in self.finished]
            for w in works:
                _wait(w, self.timeout, f"{self.name}: a replica stopped at a checkpoint", -1)
            return
        what = f"{self.name}: lost replica 0 (rank {self.ranks[0]}) at a checkpoint"
        _wait(_post(dist.irecv, flat, self.ranks[0], what), self.timeout, what, self.ranks[0])
        n = self.snapshot.numel()
        self.snapshot = flat[:n].clone()
        self._set(self.snapshot)
        i = n
        for t in parts:
            t.copy_(flat[i:i + t.numel()].view_as(t))
            i += t.numel()
        for layer in self.layers:
            start_replica(layer, self.seed, self.replica, m)

    def _tick(self, m: int, cut: bool = False) -> None:
        now = time.perf_counter()
        if self.handled:
            self.speed = (now - self._t_tick) / self.handled
        self._t_tick, self.handled = now, 0
        self.clock += 1
        own = self._send(TICK)
        t0 = time.perf_counter()
        if self.policy == "bsp":
            deltas = {self.replica: own}
            posted = {k: self._post_receive(k) for k in self.peers if k not in self.finished}
            for k, p in posted.items():  # all posted first: the peers' messages land at once
                deltas[k] = self._take(k, p)
            total = self.snapshot.clone()
            for k in sorted(deltas):
                total += deltas[k]
            self._set(total)
            self.snapshot = total
            stale = 0
        else:
            stale = 0 if cut else self._staleness()  # a checkpoint holds every update
            for k in self.peers:
                while k not in self.finished and self.peer_clock[k] < self.clock - stale:
                    self._add(self._receive(k))
            self.snapshot = self._flat()
        wait = time.perf_counter() - t0
        behind = [self.peer_clock[k] for k in self.peers if k not in self.finished]
        drift = self.clock - min(behind) if behind else 0
        rec = {"clock": self.clock, "drift": drift, "staleness": stale, "wait_s": wait}
        layer = self.layers[0].index
        tb = m >= self._tb_next
        if tb:
            self._tb_next = (m // self.tb_every + 1) * self.tb_every
        self.metrics.scalars(m, layer, {k: float(v) for k, v in rec.items()}, "replica", tb)

    def _staleness(self) -> int:
        if self.policy == "ssp":
            return self.max_stale
        if self.clock % self.barrier == 0:
            return 0  # the slowest replica has done barrier_every micro-batches: all meet
        slowest = max([self.peer_speed[k] for k in self.peers if k not in self.finished],
                      default=0.0)
        if self.speed <= 0 or slowest <= 0:
            return min(1, self.max_stale)
        return max(0, min(self.max_stale, math.ceil(slowest / self.speed) - 1))

    def finish(self) -> None:
        """End of this replica's part of the stream: exchange every remaining update."""
        self._send(FINAL)
        for k in self.peers:
            while k not in self.finished:
                self._add(self._receive(k))
        self.snapshot = self._flat()
        while self._sent:
            self._retire()

    def _send(self, kind: int) -> torch.Tensor:
        """Send every peer this replica's update since its last sync, in one message with its
        header (kind, clock, speed) packed behind it (r - 1 messages a tick, not 2(r - 1));
        returns the update (a view of the message, which stays untouched)."""
        n = self.snapshot.numel()
        msg = torch.empty(self._msg_len, dtype=self.snapshot.dtype, device=self.snapshot.device)
        torch.sub(self._flat(), self.snapshot, out=msg[:n])
        self._header(msg).copy_(torch.tensor([kind, self.clock, int(self.speed * 1e9)]))
        works: list[dist.Work] = []
        for k in self.peers:  # a finished peer still takes updates until this one's FINAL
            what = f"{self.name}: lost replica {k} (rank {self.ranks[k]}) while syncing"
            works.append(_post(dist.isend, msg, self.ranks[k], what))
        self._sent.append((works, msg))
        while len(self._sent) > 2 * self.max_stale + 4:  # a peer s behind takes ours 2s late
            self._retire()
        return msg[:n]

    def _retire(self) -> None:
        works, _ = self._sent.popleft()
        for w in works:
            _wait(w, self.timeout, f"{self.name}: a replica stopped taking updates", -1)

    def _post_receive(self, k: int) -> tuple[dist.Work, torch.Tensor]:
        rank = self.ranks[k]
        msg = torch.empty(self._msg_len, dtype=self.snapshot.dtype, device=self.snapshot.device)
        what = f"{self.name}: lost replica {k} (rank {rank}) while syncing"
        return _post(dist.irecv, msg, rank, what), msg

    def _take(self, k: int, posted: tuple[dist.Work, torch.Tensor]) -> torch.Tensor:
        """Peer k's update from a posted receive (its clock and speed recorded; FINAL marks it
        finished)."""
        work, msg = posted
        rank = self.ranks[k]
        _wait(work, self.timeout, f"{self.name}: lost replica {k} (rank {rank}) while syncing",
              rank)
        kind, clock, speed_ns = self._header(msg).tolist()
        self.peer_clock[k] = clock
        self.peer_speed[k] = speed_ns / 1e9
        if kind == FINAL:
            self.finished.add(k)
            self.peer_clock[k] = 1 << 62
        return msg[:self.snapshot.numel()]

    def _receive(self, k: int) -> torch.Tensor:
        return self._take(k, self._post_receive(k))

    def _header(self, msg: torch.Tensor) -> torch.Tensor:
        """The int64[3] header at the end of a message, aligned to 8 bytes."""
        return msg[self._header_at:].view(torch.int64)


def replica_generator(seed: int, layer: int, replica: int, begin: int,
                      device: torch.device) -> torch.Generator:
    """Replica ``replica`` (>= 1) of a layer draws from its own stream, a pure function of the
    seed, the layer, the replica and the micro-batch where the replica began."""
    s = layer_seed(seed, layer) ^ (0x9E3779B97F4A7C15 * (replica + 1) + begin) % (1 << 63)
    return torch.Generator(device).manual_seed(s % (1 << 63))


def round_boundaries(trained: list[int], per_round: int, cuts: list[int]
                     ) -> tuple[list[int], set[int]]:
    """The ticks of a replicated stage that trains on ``trained`` (stream order) in rounds of
    ``per_round``, and which of them are checkpoints. Rounds start again at each checkpoint,
    so a run resumed from one ticks where the uninterrupted run did."""
    if not trained:
        return [], set()
    cut_points = [c for c in cuts if c <= trained[-1]]
    ticks: set[int] = set(cut_points)
    edges = [-1] + cut_points + [trained[-1] + 1]
    for lo, hi in zip(edges, edges[1:], strict=False):
        piece = [m for m in trained if lo <= m < hi]
        ticks.update(piece[per_round::per_round])
    return sorted(ticks), set(cut_points)


def start_replica(layer: RBM, seed: int, replica: int, begin: int) -> None:
    """Replica ``replica`` (>= 1) of a layer starts at micro-batch ``begin`` from the layer's
    state, with no velocity of its own (the momentum carried over is counted once, by replica
    0) and its own random stream. The rule for replicas a plan starts, at a checkpoint and on
    resume alike."""
    layer.generator = replica_generator(seed, layer.index, replica, begin, layer.device)
    for t in layer.velocities():
        t.zero_()
