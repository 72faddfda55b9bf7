"""The real CLI in real processes, without paying for ``import torch`` in each: one warm
interpreter imports pipedbn once and forks a child per command line. A child is a fresh process
as far as a command can tell (its own environment, working directory, stdout, stderr and exit
status, ``SIGALRM`` after ``timeout`` seconds), except that the package is already imported.

Every ``conftest.cli`` command runs this way (the many short command lines that must fail
cleanly, tests/test_bad_input.py, where importing torch is nearly all of a command's time, and
the runs, whose pipeline workers are fresh interpreters started by the forked launcher). What a
forked command does not share with ``python -m pipedbn``: its exit skips ``atexit`` handlers
and the join of other threads (``os._exit``, after flushing stdout and stderr), ``tests/`` is
first on ``sys.path``, and ``/proc/<pid>/cmdline`` is the server's; the tests that depend on
those run ``python -m pipedbn`` themselves (test_restarts' launcher tests, test_layout's
import check).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipedbn.cli import main

SERVER = ["-c", "import sys; sys.path.insert(0, sys.argv[1]); import warm_cli; warm_cli.serve()"]


def _child(request: dict[str, Any]) -> None:
    """In the forked child: become the command and exit with its status."""
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)  # not the server's request pipe
        os.dup2(null, 0)
        os.close(null)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115  (as Python's)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        logging.root.handlers.clear()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.alarm(max(1, math.ceil(request["timeout"])))
        sys.argv = ["pipedbn", *request["args"]]
        code = main(request["args"])
    except SystemExit as e:  # argparse, as `python -m pipedbn` would end
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """The warm interpreter: one JSON request per stdin line, one ``{"id", "code"}`` reply per
    finished child on stdout, children running side by side."""
    lock = threading.Lock()
    out = sys.stdout

    def wait(pid: int, ident: str) -> None:
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        with lock:
            out.write(json.dumps({"id": ident, "code": code}) + "\n")
            out.flush()

    waiters = []
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        waiters.append(threading.Thread(target=wait, args=(pid, request["id"])))
        waiters[-1].start()
    for t in waiters:
        t.join()


class WarmCLI:
    """Client of one warm interpreter: ``run(args, env, cwd)`` as ``subprocess.run`` would
    (the child's stdout and stderr pass through files of a directory of its own)."""

    def __init__(self, root: Path, env: dict[str, str],
                 env_now: Callable[[], dict[str, str]] | None = None) -> None:
        """``env``: the server's own environment; ``env_now``: each command's, taken when it
        is run (default: ``env``)."""
        self.proc = subprocess.Popen(
            [sys.executable, *SERVER, str(Path(__file__).parent)], cwd=root, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.codes: dict[str, int] = {}
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.n = 0
        self.out_dir = Path(tempfile.mkdtemp(prefix="warm-cli-"))
        self.env, self.root = env, root
        self.env_now = env_now or (lambda: dict(env))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            reply = json.loads(line)
            with self.cond:
                self.codes[reply["id"]] = reply["code"]
                self.cond.notify_all()

    def cli(self, *args: str, cwd: Path | None = None, timeout: float = 300
            ) -> subprocess.CompletedProcess:
        """``conftest.cli``'s twin: ``pipedbn ARGS`` in the environment of the moment."""
        return self.run(list(args), self.env_now(), cwd or self.root, timeout)

    def run(self, args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60
            ) -> subprocess.CompletedProcess:
        with self.cond:
            self.n += 1
            ident = str(self.n)
        stdout, stderr = self.out_dir / f"{ident}.out", self.out_dir / f"{ident}.err"
        umask = os.umask(0)
        os.umask(umask)
        request = {"id": ident, "args": args, "env": env, "cwd": str(cwd), "umask": umask,
                   "stdout": str(stdout), "stderr": str(stderr), "timeout": timeout}
        assert self.proc.stdin is not None
        with self.cond:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            # the child's own alarm ends it after `timeout`; the margin covers a lost server
            if not self.cond.wait_for(lambda: ident in self.codes, timeout + 30):
                raise subprocess.TimeoutExpired(args, timeout)
            code = self.codes.pop(ident)
        return subprocess.CompletedProcess(args, code, _drain(stdout), _drain(stderr))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        for path in self.out_dir.iterdir():
            path.unlink()
        self.out_dir.rmdir()


def _drain(path: Path) -> str:
    text = path.read_bytes().decode(errors="replace")
    path.unlink()
    return text
