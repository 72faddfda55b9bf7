"""One ``pipedbn train`` run for a benchmark: a subprocess of one thread per process (unless
``threads`` says otherwise), and what it measured. Every tool under ``tools/`` that times
training goes through ``train``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def train(config: str | Path, run_dir: Path, nproc: int | None = 1,
          overrides: Sequence[str] = (), threads: int = 1, timeout: float = 1800.0
          ) -> dict[str, Any]:
    """Run ``pipedbn train CONFIG --nproc N`` into ``run_dir`` (``nproc=None``: no ``--nproc``,
    one process per layer). Returns the command (as a user
    would type it), ``launched_at`` (wall clock), ``wall_s``, ``samples_per_s`` (the run's
    end-to-end rate: ``throughput/end_to_end_samples_per_s``, or the in-process trainer's),
    ``samples`` read and ``training_s`` (their ratio), every ``metrics`` record and, for a
    distributed run, ``stages`` (``stages.json``). A failed run raises RuntimeError with its
    stderr."""
    config = Path(config)
    shown = config.relative_to(ROOT) if config.is_absolute() and config.is_relative_to(ROOT) \
        else config
    cmd = [sys.executable, "-m", "pipedbn", "train", str(config), f"run.dir={run_dir}",
           f"train.threads={threads}", *overrides, "-q"]
    launch = [] if nproc is None else [f"--nproc {nproc}"]
    if nproc is not None:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    launched_at, t0 = time.time(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rate = [r["value"] for r in metrics if r["tag"] == "throughput/end_to_end_samples_per_s"]
    rate = rate or [r["value"] for r in metrics  # a run in one process
                    if r["tag"] == "throughput/samples_per_s" and r["stage"] == 0]
    found = re.search(r"(\d+) samples through", (run_dir / "summary.txt").read_text())
    assert found is not None, "summary.txt has the sample count"
    samples = int(found[1])
    out: dict[str, Any] = {
        "command": " ".join(["pipedbn train", str(shown), f"train.threads={threads}",
                             *overrides, *launch]),
        "launched_at": launched_at, "wall_s": wall, "samples_per_s": rate[-1], "samples": samples,
        "training_s": samples / rate[-1], "metrics": metrics,
    }
    if (run_dir / "stages.json").exists():
        out["stages"] = json.loads((run_dir / "stages.json").read_text())
    return out
