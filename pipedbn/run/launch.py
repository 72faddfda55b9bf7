"""``pipedbn train`` without a launcher: the local pipeline, through torch's elastic launch API.

The parent checks the config and the data and claims the run directory first, so a user's
mistake is reported once, before any process starts. It then runs what ``torchrun --standalone
--nproc-per-node N -m pipedbn train RUN_DIR/config.yaml`` would: an elastic agent with a c10d
rendezvous on a free loopback port, no restarts, one worker process per stage. Workers are the
same code path as under torchrun (``distributed.py``). The launcher's stores listen on the
loopback interface only. When a worker fails, the agent stops the others (within
``shutdown_timeout``) and this process reports the stage that failed first (from
``failure.json``, or from the exit statuses) and exits non-zero.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from torch.distributed import TCPStore
from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup, WorkerSpec
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import DynamicRendezvousHandler

from pipedbn.errors import Interrupted, resume_command
from pipedbn.run.rundir import FAILURE_FILE, FAILURES_DIR, probe_storage, write_root_failure

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

    _silence_torch_elastic()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    loopback = [name for _, name in socket.if_nameindex() if name in ("lo", "lo0")]
    if loopback:  # gloo's own listening sockets too (unless the user chose an interface)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback[0])
    args = ["-m", "pipedbn", "train", str(run_dir / "config.yaml"), "--prepared"]
    if quiet:
        args.append("-q")
    if resume:
        args += ["--resume", str(run_dir)]
    run_id = f"pipedbn-{uuid.uuid4().hex[:12]}"
    store = loopback_store()
    handler = _LoopbackRendezvous.from_backend(
        run_id, store, C10dRendezvousBackend(store, run_id), min_nodes=1, max_nodes=1,
        local_addr=LOOPBACK)
    spec = WorkerSpec(role="default", local_world_size=nproc, entrypoint=sys.executable,
                      args=tuple(args), rdzv_handler=handler, max_restarts=0,
                      monitor_interval=0.1, local_addr=LOOPBACK)
    agent = _Agent(spec, DefaultLogsSpecs(log_dir=str(run_dir / "logs")), start_method="spawn",
                   shutdown_timeout=shutdown_timeout)
    try:
        result = agent.run()
    except SignalException as e:
        # an interrupt is nobody's failure: what the stages saw of it is not kept for resume
        shutil.rmtree(run_dir / FAILURES_DIR, ignore_errors=True)
        (run_dir / FAILURE_FILE).unlink(missing_ok=True)
        stop = Interrupted(signal.Signals(e.sigval).name, run_dir, resume_command(run_dir, nproc))
        print(f"pipedbn: {stop}", file=sys.stderr)
        return 130
    finally:
        handler.shutdown()
    if result.is_failed():
        stage, code, message = root_cause(run_dir, result.failures)
        # a crash (status 1) can be continued as it is; a mistake or a divergence needs a fix
        # that resuming would refuse (a config that decides the weights), so a new run
        then = f"continue it with: {resume_command(run_dir, nproc)}" if code not in (2, 3) \
            else "fix the cause and start a new run"
        if str(run_dir) not in message:  # (the storage's own message says what to do)
            message += f" (run directory {run_dir}; {then})"
        print(f"pipedbn: error: the run stopped: rank {stage} failed: {message}",
              file=sys.stderr)
        return code
    return 0


LOOPBACK = "127.0.0.1"


def loopback_store() -> TCPStore:
    """A TCPStore server that listens on the loopback interface only: torch's own listen on
    every interface (``[::]:PORT``) whatever host name they are given, and a local run needs
    no other. The socket is bound here and handed over (``master_listen_fd``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen(128)
    try:
        return TCPStore(LOOPBACK, sock.getsockname()[1], is_master=True, wait_for_workers=False,
                        multi_tenant=True, master_listen_fd=sock.detach())
    except BaseException:
        sock.close()
        raise


class _LoopbackRendezvous(DynamicRendezvousHandler):
    """torch's c10d rendezvous, whose store for the workers (``TORCHELASTIC_USE_AGENT_STORE``)
    listens on loopback only."""

    def _create_tcp_store_server(self, master_addr: str, master_port: int) -> TCPStore:
        return loopback_store()


class _Agent(LocalElasticAgent):
    """torch's agent, but when a worker fails the others get ``shutdown_timeout`` seconds to
    exit, not 30: ``SubprocessContext._poll`` closes the workers with ``close()``'s default
    timeout (30 s) as soon as it sees a failure, and ``LocalElasticAgent._stop_workers`` calls
    ``_shutdown()`` with its default too, whatever the agent was given; a stopped (SIGSTOP) or
    hung worker was killed only 30 s after its neighbours had exited."""

    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        pc = self._pcontext
        handlers = getattr(pc, "subprocess_handlers", {})
        if pc is not None and any(h.proc.poll() not in (None, 0) for h in handlers.values()):
            pc.close(timeout=self._shutdown_timeout)  # before torch's poll closes them slowly
        return super()._monitor_workers(worker_group)

    def _stop_workers(self, worker_group: WorkerGroup) -> None:
        self._shutdown(timeout=self._shutdown_timeout)


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
    problem = probe_storage(run_dir)  # it could not record why: the storage, perhaps
    if problem is not None:
        return stage, code, f"{_how(failure.exitcode)}; {problem}"
    return stage, code, f"{_how(failure.exitcode)} (see its messages above)"
