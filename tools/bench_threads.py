"""The default ``pipedbn train`` (``train.threads: auto``) against fixed process and thread
counts and against scikit-learn, side by side in one run.

Run from the repository root::

    python -m tools.bench_threads [--epochs 20] [--rounds 1] [--json tools/out/bench_threads.json]
        [--no-doc]                   # (without it the table goes to docs/benchmarks.md too)

Contenders, each a fresh process, on configs/quickstart.yaml (784-500-500-2000, mnist5k) with
``rbm.epochs=EPOCHS`` and monitoring off, in turn within each round (the order rotating):

* ``default``: ``pipedbn train configs/quickstart.yaml`` as a user types it (threads, processes
  and plan chosen for this machine);
* ``inproc_2t``: ``--nproc 1 train.threads=2``; ``nproc_2`` and ``nproc_3``: ``--nproc N
  train.threads=1``;
* ``sklearn``: scikit-learn's ``BernoulliRBM`` stack trained greedily on the same rows, layers
  and epochs (``n_iter=EPOCHS``, batch 100, lr 0.1), BLAS with its default threads.

Each reports its wall time; the pipedbn runs also their training time (``summary.txt``: samples
through the pipeline over seconds). ``predicted`` is the threads planner's samples/s for the
default's choice (``pipedbn plan``'s figure), beside the default's measured samples/s. The load
average is recorded before and after: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipedbn.config import load_config, resolve_defaults
from pipedbn.data.loader import open_data
from pipedbn.run.resources import data_shape, resolve, usable_cores
from tools.benchdocs import publish

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/quickstart.yaml"
CONTENDERS = {
    "default": [],
    "inproc_2t": ["--nproc", "1", "train.threads=2"],
    "nproc_2": ["--nproc", "2", "train.threads=1"],
    "nproc_3": ["--nproc", "3", "train.threads=1"],
}


def sklearn_stack(epochs: int) -> dict[str, Any]:
    """Greedy BernoulliRBM layers on the quickstart's training rows (run in a subprocess)."""
    from sklearn.neural_network import BernoulliRBM

    cfg = resolve_defaults(load_config(CONFIG, []))
    data = open_data(cfg, unit_range=True)
    x = np.concatenate([data.micro_batch(0, j) for j in range(data.batches_per_epoch)])
    t0 = time.perf_counter()
    for layer in cfg.layers:
        rbm = BernoulliRBM(n_components=layer.hidden, batch_size=cfg.train.batch_size,
                           learning_rate=0.1, n_iter=epochs, random_state=cfg.seed)
        x = rbm.fit_transform(x)
    return {"training_s": time.perf_counter() - t0, "rows": int(len(x))}


def run_pipedbn(name: str, epochs: int, tmp: Path) -> dict[str, Any]:
    run_dir = tmp / f"{name}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "pipedbn", "train", CONFIG, f"rbm.epochs={epochs}",
           "monitor.enabled=false", f"run.dir={run_dir}", "-q", *CONTENDERS[name]]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    summary = (run_dir / "summary.txt").read_text()
    found = re.search(r"(\d+) samples through the pipeline in ([\d.]+) s", summary)
    assert found is not None, summary
    saved = (run_dir / "config.yaml").read_text()
    threads = re.search(r"threads: (.*)", saved)
    return {"wall_s": wall, "samples": int(found[1]), "training_s": float(found[2]),
            "samples_per_s": int(found[1]) / float(found[2]),
            "threads": threads[1] if threads else None}


def run_sklearn(epochs: int) -> dict[str, Any]:
    code = (f"import json; from tools.bench_threads import sklearn_stack; "
            f"print(json.dumps(sklearn_stack({epochs})))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"scikit-learn stack failed:\n{proc.stderr[-2000:]}")
    return {"wall_s": time.perf_counter() - t0, **json.loads(proc.stdout.splitlines()[-1])}


def measure(epochs: int, rounds: int) -> dict[str, Any]:
    cfg = resolve_defaults(load_config(CONFIG, [f"rbm.epochs={epochs}"]))
    chosen, nproc, choice = resolve(cfg, None, lambda: data_shape(cfg))
    names = [*CONTENDERS, "sklearn"]
    raw: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                raw[name].append(run_sklearn(epochs) if name == "sklearn"
                                 else run_pipedbn(name, epochs, Path(tmp)))
                print(f"round {r}: {name}: {raw[name][-1]['wall_s']:.1f} s wall", flush=True)
    load.append(os.getloadavg()[0])
    median = {n: {k: statistics.median(x[k] for x in raw[n])
                  for k in ("wall_s", "training_s")} for n in names}
    fastest = min(median[n]["wall_s"] for n in ("inproc_2t", "nproc_2", "nproc_3"))
    measured = statistics.median(x["samples_per_s"] for x in raw["default"])
    predicted = choice.samples_per_s(cfg.train.batch_size) if choice else None
    return {
        "epochs": epochs, "rounds": rounds, "cores": usable_cores(), "load_average": load,
        "default_choice": {"nproc": nproc, "threads": chosen.train.threads,
                           "plan": choice.solution.plan.spec() if choice else None},
        "median": median, "raw": raw,
        "default_vs_fastest_fixed": fastest / median["default"]["wall_s"],
        "default_vs_sklearn": median["sklearn"]["wall_s"] / median["default"]["wall_s"],
        "predicted_samples_per_s": predicted, "measured_samples_per_s": measured,
        "predicted_over_measured": predicted / measured if predicted else None,
    }


LABELS = {"default": "`pipedbn train` (default: auto threads)",
          "inproc_2t": "`--nproc 1 train.threads=2`", "nproc_2": "`--nproc 2 train.threads=1`",
          "nproc_3": "`--nproc 3 train.threads=1`",
          "sklearn": "scikit-learn BernoulliRBM stack, greedy, default threads"}


def table(r: dict[str, Any]) -> str:
    rows = ["| contender | wall s | training s |", "| --- | --- | --- |"]
    for name, m in r["median"].items():
        rows.append(f"| {LABELS[name]} | {m['wall_s']:.1f} | {m['training_s']:.1f} |")
    c = r["default_choice"]
    pred = r["predicted_samples_per_s"]
    rows += ["", f"Default's choice on {r['cores']} cores: {c['nproc']} process(es), threads "
             f"{c['threads']}, plan {c['plan']}. Default against the fastest fixed choice "
             f"(wall): {r['default_vs_fastest_fixed']:.2f}; against scikit-learn: "
             f"{r['default_vs_sklearn']:.2f}x as fast. Planner's predicted samples/s "
             f"{pred:,.0f} against {r['measured_samples_per_s']:,.0f} measured "
             f"({r['predicted_over_measured']:.2f}). Load average "
             f"{r['load_average'][0]:.1f} before, {r['load_average'][1]:.1f} after; "
             f"rbm.epochs={r['epochs']}, {r['rounds']} round(s), medians."]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", type=Path, default=Path("tools/out/bench_threads.json"))
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args(argv)
    report = measure(args.epochs, args.rounds)
    command = (f"python -m tools.bench_threads --epochs {args.epochs} --rounds {args.rounds}")
    text = (f"Measured {time.strftime('%Y-%m-%d')} by `{command}` on this "
            f"{report['cores']}-core machine.\n\n{table(report)}")
    publish(report, args.json, text, None if args.no_doc else "bench_threads")


if __name__ == "__main__":
    main()
