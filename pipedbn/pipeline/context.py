"""What a rank is and what flows through it: the stage loop's vocabulary.

- ``RankContext``: this process in the run (rank, world, device, dtype, timeouts), fixed for the
  whole run;
- ``Role``: what the rank does in one *segment* of the stream (the stage and replica of a plan,
  from micro-batch ``begin`` to the end of the stream or to the next re-plan);
- ``MicroBatch``: one micro-batch on its way up (its index, its rows, the held-out probe that
  travels with it, its labels for a label top layer);
- ``Ending``: how a segment's stream ended: the end of the stream, or a re-plan at ``at``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipedbn.balancer import Plan
from pipedbn.pipeline.schedule import Schedule
from pipedbn.pipeline.transport import END, PLAN


@dataclass(frozen=True)
class RankContext:
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype
    timeout: float
    """``pipeline.timeout``: every wait on a neighbour once the stream runs."""
    setup_timeout: float
    """``pipeline.setup_timeout``: the first wait (a neighbour still setting up)."""


@dataclass(frozen=True)
class Role:
    """What one rank does in one segment of the stream."""

    plan: Plan
    stage: int
    replica: int
    segment: int
    begin: int

    @property
    def replicas(self) -> int:
        return self.plan.stages[self.stage].replicas

    @property
    def layers(self) -> tuple[int, ...]:
        return self.plan.stages[self.stage].layers

    @property
    def name(self) -> str:
        """``stage 1`` or ``stage 1 replica 2``, for messages."""
        return f"stage {self.stage}" + (f" replica {self.replica}" if self.replicas > 1 else "")

    def micro_batches(self, schedule: Schedule, first: int, replica: int | None = None
                      ) -> list[int]:
        """The micro-batches this replica (or another of the stage) handles, in order."""
        r, j = self.replicas, self.replica if replica is None else replica
        return [m for m in schedule.micro_batches(first, self.begin) if m % r == j]


@dataclass
class MicroBatch:
    m: int
    x: torch.Tensor
    probe: torch.Tensor | None = None
    """The held-out samples measured with ``m`` (``probe.py``), if it carries them."""
    labels: torch.Tensor | None = None
    """The class index of each row (int64), when the top layer has label units."""

    @property
    def rows(self) -> int:
        return self.x.shape[0]


@dataclass(frozen=True)
class Ending:
    kind: int  # END or PLAN, as on the wire (``transport.py``)
    at: int = -1

    @property
    def replans(self) -> bool:
        return self.kind == PLAN

    def stop_at(self, length: int) -> int:
        """The first micro-batch this segment does not cover."""
        return self.at if self.replans else length


STREAM_END = Ending(END)
