"""Fault injection: kill ranks, or whole nodes, of torchrun jobs at random moments and check that
every job resumes from its checkpoints and ends with the uninterrupted run's weights, bit for bit.

Run from the repository root::

    python -m tools.faults --trials 20                 # process mode: SIGKILL one worker
    python -m tools.faults --trials 5 --mode node      # node mode: SIGKILL an agent and its workers

1. *Reference*: one uninterrupted run, ``pipedbn train CONFIG run.dir=REF --nproc N`` with the
   trials' overrides. Its training window (from its first complete checkpoint, a
   ``checkpoints/step-<c>`` with every layer's part, to ``model.safetensors``) bounds the
   moments at which the trials kill. Its figures go to ``OUT/reference.json``; ``--reference
   OUT`` reuses that run (and its figures) in a later invocation with the same config,
   overrides and ranks (process and early mode share one), and ``--trials 0`` makes only it.
2. *Trials*, each a fresh torchrun job with ``--max-restarts 1`` and ``run.dir=RUN``:

   - ``process``: one agent (``--standalone``, N workers). Once the job's first complete
     checkpoint exists, the tool waits a random moment (uniform in ``[0, --window x`` the
     reference's window``]``) and SIGKILLs a random rank. The agent stops the other workers and
     starts a new set, which resumes from the newest complete checkpoint.
   - ``node``: two agents as two nodes (``--nnodes 2``, N/2 workers each, c10d rendezvous). At
     the random moment one agent, drawn at random, is SIGKILLed together with its workers, and a
     replacement agent with the same arguments is started at once. The rendezvous store is held
     by this tool (the agents get ``--rdzv-conf is_host=false``), as an etcd server or a
     launcher host would hold it on a cluster: the c10d backend otherwise keeps it inside
     whichever agent started first, and killing that agent ends every job, resume or not
     (``--store agent`` shows it: agent 0 starts first and holds the store; when it is the one
     killed, the survivor fails with ``RendezvousConnectionError`` and the replacement waits
     until the trial's timeout). The rendezvous drops a dead agent only once its last heartbeat
     is 3 intervals old (``--keep-alive``, torch's default 5 s): until then the restart waits.

   The delays and the ranks (nodes) come from ``--seed``, drawn before each trial starts.
3. *Per trial*: the ranks killed, when (seconds after the job's first complete checkpoint; the
   newest complete one then), the checkpoint the restarted job resumed from (rank 0's log line
   ``resuming RUN from step-<c>``), the most restarts any new worker saw
   (``TORCHELASTIC_RESTART_COUNT``), whether the job succeeded within its first restart, whether
   its ``model.safetensors`` equals the reference's (every tensor, ``torch.equal``), whether
   the job was lost (non-zero exit, timeout, or no model; a job that ends before its moment to
   kill is reported as not killed), and three times from the kill: *gone* (no worker that was
   alive at the kill is left; zombies count as gone), *up* (a full set of new workers exists)
   and *back* (the first training record, tag ``rbm/*`` or ``pipeline/*``, that a new worker
   wrote to the run's ``metrics.jsonl``: a record with a wall time after *gone*, so no old
   worker wrote it). The runs log every micro-batch (``monitor.scalars_every=1``), so *back* is
   the first trained micro-batch, not the next logging step. Workers are found in ``/proc``
   (environment has ``RANK=``, command line names the run directory), polled every 10 ms.

A straggler sleep (``--sleep`` seconds per micro-batch on layer 0, no CPU used; the weights do
not depend on it) stretches tiny's 0.1 s of training to about 2 s, so that the kills land in
the middle of training rather than in the start-up. One thread per process.

Prints a table and ``trials N, resumed on first restart R, identical I, lost L`` with the median
times; ``--json FILE`` writes every figure; ``--write-docs`` replaces this mode's section of
``docs/benchmarks.md``. Exits 1 if any trial was lost or ended with different weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import load_file
from torch.distributed import TCPStore

from pipedbn.config import load_config, resolve_defaults
from pipedbn.errors import UserError
from tools.benchdocs import write_section

ROOT = Path(__file__).resolve().parents[1]
TRAINING_TAGS = ("rbm/", "pipeline/")
"""Metrics a stage writes only while it trains (``eval/*`` and ``config`` come at set-up)."""
POLL_S = 0.01
RESUMING = re.compile(r"resuming \S+ from (?:step-(\d+)|(final)|the start)")
"""Rank 0's log line when a restarted job continues its run (``pipedbn.run.resume``)."""
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NO_SHARE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
"""``--env no-share`` sets it to 1: each rendezvous round then gets a fresh store for the workers
(torchrun's default, ``--env default``, keeps one store across rounds)."""
MODES: dict[str, dict[str, Any]] = {"process": {"nproc": 3, "overrides": []},
         "early": {"nproc": 3, "overrides": []},
         "node": {"nproc": 4, "overrides": ["layers=[32,24,16,12]"]}}
CLAIM_DELAY_S = 0.3
"""Early mode, odd trials: the kill comes within this many seconds of the run directory's
appearance (rank 0 has just claimed it)."""
"""Per mode: total ranks and the overrides used when none are given (tiny has 3 layers)."""


# ------------------------------------------------------------------------------ options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides for the reference and every trial (default: the "
                         "mode's; node: layers=[32,24,16,12], as tiny has 3 layers)")
    ap.add_argument("--mode", choices=sorted(MODES), default="process",
                    help="process: kill one worker during training; early: kill one worker in "
                         "the first seconds (even trials) or rank 0 right after it claims the "
                         "run directory (odd trials); node: kill an agent and its workers")
    ap.add_argument("--env", choices=["default", "no-share"], default="default",
                    help="torchrun's environment: its defaults (TORCH_DISABLE_SHARE_RDZV_TCP_STORE "
                         "unset, as a user following torchrun's documentation has it), or that "
                         "variable set to 1")
    ap.add_argument("--trials", type=int, default=20,
                    help="jobs to kill, one after another (0: only the reference, for "
                         "--reference)")
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--nproc", type=int, default=None,
                    help="ranks in all, one per layer (default 3, node mode 4: 2 per node)")
    ap.add_argument("--every", type=int, default=10,
                    help="checkpoint.every: micro-batches between checkpoints")
    ap.add_argument("--sleep", type=float, default=0.02,
                    help="straggler seconds per micro-batch on layer 0, to stretch training")
    ap.add_argument("--window", type=float, default=0.9,
                    help="kill within this fraction of the reference's training window")
    ap.add_argument("--keep-alive", type=int, default=5,
                    help="node mode: seconds between rendezvous heartbeats; a node is dead "
                         "after 3 missed (torch's default 5: a lost node is noticed in 15 s)")
    ap.add_argument("--store", choices=["tool", "agent"], default="tool",
                    help="node mode: who holds the rendezvous store: this tool, or agent 0 "
                         "(torchrun's own way: it is started first and binds the endpoint)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per job, at most")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", type=Path, default=None, metavar="OUT",
                    help="reuse the uninterrupted run in OUT/reference (the --out of an "
                         "earlier invocation with the same config, overrides and ranks; its "
                         "figures are in OUT/reference.json) instead of running one")
    ap.add_argument("--out", type=Path, default=None,
                    help="directory for the runs and logs (default tools/out/faults/<time>)")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--write-docs", action="store_true",
                    help="replace this mode's section of docs/benchmarks.md")
    args = ap.parse_args(argv)
    mode = MODES[args.mode]
    args.nproc = args.nproc or mode["nproc"]
    args.overrides = args.overrides or list(mode["overrides"])
    if args.mode == "node" and args.nproc % 2:
        ap.error("--mode node splits the ranks over 2 nodes: --nproc must be even")
    if args.trials < 0:
        ap.error("--trials must be >= 0 (0: only the reference)")
    if args.every < 1:
        ap.error("--every must be >= 1 (a kill needs a checkpoint to resume from)")
    if args.out is None:
        args.out = ROOT / "tools" / "out" / "faults" / (
            f"{args.mode}-{datetime.now():%Y%m%d-%H%M%S}")
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.env_vars = {k: v for k, v in os.environ.items() if k != NO_SHARE}
    args.env_vars.update(ENV)
    if args.env == "no-share":
        args.env_vars[NO_SHARE] = "1"
    return args


def train_overrides(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The config overrides of the reference and of every trial (only ``run.dir`` differs)."""
    return [f"run.dir={run_dir}", "balancer.max_replicas=1", f"checkpoint.every={args.every}",
            "monitor.scalars_every=1", "straggler.layer=0", f"straggler.sleep_s={args.sleep}",
            *args.overrides]


# ------------------------------------------------------------------------------ processes


@dataclass(frozen=True)
class Worker:
    pid: int
    ppid: int
    rank: int
    restart: int
    """``TORCHELASTIC_RESTART_COUNT`` of its agent when it started it."""


def workers(marker: Path) -> list[Worker]:
    """Live pipeline workers (environment has ``RANK=``) whose command line names ``marker``."""
    found = []
    needle = str(marker).encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            if not any(needle in c for c in cmd):
                continue
            env = dict(e.split(b"=", 1) for e in (d / "environ").read_bytes().split(b"\0")
                       if b"=" in e)
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if b"RANK" in env and stat[0] != "Z":
            found.append(Worker(int(d.name), int(stat[1]), int(env[b"RANK"]),
                                int(env.get(b"TORCHELASTIC_RESTART_COUNT", b"0"))))
    return found


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Job:
    """The torchrun agents of one run (node mode: a killed one and its replacement too), their
    logs, and the run's workers."""

    run_dir: Path
    agent_args: list[str]
    logs: Path
    train_args: list[str]
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)
    files: list[IO[bytes]] = field(default_factory=list)
    killed_agent: int | None = None

    env: dict[str, str] = field(default_factory=dict)

    def start_agent(self) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"agent-{len(self.agents)}.log", "wb")
        cmd = [sys.executable, "-m", "torch.distributed.run", *self.agent_args,
               "-m", "pipedbn", "train", *self.train_args]
        agent = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.agents.append(agent)
        self.files.append(log)
        return agent

    def workers(self) -> list[Worker]:
        return workers(self.run_dir)

    def live_agents(self) -> list[subprocess.Popen[bytes]]:
        return [a for i, a in enumerate(self.agents) if i != self.killed_agent]

    def any_exited(self) -> bool:
        return any(a.poll() is not None for a in self.live_agents())

    def finished(self) -> bool:
        return all(a.poll() is not None for a in self.live_agents())

    def succeeded(self) -> bool:
        return all(a.returncode == 0 for a in self.live_agents()) and \
            (self.run_dir / "model.safetensors").is_file()

    def stop(self) -> None:
        """Kill whatever is left (after a timeout or an error in this tool)."""
        for agent in self.agents:
            agent.kill()
        for w in self.workers():
            kill(w.pid)
        for agent in self.agents:
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(timeout=10)
        for f in self.files:
            f.close()


def wait_until(predicate: Any, deadline: float, what: str) -> None:
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


# ------------------------------------------------------------------------------ run directory


def complete_checkpoints(run_dir: Path, layers: int) -> list[int]:
    """Micro-batches of the complete ``step-<c>`` checkpoints: every layer's part has its
    ``.json`` (written after the part itself, as ``pipedbn.run.checkpoint`` counts them)."""
    found = []
    for d in (run_dir / "checkpoints").glob("step-*"):
        c = d.name.removeprefix("step-")
        if c.isdigit() and all((d / f"layer-{i}.json").exists() for i in range(layers)):
            found.append(int(c))
    return sorted(found)


def resumed_from(logs: list[Path]) -> str | None:
    """The checkpoint the last resume started from, as rank 0 logged it ("0": the start)."""
    found = None
    for log in logs:
        for m in RESUMING.finditer(log.read_text(errors="replace")):
            found = m.group(1) or m.group(2) or "0"
    return found


def first_training_record(run_dir: Path, after_wall: float) -> float | None:
    """Wall time of the first training record in ``metrics.jsonl`` written after ``after_wall``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    times = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
        if str(record.get("tag", "")).startswith(TRAINING_TAGS) and \
                record.get("wall_time", 0) > after_wall:
            times.append(float(record["wall_time"]))
    return min(times, default=None)


def same_model(run_dir: Path, ref_dir: Path) -> bool:
    got, want = load_file(run_dir / "model.safetensors"), load_file(ref_dir / "model.safetensors")
    return got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


# ------------------------------------------------------------------------------ reference


@dataclass
class Reference:
    run_dir: Path
    layers: int
    window_s: float
    """From the first complete checkpoint to ``model.safetensors``."""
    wall_s: float
    startup_s: float
    """From a full set of workers to the first complete checkpoint."""


def count_layers(args: argparse.Namespace) -> int:
    """Layers of the resolved config (as ``pipedbn train --print-config`` resolves it, here
    rather than in a process of its own; checks the overrides)."""
    path = Path(args.config)
    try:
        cfg = resolve_defaults(load_config(path if path.is_absolute() else ROOT / path,
                                           train_overrides(args, args.out / "unused")))
    except UserError as e:
        raise SystemExit(f"faults: the config does not resolve:\n{e}") from None
    return len(cfg.layers)


REFERENCE_FILE = "reference.json"
"""Beside the reference's run directory: its figures and what it was made with."""


def made_with(args: argparse.Namespace) -> dict[str, Any]:
    """What decides the reference's weights and windows: equal for every reuse of it."""
    return {"config": args.config, "nproc": args.nproc,
            "overrides": train_overrides(args, Path("RUN"))[1:]}


def reference(args: argparse.Namespace) -> Reference:
    """The uninterrupted run: made here, or reused from ``--reference`` (checked to match)."""
    if args.reference is not None:
        return reuse_reference(args)
    ref = run_reference(args)
    (args.out / REFERENCE_FILE).write_text(json.dumps(
        {**made_with(args), "layers": ref.layers, "window_s": ref.window_s,
         "wall_s": ref.wall_s, "startup_s": ref.startup_s}, indent=1))
    return ref


def reuse_reference(args: argparse.Namespace) -> Reference:
    path = args.reference / REFERENCE_FILE
    run_dir = args.reference / "reference"
    if not path.is_file() or not (run_dir / "model.safetensors").is_file():
        raise SystemExit(f"faults: --reference {args.reference}: no finished reference there "
                         f"(want {path} and {run_dir / 'model.safetensors'})")
    saved = json.loads(path.read_text())
    differ = [f"{k}: {saved.get(k)!r} there, {v!r} here" for k, v in made_with(args).items()
              if saved.get(k) != v]
    if differ:
        raise SystemExit(f"faults: --reference {args.reference} was made otherwise: "
                         + "; ".join(differ))
    return Reference(run_dir.resolve(), int(saved["layers"]), float(saved["window_s"]),
                     float(saved["wall_s"]), float(saved["startup_s"]))


def run_reference(args: argparse.Namespace) -> Reference:
    run_dir = args.out / "reference"
    layers = count_layers(args)
    cmd = [sys.executable, "-m", "pipedbn", "train", args.config,
           *train_overrides(args, run_dir), "--nproc", str(args.nproc), "-q"]
    t0 = time.monotonic()
    with open(args.out / "reference.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=args.env_vars, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = t0 + args.timeout
            wait_until(lambda: len(workers(run_dir)) == args.nproc or proc.poll() is not None,
                       deadline, "the reference's workers")
            t_up = time.monotonic()
            wait_until(lambda: bool(complete_checkpoints(run_dir, layers))
                       or proc.poll() is not None, deadline, "the reference's first checkpoint")
            t_first = time.monotonic()
            wait_until(lambda: (run_dir / "model.safetensors").exists()
                       or proc.poll() is not None, deadline, "the reference's model")
            t_model = time.monotonic()
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            proc.kill()
            for w in workers(run_dir):
                kill(w.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
    if rc != 0 or not (run_dir / "model.safetensors").is_file():
        raise SystemExit(f"faults: the reference run failed (exit {rc}); see "
                         f"{args.out / 'reference.log'}")
    return Reference(run_dir, layers, t_model - t_first, time.monotonic() - t0, t_first - t_up)


# ------------------------------------------------------------------------------ trials


@dataclass
class Trial:
    trial: int
    killed: list[int] = field(default_factory=list)
    """Ranks SIGKILLed (node mode: the killed agent's workers)."""
    agent: int | None = None
    """Node mode: the agent killed (0 started first; with ``--store agent`` it holds the store)."""
    at_s: float | None = None
    """Seconds after the job's first checkpoint (early mode: after its trigger)."""
    trigger: str = "checkpoint"
    """What the kill's moment counts from: ``checkpoint`` (the first complete one), ``up`` (a
    full set of workers exists) or ``claim`` (the run directory exists)."""
    checkpoint: int | None = None
    """Newest complete checkpoint at the kill (files; rank 0 may not have seen it yet)."""
    resumed_from: str | None = None
    """The checkpoint the restarted job resumed from, as its rank 0 logged it ("0": start)."""
    restarts: int = 0
    resumed_first: bool = False
    identical: bool = False
    lost: bool = True
    gone_s: float | None = None
    up_s: float | None = None
    back_s: float | None = None
    wall_s: float = 0.0
    exit_codes: list[int | None] = field(default_factory=list)
    missed: bool = False
    """The job ended before the moment to kill came (nothing was killed)."""
    note: str = ""


@dataclass
class Watch:
    """Follows the workers after a kill: when the old ones are gone, when new ones are up."""

    old: set[int]
    nproc: int
    t_kill: float
    gone_s: float | None = None
    gone_wall: float | None = None
    up_s: float | None = None
    restarts: int = 0

    def look(self, current: list[Worker]) -> None:
        now = time.monotonic()
        pids = {w.pid for w in current}
        if self.gone_s is None and not pids & self.old:
            self.gone_s, self.gone_wall = now - self.t_kill, time.time()
        new = [w for w in current if w.pid not in self.old]
        self.restarts = max([self.restarts, *(w.restart for w in new)])
        if self.up_s is None and self.gone_s is not None and \
                len({w.rank for w in new}) == self.nproc:
            self.up_s = now - self.t_kill


def run_trial(args: argparse.Namespace, index: int, rng: random.Random, ref: Reference) -> Trial:
    """One job, killed once at a random moment of its training; ``args.mode`` says what dies."""
    # drawn before anything is timed: one seed gives the same delays and victims every time
    delay = rng.uniform(0.0, args.window * ref.window_s)
    victim = rng.randrange(2 if args.mode == "node" else args.nproc)
    tdir = args.out / f"{args.mode}-{index:02d}"
    tdir.mkdir(parents=True)
    run_dir = tdir / "run"
    trial = Trial(index)
    store, port, agent_args = launcher_args(args)  # a store here serves until we return
    job = Job(run_dir, agent_args, tdir, [args.config, *train_overrides(args, run_dir)],
              env=args.env_vars)
    trigger: Any = lambda: bool(complete_checkpoints(run_dir, ref.layers))  # noqa: E731
    if args.mode == "early":
        if index % 2:  # rank 0, as soon as the run directory it claims is there
            trial.trigger, victim = "claim", 0
            delay = delay / (args.window * ref.window_s) * CLAIM_DELAY_S
            trigger = lambda: run_dir.exists()  # noqa: E731
        else:  # anyone, anywhere in the start-up
            trial.trigger = "up"
            delay = delay / (args.window * ref.window_s) * args.window * ref.startup_s
            trigger = lambda: len(job.workers()) == args.nproc  # noqa: E731
    watch, kill_wall = None, 0.0
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    try:
        job.start_agent()
        if args.mode == "node":
            if store is None and port is not None:  # agent 0 is to host the store: let it bind
                wait_until(lambda: listening(port) or job.any_exited(), deadline,
                           "agent 0's rendezvous store")
            job.start_agent()
        wait_until(lambda: trigger() or job.any_exited(), deadline,
                   f"the moment to start counting ({trial.trigger})")
        t_first = time.monotonic()
        wait_until(lambda: time.monotonic() >= t_first + delay or job.any_exited(), deadline,
                   "the moment to kill")
        current = job.workers()
        if job.any_exited() or len(current) != args.nproc:
            trial.missed = True  # it ended (or failed) first; whether it succeeded is checked
            wait_until(job.finished, deadline, "the job to finish")
        else:
            trial.at_s = time.monotonic() - t_first
            steps = complete_checkpoints(run_dir, ref.layers)
            trial.checkpoint = steps[-1] if steps else None
            watch = Watch({w.pid for w in current}, args.nproc, time.monotonic())
            trial.killed = kill_victim(job, current, victim, args.mode)
            trial.agent = job.killed_agent
            kill_wall = time.time()
            while not job.finished():
                if time.monotonic() > deadline:
                    raise TimeoutError("timed out waiting for the job to finish")
                watch.look(job.workers())
                time.sleep(POLL_S)
    except TimeoutError as e:
        trial.note = str(e)
    finally:
        job.stop()
        del store
    if watch is not None:  # what was seen after the kill, also when the job then timed out
        trial.gone_s, trial.up_s, trial.restarts = watch.gone_s, watch.up_s, watch.restarts
        if watch.gone_wall is not None:
            back = first_training_record(run_dir, watch.gone_wall)
            trial.back_s = None if back is None else back - kill_wall
    trial.wall_s = time.monotonic() - t0
    trial.exit_codes = [a.returncode for a in job.agents]
    trial.resumed_from = resumed_from(sorted(tdir.glob("agent-*.log")))
    trial.lost = bool(trial.note) or not job.succeeded()
    trial.identical = not trial.lost and same_model(run_dir, ref.run_dir)
    trial.resumed_first = not trial.lost and not trial.missed and trial.restarts <= 1
    return trial


def launcher_args(args: argparse.Namespace) -> tuple[Any, int | None, list[str]]:
    """(store, its port, torchrun's arguments) for one job; node mode with ``--store tool``
    starts the job's rendezvous store here."""
    if args.mode != "node":
        return None, None, ["--standalone", "--nproc-per-node", str(args.nproc),
                            "--max-restarts", "1"]
    rdzv_conf = f"keep_alive_interval={args.keep_alive}"
    if args.store == "tool":
        store, port = rendezvous_store()
        rdzv_conf += ",is_host=false"
    else:
        store, port = None, free_port()
    return store, port, ["--nnodes", "2", "--nproc-per-node", str(args.nproc // 2),
                         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                         "--rdzv-id", f"faults-{uuid.uuid4().hex[:8]}", "--rdzv-conf", rdzv_conf,
                         "--max-restarts", "1"]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def kill_victim(job: Job, current: list[Worker], victim: int, mode: str) -> list[int]:
    """SIGKILL rank ``victim`` (process mode) or agent ``victim`` and its workers, then start
    a replacement agent (node mode); the ranks killed."""
    if mode != "node":
        target = next(w for w in current if w.rank == victim)
        kill(target.pid)
        return [target.rank]
    agent = job.agents[victim]
    kill(agent.pid)
    job.killed_agent = victim
    mine = [w for w in current if w.ppid == agent.pid]
    for w in mine:
        kill(w.pid)
    job.start_agent()  # the replacement node, with the same arguments
    return sorted(w.rank for w in mine)


def rendezvous_store() -> tuple[Any, int]:
    """A c10d store in this process, on a free port, for the agents to rendezvous on."""
    for _ in range(20):
        port = free_port()
        try:
            return TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                            multi_tenant=True, timeout=timedelta(seconds=60)), port
        except (RuntimeError, ValueError):
            continue  # taken meanwhile
    raise SystemExit("faults: no free port for the rendezvous store")


# ------------------------------------------------------------------------------ report


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(trials: list[Trial], mode: str) -> str:
    who = "killed agent: ranks" if mode == "node" else "killed rank"
    rows = [f"| trial | {who} | at s | checkpoint | from | restarts | resumed 1st | identical "
            "| lost | gone s | up s | back s | wall s |",
            "| --- " * 13 + "|"]
    for t in trials:
        agent = "" if t.agent is None else f"{t.agent}: "
        at = fmt(t.at_s) + ("" if t.trigger == "checkpoint" else f" ({t.trigger})")
        rows.append(f"| {t.trial} | {agent}{','.join(map(str, t.killed)) or '-'} | {at} "
                    f"| {t.checkpoint if t.checkpoint is not None else '-'} "
                    f"| {t.resumed_from or '-'} | {t.restarts} "
                    f"| {yes(t.resumed_first)} | {yes(t.identical)} | {yes(t.lost)} "
                    f"| {fmt(t.gone_s)} | {fmt(t.up_s)} | {fmt(t.back_s)} | {fmt(t.wall_s, 1)} |")
    return "\n".join(rows)


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summary(trials: list[Trial]) -> str:
    n, missed = len(trials), sum(t.missed for t in trials)
    return (f"trials {n}, resumed on first restart {sum(t.resumed_first for t in trials)}, "
            f"identical {sum(t.identical for t in trials)}, lost {sum(t.lost for t in trials)}"
            f"{f', not killed (ended first) {missed}' if missed else ''}; "
            f"median s from the kill: old workers gone {fmt(median([t.gone_s for t in trials]))}"
            f", new workers up {fmt(median([t.up_s for t in trials]))}, training again "
            f"{fmt(median([t.back_s for t in trials]))}")


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, one thread per process")


def command(args: argparse.Namespace) -> str:
    return shlex.join(["python", "-m", "tools.faults", *args.argv])


NOTES = {
    "process": "torchrun's agent sees the dead worker within its monitor interval (0.1 s) and "
               "stops the others (SIGTERM), hence *gone*; it then starts a new set at once "
               "(*up*). Most of *back* is the new workers' start-up on 2 cores: Python and "
               "torch, the gloo group, the data, the checkpoint read and its checksums.",
    "early": "A kill before rank 0 has claimed the run directory leaves nothing to resume: the "
             "restarted job starts afresh (*from* `-`). After the claim it resumes from the "
             "start or from the first checkpoint. The claim is one rename of a directory "
             "already holding `config.yaml`, `preprocess.pt` and `launcher.json`, so a restarted "
             "rank 0 finds either no run directory or a whole one that names this job.",
    "node": "The surviving node's workers see their peers vanish (a closed connection) and "
            "exit, hence *gone*. *up* is mostly the rendezvous waiting for the killed agent: "
            "its round stays complete, whatever the replacement does, until the dead agent's "
            "last heartbeat is 3 intervals old (10 to 15 s with torch's default 5 s); "
            "`--keep-alive 1` cuts *up* to about 4 s.",
}
"""What the times of each mode are made of (measured while building this tool)."""


def docs_section(args: argparse.Namespace, ref: Reference, trials: list[Trial]) -> str:
    env = ("torchrun's default environment" if args.env == "default"
           else f"`{NO_SHARE}=1` in torchrun's environment")
    when = {"process": "at a random moment of its training (the uninterrupted run trains for "
                       f"{ref.window_s:.2f} s from its first complete checkpoint to its model)",
            "node": "at a random moment of its training (the uninterrupted run trains for "
                    f"{ref.window_s:.2f} s from its first complete checkpoint to its model)",
            "early": "in its first seconds: even trials kill a random rank up to "
                     f"{args.window * ref.startup_s:.2f} s after a full set of workers exists "
                     "(the uninterrupted run's first complete checkpoint comes "
                     f"{ref.startup_s:.2f} s after its workers are up), odd trials kill rank 0 "
                     "up to "
                     f"{CLAIM_DELAY_S} s after the run directory appears"}[args.mode]
    what = ("SIGKILL of one random worker; torchrun (`--max-restarts 1`) restarts the workers"
            if args.mode != "node" else
            "SIGKILL of one of two agents (`--nnodes 2`, `--max-restarts 1`) and its workers, "
            "a replacement agent with the same arguments started at once; the rendezvous "
            f"store is held by {'the tool' if args.store == 'tool' else 'agent 0'}, a heartbeat "
            f"every {args.keep_alive} s")
    return "\n".join([
        f"## Faults: {args.mode} mode", "", "```bash", command(args), "```", "",
        f"{what}; {env}. `{args.config}` with "
        f"`{' '.join(train_overrides(args, Path('RUN'))[1:])}`, {args.nproc} ranks; each job "
        f"killed once {when}, seed {args.seed}; {date.today()}. {machine()}.", "",
        table(trials, args.mode), "",
        f"**{summary(trials)}.** *at*: seconds after the job's first complete checkpoint "
        "(early mode: after a full set of workers is *up*, or after the run directory's "
        "*claim*); "
        "*checkpoint*: the newest complete one then; *from*: the one the restarted job resumed "
        "from (rank 0's log; 0: the start; it can be newer than *checkpoint*: the stages still "
        "alive complete later ones before they stop); *gone*: from the kill until no old "
        "worker is left; *up*: until a full set of new workers exists; *back*: until the "
        "first micro-batch trained after the restart is logged in `metrics.jsonl` (none after "
        "a resume from `final`); *identical*: `model.safetensors` equals the uninterrupted "
        f"reference's, every tensor. {NOTES[args.mode]}",
    ])


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if any(args.out.iterdir()):
        raise SystemExit(f"faults: {args.out} is not empty")
    rng = random.Random(args.seed)
    ref = reference(args)
    print(f"reference{' (reused)' if args.reference else ''}: {ref.wall_s:.1f} s, training "
          f"window {ref.window_s:.2f} s ({ref.run_dir})", flush=True)
    trials = []
    for i in range(args.trials):
        trial = run_trial(args, i, rng, ref)
        trials.append(trial)
        print(f"trial {i}: killed {trial.killed} at {fmt(trial.at_s)} s, identical "
              f"{yes(trial.identical)}, lost {yes(trial.lost)} {trial.note}", flush=True)
    print(table(trials, args.mode))
    print(summary(trials))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": command(args), "machine": machine(), "mode": args.mode,
            "overrides": train_overrides(args, Path("RUN"))[1:], "config": args.config,
            "nproc": args.nproc, "seed": args.seed, "env": args.env, "reference": {
                "window_s": ref.window_s, "wall_s": ref.wall_s, "startup_s": ref.startup_s,
                "run_dir": str(ref.run_dir), "reused": args.reference is not None},
            "summary": summary(trials), "trials": [asdict(t) for t in trials]}, indent=1))
    if args.write_docs:
        name = f"faults_{args.mode}" + ("_agent_store" if args.mode == "node"
                                         and args.store == "agent" else "") + \
            ("_no_share" if args.env == "no-share" else "")
        write_section(name, docs_section(args, ref, trials))
    return 1 if any(t.lost or not t.identical for t in trials) else 0


if __name__ == "__main__":
    sys.exit(main())
