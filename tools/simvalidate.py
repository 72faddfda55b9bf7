"""The simulator against this machine: measured step times, link and runs (``pipedbn.sim``).

    python -m tools.simvalidate [--epochs 3] [--write-docs]   # docs/benchmarks.md's bench_simulate

``validate`` runs each case of ``CASES`` here (``pipedbn train --nproc N``, one thread per
process), simulates it with this machine's measured layer times, link (a gloo ping-pong) and
``cores=os.cpu_count()``, and reports predicted against measured samples/s. A plan with a
replicated stage also gets the all-reduce measured here for its replicas and bucket
(``allreduce_link``): loopback gloo's all-reduce costs far more per ring step than its
point-to-point messages (docs/benchmarks.md, bench_allreduce).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from pipedbn.balancer import Plan, param_count, solve  # noqa: E402
from pipedbn.balancer.runtime import problem_for  # noqa: E402
from pipedbn.config import Config  # noqa: E402
from pipedbn.data.loader import open_data  # noqa: E402
from pipedbn.pipeline.layers import make_layers, make_schedule  # noqa: E402
from pipedbn.sim import Link, Machine, StepTimes, data_shape, from_config, load  # noqa: E402
from tools import bench_allreduce, bench_overhead  # noqa: E402
from tools.benchdocs import write_section  # noqa: E402
from tools.benchrun import ROOT, train  # noqa: E402

# -- measuring this machine ----------------------------------------------------------------------

def layer_times(cfg: Config, steps: int = 50) -> tuple[list[float], list[float]]:
    """Median seconds of each layer's ``train_step`` and frozen ``forward`` on one thread, on
    real micro-batches passed up by fresh layers (``tools/bench_pipeline.standalone``'s way)."""
    torch.set_num_threads(1)
    data = open_data(cfg, unit_range=True)
    layers = make_layers(cfg, data, make_schedule(cfg, data.batches_per_epoch),
                         torch.device("cpu"))
    xs = [torch.from_numpy(data.micro_batch(0, j)) for j in range(8)]
    train: list[float] = []
    forward: list[float] = []
    for layer in layers:
        for out, call in ((train, layer.train_step), (forward, layer.forward)):
            times = []
            for s in range(steps + 10):
                t0 = time.perf_counter()
                call(xs[s % len(xs)], s)
                times.append(time.perf_counter() - t0)
            out.append(statistics.median(times[10:]))
        xs = [layer.hidden_probs(x) for x in xs]
    return train, forward


def sleep_overshoot(seconds: float, n: int = 20) -> float:
    """How long ``time.sleep(seconds)`` really takes here (median)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        time.sleep(seconds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_link(small: int = 4, large: int = 2 << 20, rounds: int = 200) -> Link:
    """Latency and bandwidth of one pipedbn message (one tensor, the header packed after the
    payload, sent with ``transport.isend``/``irecv`` as the links send it) between two local
    gloo processes, by ping-pong (``tools.bench_overhead.round_trip``): half the median round
    trip of a ``small``-byte and a ``large``-byte payload with its header. On loopback the
    transfer is CPU work."""
    header = 8 * 3  # transport's int64 m, rows, kind
    t_small, t_large = (bench_overhead.round_trip(n + header, rounds) / 2 for n in (small, large))
    return Link(t_small, (large - small) / max(t_large - t_small, 1e-12), cpu=True)


def allreduce_link(ranks: int, nbytes: int, message: Link, calls: int = 200) -> Link:
    """The link that prices the simulator's ring all-reduce of ``nbytes`` among ``ranks``
    local processes at what gloo's all-reduce costs here: the mean of ``calls`` back-to-back
    calls (``tools.bench_allreduce``), spread over the ring's ``2 (ranks - 1)`` steps as
    latency, beside ``message``'s bandwidth. The mean, because the calls' times are bimodal on
    this machine (most near a round trip, the rest one or two 4 ms scheduler ticks later)."""
    mean = float(bench_allreduce.measure(ranks, [nbytes], calls)["allreduce"][str(nbytes)])
    steps = 2 * (ranks - 1)
    bytes_s = steps * nbytes / ranks / message.bandwidth
    return Link(max(0.0, mean - bytes_s) / steps, message.bandwidth, cpu=message.cpu)


def bucket_of(cfg: Config, features: int, spec: str, world: int) -> tuple[int, int] | None:
    """(replicas, bucket bytes) of the plan's most replicated stage; None without replicas.
    The bucket is the stage's parameters and one flag, as ``sync_allreduce`` sends them (a
    label layer's label weights are not counted: no case here has one). The one collective link
    prices every replicated stage's all-reduce, so a plan with several is priced at this one's
    per-step cost."""
    plan = Plan.parse(spec, world, len(cfg.layers))
    stage = max(plan.stages, key=lambda st: st.replicas)
    if stage.replicas < 2:
        return None
    sizes = [features] + cfg.sizes
    params = sum(param_count(sizes[i], sizes[i + 1]) for i in stage.layers)
    return stage.replicas, (8 if cfg.train.dtype == "float64" else 4) * (params + 1)


# -- validation: predicted against measured on this machine ------------------------------------

STRAGGLER = ["layers=[48,40,32,16]", "train.offset_epochs=0", "straggler.layer=2",
             "straggler.sleep_s=0.02", "balancer.max_replicas=null",
             "monitor.scalars_every=50", "monitor.eval_every=100", "monitor.histograms_every=500",
             "monitor.images_every=1000"]
"""``tools/bench_balancer.py``'s straggler DBN (its ``overrides`` at the default sleep)."""


@dataclass(frozen=True)
class Case:
    name: str
    config: str
    """Relative to the repository root."""
    nproc: int
    overrides: tuple[str, ...]
    epochs: float
    """``rbm.epochs`` (a few seconds of streaming)."""
    plan: str | None = None
    """A plan spec; None: ``auto``, the planner's plan for the measured costs."""


CASES = [
    Case("quickstart, streaming", "configs/quickstart.yaml", 3, (), 4, "0|1|2"),
    Case("quickstart, offset_epochs=0", "configs/quickstart.yaml", 3,
         ("train.offset_epochs=0",), 4, "0|1|2"),
    Case("straggler, one rank per layer", "configs/tiny.yaml", 4, tuple(STRAGGLER), 4,
         "0|1|2|3"),
    Case("straggler, 2 replicas of the DBN", "configs/tiny.yaml", 2, tuple(STRAGGLER), 12,
         "0-3@0-1"),
    Case("straggler, layers 2-3 on 2 replicas", "configs/tiny.yaml", 3, tuple(STRAGGLER), 12,
         "0-1@0|2-3@1-2"),
    Case("straggler, planner's plan", "configs/tiny.yaml", 5, tuple(STRAGGLER), 12),
    Case("straggler, planner's plan", "configs/tiny.yaml", 8, tuple(STRAGGLER), 12),
    Case("quickstart, greedy", "configs/quickstart.yaml", 3, ("train.schedule=greedy",), 2,
         "0|1|2"),
]


def run_pipedbn(config: str, nproc: int, overrides: Sequence[str], run_dir: Path
                ) -> dict[str, Any]:
    """``pipedbn train`` on ``nproc`` local processes of one thread each."""
    r = train(ROOT / config, run_dir, nproc, overrides, timeout=600)
    r.pop("metrics")
    return r


def cpu_busy() -> float:
    """CPU seconds spent by every process of the machine so far (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit: float = 0.25, timeout: float = 300.0) -> float:
    """Wait (at most ``timeout`` seconds) until other processes use less than ``limit`` cores
    over a second; returns the last load seen. Other jobs on a shared machine skew timings."""
    t_end = time.monotonic() + timeout
    while True:
        b0, t0 = cpu_busy(), time.monotonic()
        time.sleep(1.0)
        load = (cpu_busy() - b0) / (time.monotonic() - t0)
        if load < limit or time.monotonic() > t_end:
            return load


def validate(cases: Sequence[Case] = tuple(CASES), epochs: float = 1.0,
             link: Link | None = None, quiet_s: float = 60.0, collective: str = "allreduce"
             ) -> list[dict[str, Any]]:
    """Run each case here and simulate it with this machine's measured step times, link and
    ``cores=os.cpu_count()``; one row per case: predicted and measured samples/s, their
    ratio, and each stage's busy fraction both ways. ``epochs`` scales every case's epochs.

    Before each run it waits (``quiet_s`` at most) for other jobs to leave the cores; the CPU
    they used during the run (``other_cores``) is recorded, and a second prediction
    (``predicted_loaded``) lets that much background work share the cores. ``collective``:
    how the engine under test syncs BSP replicas (``p2p`` before the collectives)."""
    link = link or measure_link()
    cores = os.cpu_count()
    rows: list[dict[str, Any]] = []
    measured_costs: dict[str, tuple[list[float], list[float], Any]] = {}
    measured_ar: dict[tuple[int, int], Link] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, case in enumerate(cases):
            over = [*case.overrides, f"rbm.epochs={case.epochs * epochs:g}"]
            cfg = load(ROOT / case.config, over)
            key = f"{case.config} {cfg.sizes}"
            if key not in measured_costs:
                step, fwd = layer_times(cfg)
                measured_costs[key] = (step, fwd, data_shape(cfg))
            step, fwd, shape = measured_costs[key]
            sleep = [0.0] * len(step)
            if cfg.straggler.layer is not None and cfg.straggler.sleep_s > 0:
                sleep[cfg.straggler.layer] = sleep_overshoot(cfg.straggler.sleep_s)
            spec = case.plan
            if spec is None:
                work = [s + z for s, z in zip(step, sleep, strict=True)]
                spec = solve(problem_for(cfg, shape[0], case.nproc, work)).plan.spec()
            times = StepTimes(step, fwd, sleep)
            bucket = bucket_of(cfg, shape[0], spec, case.nproc)
            ar = None
            if bucket is not None and collective == "allreduce":
                if bucket not in measured_ar:
                    wait_quiet(timeout=quiet_s)
                    measured_ar[bucket] = allreduce_link(*bucket, link)
                ar = measured_ar[bucket]
            machine = Machine(link, cores, collective=collective, collective_link=ar)
            pred = from_config(cfg, spec, case.nproc, times, machine, shape)
            wait_quiet(timeout=quiet_s)
            b0, c0, t0 = cpu_busy(), _children_cpu(), time.monotonic()
            meas = run_pipedbn(case.config, case.nproc, [*over, f"balancer.plan={spec}"],
                               Path(tmp) / f"run-{n}")
            others = max(0.0, (cpu_busy() - b0 - (_children_cpu() - c0))
                         / (time.monotonic() - t0))
            loaded = from_config(cfg, spec, case.nproc, times,
                                 dataclasses.replace(machine, background=others), shape)
            rows.append({
                "case": case.name, "ranks": case.nproc, "plan": spec, "collective": collective,
                "predicted": pred.samples_per_s, "measured": meas["samples_per_s"],
                "ratio": pred.samples_per_s / meas["samples_per_s"],
                "predicted_loaded": loaded.samples_per_s,
                "ratio_loaded": loaded.samples_per_s / meas["samples_per_s"],
                "busy_predicted": [round(r.busy_frac, 3) for r in pred.ranks],
                "busy_measured": [round(s["busy_frac"], 3) for s in meas["stages"]],
                "step_ms": [round(s * 1e3, 3) for s in step],
                "command": meas["command"], "other_cores": round(others, 2),
                "link": {"latency_s": link.latency, "bandwidth_Bps": link.bandwidth},
                "allreduce": None if ar is None or bucket is None else {
                    "replicas": bucket[0], "bytes": bucket[1], "step_latency_s": ar.latency,
                    "call_s": 2 * (bucket[0] - 1) * (ar.latency + bucket[1] / bucket[0]
                                                     / ar.bandwidth)},
            })
    return rows


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def report_validation(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of ``validate``'s rows."""
    lines = ["| case | ranks | plan | all-reduce (measured) | predicted samples/s | measured "
             "| predicted / measured | other jobs (cores) | predicted with them | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        plan = r["plan"].replace("|", "\\|")  # a pipe inside a table cell
        ar = r.get("allreduce")
        cell = "-" if ar is None else (f"{ar['replicas']} x {ar['bytes'] / 1e3:.0f} kB: "
                                       f"{ar['call_s'] * 1e3:.2f} ms")
        lines.append(f"| {r['case']} | {r['ranks']} | `{plan}` | {cell} | {r['predicted']:,.0f} | "
                     f"{r['measured']:,.0f} | {r['ratio']:.2f} | {r['other_cores']:.2f} | "
                     f"{r['predicted_loaded']:,.0f} | {r['ratio_loaded']:.2f} |")
    return "\n".join(lines)



def section(rows: Sequence[dict[str, Any]], scale: float) -> str:
    """The validation's section of docs/benchmarks.md (``bench_simulate``)."""
    link = rows[0]["link"]
    return (f"Link measured by ping-pong: {link['latency_s'] * 1e6:.0f} µs + "
            f"{link['bandwidth_Bps'] / 1e9:.2f} GB/s; each case's epochs x {scale:g} "
            f"(`python -m tools.simvalidate --epochs {scale:g}`). The last columns "
            "repeat the prediction with the CPU other jobs used during the run as background "
            "load.\n\n" + report_validation(rows))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=1.0, help="scale every case's epochs")
    ap.add_argument("--write-docs", action="store_true",
                    help="write the table into docs/benchmarks.md (bench_simulate)")
    ap.add_argument("--collective", choices=("allreduce", "p2p"), default="allreduce",
                    help="how the engine under test syncs BSP replicas (p2p: before the "
                         "collectives)")
    ap.add_argument("--cases", help="comma-separated case numbers (0-based) to run")
    ap.add_argument("--link", metavar="LATENCY,BANDWIDTH",
                    help="the link (s, bytes/s) instead of measuring it by ping-pong")
    args = ap.parse_args(argv)
    cases = CASES if args.cases is None else [CASES[int(c)] for c in args.cases.split(",")]
    link = None
    if args.link:
        latency, bandwidth = (float(x) for x in args.link.split(","))
        link = Link(latency, bandwidth, cpu=True)
    rows = validate(cases, epochs=args.epochs, link=link, collective=args.collective)
    text = section(rows, args.epochs)
    print(text)
    out = ROOT / "tools" / "out" / "simulate_validation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    if args.write_docs:
        write_section("bench_simulate", text)


if __name__ == "__main__":
    main()
