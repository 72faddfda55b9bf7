"""``train.threads: auto`` and ``train.device: auto`` end to end: the run's config.yaml holds the
numbers chosen, re-running it gives the same weights, and a process pinned to one core plans
one thread."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, cli, env1
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def test_auto_threads_are_written_and_the_saved_config_reruns_bit_identically(
        tmp_path: Path) -> None:
    first, again = tmp_path / "first", tmp_path / "again"
    proc = cli("train", "configs/tiny.yaml", "train.threads=auto", "rbm.epochs=2",
               "monitor.enabled=false", f"run.dir={first}", "-q")
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((first / "config.yaml").read_text())
    threads = saved["train"]["threads"]
    assert isinstance(threads, list) and all(isinstance(t, int) and t >= 1 for t in threads)
    assert saved["train"]["device"] in ("cpu", "cuda")
    proc = cli("train", str(first / "config.yaml"), f"run.dir={again}", "-q")
    assert proc.returncode == 0, proc.stderr
    a, b = load_file(first / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.skipif(shutil.which("taskset") is None, reason="no taskset here")
def test_a_process_pinned_to_one_core_plans_one_thread() -> None:
    proc = subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "pipedbn", "plan",
                           "configs/quickstart.yaml"], capture_output=True, text=True,
                          cwd=ROOT, env=env1(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "1 cores" in proc.stdout and "threads per rank: rank 0: 1 " in proc.stdout, \
        proc.stdout
