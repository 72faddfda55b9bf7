"""A run in one process: equal to the sequential reference, determinism, schedules, partial
micro-batches, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from reference import train_reference

from pipedbn.config import Config, load_config, resolve_defaults
from pipedbn.data.loader import open_data
from pipedbn.observe.monitor import Metrics
from pipedbn.pipeline.trainer import train_in_process

ROOT = Path(__file__).resolve().parents[1]


def tiny(*overrides: str) -> Config:
    return resolve_defaults(load_config(ROOT / "configs" / "tiny.yaml", list(overrides)))


def train(cfg: Config, run_dir: Path | None = None) -> list[dict[str, torch.Tensor]]:
    data = open_data(cfg, unit_range=cfg.layers[0].kind == "bernoulli")
    result = train_in_process(cfg, data, Metrics(run_dir))
    return [layer.state_dict() for layer in result.layers]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_one_process_runs_the_stage_loop_to_the_reference_weights() -> None:
    # the production loop (one stage of every layer, monitoring on) against tests/reference.py
    for overrides in ([], ["train.schedule=greedy", "rbm.method=pcd", "rbm.forward=samples",
                           "monitor.eval_every=7"]):
        cfg = tiny(*overrides)
        data = open_data(cfg, unit_range=True)
        want = [layer.state_dict() for layer in train_reference(cfg, data)]
        for a, b in zip(train(cfg), want, strict=True):
            assert_same(a, b)


def test_same_config_and_seed_give_bitwise_equal_state() -> None:
    for overrides in ([], ["train.schedule=greedy", "rbm.method=pcd", "rbm.forward=samples"]):
        first, second = train(tiny(*overrides)), train(tiny(*overrides))
        for a, b in zip(first, second, strict=True):
            assert_same(a, b)
    other = train(tiny("seed=1"))
    assert not torch.equal(other[0]["weight"], first[0]["weight"])


def test_layer_zero_does_not_depend_on_the_layers_above() -> None:
    # Data only flows up: under either schedule layer 0 ends exactly where it would alone.
    for schedule in ("streaming", "greedy"):
        stack = train(tiny(f"train.schedule={schedule}"))
        alone = train(tiny(f"train.schedule={schedule}", "layers=[{hidden: 32}]"))
        assert_same(stack[0], alone[0])


def test_every_layer_makes_its_updates_including_a_partial_final_micro_batch() -> None:
    # digits: 1797 samples, 10% held out -> 1617 for training: 32 micro-batches of 50 + one of 17
    cfg = tiny("rbm.epochs=1")
    states = train(cfg)
    assert [int(s["step"]) for s in states] == [33, 33, 33]
    dropped = train(tiny("rbm.epochs=1", "data.drop_last=true"))
    assert [int(s["step"]) for s in dropped] == [32, 32, 32]
    assert not torch.equal(states[0]["weight"], dropped[0]["weight"])


def test_greedy_and_streaming_both_learn() -> None:
    for schedule in ("streaming", "greedy"):
        cfg = tiny(f"train.schedule={schedule}", "rbm.epochs=4")
        data = open_data(cfg, unit_range=True)
        result = train_in_process(cfg, data, Metrics(None))
        assert result.end[0]["recon_error"] < 0.9 * result.start[0]["recon_error"], schedule
        assert all(layer.step == 4 * data.batches_per_epoch for layer in result.layers)


def test_metrics_jsonl_records_scalars_per_layer(tmp_path: Path) -> None:
    train(tiny(), run_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "stage", "layer", "tag", "value", "wall_time"} <= rows[0].keys()
    tags = {(r["layer"], r["tag"]) for r in rows}
    for layer in range(3):
        for tag in ("rbm/recon_error", "rbm/hidden_mean", "rbm/lr", "eval/recon_error",
                    "eval/free_energy_gap"):
            assert (layer, tag) in tags, (layer, tag)
    steps = [r["step"] for r in rows if r["layer"] == 1 and r["tag"] == "rbm/recon_error"]
    assert steps == sorted(steps) and steps[0] >= 16  # layer 1 starts half an epoch in


def test_monitoring_never_changes_the_weights() -> None:
    # probes draw from their own generators (forward=samples makes them draw), never a layer's
    for overrides in ([], ["train.schedule=greedy", "rbm.method=pcd", "rbm.forward=samples"]):
        on = train(tiny(*overrides, "monitor.eval_every=7", "monitor.images_every=14"))
        off = train(tiny(*overrides, "monitor.enabled=false"))
        for a, b in zip(on, off, strict=True):
            assert_same(a, b)


def test_one_process_records_its_stage_as_every_pipeline_stage_does(tmp_path: Path) -> None:
    train(tiny(), run_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    tags = {(r["layer"], r["tag"]) for r in rows}
    # one stage of every layer: its records go under its first layer, as a grouped stage's do
    assert {(0, "pipeline/busy_frac"), (0, "throughput/samples_per_s"),
            (-1, "throughput/end_to_end_samples_per_s")} <= tags
    assert (1, "pipeline/busy_frac") not in tags
    assert [r["data"]["spec"] for r in rows if r["tag"] == "balancer/plan"] == ["0-2@0"]
