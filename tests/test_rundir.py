"""Which stage stopped a run, worked out from what every stage recorded (no processes)."""

from __future__ import annotations

from pathlib import Path

from pipedbn.run.rundir import record_failure, root_failure


def rec(seen_by: int, stage: int, kind: str, t: float) -> dict[str, object]:
    return {"stage": stage, "seen_by": seen_by, "kind": kind, "time": t, "exit_code": 4,
            "message": f"{seen_by} blames {stage}"}


def root(tmp_path: Path, *records: dict[str, object]) -> int | None:
    for r in records:
        record_failure(tmp_path, r)
    found = root_failure(tmp_path)
    return None if found is None else int(found["stage"])


def test_no_records(tmp_path: Path) -> None:
    assert root(tmp_path) is None


def test_a_stages_own_error_wins(tmp_path: Path) -> None:
    assert root(tmp_path, rec(1, 2, "closed", 1.0), rec(2, 2, "own", 2.0),
                rec(3, 2, "timeout", 0.5)) == 2


def test_blame_follows_timeouts_to_the_stage_that_recorded_nothing(tmp_path: Path) -> None:
    # stage 3 hangs; 0, 1, 2 block on sends; 1 times out first and blames 2, 2 blames 3
    assert root(tmp_path, rec(1, 2, "timeout", 1.0), rec(0, 1, "timeout", 1.5),
                rec(2, 3, "timeout", 1.2)) == 3


def test_a_closed_link_after_a_timeout_does_not_mislead(tmp_path: Path) -> None:
    # 2 timed out on 3 (hung); gloo closed 2's links, so 1 saw "closed" and blamed 2 first
    assert root(tmp_path, rec(1, 2, "closed", 1.0), rec(2, 3, "timeout", 1.1)) == 3


def test_closed_links_lead_to_the_dead_stage(tmp_path: Path) -> None:
    # 2 was killed: 1 and 3 see closed links, then 0 sees 1 go
    assert root(tmp_path, rec(3, 2, "closed", 1.0), rec(1, 2, "closed", 1.0),
                rec(0, 1, "closed", 1.1)) == 2


def test_a_cycle_of_blame_ends(tmp_path: Path) -> None:
    assert root(tmp_path, rec(1, 2, "timeout", 1.0), rec(2, 1, "timeout", 1.1)) in (1, 2)


def test_a_hung_stage_that_wakes_up_and_blames_its_neighbour_is_still_the_root(
        tmp_path: Path) -> None:
    # 1 hung: 0 and 2 time out on it; once continued, 1's own receive from 0 times out too
    assert root(tmp_path, rec(0, 1, "timeout", 1.0), rec(2, 1, "timeout", 1.1),
                rec(1, 0, "timeout", 5.0)) == 1
