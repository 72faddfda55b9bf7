"""A simulation of a pipedbn config's run: its schedule, plan, layer sizes, batch and sync
settings from the config, its step times measured or modelled."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipedbn.balancer import Plan, cd_flops, forward_flops, param_count, solve
from pipedbn.balancer.runtime import problem_for
from pipedbn.config import Config, load_config, resolve_defaults
from pipedbn.data.loader import open_data
from pipedbn.pipeline.layers import make_schedule
from pipedbn.run.local import default_nproc
from pipedbn.sim.inputs import LayerCost, Link, Network, Options, SyncPolicy, stages_of
from pipedbn.sim.result import SimResult
from pipedbn.sim.stream import simulate
from stages import registry


def load(config: str | Path, overrides: Sequence[str] = ()) -> Config:
    """A config file with ``key=value`` overrides, defaults resolved (as ``pipedbn train``)."""
    return resolve_defaults(load_config(Path(config), list(overrides)))


def data_shape(cfg: Config) -> tuple[int, int, list[int]]:
    """(features, micro-batches per epoch, rows of each batch of an epoch) of the config's data."""
    data = open_data(cfg, unit_range=registry.get(cfg.layers[0].kind).unit_visible)
    rows = [len(data.batch_rows(0, j)) for j in range(data.batches_per_epoch)]  # its slices
    return data.features, data.batches_per_epoch, rows


def flops_step_s(cfg: Config, features: int, flops: float) -> list[float]:
    """Each layer's CD step time at ``flops`` FLOP/s (``cd_flops`` of a micro-batch)."""
    sizes = [features] + cfg.sizes
    return [cd_flops(a, b, lc.gibbs_steps()) * cfg.train.batch_size / flops
            for a, b, lc in zip(sizes, sizes[1:], cfg.layers, strict=False)]


def plan_world(cfg: Config, spec: str) -> int:
    """The ranks ``pipedbn train`` starts for the config with plan ``spec``: those the plan
    names, one per layer for ``auto`` (``run.local.default_nproc``)."""
    return default_nproc(dataclasses.replace(cfg, balancer=dataclasses.replace(cfg.balancer,
                                                                               plan=spec)))


@dataclass(frozen=True)
class StepTimes:
    """Each layer's measured (or modelled) seconds per micro-batch."""

    step_s: Sequence[float]
    """A training step (CD), on a core of its own."""
    forward_s: Sequence[float] | None = None
    """A frozen layer's pass up; None: ``step_s`` scaled by ``forward_flops / cd_flops``."""
    sleep_s: Sequence[float] | None = None
    """Non-CPU seconds after the layer; None: the config's ``straggler`` (a layer's sleep from
    ``straggler.after``)."""


@dataclass(frozen=True)
class Machine:
    """Where the simulated run runs, besides the config."""

    link: Link = Link(latency=1e-4, bandwidth=1e9)
    """Every link between ranks (``cpu=True``: loopback, the transfers share the cores)."""
    cores: float | None = None
    """Host cores the ranks share; None: a device each."""
    read_s: float = 0.0
    """Seconds of stage 0's prefetch thread per micro-batch."""
    sync_messages: int = 1
    """Messages per peer per replica tick."""
    background: float = 0.0
    """Other jobs' CPU-bound load on the ``cores``."""
    collective: str = "allreduce"
    """How ``bsp`` replicas sync (``SyncPolicy.collective``): ``p2p`` for the engine before the
    collectives."""
    inter: Link | None = None
    """The link between nodes; None: ``link`` everywhere."""
    ranks_per_node: int | None = None
    """Ranks per node with ``inter`` (rank k on node k // ranks_per_node)."""
    collective_link: Link | None = None
    """What an all-reduce's ring steps inside a node cost (``Network.collective``); None:
    ``link``'s."""


def from_config(cfg: Config | str | Path, plan_spec: str | None, world: int, times: StepTimes,
                machine: Machine = Machine(), shape: tuple[int, int, list[int]] | None = None
                ) -> SimResult:
    """Simulate the config's run on ``world`` ranks with these step times on ``machine``.

    ``plan_spec``: a plan (``Plan.parse`` forms); None: ``balancer.plan``, and for ``auto`` the
    planner's plan for these step times (``problem_for``). ``shape``: ``data_shape(cfg)`` if
    known (else the data is opened to count its batches)."""
    cfg = load(cfg) if isinstance(cfg, str | Path) else cfg
    features, per_epoch, rows = shape or data_shape(cfg)
    n = len(cfg.layers)
    step_s, forward_s, sleep_s = times.step_s, times.forward_s, times.sleep_s
    for name, xs in (("step_s", step_s), ("forward_s", forward_s), ("sleep_s", sleep_s)):
        if xs is not None and len(xs) != n:
            raise ValueError(f"{name} has {len(xs)} entries for {n} layers; give one per layer")
    st = cfg.straggler
    if st.rank is not None and st.sleep_s > 0:
        raise ValueError("straggler.rank (a whole rank sleeping) is not modelled; use "
                         "straggler.layer or sleep_s")
    sizes = [features] + cfg.sizes
    costs = []
    for i, lc in enumerate(cfg.layers):
        fwd = (forward_s[i] if forward_s is not None else
               step_s[i] * forward_flops(sizes[i], sizes[i + 1]) / cd_flops(sizes[i],
                                                                             sizes[i + 1],
                                                                             lc.gibbs_steps()))
        sleep, start = 0.0, 0
        if sleep_s is not None:
            sleep = sleep_s[i]
        elif st.layer == i:
            sleep, start = st.sleep_s, st.after
        costs.append(LayerCost(step_s[i], fwd, sleep, start, sizes[i + 1],
                               param_count(sizes[i], sizes[i + 1])))
    spec = plan_spec or cfg.balancer.plan
    if spec == "auto":
        work = [c.step_s + c.sleep_s for c in costs]
        plan = solve(problem_for(cfg, features, world, work,
                                 ranks_per_node=machine.ranks_per_node)).plan
    else:
        plan = Plan.parse(spec, world, n)
    b = cfg.balancer
    opt = Options(window=cfg.pipeline.window, batch=cfg.train.batch_size, rows=rows,
                  cores=machine.cores,
                  sync=SyncPolicy(b.sync, b.sync_every, b.staleness, machine.sync_messages,
                                  machine.collective),
                  dtype_bytes=8 if cfg.train.dtype == "float64" else 4, read_s=machine.read_s,
                  prefetch=cfg.data.prefetch, background=machine.background)
    net = Network(machine.link, machine.inter, machine.ranks_per_node, machine.collective_link)
    result = simulate(make_schedule(cfg, per_epoch), stages_of(plan), costs, net, opt)
    result.plan = plan.spec()
    return result
