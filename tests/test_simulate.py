"""pipedbn.sim: the pipeline simulator against closed-form cases (no processes, no torch
runs), and ``pipedbn simulate``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipedbn.balancer import Problem, stage_time
from pipedbn.balancer.cost import hierarchical_allreduce_s, ring_allreduce_s
from pipedbn.cli import main
from pipedbn.pipeline.schedule import Schedule, build_schedule
from pipedbn.sim import (
    LayerCost,
    Link,
    Machine,
    Network,
    Options,
    SimStage,
    StepTimes,
    SyncPolicy,
    from_config,
    load,
    plan_world,
    simulate,
    stages_of,
)

FREE = Link(latency=0.0, bandwidth=1e30)
MS = 1e-3


def streaming(layers: int, length: int) -> Schedule:
    """Every layer trains on every one of ``length`` micro-batches."""
    return build_schedule("streaming", length, [1.0] * layers, 0.0)


def chain(n: int) -> list[SimStage]:
    return [SimStage((i,), (i,)) for i in range(n)]


def test_single_stage_runs_at_batch_over_step() -> None:
    r = simulate(streaming(1, 50), chain(1), [LayerCost(2 * MS)], FREE, Options(batch=100))
    assert r.seconds == pytest.approx(50 * 2 * MS)
    assert r.samples == 5000
    assert r.samples_per_s == pytest.approx(100 / (2 * MS))
    assert r.ranks[0].busy_frac == pytest.approx(1.0)


def test_equal_stages_fill_in_stages_minus_one_steps() -> None:
    L, S, step = 200, 3, 1 * MS
    r = simulate(streaming(S, L), chain(S), [LayerCost(step)] * S, FREE, Options(batch=10))
    assert r.seconds == pytest.approx((L + S - 1) * step)
    assert r.samples_per_s == pytest.approx(10 / step, rel=0.02)


def test_the_slowest_stage_sets_the_pace() -> None:
    L = 300
    steps = [1 * MS, 3 * MS, 1 * MS]
    r = simulate(streaming(3, L), chain(3), [LayerCost(s) for s in steps], FREE, Options(batch=10))
    assert r.seconds == pytest.approx(1 * MS + L * 3 * MS + 1 * MS)
    assert r.bottleneck == 1 and r.limit == "compute"
    assert r.stage(1)[0].busy_frac == pytest.approx(1.0, rel=0.01)
    assert r.stage(0)[0].send_wait_s > 0.5 * L * 2 * MS  # held back by the window


def test_window_of_one_is_stop_and_wait() -> None:
    """A message's latency overlaps the sender's next step but only one may be in flight: the
    period is max(step, latency)."""
    L, step, latency = 200, 1 * MS, 3 * MS
    link = Link(latency=latency, bandwidth=1e30)
    costs = [LayerCost(step)] * 2
    # (two posted receives: the link's end sends an END copy per receive, a latency each)
    one = simulate(streaming(2, L), chain(2), costs, link,
                   Options(window=1, batch=10, buffers=2))
    assert one.seconds == pytest.approx(L * latency, rel=0.02)
    assert one.limit == "link"


def test_posted_receives_bound_what_a_window_hides() -> None:
    """A message moves only into a posted receive (gloo's rendezvous) and the receiver re-posts
    a buffer when it asks for the next message: with 2 buffers a message is in flight while the
    receiver trains on the one before, so the period is (step + latency) / 2 whatever the
    window; with 4 posted buffers a window of 4 hides a 3 ms latency behind 1 ms steps."""
    L, step, latency = 200, 1 * MS, 3 * MS
    link = Link(latency=latency, bandwidth=1e30)
    costs = [LayerCost(step)] * 2
    two = simulate(streaming(2, L), chain(2), costs, link, Options(window=4, batch=10, buffers=2))
    assert two.seconds == pytest.approx(L * (step + latency) / 2, rel=0.02)
    four = simulate(streaming(2, L), chain(2), costs, link, Options(window=4, batch=10, buffers=4))
    assert four.seconds == pytest.approx(L * step + latency + step, rel=0.02)


def test_bandwidth_bounds_the_rate() -> None:
    """Bytes hold the ports one message at a time: 1 MB at 1 GB/s is 1 ms a micro-batch."""
    L = 200
    costs = [LayerCost(0.1 * MS, width=2500), LayerCost(0.1 * MS)]  # 100 x 2500 x 4 = 1 MB
    r = simulate(streaming(2, L), chain(2), costs, Link(0.0, 1e9), Options(batch=100))
    assert r.seconds == pytest.approx(L * 1 * MS, rel=0.02)


def test_three_cpu_stages_share_two_cores() -> None:
    L, step = 300, 1 * MS
    r = simulate(streaming(3, L), chain(3), [LayerCost(step)] * 3, FREE, Options(batch=10, cores=2))
    assert r.seconds == pytest.approx(1.5 * L * step, rel=0.02)
    alone = simulate(streaming(3, L), chain(3), [LayerCost(step)] * 3, FREE,
                     Options(batch=10, cores=3))
    assert alone.seconds == pytest.approx((L + 2) * step)


def test_other_jobs_share_the_cores() -> None:
    r = simulate(streaming(1, 50), chain(1), [LayerCost(MS)], FREE,
                 Options(cores=1, background=1.0))
    assert r.seconds == pytest.approx(2 * 50 * MS)


def test_sleeping_stages_use_no_core() -> None:
    L = 100
    costs = [LayerCost(0.0, sleep_s=2 * MS)] * 3
    r = simulate(streaming(3, L), chain(3), costs, FREE, Options(batch=10, cores=1))
    assert r.seconds == pytest.approx((L + 2) * 2 * MS)
    cpu = simulate(streaming(3, L), chain(3), [LayerCost(2 * MS)] * 3, FREE,
                   Options(batch=10, cores=1))
    assert cpu.seconds == pytest.approx(3 * L * 2 * MS, rel=0.02)


def test_replicas_divide_the_bottleneck_less_their_sync() -> None:
    """r replicas of a 4 ms stage behind a fast one: period (4 ms + sync) / r, the planner's."""
    L, r = 800, 4
    params = 250_000  # 1 MB of fp32 per update
    link = Link(latency=50e-6, bandwidth=10e9)
    costs = [LayerCost(0.2 * MS, width=10, params=10), LayerCost(4 * MS, width=10, params=params)]
    stages = [SimStage((0,), (0,)), SimStage((1,), tuple(range(1, r + 1)))]
    res = simulate(streaming(2, L), stages, costs, link, Options(batch=10))
    problem = Problem(costs=[0.2 * MS, 4 * MS], world=r + 1, sync_bytes=[40, 4 * params],
                      bandwidth=link.bandwidth, latency=link.latency)
    period = stage_time(problem, [1], list(range(1, r + 1)))
    assert period == pytest.approx((4 * MS + 3 * (50e-6 + 1e6 / 10e9)) / 4)
    assert res.seconds / L == pytest.approx(period, rel=0.05)
    no_sync = simulate(streaming(2, L), stages, [costs[0], LayerCost(4 * MS, width=10)], FREE,
                       Options(batch=10))
    assert no_sync.seconds / L == pytest.approx(1 * MS, rel=0.03)
    assert no_sync.seconds < res.seconds


def test_bsp_replicas_wait_for_the_slowest() -> None:
    """Two replicas, one twice as slow: BSP (and round-robin routing) hold the stage to the slow
    one's pace, 2 * step per two micro-batches; the fast one waits at every tick."""
    L, step = 400, 2 * MS
    stages = [SimStage((0,), (0,)), SimStage((1,), (1, 2))]
    costs = [LayerCost(0.1 * MS), LayerCost(step)]
    res = simulate(streaming(2, L), stages, costs, FREE, Options(batch=10), speed={2: 2.0})
    assert res.seconds / L == pytest.approx(step, rel=0.03)
    fast, slow = res.stage(1)
    assert fast.sync_wait_s > 0.4 * L * step / 2 and slow.sync_wait_s < 0.05 * L * step
    ssp = simulate(streaming(2, L), stages, costs, FREE,
                   Options(batch=10, sync=SyncPolicy("ssp", staleness=2)), speed={2: 2.0})
    assert ssp.seconds / L == pytest.approx(step, rel=0.03)  # the routing still binds


def test_ticks_follow_the_engines_round_boundaries() -> None:
    """sync_every 4 with 2 replicas: one tick per 8 micro-batches, so 1/4 of the sync cost (a
    ring all-reduce of 2 replicas: 2 steps, 2 latencies)."""
    L = 400
    link = Link(latency=1 * MS, bandwidth=1e30)
    stages = [SimStage((0,), (0,)), SimStage((1,), (1, 2))]
    costs = [LayerCost(0.1 * MS), LayerCost(2 * MS)]
    every1 = simulate(streaming(2, L), stages, costs, link, Options(batch=10))
    every4 = simulate(streaming(2, L), stages, costs, link,
                      Options(batch=10, sync=SyncPolicy(every=4)))
    assert every1.seconds / L == pytest.approx((2 * MS + 2 * MS) / 2, rel=0.05)
    assert every4.seconds / L == pytest.approx((2 * MS + 0.5 * MS) / 2, rel=0.05)
    p2p = simulate(streaming(2, L), stages, costs, link,
                   Options(batch=10, sync=SyncPolicy(collective="p2p")))
    assert p2p.seconds / L == pytest.approx((2 * MS + 1 * MS) / 2, rel=0.05)


def one_replicated_stage(r: int, ticks: int, step: float, net: Network | Link, params: int,
                         sync: SyncPolicy | None = None) -> float:
    """Seconds of ``ticks`` rounds of one stage of ``r`` replicas (one micro-batch each per
    round) that syncs ``params`` fp32 parameters, and nothing else on the links."""
    costs = [LayerCost(step, width=1, params=params)]
    res = simulate(streaming(1, r * ticks), [SimStage((0,), tuple(range(r)))], costs, net,
                   Options(batch=1, sync=sync or SyncPolicy()))
    return res.seconds


def test_ring_all_reduce_takes_its_closed_form() -> None:
    """r replicas in one node: each round is a step then 2 (r - 1) ring steps of n / r bytes;
    the first round has no tick before it and the final all-reduce ends the run."""
    link, n, step, ticks = Link(20e-6, 10e9), 4_000_000, 1 * MS, 20
    for r in (2, 3, 5):
        ring = ring_allreduce_s(4 * n, r, link.latency, link.bandwidth)
        assert one_replicated_stage(r, ticks, step, link, n) == pytest.approx(
            ticks * (step + ring), rel=1e-9)


def test_a_collective_link_prices_the_ring_and_nothing_else() -> None:
    """``Network.collective``: the all-reduce's ring steps pay its latency and bandwidth (the
    closed form on that link), while the pipeline's messages keep the message link."""
    msg, coll, n, step, ticks = Link(20e-6, 10e9), Link(1 * MS, 5e9), 1_000_000, 1 * MS, 10
    for r in (2, 3):
        net = Network(msg, collective=coll)
        ring = ring_allreduce_s(4 * n, r, coll.latency, coll.bandwidth)
        assert one_replicated_stage(r, ticks, step, net, n) == pytest.approx(
            ticks * (step + ring), rel=1e-9)
    stages, costs = chain(2), [LayerCost(1 * MS), LayerCost(1 * MS)]
    assert simulate(streaming(2, 50), stages, costs, Network(msg, collective=coll),
                    Options(batch=10)).seconds == simulate(
        streaming(2, 50), stages, costs, Network(msg), Options(batch=10)).seconds


def test_hierarchical_all_reduce_takes_its_closed_form() -> None:
    intra, inter, n, step, ticks = Link(5e-6, 100e9), Link(20e-6, 5e9), 4_000_000, 1 * MS, 10
    for per_node, r in ((2, 4), (3, 6), (2, 6), (1, 3), (3, 5)):
        where = [min(per_node, r - k) for k in range(0, r, per_node)]
        net = Network(intra, inter, per_node)
        two_level = hierarchical_allreduce_s(4 * n, where, (intra.latency, intra.bandwidth),
                                             (inter.latency, inter.bandwidth))
        assert one_replicated_stage(r, ticks, step, net, n) == pytest.approx(
            ticks * (step + two_level), rel=1e-9), (per_node, r)
    # the slow link carries 1/g of the bytes: 2 nodes of 4 against a flat ring on the slow link
    flat = ring_allreduce_s(4 * n, 8, inter.latency, inter.bandwidth)
    two = hierarchical_allreduce_s(4 * n, [4, 4], (intra.latency, intra.bandwidth),
                                   (inter.latency, inter.bandwidth))
    assert two < flat / 4


def test_delayed_all_reduce_hides_behind_the_next_round() -> None:
    """``bsp_delayed``: tick c's all-reduce runs beside round c + 1 and is waited for at tick
    c + 1, so a round takes max(step, all-reduce) on devices that need no host core."""
    link, n, ticks = Link(20e-6, 10e9), 4_000_000, 20
    ring = ring_allreduce_s(4 * n, 4, link.latency, link.bandwidth)  # 2.52 ms
    delayed = SyncPolicy("bsp_delayed")
    for step in (1 * MS, 4 * MS):
        # round 1's step, then each later round the longer of the two, then the final one
        expect = step + (ticks - 1) * max(step, ring) + ring
        assert one_replicated_stage(4, ticks, step, link, n, delayed) == pytest.approx(
            expect, rel=1e-9)


def test_replicas_with_uneven_shares_meet_every_all_reduce() -> None:
    """r not dividing the stream: replicas without a micro-batch in the last, partial round
    still tick at its boundary before the final all-reduce (``AllReduceSync.drain``), so
    they join the same all-reduces as those with one; the partial round costs a full one."""
    link, n, step, ticks = Link(20e-6, 10e9), 4_000_000, 1 * MS, 10
    for r in (2, 3):
        ring = ring_allreduce_s(4 * n, r, link.latency, link.bandwidth)
        for extra in range(1, r):
            costs = [LayerCost(step, width=1, params=n)]
            stages = [SimStage((0,), tuple(range(r)))]
            bsp = simulate(streaming(1, r * ticks + extra), stages, costs, link,
                           Options(batch=1))
            assert bsp.seconds == pytest.approx((ticks + 1) * (step + ring), rel=1e-9)
            assert sum(x.micro_batches for x in bsp.ranks) == r * ticks + extra
            delayed = simulate(streaming(1, r * ticks + extra), stages, costs, link,
                               Options(batch=1, sync=SyncPolicy("bsp_delayed")))
            assert delayed.seconds == pytest.approx(step + ticks * max(step, ring) + ring,
                                                    rel=1e-9)


def test_greedy_schedule_takes_the_sum_of_its_phases() -> None:
    M, steps = 50, [1 * MS, 2 * MS, 3 * MS]
    schedule = build_schedule("greedy", M, [1.0, 1.0, 1.0], 0.0)
    costs = [LayerCost(s, forward_s=0.0) for s in steps]
    r = simulate(schedule, chain(3), costs, FREE, Options(batch=10))
    assert r.seconds == pytest.approx(sum(M * s for s in steps), rel=0.02)
    assert r.samples == 3 * M * 10


def test_inter_node_links_are_priced_apart() -> None:
    net = Network(FREE, Link(0.0, 1e9), node_size=1)  # every rank its own node
    costs = [LayerCost(0.1 * MS, width=2500), LayerCost(0.1 * MS)]
    r = simulate(streaming(2, 100), chain(2), costs, net, Options(batch=100))
    assert r.seconds == pytest.approx(100 * 1 * MS, rel=0.03)
    same = simulate(streaming(2, 100), chain(2), costs, Network(FREE, Link(0.0, 1e9), 2),
                    Options(batch=100))
    assert same.seconds == pytest.approx(101 * 0.1 * MS, rel=0.02)


def test_stages_of_reads_a_plan_spec() -> None:
    assert stages_of("0-1|2x2", world=3, layers=3) == [SimStage((0, 1), (0,)),
                                                       SimStage((2,), (1, 2))]


@pytest.mark.parametrize("change, message", [
    (dict(layers=[LayerCost(MS)]), "1 layer costs for a schedule of 2 layers"),
    (dict(stages=[SimStage((1,), (0,)), SimStage((0,), (1,))]), "must hold 0..1 in order"),
    (dict(stages=[SimStage((0,), (0,)), SimStage((1,), (0,))]), "a rank runs one stage"),
    (dict(window=0), "window is 0"),
    (dict(cores=0), "cores is 0"),
    (dict(sync=SyncPolicy("asp")), "sync.kind is 'asp'"),
    (dict(layers=[LayerCost(-MS), LayerCost(MS)]), "layers[0].step_s is -0.001"),
    (dict(network=Link(0.0, 0.0)), "bandwidth > 0"),
])
def test_bad_inputs_are_refused_with_the_reason(change: dict, message: str) -> None:
    args = dict(schedule=streaming(2, 10), stages=chain(2), layers=[LayerCost(MS)] * 2,
                network=FREE)
    fields = {f.name for f in dataclasses.fields(Options)}
    opt = Options(**{k: v for k, v in change.items() if k in fields})
    change = {k: v for k, v in change.items() if k not in fields}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        simulate(**{**args, **change}, opt=opt)


def test_the_command_line_answers_a_bad_plan_with_one_line(capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    code = main(["simulate", str(config), "--plan", "0|1", "--step-ms", "4,3"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("pipedbn: error: plan '0|1': covers 2 layers")
    assert "Traceback" not in err


TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def test_the_command_line_prints_the_prediction_of_from_config(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", str(TINY), "--plan", "0@0|1-2@1,2", "--step-ms", "1,2,3",
                 "--cores", "2"])
    assert code == 0
    expected = from_config(load(TINY), "0@0|1-2@1,2", 3, StepTimes([1e-3, 2e-3, 3e-3]),
                           Machine(cores=2))
    assert capsys.readouterr().out == expected.describe() + "\n"
    assert expected.plan == "0@0|1-2@1,2" and len(expected.ranks) == 3


def test_the_default_world_is_what_pipedbn_train_starts() -> None:
    cfg = load(TINY)
    assert plan_world(cfg, "0@0|1-2@3,5") == 6
    assert plan_world(cfg, "auto") == len(cfg.layers)


@pytest.mark.parametrize("args, message", [
    (["--step-ms", "1,x"], "--step-ms 1,x: give one number of milliseconds per layer"),
    (["--step-ms", "1,2"], "step_s has 2 entries for 3 layers"),
    (["--flops", "0"], "--flops 0: give a rate > 0"),
])
def test_the_command_line_names_a_bad_option(args: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(TINY), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pipedbn: error: {message}") and err.count("\n") == 1, err
