"""Checkpoint files: completeness, checksums, pruning, config comparison (no processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipedbn.config import load_config, resolve_defaults
from pipedbn.errors import NonFiniteError
from pipedbn.pipeline.layers import make_layer
from pipedbn.pipeline.replicas import round_boundaries
from pipedbn.pipeline.schedule import build_schedule
from pipedbn.run.checkpoint import (
    CheckpointError,
    Saver,
    boundaries,
    complete,
    config_digest,
    finalize,
    incompatible,
    latest,
    part_path,
)

TINY = "configs/tiny.yaml"


def setup(tmp_path: Path, every: int = 10, keep: int = 2):  # type: ignore[no-untyped-def]
    cfg = resolve_defaults(load_config(TINY, [f"checkpoint.every={every}",
                                              f"checkpoint.keep={keep}"]))
    schedule = build_schedule("streaming", 10, [3.0, 3.0, 3.0], 0.5)  # length 40
    layers = [make_layer(cfg, i, 64, schedule, torch.device("cpu"),
                         torch.full((64,), 0.3).numpy() if i == 0 else None) for i in range(3)]
    return cfg, schedule, layers


def _saved(saver: Saver, layers: list, upto: int) -> None:  # type: ignore[type-arg]
    """``save_upto``, then wait for the background writes."""
    saver.save_upto(layers, upto)
    saver.close()


def test_the_state_is_copied_at_the_save_and_written_in_the_background(tmp_path: Path) -> None:
    cfg, schedule, layers = setup(tmp_path)
    saver = Saver(tmp_path, cfg, schedule, 0)
    before = layers[1].weight.clone()
    saver.save_upto(layers, 10)
    layers[1].weight.add_(1.0)  # training goes on while the writer works
    saver.close()
    found = latest(tmp_path, cfg, 3, schedule.length)
    assert found is not None and torch.equal(found.load(tmp_path, 1)["weight"], before)


def test_a_failed_background_write_is_raised_in_the_stage(tmp_path: Path) -> None:
    cfg, schedule, layers = setup(tmp_path)
    blocker = tmp_path / "run"
    blocker.write_text("a file where the run directory should be")
    saver = Saver(blocker, cfg, schedule, 0)
    saver.save_upto(layers[:1], 10)  # queued: the error comes from the writer thread ...
    with pytest.raises(OSError, match="Not a directory"):
        saver.close()  # ... at the latest when the stage waits for its writes
    assert saver._writer is None  # the thread is gone either way


def test_boundaries() -> None:
    assert boundaries(10, 40) == [10, 20, 30]
    assert boundaries(0, 40) == []
    assert boundaries(50, 40) == []


def test_a_checkpoint_counts_only_when_every_layer_has_written(tmp_path: Path) -> None:
    cfg, schedule, layers = setup(tmp_path)
    saver = Saver(tmp_path, cfg, schedule, 0)
    saver.save_upto(layers[:2], 10)  # layer 2's rank has not got there yet
    saver.close()
    assert complete(tmp_path, 3, schedule.length) == []
    assert latest(tmp_path, cfg, 3, schedule.length) is None
    _saved(Saver(tmp_path, cfg, schedule, 0), layers[2:], 10)
    found = latest(tmp_path, cfg, 3, schedule.length)
    assert found is not None and found.tag == "step-10" and found.micro_batch == 10
    state = found.load(tmp_path, 1)
    assert torch.equal(state["weight"], layers[1].weight)
    # the step counter is the number of updates before the cut: min(c, end) - start
    assert int(state["step"]) == 5 and int(found.load(tmp_path, 0)["step"]) == 10


def test_a_torn_checkpoint_is_ignored_and_the_one_before_is_used(tmp_path: Path) -> None:
    cfg, schedule, layers = setup(tmp_path, keep=5)
    _saved(Saver(tmp_path, cfg, schedule, 0), layers, 20)
    torn = part_path(tmp_path, "step-20", 2)
    torn.with_suffix(".json").unlink()  # killed between the part and its checksum
    torn.write_bytes(torn.read_bytes()[:100])
    (torn.parent / ".layer-2.pt.abc.tmp").write_bytes(b"half")  # killed inside atomic_write
    found = latest(tmp_path, cfg, 3, schedule.length)
    assert found is not None and found.tag == "step-10"


def test_a_flipped_byte_is_refused_by_its_checksum(tmp_path: Path) -> None:
    cfg, schedule, layers = setup(tmp_path)
    _saved(Saver(tmp_path, cfg, schedule, 0), layers, 10)
    path = part_path(tmp_path, "step-10", 1)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # torch.load would read this without complaint
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        latest(tmp_path, cfg, 3, schedule.length)


def test_a_checkpoint_from_other_training_settings_is_refused(tmp_path: Path) -> None:
    cfg, schedule, layers = setup(tmp_path)
    _saved(Saver(tmp_path, cfg, schedule, 0), layers, 10)
    other = resolve_defaults(load_config(TINY, ["layers.1.lr=0.05"]))
    assert config_digest(other) != config_digest(cfg)
    with pytest.raises(CheckpointError, match="other training settings"):
        latest(tmp_path, other, 3, schedule.length)


def test_finalize_writes_manifests_and_keeps_the_newest(tmp_path: Path) -> None:
    cfg, schedule, layers = setup(tmp_path, keep=2)
    _saved(Saver(tmp_path, cfg, schedule, 0), layers, 30)
    finalize(tmp_path, cfg, 3, schedule.length, schedule)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step-20", "step-30"]
    manifest = json.loads((tmp_path / "checkpoints/step-30/MANIFEST.json").read_text())
    assert manifest["micro_batch"] == 30
    assert manifest["data"] == {"seed": 0, "epoch": 3, "sample": 0, "micro_batch": 30}
    assert set(manifest["layers"]) == {"0", "1", "2"}


def test_an_incomplete_newer_checkpoint_is_kept_an_older_one_dropped(tmp_path: Path) -> None:
    cfg, schedule, layers = setup(tmp_path, keep=1)
    _saved(Saver(tmp_path, cfg, schedule, 0), layers[:1], 10)  # torn: older than complete
    _saved(Saver(tmp_path, cfg, schedule, 10), layers, 20)
    _saved(Saver(tmp_path, cfg, schedule, 20), layers[:2], 30)  # still being written
    finalize(tmp_path, cfg, 3, schedule.length, schedule)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step-20", "step-30"]


def test_a_non_finite_layer_is_never_saved(tmp_path: Path) -> None:
    cfg, schedule, layers = setup(tmp_path)
    layers[1].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="layer 1"):
        _saved(Saver(tmp_path, cfg, schedule, 0), layers, 10)
    assert not part_path(tmp_path, "step-10", 1).exists()


def test_incompatible_names_every_training_field_that_differs() -> None:
    a = resolve_defaults(load_config(TINY))
    b = resolve_defaults(load_config(TINY, ["train.batch_size=64", "layers.2.hidden=8",
                                            "seed=3", "monitor.eval_every=7",
                                            "balancer.max_replicas=2", "train.threads=2"]))
    diffs = incompatible(a, b)
    assert any(d.startswith("train.batch_size: 50 in the run, 64 now") for d in diffs)
    assert any(d.startswith("layers.2.hidden:") for d in diffs)
    assert any(d.startswith("seed:") for d in diffs)
    assert len(diffs) == 3  # monitoring, placement and threads may change on resume


def test_round_boundaries_restart_at_each_checkpoint() -> None:
    trained = list(range(0, 30))
    ticks, cuts = round_boundaries(trained, 4, [10, 20])
    assert cuts == {10, 20}
    assert ticks == [4, 8, 10, 14, 18, 20, 24, 28]
    # a run resumed at 10 ticks where the uninterrupted one did from there on
    later, _ = round_boundaries(list(range(10, 30)), 4, [20])
    assert later == [t for t in ticks if t > 10]
    assert round_boundaries(trained, 4, []) == (trained[4::4], set())
