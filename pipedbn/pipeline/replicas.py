"""Replicas of one stage combine their updates: what every sync policy shares.

A stage with ``r`` replicas trains replica ``m mod r`` on micro-batch ``m``. The stream is cut
into *rounds* of ``sync_every * r`` micro-batches the stage trains on (about ``sync_every`` per
replica), and every replica ticks its clock before it handles its first micro-batch of the next
round: a round boundary is a point of the stream, so replicas that see different micro-batches
(a layer frozen on some of them, a partial round at the end) still tick together, and a replica
that waits at a boundary holds back nothing that its peers need to reach it. At each tick a
replica's *update* is the change of every parameter since it last accounted for them (the way a
worker pushes its update to a parameter server); every replica ends up adding every replica's
update once. Velocities (momentum), persistent chains, sparsity statistics and random streams
stay with their replica.

- ``bsp`` and ``bsp_delayed`` (``sync_allreduce.py``): one sum all-reduce of the stage's
  flattened update per tick on the stage's own process group (``collectives.py``); replicas are
  bit-identical after each tick (``bsp``) or one round behind their peers, deterministically
  (``bsp_delayed``);
- ``ssp`` and ``adaptive`` (``sync_p2p.py``): point-to-point updates with bounded staleness.

At a checkpoint every replica takes replica 0's state; at the end of its part of the stream
every replica has every update, and replica 0's state is the layer's from then on.
"""

from __future__ import annotations

import math
import time
import zlib
from collections import deque
from dataclasses import dataclass, field

import torch

from pipedbn.config import BalancerConfig
from pipedbn.model.rbm import RBM, layer_seed
from pipedbn.observe.monitor import Metrics


class Bucket:
    """The parameters replicas exchange, every parameter of the stage's layers in layer order,
    as one flat vector of a fixed layout."""

    def __init__(self, layers: list[RBM]) -> None:
        self.layers = layers
        self.numel = sum(p.numel() for layer in layers for p in layer.parameters())

    def views(self) -> list[torch.Tensor]:
        return [p for layer in self.layers for p in layer.parameters()]

    def flat(self) -> torch.Tensor:
        return torch.cat([v.reshape(-1) for v in self.views()])

    def add(self, delta: torch.Tensor) -> None:
        i = 0
        for v in self.views():
            v.add_(delta[i:i + v.numel()].view_as(v))
            i += v.numel()

    def set(self, flat: torch.Tensor) -> None:
        i = 0
        for v in self.views():
            v.copy_(flat[i:i + v.numel()].view_as(v))
            i += v.numel()

    def running(self) -> list[torch.Tensor]:
        """What a checkpoint also hands from replica 0 to the others (chains, estimates)."""
        return [t for layer in self.layers for t in layer.running_buffers()]


@dataclass(frozen=True)
class RoundsSetup:
    """What a replica's sync policy is made from (``segment.py``), whichever policy it is."""

    layers: list[RBM]
    """The stage's layers on this replica."""
    replica: int
    boundaries: list[int]
    """The first micro-batch of each round after the first (``round_boundaries``)."""
    cfg: BalancerConfig
    """The ``balancer`` section: the policy, ``sync_every``, staleness, ``check_replicas``."""
    timeout: float
    """``pipeline.timeout``: what any one wait of the sync may take at most."""
    name: str
    """How errors name this replica (``Role.name``)."""
    metrics: Metrics
    cuts: set[int] = field(default_factory=set)
    """The boundaries that are checkpoints."""
    seed: int = 0
    tb_every: int = 1
    """Every tick goes to ``metrics.jsonl``; to TensorBoard only the first at or past each
    multiple of this (a summary per tick cost 8 replicas on 2 cores a fifth of their time)."""


class Rounds:
    """A replica's clock: the round boundaries it ticks at, its speed, and its tick records.
    Subclasses (the policies) implement ``_tick``, ``_reset`` and ``finish``."""

    def __init__(self, setup: RoundsSetup) -> None:
        self.layers, self.replica, self.name = setup.layers, setup.replica, setup.name
        self.metrics, self.timeout = setup.metrics, setup.timeout
        self.bucket = Bucket(setup.layers)
        self.cuts, self.seed = setup.cuts, setup.seed
        self.boundaries = deque(setup.boundaries)
        self.tb_every, self._tb_next = max(1, setup.tb_every), 0
        self.checksums = setup.cfg.check_replicas
        self.clock = 0
        self.handled = 0
        self.messages = 0
        """Messages (point-to-point sends, or collectives) this replica handed out, in all."""
        self.bytes = 0
        """Bytes of the tensors it handed to them, in all."""
        self._t_tick = time.perf_counter()
        self.speed = 0.0  # seconds per micro-batch of this replica since its last tick

    @property
    def next_boundary(self) -> float:
        return self.boundaries[0] if self.boundaries else math.inf

    def tick(self) -> int | None:
        """The clock tick at ``next_boundary``: call it before the first micro-batch at or after
        the boundary, having handled everything before it (and count handled micro-batches in
        ``handled``, for the replica's speed). Returns the boundary if it is a checkpoint."""
        m = self.boundaries.popleft()
        cut = m in self.cuts
        if self._tick(m, cut) and cut:
            self._reset(m)
            return m
        return None

    def drain(self, stop: int) -> list[int]:
        """At the end of this replica's part: tick the boundaries it did not reach that every
        replica must meet (policies differ); returns the checkpoints among them."""
        last = max((c for c in self.cuts if c <= stop and c in self.boundaries), default=None)
        done = []
        while last is not None and self.boundaries and self.boundaries[0] <= last:
            c = self.tick()
            if c is not None:
                done.append(c)
        return done

    def finish(self) -> None:
        raise NotImplementedError

    def _tick(self, m: int, cut: bool) -> bool:
        """The sync at boundary ``m``; False if it turned out not to be a real tick (a replica
        past the end of the segment), so a checkpoint there is not taken."""
        raise NotImplementedError

    def _reset(self, m: int) -> None:
        raise NotImplementedError

    def _clock(self) -> None:
        now = time.perf_counter()
        if self.handled:
            self.speed = (now - self._t_tick) / self.handled
        self._t_tick, self.handled = now, 0
        self.clock += 1

    def _record(self, m: int, rec: dict[str, float]) -> None:
        if self.checksums:
            flat = self.bucket.flat()
            rec["crc32"] = float(zlib.crc32(flat.cpu().numpy().tobytes()))
        tb = m >= self._tb_next
        if tb:
            self._tb_next = (m // self.tb_every + 1) * self.tb_every
        self.metrics.scalars(m, self.layers[0].index, {k: float(v) for k, v in rec.items()},
                             "replica", tb)

    def _restart(self, m: int) -> None:
        """Replicas beyond the first start again at a checkpoint (``start_replica``)."""
        if self.replica > 0:
            for layer in self.layers:
                start_replica(layer, self.seed, self.replica, m)


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
