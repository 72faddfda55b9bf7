"""The pipeline on real processes (gloo over loopback) equals the in-process trainer bit for bit:
started without a launcher, through torchrun, and through two torchrun agents (two "nodes")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ONE_PER_LAYER, ROOT, cli, env1, free_port
from reference import train_reference
from safetensors.torch import load_file

from pipedbn.config import load_config, resolve_defaults
from pipedbn.data.loader import open_data
from pipedbn.run.rundir import layer_state_path

pytestmark = pytest.mark.slow  # every test here starts processes

TINY = str(ROOT / "configs" / "tiny.yaml")

# Every pair of (layers, schedule, method) values appears at least once, and plans without
# replicas of every shape: one rank per layer (auto, replicas off), grouped layers, an idle rank
# 0 (stage 0 reads the data elsewhere), ranks out of order. digits leaves 1617 training
# samples: with micro-batches of 50 each epoch ends with a partial one of 17.
VARIANTS = [
    ("2-streaming-cd-auto", ["layers=[32,24]", "balancer.max_replicas=1"]),
    ("2-greedy-pcd-idle-rank-0", ["layers=[32,24]", "train.schedule=greedy", "rbm.method=pcd",
                                  "balancer.plan=0-1@1"]),
    ("3-streaming-pcd-grouped", ["rbm.method=pcd", "rbm.forward=samples",
                                 "balancer.plan=0-1|2"]),
    ("3-greedy-cd-grouped", ["train.schedule=greedy", "layers.1.k=2", "balancer.plan=0|1-2"]),
    ("4-streaming-cd", ["layers=[32,24,16,12]", "data.limit=1000", "train.batch_size=64",
                        "balancer.plan=0|1|2|3"]),
    ("4-greedy-pcd-permuted", ["layers=[32,24,16,12]", "train.schedule=greedy",
                               "rbm.method=pcd", "rbm.epochs=1", "balancer.plan=0@2|1-2@0|3@1"]),
]


def reference(overrides: list[str]) -> list[dict[str, torch.Tensor]]:
    cfg = resolve_defaults(load_config(TINY, overrides))
    data = open_data(cfg, unit_range=True)
    return [layer.state_dict() for layer in train_reference(cfg, data)]


def assert_run_equals(run_dir: Path, ref: list[dict[str, torch.Tensor]]) -> None:
    """Every layer's full state (weights, momentum, chains, RNG, step) and the exported model."""
    model = load_file(run_dir / "model.safetensors")
    for i, want in enumerate(ref):
        got = torch.load(layer_state_path(run_dir, i), weights_only=True)
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), f"layer {i} {k}"
        for k in ("weight", "visible_bias", "hidden_bias"):
            assert torch.equal(model[f"layers.{i}.{k}"], want[k]), f"export layer {i} {k}"


@pytest.mark.parametrize("overrides", [v[1] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_local_pipeline_equals_in_process(tmp_path: Path, overrides: list[str]) -> None:
    run_dir = tmp_path / "run"
    proc = cli("train", TINY, f"run.dir={run_dir}", *overrides)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)
    ref = reference(overrides)
    assert_run_equals(run_dir, ref)
    stages = json.loads((run_dir / "stages.json").read_text())
    assert sorted(i for s in stages for i in s["layers"]) == list(range(len(ref)))
    assert all(0 < s["busy_frac"] <= 1 and s["samples_per_s"] > 0 for s in stages
               if s["stage"] is not None)
    assert "Traceback" not in proc.stderr


def _torchrun(*args: str, timeout: float = 240) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args],
                            cwd=ROOT, env=env1(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_torchrun_one_node(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    p = _torchrun("--standalone", "--nproc-per-node", "3", "-m", "pipedbn", "train", TINY,
                  f"run.dir={run_dir}", "balancer.max_replicas=1")
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err
    assert out.strip().splitlines()[-1] == str(run_dir)
    assert_run_equals(run_dir, reference(["balancer.max_replicas=1"]))


def test_torchrun_two_agents_as_two_nodes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = ["layers=[32,24,16,12]", "balancer.max_replicas=1"]
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [_torchrun("--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                        "--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes", "-m", "pipedbn",
                        "train", TINY, f"run.dir={run_dir}", *overrides) for _ in range(2)]
    try:
        results = [a.communicate(timeout=240) for a in agents]
    finally:
        for a in agents:
            a.kill()
    for a, (_, err) in zip(agents, results, strict=True):
        assert a.returncode == 0, err
    # exactly one agent ran rank 0, which prints the run directory
    assert sum(out.strip().endswith(str(run_dir)) for out, _ in results) == 1
    assert_run_equals(run_dir, reference(overrides))


def test_a_slow_last_stage_never_lets_more_than_the_window_pile_up(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = cli("train", TINY, f"run.dir={run_dir}", ONE_PER_LAYER, "pipeline.window=2",
               "straggler.layer=2",
               "straggler.sleep_s=0.01", "rbm.epochs=1", "monitor.scalars_every=1")
    assert proc.returncode == 0, proc.stderr
    stages = json.loads((run_dir / "stages.json").read_text())
    assert stages[1]["max_in_flight"] == 2  # stage 1 got ahead of the slow stage 2 ...
    depth = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if r["tag"] == "pipeline/in_flight"]
    assert max(r["value"] for r in depth if r["stage"] == 1) == 2  # ... and never further
    assert all(r["value"] <= 2 for r in depth)
    # stage 1 really was held back: it spent most of stage 2's sleeping time waiting to send
    assert stages[1]["send_wait_s"] > 0.5 * stages[2]["micro_batches"] * 0.01
    assert stages[2]["busy_frac"] > 0.7  # the sleeping stage is the bottleneck
    # its sleep is in every step, and each cycle holds a step (``spread.py``'s histograms)
    assert stages[2]["step_p50_s"] >= 0.99 * 0.01
    assert stages[2]["cycle_p50_s"] >= 0.99 * stages[2]["step_p50_s"]


def test_heartbeats_keep_a_long_wait_for_the_first_micro_batch_alive(tmp_path: Path) -> None:
    # greedy: stage 1 gets nothing until layer 0 is trained (33 micro-batches, > 3.3 s with
    # the sleep after each), stage 2 nothing until layers 0 and 1 are (43, > 4.3 s): both
    # longer than the 2 s timeout; heartbeats from below show them the pipeline is alive.
    # Layers 1 and 2 train 0.3 epochs (10 micro-batches): layer 0 sleeps after every
    # micro-batch of the stream, and the waits above need no more of it.
    run_dir = tmp_path / "run"
    overrides = ["train.schedule=greedy", "rbm.epochs=1", "layers.1.epochs=0.3",
                 "layers.2.epochs=0.3", "straggler.layer=0", "straggler.sleep_s=0.1",
                 "pipeline.timeout=2", ONE_PER_LAYER]
    proc = cli("train", TINY, f"run.dir={run_dir}", *overrides)
    assert proc.returncode == 0, proc.stderr
    assert_run_equals(run_dir, reference(overrides))
