"""A rank that fails: what it records for ``rundir.root_failure``, whether torchrun should try
again, and the watchdogs that keep a worker from outliving its launcher or dying of a background
writer's error."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
from pathlib import Path

from pipedbn.errors import UserError
from pipedbn.pipeline.transport import LinkError
from pipedbn.run.rundir import root_failure

log = logging.getLogger("pipedbn")


def exit_with_parent() -> None:
    """End this worker if its launcher dies (SIGKILL, OOM): the elastic agent starts workers
    in their own sessions, so nothing else would stop them."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="pipedbn-parent-watch").start()


def thread_error(args: threading.ExceptHookArgs) -> None:
    """A background writer (TensorBoard's) that cannot write any more: one line, not a
    traceback; the stage's own next write fails and names the storage (``storage_problem``)."""
    if isinstance(args.exc_value, OSError):
        name = args.thread.name if args.thread is not None else "?"
        log.warning("background thread %s stopped: %s", name, args.exc_value)
        return
    threading.__excepthook__(args)


def recurs(e: BaseException, run_dir: Path | None) -> bool:
    """Whether this failure would happen again after a restart: a user's mistake (bad data
    found mid-stream, say) or a divergence, here or on the stage that failed first (training
    is deterministic, so both recur)."""
    if isinstance(e, UserError):
        return e.exit_code in (2, 3)
    if isinstance(e, LinkError) and run_dir is not None:
        root = root_failure(run_dir)
        return root is not None and root.get("kind") == "own" and root.get("exit_code") in (2, 3)
    return False


def no_restart() -> None:
    """Ask torchrun's agent (this worker's parent) to stop rather than restart the workers
    into the same error: restarts are for lost processes and nodes."""
    left = (int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
            - int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
    if left > 0 and "TORCHELASTIC_RUN_ID" in os.environ:
        log.error("this error recurs on every restart: asking torchrun to stop (%d restarts "
                  "left unused)", left)
        parent = os.getppid()
        atexit.register(os.kill, parent, signal.SIGTERM)  # once the error has been printed


def failure_record(e: BaseException, rank: int) -> dict[str, object]:
    if isinstance(e, LinkError):
        return {"stage": e.peer, "seen_by": rank, "exit_code": 4,
                "kind": "timeout" if e.timed_out else "closed",
                "message": f"stage {e.peer} stopped answering ({e})", "time": time.time()}
    code = e.exit_code if isinstance(e, UserError) else 1
    text = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
    return {"stage": rank, "seen_by": rank, "exit_code": code, "kind": "own", "message": text,
            "time": time.time()}
