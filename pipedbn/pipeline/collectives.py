"""Process groups of the replicated stages, and the one sum all-reduce a sync round is.

Every replicated stage of a plan gets its own process group (its ranks in replica order), made
at the start of each plan's segment on *every* rank, in stage order: ``new_group`` is collective
over the whole world and names groups by a counter, so every rank must make every group, in the
same order (idle ranks and the ranks of other stages included). After a re-plan the old groups
are destroyed and the new plan's made, the same way; a run resumed on another world size makes
its first plan's.

A stage whose replicas span nodes (torchrun's ``GROUP_RANK``, gathered once per run) also gets
one group per node it uses (its replicas there) and one of the node *leaders* (each node's first
replica): a round is then a ``reduce`` to the leader inside each node, an ``all_reduce`` among the
leaders and a ``broadcast`` inside each node, so the slow link carries one bucket per node, not
one per replica. Every step has one source of each value (the ring's reduce-scatter gives each
chunk one owner, the leader's broadcast one value per node), so every replica ends with the same
bits, and the result depends only on the group and the bucket: a run is deterministic.

The groups use the run's backend (gloo on CPU, NCCL on CUDA). A round waits at most 0.6 x
``pipeline.timeout``: a collective that a lost or hung replica never finishes raises,
and ``lost_replica`` works out which replica it was within a fifth of it (5 s at most), so every
replica stops within ``pipeline.timeout``, naming it. For bitwise-reproducible runs on NCCL set
``NCCL_ALGO=Ring``, ``NCCL_PROTO=Simple`` and ``NCCL_NVLS_ENABLE=0`` (NCCL otherwise picks its
algorithm by size and topology, and tree or NVLink-SHARP reductions add in another order); this
path is untested here (no GPU).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from pipedbn.balancer import Plan
from pipedbn.pipeline.transport import LinkError, _reason, _wait


def node_ids() -> list[str]:
    """The node of every rank (collective over the world): torchrun's ``GROUP_RANK`` with the
    host's name, so two agents on one machine (``--nnodes 2`` on loopback) are two nodes."""
    mine = f"{socket.gethostname()}/{os.environ.get('GROUP_RANK', '0')}"
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return [str(n) for n in out]


@dataclass
class StageGroups:
    """One replicated stage's groups, as this rank (one of its replicas) uses them."""

    ranks: tuple[int, ...]
    flat: dist.ProcessGroup
    """Every replica of the stage (checkpoint broadcasts; the round when on one node)."""
    node: dist.ProcessGroup | None = None
    """This rank's node's replicas, when the stage spans nodes and has several here."""
    leaders: dist.ProcessGroup | None = None
    """The first replica of each node, when the stage spans nodes; None on a non-leader."""
    leader: int = -1
    """The global rank of this node's first replica (hierarchical stages)."""

    @property
    def hierarchical(self) -> bool:
        return self.leader >= 0


@dataclass(frozen=True)
class Layout:
    """The groups of one replicated stage, in the order every rank makes them."""

    stage: int
    ranks: tuple[int, ...]
    nodes: tuple[tuple[int, ...], ...] = ()
    """Per node with two or more of its replicas, those ranks (when the stage spans nodes)."""
    leaders: tuple[int, ...] = ()
    """Each node's first replica (when the stage spans nodes)."""


def layouts(plan: Plan, nodes: list[str]) -> list[Layout]:
    """Every replicated stage's groups (``nodes``: the node of every rank): a pure function of
    the plan and the nodes, so every rank makes the same groups in the same order."""
    out = []
    for s, stage in enumerate(plan.stages):
        if stage.replicas < 2:
            continue
        by_node: dict[str, list[int]] = {}
        for r in stage.ranks:
            by_node.setdefault(nodes[r], []).append(r)
        if len(by_node) == 1:
            out.append(Layout(s, stage.ranks))
            continue
        members = sorted(tuple(m) for m in by_node.values())
        out.append(Layout(s, stage.ranks, tuple(m for m in members if len(m) > 1),
                          tuple(m[0] for m in members)))
    return out


def make_groups(plan: Plan, nodes: list[str], timeout: float, backend: str | None = None
                ) -> dict[int, StageGroups]:
    """Every replicated stage's groups (collective over the world: every rank calls it with
    the same plan); returns those of this rank's stage, by stage index."""
    me = dist.get_rank()
    wait = timedelta(seconds=timeout)
    mine: dict[int, StageGroups] = {}
    for lay in layouts(plan, nodes):
        flat = dist.new_group(list(lay.ranks), timeout=wait, backend=backend)
        groups = StageGroups(lay.ranks, flat)
        for members in lay.nodes:
            g = dist.new_group(list(members), timeout=wait, backend=backend)
            if me in members:
                groups.node = g
        if lay.leaders:
            lead = dist.new_group(list(lay.leaders), timeout=wait, backend=backend)
            if me in lay.ranks:
                groups.leader = next(r for r in lay.leaders if nodes[r] == nodes[me])
                groups.leaders = lead if me in lay.leaders else None
        if me in lay.ranks:
            mine[lay.stage] = groups
    return mine


def destroy_groups(groups: dict[int, StageGroups]) -> None:
    for g in groups.values():
        for pg in (g.flat, g.node, g.leaders):
            if pg is not None:
                dist.destroy_process_group(pg)


def sum_round(bucket: torch.Tensor, groups: StageGroups, timeout: float, what: str) -> int:
    """Replace ``bucket`` by its sum over the stage's replicas (in place; blocks at most
    ``timeout`` seconds in all); returns how many collectives this rank handed the bucket to.
    A failure raises ``LinkError`` naming no peer yet (``lost_replica`` finds it)."""
    deadline = time.monotonic() + timeout
    g = groups
    steps: list[tuple[Callable[..., Any], dict[str, Any]]]
    if not g.hierarchical:
        steps = [(dist.all_reduce, {"group": g.flat})]
    else:
        steps = []
        if g.node is not None:
            steps.append((dist.reduce, {"dst": g.leader, "group": g.node}))
        if g.leaders is not None:
            steps.append((dist.all_reduce, {"group": g.leaders}))
        if g.node is not None:
            steps.append((dist.broadcast, {"src": g.leader, "group": g.node}))
    for op, kwargs in steps:
        try:
            work = op(bucket, async_op=True, **kwargs)
        except Exception as e:  # a peer already gone when the collective is posted
            raise LinkError(f"{what}: {_reason(e)}", -1) from None
        _wait(work, max(0.001, deadline - time.monotonic()), what, -1)
    return len(steps)


def broadcast_first(bucket: torch.Tensor, groups: StageGroups, timeout: float, what: str
                    ) -> None:
    """Every replica takes replica 0's ``bucket`` (in place)."""
    try:
        work = dist.broadcast(bucket, groups.ranks[0], group=groups.flat, async_op=True)
    except Exception as e:
        raise LinkError(f"{what}: {_reason(e)}", -1) from None
    _wait(work, timeout, what, -1)


def lost_replica(kv: dist.Store | None, key: str, replica: int, ranks: tuple[int, ...],
                 grace: float) -> int | None:
    """After a failed collective: every replica that is still alive says so under ``key`` and
    waits up to ``grace`` seconds for the others; the first replica that never does (killed, or
    hung) is the one to name. None if all answered (the failure was elsewhere)."""
    if kv is None:
        return None
    keys = [f"{key}/{k}" for k in range(len(ranks))]
    try:
        kv.set(keys[replica], "1")
        deadline = time.monotonic() + grace
        while not kv.check(keys) and time.monotonic() < deadline:
            time.sleep(0.02)
        return next((k for k, name in enumerate(keys) if not kv.check([name])), None)
    except RuntimeError:  # the store itself is gone: nothing more to learn
        return None
