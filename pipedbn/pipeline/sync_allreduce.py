"""``bsp`` and ``bsp_delayed``: a sync round is one sum all-reduce of the stage's update.

Every replica keeps ``G``, the stage's *synced state*: the parameters at the start of the
segment plus every round's sum so far. It is the same bits on every replica (the same start,
the same sums, added in the same order). A round's bucket is one flat vector of a fixed layout:
the replica's own update since it last accounted for its parameters (``W - B``), then one flag.

- ``bsp``: at tick ``c`` the replica all-reduces its update and waits: ``G += sum``, ``W = G``.
  Every replica is bit-identical after every tick, and the run is deterministic for a plan.
- ``bsp_delayed``: at tick ``c`` it starts round ``c``'s all-reduce in the background and takes
  round ``c - 1``'s result: ``G += sum(c - 1)``, then ``W = G + d_c``, ``d_c`` its own update of
  round ``c`` (still in flight, so counted once: in ``W`` now, in ``G`` at tick ``c + 1``). The
  Gibbs sampling of round ``c + 1`` overlaps the transfer. A replica's own updates are never
  stale; its peers' reach it one round late, a fixed staleness, so the run stays deterministic
  (the replicas differ by their last own update between ticks, and agree again at every
  checkpoint and at the end). With one replica's worth of updates in flight the rule adds
  nothing twice: with identical data on every replica, a replica follows ``W_c = G_{c-1} +
  d_c``, and ``G`` the trajectory of BSP whose sums come one round late (tested).

Checkpoint ticks keep staleness 0 (the pending round is taken first, then the cut's round
waited for), so a checkpoint holds every update before it, as under ``bsp``.

The end of a replica's part of the stream: it ticks every boundary up to the segment's stop
that it did not reach, then joins *final* rounds (flag 1) until a round in which every replica's
flag is set. A replica that reached a boundary past the stop (a re-plan cuts the segment short,
and the replica learns it from its input only after that boundary's tick) meets the others'
final rounds with its flag clear, sees the flags and takes no checkpoint there; every replica
thus makes the same collectives in the same order, and all end with every update.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch
import torch.distributed as dist

from pipedbn.pipeline.collectives import StageGroups, broadcast_first, lost_replica, sum_round
from pipedbn.pipeline.replicas import Rounds, RoundsSetup
from pipedbn.pipeline.transport import LinkError

_Round = tuple[torch.Tensor, "Future[None] | None"]
ROUND_SHARE, GRACE_SHARE = 0.6, 0.2
"""Of ``pipeline.timeout``: the most a round waits, and the post-mortem after a failed one."""


class AllReduceSync(Rounds):
    def __init__(self, setup: RoundsSetup, groups: StageGroups, kv: dist.Store | None = None,
                 key: str = "") -> None:
        """``groups``: the stage's process groups; ``kv`` and ``key``: the store, and a key of
        this group's own, for naming a lost replica after a failed round
        (``collectives.lost_replica``)."""
        super().__init__(setup)
        self.groups, self.kv, self.key = groups, kv, key
        self.timeout = ROUND_SHARE * setup.timeout  # the post-mortem fits in the rest
        self.grace = min(5.0, GRACE_SHARE * setup.timeout)
        self.delayed = setup.cfg.sync == "bsp_delayed"
        self.synced = self.bucket.flat()  # G
        self.base = self.synced.clone()  # B: what W is accounted up to
        self.pending: _Round | None = None
        self.own_pending: torch.Tensor | None = None
        self.ending = False  # a final round was seen: this replica is past the segment's stop
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pipedbn-sync") if self.delayed \
            else None
        g = groups
        self._calls = (1 if not g.hierarchical else
                       2 * (g.node is not None) + (g.leaders is not None))

    def drain(self, stop: int) -> list[int]:
        """Every boundary up to ``stop``: each replica meets all of them before its final
        rounds."""
        done = []
        while self.boundaries and self.boundaries[0] <= stop:
            c = self.tick()
            if c is not None:
                done.append(c)
        return done

    def _tick(self, m: int, cut: bool) -> bool:
        self._clock()
        sent = self.messages, self.bytes
        t0 = time.perf_counter()
        delta = self.bucket.flat() - self.base
        if self.delayed and not cut:
            posted = self._post(delta, 0.0)
            self._take_pending()
            self.pending, self.own_pending = posted, delta
            self._account(self.synced + delta)
            stale = 1
        else:
            self._take_pending()
            self._take(self._post(delta, 0.0))
            self._account(self.synced)
            stale = 0
        self._record(m, {"clock": self.clock, "drift": stale, "staleness": stale,
                         "wait_s": time.perf_counter() - t0,
                         "messages": self.messages - sent[0], "bytes": self.bytes - sent[1]})
        return not self.ending

    def _reset(self, m: int) -> None:
        """At a checkpoint the parameters already agree; replicas take replica 0's other
        buffers and start again as a plan starts its replicas there (``start_replica``)."""
        parts = self.bucket.running()
        if parts:
            flat = torch.cat([t.reshape(-1) for t in parts])
            broadcast_first(flat, self.groups, self.timeout,
                            f"{self.name}: a replica stopped at a checkpoint")
            self.messages += 1
            self.bytes += flat.numel() * flat.element_size()
            i = 0
            for t in parts:
                t.copy_(flat[i:i + t.numel()].view_as(t))
                i += t.numel()
        self._restart(m)

    def finish(self) -> None:
        """Final rounds until every replica has flagged the end of its part."""
        self._take_pending()
        while True:
            flags = self._take(self._post(self.bucket.flat() - self.base, 1.0))
            self._account(self.synced)
            if flags == len(self.groups.ranks):
                break
        if self._pool is not None:
            self._pool.shutdown()

    def _account(self, w: torch.Tensor) -> None:
        self.bucket.set(w)
        self.base = w.clone()

    def _post(self, delta: torch.Tensor, flag: float) -> _Round:
        n = self.bucket.numel
        buf = torch.empty(n + 1, dtype=delta.dtype, device=delta.device)
        buf[:n] = delta
        buf[n] = flag
        self.messages += self._calls
        self.bytes += self._calls * buf.numel() * buf.element_size()
        if self._pool is None:
            self._reduce(buf)
            return buf, None
        return buf, self._pool.submit(self._reduce, buf)

    def _reduce(self, buf: torch.Tensor) -> None:
        try:
            sum_round(buf, self.groups, self.timeout, f"{self.name}: a sync round failed")
        except LinkError as e:
            raise self._named(e) from None

    def _take(self, posted: _Round) -> int:
        """Wait for a round; add its sum to ``G``; returns how many replicas flagged it."""
        buf, fut = posted
        if fut is not None:
            fut.result()  # raises the round's LinkError here
        n = self.bucket.numel
        self.synced += buf[:n]
        flags = round(float(buf[n]))
        if flags:
            self.ending = True
        return flags

    def _take_pending(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self._take(pending)

    def _named(self, e: LinkError) -> LinkError:
        """The failure, naming the replica that never answered."""
        ranks = self.groups.ranks
        lost = lost_replica(self.kv, self.key, self.replica, ranks, self.grace)
        if lost is None:
            lost = 1 if self.replica == 0 else 0
            return LinkError(f"{e} (replica {lost}, rank {ranks[lost]})", ranks[lost],
                             e.timed_out)
        return LinkError(f"{self.name}: lost replica {lost} (rank {ranks[lost]}) in a sync "
                         f"round: {str(e).split(': ', 1)[-1]}", ranks[lost], e.timed_out)
