"""``ssp`` and ``adaptive``: replicas send each other their updates point to point.

At each tick a replica sends every peer its own update since its last tick in one message, the
header (kind, clock, speed) packed behind it, and adds the peers' updates it takes:

- ``ssp``: at tick ``c`` a replica takes its peers' updates up to their tick ``c - s`` (waiting
  only for a peer more than ``s`` ticks behind) and goes on: no replica runs more than ``s``
  ticks ahead of the slowest. Taking exactly the ``s``-stale updates keeps it reproducible for a
  given plan, although replicas differ in rounding until the end of the stream. ``s = 0`` is
  BSP on point-to-point messages (the sync ``bsp`` was before it became one all-reduce).
- ``adaptive``: SSP whose staleness follows the measured speeds: a replica ``rho`` times faster
  than its slowest peer may run ``ceil(rho) - 1`` ticks ahead (at most ``staleness``), and every
  ``barrier_every`` micro-batches all replicas meet (staleness 0).

They stay on point-to-point messages because a replica here takes each peer's update on its own
schedule (a fast replica runs ahead of a slow one, and adaptive reads every peer's own speed
from its header); a collective makes every member join each call in the same order. At the end
of its part of the stream a replica sends its last update marked FINAL and takes every peer's
remaining updates, so all replicas end with every update.
"""

from __future__ import annotations

import math
import time
from collections import deque

import torch
import torch.distributed as dist

from pipedbn.pipeline.replicas import Rounds, RoundsSetup
from pipedbn.pipeline.transport import _post, _wait, irecv, isend

TICK, FINAL = 0, 1


class PeerSync(Rounds):
    def __init__(self, setup: RoundsSetup, ranks: tuple[int, ...]) -> None:
        """``ranks``: the stage's, replica j on ``ranks[j]``."""
        super().__init__(setup)
        cfg, replica = setup.cfg, setup.replica
        self.ranks = ranks
        self.policy, self.every, self.max_stale = cfg.sync, cfg.sync_every, cfg.staleness
        self.barrier = max(1, math.ceil(cfg.barrier_every / cfg.sync_every))
        self.peers = [k for k in range(len(ranks)) if k != replica]
        self.snapshot = self.bucket.flat()
        self.peer_clock = {k: 0 for k in self.peers}
        self.peer_speed = {k: 0.0 for k in self.peers}
        self.finished: set[int] = set()
        self._sent: deque[tuple[list[dist.Work], torch.Tensor]] = deque()
        per = max(1, 8 // self.snapshot.element_size())  # elements per int64 of the header
        self._header_at = -(-self.snapshot.numel() // per) * per
        self._msg_len = self._header_at + 3 * per

    def _reset(self, m: int) -> None:
        """At a checkpoint: every replica takes replica 0's state (which holds every update
        before ``m``, the checkpoint's), with no velocity of its own and a new random stream,
        as when a plan starts its replicas there; a run resumed from ``m`` does the same."""
        parts = self.bucket.running()
        flat = torch.cat([self.snapshot] + [t.reshape(-1) for t in parts])
        if self.replica == 0:
            works = [_post(isend, flat, self.ranks[k],
                           f"{self.name}: lost replica {k} at a checkpoint")
                     for k in self.peers if k not in self.finished]
            self.messages += len(works)
            self.bytes += len(works) * flat.numel() * flat.element_size()
            for w in works:
                _wait(w, self.timeout, f"{self.name}: a replica stopped at a checkpoint", -1)
            return
        what = f"{self.name}: lost replica 0 (rank {self.ranks[0]}) at a checkpoint"
        _wait(_post(irecv, flat, self.ranks[0], what), self.timeout, what, self.ranks[0])
        n = self.snapshot.numel()
        self.snapshot = flat[:n].clone()
        self.bucket.set(self.snapshot)
        i = n
        for t in parts:
            t.copy_(flat[i:i + t.numel()].view_as(t))
            i += t.numel()
        self._restart(m)

    def _tick(self, m: int, cut: bool) -> bool:
        self._clock()
        sent = self.messages, self.bytes
        self._send(TICK)
        t0 = time.perf_counter()
        stale = 0 if cut else self._staleness()  # a checkpoint holds every update
        if stale == 0:  # every peer's receive posted first: their messages land at once
            posted = {k: self._post_receive(k) for k in self.peers
                      if k not in self.finished and self.peer_clock[k] < self.clock}
            for k, p in posted.items():
                self.bucket.add(self._take(k, p))
        for k in self.peers:
            while k not in self.finished and self.peer_clock[k] < self.clock - stale:
                self.bucket.add(self._receive(k))
        self.snapshot = self.bucket.flat()
        wait = time.perf_counter() - t0
        behind = [self.peer_clock[k] for k in self.peers if k not in self.finished]
        drift = self.clock - min(behind) if behind else 0
        self._record(m, {"clock": self.clock, "drift": drift, "staleness": stale,
                         "wait_s": wait, "messages": self.messages - sent[0],
                         "bytes": self.bytes - sent[1]})
        return True

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
                self.bucket.add(self._receive(k))
        self.snapshot = self.bucket.flat()
        while self._sent:
            self._retire()

    def _send(self, kind: int) -> torch.Tensor:
        """Send every peer this replica's update since its last sync, in one message with its
        header (kind, clock, speed) packed behind it (r - 1 messages a tick, not 2(r - 1));
        returns the update (a view of the message, which stays untouched)."""
        n = self.snapshot.numel()
        msg = torch.empty(self._msg_len, dtype=self.snapshot.dtype, device=self.snapshot.device)
        torch.sub(self.bucket.flat(), self.snapshot, out=msg[:n])
        self._header(msg).copy_(torch.tensor([kind, self.clock, int(self.speed * 1e9)]))
        works: list[dist.Work] = []
        for k in self.peers:  # a finished peer still takes updates until this one's FINAL
            what = f"{self.name}: lost replica {k} (rank {self.ranks[k]}) while syncing"
            works.append(_post(isend, msg, self.ranks[k], what))
        self.messages += len(works)
        self.bytes += len(works) * msg.numel() * msg.element_size()
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
        return _post(irecv, msg, rank, what), msg

    def _receive(self, k: int) -> torch.Tensor:
        return self._take(k, self._post_receive(k))

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

    def _header(self, msg: torch.Tensor) -> torch.Tensor:
        """The int64[3] header at the end of a message, aligned to 8 bytes."""
        return msg[self._header_at:].view(torch.int64)
