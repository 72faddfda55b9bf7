"""Shared helpers: run the real CLI in a subprocess, one thread, bounded by a timeout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # one thread per process in tests, as in the subprocesses below

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pipedbn", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished run of configs/tiny.yaml, shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    proc = cli("train", "configs/tiny.yaml", f"run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)
    return run_dir
