"""The replicated stages' process groups as a pure function of the plan and the nodes: every rank
makes the same groups in the same order (``new_group`` is collective over the world)."""

from __future__ import annotations

from pipedbn.balancer import Plan
from pipedbn.pipeline.collectives import Layout, layouts


def test_one_flat_group_per_replicated_stage_on_one_node() -> None:
    plan = Plan.parse("0x2|1x3|2", 6, 3)
    assert layouts(plan, ["n"] * 6) == [Layout(0, (0, 1)), Layout(1, (2, 3, 4))]


def test_a_stage_across_nodes_gets_node_groups_and_a_group_of_leaders() -> None:
    # stage 1 spans two nodes (ranks 2-3 on a, 4 on b): a group for node a's two replicas and
    # one of the node leaders; a node with one replica needs no group of its own
    plan = Plan.parse("0x2|1x3|2", 6, 3)
    assert layouts(plan, list("aaaabb")) == [
        Layout(0, (0, 1)), Layout(1, (2, 3, 4), ((2, 3),), (2, 4))]
    # interleaved ranks: nodes by their first rank, leaders in that order
    assert layouts(Plan.parse("0x4", 4, 1), list("abab")) == [
        Layout(0, (0, 1, 2, 3), ((0, 2), (1, 3)), (0, 1))]


def test_a_replan_makes_the_new_plans_groups() -> None:
    before, after = Plan.parse("0|1x2|2", 4, 3), Plan.parse("0x2|1|2", 4, 3)
    assert [lay.ranks for lay in layouts(before, ["n"] * 4)] == [(1, 2)]
    assert [lay.ranks for lay in layouts(after, ["n"] * 4)] == [(0, 1)]
