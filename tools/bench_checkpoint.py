"""What checkpoints cost: the same run with checkpoints at the default interval and with only
the final state; and (``--stall``) how long a stage stops for each checkpoint.

    python -m tools.bench_checkpoint [--config configs/quickstart.yaml] [--pairs 3] [--write-docs]
    python -m tools.bench_checkpoint --stall [--saves 15] [--write-docs]

Each pair runs the config twice on local processes, once with the default ``checkpoint.every``
and once with ``checkpoint.every=0``, alternating which goes first (these machines are noisy).
The figure is the end-to-end samples/s with checkpoints over without, per pair; the goal is
>= 0.98. Results go to tools/out/bench_checkpoint.json and, with --write-docs, to
docs/benchmarks.md.

``--stall``: one process saves the config's layers (``--features`` inputs: MNIST's 784 by
default) ``--saves`` times, 0.3 s apart, alternately with the background writer (``Saver``'s
default) and writing in its own thread (as before 2026-12-03), and times what the stage waits
for each checkpoint: ``Saver.save_upto``, and the final ``close``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pipedbn.config import load_config, resolve_defaults
from pipedbn.pipeline.layers import make_layer
from pipedbn.pipeline.schedule import build_schedule
from pipedbn.run.checkpoint import Saver
from tools.bench_monitor import ROOT, overhead
from tools.benchdocs import publish, write_section


def measure(run_dir: Path, record: dict[str, Any]) -> None:
    """Checkpoints kept, their bytes, and the largest share of a rank's time spent writing."""
    steps = [s for s in (run_dir / "checkpoints").iterdir() if s.name != "final"]
    record["checkpoints_kept"] = len(steps)
    record["checkpoint_bytes"] = sum(f.stat().st_size for s in steps for f in s.iterdir())
    stages = json.loads((run_dir / "stages.json").read_text())
    record["checkpoint_share"] = max(st["checkpoint_s"] / st["active_s"]
                                     for st in stages if st["active_s"] > 0)


def stalls(config: str, features: int, saves: int) -> dict[str, Any]:
    """Seconds the stage waits per checkpoint, by writer (``background``, ``in the stage``)."""
    torch.set_num_threads(1)
    cfg = resolve_defaults(load_config(config, ["checkpoint.every=1"]))
    n = len(cfg.layers)
    schedule = build_schedule("streaming", 10 * saves + 10, [1.0] * n, 0.0)
    layers = [make_layer(cfg, i, features, schedule, torch.device("cpu"),
                         torch.full((features,), 0.3).numpy() if i == 0 else None)
              for i in range(n)]
    out: dict[str, list[float]] = {"background": [], "in the stage": []}
    with tempfile.TemporaryDirectory(prefix="pipedbn-bench-ckpt-", dir=ROOT) as tmp:
        for k in range(saves):
            for background in ((True, False) if k % 2 == 0 else (False, True)):
                saver = Saver(Path(tmp) / f"{k}{background}", cfg, schedule, 0,
                              background=background)
                t0 = time.perf_counter()
                saver.save_upto(layers, 1)
                waited = time.perf_counter() - t0
                time.sleep(0.3)  # the stage trains meanwhile
                t0 = time.perf_counter()
                saver.close()
                waited += time.perf_counter() - t0
                out["background" if background else "in the stage"].append(waited)
    nbytes = sum(t.numel() * t.element_size() for layer in layers
                 for t in layer.state_dict().values())
    return {"config": config, "features": features, "saves": saves, "bytes": nbytes,
            "date": time.strftime("%Y-%m-%d"), "stalls": out}


def stall_report(r: dict[str, Any]) -> str:
    med = {k: statistics.median(v) for k, v in r["stalls"].items()}
    rows = [f"| {k} | {med[k] * 1e3:.1f} | {max(v) * 1e3:.1f} |" for k, v in r["stalls"].items()]
    return "\n".join([
        f"Measured {r['date']} on this machine by `python -m tools.bench_checkpoint --stall "
        f"--saves {r['saves']}`: {r['config']}'s layers ({r['features']} inputs, "
        f"{r['bytes']:,} bytes of state), one process, {r['saves']} checkpoints each way, "
        "interleaved.", "",
        "| checkpoint written | stage waits, median ms | max ms |", "|---|---|---|", *rows, "",
        f"The background writer takes {med['in the stage'] / med['background']:.1f}x less "
        "of the stage's time per checkpoint: the stage copies the state; serialising, the "
        "checksum and the `fsync` happen while it trains."])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--stall", action="store_true",
                    help="time the stage's wait per checkpoint instead (one process)")
    ap.add_argument("--saves", type=int, default=15)
    ap.add_argument("--features", type=int, default=784)
    ap.add_argument("overrides", nargs="*", help="config overrides for both runs")
    args = ap.parse_args()
    if args.stall:
        text = stall_report(stalls(args.config, args.features, args.saves))
        print(text)
        if args.write_docs:
            write_section("checkpoint_stall", text)
        return
    result = overhead(args.config, args.pairs, args.overrides, ["checkpoint.every=0"], measure)
    publish(result, ROOT / "tools" / "out" / "bench_checkpoint.json", report(result),
            "checkpoints" if args.write_docs else None)


def report(r: dict[str, Any]) -> str:
    cmd = " ".join(["python -m tools.bench_checkpoint --config", r["config"],
                    f"--pairs {len(r['pairs'])}", *r["overrides"]])
    lines = [f"Measured {r['date']} on {r['machine']}, one thread per process: `{cmd}`.", "",
             "| pair | checkpoints (samples/s) | final only | ratio | checkpoints kept | "
             "bytes per checkpoint | writing, of the busiest rank's time |",
             "|---|---|---|---|---|---|---|"]
    for i, p in enumerate(r["pairs"], 1):
        on = p["on"]
        per = on["checkpoint_bytes"] / max(on["checkpoints_kept"], 1)
        lines.append(f"| {i} | {on['samples_per_s']:,.0f} | {p['off']['samples_per_s']:,.0f} | "
                     f"{p['ratio']:.3f} | {on['checkpoints_kept']} | {per:,.0f} | "
                     f"{on['checkpoint_share']:.2%} |")
    share = statistics.median(p["on"]["checkpoint_share"] for p in r["pairs"])
    lines += ["", f"Median ratio: **{r['median_ratio']:.3f}** (goal >= 0.98, i.e. <= 2% "
              f"overhead); the rank that spends most on checkpoints spends {share:.2%} of its "
              "active time writing them (median), a figure the machine's noise does not blur."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
