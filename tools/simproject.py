"""Projections of the simulator (``pipedbn.sim``): a 784-2000-2000-2000-2000 DBN on 8 to 256 GPUs.

    python -m tools.simproject [--write-docs]   # the tables of docs/simulate.md

Every figure here is a model's, from stated assumptions (``GPU``), not a measurement: per-layer
step times from ``cd_flops`` at an assumed sustained FP32 rate, links from vendor-class figures.
For each world size the real planner (``pipedbn.balancer.solve``, topology-aware: 8 GPUs a node,
two links, the sync priced as its all-reduce) picks the plan for those costs and the simulator
runs it on the two-level network (streaming, every layer on every micro-batch, ``bsp`` and
``bsp_delayed``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pipedbn.balancer import (
    Problem,
    cd_flops,
    forward_flops,
    param_count,
    solve,
    stage_time,
)
from pipedbn.pipeline.schedule import build_schedule
from pipedbn.sim import (
    LayerCost,
    Link,
    Network,
    Options,
    SimResult,
    SyncPolicy,
    simulate,
    stages_of,
)
from tools.benchdocs import ROOT, write_section

SIZES = [784, 2000, 2000, 2000, 2000]
BATCH = 1000
WORLDS = [1, 4, 8, 16, 32, 64, 256]
ROUNDS = 32
"""Rounds each replica of the most replicated stage simulates (its first has no tick before
it, its last ends with the final all-reduce)."""


@dataclass(frozen=True)
class GPU:
    peak_flops: float = 50e12
    """FP32 FLOP/s of one GPU without TF32 tensor cores: H100 PCIe is listed at 51 TFLOP/s,
    SXM at 67 (an assumption: no H100 was run for these figures)."""
    efficiency: float = 0.6
    """Share of the peak a CD-1 step sustains: five GEMMs of 1000 x 2000 x 2000 are large
    enough for cuBLAS to run near its best, the sampling and elementwise passes are not."""
    intra: Link = Link(latency=8e-6, bandwidth=300e9)
    """Between GPUs of a node (NVLink-class: ~300 GB/s one way achieved of H100's 450)."""
    inter: Link = Link(latency=15e-6, bandwidth=25e9)
    """Between nodes, per GPU (one 200 Gb/s InfiniBand NIC per GPU)."""
    per_node: int = 8

    def step_s(self, n_in: int, n_out: int) -> float:
        return cd_flops(n_in, n_out, 1) * BATCH / (self.peak_flops * self.efficiency)


def cell(spec: str) -> str:
    """A plan spec inside a markdown table cell."""
    return spec.replace("|", "\\|")


def costs(gpu: GPU) -> list[LayerCost]:
    pairs = list(zip(SIZES[:-1], SIZES[1:], strict=True))
    return [LayerCost(gpu.step_s(a, b), gpu.step_s(a, b) * forward_flops(a, b) / cd_flops(a, b, 1),
                      width=b, params=param_count(a, b)) for a, b in pairs]


def problem(world: int, gpu: GPU, sync_every: int = 1, sync: str = "bsp") -> Problem:
    """The planner's problem: the layers' steps and updates, 8 GPUs a node, both links."""
    layers = costs(gpu)
    return Problem(costs=[c.step_s for c in layers], world=world,
                   sync_bytes=[4.0 * c.params for c in layers], bandwidth=gpu.intra.bandwidth,
                   latency=gpu.intra.latency, sync_every=sync_every, sync=sync,
                   node_size=gpu.per_node, inter_bandwidth=gpu.inter.bandwidth,
                   inter_latency=gpu.inter.latency)


def plan_and_run(world: int, gpu: GPU, sync_every: int = 1, sync: str = "bsp"
                 ) -> tuple[str, float, SimResult]:
    """The topology-aware planner's plan for ``world`` GPUs and its simulation on the two-level
    network; returns (plan spec, planner samples/s, result)."""
    layers = costs(gpu)
    sol = solve(problem(world, gpu, sync_every, sync))
    r_max = max(s.replicas for s in sol.plan.stages)
    length = max(400, ROUNDS * r_max * sync_every)  # whole rounds; fill and drain a small part
    schedule = build_schedule("streaming", length, [1.0] * len(layers), 0.0)
    net = Network(gpu.intra, gpu.inter, gpu.per_node)
    res = simulate(schedule, stages_of(sol.plan), layers, net,
                   Options(window=4, batch=BATCH, sync=SyncPolicy(sync, sync_every)))
    return sol.plan.spec(), sol.samples_per_s(BATCH), res


def why(res: SimResult, layers: list[LayerCost], gpu: GPU, spec: str, world: int) -> str:
    """The bottleneck stage and what bounds it, in words."""
    stage = stages_of(spec, world, len(layers))[res.bottleneck]
    r = len(stage.ranks)
    work = sum(layers[i].step_s for i in stage.layers) * 1e3
    nodes = len({k // gpu.per_node for k in stage.ranks})
    where = f"{r} replicas on {nodes} node{'s' if nodes > 1 else ''}" if r > 1 else "1 GPU"
    return (f"stage {res.bottleneck} (layers {stage.layers[0]}-{stage.layers[-1]}, "
            f"{work:.2f} ms work, {where}): {res.limit}")


def table(gpu: GPU, worlds: list[int], syncs: Sequence[str] = ("bsp", "bsp_delayed")
          ) -> tuple[list[str], float]:
    layers = costs(gpu)
    one = BATCH / sum(c.step_s for c in layers)
    rows = ["| GPUs | sync | plan | planner samples/s | simulated samples/s | efficiency | "
            "bottleneck |", "|---|---|---|---|---|---|---|"]
    for n in worlds:
        for sync in syncs if n > 1 else syncs[:1]:
            spec, planned, res = plan_and_run(n, gpu, 1, sync)
            rows.append(f"| {n} | {sync if n > 1 else '-'} | `{cell(spec)}` | {planned:,.0f} | "
                        f"{res.samples_per_s:,.0f} | {res.samples_per_s / (n * one):.2f} | "
                        f"{why(res, layers, gpu, spec, n)} |")
    return rows, one


def sweep_bandwidth(gpu: GPU, world: int) -> list[str]:
    rows = ["| GPUs | inter-node GB/s per GPU | sync | plan | simulated samples/s | efficiency |",
            "|---|---|---|---|---|---|"]
    one = BATCH / sum(c.step_s for c in costs(gpu))
    for gbs in (6.25, 12.5, 50):
        for sync in ("bsp", "bsp_delayed"):
            g = replace(gpu, inter=replace(gpu.inter, bandwidth=gbs * 1e9))
            spec, _, res = plan_and_run(world, g, 1, sync)
            rows.append(f"| {world} | {gbs:g} | {sync} | `{cell(spec)}` | "
                        f"{res.samples_per_s:,.0f} | {res.samples_per_s / (world * one):.2f} |")
    return rows


def efficiency_bound(gpu: GPU, world: int, sync: str) -> float:
    """The planner's efficiency of the whole DBN on ``world`` GPUs (its plan up to 256 GPUs,
    priced by ``evaluate``, without the simulator's fill, drain and final all-reduce)."""
    layers = costs(gpu)
    p = problem(world, gpu, 1, sync)
    plan = stages_of(f"0-{len(layers) - 1}@0-{world - 1}", world, len(layers))
    period = stage_time(p, plan[0].layers, plan[0].ranks)
    return sum(c.step_s for c in layers) / world / period


def largest(gpu: GPU, sync: str, target: float = 0.8, most: int = 1 << 14) -> int:
    """The largest world of whole nodes whose ``efficiency_bound`` is >= ``target``."""
    best = 0
    for world in range(gpu.per_node, most + 1, gpu.per_node):
        if efficiency_bound(gpu, world, sync) >= target:
            best = world
    return best


def report(gpu: GPU | None = None) -> str:
    gpu = gpu or GPU()
    layers = costs(gpu)
    main, one = table(gpu, WORLDS)
    mb = BATCH * 2000 * 4 / 1e6
    sync_mb = 4 * layers[1].params / 1e6
    dbn_mb = 4 * sum(c.params for c in layers) / 1e6
    lines = [
        f"784-2000-2000-2000-2000 DBN, CD-1, micro-batch {BATCH}, fp32; every layer on every "
        f"micro-batch (`offset_epochs=0`), `sync_every: 1`. Assumed GPU: "
        f"{gpu.peak_flops / 1e12:g} TFLOP/s FP32 at {gpu.efficiency:.0%} efficiency, so CD-1 "
        "steps of " + ", ".join(f"{c.step_s * 1e3:.2f}" for c in layers)
        + f" ms per layer and {one:,.0f} samples/s on one GPU. Links: {gpu.per_node} GPUs per "
        f"node, intra-node {gpu.intra.bandwidth / 1e9:g} GB/s + {gpu.intra.latency * 1e6:g} µs, "
        f"inter-node {gpu.inter.bandwidth / 1e9:g} GB/s + {gpu.inter.latency * 1e6:g} µs per "
        f"GPU. An activation message is {mb:g} MB, a 2000x2000 layer's update "
        f"{sync_mb:.1f} MB, the whole DBN's {dbn_mb:.1f} MB. Each replica of the most "
        f"replicated stage runs {ROUNDS} rounds.",
        "",
        "Scaling (efficiency: simulated samples/s over N x one GPU; `bsp_delayed`: staleness "
        "one round):",
        "",
        *main,
        "",
        "Inter-node bandwidth per GPU, 64 GPUs:",
        "",
        *sweep_bandwidth(gpu, 64),
        "",
        "The largest N (whole nodes) at which the planner's model keeps the whole DBN at "
        f">= 0.8 efficiency: {largest(gpu, 'bsp')} GPUs with `bsp`, "
        f"{largest(gpu, 'bsp_delayed')} with `bsp_delayed`; >= 0.9: "
        f"{largest(gpu, 'bsp', 0.9)} and {largest(gpu, 'bsp_delayed', 0.9)}.",
    ]
    return "\n".join(lines)


def project(write_docs: bool = False) -> None:
    text = report()
    print(text)
    if write_docs:
        write_section("simulate", text, ROOT / "docs" / "simulate.md")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-docs", action="store_true",
                    help="write the tables into docs/simulate.md")
    project(write_docs=ap.parse_args(argv).write_docs)


if __name__ == "__main__":
    main()
