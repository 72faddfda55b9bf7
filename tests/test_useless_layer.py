"""A model that learned nothing says so: at the end of training, a layer whose hidden units are
nearly constant (or saturated) on the final evaluation's held-out sample gets a warning in the
log, summary.txt, metrics.jsonl and TensorBoard's text, with what to try; a good run gets none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli

pytestmark = pytest.mark.slow  # every test here starts processes

PHRASE = "hidden units are nearly constant"


def _train(run_dir: Path, *overrides: str) -> str:
    proc = cli("train", "configs/tiny.yaml", *overrides, f"run.dir={run_dir}", "--nproc", "1",
               "-q", timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_a_useless_layer_is_flagged_with_what_to_try(tmp_path: Path) -> None:
    # a learning rate far too small: the weights stay at their tiny initial values
    run_dir = tmp_path / "useless"
    err = _train(run_dir, "layers=[16]", "rbm.lr=1e-6")
    assert err.count(PHRASE) == 1 and "layer 0: 100% of its 16 hidden units" in err, err
    assert "rbm.epochs" in err and "rbm.lr" in err  # what to try
    assert PHRASE in (run_dir / "summary.txt").read_text()
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["layer"] for e in events if e["tag"] == "warnings/useless_layer"] == [0]
    std = [e["value"] for e in events if e["tag"] == "eval/hidden_std"]
    assert std and std[-1] < 0.01
    assert any(b"warnings/useless_layer" in p.read_bytes() for p in (run_dir / "tb").rglob("*")
               if p.is_file())


def test_a_good_run_has_no_warning(tmp_path: Path) -> None:
    run_dir = tmp_path / "good"
    err = _train(run_dir, "layers=[64,64]", "rbm.epochs=10", "data.held_out=0.3")
    assert PHRASE not in err and PHRASE not in (run_dir / "summary.txt").read_text()
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    std = [e for e in events if e["tag"] == "eval/hidden_std"]
    end = max(e["step"] for e in std)
    assert min(e["value"] for e in std if e["step"] == end) > 0.1  # both layers vary
