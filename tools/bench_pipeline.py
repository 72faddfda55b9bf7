"""The pipeline against its bound and against its peers, on the quickstart DBN, one thread each.

Run from the repository root::

    python -m tools.bench_pipeline [--epochs 20] [--microbatches 8] [--write-docs]

In one invocation, one thread per process:

1. *standalone*: each layer's CD step time on its own (``train_step`` on real inputs passed up
   through the layers below, median of ``--steps``), in this process;
2. *pipeline*: ``pipedbn train configs/quickstart.yaml`` (one process per layer); each stage's
   busy fraction, the last stage's samples/s over its active window (the pipeline's steady
   output) against ``batch / slowest standalone step``, and the whole run's time against the
   schedule's ideal ``sum over micro-batches m of max(step time of the layers m reaches)``;
3. *in-process*: the same run with ``--nproc 1`` at one thread and at two;
4. *same work, peer*: every layer trains on every micro-batch (``offset_epochs=0``), pipedbn's
   pipeline against ``torch.distributed.pipelining``'s forward-only ``ScheduleGPipe`` driving the
   same layers (a module whose forward is the layer's ``train_step``) on the same three ranks,
   ``--microbatches`` micro-batches of 100 per schedule step, inputs read before timing.

The results go to ``tools/out/bench_pipeline.json`` and a table to stdout; ``--write-docs``
replaces the pipeline section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported
os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipedbn.config import Config, load_config, resolve_defaults  # noqa: E402
from pipedbn.data.loader import open_data  # noqa: E402
from pipedbn.pipeline.layers import make_layers, make_schedule  # noqa: E402
from tools import benchrun  # noqa: E402
from tools.benchdocs import publish  # noqa: E402
from tools.simvalidate import layer_times  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "quickstart.yaml"


def config(epochs: float, *extra: str) -> Config:
    return resolve_defaults(load_config(CONFIG, [f"rbm.epochs={epochs}", *extra]))


def standalone(cfg: Config, steps: int) -> list[float]:
    """Median seconds of one ``train_step`` per layer, on inputs passed up by fresh layers."""
    return layer_times(cfg, steps)[0]


def busy_worker(epochs: float) -> None:
    """Loop the layers below the bottleneck on real inputs (the other core's load in the
    pipeline) until killed, 120 s at most."""
    torch.set_num_threads(1)
    cfg = config(epochs)
    data = open_data(cfg, unit_range=True)
    layers = make_layers(cfg, data, make_schedule(cfg, data.batches_per_epoch),
                         torch.device("cpu"))[:-1]
    x0 = torch.from_numpy(data.micro_batch(0, 0))
    print("ready", flush=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        x = x0
        for layer in layers:
            x = layer.train_step(x)


def standalone_loaded(cfg: Config, steps: int, epochs: float) -> float:
    """The last layer's step time while another process trains the layers below it."""
    load = subprocess.Popen([sys.executable, "-m", "tools.bench_pipeline", "--busy-worker",
                             "--epochs", str(epochs)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert load.stdout is not None and load.stdout.readline().strip() == "ready"
        return standalone(cfg, steps)[-1]
    finally:
        load.kill()
        load.wait()


def train(run_dir: Path, nproc: int, threads: int, extra: list[str]) -> dict[str, Any]:
    r = benchrun.train(CONFIG, run_dir, nproc, extra, threads)
    r.pop("metrics")
    return r


def ideal_seconds(cfg: Config, batches_per_epoch: int, step_s: list[float]) -> float:
    """A perfect pipeline's time: each micro-batch costs its slowest layer's step."""
    schedule = make_schedule(cfg, batches_per_epoch)
    return sum(max(step_s[: schedule.top(m) + 1]) for m in range(schedule.length)
               if schedule.top(m) >= 0)


def gpipe_worker(epochs: float, microbatches: int, out: str) -> None:
    """One rank of the peer (started by torchrun): ScheduleGPipe, forward only."""
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = config(epochs, "train.offset_epochs=0")
    data = open_data(cfg, unit_range=True)
    schedule = make_schedule(cfg, data.batches_per_epoch)
    layer = make_layers(cfg, data, schedule, torch.device("cpu"))[rank]
    batch = cfg.train.batch_size
    sizes = [data.features] + cfg.sizes

    class CDStage(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return layer.train_step(x)

    stage = PipelineStage(CDStage(), rank, world, torch.device("cpu"),
                          input_args=torch.zeros(batch, sizes[rank]),
                          output_args=torch.zeros(batch, sizes[rank + 1]))
    pipe = ScheduleGPipe(stage, n_microbatches=microbatches)
    steps = schedule.length // microbatches
    inputs = []
    if rank == 0:
        for s in range(steps):
            mbs = [data.micro_batch(*schedule.data_position(s * microbatches + k))
                   for k in range(microbatches)]
            inputs.append(torch.from_numpy(np.concatenate(mbs)))
    dist.barrier()
    t0 = time.perf_counter()
    for s in range(steps):
        if rank == 0:
            pipe.step(inputs[s])
        else:
            pipe.step()
    dist.barrier()
    seconds = time.perf_counter() - t0
    if rank == 0:
        Path(out).write_text(json.dumps({"samples": steps * microbatches * batch,
                                         "seconds": seconds}))
    dist.destroy_process_group()


def gpipe(epochs: float, microbatches: int, tmp: Path) -> dict[str, Any]:
    out = tmp / "gpipe.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "3", "-m", "tools.bench_pipeline", "--gpipe-worker", "--epochs", str(epochs),
           "--microbatches", str(microbatches), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        sys.exit(f"GPipe peer failed:\n{proc.stderr[-3000:]}")
    res = json.loads(out.read_text())
    return {"samples_per_s": res["samples"] / res["seconds"], **res}


def run(epochs: float = 20, microbatches: int = 8, steps: int = 100) -> dict[str, Any]:
    """Every measurement of this tool, in one go; the results as a dict."""
    cfg = config(epochs)
    data = open_data(cfg, unit_range=True)
    step_s = standalone(cfg, steps)
    loaded_s = standalone_loaded(cfg, steps, epochs)
    batch = cfg.train.batch_size
    bound = batch / max(step_s)
    ep = [f"rbm.epochs={epochs}"]
    grouped = [step_s[0] + step_s[1], step_s[2]]  # the plan 0-1|2: two ranks, one per core
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pipe = train(tmp / "pipe", 3, 1, ep)
        two_ranks = train(tmp / "two", 2, 1, [*ep, "balancer.plan=0-1|2"])
        one = train(tmp / "one", 1, 1, ep)
        two = train(tmp / "two-threads", 1, 2, ep)
        greedy = train(tmp / "greedy", 1, 1, [*ep, "train.schedule=greedy"])
        same = train(tmp / "same", 3, 1, [*ep, "train.offset_epochs=0"])
        peer = gpipe(epochs, microbatches, tmp)
    last = pipe["stages"][-1]
    ideal = ideal_seconds(cfg, data.batches_per_epoch, step_s)
    total = pipe["training_s"]  # first read to last stage end
    return {
        "date": date.today().isoformat(), "epochs": epochs, "microbatches": microbatches,
        "standalone_step_ms": [t * 1e3 for t in step_s],
        "bound_samples_per_s": bound,
        "work_per_rank_samples_per_s": batch * 3 / sum(step_s),
        "last_layer_step_ms_other_core_busy": loaded_s * 1e3,
        "loaded_bound_samples_per_s": batch / loaded_s,
        "pipeline": pipe, "in_process_1_thread": one, "in_process_2_threads": two,
        "greedy_in_process": greedy,
        "two_ranks": two_ranks, "two_ranks_bound_samples_per_s": batch / max(grouped),
        "two_ranks_step_ms": [t * 1e3 for t in grouped],
        "same_work_pipeline": same, "same_work_gpipe": peer,
        "steady_ratio": last["samples_per_s"] / bound,
        "steady_ratio_loaded": last["samples_per_s"] / (batch / loaded_s),
        # against the bottleneck's own step time inside this run (its compute per micro-batch)
        "in_situ_step_ms": last["compute_s"] / last["micro_batches"] * 1e3,
        "steady_ratio_in_situ": last["samples_per_s"] * last["compute_s"] / last["samples"],
        "two_ranks_ratio": two_ranks["stages"][-1]["samples_per_s"] / (batch / max(grouped)),
        "whole_run_ratio": ideal / total, "ideal_s": ideal, "pipeline_s": total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=20)
    ap.add_argument("--microbatches", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--gpipe-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--busy-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.gpipe_worker:
        gpipe_worker(args.epochs, args.microbatches, args.out)
        return
    if args.busy_worker:
        busy_worker(args.epochs)
        return
    res = run(args.epochs, args.microbatches, args.steps)
    publish(res, ROOT / "tools" / "out" / "bench_pipeline.json", report(res),
            "bench_pipeline" if args.write_docs else None)


def report(r: dict[str, Any]) -> str:
    st = r["pipeline"]["stages"]
    ms = r["standalone_step_ms"]
    lines = [
        f"Quickstart DBN (784-500-500-2000, CD-1, micro-batch 100, {r['epochs']:g} epochs per "
        f"layer, streaming with a 1-epoch offset), one thread per process, {r['date']}: "
        f"`python -m tools.bench_pipeline --epochs {r['epochs']:g} --microbatches "
        f"{r['microbatches']}`.",
        "",
        "| stage | layer | standalone step ms | micro-batches | busy | recv wait s | "
        "send wait s | samples/s (active) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s, t in zip(st, ms, strict=True):
        lines.append(f"| {s['stage']} | {s['layers'][0]} | {t:.2f} | {s['micro_batches']} | "
                     f"{s['busy_frac']:.1%} | {s['recv_wait_s']:.2f} | {s['send_wait_s']:.2f} | "
                     f"{s['samples_per_s']:,.0f} |")
    two = r["two_ranks"]["stages"]
    lines += [
        "",
        f"- Bound, `batch / slowest standalone step`: {r['bound_samples_per_s']:,.0f} "
        f"samples/s. The last stage's output rate over its active window: "
        f"{st[-1]['samples_per_s']:,.0f} samples/s = **{r['steady_ratio']:.3f}** of the bound "
        "(goal >= 0.9).",
        f"- Against the bottleneck's step time inside this run ({r['in_situ_step_ms']:.2f} ms, "
        f"three processes on {os.cpu_count()} cores): **{r['steady_ratio_in_situ']:.3f}**; the "
        f"same step timed alone while another process trains layers 0 and 1 on the other core: "
        f"{r['last_layer_step_ms_other_core_busy']:.2f} ms, **{r['steady_ratio_loaded']:.3f}**.",
        "- Two ranks, one per core (plan `0-1|2`, stage steps "
        + " and ".join(f"{t:.2f}" for t in r["two_ranks_step_ms"])
        + f" ms): {two[-1]['samples_per_s']:,.0f} samples/s against a bound of "
        f"{r['two_ranks_bound_samples_per_s']:,.0f}: **{r['two_ranks_ratio']:.3f}**; "
        f"bottleneck busy {two[-1]['busy_frac']:.1%}.",
        f"- Total work / ranks (the ideal if the work split evenly over 3 ranks): "
        f"{r['work_per_rank_samples_per_s']:,.0f} samples/s; the one-layer-per-rank pipeline "
        f"reaches {st[-1]['samples_per_s'] / r['work_per_rank_samples_per_s']:.3f} of it.",
        f"- Whole run: {r['pipeline_s']:.2f} s from the first read to the last stage's end, "
        f"against {r['ideal_s']:.2f} s for a perfect pipeline of the standalone step times: "
        f"**{r['whole_run_ratio']:.3f}**.",
        "",
        "Training the same DBN (same updates per layer), same run:",
        "",
        "| contender | training s | vs pipeline |",
        "| --- | --- | --- |",
    ]
    base = r["pipeline"]["training_s"]
    for name, key in (("pipedbn pipeline, 3 processes x 1 thread", "pipeline"),
                      ("pipedbn pipeline, 2 processes x 1 thread (`0-1|2`)", "two_ranks"),
                      ("in-process streaming, 1 thread", "in_process_1_thread"),
                      ("in-process streaming, 2 threads", "in_process_2_threads"),
                      ("sequential greedy, 1 process, 1 thread", "greedy_in_process")):
        t = r[key]["training_s"]
        lines.append(f"| {name} | {t:.2f} | {t / base:.2f}x the time |")
    s_rate, g_rate = r["same_work_pipeline"]["samples_per_s"], r["same_work_gpipe"]["samples_per_s"]
    lines += [
        "",
        f"Same work for a peer (every layer trains on every micro-batch, `offset_epochs=0`): "
        f"pipedbn {s_rate:,.0f} samples/s against `torch.distributed.pipelining` "
        f"`ScheduleGPipe` (forward only, {r['microbatches']} micro-batches per step, same "
        f"layers and ranks) {g_rate:,.0f} samples/s: **{s_rate / g_rate:.2f}x**.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
