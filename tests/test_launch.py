"""Starting and stopping the local pipeline: process counts, and a stage that fails, dies or
hangs makes every process exit non-zero with a message naming it, within the timeout."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ONE_PER_LAYER, ROOT, cli, env1, kill_workers, wait_for, workers

pytestmark = pytest.mark.slow  # every test here starts processes

TINY = str(ROOT / "configs" / "tiny.yaml")


def last_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("pipedbn: error:")]
    assert errors, stderr
    return errors[-1]


def test_nproc_that_does_not_fit_the_plan_is_refused_before_anything_starts(
        tmp_path: Path) -> None:
    proc = cli("train", TINY, f"run.dir={tmp_path / 'run'}", "--nproc", "2",
               "balancer.plan=0|1|2")
    assert proc.returncode == 2, proc.stderr
    assert "--nproc 2 starts 2 processes" in proc.stderr and "needs 3 ranks" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_nproc_1_trains_in_this_process(tmp_path: Path) -> None:
    proc = cli("train", TINY, f"run.dir={tmp_path / 'run'}", "--nproc", "1", "rbm.epochs=0.5")
    assert proc.returncode == 0, proc.stderr
    assert "stage" not in proc.stderr  # no pipeline, no per-stage table
    assert not (tmp_path / "run" / "stages.json").exists()


def test_torchrun_with_the_wrong_process_count_reports_once(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "pipedbn", "train", TINY, f"run.dir={tmp_path / 'run'}",
         "balancer.plan=0|1|2"],
        cwd=ROOT, env=env1(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    mine = [line for line in proc.stderr.splitlines() if line.startswith("pipedbn: error:")]
    assert len(mine) == 1 and "launcher starts 2 processes" in proc.stderr, proc.stderr


def test_a_stage_that_diverges_stops_every_stage_and_is_named(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    proc = cli("train", TINY, f"run.dir={run_dir}", "layers.2.lr=1e38", ONE_PER_LAYER,
               timeout=120)
    assert proc.returncode == 3, proc.stderr  # the stage's own status: training diverged
    assert "Traceback" not in proc.stderr, proc.stderr
    assert last_error(proc.stderr).startswith(
        "pipedbn: error: the run stopped: rank 2 failed: layer 2: non-finite")
    assert last_error(proc.stderr).endswith(f"(run directory {run_dir}; fix the cause and "
                                            "start a new run)")
    assert json.loads((run_dir / "failure.json").read_text())["stage"] == 2
    assert not (run_dir / "model.safetensors").exists()
    wait_for(lambda: workers(str(run_dir)) == {}, 10, "every worker to be gone")
    assert time.monotonic() - t0 < 60


def _start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipedbn", "train", TINY, f"run.dir={run_dir}", "rbm.epochs=200",
         ONE_PER_LAYER, "train.threads=1", *overrides], cwd=ROOT, env=env1(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _streaming(run_dir: Path, n: int = 3) -> dict[int, int]:
    """Wait until every one of the ``n`` stages has trained, then return {rank: pid}."""
    def all_training() -> bool:
        path = run_dir / "metrics.jsonl"
        if not path.exists():
            return False
        # the file is being written: its last line may be half there
        done = path.read_text().split("\n")[:-1]
        stages = {json.loads(line)["stage"] for line in done if line}
        return stages >= set(range(n)) and len(workers(str(run_dir))) == n
    wait_for(all_training, 120, "every stage to train")
    return workers(str(run_dir))


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_a_killed_stage_stops_every_stage_and_is_named(tmp_path: Path, rank: int) -> None:
    run_dir = tmp_path / "run"
    p = _start(run_dir)
    try:
        pids = _streaming(run_dir)
        t0 = time.monotonic()
        os.kill(pids[rank], signal.SIGKILL)
        _, err = p.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        p.kill()
        kill_workers(str(run_dir))
    assert p.returncode == 1, err
    assert last_error(err).startswith(
        f"pipedbn: error: the run stopped: rank {rank} failed: killed by SIGKILL")
    assert f"continue it with: pipedbn train {run_dir}/config.yaml --resume {run_dir}" in err
    assert "Traceback" not in err, err
    wait_for(lambda: workers(str(run_dir)) == {}, 10, "every worker to be gone")
    assert took < 10  # a dead peer is noticed at once, far within pipeline.timeout (300 s)


@pytest.mark.parametrize(("layers", "hung"), [("[32,24,16]", 1), ("[32,24,16,12]", 3)])
def test_a_hung_stage_is_named_within_the_timeout(tmp_path: Path, layers: str, hung: int
                                                  ) -> None:
    # stage 1 of 3: both neighbours wait on it; the last of 4: the three stages below all block
    # on their sends (back-pressure), and the one next to it must be the first to give up
    run_dir = tmp_path / "run"
    n = layers.count(",") + 1
    p = _start(run_dir, "pipeline.timeout=2", f"layers={layers}")
    try:
        pids = _streaming(run_dir, n)
        os.kill(pids[hung], signal.SIGSTOP)  # alive but silent
        took = wait_for(lambda: any((run_dir / "failures").glob("stage-*.json")), 30,
                        "a stage to give up")
        # once the agent has stopped the others, its SIGTERM is pending on the stopped process:
        # let it act (a real hang that SIGTERM ends; a stopped process would be killed only
        # after torch's 30 s grace). Continuing it earlier would wake it into timeouts of its
        # own, which a hung process never gets to report.
        wait_for(lambda: set(workers(str(run_dir))) <= {hung}, 30, "the other stages to stop")
        os.kill(pids[hung], signal.SIGCONT)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
        kill_workers(str(run_dir))
    assert (run_dir / "failure.json").exists(), err
    record = json.loads((run_dir / "failure.json").read_text())
    assert record["stage"] == hung and record["seen_by"] in (hung - 1, hung + 1), (record, err)
    assert re.search(r"no answer in (2|2\.5) s", record["message"]), record  # graded by hops
    assert 1 <= took < 2.5 + 10, (took, err)
    assert p.returncode == 1, err
    assert f"rank {hung} failed" in last_error(err), err
    assert "Traceback" not in err, err
    wait_for(lambda: workers(str(run_dir)) == {}, 10, "every worker to be gone")
