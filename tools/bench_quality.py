"""Time to quality: the ``streaming`` schedule against ``greedy``, on the quickstart DBN.

Run from the repository root::

    python -m tools.bench_quality [--epochs 10] [--seeds 0 1] [--json tools/out/bench_quality.json]
                                  [--plot tools/out/bench_quality.png]

For every seed, ``configs/quickstart.yaml`` (784-500-500-2000, CD-1, mnist5k) is trained three
times, one after another, one thread per process, with ``--epochs`` epochs per layer (equal
updates per layer in every run):

* ``streaming``, 3 processes (one per layer, all layers training at once);
* ``greedy``, 3 processes (layer i trains after layer i-1 has finished);
* ``greedy``, 1 process: classical sequential greedy (its weights equal the 3-process greedy
  run's bit for bit; the tool checks that from the checkpoints' checksums).

Each run takes a checkpoint every ``K = round(stream length / --points)`` micro-batches and
keeps them all. A checkpoint's *wall time* is when its last part was written (the ``wall_time``
of the ``layer-<i>.json`` files), counted from the run's *start*: the first ``rbm/*`` record in
``metrics.jsonl`` (layer 0's held-out probe on micro-batch 0, taken just before its first CD
update; data loading, process start-up and the initial evaluation come before it and are
reported apart, as ``startup_s``).

After the runs, untimed, every checkpoint is measured exactly as ``pipedbn eval`` would
(``evaluation.eval_inputs``: the run's held-out split, the same probe rows): the linear-probe
accuracy on the top layer's features, layer 0's held-out reconstruction error and its
pseudo-log-likelihood; the final states also get layer 0's AIS log-likelihood. Checkpoints with
the same checksums are measured once.

Time to quality: per seed, the target is the quality every run of that seed reaches at its end
(the lowest final probe accuracy, the highest final reconstruction error); each run's time is
the wall time of its first checkpoint at or past the target. Quality at equal updates compares
the final states of streaming and greedy per seed, against the seed-to-seed spread of each
schedule.
``run`` / ``report`` / ``plot`` are the API for ``tools/bench.py``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # before torch or numpy is imported

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from pipedbn.config import load_config, resolve_defaults  # noqa: E402
from pipedbn.data.loader import open_data  # noqa: E402
from pipedbn.eval.evaluation import (  # noqa: E402
    EvalOptions,
    eval_inputs,
    evaluate_dbn,
    linear_probe,
)
from pipedbn.model.dbn import Model, from_run  # noqa: E402
from pipedbn.pipeline.layers import make_schedule  # noqa: E402
from tools import benchrun  # noqa: E402
from tools.benchdocs import publish, save_figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "quickstart.yaml"
COMMAND = "python -m tools.bench_quality"
RUNS = (("streaming", 3), ("greedy", 3), ("greedy", 1))
"""(schedule, processes) of the runs made for every seed."""
METRICS = {  # name: (label, higher is better)
    "probe_accuracy": ("linear-probe accuracy (top layer)", True),
    "recon_error": ("layer-0 held-out reconstruction error", False),
    "pseudo_log_likelihood": ("layer-0 pseudo-log-likelihood", True),
    "log_likelihood": ("layer-0 log-likelihood (AIS)", True),
}
TARGETS = ("probe_accuracy", "recon_error")
"""The qualities timed (the others are compared at equal updates only)."""


# -- time to quality (pure) ------------------------------------------------------------------

def common_target(finals: Sequence[float], higher_is_better: bool) -> float:
    """The quality every run reaches at its end: the worst of the final values."""
    return min(finals) if higher_is_better else max(finals)


def first_reaching(times: Sequence[float], values: Sequence[float], target: float,
                   higher_is_better: bool) -> float | None:
    """The first time (in ``times`` order) at which the value is at or past ``target``, or None
    if it never is."""
    for t, v in sorted(zip(times, values, strict=True)):
        if (v >= target) if higher_is_better else (v <= target):
            return t
    return None


def time_to_quality(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    higher_is_better: bool) -> tuple[float, dict[str, float | None]]:
    """``curves``: run -> (wall times, values) in time order. The common target (from each
    curve's last value) and, per run, when it first reaches it."""
    target = common_target([values[-1] for _, values in curves.values()], higher_is_better)
    return target, {name: first_reaching(t, v, target, higher_is_better)
                    for name, (t, v) in curves.items()}


def equal_updates(finals: dict[str, dict[int, float]]) -> dict[str, Any]:
    """``finals``: schedule -> seed -> final value. streaming - greedy, per seed and its mean,
    against the seed noise: the largest seed-to-seed range of one schedule (None with one
    seed)."""
    seeds = sorted(set(finals["streaming"]) & set(finals["greedy"]))
    diffs = [finals["streaming"][s] - finals["greedy"][s] for s in seeds]
    spreads = [max(v.values()) - min(v.values()) for v in finals.values() if len(v) > 1]
    noise = max(spreads) if spreads else None
    mean = statistics.mean(diffs) if diffs else None
    return {"seeds": seeds, "differences": diffs, "mean_difference": mean, "seed_noise": noise,
            "within_noise": None if noise is None or mean is None else abs(mean) <= noise}


# -- training runs ---------------------------------------------------------------------------

def stream_length(epochs: float, schedule: str) -> int:
    cfg = resolve_defaults(load_config(CONFIG, [f"rbm.epochs={epochs}",
                                                f"train.schedule={schedule}"]))
    return make_schedule(cfg, open_data(cfg, unit_range=True).batches_per_epoch).length


def train(run_dir: Path, schedule: str, nproc: int, seed: int, epochs: float, every: int,
          timeout: float) -> dict[str, Any]:
    """One training run (a subprocess, one thread per process); what it took."""
    overrides = [f"seed={seed}", f"rbm.epochs={epochs}", f"train.schedule={schedule}",
                 f"checkpoint.every={every}", "checkpoint.keep=1000"]
    r = benchrun.train(CONFIG, run_dir, nproc, overrides, timeout=timeout)
    launch, process_s = r["launched_at"], r["wall_s"]
    start = run_start(run_dir / "metrics.jsonl")
    return {"name": f"{schedule}, {nproc} process{'es' if nproc > 1 else ''}",
            "schedule": schedule, "nproc": nproc, "seed": seed, "every": every,
            "command": r["command"],
            "run_dir": str(run_dir), "process_s": process_s, "startup_s": start - launch,
            "checkpoints": checkpoint_times(run_dir, start)}


def run_start(metrics_file: Path) -> float:
    """The wall time of the first ``rbm/*`` record: layer 0's probe on micro-batch 0, just
    before its first update (the earliest record of any kind if there is none)."""
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line]
    rbm = [r["wall_time"] for r in records if r["tag"].startswith("rbm/")]
    return min(rbm) if rbm else min(r["wall_time"] for r in records)


def checkpoint_times(run_dir: Path, start: float) -> list[dict[str, Any]]:
    """Every complete checkpoint, oldest first: tag, micro-batch, wall time since ``start``
    (its last part's) and the parts' checksums."""
    out = []
    for d in (run_dir / "checkpoints").iterdir():
        parts = sorted(d.glob("layer-*.json"))
        if not parts:
            continue
        metas = [json.loads(p.read_text()) for p in parts]
        out.append({"tag": d.name, "micro_batch": metas[0]["micro_batch"],
                    "t": max(m["wall_time"] for m in metas) - start,
                    "sha256": [m["sha256"] for m in sorted(metas, key=lambda m: m["layer"])]})
    return sorted(out, key=lambda c: c["micro_batch"])


# -- measuring checkpoints (untimed, in worker processes) ------------------------------------

@functools.cache
def _inputs(run_dir: str) -> tuple[Any, ...]:
    cfg = resolve_defaults(load_config(Path(run_dir) / "config.yaml"))
    data = open_data(cfg, unit_range=True)
    return eval_inputs(from_run(run_dir, "final"), data, EvalOptions().probe_samples)


def measure(run_dir: str, tag: str, ais_temperatures: int) -> dict[str, float]:
    """Probe accuracy on the top layer, layer 0's recon error and PLL (and, with
    ``ais_temperatures``, its AIS log-likelihood), as ``pipedbn eval`` reports them."""
    torch.set_num_threads(1)
    held, train_ref, probe_train, held_labels = _inputs(run_dir)
    dbn = from_run(run_dir, tag)
    layer0 = Model(dbn.kinds[:1], dbn.params[:1])
    opts = EvalOptions(ais=ais_temperatures > 0, ais_temperatures=max(1, ais_temperatures))
    row = evaluate_dbn(layer0, held, train_ref, opts=opts)["layers"][0]
    out = {k: row[k] for k in ("recon_error", "pseudo_log_likelihood", "log_likelihood")
           if k in row}
    if probe_train is not None and held_labels is not None:
        out["probe_accuracy"] = linear_probe(dbn.transform(probe_train[0]).double().numpy(),
                                             probe_train[1],
                                             dbn.transform(held).double().numpy(), held_labels)
    return out


def measure_all(runs: list[dict[str, Any]], jobs: int, ais_temperatures: int) -> int:
    """Fill in every checkpoint's qualities; checkpoints with equal checksums are measured once.
    Returns how many were measured."""
    unique: dict[tuple[str, ...], tuple[str, str, int]] = {}
    for run in runs:
        for ck in run["checkpoints"]:
            key = tuple(ck["sha256"]) + (str(ck["tag"] == "final"),)
            unique.setdefault(key, (run["run_dir"], ck["tag"],
                                    ais_temperatures if ck["tag"] == "final" else 0))
    keys = list(unique)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(measure, *unique[k]) for k in keys]
        values = {k: f.result() for k, f in zip(keys, futures, strict=True)}
    for run in runs:
        for ck in run["checkpoints"]:
            ck.update(values[tuple(ck["sha256"]) + (str(ck["tag"] == "final"),)])
    return len(keys)


# -- the benchmark ---------------------------------------------------------------------------

def run(epochs: float = 10, seeds: Sequence[int] = (0,), points: int = 20, jobs: int = 2,
        ais_temperatures: int = 3000, timeout: float = 1800,
        keep: Path | None = None) -> dict[str, Any]:
    """Train every run, measure every checkpoint and compute the targets, times to them and the
    equal-updates comparison. ``keep``: leave the run directories there (else a temporary
    directory, removed)."""
    lengths = {s: stream_length(epochs, s) for s in ("streaming", "greedy")}
    every = {s: max(1, round(n / points)) for s, n in lengths.items()}
    base = keep or Path(tempfile.mkdtemp(prefix="bench_quality-"))
    try:
        runs = []
        for seed in seeds:
            for schedule, nproc in RUNS:
                run_dir = base / f"{schedule}-{nproc}p-seed{seed}"
                shutil.rmtree(run_dir, ignore_errors=True)
                runs.append(train(run_dir, schedule, nproc, seed, epochs, every[schedule],
                                  timeout))
                print(f"trained {runs[-1]['name']}, seed {seed}: "
                      f"{runs[-1]['checkpoints'][-1]['t']:.1f} s", file=sys.stderr)
        t0 = time.perf_counter()
        measured = measure_all(runs, jobs, ais_temperatures)
        measure_s = time.perf_counter() - t0
    finally:
        if keep is None:
            shutil.rmtree(base, ignore_errors=True)
    result: dict[str, Any] = {
        "date": date.today().isoformat(),
        "settings": {"config": "configs/quickstart.yaml", "epochs": epochs,
                     "seeds": list(seeds), "points": points, "every": every,
                     "stream_length": lengths, "ais_temperatures": ais_temperatures,
                     "start": "first rbm/* record in metrics.jsonl (layer 0, micro-batch 0)"},
        "runs": runs, "measured_checkpoints": measured, "measure_s": measure_s,
    }
    result.update(summarize(runs))
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Targets (per seed: the runs of one seed race each other) and times to them, the
    equal-updates comparison, and whether greedy in one process and in three, and layer 0 in
    both schedules, gave the same checkpoints."""
    targets: dict[str, dict[str, float]] = {}
    times: dict[str, dict[str, float | None]] = {}
    for metric in TARGETS:
        for seed in sorted({r["seed"] for r in runs}):
            curves = {_key(r): ([c["t"] for c in r["checkpoints"]],
                                [c[metric] for c in r["checkpoints"]])
                      for r in runs if r["seed"] == seed and metric in r["checkpoints"][-1]}
            if curves:
                target, when = time_to_quality(curves, METRICS[metric][1])
                targets.setdefault(metric, {})[str(seed)] = target
                times.setdefault(metric, {}).update(when)
    finals: dict[str, dict[str, dict[int, float]]] = {}
    for r in runs:
        if r["nproc"] != 3:  # the 1-process greedy run has the 3-process one's weights
            continue
        for metric in METRICS:
            if metric in r["checkpoints"][-1]:
                finals.setdefault(metric, {}).setdefault(r["schedule"], {})[r["seed"]] = \
                    r["checkpoints"][-1][metric]
    compared = {m: equal_updates(f) for m, f in finals.items()
                if {"streaming", "greedy"} <= set(f)}
    greedy = {(r["seed"], r["nproc"]): [c["sha256"] for c in r["checkpoints"]]
              for r in runs if r["schedule"] == "greedy"}
    same = [greedy[(s, 1)] == greedy[(s, 3)] for s, n in greedy if n == 1 and (s, 3) in greedy]
    layer0 = {(r["seed"], r["schedule"]): r["checkpoints"][-1]["sha256"][0] for r in runs}
    same0 = [layer0[(s, "streaming")] == layer0[(s, "greedy")] for s, sch in layer0
             if sch == "streaming" and (s, "greedy") in layer0]
    return {"targets": targets, "time_to_target": times, "equal_updates": compared,
            "greedy_1p_equals_3p": all(same) if same else None,
            "layer0_same_in_both_schedules": all(same0) if same0 else None}


def _key(run: dict[str, Any]) -> str:
    return f"{run['name']}, seed {run['seed']}"


def _fmt(v: float | None, spec: str) -> str:
    return "never" if v is None else format(v, spec)


def report(result: dict[str, Any]) -> str:
    """The result as a markdown section."""
    s = result["settings"]
    seeds = " ".join(str(x) for x in s["seeds"])
    lines = [
        "## Time to quality: streaming against greedy",
        "",
        "```bash",
        f"{COMMAND} --epochs {s['epochs']:g} --seeds {seeds}",
        "```",
        "",
        f"Quickstart DBN (784-500-500-2000, CD-1, micro-batch 100, mnist5k), {s['epochs']:g} "
        f"epochs per layer in every run (equal updates), one thread per process, "
        f"{result['date']}. A checkpoint every {s['every']['streaming']} micro-batches "
        f"(streaming, stream of {s['stream_length']['streaming']}) or "
        f"{s['every']['greedy']} (greedy, stream of {s['stream_length']['greedy']}); its "
        "time is when its last part was written, from the run's start (layer 0's first "
        "micro-batch); qualities as `pipedbn eval` measures them, on the held-out split.",
        "",
    ]
    t, tt = result["targets"], result["time_to_target"]
    head = ["run", "seed", "start-up s", "training s"]
    if "probe_accuracy" in t:
        head.append("s to the probe target")
    if "recon_error" in t:
        head.append("s to the recon target")
    head += ["final probe acc", "final recon", "final PLL", "final log-lik (AIS)"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in result["runs"]:
        end = r["checkpoints"][-1]
        row = [r["name"], str(r["seed"]), f"{r['startup_s']:.1f}", f"{end['t']:.1f}"]
        row += [_fmt(tt[m][_key(r)], ".1f") for m in TARGETS if m in t]
        row += [_fmt(end.get("probe_accuracy"), ".4f"), _fmt(end.get("recon_error"), ".3f"),
                _fmt(end.get("pseudo_log_likelihood"), ".2f"),
                _fmt(end.get("log_likelihood"), ".2f")]
        lines.append("| " + " | ".join(row) + " |")
    for seed in s["seeds"]:
        goals = []
        if "probe_accuracy" in t:
            goals.append(f"probe accuracy >= {t['probe_accuracy'][str(seed)]:.4f}")
        if "recon_error" in t:
            goals.append(f"layer-0 recon error <= {t['recon_error'][str(seed)]:.3f}")
        lines.append(f"\nTargets for seed {seed}: {', '.join(goals)}.")
    lines += ["", "At equal updates (final states, streaming - greedy):", "",
              "| quality | streaming | greedy | difference (mean over seeds) | seed noise | "
              "within noise |", "| --- | --- | --- | --- | --- | --- |"]
    for metric, cmp in result["equal_updates"].items():
        vals = {sch: [r["checkpoints"][-1][metric] for r in result["runs"]
                      if r["schedule"] == sch and r["nproc"] == 3]
                for sch in ("streaming", "greedy")}
        noise = cmp["seed_noise"]
        lines.append(
            f"| {METRICS[metric][0]} | {', '.join(f'{v:.4g}' for v in vals['streaming'])} | "
            f"{', '.join(f'{v:.4g}' for v in vals['greedy'])} | {cmp['mean_difference']:+.4g} | "
            f"{'one seed' if noise is None else f'{noise:.4g}'} | "
            f"{'-' if cmp['within_noise'] is None else 'yes' if cmp['within_noise'] else 'no'} |")
    same = result["greedy_1p_equals_3p"]
    lines += [
        "",
        "- Target: the quality every run of a seed reaches at its end (the lowest final probe "
        "accuracy, the highest final reconstruction error); a run's time is that of its first "
        "checkpoint at or past it. Start-up (process start, data, initial evaluation) is not "
        "counted.",
        "- Seed noise: the largest difference between two seeds of one schedule (the seed "
        "also draws the held-out split).",
    ]
    if same is not None:
        lines.append("- Greedy in one process and in three wrote "
                     f"{'identical' if same else '**different**'} checkpoints (checksums).")
    if result.get("layer0_same_in_both_schedules"):
        lines.append("- Layer 0 trains on the same micro-batches in the same order under both "
                     "schedules: its final state is identical (checksums), so its qualities "
                     "at equal updates are equal by construction; they differ only in when "
                     "they are reached.")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Quality against wall time, one line per run: probe accuracy and layer-0 recon error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {("streaming", 3): "tab:green", ("greedy", 3): "tab:blue",
              ("greedy", 1): "tab:orange"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, TARGETS, strict=True):
        for r in result["runs"]:
            cks = [c for c in r["checkpoints"] if metric in c]
            style = ["-", "--", ":", "-."][result["settings"]["seeds"].index(r["seed"]) % 4]
            ax.plot([c["t"] for c in cks], [c[metric] for c in cks], style, marker=".",
                    color=colors.get((r["schedule"], r["nproc"]), "k"), label=_key(r))
        for seed, target in result["targets"].get(metric, {}).items():
            style = ["--", ":", "-.", "-"][result["settings"]["seeds"].index(int(seed)) % 4]
            ax.axhline(target, color="k", lw=0.7, ls=style)
        ax.set_xlabel("wall time since layer 0's first micro-batch (s)")
        ax.set_ylabel(METRICS[metric][0])
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Quickstart DBN, {result['settings']['epochs']:g} epochs per layer: "
                 "quality at each checkpoint (black: each seed's common target)", fontsize=10)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=10, help="epochs per layer")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--points", type=int, default=20, help="checkpoints per run")
    ap.add_argument("--jobs", type=int, default=2, help="processes measuring checkpoints")
    ap.add_argument("--ais-temperatures", type=int, default=3000,
                    help="AIS for the final states (0: none)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per training run")
    ap.add_argument("--keep", type=Path, help="keep the run directories here")
    ap.add_argument("--json", type=Path, default=ROOT / "tools" / "out" / "bench_quality.json")
    ap.add_argument("--plot", type=Path, help="also write the plot (PNG) here")
    args = ap.parse_args(argv)
    result = run(args.epochs, args.seeds, args.points, args.jobs, args.ais_temperatures,
                 args.timeout, args.keep)
    publish(result, args.json, report(result))
    if args.plot:
        print(f"wrote {plot(result, args.plot)}")


if __name__ == "__main__":
    main()
