"""Memory and start-up against the size of the data set (issue 22): synthetic 784-feature uint8
``.npy`` shards of 5,000 samples, generated into a temporary directory (removed at the end),
trained for one epoch through the local launcher (one process per layer).

    python -m tools.bench_data                                 # 5k, 200k, 2M; docs/benchmarks.md
    python -m tools.bench_data --sizes 5000,200000 --no-doc    # a quick look

Per size: the wall time of ``pipedbn train``; the launcher's part (until it starts the workers:
headers, the value check, the run directory); start-up (until rank 0 logs its plan, just before
the first micro-batch: process start, rendezvous, setup, the first evaluation); the stream's
training time (the summary's); the peak resident memory (``VmHWM``, polled every 0.1 s) of the
launcher and of rank 0; and the time of the final evaluation's work (``trainer.monitor_data``
then ``trainer.evaluate`` on the trained layers, timed here on the finished run: reading its
bounded sample and measuring every layer on it). The 2M set (400 shards, 1.6 GB) is generated
only when the temporary directory's disk has room for twice its size.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pipedbn.config import load_config, resolve_defaults
from pipedbn.data.prepare import run_data
from pipedbn.pipeline.finish import evaluate, monitor_data
from pipedbn.pipeline.layers import make_layers, make_schedule
from pipedbn.run.rundir import layer_state_path
from tools.benchdocs import write_section

ROOT = Path(__file__).resolve().parents[1]
SHARD = 5_000
FEATURES = 784
SECTION = "bench_data"


@dataclass
class Row:
    samples: int
    shards: int
    wall_s: float
    launcher_s: float
    startup_s: float
    training_s: float
    final_eval_s: float
    eval_rows: int
    launcher_peak_mb: float
    rank0_peak_mb: float
    all_peak_mb: float


def make_shards(folder: Path, samples: int, seed: int = 0) -> None:
    """``samples`` rows of uint8 pixels in shards of ``SHARD`` (a random image each: what is
    measured is reading, not learning)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(-(-samples // SHARD)):
        n = min(SHARD, samples - k * SHARD)
        np.save(folder / f"part-{k:05d}.npy",
                rng.integers(0, 256, (n, FEATURES), dtype=np.uint8))


def _hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _rank(pid: int) -> int | None:
    """The RANK of a worker process (None for the launcher and others)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


class Peaks:
    """Peak resident memory of a process tree, polled (``VmHWM`` is the kernel's own peak)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb: dict[int, int] = {}
        self.rank: dict[int, int | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for p in [self.pid, *_descendants(self.pid)]:
                hwm = _hwm_kb(p)
                if hwm is not None:
                    self.peak_kb[p] = max(hwm, self.peak_kb.get(p, 0))
                    if self.rank.get(p) is None:  # (read again: a fork not yet exec'd)
                        self.rank[p] = _rank(p)
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def mb(self, rank: int | None) -> float:
        """The launcher's (None) or a rank's peak, in MB."""
        if rank is None:
            return self.peak_kb.get(self.pid, 0) / 1000
        return max((kb for p, kb in self.peak_kb.items() if self.rank.get(p) == rank),
                   default=0) / 1000


def train(folder: Path, run_dir: Path, layers: str, env: dict[str, str]) -> Row:
    cmd = [sys.executable, "-m", "pipedbn", "train", "configs/quickstart.yaml",
           "data.source=npy", f"data.path={folder}/part-*.npy", "rbm.epochs=1",
           "train.offset_epochs=0", f"layers=[{layers}]", "monitor.progress=off",
           "train.threads=1",  # one process per layer: the launcher and its workers measured
           f"run.dir={run_dir}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peaks = Peaks(proc.pid)
    marks: dict[str, float] = {}
    err: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(line)
            if "starting" in line and "local processes" in line:
                marks.setdefault("launcher", time.perf_counter() - t0)
            if line.startswith("[pipedbn rank 0] plan:"):
                marks.setdefault("startup", time.perf_counter() - t0)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc.wait()
    wall = time.perf_counter() - t0
    peaks.stop()
    reader.join()
    if proc.returncode != 0:
        raise SystemExit(f"pipedbn train failed ({proc.returncode}):\n{''.join(err[-20:])}")
    text = (run_dir / "summary.txt").read_text()
    m = re.search(r"through the pipeline in ([0-9.]+) s", text)
    assert m is not None, text
    eval_s, rows = final_eval(run_dir)
    samples = len(list(folder.glob("part-*.npy"))) * SHARD
    return Row(samples, len(list(folder.glob("part-*.npy"))), wall, marks.get("launcher", 0.0),
               marks.get("startup", 0.0), float(m.group(1)), eval_s, rows, peaks.mb(None),
               peaks.mb(0), sum(peaks.peak_kb.values()) / 1000)


def final_eval(run_dir: Path) -> tuple[float, int]:
    """Seconds of the final evaluation's work on the finished run, and the rows it measures."""
    cfg = resolve_defaults(load_config(run_dir / "config.yaml"))
    data = run_data(cfg, run_dir, values=False)  # trusted by its manifest: no value read
    cpu = torch.device("cpu")
    layers = make_layers(cfg, data, make_schedule(cfg, data.batches_per_epoch), cpu)
    for i, layer in enumerate(layers):  # as distributed._finish does
        layer.load_state_dict(torch.load(layer_state_path(run_dir, i), map_location=cpu,
                                         weights_only=True))
    t0 = time.perf_counter()
    held, ref = monitor_data(data, cpu, torch.float32)
    evaluate(layers, held, ref)
    return time.perf_counter() - t0, len(held)


def table(rows: list[Row], layers: str, command: str) -> str:
    base = rows[0]
    lines = [
        f"Synthetic 784-feature uint8 `.npy` shards of {SHARD:,} samples, `data.source=npy`, "
        f"layers {layers}, `rbm.epochs=1`, one process per layer through the local launcher; "
        f"one round per size on this {os.cpu_count()}-core machine (load average "
        f"{os.getloadavg()[0]:.1f} at the end). Measured {time.strftime('%Y-%m-%d')} by "
        f"`{command}`.",
        "",
        "| samples | shards | wall s | launcher s | start-up s | training s | final eval s "
        "(rows) | launcher peak MB | rank-0 peak MB | all processes MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.samples:,} | {r.shards} | {r.wall_s:.1f} | {r.launcher_s:.1f} | "
                     f"{r.startup_s:.1f} | {r.training_s:.1f} | {r.final_eval_s:.2f} "
                     f"({r.eval_rows:,}) | {r.launcher_peak_mb:.0f} | {r.rank0_peak_mb:.0f} | "
                     f"{r.all_peak_mb:.0f} |")
    if len(rows) > 1:
        top = rows[-1]
        lines += ["", f"Largest against smallest ({top.samples:,} / {base.samples:,} samples): "
                  f"launcher peak {top.launcher_peak_mb / base.launcher_peak_mb:.2f}x, rank-0 "
                  f"peak {top.rank0_peak_mb / base.rank0_peak_mb:.2f}x, start-up "
                  f"{top.startup_s / base.startup_s:.2f}x, launcher "
                  f"{top.launcher_s / base.launcher_s:.2f}x, final evaluation "
                  f"{top.final_eval_s / base.final_eval_s:.2f}x (goals: 1.2x, 1.2x, 1.5x, -, "
                  "independent of the size)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="5000,200000,2000000",
                    help="samples per data set, comma-separated (multiples of 5,000)")
    ap.add_argument("--layers", default="64,32,16",
                    help="hidden sizes (default 64,32,16: the reading is measured, not the "
                         "arithmetic of large layers)")
    ap.add_argument("--tmp", default=None, help="where the shards go (default: $TMPDIR)")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="pipedbn-bench-data-", dir=args.tmp) as tmp:
        for n in sizes:
            need = 2 * n * FEATURES
            if shutil.disk_usage(tmp).free < need:
                print(f"skipping {n:,} samples: {need / 1e9:.1f} GB free needed in {tmp}",
                      file=sys.stderr)
                continue
            folder = Path(tmp) / f"data-{n}"
            make_shards(folder, n)
            row = train(folder, Path(tmp) / f"run-{n}", args.layers, env)
            print(asdict(row), file=sys.stderr, flush=True)
            rows.append(row)
            shutil.rmtree(folder)
            shutil.rmtree(Path(tmp) / f"run-{n}")
    niceness = os.nice(0)
    command = (f"nice -n {niceness} " if niceness else "") + "python -m tools.bench_data" + (
        f" --sizes {args.sizes}" if args.sizes != ap.get_default("sizes") else "") + (
        f" --layers {args.layers}" if args.layers != ap.get_default("layers") else "")
    text = table(rows, args.layers, command)
    print(text)
    if not args.no_doc and rows:
        write_section(SECTION, "## Data size: memory and start-up\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
