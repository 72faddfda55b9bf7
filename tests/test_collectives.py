"""The replicas' all-reduce sync (``sync_allreduce.py``, ``collectives.py``) between real
processes on gloo (a FileStore: no ports): 2, 3 and 4 replicas, flat and hierarchical groups made
again for every plan, bit-identical after every BSP tick, deterministic, ``bsp_delayed`` against
a one-process reference of its rule, and a replica lost or hung in the middle of a round."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch

from pipedbn.balancer import Plan
from pipedbn.config import BalancerConfig, load_config, resolve_defaults
from pipedbn.model.rbm import RBM, RBMSettings
from pipedbn.observe.monitor import Metrics
from pipedbn.pipeline.replicas import start_replica
from stages import registry

pytestmark = pytest.mark.slow  # every test here starts processes

WORLD, TICKS, PER_ROUND = 4, 5, 2
TIMEOUT = 5.0  # pipeline.timeout of the failure tests
# (plan, node of each rank, policy, identical data): run one after another, the groups of each
# made on every rank and destroyed after it, as a re-plan does
SCENARIOS = [
    ("0x2|1x2", "aaaa", "bsp", False),
    ("0x3|1", "aaaa", "bsp", False),
    ("0x4", "aaaa", "bsp", False),
    ("0x4", "aabb", "bsp", False),  # hierarchical: 2 nodes of 2
    ("0x3|1", "aabb", "bsp", False),  # hierarchical, uneven: ranks 0-1 on a, 2 alone on b
    ("0x4", "aabb", "bsp_delayed", False),
    ("0x2|1x2", "aaaa", "bsp_delayed", True),
    ("0x2|1x2", "aaaa", "bsp", True),
]


def layer(seed: int = 0) -> RBM:
    cfg = resolve_defaults(load_config(None, ["layers=[{hidden: 6}]", "train.batch_size=8",
                                              "layers.0.momentum=0.9"])).layers[0]
    return registry.get(cfg.kind)(10, 6, RBMSettings.of(cfg), seed=seed, index=0,
                                  steps_per_epoch=10, total_steps=100, dtype=torch.float32)


def batch(tick: int, replica: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * tick + 10 * replica + step)
    return (torch.rand(8, 10, generator=g) < 0.4).float()


def crc(t: torch.Tensor) -> int:
    return zlib.crc32(t.numpy().tobytes())


def _sync(rbm: RBM, groups: Any, replica: int, policy: str, timeout: float = 30.0,
          kv: Any = None) -> Any:
    from pipedbn.pipeline.replicas import RoundsSetup
    from pipedbn.pipeline.sync_allreduce import AllReduceSync

    cfg = BalancerConfig(sync=policy)  # type: ignore[arg-type]
    setup = RoundsSetup([rbm], replica, list(range(1, TICKS + 1)), cfg, timeout,
                        f"replica {replica}", Metrics(None))
    return AllReduceSync(setup, groups, kv, "lost")


def _scenarios(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from pipedbn.pipeline.collectives import destroy_groups, make_groups

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, WORLD), rank=rank,
                            world_size=WORLD)
    results: dict[int, dict[str, Any]] = {}
    # twice over: the second pass makes every group again and must repeat the first's bits
    for n, (spec, nodes, policy, same) in enumerate(SCENARIOS * 2):
        plan = Plan.parse(spec, WORLD, len(spec.split("|")))
        groups = make_groups(plan, list(nodes), 30.0)
        role = plan.role(rank)
        if role is not None and role[0] in groups:
            stage, replica = role
            g = groups[stage]
            rbm = layer()
            if replica and not same:
                start_replica(rbm, 0, replica, 0)
            sync = _sync(rbm, g, replica, policy)
            r, ticks, traj = len(g.ranks), [], []  # type: ignore[var-annotated]
            for t in range(TICKS):
                for s in range(PER_ROUND):
                    rbm.train_step(batch(t, 0 if same else replica, s), replicas=r)
                sync.tick()
                flat = sync.bucket.flat()
                traj.append(flat.clone())
                ticks.append(crc(flat))
            sync.finish()
            results[n] = {"ticks": ticks, "traj": traj, "final": sync.bucket.flat(),
                          "messages": sync.messages, "replica": replica, "stage": stage}
        destroy_groups(groups)
    torch.save(results, out)
    dist.destroy_process_group()


def _spawn(tmp_path: Path, target: Any, world: int, *args: Any) -> list[Any]:
    tmp_path.mkdir()
    ctx = mp.get_context("spawn")
    outs = [str(tmp_path / f"out{r}.pt") for r in range(world)]
    procs = [ctx.Process(target=target, args=(r, str(tmp_path / "store"), outs[r], *args))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)  # spawning takes long on a loaded machine
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail("a replica hung")
    return [torch.load(o, weights_only=False) if os.path.exists(o) else None for o in outs]


def _reference(policy: str, r: int) -> list[torch.Tensor]:
    """One replica's weights after each tick when all ``r`` train on the same data with the
    same random stream: its own update ``d`` at once, the round's sum ``r d`` into ``G`` at
    once (``bsp``) or one round late (``bsp_delayed``)."""
    rbm = layer()
    view = [p for p in rbm.parameters()]
    flat = torch.cat([p.reshape(-1) for p in view])
    synced, base, pending, out = flat.clone(), flat.clone(), None, []
    for t in range(TICKS):
        for s in range(PER_ROUND):
            rbm.train_step(batch(t, 0, s), replicas=r)
        d = torch.cat([p.reshape(-1) for p in view]) - base
        total = d + d  # what gloo's all-reduce adds for two equal updates
        if policy == "bsp":
            synced = synced + total
            w = synced.clone()
        else:
            if pending is not None:
                synced = synced + pending
            pending, w = total, synced + d
        base = w.clone()
        i = 0
        for p in view:
            p.copy_(w[i:i + p.numel()].view_as(p))
            i += p.numel()
        out.append(w)
    return out


def test_replicas_agree_after_every_tick_and_runs_repeat(tmp_path: Path) -> None:
    first = _spawn(tmp_path / "a", _scenarios, WORLD)
    for n, (spec, nodes, policy, same) in enumerate(SCENARIOS):
        mine = [res[n] for res in first if n in res]
        assert mine, (spec, nodes)
        for stage in {res["stage"] for res in mine}:
            peers = [res for res in mine if res["stage"] == stage]
            if policy == "bsp":  # bit-identical after every tick
                assert all(res["ticks"] == peers[0]["ticks"] for res in peers), (spec, nodes)
            assert all(torch.equal(res["final"], peers[0]["final"]) for res in peers), spec
        for res in first:  # the same bits again, on groups made afresh
            if n in res:
                again = res[n + len(SCENARIOS)]
                assert torch.equal(res[n]["final"], again["final"]), (spec, nodes, policy)
                assert res[n]["ticks"] == again["ticks"], (spec, nodes, policy)
        if same:
            want = _reference(policy, 2)
            for res in mine:
                for got, ref in zip(res["traj"], want, strict=True):
                    assert torch.equal(got, ref), (spec, policy, res["replica"])
    # replicas that train on different data do move apart under bsp_delayed between ticks
    delayed = [res[5] for res in first if 5 in res]
    assert len({res["ticks"][2] for res in delayed}) > 1
    # hierarchical, uneven: node a's leader reduces, all-reduces with b's and broadcasts (three
    # collectives per round), its peer reduces and takes the broadcast (two), b's lone replica
    # only all-reduces (one); TICKS rounds and one final round
    uneven = {res[4]["replica"]: res[4]["messages"] for res in first if 4 in res}
    assert uneven == {0: 3 * (TICKS + 1), 1: 2 * (TICKS + 1), 2: TICKS + 1}


def _failing(rank: int, store: str, out: str, how: str) -> None:
    import torch.distributed as dist

    from pipedbn.pipeline.collectives import make_groups
    from pipedbn.pipeline.transport import LinkError

    torch.set_num_threads(1)
    fs = dist.FileStore(store, 3)
    dist.init_process_group("gloo", store=fs, rank=rank, world_size=3)
    groups = make_groups(Plan.parse("0x3", 3, 1), ["a"] * 3, TIMEOUT)
    rbm = layer()
    sync = _sync(rbm, groups[0], rank, "bsp", timeout=TIMEOUT, kv=dist.PrefixStore("kv", fs))
    result: dict[str, Any] = {}
    try:
        for t in range(TICKS):
            if rank == 2 and t == 2:
                result["at"] = time.time()
                torch.save(result, out)
                if how == "kill":
                    os._exit(9)
                time.sleep(60)  # hung: alive, silent
            rbm.train_step(batch(t, rank, 0), replicas=3)
            sync.tick()
    except LinkError as e:
        result.update(error=str(e), peer=e.peer, timed_out=e.timed_out, t=time.time())
    torch.save(result, out)
    os._exit(0)


@pytest.mark.parametrize("how", ["kill", "hang"])
def test_a_replica_lost_in_a_round_is_named_within_the_timeout(tmp_path: Path, how: str
                                                                ) -> None:
    ctx = mp.get_context("spawn")
    outs = [str(tmp_path / f"out{r}.pt") for r in range(3)]
    procs = [ctx.Process(target=_failing, args=(r, str(tmp_path / "store"), outs[r], how))
             for r in range(3)]
    for p in procs:
        p.start()
    for p in procs[:2]:
        p.join(timeout=600)
    procs[2].kill()
    lost = torch.load(outs[2], weights_only=False)
    for r in (0, 1):
        got = torch.load(outs[r], weights_only=False)
        assert got.get("peer") == 2, got
        assert "lost replica 2 (rank 2) in a sync round" in got["error"], got
        assert got["timed_out"] == (how == "hang"), got
        assert got["t"] - lost["at"] < TIMEOUT, got  # within pipeline.timeout
