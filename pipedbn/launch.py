"""``pipedbn train`` without a launcher: the local pipeline, through torch's elastic launch API.

The parent checks the config and the data and claims the run directory first, so a user's
mistake is reported once, before any process starts. It then runs what ``torchrun --standalone
--nproc-per-node N -m pipedbn train RUN_DIR/config.yaml`` would: an elastic agent with a c10d
rendezvous on a free loopback port, no restarts, one worker process per stage. Workers are the
same code path as under torchrun (``distributed.py``). When a worker fails, the agent stops the
others and this process reports the stage that failed first (from ``failure.json``, or from the
exit statuses) and exits non-zero.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

from pipedbn.errors import Interrupted, resume_command
from pipedbn.rundir import FAILURE_FILE, FAILURES_DIR, write_root_failure

LINK_EXIT = 4
"""Exit status of a stage that stopped because a neighbour failed (not a root cause)."""


def _silence_torch_elastic() -> None:
    # The agent logs every worker it stops; we report the root cause ourselves.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic") or name.startswith(
                "torch.distributed.launcher"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def launch_local(run_dir: Path, nproc: int, threads: int, quiet: bool, resume: bool = False,
                 shutdown_timeout: int = 5) -> int:
    """Run the prepared run directory's pipeline on ``nproc`` local processes; exit status."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _silence_torch_elastic()
    options: dict[str, Any] = {}
    if "shutdown_timeout" in {f.name for f in dataclasses.fields(LaunchConfig)}:
        options["shutdown_timeout"] = shutdown_timeout  # torch >= 2.9; 30 s before
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc,
        run_id=f"pipedbn-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone
        max_restarts=0, monitor_interval=0.1, start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=str(run_dir / "logs")),
        **options,
    )
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    args = ["-m", "pipedbn", "train", str(run_dir / "config.yaml"), "--prepared"]
    if quiet:
        args.append("-q")
    if resume:
        args += ["--resume", str(run_dir)]
    try:
        elastic_launch(config, sys.executable)(*args)
    except ChildFailedError as e:
        stage, code, message = root_cause(run_dir, e.failures)
        # a crash (status 1) can be continued as it is; a mistake or a divergence needs a fix
        # that resuming would refuse (a config that decides the weights), so a new run
        then = f"continue it with: {resume_command(run_dir, nproc)}" if code not in (2, 3) \
            else "fix the cause and start a new run"
        print(f"pipedbn: error: the run stopped: rank {stage} failed: {message} (run directory "
              f"{run_dir}; {then})", file=sys.stderr)
        return code
    except SignalException as e:
        # an interrupt is nobody's failure: what the stages saw of it is not kept for resume
        shutil.rmtree(run_dir / FAILURES_DIR, ignore_errors=True)
        (run_dir / FAILURE_FILE).unlink(missing_ok=True)
        stop = Interrupted(signal.Signals(e.sigval).name, run_dir, resume_command(run_dir, nproc))
        print(f"pipedbn: {stop}", file=sys.stderr)
        return 130
    return 0


def _how(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


def root_cause(run_dir: Path, failures: dict[int, Any]) -> tuple[int, int, str]:
    """(stage, exit status for this process, message) of the failure that stopped the run.

    The stages' records name it when one could say (``rundir.root_failure``); otherwise the
    first worker to die of something other than the agent's SIGTERM or a lost neighbour is
    taken."""
    record = write_root_failure(run_dir)
    if record is not None:
        stage = int(record["stage"])
        message = str(record["message"])
        failure = failures.get(stage)
        if failure is not None and failure.exitcode < 0 and failure.exitcode != -signal.SIGTERM:
            message = f"{_how(failure.exitcode)}; {message}"
        code = int(record.get("exit_code", 1))
        return stage, code if code in (2, 3) else 1, message
    secondary = (LINK_EXIT, -signal.SIGTERM)
    ranked = sorted(failures.items(),
                    key=lambda kv: (kv[1].exitcode in secondary, kv[1].timestamp, kv[0]))
    stage, failure = ranked[0]
    code = failure.exitcode if failure.exitcode in (2, 3) else 1
    return stage, code, f"{_how(failure.exitcode)} (see its messages above)"
