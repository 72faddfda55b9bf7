"""The pipeline's cost per micro-batch against gloo's own round trip for the same message
(issue 22, item 3), and configs/tiny.yaml on 2 processes against ``--nproc 1``.

    python -m tools.bench_overhead                           # 3 rounds; docs/benchmarks.md
    python -m tools.bench_overhead --rounds 1 --no-doc       # a quick look

In each round, interleaved (these machines are noisy): (1) gloo's raw round trip, two local
processes passing one ``uint8`` tensor of the link's message size (``transport.Layout``: tiny's
first link, 200 x 32 float32 and the header) back and forth with the calls the pipeline makes
(``transport.isend``/``irecv``: the process group's own, without ``dist.isend``'s wrapper),
``--pings`` trips after 20 warm-up ones; (2) ``pipedbn train configs/tiny.yaml
train.batch_size=200 monitor.enabled=false rbm.epochs=E --nproc 2``; (3) the same with
``--nproc 1``. From (2)'s ``stages.json``: the pipeline's time per micro-batch minus the slowest
stage's step: the overhead per micro-batch, two ways, each against the round trip's same
statistic. *Mean*: the longest stage's active time over the stream's micro-batches minus the
slowest stage's compute time per micro-batch, against the trips' total time over their number.
*Median*: the longest median cycle (``cycle_p50_s``: arrival to arrival) minus the largest
median step (``step_p50_s``), against the median trip. The two differ on a shared machine: a
wake-up that waits for the host's next timer tick costs milliseconds, moves the means of both,
and never the medians. The figures are medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipedbn.pipeline.transport import Layout, irecv, isend
from tools.benchdocs import write_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "bench_overhead"
BATCH, FEATURES = 200, 32  # tiny's first link: layer 0's 32 hidden units, 200 rows


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def round_trip(nbytes: int, pings: int) -> float:
    """Median seconds of one gloo round trip of an ``nbytes`` message (two processes)."""
    return statistics.median(round_trips(nbytes, pings))


def round_trips(nbytes: int, pings: int) -> list[float]:
    """Seconds of each of ``pings`` gloo round trips of an ``nbytes`` message (two processes),
    back to back."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        procs = [subprocess.Popen(
            [sys.executable, "-m", "tools.bench_overhead", "--pingpong", str(rank),
             str(Path(tmp) / "store"), str(out), str(nbytes), str(pings)],
            cwd=ROOT, env=_env()) for rank in (0, 1)]
        for p in procs:
            if p.wait(timeout=300):
                raise SystemExit(f"the ping-pong worker failed (exit {p.returncode})")
        return [float(t) for t in json.loads(out.read_text())]


def _pingpong(rank: int, store: str, out: str, nbytes: int, pings: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    peer, buf, times = 1 - rank, torch.zeros(nbytes, dtype=torch.uint8), []
    for i in range(pings + 20):
        t0 = time.perf_counter()
        for turn in (0, 1):
            work = isend(buf, peer) if turn == rank else irecv(buf, peer)
            work.wait()
        if i >= 20:
            times.append(time.perf_counter() - t0)
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    dist.destroy_process_group()


def train(nproc: int, epochs: float, run_dir: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pipedbn", "train", "configs/tiny.yaml",
           f"train.batch_size={BATCH}", "monitor.enabled=false", f"rbm.epochs={epochs}",
           f"run.dir={run_dir}", "--nproc", str(nproc), "-q"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"pipedbn train failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    text = (run_dir / "summary.txt").read_text()
    m = re.search(r"through the pipeline in [0-9.]+ s \(([0-9]+) samples/s\)", text)
    assert m is not None, text
    out: dict[str, Any] = {"samples_per_s": float(m.group(1))}
    if nproc > 1:
        stages = json.loads((run_dir / "stages.json").read_text())
        stages = stages if isinstance(stages, list) else stages["stages"]
        mbs = max(s["micro_batches"] for s in stages)
        out["pipeline_per_mb_s"] = max(s["active_s"] for s in stages) / mbs
        out["step_s"] = max(s["compute_s"] / s["micro_batches"] for s in stages)
        out["overhead_s"] = out["pipeline_per_mb_s"] - out["step_s"]
        out["cycle_p50_s"] = max(s["cycle_p50_s"] for s in stages)
        out["step_p50_s"] = max(s["step_p50_s"] for s in stages)
        out["overhead_p50_s"] = out["cycle_p50_s"] - out["step_p50_s"]
        out["micro_batches"] = mbs
    return out


def _threads(marker: str) -> dict[tuple[int, int], tuple[str, int, int]]:
    """(pid, tid) -> (name, ns running, ns runnable but waiting) of every thread of every
    process whose command line holds ``marker``."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                continue
            for task in (proc / "task").iterdir():
                run, wait = (task / "schedstat").read_text().split()[:2]
                name = (task / "comm").read_text().strip()
                out[int(proc.name), int(task.name)] = (name, int(run), int(wait))
        except OSError:  # the process or thread ended meanwhile
            continue
    return out


def thread_shares(run_dir: Path, window: float = 5.0, settle: float = 8.0) -> list[dict[str, Any]]:
    """A long 2-process run; each busy worker thread's running and queued shares of a
    ``window`` in mid-stream (``settle`` s after the workers appear)."""
    cmd = [sys.executable, "-m", "pipedbn", "train", "configs/tiny.yaml",
           f"train.batch_size={BATCH}", "monitor.enabled=false", "rbm.epochs=3000",
           f"run.dir={run_dir}", "--nproc", "2", "-q"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    marker = f"{run_dir}/config.yaml"
    try:
        t_end = time.monotonic() + 120
        while len({pid for pid, _ in _threads(marker)}) < 2:
            if proc.poll() is not None or time.monotonic() > t_end:
                raise SystemExit("the workers of the long run did not start")
            time.sleep(0.2)
        time.sleep(settle)
        a = _threads(marker)
        time.sleep(window)
        b = _threads(marker)
    finally:  # the launcher; its workers (their own sessions) follow it within a second
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        t_end = time.monotonic() + 30
        while _threads(marker):
            if time.monotonic() > t_end:
                raise SystemExit(f"the long run's workers outlived their launcher: {marker}")
            time.sleep(0.2)
    pids = sorted({pid for pid, _ in a})
    rows = []
    for key, (name, run, wait) in sorted(a.items()):
        if key not in b:
            continue
        run_frac = (b[key][1] - run) / 1e9 / window
        wait_frac = (b[key][2] - wait) / 1e9 / window
        if run_frac >= 0.01:
            rows.append({"worker": pids.index(key[0]), "thread": name,
                         "running": run_frac, "queued": wait_frac})
    return rows


def measure(rounds: int, epochs: float, pings: int) -> dict[str, Any]:
    nbytes = Layout(BATCH, FEATURES, torch.float32).nbytes
    means, medians, p99s, pipes, ones = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="pipedbn-bench-overhead-") as tmp:
        for r in range(rounds):
            trips = round_trips(nbytes, pings)
            means.append(statistics.fmean(trips))
            medians.append(statistics.median(trips))
            p99s.append(statistics.quantiles(trips, n=100)[98])
            pipes.append(train(2, epochs, Path(tmp) / f"p{r}"))
            ones.append(train(1, epochs, Path(tmp) / f"o{r}"))
            print(f"round {r}: round trip mean {means[-1] * 1e6:.0f} us, median "
                  f"{medians[-1] * 1e6:.0f} us, {pipes[-1]}, {ones[-1]}",
                  file=sys.stderr, flush=True)
    med = statistics.median
    return {"nbytes": nbytes, "rounds": rounds, "epochs": epochs, "pings": pings,
            "round_trip_s": med(means), "round_trip_p50_s": med(medians),
            "round_trip_p99_s": med(p99s),
            **{k: med(p[k] for p in pipes) for k in (
                "overhead_s", "step_s", "pipeline_per_mb_s", "overhead_p50_s", "step_p50_s",
                "cycle_p50_s")},
            "micro_batches": pipes[0]["micro_batches"],
            "ratios": [p["overhead_s"] / t for p, t in zip(pipes, means, strict=True)],
            "ratios_p50": [p["overhead_p50_s"] / t for p, t in zip(pipes, medians, strict=True)],
            "ratios_mixed": [p["overhead_s"] / t for p, t in zip(pipes, medians, strict=True)],
            "speed_ratio": med(p["samples_per_s"] / o["samples_per_s"]
                               for p, o in zip(pipes, ones, strict=True)),
            "two_sps": med(p["samples_per_s"] for p in pipes),
            "one_sps": med(o["samples_per_s"] for o in ones),
            "load": os.getloadavg()}


def _ratios(rs: list[float]) -> str:
    return f"median {statistics.median(rs):.2f}x, {min(rs):.2f}-{max(rs):.2f}x"


def table(r: dict[str, Any], command: str) -> str:
    us = 1e6
    mixed = r["overhead_s"] / r["round_trip_p50_s"]
    return "\n".join([
        f"configs/tiny.yaml, `train.batch_size={BATCH}`, `monitor.enabled=false`, "
        f"`rbm.epochs={r['epochs']:g}` ({r['micro_batches']} micro-batches); medians of "
        f"{r['rounds']} interleaved rounds ({r['pings']} round trips each), measured "
        f"{time.strftime('%Y-%m-%d')} by `{command}` on this {os.cpu_count()}-core machine "
        f"(load average {r['load'][0]:.1f} / {r['load'][1]:.1f} / {r['load'][2]:.1f} at the "
        "end).",
        "",
        "| per micro-batch | mean µs | median µs |",
        "|---|---|---|",
        f"| gloo's raw `isend`/`irecv` round trip of one {r['nbytes']:,}-byte message "
        f"(the link's) | {r['round_trip_s'] * us:.0f} | {r['round_trip_p50_s'] * us:.0f} |",
        f"| pipeline time (mean: longest stage's active time / micro-batches; median: its "
        f"cycle) | {r['pipeline_per_mb_s'] * us:.0f} | {r['cycle_p50_s'] * us:.0f} |",
        f"| slowest stage's step | {r['step_s'] * us:.0f} | {r['step_p50_s'] * us:.0f} |",
        f"| overhead (pipeline time - slowest step) | {r['overhead_s'] * us:.0f} | "
        f"{r['overhead_p50_s'] * us:.0f} |",
        "",
        f"Overhead / round trip (goal <= 1.5x), each statistic against its own: means "
        f"{r['overhead_s'] / r['round_trip_s']:.2f}x (each round's own ratio: "
        f"{_ratios(r['ratios'])}), medians {r['overhead_p50_s'] / r['round_trip_p50_s']:.2f}x "
        f"({_ratios(r['ratios_p50'])}). The mean overhead against the median round trip "
        f"(tails on one side only): {mixed:.2f}x ({_ratios(r['ratios_mixed'])}). The round "
        f"trip's 99th percentile: {r['round_trip_p99_s'] * us:,.0f} µs. "
        f"2 processes against `--nproc 1`: {r['two_sps']:,.0f} against {r['one_sps']:,.0f} "
        f"samples/s, {r['speed_ratio']:.2f}x (goal >= 0.8x).",
    ])


def threads_table(rows: list[dict[str, Any]]) -> str:
    lines = ["Where the workers' busy threads spend 5 s of a long run's stream "
             "(`rbm.epochs=3000`, `/proc/.../schedstat`):", "",
             "| worker | thread | running | runnable, waiting for a core |", "|---|---|---|---|"]
    lines += [f"| {r['worker']} | `{r['thread']}` | {r['running']:.0%} | {r['queued']:.0%} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=float, default=300.0,
                    help="rbm.epochs of the runs (default 300: about 2,700 micro-batches)")
    ap.add_argument("--threads", action="store_true",
                    help="also measure the workers' threads' shares of a long run")
    ap.add_argument("--pings", type=int, default=2000, help="round trips timed per round")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--pingpong", nargs=5, help=argparse.SUPPRESS)  # a ping-pong worker
    args = ap.parse_args(argv)
    if args.pingpong:
        rank, store, out, nbytes, pings = args.pingpong
        _pingpong(int(rank), store, out, int(nbytes), int(pings))
        return 0
    r = measure(args.rounds, args.epochs, args.pings)
    command = "python -m tools.bench_overhead" + (
        f" --rounds {args.rounds}" if args.rounds != 3 else "") + (
        f" --epochs {args.epochs:g}" if args.epochs != 300.0 else "") + (
        " --threads" if args.threads else "")
    text = table(r, command)
    if args.threads:
        with tempfile.TemporaryDirectory(prefix="pipedbn-bench-threads-") as tmp:
            text += "\n\n" + threads_table(thread_shares(Path(tmp) / "run"))
    print(text)
    if not args.no_doc:
        write_section(SECTION, "## Per micro-batch: the pipeline against gloo's round trip\n\n"
                      + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
