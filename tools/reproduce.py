"""Reproduce published RBM / DBN results on full MNIST and Fashion-MNIST; write docs/results.md.

    python -m tools.reproduce                       # every row, one after another (hours)
    python -m tools.reproduce --only rbm16-pcd      # one row (or several); the others are kept
    python -m tools.reproduce --from-json           # re-render docs/results.md, nothing run
    python -m tools.reproduce --list                # the rows, their commands and projections

Every row runs the real commands (``pipedbn train`` / ``eval`` / ``finetune``, as subprocesses,
one thread each) on a config of ``configs/``, reads the figures from the run's ``eval.json`` /
``finetune.json``, and records them with the commands and their wall times in
``docs/results.json`` (committed: the table renders from it). A row that has not been run says
so, with its projected time; no figure is written that a command did not measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

from tools.benchdocs import write_section  # noqa: E402

JSON = ROOT / "docs" / "results.json"
DOC = ROOT / "docs" / "results.md"
RUNS = ROOT / "tools" / "out" / "reproduce"
SECTION = "reproduce"

AIS = ["--ais-schedule", "sm2008", "--ais-temperatures", "14500", "--ais-chains", "100"]
SM08 = "Salakhutdinov & Murray 2008, Table 2 (ICML, \"On the quantitative analysis of DBNs\")"
PYDEEP = "PyDeep docs, examples/RBM_MNIST_small.py (Melchior), 16 hidden, PCD-1"


@dataclass
class Step:
    """One command of a row: ``what`` is train, eval or finetune; ``args`` follow the run
    directory for eval/finetune (``{run}`` in an argument is replaced by it)."""

    what: str
    args: list[str]
    name: str = ""
    """Key of the step's figures in the row's record (default: ``what``)."""
    run: str = "main"
    """Which training run of the row an eval/finetune step is about."""


@dataclass
class Row:
    id: str
    result: str
    """What is measured, as the table's first column says it."""
    steps: list[Step]
    settings: str
    published: str
    ours: Callable[[dict[str, Any]], str]
    """The figure column, from the row's record."""
    projected_min: float
    """Wall minutes this row is expected to take on 2 shared cores (shown until it is run)."""
    shortfall: str = ""
    """Where the row's setting falls short of the paper's, and what the paper's would take."""
    full: tuple[str, float, str] | None = None
    """(the paper's setting, its epochs over the epochs run, the steps it scales: ``train`` or
    ``finetune``): the table projects its time from this run's measured speed."""


def _ll(rec: dict[str, Any], step: str = "eval") -> tuple[float, list[float | None]] | None:
    layer = rec["steps"][step]["figures"]["layers"][0]
    if "log_likelihood" not in layer:
        return None
    return layer["log_likelihood"], layer.get("log_likelihood_interval", [None, None])


def _nats(v: float | None) -> str:
    return "open" if v is None else f"{v:.2f}"


def ours_ais(rec: dict[str, Any]) -> str:
    got = _ll(rec)
    if got is None:
        return "no estimate"
    ll, (lo, hi) = got
    return f"**{ll:.2f}** nats [{_nats(lo)}, {_nats(hi)}]"


def ours_exact_ais(rec: dict[str, Any]) -> str:
    exact, ais = _ll(rec, "eval"), _ll(rec, "eval-ais")
    if exact is None or ais is None:
        return "no estimate"
    (e, _), (a, (lo, hi)) = exact, ais
    return (f"exact **{e:.2f}** nats; AIS {a:.2f} [{_nats(lo)}, {_nats(hi)}], "
            f"{abs(a - e):.2f} nat from exact")


def _probes(fig: dict[str, Any]) -> str:
    layers = "/".join(f"{r['probe_accuracy']:.4f}" for r in fig["layers"] if "probe_accuracy" in r)
    return f"probe acc raw {fig.get('probe_raw_accuracy', float('nan')):.4f} / layers {layers}"


def ours_dbn(rec: dict[str, Any]) -> str:
    ft = rec["steps"]["finetune"]["figures"]
    return (f"test error **{100 * ft['test_error_after']:.2f}%** fine-tuned "
            f"({100 * ft['test_error_before']:.2f}% softmax on the frozen DBN); "
            f"{_probes(rec['steps']['eval']['figures'])}")


def ours_time(rec: dict[str, Any]) -> str:
    s, g = rec["steps"]["train-streaming"], rec["steps"]["train-greedy"]
    ps = rec["steps"]["eval-streaming"]["figures"]["layers"][-1].get("probe_accuracy")
    pg = rec["steps"]["eval-greedy"]["figures"]["layers"][-1].get("probe_accuracy")
    return (f"streaming **{s['wall_s'] / 60:.1f} min** (top-layer probe {ps:.4f}) vs greedy "
            f"**{g['wall_s'] / 60:.1f} min** ({pg:.4f}): "
            f"{g['wall_s'] / s['wall_s']:.2f}x")


def _dbn_steps(config: str, probe_samples: int) -> list[Step]:
    return [Step("train", [config]),
            Step("eval", ["--no-ais", "--probe-samples", str(probe_samples)]),
            Step("finetune", ["--epochs", "50", "--head-epochs", "2", "--batch-size", "100",
                              "--lr", "0.1"])]


def _time_steps(epochs: int) -> list[Step]:
    cfg = "configs/mnist-dbn.yaml"
    out = []
    for sched in ("streaming", "greedy"):
        out += [Step("train", [cfg, f"train.schedule={sched}", f"rbm.epochs={epochs}"],
                     f"train-{sched}", sched),
                Step("eval", ["--no-ais", "--probe-samples", "10000"], f"eval-{sched}", sched)]
    return out


ROWS = [
    Row("rbm16-pcd", "RBM 784-16, PCD-1, MNIST thresholded at 0.5: test log-likelihood, exact "
        "(enumeration) and AIS",
        [Step("train", ["configs/mnist-rbm16-pcd.yaml", "--nproc", "1"]),
         Step("eval", []),
         Step("eval", ["--exact-max", "0", *AIS, "-o", "{run}/eval-ais.json"], "eval-ais")],
        "50 epochs, lr 0.01, PCD-1 (100 chains), batch 100, no momentum/decay",
        f"-149.05 uncentered, -142.56 centered ({PYDEEP})", ours_exact_ais, 12,
        "PyDeep's uncentered setting (its `load_mnist(binary=True)` thresholds at 0.5, as we "
        "do); centering is not implemented (another issue), so the centered figure has no "
        "counterpart here"),
    Row("rbm500-cd1", "RBM 784-500, CD-1, binarized MNIST: test log-likelihood by AIS",
        [Step("train", ["configs/mnist-rbm500-cd1.yaml", "--nproc", "1"]), Step("eval", AIS)],
        "100 epochs, lr 0.05, CD-1, batch 100, momentum 0.5/0.9, decay 2e-4",
        f"CD1(500): -125.53 ({SM08})", ours_ais, 25,
        "our own learning-rate / epoch setting (constant lr, 100 epochs), not necessarily "
        "the paper's; a CD-1 model's AIS interval is often open above (mean - 3 s.e. of the "
        "weights <= 0): its log Z is uncertain upwards"),
    Row("rbm500-pcd", "RBM 784-500, PCD-1, binarized MNIST: test log-likelihood by AIS",
        [Step("train", ["configs/mnist-rbm500-pcd.yaml", "--nproc", "1"]), Step("eval", AIS)],
        "100 epochs, lr 0.01, PCD-1 (100 chains), batch 100, decay 2e-4",
        f"no PCD row in {SM08}; CD25(500): -86.34 the best there", ours_ais, 25),
    Row("rbm500-cd25", "RBM 784-500, CD-25, binarized MNIST: test log-likelihood by AIS",
        [Step("train", ["configs/mnist-rbm500-cd25.yaml", "--nproc", "1"]), Step("eval", AIS)],
        "10 epochs, lr 0.05, CD-25, batch 100, momentum 0.5/0.9, decay 2e-4",
        f"CD25(500): -86.34; CD3(500): -105.50 ({SM08})", ours_ais, 35,
        "10 epochs of CD-25 (each update costs ~12x a CD-1 update); as many epochs as the "
        "CD-1 row", ("CD-25 for 100 epochs", 10.0, "train")),
    Row("dbn-mnist", "DBN 784-500-500-2000 (mnistclassify settings), streaming pre-training, "
        "then backprop: test error; linear probe per layer (fit on all 60,000 training images) "
        "vs raw pixels",
        _dbn_steps("configs/mnist-dbn.yaml", 60000),
        "50 epochs/layer, lr 0.1, CD-1, batch 100, momentum 0.5/0.9, decay 2e-4; fine-tune 50 "
        "epochs SGD lr 0.1 momentum 0.9, batch 100",
        "1.2% (Hinton & Salakhutdinov 2006, Science); 1.25% (Hinton, Osindero & Teh 2006)",
        ours_dbn, 45,
        "fine-tuning: 50 epochs of SGD with momentum instead of mnistclassify's 200 epochs of "
        "conjugate gradient (3 line searches per 1,000-image batch)",
        ("200 epochs of fine-tuning", 4.0, "finetune")),
    Row("dbn-fashion", "Same DBN on Fashion-MNIST: fine-tuned test error; probe per layer vs "
        "logistic regression on raw pixels",
        _dbn_steps("configs/fashion-mnist-dbn.yaml", 10000), "as dbn-mnist",
        "no classic DBN figure; baseline: logistic regression on the pixels (probe raw, same run)",
        ours_dbn, 45),
    Row("time-mnist", "Pre-training wall time, streaming pipeline (3 processes) vs sequential "
        "greedy, full MNIST, same epochs; top-layer probe accuracy of each",
        _time_steps(10), "784-500-500-2000, 10 epochs per layer, otherwise as dbn-mnist",
        "— (a property of pipedbn, no paper figure)", ours_time, 30),
]
BY_ID = {r.id: r for r in ROWS}


def _command(step: Step, run_dir: str | None) -> list[str]:
    if step.what == "train":
        return ["pipedbn", "train", *step.args, f"run.out={RUNS.relative_to(ROOT)}"]
    assert run_dir is not None
    return ["pipedbn", step.what, run_dir, *(a.replace("{run}", run_dir) for a in step.args)]


def _figures(step: Step, run_dir: str, args: list[str]) -> dict[str, Any]:
    if step.what == "eval":
        out = args[args.index("-o") + 1] if "-o" in args else f"{run_dir}/eval.json"
        return json.loads((ROOT / out).read_text())  # type: ignore[no-any-return]
    if step.what == "finetune":
        return json.loads((ROOT / run_dir / "finetune.json").read_text())  # type: ignore
    return {}


def run_row(row: Row, log_dir: Path) -> dict[str, Any]:
    """Run ``row``'s commands one after another; its record (figures, commands, wall times)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    runs: dict[str, str] = {}
    rec: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "settings": row.settings, "steps": {}}
    log_dir.mkdir(parents=True, exist_ok=True)
    for step in row.steps:
        cmd = _command(step, runs.get(step.run))
        name = step.name or step.what
        log_path = log_dir / f"{row.id}.{name}.log"
        print(f"[{row.id}] {' '.join(cmd)}  (log: {log_path})", flush=True)
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.run([sys.executable, "-m", "pipedbn", *cmd[1:]], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=log, text=True)
            log.write(proc.stdout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"[{row.id}] {' '.join(cmd)} failed (exit {proc.returncode}); "
                             f"see {log_path}")
        if step.what == "train":
            runs[step.run] = proc.stdout.strip().splitlines()[-1]
        run_dir = runs[step.run]
        rec["steps"][name] = {"command": " ".join(cmd), "wall_s": round(wall, 1),
                              "run_dir": run_dir,
                              "figures": _figures(step, run_dir, cmd[3:])}
        print(f"[{row.id}] {name}: {wall:.0f} s", flush=True)
    return rec


def _fmt_min(s: float) -> str:
    return f"{s / 60:.1f} min"


def render(results: dict[str, Any]) -> str:
    """The results table (markdown) from a saved record of the rows."""
    machine = results.get("machine", {})
    lines = [f"Measured on {machine.get('cpus', '?')} CPU cores shared with other jobs "
             f"({machine.get('note', '')}); one thread per process, every command under "
             f"`nice`. Regenerate: `python -m tools.reproduce [--only ROW]`; render only: "
             f"`python -m tools.reproduce --from-json`.", "",
             "| row | result | pipedbn (ours) | published (source) | settings | wall time | "
             "commands |", "| --- | --- | --- | --- | --- | --- | --- |"]
    notes: list[str] = []
    for row in ROWS:
        rec = results.get("rows", {}).get(row.id)
        if rec is None:
            ours = f"not run (projected {row.projected_min:.0f} min)"
            wall = "—"
            cmds = "; ".join(f"`{' '.join(_command(s, 'RUN_DIR'))}`" for s in row.steps)
        else:
            ours = row.ours(rec)
            wall = " + ".join(f"{k} {_fmt_min(v['wall_s'])}" for k, v in rec["steps"].items())
            cmds = "; ".join(f"`{v['command']}`" for v in rec["steps"].values())
        settings = row.settings if rec is None else rec.get("settings", row.settings)
        lines.append(f"| {row.id} | {row.result} | {ours} | {row.published} | {settings} | "
                     f"{wall} | {cmds} |")
        if row.shortfall and (rec is None or rec.get("settings", row.settings) == row.settings):
            projected = ""
            if row.full is not None and rec is not None:
                what, factor, prefix = row.full
                took = sum(v["wall_s"] for k, v in rec["steps"].items() if k.startswith(prefix))
                projected = (f" {what} would take about {took * factor / 60:.0f} min here "
                             f"(this run's {prefix} time x {factor:g}).")
            notes.append(f"- **{row.id}**: {row.shortfall}.{projected}")
        if rec is not None and rec.get("note"):
            notes.append(f"- **{row.id}** ({rec['date']}): {rec['note']}")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def load(path: Path = JSON) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    return {"rows": {}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", metavar="ROW", choices=list(BY_ID),
                    help="run these rows only (the others keep their saved figures)")
    ap.add_argument("--from-json", action="store_true", help="render the saved figures only")
    ap.add_argument("--list", action="store_true", help="list the rows and their commands")
    ap.add_argument("--json", type=Path, default=JSON, help=f"record file (default {JSON})")
    ap.add_argument("--doc", type=Path, default=DOC, help=f"page to write (default {DOC})")
    ap.add_argument("--note", default="", help="a note recorded with the rows run now")
    args = ap.parse_args(argv)
    if args.list:
        for row in ROWS:
            print(f"{row.id} (~{row.projected_min:.0f} min): {row.result}")
            for s in row.steps:
                print("   ", " ".join(_command(s, "RUN_DIR")))
        return 0
    results = load(args.json)
    if not args.from_json:
        results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                              "note": "the machine was shared with 4 other workers' jobs "
                                      "while these ran; wall times are what we saw"}
        for rid in args.only or list(BY_ID):
            rec = run_row(BY_ID[rid], RUNS / "logs")
            if args.note:
                rec["note"] = args.note
            results.setdefault("rows", {})[rid] = rec
            args.json.write_text(json.dumps(results, indent=1) + "\n")  # saved row by row
    text = render(results)
    write_section(SECTION, text, args.doc)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
