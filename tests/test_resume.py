"""Resume: a resumed run ends with the uninterrupted run's weights, bit for bit (in-process,
distributed, under another world size, after a SIGKILL under torchrun), and what cannot be
resumed is refused with one message."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ONE_THREAD, ROOT, cli, env1, wait_for, workers
from safetensors.torch import load_file
from warm_cli import WarmCLI

from pipedbn.run.checkpoint import part_path

pytestmark = pytest.mark.slow  # every test here starts processes

TINY = "configs/tiny.yaml"
EVERY = ["checkpoint.every=20", "checkpoint.keep=100"]


def model(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def assert_same(a: Path, b: Path) -> None:
    ma, mb = model(a), model(b)
    assert ma.keys() == mb.keys()
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k


def train(run_dir: Path, *overrides: str, nproc: int = 1) -> None:
    proc = cli("train", TINY, f"run.dir={run_dir}", *EVERY, *overrides, "--nproc", str(nproc),
               "-q")
    assert proc.returncode == 0, proc.stderr


def cut_back(src: Path, dst: Path, keep_upto: int) -> None:
    """``dst``: ``src`` as a kill right after checkpoint ``keep_upto`` would have left it."""
    shutil.copytree(src, dst)
    for d in (dst / "checkpoints").iterdir():
        if d.name == "final" or int(d.name.split("-")[1]) > keep_upto:
            shutil.rmtree(d)
    for name in ("model.safetensors", "summary.txt", "stages.json"):
        (dst / name).unlink(missing_ok=True)


def resume(run_dir: Path, *overrides: str, nproc: int = 1) -> subprocess.CompletedProcess:
    return cli("train", TINY, "--resume", str(run_dir), *EVERY, *overrides, "--nproc",
               str(nproc), "-q")


_TRAINED: dict[tuple[str, ...], Path] = {}


def trained_run(factory: pytest.TempPathFactory, *overrides: str) -> Path:
    """The run directory of ``train(dir, *overrides)`` (in one process, uninterrupted), trained
    once per session for each set of overrides and shared by every test that compares against
    it or resumes a cut-back copy of it (here and in test_restarts). Read only: copy it to
    change it."""
    if overrides not in _TRAINED:
        run_dir = factory.mktemp("trained") / "run"
        train(run_dir, *overrides)
        _TRAINED[overrides] = run_dir
    return _TRAINED[overrides]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``trained(*overrides)``: ``trained_run``."""
    return functools.partial(trained_run, tmp_path_factory)


def in_process(overrides: list[str]) -> list[str]:
    """The overrides of the in-process reference of a distributed run: without its ``balancer``
    fields. In one process the balancer has a single rank to place the layers on (no replica,
    no plan to choose), and the balancer is not among the fields that decide the weights
    (``checkpoint._IGNORED``), so the reference is the same run with or without them, and one
    shared ``trained`` run serves every distributed run of the same training fields."""
    return [o for o in overrides if not o.startswith("balancer.")]


@pytest.mark.parametrize("overrides", [
    [],
    ["train.schedule=greedy", "rbm.method=pcd", "rbm.epochs=1"],
], ids=["streaming-cd", "greedy-pcd"])
def test_in_process_resume_is_exact(tmp_path: Path, overrides: list[str],
                                    trained: Callable[..., Path]) -> None:
    full = trained(*overrides)
    cut_back(full, tmp_path / "resumed", 40)
    proc = resume(tmp_path / "resumed", *overrides)
    assert proc.returncode == 0, proc.stderr
    assert_same(full, tmp_path / "resumed")
    # metrics.jsonl holds each record once: the resumed part replaced the cut one
    recs = [json.loads(line) for line in (tmp_path / "resumed/metrics.jsonl").open()]
    keys = [(r["layer"], r["tag"], r["step"]) for r in recs if r["tag"].startswith("eval/")]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("overrides,nproc,again", [
    (["balancer.max_replicas=1"], 3, 2),  # another world size on resume
    (["train.schedule=greedy", "rbm.method=pcd", "rbm.epochs=1", "balancer.max_replicas=1"],
     3, 3),
], ids=["streaming-3-then-2", "greedy-pcd-3"])
def test_distributed_resume_is_exact(tmp_path: Path, overrides: list[str], nproc: int,
                                     again: int, trained: Callable[..., Path]) -> None:
    train(tmp_path / "full", *overrides, nproc=nproc)
    cut_back(tmp_path / "full", tmp_path / "resumed", 40)
    proc = resume(tmp_path / "resumed", *overrides, nproc=again)
    assert proc.returncode == 0, proc.stderr
    assert_same(tmp_path / "full", tmp_path / "resumed")
    # and equal to the in-process reference
    assert_same(tmp_path / "full", trained(*in_process(overrides)))


REPLICATED = "balancer.plan=0|1x2|2"
"""2 BSP replicas of layer 1 on 4 ranks."""


@pytest.fixture(scope="module")
def replicated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of ``REPLICATED`` on 4 ranks, resumed (from cut-back copies) by
    the two tests below. Read only."""
    run_dir = tmp_path_factory.mktemp("replicated") / "run"
    train(run_dir, REPLICATED, nproc=4)
    return run_dir


def test_replicated_resume_is_exact(tmp_path: Path, replicated_run: Path) -> None:
    # BSP replicas meet at each checkpoint: resumed with the same plan, the same weights
    cut_back(replicated_run, tmp_path / "resumed", 40)
    proc = resume(tmp_path / "resumed", REPLICATED, nproc=4)
    assert proc.returncode == 0, proc.stderr
    assert_same(replicated_run, tmp_path / "resumed")


def test_replicas_resumed_on_another_world_size_agree_and_repeat(tmp_path: Path,
                                                                 replicated_run: Path) -> None:
    # 2 replicas of layer 1 on 4 ranks, resumed as 3 replicas on 5: new groups, a new sum
    # order; every tick after the checkpoint bit-identical on the 3, and the resume repeatable.
    # The checksums are asked of the resumes (the balancer may change on resume): only the
    # ticks after the checkpoint are checked, and those are the resumes' own
    first = ["balancer.check_replicas=true"]
    for name in ("a", "b"):
        cut_back(replicated_run, tmp_path / name, 40)
        proc = resume(tmp_path / name, *first, "balancer.plan=0|1x3|2", nproc=5)
        assert proc.returncode == 0, proc.stderr
    assert_same(tmp_path / "a", tmp_path / "b")
    crcs: dict[int, set[float]] = {}
    for line in (tmp_path / "a" / "metrics.jsonl").open():
        r = json.loads(line)
        if r["tag"] == "replica/crc32" and r["step"] > 40:
            crcs.setdefault(r["step"], set()).add(r["value"])
    assert crcs and all(len(v) == 1 for v in crcs.values()), crcs


def test_sigkill_under_torchrun_restarts_and_ends_equal(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = ["balancer.max_replicas=1", "checkpoint.every=10", "rbm.epochs=6"]
    env = env1()  # torchrun's default environment
    p = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
         "--max-restarts", "1", "-m", "pipedbn", "train", TINY, f"run.dir={run_dir}",
         *overrides], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        wait_for(lambda: (run_dir / "checkpoints/step-30/MANIFEST.json").exists()
                 or (run_dir / "checkpoints/step-40").exists(), 120, "a checkpoint")
        victim = workers(str(run_dir)).get(1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        out, err = p.communicate(timeout=240)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert "resuming" in err and "previous attempt stopped" in err
    train(tmp_path / "reference", *overrides)
    assert_same(run_dir, tmp_path / "reference")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb/layer-1"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("rbm/recon_error")]
    assert steps == sorted(set(steps))  # the attempt's points past the checkpoint were purged


def test_resume_refuses_what_it_cannot_continue(tmp_path: Path, trained: Callable[..., Path],
                                               warm: WarmCLI) -> None:
    # the refusals come before any training: the warm CLI's forks run them (what cli would
    # run, one thread pinned as cli pins it, without paying for `import torch` three times)
    run_dir = tmp_path / "run"
    shutil.copytree(trained(), run_dir)
    other = warm.cli("train", TINY, ONE_THREAD, "--resume", str(run_dir), "train.batch_size=64",
                     "layers.1.hidden=20", "--nproc", "1")
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "train.batch_size: 50 in the run, 64 now" in other.stderr
    assert "layers.1.hidden: 24 in the run, 20 now" in other.stderr
    assert "config.yaml --resume" in other.stderr
    path = part_path(run_dir, "step-80", 1)
    blob = bytearray(path.read_bytes())
    blob[-40] ^= 0x10
    path.write_bytes(bytes(blob))
    shutil.rmtree(run_dir / "checkpoints/final")
    before = sorted(p.name for p in run_dir.rglob("*"))
    bad = warm.cli("train", TINY, ONE_THREAD, "--resume", str(run_dir), *EVERY, "--nproc", "1",
                   "-q")  # resume(run_dir), forked
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "checksum mismatch" in bad.stderr and "step-80" in bad.stderr
    assert sorted(p.name for p in run_dir.rglob("*")) == before  # nothing touched
    nowhere = warm.cli("train", TINY, ONE_THREAD, "--resume", str(tmp_path / "missing"),
                       "--nproc", "1")
    assert nowhere.returncode == 2 and "not a run directory" in nowhere.stderr


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = cli("train", TINY, f"run.dir={run_dir}", "checkpoint.every=10", "layers.2.lr=1e37",
               "layers.2.momentum=0.9", "--nproc", "3", "balancer.max_replicas=1")
    assert proc.returncode == 3, proc.stderr
    assert "layer 2: non-finite" in proc.stderr and "Traceback" not in proc.stderr
    parts = [json.loads(p.read_text()) for p in (run_dir / "checkpoints").glob("*/layer-2.json")]
    assert parts and max(p["micro_batch"] for p in parts) == 30  # step-30 stays the newest
    good = cli("train", TINY, "--resume", str(run_dir), "checkpoint.every=10",
               "layers.2.lr=1e37", "layers.2.momentum=0.9", "--nproc", "1", "-q")
    assert good.returncode == 3  # resumed from step-30, it diverges again, the same way
    assert "layer 2: non-finite" in good.stderr


def test_bad_data_under_torchrun_does_not_burn_the_restarts(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((300, 16)).astype(np.float32)
    x[123, 4] = np.nan
    np.save(tmp_path / "x.npy", x)
    env = env1()  # torchrun's default environment
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "--max-restarts", "3", "-m", "pipedbn", "train", TINY, "data.source=npy",
         f"data.path={tmp_path / 'x.npy'}", f"run.dir={tmp_path / 'run'}", "layers=[8,4]"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    # one attempt: rank 0 reports the data and rank 1 relays it, either of them possibly cut
    # short when the other's request stops torchrun; every restart would report it again
    assert 1 <= proc.stderr.count("non-finite value (NaN or Inf)") <= 2, proc.stderr
    assert proc.stderr.count("asking torchrun to stop") <= 2, proc.stderr
    assert proc.stderr.count("could not prepare the run") <= 1, proc.stderr
    assert "recurs on every restart" in proc.stderr
    assert time.monotonic() - t0 < 120
