"""One RBM layer against its peers: the same CD step on the same micro-batches, one thread.

Run from the repository root::

    python -m tools.bench_peers [--rounds 7] [--steps 200] [--json tools/out/bench_peers.json]
                                [--plot tools/out/bench_peers.png]

The setting of ``tools/bench_step.py`` (imported from it, not copied): one Bernoulli RBM
784 -> 500, CD-1, micro-batch B=100 of real mnist5k data scaled to [0, 1], read before timing,
ONE thread everywhere (torch, and numpy's / scipy's OpenBLAS for scikit-learn: checked with
``threadpoolctl.threadpool_info()``, recorded in the result). Contenders, each timed over the
same ``--steps`` micro-batches per round, rounds interleaved with the order rotating, median
over rounds:

* ``gemm``: only the five matrix products of one CD-1 step (``bench_step.gemm_step``), the
  ceiling;
* ``pipedbn``: ``layer.train_step(x)``;
* ``minimal``: a plain PyTorch CD-1 loop (``bench_step.minimal_step``);
* ``sklearn``: ``BernoulliRBM.partial_fit`` on each micro-batch. scikit-learn converts its
  input to float64 (``validate_data(dtype=np.float64)``) and keeps float64 parameters, so the
  micro-batches are handed over as float64 arrays (float32 input only adds a conversion per
  call: measured 8.72 against 8.72 ms per step; the products run in float64 either way). Its
  update is PCD-1 (persistent chains), no momentum or weight decay: the same five matrix
  products per step, in float64;
* ``learnergy``: what a user gets from ``RBM.fit(dataset, batch_size=100, epochs=1)`` over a
  ``TensorDataset`` of the round's micro-batches: DataLoader (shuffled, collated per sample),
  ``gibbs_sampling``, a free-energy cost through autograd, SGD with momentum and weight decay,
  and, per batch, the epoch's MSE and pseudo-likelihood metrics;
* ``learnergy_core``: learnergy's update alone on each micro-batch, as ``fit`` does it
  (``gibbs_sampling``, the cost, ``backward``, ``optimizer.step``), without the DataLoader and
  the metrics.

Every contender is credited ``10 * B * 784 * 500`` FLOPs per step. A missing scikit-learn or
learnergy leaves its row "not installed" and the rest runs. ``run`` / ``report`` / ``plot``
are the API for ``tools/bench.py``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # before torch or numpy is imported

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tools import bench_step  # noqa: E402
from tools.benchdocs import publish, save_figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = "not installed (pip install -e '.[bench]')"
COMMAND = "python -m tools.bench_peers"

LABELS = {
    "gemm": "gemm (ceiling)",
    "pipedbn": "**pipedbn `train_step`**",
    "minimal": "minimal PyTorch loop",
    "sklearn": "scikit-learn `BernoulliRBM.partial_fit`",
    "learnergy": "learnergy `RBM.fit`",
    "learnergy_core": "learnergy update only",
}
ORDER = list(LABELS)
ANCHORS = {"gemm": 35_600, "minimal": 23_500, "sklearn": 17_600, "learnergy": 10_700}
"""DESIGN §8's samples/s on this machine (one run, same setting)."""

Timer = Callable[[int, int], float]
"""``timer(start, steps)``: seconds per step over ``steps`` micro-batches from ``start``."""


def _per_batch(step: Callable[[Any], object], batches: list[Any]) -> Timer:
    def timer(start: int, steps: int) -> float:
        n = len(batches)
        t0 = time.perf_counter()
        for i in range(start, start + steps):
            step(batches[i % n])
        return (time.perf_counter() - t0) / steps

    return timer


def _sklearn(lr: float, batch: int, batches: list[torch.Tensor]) -> Timer:
    from sklearn.neural_network import BernoulliRBM

    rbm = BernoulliRBM(n_components=bench_step.N_HIDDEN, batch_size=batch, learning_rate=lr,
                       n_iter=1, random_state=0)
    float64 = [x.numpy().astype(np.float64) for x in batches]  # what partial_fit works in
    return _per_batch(rbm.partial_fit, float64)


def _learnergy(n_visible: int, lr: float, momentum: float, decay: float,
               batches: list[torch.Tensor]) -> tuple[Timer, Timer]:
    """(``fit``, the update alone), each on its own model."""
    from learnergy.models.bernoulli import RBM as LearnergyRBM
    from torch.utils.data import TensorDataset

    def model() -> Any:
        torch.manual_seed(0)
        return LearnergyRBM(n_visible=n_visible, n_hidden=bench_step.N_HIDDEN, steps=1,
                            learning_rate=lr, momentum=momentum, decay=decay, use_gpu=False)

    fitted, core = model(), model()
    batch, n = batches[0].shape[0], len(batches)

    def fit(start: int, steps: int) -> float:
        xs = torch.cat([batches[i % n] for i in range(start, start + steps)])
        dataset = TensorDataset(xs, torch.zeros(len(xs)))
        t0 = time.perf_counter()
        fitted.fit(dataset, batch_size=batch, epochs=1)
        return (time.perf_counter() - t0) / steps

    def update(x: torch.Tensor) -> None:  # the body of learnergy's fit, minus its metrics
        _, _, _, _, visible_states = core.gibbs_sampling(x)
        visible_states = visible_states.detach()
        cost = torch.mean(core.energy(x)) - torch.mean(core.energy(visible_states))
        core.optimizer.zero_grad()
        cost.backward()
        core.optimizer.step()

    return fit, _per_batch(update, batches)


def _thread_pools() -> list[dict[str, Any]]:
    from threadpoolctl import threadpool_info

    return [{"api": p["internal_api"], "library": Path(p["filepath"]).name,
             "threads": p["num_threads"]} for p in threadpool_info()]


def run(rounds: int = 7, steps: int = 200, warmup: int = 20,
        only: list[str] | None = None) -> dict[str, Any]:
    """Time every contender (or those in ``only``) and return the result (JSON-ready):
    ``results[name]`` has ``step_ms``, ``samples_per_s``, ``gflops``, ``ratio_to_gemm``,
    ``pipedbn_speedup`` (its step time over pipedbn's) and ``spread_pct``; ``missing[name]``
    says why a peer did not run."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    cfg, layer, batches = bench_step.setup()
    batch, n_visible = cfg.train.batch_size, batches[0].shape[1]
    lc = cfg.layers[0]
    assert lc.lr is not None and lc.momentum is not None
    timers: dict[str, Timer] = {
        "gemm": _per_batch(bench_step.gemm_step(n_visible, batch), batches),
        "pipedbn": _per_batch(layer.train_step, batches),
        "minimal": _per_batch(bench_step.minimal_step(n_visible, layer.visible_bias, lc.lr,
                                                      lc.momentum, lc.weight_decay), batches),
    }
    missing: dict[str, str] = {}
    try:
        timers["sklearn"] = _sklearn(lc.lr, batch, batches)
    except ImportError:
        missing["sklearn"] = INSTALL_HINT
    try:
        timers["learnergy"], timers["learnergy_core"] = _learnergy(
            n_visible, lc.lr, lc.momentum, lc.weight_decay, batches)
    except ImportError:
        missing["learnergy"] = missing["learnergy_core"] = INSTALL_HINT
    # gemm and pipedbn always run: the ratios are to them
    wanted = [n for n in ORDER if only is None or n in only or n in ("gemm", "pipedbn")]
    names = [name for name in wanted if name in timers]

    raw: dict[str, list[float]] = {name: [] for name in names}
    with threadpool_limits(1):
        pools = _thread_pools()
        for name in names if warmup > 0 else []:
            timers[name](0, warmup)
        position = warmup
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
                raw[name].append(timers[name](position, steps))
            position += steps

    flops = 10 * batch * n_visible * bench_step.N_HIDDEN
    median = {name: statistics.median(raw[name]) for name in names}
    results = {name: {
        "step_ms": median[name] * 1e3,
        "samples_per_s": batch / median[name],
        "gflops": flops / median[name] / 1e9,
        "ratio_to_gemm": median["gemm"] / median[name],
        "pipedbn_speedup": median[name] / median["pipedbn"],
        "spread_pct": 100 * (max(raw[name]) - min(raw[name])) / median[name],
    } for name in names}
    return {
        "date": date.today().isoformat(),
        "machine": {"cpu": bench_step.cpu_model(), "python": platform.python_version(),
                    "torch": torch.__version__, "numpy": np.__version__,
                    "versions": _versions(), "torch_threads": torch.get_num_threads(),
                    "thread_pools": pools,
                    "one_thread": all(p["threads"] == 1 for p in pools)
                    and torch.get_num_threads() == 1},
        "settings": {"n_visible": n_visible, "n_hidden": bench_step.N_HIDDEN, "batch": batch,
                     "k": lc.k, "lr": lc.lr, "momentum": lc.momentum,
                     "weight_decay": lc.weight_decay, "data": cfg.data.source,
                     "micro_batches": len(batches), "rounds": rounds, "steps": steps,
                     "warmup": warmup, "flops_per_step": flops,
                     "sklearn_dtype": "float64", "others_dtype": "float32"},
        "order": [n for n in wanted if n in names or n in missing],
        "raw_seconds_per_step": raw,
        "results": results,
        "missing": {n: why for n, why in missing.items() if n in wanted},
        "anchors": ANCHORS,
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("scikit-learn", "learnergy", "threadpoolctl"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "-"
    return out


def report(result: dict[str, Any]) -> str:
    """The result as a markdown section (heading, command, table, notes)."""
    s, res = result["settings"], result["results"]
    cmd = f"{COMMAND} --rounds {s['rounds']} --steps {s['steps']}"
    lines = [
        "## One RBM layer against its peers",
        "",
        "```bash",
        cmd,
        "```",
        "",
        f"RBM {s['n_visible']} -> {s['n_hidden']}, CD-1, micro-batch {s['batch']}, real "
        f"{s['data']} micro-batches, one thread (torch and BLAS: "
        f"{'checked' if result['machine']['one_thread'] else '**NOT** all'} one thread by "
        f"threadpoolctl), {result['machine']['cpu']}, {result['date']}. Each contender times "
        f"the same {s['steps']} micro-batches per round; medians of {s['rounds']} interleaved "
        "rounds, order rotating.",
        "",
        "| contender | ms / step | samples/s | ratio to gemm | pipedbn is x faster | "
        "DESIGN §8 samples/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in result["order"]:
        anchor = f"{ANCHORS[name]:,}" if name in ANCHORS else ""
        if name in result["missing"]:
            lines.append(f"| {LABELS[name]} | {result['missing'][name]} | | | | {anchor} |")
            continue
        r = res[name]
        speedup = "" if name in ("gemm", "pipedbn") else f"{r['pipedbn_speedup']:.2f}"
        lines.append(f"| {LABELS[name]} | {r['step_ms']:.3f} | {r['samples_per_s']:,.0f} | "
                     f"{r['ratio_to_gemm']:.3f} | {speedup} | {anchor} |")
    lines += [
        "",
        "- scikit-learn works in float64 whatever it is given (`partial_fit` converts), so it "
        "gets float64 micro-batches; its update is PCD-1 (persistent chains) without momentum "
        "or weight decay, the same five matrix products per step.",
        "- learnergy `RBM.fit` is what a user gets: a DataLoader over a `TensorDataset`, the "
        "update through autograd (free-energy cost, `backward`, `torch.optim.SGD` with momentum "
        "and weight decay) and, on every batch, the MSE and pseudo-likelihood it reports. "
        "\"learnergy update only\" times just `gibbs_sampling`, the cost, `backward` and "
        "`optimizer.step` per micro-batch.",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """A bar chart of samples/s per contender (PNG), the gemm ceiling dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in result["order"] if n in result["results"]]
    rates = [result["results"][n]["samples_per_s"] for n in names]
    colors = ["tab:green" if n == "pipedbn" else "tab:gray" if n == "gemm" else "tab:blue"
              for n in names]
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(names) + 1.5))
    ax.barh([LABELS[n].replace("*", "").replace("`", "") for n in names], rates, color=colors)
    ax.axvline(result["results"]["gemm"]["samples_per_s"], color="k", ls="--", lw=0.8)
    for y, rate in enumerate(rates):
        ax.text(rate, y, f" {rate:,.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("samples/s (one thread; higher is better)")
    s = result["settings"]
    ax.set_title(f"RBM {s['n_visible']}->{s['n_hidden']} CD-1, B={s['batch']}, "
                 f"median of {s['rounds']} rounds", fontsize=10)
    ax.set_xlim(0, max(rates) * 1.18)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=200, help="micro-batches per contender per round")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps per contender first")
    ap.add_argument("--only", nargs="+", choices=ORDER, help="run just these contenders")
    ap.add_argument("--json", type=Path, default=ROOT / "tools" / "out" / "bench_peers.json")
    ap.add_argument("--plot", type=Path, help="also write the bar chart (PNG) here")
    args = ap.parse_args(argv)
    result = run(args.rounds, args.steps, args.warmup, args.only)
    publish(result, args.json, report(result))
    if args.plot:
        print(f"wrote {plot(result, args.plot)}")


if __name__ == "__main__":
    main()
