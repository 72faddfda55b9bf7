"""The pipeline against its bound and against its peers, on the quickstart DBN, one thread each.

Run from the repository root::

    python tools/bench_pipeline.py [--epochs 20] [--microbatches 8] [--write-docs]

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
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from benchdocs import write_section  # noqa: E402  (tools/ is this script's directory)

from pipedbn.config import Config, load_config, resolve_defaults  # noqa: E402
from pipedbn.data import open_data  # noqa: E402
from pipedbn.trainer import make_layers, make_schedule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "quickstart.yaml"


def config(epochs: float, *extra: str) -> Config:
    return resolve_defaults(load_config(CONFIG, [f"rbm.epochs={epochs}", *extra]))


def standalone(cfg: Config, steps: int) -> list[float]:
    """Median seconds of one ``train_step`` per layer, on inputs passed up by fresh layers."""
    torch.set_num_threads(1)
    data = open_data(cfg, unit_range=True)
    schedule = make_schedule(cfg, data.batches_per_epoch)
    layers = make_layers(cfg, data, schedule, torch.device("cpu"))
    xs = [torch.from_numpy(data.micro_batch(0, j)) for j in range(8)]
    out = []
    for layer in layers:
        times = []
        for s in range(steps + 10):
            x = xs[s % len(xs)]
            t0 = time.perf_counter()
            layer.train_step(x, s)
            if s >= 10:
                times.append(time.perf_counter() - t0)
        out.append(statistics.median(times))
        xs = [layer.hidden_probs(x) for x in xs]
    return out


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
    load = subprocess.Popen([sys.executable, __file__, "--busy-worker", "--epochs", str(epochs)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert load.stdout is not None and load.stdout.readline().strip() == "ready"
        return standalone(cfg, steps)[-1]
    finally:
        load.kill()
        load.wait()


def train(run_dir: Path, nproc: int, threads: int, extra: list[str]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "pipedbn", "train", str(CONFIG), f"run.dir={run_dir}",
           f"train.threads={threads}", "--nproc", str(nproc), "-q", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tag = "throughput/end_to_end_samples_per_s" if nproc > 1 else "throughput/samples_per_s"
    rate = [r["value"] for r in metrics if r["tag"] == tag][-1]
    out: dict[str, Any] = {"command": " ".join(cmd[1:]), "wall_s": wall, "samples_per_s": rate}
    if nproc > 1:
        out["stages"] = json.loads((run_dir / "stages.json").read_text())
    return out


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
           "3", __file__, "--gpipe-worker", "--epochs", str(epochs), "--microbatches",
           str(microbatches), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        sys.exit(f"GPipe peer failed:\n{proc.stderr[-3000:]}")
    res = json.loads(out.read_text())
    return {"samples_per_s": res["samples"] / res["seconds"], **res}


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

    cfg = config(args.epochs)
    data = open_data(cfg, unit_range=True)
    step_s = standalone(cfg, args.steps)
    loaded_s = standalone_loaded(cfg, args.steps, args.epochs)
    batch = cfg.train.batch_size
    bound = batch / max(step_s)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pipe = train(tmp / "pipe", 3, 1, [f"rbm.epochs={args.epochs}"])
        one = train(tmp / "one", 1, 1, [f"rbm.epochs={args.epochs}"])
        two = train(tmp / "two", 1, 2, [f"rbm.epochs={args.epochs}"])
        same = train(tmp / "same", 3, 1, [f"rbm.epochs={args.epochs}", "train.offset_epochs=0"])
        peer = gpipe(args.epochs, args.microbatches, tmp)
    last = pipe["stages"][-1]
    ideal = ideal_seconds(cfg, data.batches_per_epoch, step_s)
    total = pipe["stages"][0]["samples"] / pipe["samples_per_s"]  # first read to last stage end
    res = {
        "date": date.today().isoformat(), "epochs": args.epochs,
        "standalone_step_ms": [t * 1e3 for t in step_s],
        "bound_samples_per_s": bound,
        "last_layer_step_ms_other_core_busy": loaded_s * 1e3,
        "loaded_bound_samples_per_s": batch / loaded_s,
        "pipeline": pipe, "in_process_1_thread": one, "in_process_2_threads": two,
        "same_work_pipeline": same, "same_work_gpipe": peer,
        "steady_ratio": last["samples_per_s"] / bound,
        "steady_ratio_loaded": last["samples_per_s"] / (batch / loaded_s),
        "whole_run_ratio": ideal / total, "ideal_s": ideal, "pipeline_s": total,
    }
    out = ROOT / "tools" / "out" / "bench_pipeline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    text = report(res, args)
    print(text)
    if args.write_docs:
        write_section("bench_pipeline", text)


def report(r: dict[str, Any], args: argparse.Namespace) -> str:
    st = r["pipeline"]["stages"]
    ms = r["standalone_step_ms"]
    lines = [
        "## The pipeline: one process per layer",
        "",
        "```bash",
        f"python tools/bench_pipeline.py --epochs {args.epochs:g} --microbatches "
        f"{args.microbatches} --write-docs",
        "```",
        "",
        f"Quickstart DBN (784-500-500-2000, CD-1, micro-batch 100, {args.epochs:g} epochs per "
        f"layer, streaming with a 1-epoch offset), one thread per process, {r['date']}.",
        "",
        "| stage | layer | standalone step ms | micro-batches | busy | recv wait s | "
        "send wait s | samples/s (active) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s, t in zip(st, ms, strict=True):
        lines.append(f"| {s['stage']} | {s['layers'][0]} | {t:.2f} | {s['micro_batches']} | "
                     f"{s['busy_frac']:.1%} | {s['recv_wait_s']:.2f} | {s['send_wait_s']:.2f} | "
                     f"{s['samples_per_s']:,.0f} |")
    lines += [
        "",
        f"- Bound, `batch / slowest standalone step`: {r['bound_samples_per_s']:,.0f} "
        f"samples/s. The last stage's output rate over its active window: "
        f"{st[-1]['samples_per_s']:,.0f} samples/s = **{r['steady_ratio']:.3f}** of the bound "
        "(goal >= 0.9).",
        f"- The same bottleneck step timed while another process trains layers 0 and 1 on the "
        f"other core (as in the pipeline): {r['last_layer_step_ms_other_core_busy']:.2f} ms, a "
        f"bound of {r['loaded_bound_samples_per_s']:,.0f} samples/s; the pipeline reaches "
        f"**{r['steady_ratio_loaded']:.3f}** of it.",
        f"- Whole run: {r['pipeline_s']:.2f} s from the first read to the last stage's end, "
        f"against {r['ideal_s']:.2f} s for a perfect pipeline of the standalone step times: "
        f"**{r['whole_run_ratio']:.3f}**.",
        "",
        "| same run | training s | samples/s | vs pipeline |",
        "| --- | --- | --- | --- |",
    ]
    p = r["pipeline"]["samples_per_s"]
    for name, key in (("pipeline, 3 processes x 1 thread", "pipeline"),
                      ("in-process, 1 thread", "in_process_1_thread"),
                      ("in-process, 2 threads", "in_process_2_threads")):
        rate = r[key]["samples_per_s"]
        samples = st[0]["samples"]
        lines.append(f"| {name} | {samples / rate:.2f} | {rate:,.0f} | {rate / p:.2f} |")
    s_rate, g_rate = r["same_work_pipeline"]["samples_per_s"], r["same_work_gpipe"]["samples_per_s"]
    lines += [
        "",
        f"Same work for a peer (every layer trains on every micro-batch, `offset_epochs=0`): "
        f"pipedbn {s_rate:,.0f} samples/s against `torch.distributed.pipelining` "
        f"`ScheduleGPipe` (forward only, {args.microbatches} micro-batches per step, same "
        f"layers and ranks) {g_rate:,.0f} samples/s: **{s_rate / g_rate:.2f}x**.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
