"""Plot a run directory's ``metrics.jsonl``: learning curves and the pipeline timeline.

Run from the repository root::

    python -m tools.plot_metrics RUN_DIR [-o OUT_DIR]

Writes two PNGs into ``OUT_DIR`` (default ``RUN_DIR/plots``) and prints their paths:

* ``curves.png``: one panel per ``rbm/*`` and ``eval/*`` scalar tag present, x = step (the
  micro-batch index of the stream), one line per layer (replicas of a layer share its line);
  then ``throughput/samples_per_s`` with one line per rank. A panel whose positive values span
  more than 100x (layers of different scales) gets a log y axis. Dotted lines mark re-plans.
* ``timeline.png``: one row per rank, x = seconds since the first record of the run. Each
  ``pipeline/*`` record group is an interval that ends at its ``wall_time`` and lasts
  ``pipeline/wall_s``, drawn as consecutive pieces: compute, waiting for input, blocked sending
  and the rest (replica sync, bookkeeping) - totals over the interval, not the order they
  happened in. Red and orange are the pipeline's bubbles. Before a rank's first interval a
  hatched bar shows it had not started (the schedule's offset, or an idle rank before a
  re-plan); blank gaps are time no interval covers (moving state at a re-plan, the final
  evaluation). A run without pipeline records (``--nproc 1``) still gets a ``timeline.png``
  that says so, so the script always writes the same two files.

Bad input (no directory, no ``metrics.jsonl``, a malformed line) exits with status 2 and one
message on stderr. Needs only matplotlib (Agg backend, no display).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CURVE_ORDER = ["rbm/recon_error", "rbm/heldout_recon_error", "rbm/free_energy_gap",
               "rbm/pseudo_log_likelihood", "rbm/weight_norm", "rbm/hidden_mean", "rbm/lr"]
PIECES = [("compute", "tab:green"), ("waiting for input", "tab:red"),
          ("blocked sending", "tab:orange"), ("other (sync, bookkeeping)", "0.55")]
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "step": int, "stage": int, "layer": int, "tag": str, "wall_time": (int, float)}


class MetricsError(Exception):
    """Input the script cannot plot; the message says which file and how to fix it."""


class Interval(NamedTuple):
    """One pipeline record group of a rank, in seconds since the run's first record."""

    start: float
    compute: float
    recv: float
    send: float
    other: float

    @property
    def end(self) -> float:
        return self.start + self.compute + self.recv + self.send + self.other


def load(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; raises MetricsError naming the first bad line."""
    if not path.is_file():
        raise MetricsError(f"{path}: no such file; pass a run directory that a `pipedbn train` "
                           "wrote (it holds metrics.jsonl)")
    records = []
    with path.open(encoding="utf-8", errors="replace") as f:  # bad bytes: a "not JSON" line
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise MetricsError(f"{path}:{n}: not JSON ({e.msg}); delete or repair that line "
                                   "(a run killed while writing can leave a partial last line)"
                                   ) from None
            bad = [k for k, t in REQUIRED.items()
                   if not isinstance(rec, dict) or not isinstance(rec.get(k), t)]
            if not bad and not isinstance(rec.get("value"), (int, float)) \
                    and not isinstance(rec.get("data"), dict):
                bad = ["value (a number) or data (an object)"]
            if bad:
                raise MetricsError(f"{path}:{n}: not a metrics record (missing or mistyped: "
                                   f"{', '.join(bad)}); delete or repair that line")
            records.append(rec)
    if not records:
        raise MetricsError(f"{path}: no records; did the run start training?")
    return records


def replans(records: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(micro-batch, wall_time) of each re-plan (``balancer/plan`` events with at > 0)."""
    ats = [(r["data"].get("at"), r["wall_time"]) for r in records
           if r["tag"] == "balancer/plan" and "data" in r]
    return sorted((at, when) for at, when in ats if isinstance(at, int) and at > 0)


def intervals(records: list[dict[str, Any]]) -> dict[int, list[Interval]]:
    """{rank: its pipeline intervals in time order}, which never overlap and whose pieces are
    >= 0. A group ends at its earliest wall_time (the first line written, microseconds after the
    timings were taken; the group's last line can come a millisecond later) and its start is
    clipped to the previous group's end."""
    t0 = min(r["wall_time"] for r in records)
    groups: dict[tuple[int, int, int], dict[str, float]] = defaultdict(dict)
    for r in records:
        if r["tag"].startswith("pipeline/") and "value" in r:
            g = groups[r["stage"], r["step"], r["layer"]]
            g[r["tag"].removeprefix("pipeline/")] = float(r["value"])
            g["end"] = min(g.get("end", math.inf), r["wall_time"] - t0)
    out: dict[int, list[Interval]] = defaultdict(list)
    prev_end: dict[int, float] = {}
    for (rank, _, _), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[1]["end"])):
        end, before = g["end"], prev_end.get(rank)
        prev_end[rank] = end
        if "wall_s" in g:
            start = max(end - g["wall_s"], 0.0 if before is None else before)
        elif before is not None:  # written before pipeline/wall_s existed
            start = before
        else:
            continue
        length = max(end - start, 0.0)
        busy = [max(g.get(k, 0.0), 0.0) for k in ("compute_s", "recv_wait_s", "send_wait_s")]
        scale = min(1.0, length / sum(busy)) if sum(busy) > 0 else 1.0
        compute, recv, send = (b * scale for b in busy)
        out[rank].append(Interval(start, compute, recv, send,
                                  max(length - compute - recv - send, 0.0)))
    return dict(sorted(out.items()))


def rank_layers(records: list[dict[str, Any]]) -> dict[int, list[int]]:
    """{rank: the first layers of its stages, in order of appearance} from pipeline records."""
    seen: dict[int, list[int]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r["wall_time"]):
        if r["tag"].startswith("pipeline/") and r["layer"] not in seen[r["stage"]]:
            seen[r["stage"]].append(r["layer"])
    return dict(seen)


def save(fig: Figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(out)
    return out


def plot_curves(records: list[dict[str, Any]], out: Path) -> Path:
    """Learning curves per layer and throughput per rank, one panel per tag."""
    series: dict[str, dict[int, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        tag = r["tag"]
        wanted = tag.startswith(("rbm/", "eval/")) or tag == "throughput/samples_per_s"
        if wanted and "value" in r:
            key = r["stage"] if tag.startswith("throughput/") else r["layer"]
            series[tag][key].append((r["step"], float(r["value"])))
    order = {t: i for i, t in enumerate(CURVE_ORDER)}  # then other rbm/*, eval/*, throughput
    tags = sorted(series, key=lambda t: (t.startswith("throughput/"), t.startswith("eval/"),
                                         order.get(t, len(order)), t))
    cols = min(3, max(len(tags), 1))
    rows = max(math.ceil(len(tags) / cols), 1)
    fig = Figure(figsize=(5 * cols, 3.4 * rows), layout="constrained")
    if not tags:
        fig.text(0.5, 0.5, "no rbm/*, eval/* or throughput records", ha="center")
    for i, tag in enumerate(tags):
        ax = fig.add_subplot(rows, cols, i + 1)
        who = "rank" if tag.startswith("throughput/") else "layer"
        for key, points in sorted(series[tag].items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                    color=f"C{key % 10}", label=f"{who} {key}")
        for j, (at, _) in enumerate(replans(records)):
            ax.axvline(at, color="k", linestyle=":", label="re-plan" if j == 0 else None)
        values = [v for points in series[tag].values() for _, v in points if math.isfinite(v)]
        if values and min(values) > 0 and max(values) > 100 * min(values):  # different scales
            ax.set_yscale("log")
        ax.set_title(tag, fontsize=10)
        ax.set_xlabel("step (micro-batch)")
        ax.grid(alpha=0.3)
        if i == 0 or who == "rank":
            ax.legend(fontsize=8)
    return save(fig, out)


def plot_timeline(records: list[dict[str, Any]], out: Path, title: str = "") -> Path:
    """One row per rank: its pipeline intervals split into compute and waiting."""
    ivs, layers = intervals(records), rank_layers(records)
    t0 = min(r["wall_time"] for r in records)
    fig = Figure(figsize=(12, 1.6 + 0.55 * max(len(ivs), 2)), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(f"pipeline timeline: {title}" if title else "pipeline timeline")
    if not ivs:
        ax.text(0.5, 0.5, "no pipeline records (single-process run)", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return save(fig, out)
    for rank, spans in ivs.items():
        ax.broken_barh([(0.0, spans[0].start)], (rank - 0.4, 0.8), facecolors="0.93",
                       edgecolor="0.7", hatch="///", label="not started (schedule)"
                       if rank == min(ivs) else None)
        for k, (name, color) in enumerate(PIECES):
            bars = [(iv.start + sum(iv[1:k + 1]), iv[k + 1]) for iv in spans]
            ax.broken_barh(bars, (rank - 0.4, 0.8), facecolors=color,
                           label=name if rank == min(ivs) else None)
    for j, (at, when) in enumerate(replans(records)):
        ax.axvline(when - t0, color="k", linestyle=":", label="re-plan" if j == 0 else None)
        ax.text(when - t0, min(ivs) - 0.5, f" re-plan at {at}", fontsize=8, va="bottom")
    ax.set_yticks(list(ivs), [f"rank {r} (layer{'s' if len(layers.get(r, [])) > 1 else ''} "
                              f"{' → '.join(map(str, layers.get(r, [])))})" for r in ivs])
    ax.set_ylim(max(ivs) + 0.6, min(ivs) - 0.85)
    ax.set_xlim(0, max(r["wall_time"] for r in records) - t0)
    ax.set_xlabel("seconds since the run's first record")
    fig.legend(loc="outside lower center", ncols=6, fontsize=9)
    return save(fig, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a run directory (holds metrics.jsonl)")
    parser.add_argument("-o", "--out", type=Path, metavar="OUT_DIR",
                        help="where the PNGs go (default: RUN_DIR/plots)")
    args = parser.parse_args(argv)
    try:
        if not args.run_dir.is_dir():
            raise MetricsError(f"{args.run_dir}: no such directory; pass the run directory that "
                               "`pipedbn train` printed last")
        records = load(args.run_dir / "metrics.jsonl")
        out = args.out or args.run_dir / "plots"
        written = [plot_curves(records, out / "curves.png"),
                   plot_timeline(records, out / "timeline.png", args.run_dir.resolve().name)]
    except (MetricsError, OSError) as e:  # OSError: unreadable input, unwritable OUT_DIR
        print(f"plot_metrics: error: {e}", file=sys.stderr)
        return 2
    print(*written, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
