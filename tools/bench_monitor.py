"""What monitoring costs: the same run with monitoring at its default intervals and with it off.

    python -m tools.bench_monitor [--config configs/quickstart.yaml] [--pairs 2] [--write-docs]

Each pair runs the config twice on local processes, once with the defaults (metrics.jsonl,
TensorBoard scalars, held-out probes, images, histograms, the progress display) and once with
``monitor.enabled=false``, alternating which goes first. The figure is the end-to-end
samples/s (``throughput/end_to_end_samples_per_s``) with monitoring over without, per pair; the
goal is >= 0.97. Results go to tools/out/bench_monitor.json and, with --write-docs, to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from tools import benchrun
from tools.benchdocs import publish

ROOT = Path(__file__).resolve().parents[1]


def run(config: str, run_dir: Path, extra: list[str]) -> dict[str, Any]:
    r = benchrun.train(ROOT / config, run_dir, None, extra, timeout=3600)
    tb = sum(f.stat().st_size for f in (run_dir / "tb").rglob("*") if f.is_file()) \
        if (run_dir / "tb").exists() else 0
    return {"samples_per_s": r["samples_per_s"], "wall_s": r["wall_s"],
            "metrics_lines": len(r["metrics"]), "tensorboard_bytes": tb}


def compare(config: str, n: int, overrides: list[str], off: list[str],
            measure: Callable[[Path, dict[str, Any]], None] | None = None
            ) -> list[dict[str, Any]]:
    """``n`` pairs of runs of ``config``: one as given ("on") and one with the ``off``
    overrides, alternating which goes first (these machines are noisy). ``measure(run_dir,
    record)`` may add figures of its own to a run's record before its directory goes."""
    pairs = []
    with tempfile.TemporaryDirectory() as d:
        for p in range(n):
            order = (True, False) if p % 2 == 0 else (False, True)
            got = {}
            for on in order:
                run_dir = Path(d) / f"{p}-{on}"
                got[on] = run(config, run_dir, overrides + ([] if on else off))
                if measure is not None:
                    measure(run_dir, got[on])
            pairs.append({"on": got[True], "off": got[False],
                          "ratio": got[True]["samples_per_s"] / got[False]["samples_per_s"]})
            print(f"pair {p + 1}: on {got[True]['samples_per_s']:,.0f} samples/s, off "
                  f"{got[False]['samples_per_s']:,.0f}, ratio {pairs[-1]['ratio']:.3f}",
                  file=sys.stderr)
    return pairs


def overhead(config: str, n: int, overrides: list[str], off: list[str],
             measure: Callable[[Path, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """``compare``'s pairs with the run's settings and the median on / off ratio."""
    pairs = compare(config, n, overrides, off, measure)
    return {"date": str(date.today()), "machine": f"{os.cpu_count()} cores",
            "config": config, "overrides": overrides, "pairs": pairs,
            "median_ratio": statistics.median(p["ratio"] for p in pairs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("overrides", nargs="*", help="config overrides for both runs")
    args = ap.parse_args()
    result = overhead(args.config, args.pairs, args.overrides, ["monitor.enabled=false"])
    publish(result, ROOT / "tools" / "out" / "bench_monitor.json", report(result),
            "bench_monitor" if args.write_docs else None)


def report(r: dict[str, Any]) -> str:
    cmd = " ".join(["python -m tools.bench_monitor --config", r["config"],
                    f"--pairs {len(r['pairs'])}", *r["overrides"]])
    lines = [f"Measured {r['date']} on {r['machine']}, one thread per process: `{cmd}`.", "",
             "| pair | monitoring on (samples/s) | off | on / off | metrics.jsonl lines | "
             "TensorBoard bytes |", "|---|---|---|---|---|---|"]
    for i, p in enumerate(r["pairs"], 1):
        lines.append(f"| {i} | {p['on']['samples_per_s']:,.0f} | {p['off']['samples_per_s']:,.0f}"
                     f" | {p['ratio']:.3f} | {p['on']['metrics_lines']:,} (off: "
                     f"{p['off']['metrics_lines']}) | {p['on']['tensorboard_bytes']:,} |")
    lines += ["", f"Median on / off: **{r['median_ratio']:.3f}** (goal >= 0.97)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
