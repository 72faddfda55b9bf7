"""Ctrl-C and SIGTERM: one line with the run directory and the exact command that continues the
run; an interrupt is not a failure (not recorded as one, not reported on resume as one).

A real run, a real signal to the launcher's process group (what a terminal's Ctrl-C does)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, env1

pytestmark = pytest.mark.slow  # every test here starts processes


EPOCHS = {3: 10, 1: 20}
"""Epochs of the interrupted run, by process count: enough that, after the first checkpoint
(micro-batch 20 of 33 per epoch), the run has seconds of training left for the signal to land in
(~5 s on 3 processes, ~4 s in one, on an idle 2-core machine; a loaded one only stretches
them), and no more, as the command it prints trains the rest (60 epochs took 20 s of it)."""


def _interrupt(run_dir: Path, nproc: int, sig: signal.Signals) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipedbn", "train", "configs/tiny.yaml",
         f"rbm.epochs={EPOCHS[nproc]}",
         "checkpoint.every=20", f"run.dir={run_dir}", "--nproc", str(nproc)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env1(),
        start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((run_dir / "checkpoints").glob("step-*/MANIFEST.json")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize(("nproc", "sig"), [(3, signal.SIGINT), (1, signal.SIGTERM)])
def test_an_interrupt_says_once_where_the_run_is_and_how_to_continue_it(
        tmp_path: Path, nproc: int, sig: signal.Signals) -> None:
    run_dir = tmp_path / "run"
    proc = _interrupt(run_dir, nproc, sig)
    assert proc.returncode == 130, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pipedbn:")]
    assert len(lines) == 1 and "interrupted" in lines[0], proc.stderr  # not once per stage
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    command = f"pipedbn train {run_dir}/config.yaml --resume {run_dir} --nproc {nproc}"
    assert lines[0].endswith(f"the run directory is {run_dir}; continue it with: {command}")
    assert not (run_dir / "failures").exists() and not (run_dir / "failure.json").exists()
    # the command it gave continues the run, with no word of a failure
    resumed = subprocess.run([sys.executable, "-m", *shlex.split(command)], capture_output=True,
                             text=True, cwd=ROOT, env=env1(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "previous attempt" not in resumed.stderr
    assert "KeyboardInterrupt" not in resumed.stderr
    assert (run_dir / "model.safetensors").is_file()
