"""Starting and stopping the local pipeline: process counts, and a stage that fails, dies or
hangs makes every process exit non-zero with a message naming it, within the timeout.

``pipedbn`` itself runs forked from the warm interpreter (``warm_cli``: a real process with its
own exit status and stderr, the package already imported); the stages it starts are fresh
interpreters as always. Only the torchrun test starts ``python -m torch.distributed.run``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ONE_PER_LAYER, ONE_THREAD, ROOT, env1, kill_workers, wait_for, workers
from warm_cli import WarmCLI

pytestmark = pytest.mark.slow  # every test here starts processes

TINY = str(ROOT / "configs" / "tiny.yaml")


def last_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("pipedbn: error:")]
    assert errors, stderr
    return errors[-1]


def test_nproc_that_does_not_fit_the_plan_is_refused_before_anything_starts(
        tmp_path: Path, warm: WarmCLI) -> None:
    proc = warm.cli("train", TINY, ONE_THREAD, f"run.dir={tmp_path / 'run'}", "--nproc", "2",
                    "balancer.plan=0|1|2")
    assert proc.returncode == 2, proc.stderr
    assert "--nproc 2 starts 2 processes" in proc.stderr and "needs 3 ranks" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_nproc_1_trains_in_this_process(tmp_path: Path, warm: WarmCLI) -> None:
    proc = warm.cli("train", TINY, ONE_THREAD, f"run.dir={tmp_path / 'run'}", "--nproc", "1",
                    "rbm.epochs=0.5")
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


def test_a_stage_that_diverges_stops_every_stage_and_is_named(tmp_path: Path,
                                                             warm: WarmCLI) -> None:
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    proc = warm.cli("train", TINY, ONE_THREAD, f"run.dir={run_dir}", "layers.2.lr=1e38",
                    ONE_PER_LAYER, timeout=120)
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


class _Launcher:
    """``pipedbn train`` of a long run, forked from the warm interpreter and waited for in a
    thread: ``communicate`` and ``kill`` as a ``subprocess.Popen``'s."""

    def __init__(self, warm: WarmCLI, run_dir: Path, *overrides: str) -> None:
        self.warm = warm
        self.returncode: int | None = None
        self.pool = ThreadPoolExecutor(max_workers=1)
        # the child's alarm bounds it even if nothing here gets to kill it
        self.done: Future[subprocess.CompletedProcess] = self.pool.submit(
            warm.cli, "train", TINY, f"run.dir={run_dir}", "rbm.epochs=200", ONE_PER_LAYER,
            ONE_THREAD, *overrides, timeout=240)

    def communicate(self, timeout: float) -> tuple[str, str]:
        proc = self.done.result(timeout=timeout)
        self.returncode = proc.returncode
        return proc.stdout, proc.stderr

    def kill(self) -> None:
        """SIGKILL the command if it still runs (a test here runs one at a time), and reap it."""
        if not self.done.done():
            for pid in _children(self.warm.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.done.result(timeout=60)
        self.pool.shutdown(wait=False)


def _children(ppid: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) \
                    == ppid:
                found.append(int(d.name))
    return found


def _start(warm: WarmCLI, run_dir: Path, *overrides: str) -> _Launcher:
    return _Launcher(warm, run_dir, *overrides)


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
def test_a_killed_stage_stops_every_stage_and_is_named(tmp_path: Path, rank: int,
                                                      warm: WarmCLI) -> None:
    run_dir = tmp_path / "run"
    p = _start(warm, run_dir)
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
def test_a_hung_stage_is_named_within_the_timeout(tmp_path: Path, layers: str, hung: int,
                                                  warm: WarmCLI) -> None:
    # stage 1 of 3: both neighbours wait on it; the last of 4: the three stages below all block
    # on their sends (back-pressure), and the one next to it must be the first to give up
    run_dir = tmp_path / "run"
    n = layers.count(",") + 1
    p = _start(warm, run_dir, "pipeline.timeout=2", f"layers={layers}")
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
