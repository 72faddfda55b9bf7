"""What checkpoints cost: the same run with checkpoints at the default interval and with only
the final state.

    python -m tools.bench_checkpoint [--config configs/quickstart.yaml] [--pairs 3] [--write-docs]

Each pair runs the config twice on local processes, once with the default ``checkpoint.every``
and once with ``checkpoint.every=0``, alternating which goes first (these machines are noisy).
The figure is the end-to-end samples/s with checkpoints over without, per pair; the goal is
>= 0.98. Results go to tools/out/bench_checkpoint.json and, with --write-docs, to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from tools.bench_monitor import ROOT, overhead
from tools.benchdocs import publish


def measure(run_dir: Path, record: dict[str, Any]) -> None:
    """Checkpoints kept, their bytes, and the largest share of a rank's time spent writing."""
    steps = [s for s in (run_dir / "checkpoints").iterdir() if s.name != "final"]
    record["checkpoints_kept"] = len(steps)
    record["checkpoint_bytes"] = sum(f.stat().st_size for s in steps for f in s.iterdir())
    stages = json.loads((run_dir / "stages.json").read_text())
    record["checkpoint_share"] = max(st["checkpoint_s"] / st["active_s"]
                                     for st in stages if st["active_s"] > 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("overrides", nargs="*", help="config overrides for both runs")
    args = ap.parse_args()
    result = overhead(args.config, args.pairs, args.overrides, ["checkpoint.every=0"], measure)
    publish(result, ROOT / "tools" / "out" / "bench_checkpoint.json", report(result),
            "checkpoints" if args.write_docs else None)


def report(r: dict[str, Any]) -> str:
    cmd = " ".join(["python -m tools.bench_checkpoint --config", r["config"],
                    f"--pairs {len(r['pairs'])}", *r["overrides"]])
    lines = [f"Measured {r['date']} on {r['machine']}, one thread per process: `{cmd}`.", "",
             "| pair | checkpoints (samples/s) | final only | ratio | checkpoints kept | "
             "bytes per checkpoint | writing, of the busiest rank's time |",
             "|---|---|---|---|---|---|---|"]
    for i, p in enumerate(r["pairs"], 1):
        on = p["on"]
        per = on["checkpoint_bytes"] / max(on["checkpoints_kept"], 1)
        lines.append(f"| {i} | {on['samples_per_s']:,.0f} | {p['off']['samples_per_s']:,.0f} | "
                     f"{p['ratio']:.3f} | {on['checkpoints_kept']} | {per:,.0f} | "
                     f"{on['checkpoint_share']:.2%} |")
    share = statistics.median(p["on"]["checkpoint_share"] for p in r["pairs"])
    lines += ["", f"Median ratio: **{r['median_ratio']:.3f}** (goal >= 0.98, i.e. <= 2% "
              f"overhead); the rank that spends most on checkpoints spends {share:.2%} of its "
              "active time writing them (median), a figure the machine's noise does not blur."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
