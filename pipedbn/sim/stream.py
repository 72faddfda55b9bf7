"""One simulated run: a process per replica running the runner's loop over the stream.

The rules are the engine's, imported where they are functions: which micro-batches a replica
handles (``runner.Role.micro_batches``), which replicas below feed it (``links.feeds``), when
a replicated stage ticks (``replicas.round_boundaries``). Micro-batch ``m`` comes from and goes
to replica ``m mod r`` of the neighbour stage (``links.Inbox.take``, ``links.Outbox.send``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pipedbn.balancer import Plan
from pipedbn.pipeline.links import feeds
from pipedbn.pipeline.replicas import round_boundaries
from pipedbn.pipeline.runner import Role
from pipedbn.pipeline.schedule import Schedule
from pipedbn.sim.collective import AllReduce
from pipedbn.sim.engine import Engine, Process, Signal, Wait, Work
from pipedbn.sim.inputs import LayerCost, Link, Network, Options, SimStage, check
from pipedbn.sim.result import RankResult, SimResult, summarise
from pipedbn.sim.sync import Replicas
from pipedbn.sim.wires import Wires


class Run:
    """The engine, the links, and one process per replica."""

    def __init__(self, schedule: Schedule, stages: Sequence[SimStage],
                 layers: Sequence[LayerCost], network: Network, opt: Options,
                 speed: Mapping[int, float]) -> None:
        self.schedule, self.stages, self.layers, self.opt, self.speed = \
            schedule, stages, layers, opt, speed
        world = max(k for st in stages for k in st.ranks) + 1
        self.plan = Plan(tuple(stages), world)
        self.engine = Engine(opt.cores, opt.background)
        self.wires = Wires(self.engine, network)
        self.results: list[RankResult] = []

    def run(self) -> SimResult:
        for s, stage in enumerate(self.stages):
            for j, rank in enumerate(stage.ranks):
                res = RankResult(s, j, rank)
                self.results.append(res)
                self.engine.spawn(self.replica(s, j, res))
        seconds = self.engine.run()
        first = self.stages[0]
        samples = sum(self.rows_of(m) for m in self.schedule.micro_batches(first.layers[0]))
        return summarise(self.results, len(self.stages), seconds, samples)

    def rows_of(self, m: int) -> int:
        if self.opt.rows is None:
            return self.opt.batch
        return self.opt.rows[self.schedule.data_position(m)[1]]

    def ticks(self, stage: SimStage) -> list[int]:
        """A replicated stage's ticks: rounds of ``every * r`` micro-batches it trains on."""
        sch = self.schedule
        trained = [m for m in sch.micro_batches(stage.layers[0])
                   if any(sch.trains(i, m) for i in stage.layers)]
        return round_boundaries(trained, self.opt.sync.every * stage.replicas, [])[0]

    # -- one replica: the runner's loop --------------------------------------------------------

    def replica(self, s: int, j: int, res: RankResult) -> Process:
        sch, stage, engine, opt = self.schedule, self.stages[s], self.engine, self.opt
        r, rank, first, last = len(stage.ranks), stage.ranks[j], stage.layers[0], stage.layers[-1]
        mine = Role(self.plan, s, j, segment=0, begin=0).micro_batches(sch, first)
        ticks = self.ticks(stage) if r > 1 else []
        sync: Replicas | AllReduce | None = None
        if r > 1:
            nbytes = sum(self.layers[i].params for i in stage.layers) * opt.dtype_bytes
            kind = AllReduce if opt.sync.kind == "bsp_delayed" or (
                opt.sync.kind == "bsp" and opt.sync.collective == "allreduce") else Replicas
            sync = kind(self.wires, stage.ranks, j, nbytes, opt.sync)
        below = self.stages[s - 1] if s else None
        above = self.stages[s + 1] if s + 1 < len(self.stages) else None
        taken: dict[int, int] = {}  # messages taken per rank below
        sent: dict[int, int] = {}  # messages sent per rank above
        if below is not None:
            for i, src in enumerate(below.ranks):
                if feeds(len(below.ranks), r, i, j):
                    ch = self.wires.channel("data", src, rank)
                    for n in range(opt.buffers):
                        engine.post(ch.message(n))
                    taken[src] = 0
        reads = s == 0 and opt.read_s > 0
        reader = self.reader(mine) if reads and opt.prefetch else None
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
            elif reads:  # prefetch 0: the stage reads the micro-batch itself
                yield Work(opt.read_s)
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
                nbytes = opt.batch * self.layers[last].width * opt.dtype_bytes
                yield from self.put(rank, dst, sent, nbytes)
            res.send_wait_s += engine.now - t0
            res.micro_batches += 1
            res.samples += self.rows_of(m)
        t0 = engine.now
        if isinstance(sync, AllReduce):
            # ``AllReduceSync.drain``: a replica whose last micro-batch comes before a round
            # boundary still ticks there (with uneven shares, r not dividing the stream), so
            # every replica joins the same all-reduces before the final one. The point-to-point
            # ``PeerSync`` drains only up to a checkpoint (none here); its peers skip a
            # finished replica instead.
            while ticks:
                ticks.pop(0)
                yield from sync.tick()
        if sync is not None:
            yield from sync.finish()
        res.sync_wait_s += engine.now - t0
        for src in taken:  # the input's end: an END message per posted receive on every link
            for _ in range(self.opt.buffers):
                yield from self.take(src, rank, taken)
        t0 = engine.now
        for dst in sent:
            for _ in range(self.opt.buffers):
                yield from self.put(rank, dst, sent, 0.0)
            for t in self.wires.channel("data", rank, dst).messages[:sent[dst]]:
                yield Wait(t.done)
        res.send_wait_s += engine.now - t0
        res.ended = engine.now
        if not res.micro_batches:
            res.began = res.ended

    def take(self, src: int, dst: int, taken: dict[int, int]) -> Process:
        """``Receiver.get``: re-post the buffer of the message before, wait for the next."""
        ch, n = self.wires.channel("data", src, dst), taken[src]
        if n >= 1:
            self.engine.post(ch.message(n - 1 + self.opt.buffers))
        yield Wait(ch.message(n).done)
        taken[src] = n + 1

    def put(self, src: int, dst: int, sent: dict[int, int], nbytes: float) -> Process:
        """``Sender.send``: wait for the oldest message while ``window`` are in flight."""
        ch, window = self.wires.channel("data", src, dst), self.opt.window
        n = sent.setdefault(dst, 0)
        if n >= window:
            yield Wait(ch.message(n - window).done)
        self.wires.transmit(ch.message(n), nbytes)
        sent[dst] = n + 1

    def reader(self, mine: list[int]) -> tuple[list[Signal], list[Signal]]:
        """Stage 0's prefetch thread: reads ``prefetch`` micro-batches ahead, on a core."""
        got = [Signal() for _ in mine]
        taken = [Signal() for _ in mine]
        prefetch, read_s = self.opt.prefetch, self.opt.read_s

        def run() -> Process:
            for idx in range(len(mine)):
                if idx >= prefetch:
                    yield Wait(taken[idx - prefetch])
                yield Work(read_s)
                self.engine.fire(got[idx])

        self.engine.spawn(run())
        return got, taken


def simulate(schedule: Schedule, stages: Sequence[SimStage], layers: Sequence[LayerCost],
             network: Network | Link, opt: Options | None = None,
             speed: Mapping[int, float] | None = None) -> SimResult:
    """Simulate one run of ``schedule`` on ``stages`` (see ``pipedbn.sim``).

    ``layers``: one ``LayerCost`` per layer of the schedule; ``network``: the links (a single
    ``Link`` for all); ``opt``: window, micro-batch size, cores, sync policy, ... (``Options``);
    ``speed``: per rank, a multiplier of its layers' CPU time (2: twice as slow), as the
    planner's ``Problem.speed``."""
    opt = opt or Options()
    net = network if isinstance(network, Network) else Network(network)
    check(schedule, stages, layers, net, opt)
    if speed and any(not (math.isfinite(x) and x > 0) for x in speed.values()):
        raise ValueError(f"simulate: speed {dict(speed)}: each multiplier must be > 0")
    return Run(schedule, stages, layers, net, opt, speed or {}).run()
