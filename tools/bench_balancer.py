"""The balancer on a 4-layer DBN whose layer 2 is the clear bottleneck, on 4 to 8 ranks.

Run from the repository root::

    python -m tools.bench_balancer [--ranks 5 6 8] [--epochs 12] [--write-docs]

Layer 2 sleeps ``--sleep`` seconds per micro-batch (the config's ``straggler``: a stand-in for a
slower device that costs no CPU, so 8 ranks fit on 2 cores). Every layer trains on every
micro-batch (``offset_epochs=0``): the same work in every run. One thread per process.

1. *costs*: each layer's standalone CD step time (in this process), layer 2's plus the sleep;
2. *one rank per layer* (4 ranks): the whole run's samples/s;
3. for each ``--ranks`` N: the exact planner on those costs gives a plan and its predicted
   samples/s (``batch / bottleneck``); the run with that plan gives the measured samples/s;
   the ideal is ``batch * N / sum(costs)`` (total work spread evenly over the ranks);
4. *re-planning*: N ranks, one rank per layer and the rest idle, the straggler starting at
   micro-batch ``--onset`` and ``balancer.replan`` on: the time from the straggler's first sleep
   to the re-plan decision, and the pipeline's input rate (stage 0's samples/s) before and after.

Results go to ``tools/out/bench_balancer.json`` and a table to stdout; ``--write-docs`` replaces
the balancer section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported
os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from pipedbn.balancer import Plan, evaluate, one_per_layer, solve  # noqa: E402
from pipedbn.balancer.runtime import problem_for  # noqa: E402
from pipedbn.config import Config, load_config, resolve_defaults  # noqa: E402
from tools import benchrun  # noqa: E402
from tools.bench_pipeline import standalone  # noqa: E402
from tools.benchdocs import publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny.yaml"


# tiny.yaml monitors densely (for the tests); a speed benchmark runs the product's defaults
DEFAULT_MONITOR = ["monitor.scalars_every=50", "monitor.eval_every=100",
                   "monitor.histograms_every=500", "monitor.images_every=1000"]


def overrides(args: argparse.Namespace) -> list[str]:
    return ["layers=[48,40,32,16]", f"rbm.epochs={args.epochs}", "train.offset_epochs=0",
            "straggler.layer=2", f"straggler.sleep_s={args.sleep}", "balancer.max_replicas=null",
            *DEFAULT_MONITOR]


def config(args: argparse.Namespace, *extra: str) -> Config:
    return resolve_defaults(load_config(CONFIG, [*overrides(args), *extra]))


def train(run_dir: Path, nproc: int, args: argparse.Namespace, *extra: str
          ) -> dict[str, Any]:
    return benchrun.train(CONFIG, run_dir, nproc, [*overrides(args), *extra])


def input_rate(metrics: list[dict[str, Any]], ranks: set[int], t0: float, t1: float) -> float:
    """Samples/s entering the pipeline between wall times t0 and t1 (stage 0's intervals)."""
    total = 0.0
    for rank in ranks:
        rates = [r["value"] for r in metrics if r["tag"] == "throughput/samples_per_s"
                 and r["stage"] == rank and r["layer"] == 0 and t0 <= r["wall_time"] <= t1]
        total += statistics.median(rates) if rates else 0.0
    return total


def replan_run(tmp: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    r = train(tmp / f"replan-{n}", n, args, "balancer.plan=0|1|2|3", "balancer.replan=true",
              f"straggler.after={args.onset}", "balancer.check_every=20",
              "monitor.scalars_every=10")  # input rates at a finer grain
    m = r.pop("metrics")
    onset = min(x["wall_time"] for x in m if x["tag"] == "straggler/onset")
    replans = [x for x in m if x["tag"] == "balancer/replan" and x["wall_time"] > onset]
    if not replans:
        return {"command": r["command"], "replanned": False}
    first = replans[0]
    plans = [x for x in m if x["tag"] == "balancer/plan"]
    end = max(x["wall_time"] for x in m)
    new = next(x for x in plans if x["step"] == first["data"]["at"])
    stage0 = set(Plan.parse(new["data"]["spec"], n, 4).stages[0].ranks)
    settle = 0.3
    return {
        "command": r["command"], "replanned": True, "at": first["data"]["at"],
        "onset_to_replan_s": first["wall_time"] - onset,
        "before_samples_per_s": input_rate(m, {0}, onset + settle, first["wall_time"]),
        "after_samples_per_s": input_rate(m, stage0, first["wall_time"] + settle, end),
        "new_plan": first["data"]["to"], "whole_run_samples_per_s": r["samples_per_s"],
    }


SYNCS = {"all-reduce (bsp)": ["balancer.sync=bsp"],
         "all-reduce, delayed (bsp_delayed)": ["balancer.sync=bsp_delayed"],
         "point to point (ssp, staleness 0)": ["balancer.sync=ssp", "balancer.staleness=0"]}
"""The replica syncs compared side by side; ``ssp`` with staleness 0 is BSP on point-to-point
messages, the all-to-all ``bsp`` was before it became one all-reduce."""


def sync_compare(tmp: Path, ranks: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every layer on all ``n`` ranks (``0-3xn``: pure data parallelism, so each tick syncs
    the whole model), each sync of ``SYNCS``: samples/s, and per replica per tick the
    messages and bytes the engine handed to its sends or collectives (``stages.json``)."""
    rows: list[dict[str, Any]] = []
    for n in ranks:
        for label, extra in SYNCS.items():
            r = train(tmp / f"sync-{n}-{len(rows)}", n, args, f"balancer.plan=0-3x{n}", *extra)
            r.pop("metrics")
            reps = [s for s in r.pop("stages") if s["sync_ticks"]]
            ticks = statistics.mean(s["sync_ticks"] for s in reps)
            rows.append({"ranks": n, "sync": label, "command": r["command"],
                         "samples_per_s": r["samples_per_s"], "ticks": ticks,
                         "messages_per_tick": statistics.mean(
                             s["sync_messages"] / s["sync_ticks"] for s in reps),
                         "bytes_per_tick": statistics.mean(
                             s["sync_bytes"] / s["sync_ticks"] for s in reps)})
            print(rows[-1], flush=True)
    return rows


def run(ranks: list[int], epochs: float = 12, sleep: float = 0.02, onset: int = 100
        ) -> dict[str, Any]:
    """Every measurement of this tool, in one go; the results as a dict."""
    args = argparse.Namespace(ranks=ranks, epochs=epochs, sleep=sleep, onset=onset)
    cfg = config(args)
    costs = standalone(cfg, steps=200)
    costs[2] += sleep
    batch = cfg.train.batch_size
    results: dict[str, Any] = {"date": str(date.today()), "costs_s": costs,
                               "machine": f"{os.cpu_count()} cores, torch {torch.__version__}",
                               "args": vars(args)}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base = train(tmp / "one", 4, args, "balancer.plan=0|1|2|3")
        base.pop("metrics")
        base["predicted_samples_per_s"] = batch / max(
            evaluate(problem_for(cfg, 64, 4, costs), one_per_layer(4)))
        results["one_per_layer"] = base
        rows = []
        for n in ranks:
            sol = solve(problem_for(cfg, 64, n, costs))
            r = train(tmp / f"plan-{n}", n, args, f"balancer.plan={sol.plan.spec()}")
            r.pop("metrics")
            rows.append({"ranks": n, "plan": sol.plan.describe(), "spec": sol.plan.spec(),
                         "predicted_samples_per_s": sol.samples_per_s(batch),
                         "ideal_samples_per_s": batch * n / sum(costs), **r})
        results["balanced"] = rows
        # the same plan on the most ranks with a cheaper sync: what the plan allows
        n, spec = rows[-1]["ranks"], rows[-1]["spec"]
        variants: list[dict[str, Any]] = []
        for label, extra in (("bsp, sync_every=4", ["balancer.sync_every=4"]),
                             ("ssp, staleness 2", ["balancer.sync=ssp", "balancer.staleness=2"])):
            r = train(tmp / f"variant-{len(variants)}", n, args, f"balancer.plan={spec}", *extra)
            r.pop("metrics")
            variants.append({"ranks": n, "spec": spec, "sync": label,
                             "ideal_samples_per_s": batch * n / sum(costs), **r})
        results["sync_variants"] = variants
        results["sync"] = sync_compare(tmp, [2, 3, 5], args)
        results["replan"] = replan_run(tmp, max(ranks), args)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[5, 6, 8])
    ap.add_argument("--epochs", type=float, default=12)
    ap.add_argument("--sleep", type=float, default=0.02)
    ap.add_argument("--onset", type=int, default=100)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--sync-ranks", type=int, nargs="+", default=[2, 3, 5],
                    help="world sizes of the side-by-side sync comparison")
    ap.add_argument("--only-sync", action="store_true",
                    help="run only the sync comparison (results to bench_sync.json)")
    args = ap.parse_args()
    if args.only_sync:
        with tempfile.TemporaryDirectory() as d:
            rows = sync_compare(Path(d), args.sync_ranks, args)
        result = {"date": str(date.today()), "args": vars(args), "sync": rows,
                  "machine": f"{os.cpu_count()} cores, torch {torch.__version__}"}
        publish(result, ROOT / "tools" / "out" / "bench_sync.json", sync_report(result),
                "bench_sync" if args.write_docs else None)
        return
    results = run(args.ranks, args.epochs, args.sleep, args.onset)
    publish(results, ROOT / "tools" / "out" / "bench_balancer.json", report(results),
            "bench_balancer" if args.write_docs else None)


def sync_report(r: dict[str, Any]) -> str:
    a = argparse.Namespace(**r["args"])
    lines = [f"Measured {r['date']} on {r['machine']}, one thread per process: "
             f"`python -m tools.bench_balancer --only-sync --sync-ranks "
             f"{' '.join(map(str, a.sync_ranks))} --epochs {a.epochs:g} --sleep {a.sleep:g}`.",
             "", "| ranks | sync | samples/s | messages per replica per tick "
             "| bytes per replica per tick |", "|---|---|---|---|---|"]
    for row in r["sync"]:
        lines.append(f"| {row['ranks']} | {row['sync']} | {row['samples_per_s']:,.0f} | "
                     f"{row['messages_per_tick']:.2f} | {row['bytes_per_tick']:,.0f} |")
    return "\n".join(lines)


def report(r: dict[str, Any]) -> str:
    args = argparse.Namespace(**r["args"])
    one = r["one_per_layer"]
    lines = [
        f"Measured {r['date']} on {r['machine']}, one thread per process: "
        f"`python -m tools.bench_balancer --ranks {' '.join(map(str, args.ranks))} "
        f"--epochs {args.epochs:g} --sleep {args.sleep:g} --onset {args.onset}`.",
        "",
        f"4-layer DBN 64-48-40-32-16 on digits, batch 50, every layer on every micro-batch, "
        "monitoring at its default intervals; "
        f"layer 2 sleeps {args.sleep * 1e3:g} ms per micro-batch (a slower device). Step costs "
        "(ms): " + ", ".join(f"{c * 1e3:.2f}" for c in r["costs_s"]) + ".",
        "",
        "| ranks | plan | predicted samples/s | measured | measured / predicted "
        "| vs one rank per layer | ideal (work / ranks) | measured / ideal |",
        "|---|---|---|---|---|---|---|---|",
        f"| 4 | one rank per layer | {one['predicted_samples_per_s']:,.0f} | "
        f"{one['samples_per_s']:,.0f} | {one['samples_per_s'] / one['predicted_samples_per_s']:.2f}"
        " | 1.00x | | |",
    ]
    for row in r["balanced"]:
        lines.append(
            f"| {row['ranks']} | `{row['spec']}` | {row['predicted_samples_per_s']:,.0f} | "
            f"{row['samples_per_s']:,.0f} | "
            f"{row['samples_per_s'] / row['predicted_samples_per_s']:.2f} | "
            f"{row['samples_per_s'] / one['samples_per_s']:.2f}x | "
            f"{row['ideal_samples_per_s']:,.0f} | "
            f"{row['samples_per_s'] / row['ideal_samples_per_s']:.2f} |")
    if r.get("sync_variants"):
        lines += ["", "The same plan with a cheaper sync (`balancer.sync`, `balancer.sync_every`):",
                  "", "| ranks | plan | sync | measured | ideal | measured / ideal |",
                  "|---|---|---|---|---|---|"]
        for v in r["sync_variants"]:
            lines.append(f"| {v['ranks']} | `{v['spec']}` | {v['sync']} | "
                         f"{v['samples_per_s']:,.0f} | {v['ideal_samples_per_s']:,.0f} | "
                         f"{v['samples_per_s'] / v['ideal_samples_per_s']:.2f} |")
    if r.get("sync"):
        lines += ["", "Replica syncs side by side (every layer on every rank):", "",
                  *sync_report({**r, "args": {**r["args"], "sync_ranks": [2, 3, 5]}}
                               ).splitlines()[2:]]
    rp = r["replan"]
    lines.append("")
    if rp.get("replanned"):
        lines.append(
            f"Re-planning on {max(args.ranks)} ranks (start: one rank per layer, the rest idle; "
            f"the straggler starts at micro-batch {args.onset}): re-planned at micro-batch "
            f"{rp['at']}, {rp['onset_to_replan_s']:.2f} s after the straggler's first sleep, to "
            f"`{rp['new_plan']}`; input rate {rp['before_samples_per_s']:,.0f} samples/s before, "
            f"{rp['after_samples_per_s']:,.0f} after "
            f"({rp['after_samples_per_s'] / max(rp['before_samples_per_s'], 1e-9):.2f}x).")
    else:
        lines.append("Re-planning: no re-plan happened (see tools/out/bench_balancer.json).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
