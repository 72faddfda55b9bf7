"""The links' latency and bandwidth, measured at start-up by a short collective probe
(``balancer.costs: profile`` with ``balancer.links: probe``).

Two link classes, as the planner prices them (``cost.py``): *intra* (ranks inside one node,
``balancer.bandwidth``/``latency``) and *inter* (between nodes, ``balancer.inter_*``). Each is
timed on one group: the ranks of the fullest node (intra), and the first rank of every node
(inter); a class with fewer than two such ranks is not measured and keeps its configured
figures. On each group every member times ``REPEATS`` sum all-reduces of a ``SMALL`` and of a
``LARGE`` tensor after one warm-up of each (a barrier before each, the median of each), and the
ring model the planner uses, ``t(n) = 2 (r - 1) latency + 2 (r - 1) / r x n / bandwidth``, is
inverted through the two sizes (``invert``). Rank 0 takes the median over the members, rounds
the figures to 3 significant digits and broadcasts them, so every rank plans with the same ones
(and ``config.yaml`` holds exactly those).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from pipedbn.config import Config

SMALL, LARGE = 8, 4 * 2**20
"""Bytes of the two tensors timed: latency dominates the small one, bandwidth the large one."""
REPEATS = 5


def invert(ranks: int, small: tuple[float, float], large: tuple[float, float]
           ) -> tuple[float, float]:
    """(latency, bandwidth) of the ring all-reduce model through two (bytes, seconds) points:
    the slope in bytes is ``2 (r - 1) / (r bandwidth)``, the intercept ``2 (r - 1) latency``.
    When noise makes the large tensor no slower than the small one, the large one's time is
    taken as all bandwidth and the small one's as all latency (bounds of each)."""
    if ranks < 2:
        raise ValueError(f"{ranks} ranks: an all-reduce needs at least 2")
    (n0, t0), (n1, t1) = small, large
    if not 0 <= n0 < n1 or t0 <= 0 or t1 <= 0:
        raise ValueError(f"sizes {n0} < {n1} bytes and positive times {t0}, {t1} s needed")
    steps, moved = 2 * (ranks - 1), 2 * (ranks - 1) / ranks
    slope = (t1 - t0) / (n1 - n0)
    if slope <= 0:
        return t0 / steps, moved * n1 / t1
    bandwidth = moved / slope
    return max(0.0, t0 - moved * n0 / bandwidth) / steps, bandwidth


@dataclass(frozen=True)
class Link:
    """One class's measured figures."""

    ranks: int
    latency: float
    bandwidth: float
    small_s: float
    large_s: float

    def describe(self) -> str:
        return (f"{self.ranks} ranks, latency {self.latency * 1e6:.0f} us, bandwidth "
                f"{self.bandwidth / 1e9:.3g} GB/s (all-reduce of {SMALL} B {self.small_s * 1e6:.0f}"
                f" us, of {LARGE / 2**20:g} MiB {self.large_s * 1e3:.2f} ms)")


@dataclass(frozen=True)
class Links:
    """What the probe measured (None: the class could not be) and how long it took."""

    intra: Link | None
    inter: Link | None
    seconds: float

    def into(self, cfg: Config) -> Config:
        """``cfg`` with the measured figures in place of the configured ones and
        ``balancer.links: config``, so that re-running it plans with the same figures."""
        b = cfg.balancer
        changes: dict[str, object] = {"links": "config"}
        if self.intra is not None:
            changes.update(bandwidth=self.intra.bandwidth, latency=self.intra.latency)
        if self.inter is not None:
            changes.update(inter_bandwidth=self.inter.bandwidth, inter_latency=self.inter.latency)
        return dataclasses.replace(cfg, balancer=dataclasses.replace(b, **changes))  # type: ignore[arg-type]

    def describe(self) -> str:
        parts = [f"{name} {link.describe()}" if link is not None else f"{name} not measured"
                 for name, link in (("inside a node:", self.intra), ("between nodes:", self.inter))]
        return f"links probed in {self.seconds:.2f} s: " + "; ".join(parts)


def probe_groups(nodes: list[str]) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """The ranks timed for each class (``nodes``: every rank's node): the fullest node's
    (the first of the fullest), and each node's first rank; None where fewer than two."""
    by_node: dict[str, list[int]] = {}
    for r, n in enumerate(nodes):
        by_node.setdefault(n, []).append(r)
    fullest = max(by_node.values(), key=len)
    leaders = tuple(m[0] for m in by_node.values())
    return (tuple(fullest) if len(fullest) > 1 else None,
            leaders if len(leaders) > 1 else None)


def _time(group: dist.ProcessGroup, device: torch.device, timeout: float, repeats: int
          ) -> tuple[float, float]:
    """This member's median seconds of an all-reduce of each size on ``group``."""
    wait = timedelta(seconds=timeout)
    out = []
    for nbytes in (SMALL, LARGE):
        x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
        times = []
        for k in range(repeats + 1):
            dist.barrier(group=group)
            t0 = time.perf_counter()
            dist.all_reduce(x, group=group, async_op=True).wait(wait)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if k:  # the first is the warm-up
                times.append(time.perf_counter() - t0)
        out.append(statistics.median(times))
    return out[0], out[1]


def probe_links(nodes: list[str], device: torch.device, timeout: float,
                repeats: int = REPEATS) -> Links:
    """Measure both classes (collective over the world: every rank calls it with the same
    ``nodes``, e.g. ``collectives.node_ids()``); every rank gets rank 0's figures."""
    start = time.perf_counter()
    rank = dist.get_rank()
    mine: dict[str, tuple[float, float]] = {}
    classes = dict(zip(("intra", "inter"), probe_groups(nodes), strict=True))
    for name, members in classes.items():
        if members is None:
            continue
        group = dist.new_group(list(members), timeout=timedelta(seconds=timeout))
        if rank in members:
            mine[name] = _time(group, device, timeout, repeats)
            dist.destroy_process_group(group)
    every: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    box: list[object] = [None]
    if rank == 0:
        links: dict[str, Link | None] = {}
        for name, members in classes.items():
            got = [t[name] for t in every if isinstance(t, dict) and name in t]
            if members is None or not got:
                links[name] = None
                continue
            small = statistics.median(t[0] for t in got)
            large = statistics.median(t[1] for t in got)
            lat, bw = (float(f"{x:.3g}")  # as config.yaml will hold them
                       for x in invert(len(members), (SMALL, small), (LARGE, large)))
            links[name] = Link(len(members), lat, bw, small, large)
        box = [Links(links["intra"], links["inter"], time.perf_counter() - start)]
    dist.broadcast_object_list(box, src=0)
    assert isinstance(box[0], Links)
    return box[0]
