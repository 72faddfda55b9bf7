"""Exact test log-likelihood of a 64-16 RBM on binarised digits: CD-1, PCD-1, centred PCD-1 and
parallel tempering, with equal updates.

Run from the repository root::

    python -m tools.bench_kinds [--epochs 50] [--seeds 0 1] [--write-docs]

Setting (``SETTING``): scikit-learn's 8x8 digits scaled to [0, 1] and thresholded at 0.5, 10%
held out (180 test images), one RBM of 16 hidden units, micro-batches of 100, the same learning
rate, no momentum and no weight decay for every method, 100 persistent chains (per temperature
for PT). Each run trains in this process, one micro-batch at a time in the reference order
(what every plan of the pipeline reproduces bit for bit), and its test log-likelihood is exact
(log Z by enumerating the 2^16 hidden states). ``--write-docs`` replaces the section of
docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from pipedbn.config import load_config, resolve_defaults  # noqa: E402
from pipedbn.data.loader import open_data  # noqa: E402
from pipedbn.eval.likelihood import log_likelihood  # noqa: E402
from pipedbn.model.rbm import RBM  # noqa: E402
from pipedbn.pipeline.layers import dtype_of, make_layers, make_schedule  # noqa: E402

SETTING = ["data.source=digits", "data.binarize=0.5", "data.held_out=0.1", "layers=[16]",
           "train.batch_size=100", "rbm.lr=0.1", "rbm.momentum=0", "rbm.momentum_final=0",
           "rbm.weight_decay=0", "rbm.pcd_chains=100", "monitor.enabled=false"]
METHODS: dict[str, list[str]] = {
    "CD-1": ["rbm.method=cd"],
    "PCD-1": ["rbm.method=pcd"],
    "centred PCD-1": ["rbm.method=pcd", "rbm.centering=true"],
    "PT (K=8)": ["rbm.method=pt", "rbm.pt_temperatures=8"],
}
DOCS = Path("docs/benchmarks.md")
BEGIN, END = "<!-- bench_kinds:begin -->", "<!-- bench_kinds:end -->"


def train_rbm(overrides: list[str]) -> tuple[RBM, torch.Tensor, float]:
    """One layer trained on the stream in this process; (layer, the test rows, seconds)."""
    cfg = resolve_defaults(load_config(None, overrides))
    data = open_data(cfg, unit_range=True)
    schedule = make_schedule(cfg, data.batches_per_epoch)
    (layer,) = make_layers(cfg, data, schedule, torch.device("cpu"))
    t0 = time.perf_counter()
    for m in range(schedule.length):
        epoch, j = schedule.data_position(m)
        layer.step = m
        layer.train_step(torch.from_numpy(data.micro_batch(epoch, j)).to(dtype_of(cfg)), m)
    seconds = time.perf_counter() - t0
    return layer, torch.from_numpy(data.rows(data.held_rows)), seconds


def exact_test_ll(layer: RBM, test: torch.Tensor) -> float:
    return float(log_likelihood(layer.weight, layer.visible_bias, layer.hidden_bias, test,
                                layer.kind))


def run(epochs: float, seeds: list[int], methods: dict[str, list[str]] | None = None
        ) -> dict[str, Any]:
    out: dict[str, Any] = {"setting": SETTING + [f"rbm.epochs={epochs}"], "seeds": seeds,
                           "methods": {}}
    for name, extra in (methods or METHODS).items():
        rows = []
        for seed in seeds:
            layer, test, seconds = train_rbm(SETTING + [f"rbm.epochs={epochs}", f"seed={seed}",
                                                        *extra])
            rows.append({"seed": seed, "test_ll": exact_test_ll(layer, test),
                         "updates": layer.step, "train_s": seconds})
            print(f"{name:>14} seed {seed}: test LL {rows[-1]['test_ll']:.3f} "
                  f"({layer.step} updates, {seconds:.1f} s)", flush=True)
        out["methods"][name] = {"overrides": extra, "runs": rows,
                                "mean_test_ll": statistics.mean(r["test_ll"] for r in rows)}
    return out


def report(result: dict[str, Any]) -> str:
    lines = [BEGIN, "",
             "| method | exact test LL (mean) | " + " | ".join(
                 f"seed {s}" for s in result["seeds"]) + " | updates | train s / run |",
             "| --- | --- | " + " | ".join("---" for _ in result["seeds"]) + " | --- | --- |"]
    for name, m in result["methods"].items():
        runs = m["runs"]
        lines.append(f"| {name} (`{' '.join(m['overrides'])}`) | **{m['mean_test_ll']:.2f}** | "
                     + " | ".join(f"{r['test_ll']:.2f}" for r in runs)
                     + f" | {runs[0]['updates']} | "
                     f"{statistics.mean(r['train_s'] for r in runs):.1f} |")
    lines += ["", "Setting: `" + " ".join(result["setting"]) + "`.", "", END]
    return "\n".join(lines)


def write_docs(text: str, path: Path = DOCS) -> None:
    doc = path.read_text()
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(doc)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--json", type=Path, default=Path("tools/out/bench_kinds.json"))
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = run(args.epochs, args.seeds)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    text = report(result)
    print(text)
    if args.write_docs:
        write_docs(text)
        print(f"wrote {DOCS}")


if __name__ == "__main__":
    main()
