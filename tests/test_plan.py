"""Plans: the two string forms, roles, validation, the dict form."""

from __future__ import annotations

import json

import pytest

from pipedbn.balancer import Plan, Stage, one_per_layer

PLAN = Plan((Stage((0, 1), (0,)), Stage((2,), (1, 2)), Stage((3,), (3,))), world=5)


def test_parse_both_forms_and_round_trip():
    full = Plan.parse("0-1@0|2@1,2|3@3", world=5, layers=4)
    assert full == PLAN
    assert Plan.parse("0-1|2x2|3", world=5, layers=4) == PLAN
    assert Plan.parse(" 0 - 1 @ 0 | 2 @ 1 , 2 |3@ 3 ", world=5, layers=4) == PLAN
    assert Plan.parse(PLAN.spec(), world=5, layers=4) == PLAN
    assert PLAN.spec() == "0-1@0|2@1,2|3@3"


def test_rank_ranges_and_unordered_replicas_round_trip():
    plan = Plan.parse("0@4-6|1@3,0", world=7, layers=2)
    assert plan.stages[0].ranks == (4, 5, 6)
    assert plan.stages[1].ranks == (3, 0)  # replica 0 of stage 1 is rank 3
    assert plan.spec() == "0@4-6|1@3,0"
    assert Plan.parse(plan.spec(), world=7, layers=2) == plan
    assert Plan.parse("0-2x3", world=3, layers=3).spec() == "0-2@0-2"


def test_roles_owner_idle():
    assert PLAN.layers == 4
    assert [s.replicas for s in PLAN.stages] == [1, 2, 1]
    assert PLAN.role(0) == (0, 0)
    assert PLAN.role(2) == (1, 1)
    assert PLAN.role(4) is None
    assert PLAN.idle == (4,)
    assert [PLAN.stage_of_layer(i) for i in range(4)] == [0, 0, 1, 2]
    assert [PLAN.owner(i) for i in range(4)] == [0, 0, 1, 3]
    with pytest.raises(ValueError, match="layer 4 is not in the plan"):
        PLAN.owner(4)


def test_describe():
    four = Plan(PLAN.stages, world=4)
    assert four.describe() == (
        "layers 0-1 on rank 0 | layer 2 on ranks 1,2 (2 replicas) | layer 3 on rank 3")
    assert PLAN.describe().endswith(" | idle: rank 4")


@pytest.mark.parametrize("stages, world, match", [
    ([((0,), (0,)), ((2,), (1,))], 2, "layer 2 where layer 1 comes next"),
    ([((1,), (0,))], 1, "layer 1 where layer 0 comes next"),
    ([((0, 2), (0,))], 1, "layer 2 where layer 1 comes next"),
    ([((0,), (0,)), ((1,), (0,))], 2, "rank 0 appears twice"),
    ([((0,), (0, 1)), ((1,), (2,))], 2, "rank 2, outside 0..1"),
    ([((0,), ())], 1, "stage 0 has no ranks"),
    ([((), (0,))], 1, "stage 0 has no layers"),
    ([], 1, "no stages"),
    ([((0,), (0,))], 0, "no ranks"),
])
def test_validate_errors(stages, world, match):
    plan = Plan(tuple(Stage(layers, ranks) for layers, ranks in stages), world)
    with pytest.raises(ValueError, match=match):
        plan.validate()


@pytest.mark.parametrize("spec, match", [
    ("0|2|3", "layer 2 where layer 1 comes next"),
    ("0-1@0|2@1,1|3@3", "rank 1 appears twice"),
    ("0-1@0|2@1,2|3@9", "outside 0..4"),
    ("0-1|2x4|3", "needs 6 ranks but the world has 5"),
    ("0-1|2x0|3", "0 replicas"),
    ("0-1|2@1|3", "mixes"),
    ("0-1||2-3", "empty stage"),
    ("1-0|2-3", "runs backwards"),
    ("0-1|a|3", "'a' is not a non-negative integer"),
    ("0-2", "covers 3 layers but the model has 4"),
    ("0@0@1|1-3@1", "more than one '@'"),
])
def test_parse_errors_quote_the_spec(spec, match):
    with pytest.raises(ValueError, match=match) as e:
        Plan.parse(spec, world=5, layers=4)
    assert str(e.value).startswith(f"plan {spec!r}: ")


def test_dict_round_trip():
    d = PLAN.to_dict()
    assert d == {"world": 5, "stages": [{"layers": [0, 1], "ranks": [0]},
                                        {"layers": [2], "ranks": [1, 2]},
                                        {"layers": [3], "ranks": [3]}]}
    assert Plan.from_dict(json.loads(json.dumps(d))) == PLAN
    with pytest.raises(ValueError, match="expected"):
        Plan.from_dict({"stages": []})
    with pytest.raises(ValueError, match="integers"):
        Plan.from_dict({"world": 2, "stages": [{"layers": ["0"], "ranks": [0]}]})
    with pytest.raises(ValueError, match="appears twice"):
        Plan.from_dict({"world": 2, "stages": [{"layers": [0], "ranks": [0]},
                                               {"layers": [1], "ranks": [0]}]})


def test_one_per_layer():
    assert one_per_layer(3).spec() == "0@0|1@1|2@2"
    assert one_per_layer(2, world=4).idle == (2, 3)
    with pytest.raises(ValueError, match="needs 3 ranks but the world has 2"):
        one_per_layer(3, world=2)
