"""The links' start-up probe (``balancer/probe.py``): the ring model's inversion through two
sizes in closed form, the groups it times, and the probe itself between real processes on gloo
(a FileStore: no ports; forked ranks), every rank getting the same figures."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from pipedbn.balancer.cost import ring_allreduce_s
from pipedbn.balancer.probe import LARGE, SMALL, Link, Links, invert, probe_groups
from pipedbn.config import load_config, resolve_defaults


@pytest.mark.parametrize("ranks", [2, 3, 4, 8])
def test_invert_recovers_the_ring_models_latency_and_bandwidth(ranks: int) -> None:
    latency, bandwidth = 37e-6, 2.5e9
    times = [ring_allreduce_s(n, ranks, latency, bandwidth) for n in (SMALL, LARGE)]
    a, b = invert(ranks, (SMALL, times[0]), (LARGE, times[1]))
    assert a == pytest.approx(latency, rel=1e-9)
    assert b == pytest.approx(bandwidth, rel=1e-9)


def test_invert_closed_form_and_its_bounds() -> None:
    # 2 ranks: t = 2 a + n / B; 100 us at 0 bytes and 1.1 ms at 1 MB: a = 50 us, B = 1e9
    assert invert(2, (0, 1e-4), (1e6, 1.1e-3)) == pytest.approx((5e-5, 1e9))
    # the large one no slower (noise): its time as all bandwidth, the small one's as latency
    a, b = invert(2, (8, 1e-3), (1e6, 1e-3))
    assert (a, b) == pytest.approx((5e-4, 1e9))
    # the small one's bytes alone take longer than its time: no negative latency
    assert invert(2, (1e5, 1e-6), (1e6, 1e-3))[0] == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        invert(1, (8, 1e-4), (LARGE, 1e-3))
    with pytest.raises(ValueError, match="sizes"):
        invert(2, (LARGE, 1e-4), (8, 1e-3))


def test_probe_groups_take_the_fullest_node_and_every_nodes_first_rank() -> None:
    assert probe_groups(["a"]) == (None, None)
    assert probe_groups(list("aaaa")) == ((0, 1, 2, 3), None)
    assert probe_groups(list("ab")) == (None, (0, 1))
    assert probe_groups(list("abbb")) == ((1, 2, 3), (0, 1))
    assert probe_groups(list("aabb")) == ((0, 1), (0, 2))


def test_measured_figures_replace_the_configured_ones() -> None:
    cfg = resolve_defaults(load_config(None, ["layers=[{hidden: 6}]"]))
    links = Links(Link(2, 3e-5, 4e9, 1e-4, 2e-3), None, 0.1)
    got = links.into(cfg).balancer
    assert (got.latency, got.bandwidth, got.links) == (3e-5, 4e9, "config")
    assert (got.inter_latency, got.inter_bandwidth) == (None, None)  # one node: as configured
    assert "between nodes: not measured" in links.describe()


WORLD = 4
NODES = ["aabb", "aaaa"]  # two nodes of two (both classes), then one node (intra only)


def _probe(rank: int, store: str, out: str) -> None:
    import time
    from datetime import timedelta

    import torch.distributed as dist

    from pipedbn.balancer.probe import probe_links

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, WORLD), rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=60))
    results = []
    for nodes in NODES:
        t0 = time.perf_counter()
        links = probe_links(list(nodes), torch.device("cpu"), timeout=30.0)
        results.append((links, time.perf_counter() - t0))
    torch.save(results, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_every_rank_gets_the_same_positive_finite_figures(tmp_path: Path) -> None:
    # forked, not spawned: a spawned rank imports torch and pipedbn again (~20 s for 4 on 2
    # loaded cores); the parent holds no process group and one thread (conftest)
    ctx = mp.get_context("fork")
    outs = [str(tmp_path / f"out{r}.pt") for r in range(WORLD)]
    procs = [ctx.Process(target=_probe, args=(r, str(tmp_path / "store"), outs[r]))
             for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail("a rank hung in the probe")
    got: list[Any] = [torch.load(o, weights_only=False) for o in outs if os.path.exists(o)]
    assert len(got) == WORLD, "a rank failed"
    for k, nodes in enumerate(NODES):
        first: Links = got[0][k][0]
        assert all(res[k][0] == first for res in got), nodes  # rank 0's figures everywhere
        measured = [first.intra] + ([first.inter] if nodes == "aabb" else [])
        assert (first.inter is None) == (nodes == "aaaa")
        for link in measured:
            assert link is not None
            assert link.ranks == (2 if nodes == "aabb" else 4)
            assert 0 < link.latency < 1 and math.isfinite(link.latency), link
            assert link.bandwidth > 0 and math.isfinite(link.bandwidth), link
        # bounded: well under a second on loopback, a few seconds on a loaded machine
        assert max(res[k][1] for res in got) < 5.0, [res[k][1] for res in got]
