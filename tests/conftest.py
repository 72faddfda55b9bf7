"""Shared helpers: run the real CLI in a subprocess, one thread, bounded by a timeout."""

from __future__ import annotations

import contextlib
import multiprocessing.process
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from warm_cli import WarmCLI

torch.set_num_threads(1)  # one thread per process in tests, as in the subprocesses below
# The suite starts about a thousand interpreters; with PYTHONDONTWRITEBYTECODE set (as on our
# CI machines) each compiled pipedbn's sources again (0.1-0.6 s a process here). Without it the
# first process writes __pycache__ (git-ignored) and the rest read it.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

PROCESS_FIXTURES = {"tiny_run", "warm"}
"""Fixtures that start processes: a test that uses one belongs to the slow tier."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Two tiers: ``slow`` (the test starts processes: the CLI, torchrun, pipeline workers) and
    ``fast`` (everything else: pure functions in one process), so ``pytest -m fast`` is the
    quick loop and plain ``pytest`` runs both."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.fast)
        if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs CUDA (tools/gpu_check.sh runs it)"))


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_process(request: pytest.FixtureRequest,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the tiers honest: a test outside the slow tier that starts a process fails, naming
    the marker it needs, instead of slowing the fast tier down unnoticed."""
    if request.node.get_closest_marker("slow") is not None:
        return

    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail(f"{request.node.nodeid} starts a process: mark it @pytest.mark.slow "
                    "(or the module with pytestmark = pytest.mark.slow)", pytrace=False)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)

ROOT = Path(__file__).resolve().parents[1]
ONE_PER_LAYER = "balancer.max_replicas=1"
"""With as many ranks as layers and no replicas allowed, the planner gives each layer a rank."""


ONE_THREAD = "train.threads=1"
"""Pinned by ``cli`` on every ``train`` that does not choose its threads: one thread per
process, one process per layer (as before ``train.threads: auto``), so the tests keep their
placements and compare bits against the one-thread reference (tests/test_threads.py and
tests/test_resources_cli.py test the default)."""


_WARM: list[WarmCLI] = []
"""The session's warm interpreter (``warm_cli``), started by the first test that needs it."""


def warm_server() -> WarmCLI:
    """Started in the environment of the session's start (``_SESSION_ENV``), whichever test
    needs it first (a test may have changed ``os.environ`` by then); each command gets the
    environment of its own moment (``env1``)."""
    if not _WARM:
        _WARM.append(WarmCLI(ROOT, _SESSION_ENV, env1))
    return _WARM[0]


def pytest_sessionfinish(session: pytest.Session) -> None:
    while _WARM:
        _WARM.pop().close()


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``pipedbn ARGS`` in a process of its own, forked from the session's warm interpreter
    (``warm_cli``: its own environment, directory, output and exit status; torch and pipedbn
    already imported, which was 1.5-2.5 s of every command here). Pipeline workers that it
    starts are fresh interpreters, as in any run."""
    if (args[:1] == ("train",) and len(args) > 1 and not args[1].startswith("-")
            and not any(a.startswith("train.threads=") for a in args)):
        args = (*args[:2], ONE_THREAD, *args[2:])
    return warm_server().run(list(args), env1(), cwd or ROOT, timeout)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished run of configs/tiny.yaml, shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    proc = cli("train", "configs/tiny.yaml", f"run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)
    return run_dir


@pytest.fixture(scope="session")
def warm() -> Iterator[WarmCLI]:
    """The real CLI forked from one warm interpreter (``warm_cli``): for the many short
    command lines that must fail cleanly, where importing torch is most of the time."""
    yield warm_server()


def free_port() -> int:
    """A port that was free a moment ago (for a rendezvous several launchers must agree on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def workers(marker: str) -> dict[int, int]:
    """{rank: pid} of the live pipeline workers whose command line mentions ``marker``."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            env = (d / "environ").read_bytes().split(b"\0")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        rank = [e[5:] for e in env if e.startswith(b"RANK=")]
        if rank and state != "Z" and any(marker.encode() in c for c in cmd):
            found[int(rank[0])] = int(d.name)
    return found


def kill_workers(marker: str) -> None:
    for pid in workers(marker).values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for(predicate, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    """Poll until ``predicate()`` is true; returns the seconds it took, fails after ``timeout``."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


def env1() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


_SESSION_ENV = env1()
