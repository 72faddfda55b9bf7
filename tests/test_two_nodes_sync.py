"""A replicated stage spanning two torchrun agents (``--nnodes 2`` on loopback, two processes
each): its hierarchical all-reduce keeps the replicas bit-identical after every BSP tick, two runs
end with the same bits, and a worker killed mid-run is restarted and resumes to the same
weights.

Two runs, side by side (their bits cannot depend on timing, and running them together saves the
machine's idle time): one uninterrupted, one killed and resumed. The killed-and-resumed run is
the second run of the claim that two runs end with the same bits: it must end with the
uninterrupted run's bits, which it can only do if two runs of the job are bit-identical (and its
own ticks agree too), so no third run is made for that claim."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ROOT, env1, free_port, wait_for, workers
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # every test here starts processes

TINY = str(ROOT / "configs" / "tiny.yaml")
# stage 0 on ranks 0-2: two of them on one agent, one on the other (a node group and a group
# of node leaders); checkpoints often, so a kill has one to resume from
OVERRIDES = ["balancer.plan=0x3|1-2", "balancer.check_replicas=true", "rbm.epochs=1",
             "checkpoint.every=10", "monitor.eval_every=0", "monitor.histograms_every=0",
             "monitor.images_every=0"]


def _agents(run_dir: Path, *extra: str) -> list[subprocess.Popen]:
    endpoint = f"127.0.0.1:{free_port()}"
    return [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node",
         "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_dir.name,
         *extra, "-m", "pipedbn", "train", TINY, f"run.dir={run_dir}", *OVERRIDES],
        cwd=ROOT, env=env1(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)]


def _finish(agents: list[subprocess.Popen]) -> list[str]:
    try:
        results = [a.communicate(timeout=300) for a in agents]
    finally:
        for a in agents:
            a.kill()
    for a, (_, err) in zip(agents, results, strict=True):
        assert a.returncode == 0, err
    return [err for _, err in results]


def _ticks_agree(run_dir: Path) -> int:
    """Every tick's CRC-32 of the parameters, equal on the three replicas; how many ticks."""
    by_tick: dict[int, dict[int, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["tag"] == "replica/crc32":
            by_tick.setdefault(r["step"], {})[r["stage"]] = r["value"]
    assert by_tick
    for step, seen in by_tick.items():
        assert len(seen) == 3 and len(set(seen.values())) == 1, (step, seen)
    return len(by_tick)


def _same(a: Path, b: Path) -> None:
    ma, mb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ma.keys() == mb.keys()
    for k in ma:
        assert (ma[k] == mb[k]).all(), k


def test_a_stage_across_two_agents_stays_bit_identical_and_resumes(tmp_path: Path) -> None:
    a, killed = tmp_path / "a", tmp_path / "killed"
    uninterrupted = _agents(a)
    agents = _agents(killed, "--max-restarts", "1")
    with ThreadPoolExecutor(max_workers=1) as pool:
        finished = pool.submit(_finish, uninterrupted)  # reads its pipes meanwhile
        try:
            wait_for(lambda: (killed / "checkpoints" / "step-10" / "MANIFEST.json").exists(),
                     200, "a checkpoint")
            victim = workers(str(killed)).get(1)  # a replica of the stage, beside the leader
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
        except BaseException:
            for agent in [*agents, *uninterrupted]:
                agent.kill()
            raise
        errs = _finish(agents)
        finished.result()
    assert _ticks_agree(a) > 5
    assert any("resuming" in err for err in errs), errs
    # two runs of the job, one of them killed and resumed, end with the same bits
    _same(a, killed)
    assert _ticks_agree(killed) > 5
