"""The stage loop's hooks: points of the stream run in stream order, the first hook listed
first on a tie, and a hook can stop the segment at its point."""

from __future__ import annotations

import math

from pipedbn.pipeline.hooks import Hook
from pipedbn.pipeline.runner import StageStats, _points


class Points(Hook):
    def __init__(self, name: str, points: list[int], log: list[tuple[str, int]],
                 stop_at: int | None = None) -> None:
        self.name, self.points, self.log, self.stop_at = name, list(points), log, stop_at

    def next_point(self) -> float:
        return self.points[0] if self.points else math.inf

    def at_point(self) -> bool:
        p = self.points.pop(0)
        self.log.append((self.name, p))
        return p == self.stop_at


def test_points_run_in_stream_order_and_ties_go_to_the_first_hook() -> None:
    log: list[tuple[str, int]] = []
    hooks = [Points("tick", [2, 4, 9], log), Points("check", [4, 6], log), Hook()]
    stats = StageStats(0, 0, [0])
    assert _points(hooks, 1, stats) is None and log == []
    assert _points(hooks, 5, stats) is None
    assert log == [("tick", 2), ("tick", 4), ("check", 4)]
    assert _points(hooks, 100, stats) is None
    assert log[3:] == [("check", 6), ("tick", 9)]


def test_a_hook_that_stops_ends_the_points_at_its_own() -> None:
    log: list[tuple[str, int]] = []
    hooks = [Points("tick", [3, 8], log), Points("check", [5, 10], log, stop_at=5)]
    assert _points(hooks, 20, StageStats(0, 0, [0])) == 5
    assert log == [("tick", 3), ("check", 5)]  # nothing after the stop
