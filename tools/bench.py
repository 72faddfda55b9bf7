"""Every figure of DESIGN §8 in one invocation, side by side, one thread per process.

Run from the repository root (``pip install -e '.[bench]'`` first for the learnergy peer)::

    python -m tools.bench --write-docs              # about 12 minutes on 2 cores
    python -m tools.bench --only peers pipeline     # some sections only
    python -m tools.bench --quick                   # shorter runs, for a first look

Sections, each a tool of its own under ``tools/`` that this one drives:

- ``peers`` (bench_peers.py, with bench_step.py's setting): one RBM layer's CD-1 step against
  the matrix products of the same shapes, and against a minimal PyTorch loop, scikit-learn's
  BernoulliRBM and learnergy on the same data and micro-batches;
- ``pipeline`` (bench_pipeline.py): the quickstart pipeline against 1 / (slowest stage) and
  total work / ranks; in-process, sequential greedy and ``torch.distributed.pipelining``'s
  GPipe on the same work;
- ``balancer`` (bench_balancer.py): a straggler layer on spare ranks, against the plan's
  prediction and the ideal (total work / ranks);
- ``quality`` (bench_quality.py): wall time for streaming and greedy to reach the same
  linear-probe accuracy and layer-0 reconstruction error;
- ``simulate`` (simvalidate.py): the discrete-event simulator's predictions against measured runs;
- ``threads`` (bench_threads.py): the default ``pipedbn train`` (threads and processes chosen
  for the machine) against in-process with 2 threads, 2 and 3 processes and scikit-learn's
  BernoulliRBM stack, and the threads planner's prediction against the measured rate.

Results go to ``tools/out/bench.json``; ``--write-docs`` rewrites the generated sections of
``docs/benchmarks.md`` (between ``<!-- bench_*:begin/end -->`` markers) and the plots under
``docs/img/``. Each goal's measured ratio is summarised at the top of the page.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported
os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
from tools import (  # noqa: E402
    bench_balancer,
    bench_peers,
    bench_pipeline,
    bench_quality,
    bench_step,
    bench_threads,
    simvalidate,
)
from tools.benchdocs import save_figure, write_section  # noqa: E402

SECTIONS = ("peers", "pipeline", "balancer", "quality", "simulate", "threads")
IMG = ROOT / "docs" / "img"


def settings(quick: bool) -> dict[str, dict[str, Any]]:
    """Each section's arguments; ``quick`` shortens every run (figures are then rougher)."""
    if quick:
        return {"peers": {"rounds": 3, "steps": 30},
                "pipeline": {"epochs": 5, "microbatches": 8, "steps": 30},
                "balancer": {"ranks": [5, 8], "epochs": 12},
                "quality": {"epochs": 3, "seeds": [0]}, "simulate": {"epochs": 1},
                "threads": {"epochs": 5, "rounds": 1}}
    return {"peers": {"rounds": 7, "steps": 200},
            "pipeline": {"epochs": 20, "microbatches": 8, "steps": 100},
            "balancer": {"ranks": [2, 3, 5, 8], "epochs": 36},
            "quality": {"epochs": 10, "seeds": [0, 1]}, "simulate": {"epochs": 3},
            "threads": {"epochs": 20, "rounds": 3}}


RUNNERS: dict[str, Callable[..., Any]] = {
    "peers": bench_peers.run, "pipeline": bench_pipeline.run,
    "balancer": bench_balancer.run, "quality": bench_quality.run, "simulate": simvalidate.validate,
    "threads": bench_threads.measure,
}


PEERS = {"minimal": "a minimal PyTorch CD-1 loop", "sklearn": "scikit-learn BernoulliRBM",
         "learnergy": "learnergy (`fit`)", "learnergy_core": "learnergy (its update alone)"}


def goals(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per goal of DESIGN §8 that the sections present in ``r`` measure."""
    rows: list[dict[str, Any]] = []

    def add(goal: str, measured: float, target: float, how: str, higher: bool = True) -> None:
        met = measured >= target if higher else measured <= target
        rows.append({"goal": goal, "measured": measured, "target": target, "met": met,
                     "how": how, "higher": higher})

    if "peers" in r:
        res = r["peers"]["results"]
        add("CD-1 step / matrix-product rate, same shapes", res["pipedbn"]["ratio_to_gemm"],
            0.85, "peers")
        for name in ("minimal", "sklearn", "learnergy", "learnergy_core"):
            if name in res:
                add(f"one layer: faster than {PEERS[name]}", res[name]["pipedbn_speedup"], 1.0,
                    "peers")
    if "threads" in r:
        t = r["threads"]
        add("default train / fastest of in-process 2 threads, 2 and 3 processes (wall)",
            t["default_vs_fastest_fixed"], 0.95, "threads")
        add("default train faster than scikit-learn's BernoulliRBM stack",
            t["default_vs_sklearn"], 1.0, "threads")
        if t["predicted_over_measured"] is not None:
            add("threads planner: |predicted / measured samples/s - 1|",
                abs(t["predicted_over_measured"] - 1), 0.15, "threads", higher=False)
    if "pipeline" in r:
        p = r["pipeline"]
        last = p["pipeline"]["stages"][-1]
        add("bottleneck stage busy (3 ranks on 2 cores)", last["busy_frac"], 0.95,
            "pipeline, last stage")
        add("bottleneck stage busy (2 ranks, one per core)",
            p["two_ranks"]["stages"][-1]["busy_frac"], 0.95, "pipeline `0-1|2`")
        add("end-to-end / (batch / slowest standalone step), 3 ranks on 2 cores",
            p["steady_ratio"], 0.9, "pipeline")
        add("end-to-end / (batch / slowest step in the run), 3 ranks on 2 cores",
            p["steady_ratio_in_situ"], 0.9, "pipeline")
        add("end-to-end / (batch / slowest standalone stage), 2 ranks, one per core",
            p["two_ranks_ratio"], 0.9, "pipeline `0-1|2`")
        add("faster than torch.distributed.pipelining GPipe (forward only), same work",
            p["same_work_pipeline"]["samples_per_s"] / p["same_work_gpipe"]["samples_per_s"],
            1.0, "pipeline")
        add("faster than sequential greedy in one process (training time)",
            p["greedy_in_process"]["training_s"] / p["pipeline"]["training_s"], 1.0,
            "pipeline")
        add("faster than the in-process trainer, 1 thread (training time)",
            p["in_process_1_thread"]["training_s"] / p["pipeline"]["training_s"], 1.0,
            "pipeline")
    if "balancer" in r:
        for row in r["balancer"]["balanced"]:
            add(f"balancer, {row['ranks']} ranks: measured / ideal (work / ranks)",
                row["samples_per_s"] / row["ideal_samples_per_s"], 0.9, "balancer")
        for v in r["balancer"].get("sync_variants", []):
            add(f"balancer, {v['ranks']} ranks, {v['sync']}: measured / ideal",
                v["samples_per_s"] / v["ideal_samples_per_s"], 0.9, "balancer")
    if "quality" in r:
        times = r["quality"]["time_to_target"]
        for metric, label in (("probe_accuracy", "linear-probe accuracy"),
                              ("recon_error", "layer-0 reconstruction error")):
            for seed in r["quality"]["settings"]["seeds"]:
                stream = times[metric].get(f"streaming, 3 processes, seed {seed}")
                greedy = times[metric].get(f"greedy, 1 process, seed {seed}")
                if stream and greedy:
                    add(f"time to the same {label}: sequential greedy / streaming, seed {seed}",
                        greedy / stream, 1.0, "quality")
    if "simulate" in r:
        cores = r.get("machine", {}).get("cores") or os.cpu_count() or 1
        fit = [abs(x["ratio"] - 1) for x in r["simulate"] if x["ranks"] <= cores + 1]
        if fit:
            add(f"simulator: worst deviation from measured, {cores + 1} ranks or fewer",
                max(fit), 0.10, "simulate", higher=False)
        add("simulator: worst deviation from measured, every case",
            max(abs(x["ratio"] - 1) for x in r["simulate"]), 0.10, "simulate", higher=False)
    return rows


def goals_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| goal | measured | target | met |", "| --- | --- | --- | --- |"]
    for g in rows:
        sign = ">=" if g["higher"] else "<="
        lines.append(f"| {g['goal']} | {g['measured']:.3f} | {sign} {g['target']:g} | "
                     f"{'yes' if g['met'] else '**no**'} |")
    return "\n".join(lines)


def machine_text(r: dict[str, Any], argv: list[str]) -> str:
    m = bench_step.machine()
    return "\n".join([
        f"Measured {r['date']} by `{' '.join(['python -m tools.bench', *argv])}` "
        f"({r['seconds'] / 60:.0f} minutes) on: {m['cpu']}, {m['cores']} cores, "
        f"{m['platform']}, Python {m['python']}, torch {m['torch']} "
        f"({m['cpu_capability']}, MKL {'on' if m['mkl'] else 'off'}), one thread per process.",
        "Raw results: `tools/out/bench.json`.",
    ])


def plots(r: dict[str, Any]) -> dict[str, Path]:
    """PNG plots of the sections in ``r``; returns their paths by section."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    if "peers" in r:
        out["peers"] = IMG / "bench-peers.png"
        bench_peers.plot(r["peers"], out["peers"])
    if "quality" in r:
        out["quality"] = IMG / "bench-quality.png"
        bench_quality.plot(r["quality"], out["quality"])
    if "pipeline" in r:
        p = r["pipeline"]
        names = ["pipeline\n3 ranks", "pipeline\n2 ranks", "in-process\n1 thread",
                 "in-process\n2 threads", "greedy\n1 process"]
        keys = ["pipeline", "two_ranks", "in_process_1_thread", "in_process_2_threads",
                "greedy_in_process"]
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.bar(names, [p[k]["training_s"] for k in keys], color="tab:blue")
        ax.set_ylabel("training seconds (lower is better)")
        ax.set_title(f"Quickstart DBN, {p['epochs']:g} epochs per layer, same updates")
        out["pipeline"] = save_figure(fig, IMG / "bench-pipeline.png")
    if "balancer" in r:
        b = r["balancer"]
        ranks = [4] + [row["ranks"] for row in b["balanced"]]
        rows = [b["one_per_layer"]] + b["balanced"]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot(ranks, [x["samples_per_s"] for x in rows], "o-", label="measured")
        ax.plot(ranks, [x["predicted_samples_per_s"] for x in rows], "s--", label="plan predicts")
        ax.plot(ranks[1:], [x["ideal_samples_per_s"] for x in b["balanced"]], "^:",
                label="ideal (work / ranks)")
        ax.set_xlabel("ranks")
        ax.set_ylabel("samples/s")
        ax.set_title("Balancer: a 20 ms straggler layer on spare ranks")
        ax.legend()
        out["balancer"] = save_figure(fig, IMG / "bench-balancer.png")
    if "simulate" in r:
        rows = r["simulate"]
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        meas = [x["measured"] for x in rows]
        pred = [x["predicted"] for x in rows]
        top = max(meas + pred) * 1.1
        ax.fill_between([0, top], [0, 0.9 * top], [0, 1.1 * top], color="0.9", label="±10%")
        ax.plot([0, top], [0, top], "k-", lw=0.8)
        ax.scatter(meas, pred, zorder=3)
        for x in rows:
            ax.annotate(f"{x['case']} ({x['ranks']})", (x["measured"], x["predicted"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("measured samples/s")
        ax.set_ylabel("simulated samples/s")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.legend(loc="upper left")
        out["simulate"] = save_figure(fig, IMG / "bench-simulate.png")
    return out


def reports(r: dict[str, Any]) -> dict[str, str]:
    """The markdown of each section in ``r``."""
    texts = {}
    if "peers" in r:
        texts["peers"] = bench_peers.report(r["peers"])
    if "pipeline" in r:
        texts["pipeline"] = bench_pipeline.report(r["pipeline"])
    if "balancer" in r:
        texts["balancer"] = bench_balancer.report(r["balancer"])
    if "quality" in r:
        texts["quality"] = bench_quality.report(r["quality"])
    if "threads" in r:
        texts["threads"] = bench_threads.table(r["threads"])
    if "simulate" in r:
        scale = r.get("settings", {}).get("simulate", {}).get("epochs", 1)
        texts["simulate"] = simvalidate.section(r["simulate"], scale)
    # the page has its own headings; a section tool's own goes
    return {k: t.split("\n", 1)[1].lstrip("\n") if t.startswith("## ") else t
            for k, t in texts.items()}


def measure(only: list[str], conf: dict[str, dict[str, Any]], argv: list[str]
            ) -> dict[str, Any]:
    """Run the sections ``only`` one after another; every result in one dict."""
    t0 = time.perf_counter()
    r: dict[str, Any] = {"date": date.today().isoformat(), "argv": argv,
                         "machine": bench_step.machine(), "settings": conf}
    for name in only:
        print(f"[bench] {name} ...", flush=True)
        t = time.perf_counter()
        r[name] = RUNNERS[name](**conf[name])
        print(f"[bench] {name}: {time.perf_counter() - t:.0f} s", flush=True)
    r["seconds"] = time.perf_counter() - t0
    return r


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--quick", action="store_true", help="shorter runs (rougher figures)")
    ap.add_argument("--json", type=Path, default=ROOT / "tools" / "out" / "bench.json")
    ap.add_argument("--from-json", type=Path,
                    help="measure nothing: render the results of an earlier run (its JSON)")
    ap.add_argument("--write-docs", action="store_true",
                    help="rewrite the generated sections of docs/benchmarks.md and its plots")
    args = ap.parse_args(argv)
    if args.from_json:
        try:
            r = json.loads(args.from_json.read_text())
        except (OSError, ValueError) as e:
            ap.error(f"--from-json {args.from_json}: {e}")
        args.only = [name for name in SECTIONS if name in r]
        argv = r["argv"]
    else:
        r = measure(args.only, settings(args.quick), argv)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=1, default=str) + "\n")
    r["goals"] = goals(r)
    texts = reports(r)
    for name, text in texts.items():
        print(f"\n## {name}\n\n{text}")
    print("\n" + goals_table(r["goals"]))
    if not args.from_json:
        print(f"wrote {args.json}")
    if args.write_docs:
        images = plots(r)
        for name, text in texts.items():
            if name in images:
                rel = images[name].relative_to(ROOT / "docs")
                text += f"\n\n![{name}]({rel})"
            write_section(f"bench_{name}", text)
        if set(args.only) == set(SECTIONS):  # a partial run would leave others' goals stale
            write_section("bench_summary", machine_text(r, argv) + "\n\n"
                          + goals_table(r["goals"]))


if __name__ == "__main__":
    main()
