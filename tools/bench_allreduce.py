"""gloo's ``all_reduce`` against its ``isend``/``irecv`` round trip, for the bucket sizes replica
sync hands it: what one BSP tick's collective costs on this machine (issue 18's validation).

    python -m tools.bench_allreduce [--ranks 2 3] [--sizes 8 1024 30000 262144 4194304]

For each world size, that many local processes (one thread each, a FileStore: no port) run, per
size, 10 warm-up calls and then ``--calls`` back-to-back ``all_reduce`` (sum) calls of a
float32 tensor of that many bytes; rank 0 reports the mean seconds per call. Two processes also
time ``--calls`` round trips of one message of each size with ``isend``/``irecv``. A table goes
to stdout, the figures to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]


def _worker(rank: int, world: int, store: str, out: str, sizes: list[int], calls: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank,
                            world_size=world)
    result: dict[str, dict[int, float]] = {"allreduce": {}, "round_trip": {}, "median": {},
                                           "p90": {}}
    for nbytes in sizes:
        t = torch.zeros(max(1, nbytes // 4))
        for _ in range(10):
            dist.all_reduce(t)
        each = []
        for _ in range(calls):
            t0 = time.perf_counter()
            dist.all_reduce(t)
            each.append(time.perf_counter() - t0)
        result["allreduce"][nbytes] = sum(each) / calls
        result["median"][nbytes] = statistics.median(each)
        result["p90"][nbytes] = statistics.quantiles(each, n=10)[-1]
        if world == 2:
            peer = 1 - rank
            t0 = time.perf_counter()
            for i in range(calls + 10):
                if i == 10:
                    t0 = time.perf_counter()
                for turn in (0, 1):
                    work = dist.isend(t, peer) if turn == rank else dist.irecv(t, peer)
                    assert work is not None
                    work.wait()
            result["round_trip"][nbytes] = (time.perf_counter() - t0) / calls
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def measure(world: int, sizes: list[int], calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        procs = [subprocess.Popen(
            [sys.executable, "-m", "tools.bench_allreduce", "--worker", str(r), str(world),
             str(Path(tmp) / "store"), str(out), str(calls), *map(str, sizes)],
            cwd=ROOT, env=env) for r in range(world)]
        for p in procs:
            if p.wait(timeout=600):
                raise SystemExit(f"a worker failed (exit {p.returncode})")
        return dict(json.loads(out.read_text()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 1024, 30000, 262144, 4194304])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--json", type=Path, default=ROOT / "tools" / "out" / "bench_allreduce.json")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        rank, world, store, out, calls, *sizes = args.worker
        _worker(int(rank), int(world), store, out, [int(s) for s in sizes], int(calls))
        return 0
    rows = {w: measure(w, args.sizes, args.calls) for w in args.ranks}
    print(f"{os.cpu_count()} cores, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f}; µs per call, {args.calls} back to back")
    print("| bytes | " + " | ".join(f"all_reduce, {w} ranks: mean (median, p90)"
                                     for w in args.ranks)
          + " | isend/irecv round trip, 2 ranks |")
    print("|---|" + "---|" * (len(args.ranks) + 1))
    for s in args.sizes:
        cells = [f"{rows[w]['allreduce'][str(s)] * 1e6:,.0f} ("
                 f"{rows[w]['median'][str(s)] * 1e6:,.0f}, {rows[w]['p90'][str(s)] * 1e6:,.0f})"
                 for w in args.ranks]
        trip = rows.get(2, {}).get("round_trip", {}).get(str(s))
        cells.append(f"{trip * 1e6:,.0f}" if trip is not None else "-")
        print(f"| {s:,} | " + " | ".join(cells) + " |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"calls": args.calls, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
