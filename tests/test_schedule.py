"""Schedules: which layer trains on which micro-batch, and where each micro-batch comes from."""

from __future__ import annotations

import pytest

from pipedbn.pipeline.schedule import build_schedule


def test_streaming_windows_start_one_offset_apart() -> None:
    s = build_schedule("streaming", 10, [2, 2, 1.5], offset_epochs=0.5)
    assert (s.starts, s.ends, s.length) == ((0, 5, 10), (20, 25, 25), 25)
    assert [s.top(m) for m in (0, 4, 5, 9, 10, 19, 20, 24)] == [0, 0, 1, 1, 2, 2, 2, 2]
    assert not s.trains(0, 20) and s.trains(1, 20)  # layer 0 frozen, still forwards to 1 and 2
    assert s.data_position(23) == (2, 3)
    assert s.micro_batches(2) == list(range(10, 25))


def test_greedy_layers_train_one_after_another_with_fresh_epochs() -> None:
    s = build_schedule("greedy", 4, [2, 1, 3], offset_epochs=99)
    assert (s.starts, s.ends) == ((0, 8, 12), (8, 12, 24))
    assert [s.top(m) for m in (0, 7, 8, 11, 12, 23)] == [0, 0, 1, 1, 2, 2]
    assert [s.data_position(m) for m in (0, 7, 8, 11, 12, 23)] == [
        (0, 0), (1, 3), (0, 0), (0, 3), (0, 0), (2, 3)]
    assert [s.steps(i) for i in range(3)] == [8, 4, 12]


def test_gaps_in_streaming_windows_skip_unused_micro_batches() -> None:
    s = build_schedule("streaming", 10, [0.5, 1], offset_epochs=1)
    assert s.top(7) == -1 and 7 not in s.micro_batches(0)
    assert s.micro_batches(0) == list(range(0, 5)) + list(range(10, 20))


def test_fractional_epochs_round_to_at_least_one_update() -> None:
    s = build_schedule("streaming", 3, [0.01, 1.5], offset_epochs=0)
    assert [s.steps(i) for i in range(2)] == [1, 4]


def test_unknown_schedule_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        build_schedule("async", 3, [1], 0)
