"""What ``bsp_delayed`` costs in quality against ``bsp`` and against no replicas, at equal updates.

Run from the repository root::

    python -m tools.bench_sync_quality [--seeds 0 1 2] [--epochs 10]

``configs/tiny.yaml`` (64-32-24-16 on digits, CD-1) with its default momentum (Hinton's: 0.5,
then 0.9 after 5 epochs) and ``--epochs`` epochs per layer, for every seed:

* ``none``: ``balancer.plan=0|1-2`` (2 processes, no replicas);
* ``bsp``: ``balancer.plan=0x2|1-2`` (layer 0 on two replicas, one all-reduce per micro-batch);
* ``bsp_delayed``: the same plan, each all-reduce applied one round late.

Every run makes the same updates (every micro-batch trains every layer once). The final states
are measured as ``pipedbn eval`` would (``tools.bench_quality.measure``): the linear-probe
accuracy on the top layer's features and layer 0's held-out reconstruction error (the
replicated layer). Results go to ``tools/out/bench_sync_quality.json`` and a table to stdout.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from tools import benchrun  # noqa: E402
from tools.bench_quality import measure  # noqa: E402
from tools.benchdocs import publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny.yaml"
RUNS = {
    "none": ["balancer.plan=0|1-2"],
    "bsp": ["balancer.plan=0x2|1-2", "balancer.sync=bsp"],
    "bsp_delayed": ["balancer.plan=0x2|1-2", "balancer.sync=bsp_delayed"],
}


def run(seeds: list[int], epochs: float) -> dict[str, Any]:
    common = [f"rbm.epochs={epochs}", "monitor.enabled=false"]  # CD's momentum: 0.5, then 0.9
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        for seed in seeds:
            for name, extra in RUNS.items():
                run_dir = Path(d) / f"{name}-{seed}"
                r = benchrun.train(CONFIG, run_dir, 2 if name == "none" else 3,
                                   [f"seed={seed}", *common, *extra])
                q = measure(str(run_dir), "final", 0)
                rows.append({"sync": name, "seed": seed, "command": r["command"],
                             "probe_accuracy": q["probe_accuracy"],
                             "recon_error": q["recon_error"]})
                print(json.dumps(rows[-1]), flush=True)
    return {"seeds": seeds, "epochs": epochs, "rows": rows}


def report(result: dict[str, Any]) -> str:
    lines = ["| sync | probe accuracy (mean, min-max) | layer 0 recon error (mean, min-max) |",
             "|---|---|---|"]
    for name in RUNS:
        rows = [r for r in result["rows"] if r["sync"] == name]
        acc = [r["probe_accuracy"] for r in rows]
        rec = [r["recon_error"] for r in rows]
        lines.append(f"| {name} | {statistics.mean(acc):.3f} ({min(acc):.3f}-{max(acc):.3f}) | "
                     f"{statistics.mean(rec):.3f} ({min(rec):.3f}-{max(rec):.3f}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=float, default=10)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    result = run(args.seeds, args.epochs)
    publish(result, ROOT / "tools" / "out" / "bench_sync_quality.json", report(result),
            "bench_sync_quality" if args.write_docs else None)


if __name__ == "__main__":
    main()
