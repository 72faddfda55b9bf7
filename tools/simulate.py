"""A discrete-event simulation of pipedbn's streaming pipeline: predicted samples/s for a plan.

    python tools/simulate.py CONFIG [overrides...] --plan SPEC --world N --step-ms a,b,c
        [--flops F] [--latency S] [--bandwidth B] [--cores C]
    python tools/simulate.py --project [--write-docs]   # multi-GPU projections (docs/simulate.md)
    python tools/simulate.py --validate                  # predicted against measured, here
                                                         # (tools/simvalidate.py)

What it models (each rule is the engine's, see ``pipedbn/pipeline/runner.py``, ``links.py``,
``transport.py`` and ``replicas.py``):

- the stream m = 0..L-1 of a real ``Schedule``; micro-batch m goes up to ``schedule.top(m)``, a
  stage handles m iff one of its layers is <= top(m), replica ``m mod r`` of an r-replica stage;
- a stage's time for m: per layer, in order, its training step (or its frozen forward pass) on
  a core, then its non-CPU delay (a straggler's sleep, a GPU's time);
- a message between stages costs ``latency + bytes / bandwidth`` (the payload is always the
  link's static ``batch x width``); its bytes hold the sender's and the receiver's port (one
  message at a time each way per rank), its latency does not; a sender keeps at most
  ``window`` unconfirmed messages per link and waits for the oldest when full; a message moves
  only once its receiver has posted a buffer for it (gloo's rendezvous), and a receiver keeps
  two posted, re-posting one when it asks for the next message;
- the end of the stream: two END messages per link, each stage closes after its input ended;
- replicas tick at ``pipedbn.pipeline.replicas.round_boundaries`` (no checkpoints); a tick sends
  each peer ``messages`` messages with the parameter delta; ``bsp`` waits for each peer's tick,
  ``ssp`` only for peers more than ``staleness`` ticks behind; ``adaptive`` is modelled as
  ``ssp`` at its maximum staleness, without its barriers (an optimistic bound); the last update
  goes out marked FINAL;
- ``cores``: CPU work shares that many cores (processor sharing); None = a device per rank.

Not modelled: monitoring (probes, metrics), heartbeats, checkpoints, re-planning, the time
before the stream starts and after it ends (setup, final save), the sync's own arithmetic.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported (validation runs)
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from simengine import Engine, Process, Signal, Transfer, Wait, Work  # noqa: E402

from pipedbn.balancer import Plan, cd_flops, forward_flops, param_count  # noqa: E402
from pipedbn.config import Config, load_config, resolve_defaults  # noqa: E402
from pipedbn.pipeline.replicas import round_boundaries  # noqa: E402
from pipedbn.pipeline.schedule import Schedule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYNC_KINDS = ("bsp", "ssp", "adaptive")


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
    """Seconds per message beyond its bytes (both of gloo's messages, header and payload)."""
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

    def between(self, a: int, b: int) -> Link:
        if self.inter is None or self.node_size is None or a // self.node_size == \
                b // self.node_size:
            return self.intra
        return self.inter


@dataclass(frozen=True)
class SyncPolicy:
    kind: str = "bsp"
    """``bsp``, ``ssp`` or ``adaptive`` (simulated as ``ssp``)."""
    every: int = 1
    """``balancer.sync_every``: a round is ``every * r`` micro-batches the stage trains on."""
    staleness: int = 1
    """``balancer.staleness``: ticks a replica may run ahead (ssp, adaptive)."""
    messages: int = 1
    """Messages per peer per tick (header and delta in one message: 1)."""


@dataclass(frozen=True)
class SimStage:
    layers: tuple[int, ...]
    """Contiguous layer indices."""
    ranks: tuple[int, ...]
    """Replica j runs on ranks[j] (what ``Network`` places on nodes)."""


@dataclass
class RankResult:
    stage: int
    replica: int
    rank: int
    micro_batches: int = 0
    samples: int = 0
    compute_s: float = 0.0
    """Layers' work and delays, as the runner's ``compute_s``."""
    recv_wait_s: float = 0.0
    """Waiting for the next micro-batch after the first one."""
    send_wait_s: float = 0.0
    """Waiting for a place in the window, and for the last messages to be taken."""
    sync_wait_s: float = 0.0
    """Time at the ticks and at the final exchange of updates."""
    began: float = math.nan
    ended: float = math.nan

    @property
    def active_s(self) -> float:
        return self.ended - self.began if self.micro_batches else 0.0

    @property
    def busy_frac(self) -> float:
        return self.compute_s / self.active_s if self.active_s > 0 else 0.0


@dataclass
class SimResult:
    seconds: float
    """Whole run: from the first read to the last rank's end."""
    samples: int
    """Samples read by stage 0 (every micro-batch some layer trains on)."""
    ranks: list[RankResult]
    bottleneck: int
    """The stage whose replicas spend the largest share of their active time computing or
    syncing (the one that never waits on its neighbours)."""
    limit: str
    """What holds the bottleneck back: ``compute``, ``sync`` or ``link`` (no stage is more than
    80% busy: the stages wait on messages)."""
    plan: str = ""
    """The plan's spec, when known."""

    @property
    def samples_per_s(self) -> float:
        """As ``throughput/end_to_end_samples_per_s``: samples read over the whole run."""
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def stage(self, s: int) -> list[RankResult]:
        return [r for r in self.ranks if r.stage == s]

    def describe(self) -> str:
        lines = [f"{'stage.replica':>13} {'rank':>4} {'batches':>7} {'busy':>6} {'recv wait':>9} "
                 f"{'send wait':>9} {'sync':>7}"]
        for r in self.ranks:
            lines.append(f"{f'{r.stage}.{r.replica}':>13} {r.rank:>4} {r.micro_batches:>7} "
                         f"{r.busy_frac:>6.1%} {r.recv_wait_s:>9.3f} {r.send_wait_s:>9.3f} "
                         f"{r.sync_wait_s:>7.3f}")
        lines.append(f"{self.samples:,} samples in {self.seconds:.3f} s: "
                     f"{self.samples_per_s:,.0f} samples/s; bottleneck stage {self.bottleneck} "
                     f"({self.limit})")
        return "\n".join(lines)


@dataclass
class _Channel:
    """Messages from one rank to another, in order; ``done`` counts those waited on."""

    src: int
    dst: int
    messages: list[Transfer] = field(default_factory=list)

    def message(self, n: int) -> Transfer:
        while len(self.messages) <= n:
            self.messages.append(Transfer(self.src, self.dst))
        return self.messages[n]


class _Sim:
    """One simulated run: the engine, the channels, and one process per replica."""

    def __init__(self, schedule: Schedule, stages: Sequence[SimStage],
                 layers: Sequence[LayerCost], network: Network, window: int, batch: int,
                 rows: Sequence[int] | None, cores: float | None, sync: SyncPolicy,
                 dtype_bytes: int, read_s: float, prefetch: int, buffers: int,
                 speed: Mapping[int, float], background: float) -> None:
        self.speed = speed
        self.schedule, self.stages, self.layers, self.network = schedule, stages, layers, network
        self.window, self.batch, self.rows, self.sync = window, batch, rows, sync
        self.dtype_bytes, self.read_s, self.prefetch, self.buffers = \
            dtype_bytes, read_s, prefetch, buffers
        self.engine = Engine(cores, background)
        self.channels: dict[tuple[str, int, int], _Channel] = {}
        self.results: list[RankResult] = []

    def channel(self, kind: str, src: int, dst: int) -> _Channel:
        key = (kind, src, dst)
        if key not in self.channels:
            self.channels[key] = _Channel(src, dst)
        return self.channels[key]

    def transmit(self, t: Transfer, nbytes: float, messages: int = 1) -> None:
        link = self.network.between(t.src, t.dst)
        t.occupy, t.delay, t.cpu = nbytes / link.bandwidth, messages * link.latency, link.cpu
        self.engine.send(t)

    def run(self) -> SimResult:
        for s, stage in enumerate(self.stages):
            for j, rank in enumerate(stage.ranks):
                res = RankResult(s, j, rank)
                self.results.append(res)
                self.engine.spawn(self.replica(s, j, res))
        seconds = self.engine.run()
        first = self.stages[0]
        samples = sum(self.rows_of(m) for m in self.schedule.micro_batches(first.layers[0]))
        return _summarise(self.results, len(self.stages), seconds, samples)

    def rows_of(self, m: int) -> int:
        if self.rows is None:
            return self.batch
        return self.rows[self.schedule.data_position(m)[1]]

    # -- one replica: the runner's loop --------------------------------------------------------

    def replica(self, s: int, j: int, res: RankResult) -> Process:
        sch, stage, engine = self.schedule, self.stages[s], self.engine
        r, rank, first, last = len(stage.ranks), stage.ranks[j], stage.layers[0], stage.layers[-1]
        mine = [m for m in sch.micro_batches(first) if m % r == j]
        ticks: list[int] = []
        if r > 1:
            trained = [m for m in sch.micro_batches(first)
                       if any(sch.trains(i, m) for i in stage.layers)]
            ticks = round_boundaries(trained, self.sync.every * r, [])[0]
        sync = _Replicas(self, s, j) if r > 1 else None
        below = self.stages[s - 1] if s else None
        above = self.stages[s + 1] if s + 1 < len(self.stages) else None
        taken: dict[int, int] = {}  # messages taken per rank below
        sent: dict[int, int] = {}  # messages sent per rank above
        if below is not None:
            for i, src in enumerate(below.ranks):
                if _feeds(len(below.ranks), r, i, j):
                    ch = self.channel("data", src, rank)
                    for n in range(self.buffers):
                        engine.post(ch.message(n))
                    taken[src] = 0
        reader = self.reader(mine) if s == 0 and self.read_s > 0 else None
        for idx, m in enumerate(mine):
            t0 = engine.now
            while sync is not None and ticks and ticks[0] <= m:
                ticks.pop(0)
                yield from sync.tick()
            res.sync_wait_s += engine.now - t0
            t0 = engine.now
            if reader is not None:
                got, taken_sig = reader
                yield Wait(got[idx])
                engine.fire(taken_sig[idx])
            elif below is not None:
                yield from self.take(below.ranks[m % len(below.ranks)], rank, taken)
            if res.micro_batches == 0:
                res.began = engine.now
            else:
                res.recv_wait_s += engine.now - t0
            t0 = engine.now
            top = sch.top(m)
            for i in stage.layers:
                if i > top:
                    break
                cost = self.layers[i]
                cpu = cost.step_s if sch.trains(i, m) else cost.forward_s
                yield Work(cpu * self.speed.get(rank, 1.0))
                if cost.sleep_s > 0 and m >= cost.sleep_from:
                    yield Work(cost.sleep_s, cpu=False)
            res.compute_s += engine.now - t0
            t0 = engine.now
            if above is not None and top > last:
                dst = above.ranks[m % len(above.ranks)]
                nbytes = self.batch * self.layers[last].width * self.dtype_bytes
                yield from self.put(rank, dst, sent, nbytes)
            res.send_wait_s += engine.now - t0
            res.micro_batches += 1
            res.samples += self.rows_of(m)
        t0 = engine.now
        if sync is not None:
            yield from sync.finish()
        res.sync_wait_s += engine.now - t0
        for src in taken:  # the input's end: two END messages on every link
            for _ in range(2):
                yield from self.take(src, rank, taken)
        t0 = engine.now
        for dst in sent:
            for _ in range(2):
                yield from self.put(rank, dst, sent, 0.0)
            for t in self.channel("data", rank, dst).messages[:sent[dst]]:
                yield Wait(t.done)
        res.send_wait_s += engine.now - t0
        res.ended = engine.now
        if not res.micro_batches:
            res.began = res.ended

    def take(self, src: int, dst: int, taken: dict[int, int]) -> Process:
        """``Receiver.get``: re-post the buffer of the message before, wait for the next."""
        ch, n = self.channel("data", src, dst), taken[src]
        if n >= 1:
            self.engine.post(ch.message(n - 1 + self.buffers))
        yield Wait(ch.message(n).done)
        taken[src] = n + 1

    def put(self, src: int, dst: int, sent: dict[int, int], nbytes: float) -> Process:
        """``Sender.send``: wait for the oldest message while ``window`` are in flight."""
        ch = self.channel("data", src, dst)
        n = sent.setdefault(dst, 0)
        if n >= self.window:
            yield Wait(ch.message(n - self.window).done)
        self.transmit(ch.message(n), nbytes)
        sent[dst] = n + 1

    def reader(self, mine: list[int]) -> tuple[list[Signal], list[Signal]]:
        """Stage 0's prefetch thread: reads ``prefetch`` micro-batches ahead, on a core."""
        got = [Signal() for _ in mine]
        taken = [Signal() for _ in mine]

        def run() -> Process:
            for idx in range(len(mine)):
                if idx >= self.prefetch:
                    yield Wait(taken[idx - self.prefetch])
                yield Work(self.read_s)
                self.engine.fire(got[idx])

        self.engine.spawn(run())
        return got, taken


class _Replicas:
    """``ReplicaSync`` of one replica: its clock, its peers' clocks, the updates in flight."""

    def __init__(self, sim: _Sim, s: int, j: int) -> None:
        stage = sim.stages[s]
        self.sim, self.rank = sim, stage.ranks[j]
        self.peers = [k for i, k in enumerate(stage.ranks) if i != j]
        self.nbytes = sum(sim.layers[i].params for i in stage.layers) * sim.dtype_bytes
        p = sim.sync
        self.stale = 0 if p.kind == "bsp" else p.staleness
        self.keep = 2 * p.staleness + 4  # sends kept unconfirmed (``ReplicaSync._send``)
        self.clock = 0
        self.received = {k: 0 for k in self.peers}  # messages taken from each peer
        self.peer_clock = {k: 0 for k in self.peers}
        self.finished: set[int] = set()
        self.sent: list[list[Transfer]] = []

    def send(self, final: bool) -> Process:
        batch = []
        for k in self.peers:
            t = self.sim.channel("sync", self.rank, k).message(self.clock - 1 + final)
            t.final = final
            self.sim.transmit(t, self.nbytes, self.sim.sync.messages)
            batch.append(t)
        self.sent.append(batch)
        while len(self.sent) > self.keep:
            for t in self.sent.pop(0):
                yield Wait(t.done)

    def post(self, k: int) -> Transfer:
        """``_post_receive``: a buffer posted for peer k's next update."""
        t = self.sim.channel("sync", k, self.rank).message(self.received[k])
        self.sim.engine.post(t)
        return t

    def take(self, k: int, t: Transfer) -> Process:
        """``_take``: wait for a posted update."""
        yield Wait(t.done)
        self.received[k] += 1
        if t.final:
            self.finished.add(k)
        else:
            self.peer_clock[k] += 1

    def receive(self, k: int) -> Process:
        yield from self.take(k, self.post(k))

    def tick(self) -> Process:
        self.clock += 1
        yield from self.send(final=False)
        if self.sim.sync.kind == "bsp":  # every peer's receive posted first, then taken
            posted = [(k, self.post(k)) for k in self.peers if k not in self.finished]
            for k, t in posted:
                yield from self.take(k, t)
            return
        for k in self.peers:
            while k not in self.finished and self.peer_clock[k] < self.clock - self.stale:
                yield from self.receive(k)

    def finish(self) -> Process:
        yield from self.send(final=True)
        for k in self.peers:
            while k not in self.finished:
                yield from self.receive(k)
        for batch in self.sent:
            for t in batch:
                yield Wait(t.done)


def _feeds(senders: int, receivers: int, i: int, j: int) -> bool:
    """``pipedbn.pipeline.links.feeds``: replica i of a stage ever feeds replica j of the next."""
    g = math.gcd(senders, receivers)
    return i % g == j % g


def _summarise(results: list[RankResult], stages: int, seconds: float, samples: int
               ) -> SimResult:
    def share(s: int, what: str) -> float:
        rs = [r for r in results if r.stage == s and r.active_s > 0]
        if not rs:
            return 0.0
        if what == "sync":
            return sum(min(r.sync_wait_s, r.active_s) / r.active_s for r in rs) / len(rs)
        return sum(r.busy_frac for r in rs) / len(rs)

    load = [share(s, "compute") + share(s, "sync") for s in range(stages)]
    b = max(range(stages), key=lambda s: load[s])
    limit = ("link" if load[b] < 0.8 else
             "sync" if share(b, "sync") > share(b, "compute") else "compute")
    return SimResult(seconds, samples, results, b, limit)


def simulate(schedule: Schedule, stages: Sequence[SimStage], layers: Sequence[LayerCost],
             network: Network | Link, window: int = 4, batch: int = 100,
             cores: float | None = None, sync: SyncPolicy | None = None,
             rows: Sequence[int] | None = None, dtype_bytes: int = 4, read_s: float = 0.0,
             prefetch: int = 4, buffers: int = 2, speed: Mapping[int, float] | None = None,
             background: float = 0.0) -> SimResult:
    """Simulate one run of ``schedule`` on ``stages`` (see the module docstring).

    ``layers``: one ``LayerCost`` per layer of the schedule; ``network``: the links (a single
    ``Link`` for all); ``window``: ``pipeline.window``; ``batch``: rows per micro-batch (the
    payload's static size); ``rows``: rows of batch j of an epoch, if not all ``batch``;
    ``cores``: host cores the CPU work shares (None: unlimited); ``read_s``: seconds of stage
    0's prefetch thread per micro-batch (``prefetch`` ahead); ``buffers``: receives a stage keeps
    posted per link; ``speed``: per rank, a multiplier of its layers' CPU time (2: twice as
    slow), as the planner's ``Problem.speed``; ``background``: other jobs' CPU-bound work
    sharing the ``cores`` (busy processes, may be fractional)."""
    sync = sync or SyncPolicy()
    net = network if isinstance(network, Network) else Network(network)
    _check(schedule, stages, layers, net, window, batch, cores, sync, rows, dtype_bytes, read_s,
           prefetch, buffers, background)
    if speed and any(not (math.isfinite(x) and x > 0) for x in speed.values()):
        raise ValueError(f"simulate: speed {dict(speed)}: each multiplier must be > 0")
    return _Sim(schedule, stages, layers, net, window, batch, rows, cores, sync, dtype_bytes,
                read_s, prefetch, buffers, speed or {}, background).run()


def stages_of(plan: Plan | str, world: int | None = None, layers: int | None = None
              ) -> list[SimStage]:
    """The stages of a ``Plan`` (or of a spec, parsed for ``world`` ranks and ``layers``)."""
    if isinstance(plan, str):
        if world is None or layers is None:
            raise ValueError(f"plan {plan!r}: give world and layers to parse a plan spec")
        plan = Plan.parse(plan, world, layers)
    return [SimStage(s.layers, s.ranks) for s in plan.stages]


def _check(schedule: Schedule, stages: Sequence[SimStage], layers: Sequence[LayerCost],
           net: Network, window: int, batch: int, cores: float | None, sync: SyncPolicy,
           rows: Sequence[int] | None, dtype_bytes: int, read_s: float, prefetch: int,
           buffers: int, background: float) -> None:
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
    for link in (net.intra, net.inter):
        if link is not None and not (link.latency >= 0 and link.bandwidth > 0
                                     and math.isfinite(link.latency)):
            bad.append(f"{link}: latency must be finite and >= 0, bandwidth > 0")
    if net.inter is not None and (net.node_size is None or net.node_size < 1):
        bad.append(f"node_size is {net.node_size!r}; an inter-node link needs ranks per node")
    for name, x in (("window", window), ("batch", batch), ("prefetch", prefetch),
                    ("buffers", buffers), ("dtype_bytes", dtype_bytes),
                    ("sync.every", sync.every), ("sync.messages", sync.messages)):
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            bad.append(f"{name} is {x!r}; it must be an integer >= 1")
    if cores is not None and not (math.isfinite(cores) and cores > 0):
        bad.append(f"cores is {cores!r}; give a number > 0, or None for a device per rank")
    if sync.kind not in SYNC_KINDS:
        bad.append(f"sync.kind is {sync.kind!r}; choose one of {', '.join(SYNC_KINDS)}")
    if sync.staleness < 0:
        bad.append(f"sync.staleness is {sync.staleness}; it must be >= 0")
    if not (math.isfinite(read_s) and read_s >= 0):
        bad.append(f"read_s is {read_s!r}; it must be finite and >= 0")
    if not (math.isfinite(background) and background >= 0):
        bad.append(f"background is {background!r}; it must be finite and >= 0")
    if rows is not None and (len(rows) != schedule.batches_per_epoch
                             or any(not 1 <= n <= batch for n in rows)):
        bad.append(f"rows: give {schedule.batches_per_epoch} counts (one per batch of an "
                   f"epoch), each 1..{batch}")
    if bad:
        raise ValueError("simulate: " + "; ".join(bad))


# -- from a pipedbn config ---------------------------------------------------------------------

def load(config: str | Path, overrides: Sequence[str] = ()) -> Config:
    """A config file with ``key=value`` overrides, defaults resolved (as ``pipedbn train``)."""
    return resolve_defaults(load_config(Path(config), list(overrides)))


def data_shape(cfg: Config) -> tuple[int, int, list[int]]:
    """(features, micro-batches per epoch, rows of each batch of an epoch) of the config's data."""
    from pipedbn.data.loader import open_data
    from stages import registry

    data = open_data(cfg, unit_range=registry.get(cfg.layers[0].kind).kind == "bernoulli")
    b, n = cfg.train.batch_size, len(data.train_rows)
    rows = [min(b, n - j * b) for j in range(data.batches_per_epoch)]
    return data.features, data.batches_per_epoch, rows


def from_config(cfg: Config | str | Path, plan_spec: str | None, world: int,
                step_s: Sequence[float], forward_s: Sequence[float] | None = None,
                sleep_s: Sequence[float] | None = None, latency: float = 1e-4,
                bandwidth: float = 1e9, cores: float | None = None, link_cpu: bool = False,
                read_s: float = 0.0, sync_messages: int = 1,
                shape: tuple[int, int, list[int]] | None = None, background: float = 0.0
                ) -> SimResult:
    """Simulate the config's run on ``world`` ranks with measured (or modelled) step times.

    ``plan_spec``: a plan (``Plan.parse`` forms); None: ``balancer.plan``, and for ``auto`` the
    planner's plan for these step times (``problem_for``). ``forward_s``: a frozen layer's pass,
    by default ``step_s`` scaled by ``forward_flops / cd_flops``. ``sleep_s``: non-CPU seconds
    per layer, by default the config's ``straggler`` (a layer's sleep from ``straggler.after``).
    ``shape``: ``data_shape(cfg)`` if known (else the data is opened to count its batches)."""
    from pipedbn.balancer import solve
    from pipedbn.balancer.runtime import problem_for
    from pipedbn.pipeline.trainer import make_schedule

    cfg = load(cfg) if isinstance(cfg, str | Path) else cfg
    features, per_epoch, rows = shape or data_shape(cfg)
    n = len(cfg.layers)
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
                                                                             sizes[i + 1], lc.k))
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
        plan = solve(problem_for(cfg, features, world, work)).plan
    else:
        plan = Plan.parse(spec, world, n)
    b = cfg.balancer
    result = simulate(
        make_schedule(cfg, per_epoch), stages_of(plan), costs,
        Link(latency, bandwidth, link_cpu), window=cfg.pipeline.window,
        batch=cfg.train.batch_size, cores=cores, rows=rows,
        sync=SyncPolicy(b.sync, b.sync_every, b.staleness, sync_messages),
        dtype_bytes=8 if cfg.train.dtype == "float64" else 4, read_s=read_s,
        prefetch=cfg.data.prefetch, background=background)
    result.plan = plan.spec()
    return result


# -- command line ------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", help="a pipedbn config file")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    ap.add_argument("--plan", help="plan spec (default: balancer.plan)")
    ap.add_argument("--world", type=int, help="ranks (default: the plan's)")
    ap.add_argument("--step-ms", help="each layer's CD step, ms, comma-separated")
    ap.add_argument("--flops", type=float, help="or: step times from cd_flops at this FLOP/s")
    ap.add_argument("--latency", type=float, default=1e-4, help="s per message")
    ap.add_argument("--bandwidth", type=float, default=1e9, help="bytes/s")
    ap.add_argument("--cores", type=float, help="host cores shared (default: a device each)")
    ap.add_argument("--project", action="store_true", help="multi-GPU projections")
    ap.add_argument("--write-docs", action="store_true",
                    help="--project: write docs/simulate.md; --validate: docs/benchmarks.md")
    ap.add_argument("--validate", action="store_true", help="predicted against measured here")
    ap.add_argument("--epochs", type=float, default=1.0, help="with --validate: scale epochs")
    args = ap.parse_args(argv)
    if args.validate:
        import json

        from simvalidate import section, validate

        rows = validate(epochs=args.epochs)
        text = section(rows, args.epochs)
        print(text)
        out = ROOT / "tools" / "out" / "simulate_validation.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1) + "\n")
        if args.write_docs:
            from benchdocs import write_section
            write_section("bench_simulate", text)
    elif args.project:
        from simproject import project
        project(write_docs=args.write_docs)
    elif args.config:
        from pipedbn.errors import UserError

        try:
            print(predict(args).describe())
        except (UserError, ValueError) as e:  # a config, plan or option the user got wrong
            ap.exit(2, f"simulate.py: error: {e}\n")
    else:
        ap.error("give a CONFIG, --project or --validate")


def predict(args: argparse.Namespace) -> SimResult:
    cfg = load(args.config, args.overrides)
    features, per_epoch, rows = data_shape(cfg)
    sizes = [features] + cfg.sizes
    if args.step_ms:
        step = [float(x) / 1e3 for x in args.step_ms.split(",")]
    elif args.flops:
        step = [cd_flops(a, b, lc.k) * cfg.train.batch_size / args.flops
                for a, b, lc in zip(sizes, sizes[1:], cfg.layers, strict=False)]
    else:
        raise SystemExit("give --step-ms a,b,... or --flops F")
    spec = args.plan or cfg.balancer.plan
    world = args.world
    if world is None:
        world = (len(cfg.layers) if spec == "auto" else
                 max(k for s in Plan.parse(spec, 1 << 20, len(cfg.layers)).stages
                     for k in s.ranks) + 1)
    return from_config(cfg, spec, world, step, latency=args.latency, bandwidth=args.bandwidth,
                       cores=args.cores, shape=(features, per_epoch, rows))


if __name__ == "__main__":
    main()
