"""The timings README quotes, measured, with the machine they were measured on.

Run from the repository root::

    python -m tools.readme_timings                 # the quickstart, default launch and --nproc 1
    python -m tools.readme_timings --tests         # and the fast tier and the full test suite

Each figure is one run as README's command runs it (the quickstart with its defaults: its own
thread count, monitoring on), so the numbers are what a user sees, not a benchmark's best case.
The report names the processor, the cores this process may use and the load average before and
after, since on a shared machine the same command takes longer. ``--json FILE`` keeps it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    """Processor, usable cores and the load average now."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"processor": model, "cores": cores, "load_average": os.getloadavg()[0]}


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds of ``cmd`` run from the repository root, and its stdout + stderr."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"readme_timings: error: {' '.join(cmd)} failed "
                         f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, proc.stdout + proc.stderr


def training_seconds(run_dir: Path) -> float:
    """The run's own training time: samples over its end-to-end rate (``summary.txt``)."""
    line = next(row for row in (run_dir / "summary.txt").read_text().splitlines()
                if "samples through the pipeline in" in row)
    return float(line.split(" in ", 1)[1].split(" s", 1)[0])


def quickstart(nproc: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "pipedbn", "train", "configs/quickstart.yaml",
               f"run.dir={run_dir}", "-q"] + ([] if nproc is None else ["--nproc", str(nproc)])
        wall, _ = timed(cmd)
        shown = "pipedbn train configs/quickstart.yaml" + (
            "" if nproc is None else f" --nproc {nproc}")
        return {"command": shown, "wall_s": wall, "training_s": training_seconds(run_dir)}


def tests(marker: str | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += ["-m", marker] if marker else []
    wall, out = timed(cmd)
    closing = [line for line in out.splitlines() if " passed" in line]
    return {"command": "python -m pytest" + (f" -m {marker}" if marker else ""),
            "wall_s": wall, "result": closing[-1].strip("= ") if closing else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", action="store_true", help="time the test tiers too")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    before = machine()
    rows = [quickstart(None), quickstart(1)]
    if args.tests:
        rows += [tests("fast"), tests(None)]
    report = {"machine": before, "load_average_after": os.getloadavg()[0], "rows": rows,
              "date": time.strftime("%Y-%m-%d")}
    print(f"{before['processor']}, {before['cores']} cores usable, load average "
          f"{before['load_average']:.1f} before, {report['load_average_after']:.1f} after "
          f"({report['date']})")
    for row in rows:
        extra = (f", {row['training_s']:.1f} s training" if "training_s" in row
                 else f" ({row['result']})")
        print(f"  {row['command']}: {row['wall_s']:.1f} s{extra}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
