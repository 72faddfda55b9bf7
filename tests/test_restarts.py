"""Restarts under torchrun's default environment (no TORCH_DISABLE_SHARE_RDZV_TCP_STORE): the
process group is joined in a namespace of the attempt and within pipeline.connect_timeout, and
a restarted rank 0 recognises the run directory as its own whatever moment the kill hit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, env1, free_port, wait_for, workers
from test_resume import TINY, assert_same, in_process, trained_run

pytestmark = pytest.mark.slow  # every test here starts processes

ONE_PER_LAYER = ["balancer.max_replicas=1"]


@pytest.fixture
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted in-process run the torchrun runs must end equal to: trained once per
    session and shared with test_resume's tests of the same training fields."""
    return trained_run(tmp_path_factory, *in_process(ONE_PER_LAYER))


def torchrun(run_dir: Path, *args: str, restarts: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *args, "--nproc-per-node", "3",
         "--max-restarts", str(restarts), "-m", "pipedbn", "train", TINY,
         f"run.dir={run_dir}", *ONE_PER_LAYER],
        cwd=ROOT, env=env1(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_joining_is_bounded_by_connect_timeout(tmp_path: Path) -> None:
    # rank 0 of 2 alone, as a worker whose peer never comes: it hosts the store and waits for
    # the other rank's answer; it must give up after connect_timeout, not setup_timeout (900 s)
    env = {**env1(), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "TORCHELASTIC_USE_AGENT_STORE": "False"}
    proc = subprocess.run([sys.executable, "-m", "pipedbn", "train", TINY,
                           f"run.dir={tmp_path / 'run'}", "pipeline.connect_timeout=2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "pipedbn: error: stage 0: " in proc.stderr
    assert "within pipeline.connect_timeout (2 s)" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing was claimed before the group was whole


def test_a_claim_cut_short_is_taken_up_by_the_restart(
        tmp_path: Path, reference: Path) -> None:
    """What a kill during the claim leaves: the half-filled temporary directory beside the run
    directory, and (when run.dir is a mount point, filled in place) a run directory holding
    only this job's launcher.json. The job's next attempt starts the run there."""
    run_dir, run_id = tmp_path / "run", "restarts-claim"
    tmp = tmp_path / f".run.claim-{run_id}"
    tmp.mkdir()
    (tmp / "launcher.json").write_text(json.dumps({"run_id": run_id}))
    (tmp / "preprocess.pt").write_bytes(b"torn")
    run_dir.mkdir()
    (run_dir / "launcher.json").write_text(json.dumps({"run_id": run_id}))
    p = torchrun(run_dir, "--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                 f"127.0.0.1:{free_port()}", "--rdzv-id", run_id, restarts=0)
    _, err = p.communicate(timeout=240)
    assert p.returncode == 0, err
    assert "was stopped while creating" in err
    assert [q.name for q in tmp_path.iterdir()] == ["run"]  # the torn claim is gone
    assert_same(run_dir, reference)


def test_rank_0_killed_as_it_claims_the_run_directory_resumes(
        tmp_path: Path, reference: Path) -> None:
    run_dir = tmp_path / "run"
    p = torchrun(run_dir, "--standalone")
    try:
        wait_for(lambda: run_dir.exists(), 120, "the run directory")
        os.kill(workers(str(run_dir))[0], signal.SIGKILL)
        _, err = p.communicate(timeout=240)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert "exists and is not empty" not in err
    assert [q.name for q in tmp_path.iterdir()] == ["run"]  # no temporary directory left
    assert not list(run_dir.glob(".*.tmp"))
    assert_same(run_dir, reference)


def local_run(run_dir: Path) -> subprocess.Popen[str]:
    """``pipedbn train --nproc 3``, slowed down (a straggler sleep) to act on it mid-run."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipedbn", "train", TINY, f"run.dir={run_dir}", "--nproc", "3",
         *ONE_PER_LAYER, "checkpoint.every=10", "straggler.layer=0", "straggler.sleep_s=0.05",
         "-q"], cwd=ROOT, env=env1(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def listening(pid: int) -> list[str]:
    """The local addresses of ``pid``'s listening TCP sockets (from /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1].split(":")[0])
    return found


def test_the_local_launcher_listens_on_loopback_only(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    p = local_run(run_dir)
    try:
        wait_for(lambda: (run_dir / "checkpoints").exists(), 120, "the first checkpoint")
        pids = [p.pid, *workers(str(run_dir)).values()]
        addresses = [a for pid in pids for a in listening(pid)]
        _, err = p.communicate(timeout=240)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert addresses  # the stores and gloo's listeners
    # 127.0.0.1 as /proc writes it (little-endian hex), or ::1 / v4-mapped 127.0.0.1
    loopback = {"0100007F", "00000000000000000000000001000000",
                "0000000000000000FFFF00000100007F"}
    assert set(addresses) <= loopback, addresses


def test_a_stopped_stage_is_killed_within_the_shutdown_timeout(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    p = local_run(run_dir)
    try:
        wait_for(lambda: (run_dir / "checkpoints").exists(), 120, "the first checkpoint")
        ranks = workers(str(run_dir))
        os.kill(ranks[2], signal.SIGSTOP)
        os.kill(ranks[1], signal.SIGKILL)
        # the agent waits 5 s (launch.py's shutdown_timeout) for the stopped stage, then
        # SIGKILLs it; torch's own stop waited 30 s
        _, err = p.communicate(timeout=25)
    finally:
        p.kill()
    assert p.returncode == 1, err
    assert "rank 1 failed: killed by SIGKILL" in err
    assert not workers(str(run_dir))


def test_a_run_directory_removed_mid_run_is_named(tmp_path: Path) -> None:
    import shutil

    run_dir = tmp_path / "run"
    p = local_run(run_dir)
    try:
        wait_for(lambda: (run_dir / "checkpoints").exists(), 120, "the first checkpoint")
        shutil.rmtree(run_dir, ignore_errors=True)
        _, err = p.communicate(timeout=240)
    finally:
        p.kill()
    assert p.returncode != 0
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("pipedbn: error: the run stopped: rank ") and "was removed" in last
