"""tools/reproduce.py renders docs/results.md from a saved record, without training anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import ROOT

from pipedbn.config import load_config
from tools import reproduce


def _eval(ll: float | None, interval: list[float | None] | None = None,
          probes: list[float] | None = None) -> dict[str, Any]:
    layer: dict[str, Any] = {"layer": 0}
    if ll is not None:
        layer["log_likelihood"] = ll
    if interval is not None:
        layer["log_likelihood_interval"] = interval
    out: dict[str, Any] = {"layers": [layer]}
    if probes:
        out["probe_raw_accuracy"] = 0.9213
        out["layers"] = [{"layer": i, "probe_accuracy": p} for i, p in enumerate(probes)]
    return out


def _step(cmd: str, wall: float, figures: dict[str, Any]) -> dict[str, Any]:
    return {"command": cmd, "wall_s": wall, "run_dir": "tools/out/reproduce/x", "figures": figures}


SAVED = {
    "machine": {"cpus": 2, "note": "shared"},
    "rows": {
        "rbm16-pcd": {"date": "2026-12-01 21:00 UTC", "steps": {
            "train": _step("pipedbn train configs/mnist-rbm16-pcd.yaml", 300.0, {}),
            "eval": _step("pipedbn eval R", 60.0, _eval(-151.234)),
            "eval-ais": _step("pipedbn eval R --exact-max 0", 120.0,
                              _eval(-151.5, [-151.7, -151.3])),
        }},
        "dbn-mnist": {"date": "2026-12-01 22:00 UTC", "note": "fine-tuned 20 epochs", "steps": {
            "train": _step("pipedbn train configs/mnist-dbn.yaml", 1500.0, {}),
            "eval": _step("pipedbn eval R --no-ais", 200.0,
                          _eval(None, probes=[0.95, 0.961, 0.9702])),
            "finetune": _step("pipedbn finetune R", 600.0,
                              {"test_error_before": 0.0312, "test_error_after": 0.0145}),
        }},
    },
}


def test_render_shows_our_figures_beside_the_published_ones() -> None:
    text = reproduce.render(SAVED)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| row") and "---" not in line}
    assert set(rows) == {r.id for r in reproduce.ROWS}
    r16 = rows["rbm16-pcd"]
    assert "exact **-151.23** nats" in r16 and "AIS -151.50 [-151.70, -151.30]" in r16
    assert "0.27 nat from exact" in r16 and "-149.05 uncentered" in r16
    assert "train 5.0 min + eval 1.0 min + eval-ais 2.0 min" in r16
    assert "`pipedbn train configs/mnist-rbm16-pcd.yaml`" in r16
    dbn = rows["dbn-mnist"]
    assert "test error **1.45%** fine-tuned (3.12% softmax" in dbn
    assert "probe acc raw 0.9213 / layers 0.9500/0.9610/0.9702" in dbn and "1.2%" in dbn
    # a row that was not run says so, with its projection, and shows no figure
    assert "not run (projected 25 min)" in rows["rbm500-cd1"]
    assert "-125.53" in rows["rbm500-cd1"]  # the published figure is there all the same
    assert "**dbn-mnist** (2026-12-01 22:00 UTC): fine-tuned 20 epochs" in text
    assert "2 CPU cores shared" in text


def test_from_json_rewrites_only_its_section(tmp_path: Path) -> None:
    saved, doc = tmp_path / "results.json", tmp_path / "results.md"
    saved.write_text(json.dumps(SAVED))
    doc.write_text("# Title\n\nintro\n\n<!-- reproduce:begin -->\nOLD-TABLE\n"
                   "<!-- reproduce:end -->\nafter\n")
    assert reproduce.main(["--from-json", "--json", str(saved), "--doc", str(doc)]) == 0
    body = doc.read_text()
    assert body.startswith("# Title\n\nintro\n") and body.endswith("after\n")
    assert "OLD-TABLE" not in body and "exact **-151.23** nats" in body
    assert json.loads(saved.read_text()) == SAVED  # rendering never writes the record


def test_every_row_config_exists_and_starts_with_its_command() -> None:
    configs = {a for r in reproduce.ROWS for s in r.steps for a in s.args
               if a.startswith("configs/")}
    assert configs
    for c in configs:
        first = (ROOT / c).read_text().splitlines()[0]
        assert first.startswith(f"# pipedbn train {c}"), c
        load_config(ROOT / c)  # a valid config
