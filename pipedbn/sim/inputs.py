"""What a simulation is given: layer costs, links, the sync policy and the stages, and the
check that names every bad one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pipedbn.balancer import Plan, Stage
from pipedbn.pipeline.schedule import Schedule
from pipedbn.pipeline.transport import POSTED

SYNC_KINDS = ("bsp", "bsp_delayed", "ssp", "adaptive")
COLLECTIVES = ("allreduce", "p2p")

SimStage = Stage
"""A stage of the simulated plan: the planner's ``Stage`` (contiguous layers; replica j runs
on ``ranks[j]``, what ``Network`` places on nodes)."""


@dataclass(frozen=True)
class LayerCost:
    step_s: float
    """Seconds of one training step on a micro-batch, on a core (or device) of its own."""
    forward_s: float = 0.0
    """Seconds to pass a micro-batch up while the layer is frozen (no training)."""
    sleep_s: float = 0.0
    """Seconds after the layer handles a micro-batch that use no host core (a straggler's
    sleep, a GPU's time)."""
    sleep_from: int = 0
    """The first micro-batch that sleeps (``straggler.after``)."""
    width: int = 1
    """Hidden units: the features the layer sends up."""
    params: int = 0
    """Parameters, for the replicas' sync (``pipedbn.balancer.param_count``)."""


@dataclass(frozen=True)
class Link:
    latency: float
    """Seconds per message beyond its bytes (one gloo message: ``transport`` packs the header
    with the payload)."""
    bandwidth: float
    """Bytes per second."""
    cpu: bool = False
    """Whether the transfer runs on a host core (loopback gloo) and so shares the cores."""

    def seconds(self, nbytes: float, messages: int = 1) -> float:
        return messages * self.latency + nbytes / self.bandwidth


@dataclass(frozen=True)
class Network:
    intra: Link
    """The link between ranks of one node (or every link, with ``node_size`` None)."""
    inter: Link | None = None
    """The link between ranks of different nodes."""
    node_size: int | None = None
    """Ranks per node; rank k is on node ``k // node_size``."""
    collective: Link | None = None
    """The link the steps of an all-reduce's ring inside a node are priced on; None: the
    message link (``intra``). Loopback gloo's all-reduce costs several of its point-to-point
    messages' latency per ring step (docs/benchmarks.md, bench_allreduce), so a simulation of
    this machine gives it a link measured as an all-reduce (``tools/simvalidate``)."""

    def between(self, a: int, b: int) -> Link:
        if self.inter is None or self.node_size is None or a // self.node_size == \
                b // self.node_size:
            return self.intra
        return self.inter


@dataclass(frozen=True)
class SyncPolicy:
    kind: str = "bsp"
    """``bsp``, ``bsp_delayed`` (tick c's all-reduce overlaps the next round, applied at tick
    c + 1), ``ssp`` or ``adaptive`` (simulated as ``ssp``)."""
    every: int = 1
    """``balancer.sync_every``: a round is ``every * r`` micro-batches the stage trains on."""
    staleness: int = 1
    """``balancer.staleness``: ticks a replica may run ahead (ssp, adaptive)."""
    messages: int = 1
    """Messages per peer per tick of the point-to-point exchange (header and delta: 1)."""
    collective: str = "allreduce"
    """How ``bsp`` syncs: ``allreduce`` (ring, two-level across nodes: ``sim.collective``) or
    ``p2p`` (every replica sends its update to every peer, the engine before the collectives).
    ``bsp_delayed`` is always an all-reduce, ``ssp`` and ``adaptive`` always point-to-point."""


@dataclass(frozen=True)
class Options:
    """How the stages run and move data, besides the layers and the network."""

    window: int = 4
    """``pipeline.window``: unconfirmed messages a sender keeps per link."""
    batch: int = 100
    """Rows per micro-batch (the payload's static size)."""
    rows: Sequence[int] | None = None
    """Rows of batch j of an epoch, if not all ``batch``."""
    cores: float | None = None
    """Host cores the CPU work shares (None: unlimited, a device per rank)."""
    sync: SyncPolicy = SyncPolicy()
    dtype_bytes: int = 4
    read_s: float = 0.0
    """Seconds of stage 0's prefetch thread per micro-batch."""
    prefetch: int = 4
    """Micro-batches stage 0's prefetch thread reads ahead (0: stage 0 reads each itself)."""
    buffers: int = POSTED
    """Receives a stage keeps posted per link (``transport.POSTED``)."""
    background: float = 0.0
    """Other jobs' CPU-bound work sharing the ``cores`` (busy processes, may be fractional)."""


def stages_of(plan: Plan | str, world: int | None = None, layers: int | None = None
              ) -> list[SimStage]:
    """The stages of a ``Plan`` (or of a spec, parsed for ``world`` ranks and ``layers``)."""
    if isinstance(plan, str):
        if world is None or layers is None:
            raise ValueError(f"plan {plan!r}: give world and layers to parse a plan spec")
        plan = Plan.parse(plan, world, layers)
    return list(plan.stages)


def check(schedule: Schedule, stages: Sequence[SimStage], layers: Sequence[LayerCost],
          net: Network, opt: Options) -> None:
    """Raise ValueError naming every bad input (what, and what would do)."""
    bad = []
    if len(layers) != schedule.layers:
        bad.append(f"{len(layers)} layer costs for a schedule of {schedule.layers} layers; "
                   "give one LayerCost per layer")
    held = [i for st in stages for i in st.layers]
    if held != list(range(schedule.layers)):
        bad.append(f"the stages hold layers {held}; they must hold 0..{schedule.layers - 1} "
                   "in order, each once")
    ranks = [k for st in stages for k in st.ranks]
    if any(not st.ranks for st in stages) or len(set(ranks)) < len(ranks):
        bad.append(f"the stages' ranks {[list(st.ranks) for st in stages]}: every stage needs "
                   "at least one rank and a rank runs one stage")
    for i, c in enumerate(layers):
        for name in ("step_s", "forward_s", "sleep_s"):
            x = getattr(c, name)
            if not (math.isfinite(x) and x >= 0):
                bad.append(f"layers[{i}].{name} is {x!r}; seconds must be finite and >= 0")
        if c.width < 1 or c.params < 0:
            bad.append(f"layers[{i}]: width {c.width} must be >= 1, params {c.params} >= 0")
    for link in (net.intra, net.inter, net.collective):
        if link is not None and not (link.latency >= 0 and link.bandwidth > 0
                                     and math.isfinite(link.latency)):
            bad.append(f"{link}: latency must be finite and >= 0, bandwidth > 0")
    if net.inter is not None and (net.node_size is None or net.node_size < 1):
        bad.append(f"node_size is {net.node_size!r}; an inter-node link needs ranks per node")
    sync = opt.sync
    if isinstance(opt.prefetch, bool) or not isinstance(opt.prefetch, int) or opt.prefetch < 0:
        bad.append(f"prefetch is {opt.prefetch!r}; it must be an integer >= 0")
    for name, x in (("window", opt.window), ("batch", opt.batch),
                    ("buffers", opt.buffers), ("dtype_bytes", opt.dtype_bytes),
                    ("sync.every", sync.every), ("sync.messages", sync.messages)):
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            bad.append(f"{name} is {x!r}; it must be an integer >= 1")
    if opt.cores is not None and not (math.isfinite(opt.cores) and opt.cores > 0):
        bad.append(f"cores is {opt.cores!r}; give a number > 0, or None for a device per rank")
    if sync.kind not in SYNC_KINDS:
        bad.append(f"sync.kind is {sync.kind!r}; choose one of {', '.join(SYNC_KINDS)}")
    if sync.collective not in COLLECTIVES:
        bad.append(f"sync.collective is {sync.collective!r}; choose one of "
                   f"{', '.join(COLLECTIVES)}")
    elif sync.kind == "bsp_delayed" and sync.collective != "allreduce":
        bad.append("sync.kind 'bsp_delayed' overlaps an all-reduce; give collective "
                   "'allreduce'")
    if sync.staleness < 0:
        bad.append(f"sync.staleness is {sync.staleness}; it must be >= 0")
    if not (math.isfinite(opt.read_s) and opt.read_s >= 0):
        bad.append(f"read_s is {opt.read_s!r}; it must be finite and >= 0")
    if not (math.isfinite(opt.background) and opt.background >= 0):
        bad.append(f"background is {opt.background!r}; it must be finite and >= 0")
    if opt.rows is not None and (len(opt.rows) != schedule.batches_per_epoch
                                 or any(not 1 <= n <= opt.batch for n in opt.rows)):
        bad.append(f"rows: give {schedule.batches_per_epoch} counts (one per batch of an "
                   f"epoch), each 1..{opt.batch}")
    if bad:
        raise ValueError("simulate: " + "; ".join(bad))
