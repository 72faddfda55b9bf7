"""The balancer at run time: the first plan, step-time reports, and re-planning decisions.

- **First plan**: ``balancer.plan`` as written, or the exact planner (``pipedbn.balancer``) over
  modelled costs (FLOPs, a pure function of the config) or profiled ones (every rank times a few
  real steps of every layer; a rank's speed factor is its median ratio to the others).
- **Reports**: with ``balancer.replan`` on, every rank puts its measured seconds per micro-batch
  of each of its layers (and its own extra time per micro-batch, a slowed device) into the
  process group's key-value store every ``check_every`` micro-batches.
- **Decisions**: stage 0's first replica (the *coordinator*) looks at the reports each time the
  stream reaches a multiple of ``check_every`` and writes its decision under ``decision/<q>``;
  the other replicas of stage 0 read it there, so every replica of stage 0 stops at the same
  micro-batch. A re-plan happens when the plan in use, priced with the measured costs, is more
  than ``threshold`` slower than the best plan for them, and the time it would save over the
  rest of the stream exceeds what the re-plan costs (a drain of the pipeline, the state moves).
  Stage 0 then ends its stream with PLAN at that micro-batch, the marker flows up the pipeline
  behind the last micro-batch of the old plan, and every rank moves layer state to the new
  owners (``moves.py``).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from pipedbn.balancer import Plan, Problem, cd_flops, evaluate, solve, state_bytes
from pipedbn.balancer.cost import param_count
from pipedbn.config import Config
from pipedbn.errors import ConfigError
from pipedbn.observe.monitor import Metrics
from pipedbn.pipeline.device import wants_cuda
from pipedbn.pipeline.layers import dtype_of, make_layer, make_schedule, train_on

log = logging.getLogger("pipedbn")

REPLAN_S = 0.2
"""Fixed cost of a re-plan beyond the drain (state moves, new links), about what it takes on
loopback gloo for small layers."""


def node_size(cfg: Config, world: int) -> int | None:
    """Ranks per node: ``balancer.ranks_per_node``, else torchrun's ``LOCAL_WORLD_SIZE`` when
    the world spans several nodes; None: one node."""
    if cfg.balancer.ranks_per_node is not None:
        return cfg.balancer.ranks_per_node
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return int(local) if local.isdigit() and 0 < int(local) < world else None


def problem_for(cfg: Config, features: int, world: int,
                costs: Sequence[float] | None = None,
                speed: Sequence[float] | None = None, ranks_per_node: int | None = None
                ) -> Problem:
    """The planning problem of this config on ``world`` ranks; ``costs`` (seconds per
    micro-batch) default to the FLOP model at ``balancer.flops``; ``ranks_per_node`` to
    ``node_size``."""
    b = cfg.balancer
    sizes = [features] + cfg.sizes
    width = 8 if cfg.train.dtype == "float64" else 4
    pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
    if costs is None:
        costs = [cd_flops(n, h, lc.gibbs_steps()) * cfg.train.batch_size / b.flops
                 for (n, h), lc in zip(pairs, cfg.layers, strict=True)]
    return Problem(
        costs=list(costs), world=world, speed=list(speed) if speed is not None else None,
        sync_bytes=[param_count(n, h) * width for n, h in pairs],
        bandwidth=b.bandwidth, latency=b.latency, sync_every=b.sync_every,
        memory=[state_bytes(n, h, cfg.train.batch_size, lc.chain_rows(), width)
                for (n, h), lc in zip(pairs, cfg.layers, strict=True)],
        memory_cap=b.memory_mb * 2**20 if b.memory_mb is not None else None,
        max_replicas=b.max_replicas, sync=b.sync,
        node_size=ranks_per_node or node_size(cfg, world), inter_bandwidth=b.inter_bandwidth,
        inter_latency=b.inter_latency, hierarchy="leaders")  # what collectives.py runs


def machine_memory(device: str) -> tuple[int, str]:
    """Bytes of memory one rank has on ``device`` (``train.device``) and what they are."""
    if wants_cuda(device):
        index = torch.device(device if device != "auto" else "cuda").index or 0
        return torch.cuda.get_device_properties(index).total_memory, f"GPU {index}"
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine's RAM"


def check_memory(cfg: Config, features: int) -> None:
    """Refuse, before any run directory exists, a layer too large to train even on a rank of
    its own: its modelled state (``state_bytes``: weights, micro-batch buffers, persistent
    chains) exceeds the whole memory of the device."""
    have, what = machine_memory(cfg.train.device)
    sizes = [features] + cfg.sizes
    width = 8 if cfg.train.dtype == "float64" else 4
    batch = cfg.train.batch_size  # the pipeline's buffers hold a full micro-batch
    problems = []
    for i, lc in enumerate(cfg.layers):
        need = state_bytes(sizes[i], sizes[i + 1], batch, lc.chain_rows(), width)
        if need > have:
            chains = f", {lc.pcd_chains} persistent chains" if lc.pcd_chains else ""
            problems.append(
                f"layers.{i}: {sizes[i]} x {sizes[i + 1]} units, micro-batches of {batch}"
                f"{chains}: about {need / 2**30:.3g} GiB to train, more than the "
                f"{have / 2**30:.3g} GiB of {what}; make the layer, train.batch_size or "
                "pcd_chains smaller")
    if problems:
        raise ConfigError(problems)


def first_plan(cfg: Config, features: int, world: int,
               profile: list[list[float]] | None = None) -> tuple[Plan, Problem]:
    """The plan a run starts with (``profile``: seconds per micro-batch of every layer on every
    rank); raises ConfigError when the world cannot run it."""
    if profile is not None:
        costs = [statistics.median(row[i] for row in profile) for i in range(len(cfg.layers))]
        speed = [round(statistics.median(row[i] / costs[i] for i in range(len(costs))) / 0.05)
                 * 0.05 or 0.05 for row in profile]  # 5% classes keep the exact search small
        problem = problem_for(cfg, features, world, costs, speed)
    else:
        problem = problem_for(cfg, features, world)
    try:
        if cfg.balancer.plan != "auto":
            return Plan.parse(cfg.balancer.plan, world, len(cfg.layers)), problem
        return solve(problem).plan, problem
    except ValueError as e:
        raise ConfigError([f"balancer.plan: {e}"]) from None


def profile_layers(cfg: Config, features: int, device: torch.device, steps: int = 3
                   ) -> list[float]:
    """Seconds per micro-batch of a CD step of every layer on this rank's device (fresh layers,
    random input; the fastest of ``steps`` after one warm-up)."""
    schedule = make_schedule(cfg, 1)
    out = []
    for i in range(len(cfg.layers)):
        mean = torch.zeros(features).numpy() if i == 0 else None
        layer = make_layer(cfg, i, features, schedule, device, mean)
        x = torch.rand(cfg.train.batch_size, layer.n_visible, dtype=dtype_of(cfg), device=device)
        labels = torch.zeros(len(x), dtype=torch.int64, device=device)  # (a label layer's)
        best = float("inf")
        for s in range(steps + 1):
            t0 = time.perf_counter()
            train_on(layer, x, labels)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if s:
                best = min(best, time.perf_counter() - t0)
        out.append(best)
    return out


def store(attempt: str = "") -> dist.Store:
    """The key-value store of this attempt of the run: under torchrun the rendezvous store
    may outlive a restart, and keys of the attempt before must not be read again."""
    from torch.distributed.distributed_c10d import _get_default_store

    return dist.PrefixStore(f"pipedbn/{attempt}/", _get_default_store())


def put(kv: dist.Store, key: str, value: Any) -> None:
    kv.set(key, json.dumps(value))


def get(kv: dist.Store, key: str, timeout: float) -> Any:
    """The value under ``key``, waiting for it at most ``timeout`` seconds."""
    kv.wait([key], timedelta(seconds=timeout))
    return json.loads(kv.get(key))


def get_forever(kv: dist.Store, key: str, poll: float = 5.0) -> Any:
    """The value under ``key``, however long it takes: a rank left idle by the plan waits here
    for the end of the segment. It needs no timeout of its own: if a stage fails, the launcher
    (torchrun or ``pipedbn train``) stops every process."""
    while True:
        try:
            return get(kv, key, poll)
        except dist.DistStoreError:
            continue


class Reporter:
    """Measured seconds per micro-batch of this rank's layers, put in the store."""

    def __init__(self, kv: dist.Store | None, rank: int, segment: int) -> None:
        self.kv, self.rank, self.segment = kv, rank, segment
        self.layer_s: dict[int, float] = {}
        self.count = 0
        self.extra_s = 0.0

    def add(self, layer_s: dict[int, float], extra_s: float) -> None:
        for i, s in layer_s.items():
            self.layer_s[i] = self.layer_s.get(i, 0.0) + s
        self.extra_s += extra_s
        self.count += 1

    def publish(self) -> None:
        if self.kv is None or not self.count:
            return
        put(self.kv, f"stats/{self.rank}", {
            "segment": self.segment, "count": self.count,
            "layer_s": {str(i): s / self.count for i, s in self.layer_s.items()},
            "extra_s": self.extra_s / self.count})
        self.layer_s, self.count, self.extra_s = {}, 0, 0.0


class Coordinator:
    """Decides at each check whether the run re-plans (runs on stage 0's first replica)."""

    def __init__(self, cfg: Config, kv: dist.Store, plan: Plan, problem: Problem, segment: int,
                 metrics: Metrics, length: int) -> None:
        self.cfg, self.kv, self.plan, self.problem = cfg, kv, plan, problem
        self.length = length
        self.segment, self.metrics = segment, metrics
        self.extra = list(problem.extra) if problem.extra else [0.0] * problem.world

    def decide(self, q: int, m: int) -> Plan | None:
        """The new plan from micro-batch ``m = q * check_every`` on, or None to keep this one."""
        measured = self._measured()
        decision: dict[str, Any] = {"q": q, "at": m, "replan": False}
        if measured is not None:
            costs, extra = measured
            problem = Problem(**{**vars(self.problem), "costs": costs, "extra": extra})
            current = max(evaluate(problem, self.plan))
            best = solve(problem)
            decision.update(current_s=current, best_s=best.bottleneck)
            self.metrics.scalars(m, 0, {"current_s": current, "best_s": best.bottleneck},
                                 "balancer")
            # a re-plan drains the pipeline and moves state: worth it only if the time it
            # saves over the rest of the stream pays for that
            cost = (len(self.plan.stages) + self.cfg.pipeline.window) * current + REPLAN_S
            gain = (current - best.bottleneck) * (self.length - m)
            decision.update(gain_s=gain, cost_s=cost)
            if (current > (1 + self.cfg.balancer.threshold) * best.bottleneck
                    and gain > cost and best.plan != self.plan):
                decision.update(replan=True, plan=best.plan.to_dict(), costs=costs, extra=extra)
                log.info("re-plan at micro-batch %d: the plan in use takes %.4f s per "
                         "micro-batch on measured costs, the best %.4f s; new plan: %s",
                         m, current, best.bottleneck, best.plan.describe())
                self.metrics.event(m, 0, "balancer/replan", {
                    "at": m, "from": self.plan.describe(), "to": best.plan.describe(),
                    "current_s": current, "best_s": best.bottleneck,
                    "costs_s": costs, "extra_s": extra})
        put(self.kv, f"decision/{q}", decision)
        return Plan.from_dict(decision["plan"]) if decision["replan"] else None

    def _measured(self) -> tuple[list[float], list[float]] | None:
        """Per-layer costs at speed 1 and per-rank extras from this segment's reports, or None
        while some stage has not reported yet."""
        speed = self.problem.speed or [1.0] * self.problem.world
        per_layer: dict[int, list[float]] = {}
        extra = list(self.extra)
        for stage in self.plan.stages:
            for rank in stage.ranks:
                key = f"stats/{rank}"
                if not self.kv.check([key]):
                    return None
                rep = json.loads(self.kv.get(key))
                if rep["segment"] != self.segment:
                    return None
                for i, s in rep["layer_s"].items():
                    per_layer.setdefault(int(i), []).append(s / speed[rank])
                extra[rank] = rep["extra_s"]
        if len(per_layer) < self.plan.layers:
            return None
        costs = [max(statistics.median(per_layer[i]), 1e-9) for i in range(self.plan.layers)]
        step = 0.05 * min(costs)  # ranks whose extras differ by noise only are one class
        return costs, [round(e / step) * step for e in extra]
