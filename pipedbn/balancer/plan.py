"""A plan: which ranks run which layers.

The layers are cut into contiguous *stages*; each stage runs on one or more ranks, its
*replicas* (replica j of a stage is ``stage.ranks[j]``; replica 0 is the stage's *owner*).
Ranks in no stage stay idle.

A plan has a compact string form (``Plan.spec`` / ``Plan.parse``): stages separated by ``|``,
each ``LAYERS@RANKS`` with ``LAYERS`` one layer ``i`` or a range ``i-j`` and ``RANKS`` a comma
list of ranks and ranges, e.g. ``0-1@0|2@1,2|3@3``. The shorthand without ``@`` gives each stage
a replica count instead, ``LAYERS`` or ``LAYERSxN``, and hands out ranks in order from 0:
``0-1|2x2|3`` is the plan above.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    layers: tuple[int, ...]  # contiguous, ascending
    ranks: tuple[int, ...]  # replica j runs on ranks[j]

    @property
    def replicas(self) -> int:
        return len(self.ranks)


@dataclass(frozen=True)
class Plan:
    stages: tuple[Stage, ...]
    world: int

    @property
    def layers(self) -> int:
        """Number of layers the plan covers."""
        return sum(len(s.layers) for s in self.stages)

    def validate(self) -> Plan:
        """Raise ValueError unless the stages hold layers 0..L-1 in order, each stage at least
        one layer and one rank, and every rank at most once and inside ``[0, world)``."""
        if self.world < 1:
            raise ValueError(f"no ranks: world is {self.world}; a plan needs at least 1 rank")
        if not self.stages:
            raise ValueError("the plan has no stages; give at least one stage with one layer")
        expected = 0
        seen: dict[int, int] = {}
        for i, stage in enumerate(self.stages):
            if not stage.layers:
                raise ValueError(f"stage {i} has no layers; every stage needs at least one")
            if not stage.ranks:
                raise ValueError(f"stage {i} has no ranks; every stage needs at least one")
            for layer in stage.layers:
                if layer != expected:
                    raise ValueError(
                        f"stage {i} holds layer {layer} where layer {expected} comes next; "
                        "stages must hold layers 0, 1, ... in order, each a contiguous range")
                expected += 1
            for rank in stage.ranks:
                if not 0 <= rank < self.world:
                    raise ValueError(f"stage {i} uses rank {rank}, outside 0..{self.world - 1} "
                                     f"(world {self.world}); use fewer ranks or a larger world")
                if rank in seen:
                    raise ValueError(f"rank {rank} appears twice (stages {seen[rank]} and {i}); "
                                     "a rank runs at most one stage")
                seen[rank] = i
        return self

    def role(self, rank: int) -> tuple[int, int] | None:
        """``(stage index, replica index)`` of ``rank``, or None if the rank is idle."""
        for i, stage in enumerate(self.stages):
            if rank in stage.ranks:
                return i, stage.ranks.index(rank)
        return None

    def stage_of_layer(self, layer: int) -> int:
        """Index of the stage that holds ``layer``."""
        for i, stage in enumerate(self.stages):
            if layer in stage.layers:
                return i
        raise ValueError(f"layer {layer} is not in the plan (it has layers 0..{self.layers - 1})")

    def owner(self, layer: int) -> int:
        """Rank of replica 0 of the stage that holds ``layer``."""
        return self.stages[self.stage_of_layer(layer)].ranks[0]

    @property
    def idle(self) -> tuple[int, ...]:
        """Ranks in no stage, ascending."""
        used = {r for s in self.stages for r in s.ranks}
        return tuple(r for r in range(self.world) if r not in used)

    def describe(self) -> str:
        """One line, e.g. ``layers 0-1 on rank 0 | layer 2 on ranks 1,2 (2 replicas)``."""
        parts = []
        for s in self.stages:
            what = f"layer{'s' if len(s.layers) > 1 else ''} {_span(s.layers)}"
            where = f"rank{'s' if s.replicas > 1 else ''} {_list(s.ranks)}"
            reps = f" ({s.replicas} replicas)" if s.replicas > 1 else ""
            parts.append(f"{what} on {where}{reps}")
        idle = self.idle
        if idle:
            parts.append(f"idle: rank{'s' if len(idle) > 1 else ''} {_list(idle)}")
        return " | ".join(parts)

    def spec(self) -> str:
        """The compact form that ``Plan.parse`` reads back, e.g. ``0-1@0|2@1,2|3@3``."""
        return "|".join(f"{_span(s.layers)}@{_list(s.ranks)}" for s in self.stages)

    @classmethod
    def parse(cls, spec: str, world: int, layers: int) -> Plan:
        """Read a plan in either string form (see the module docstring) and validate it for
        ``world`` ranks and a model of ``layers`` layers."""
        def fail(what: str) -> ValueError:
            return ValueError(f"plan {spec!r}: {what}")

        texts = [t.strip() for t in spec.split("|")]
        if any(not t for t in texts):
            raise fail("empty stage; separate stages with single '|', e.g. '0-1|2|3'")
        with_at = ["@" in t for t in texts]
        if any(with_at) and not all(with_at):
            raise fail("mixes 'LAYERS@RANKS' stages with shorthand stages; use one form")
        stages = []
        next_rank = 0
        for text in texts:
            if all(with_at):
                left, _, right = text.partition("@")
                if "@" in right:
                    raise fail(f"stage {text!r} has more than one '@'")
                ranks = [r for part in right.split(",") for r in _range(part, "rank", fail)]
            else:
                left, x, count = text.lower().partition("x")
                n = _int(count, "replica count", fail) if x else 1
                if n < 1:
                    raise fail(f"stage {text!r} asks for {n} replicas; give at least 1")
                ranks = list(range(next_rank, next_rank + n))
                next_rank += n
            stages.append(Stage(tuple(_range(left, "layer", fail)), tuple(ranks)))
        if next_rank > world:
            raise fail(f"needs {next_rank} ranks but the world has {world}; "
                       "lower the replica counts or start more ranks")
        plan = cls(tuple(stages), world)
        try:
            plan.validate()
        except ValueError as e:
            raise fail(str(e)) from None
        if plan.layers != layers:
            raise fail(f"covers {plan.layers} layers but the model has {layers}; "
                       f"list layers 0..{layers - 1} exactly once")
        return plan

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: ``{"world": w, "stages": [{"layers": [...], "ranks": [...]}]}``."""
        return {"world": self.world,
                "stages": [{"layers": list(s.layers), "ranks": list(s.ranks)}
                           for s in self.stages]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        """Inverse of ``to_dict``; the plan is validated."""
        try:
            world = d["world"]
            stages = tuple(Stage(tuple(s["layers"]), tuple(s["ranks"])) for s in d["stages"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"plan dict {dict(d)!r}: expected {{'world': int, 'stages': "
                             f"[{{'layers': [...], 'ranks': [...]}}, ...]}} ({e!r})") from None
        values = [world, *(v for s in stages for v in (*s.layers, *s.ranks))]
        if any(not isinstance(v, int) or isinstance(v, bool) for v in values):
            raise ValueError(f"plan dict {dict(d)!r}: world, layers and ranks must be integers")
        return cls(stages, world).validate()


def one_per_layer(layers: int, world: int | None = None) -> Plan:
    """The plain pipeline: rank i runs layer i; ranks beyond the last layer stay idle."""
    world = layers if world is None else world
    if layers < 1:
        raise ValueError(f"{layers} layers: a plan needs at least 1 layer")
    if world < layers:
        raise ValueError(f"one rank per layer needs {layers} ranks but the world has {world}; "
                         "start more ranks or group layers (e.g. plan '0-1|2')")
    return Plan(tuple(Stage((i,), (i,)) for i in range(layers)), world).validate()


def _span(layers: Sequence[int]) -> str:
    """``0-1`` for a range, ``2`` for one layer."""
    return str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"


def _list(ranks: Sequence[int]) -> str:
    """Ranks as a comma list, runs of 3 or more consecutive ranks written ``a-b``."""
    parts: list[str] = []
    i = 0
    while i < len(ranks):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] == ranks[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{ranks[i]}-{ranks[j]}")
            i = j + 1
        else:
            parts.append(str(ranks[i]))
            i += 1
    return ",".join(parts)


def _int(text: str, what: str, fail: Callable[[str], ValueError]) -> int:
    text = text.strip()
    if not text.isdigit():
        raise fail(f"{what} {text!r} is not a non-negative integer")
    return int(text)


def _range(text: str, what: str, fail: Callable[[str], ValueError]) -> list[int]:
    """``i`` or ``i-j`` (inclusive) as a list of integers."""
    lo, dash, hi = text.partition("-")
    first = _int(lo, what, fail)
    last = _int(hi, what, fail) if dash else first
    if last < first:
        raise fail(f"{what} range {text.strip()!r} runs backwards; write it low-high")
    return list(range(first, last + 1))
