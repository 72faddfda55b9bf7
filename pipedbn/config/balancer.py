"""The ``balancer`` section: the plan of ranks per layer, replica sync and re-planning
(docs/balancer.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipedbn.balancer.plan import Plan
from pipedbn.config.checks import positive


@dataclass
class BalancerConfig:
    """How ranks are given to layers (the plan), how replicas of a layer stay in sync, and when
    the plan changes during a run. See docs/balancer.md."""

    plan: str = "auto"
    """``auto`` (the exact planner over measured or modelled costs) or an explicit plan: stages
    separated by ``|``, each ``LAYERS`` or ``LAYERSxREPLICAS`` (ranks in order, e.g.
    ``0-1|2x2|3``) or ``LAYERS@RANKS`` (``0-1@0|2@1,2|3@3``)."""
    costs: Literal["model", "profile"] = "model"
    """What ``auto`` plans with: ``model`` counts FLOPs (``(6 + 4k) n_in n_out`` per sample of a
    CD-k step), so the plan is a pure function of config and world size; ``profile`` times a few
    real steps of every layer on every rank first (unequal devices get speed factors; the plan
    then depends on the timings), and measures the links (``links``)."""
    max_replicas: int | None = 1
    """Most ranks one stage may use; ``null`` = no limit. The default, 1, keeps the weights
    bit-for-bit the same whatever the world size. Replicas speed up a slow layer but train on
    stale weights (a replica misses its peers' latest updates), which lowers the largest
    learning rate a layer tolerates (docs/balancer.md), so they are an explicit choice. An
    explicit ``plan`` is taken as written."""
    sync: Literal["bsp", "bsp_delayed", "ssp", "adaptive"] = "bsp"
    """How replicas of a layer combine their updates: ``bsp`` (one sum all-reduce of every
    replica's update per sync on the stage's own process group: replicas bit-identical after
    each sync, deterministic), ``bsp_delayed`` (the same all-reduce started in the background
    and applied at the next sync: peers' updates one sync late, the transfer hidden behind the
    next micro-batches, deterministic), ``ssp`` (apply updates as they come; a
    replica waits only when it is more than ``staleness`` syncs ahead of another), ``adaptive``
    (SSP whose staleness follows the replicas' measured speeds, with a full barrier once the
    slowest replica has done ``barrier_every`` micro-batches)."""
    sync_every: int = 1
    """Micro-batches a replica trains on between two syncs (one *clock* tick). Every update a
    replica has not yet seen is a stale one: with Hinton's momentum (0.9) staleness costs
    quality fast (docs/balancer.md), so the default syncs after every micro-batch."""
    staleness: int = 1
    """``ssp``: the most clock ticks a replica may run ahead of the slowest one; ``adaptive``:
    the upper limit of its adjusted staleness."""
    barrier_every: int = 64
    """``adaptive``: micro-batches of the slowest replica between full barriers."""
    replan: bool = False
    """Watch the stages' step times and re-plan during the run when the plan in use is more than
    ``threshold`` slower than the best plan for the measured costs (a straggler, a slowed
    device). Off by default: a re-plan depends on timing, so with replicas the weights do too."""
    check_every: int = 40
    """Micro-batches between two looks at the measured step times."""
    threshold: float = 0.25
    """Re-plan when the plan in use, on measured costs, is this much slower than the best plan."""
    flops: float = 6e10
    """``model`` costs: floating-point operations per second assumed for one rank (one CPU core
    doing the CD step's float32 matrix products reached ~8e10 here; use ``profile`` for GPUs
    or mixed devices)."""
    bandwidth: float = 1e9
    """Bytes per second assumed for one link when pricing replica syncs."""
    latency: float = 1e-3
    """Seconds per sync message to one peer beyond its bytes (a replica sends one to every peer
    at each sync). Measured here: 1.3-1.7 ms with 6-8 gloo processes on 2 cores."""
    memory_mb: float | None = None
    """Memory one rank may use for its layers, in MiB (default: no limit); the planner groups
    and places layers within it."""
    check_replicas: bool = False
    """Record a CRC-32 of each replica's parameters after every sync (``replica/crc32`` in
    ``metrics.jsonl``), to check that BSP replicas stay bit-identical; one pass over the
    parameters per sync."""
    ranks_per_node: int | None = None
    """Ranks on each node, numbered node by node, for placing replicas and pricing their sync
    (``bandwidth``/``latency`` inside a node, ``inter_*`` between nodes); ``null``: torchrun's
    ``LOCAL_WORLD_SIZE`` at run time (one node outside torchrun)."""
    inter_bandwidth: float | None = None
    """Bytes per second of a link between nodes (per rank); ``null``: ``bandwidth``."""
    inter_latency: float | None = None
    """Seconds per message between nodes; ``null``: ``latency``."""
    links: Literal["probe", "config"] = "probe"
    """Where ``auto`` with ``costs: profile`` gets the link figures: ``probe`` times a few
    all-reduces at start-up inside a node and between nodes (well under a second) and uses the
    measured figures instead of ``bandwidth``/``latency`` and ``inter_*``; the run's
    ``config.yaml`` then holds them with ``links: config``, so a re-run plans with the same
    figures. ``config``: the configured figures. A class that cannot be measured (one rank, one
    rank per node, one node) keeps its configured figures."""

    def problems(self, layers: int) -> list[str]:
        """``layers``: how many layers an explicit plan must cover."""
        p: list[str] = []
        if self.plan != "auto":
            try:  # the world size is checked at launch; here only the form and the layers
                Plan.parse(self.plan, world=1 << 16, layers=layers)
            except ValueError as e:
                p.append(f"balancer.plan: {e}")
        p += positive("balancer.max_replicas", self.max_replicas)
        p += positive("balancer.sync_every", self.sync_every)
        p += positive("balancer.staleness", self.staleness, strict=False)
        p += positive("balancer.barrier_every", self.barrier_every)
        p += positive("balancer.check_every", self.check_every)
        p += positive("balancer.threshold", self.threshold)
        p += positive("balancer.flops", self.flops)
        p += positive("balancer.bandwidth", self.bandwidth)
        p += positive("balancer.latency", self.latency, strict=False)
        p += positive("balancer.memory_mb", self.memory_mb)
        p += positive("balancer.ranks_per_node", self.ranks_per_node)
        p += positive("balancer.inter_bandwidth", self.inter_bandwidth)
        p += positive("balancer.inter_latency", self.inter_latency, strict=False)
        return p
