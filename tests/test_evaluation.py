"""``pipedbn eval``: AIS against exact log Z, the linear probe, the command end to end.

The exact log-likelihood itself is checked against brute-force enumeration in test_rbm.py.
"""

from __future__ import annotations

import json
import math
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli

from pipedbn.config import load_config, resolve_defaults
from pipedbn.data.loader import Data, open_data
from pipedbn.eval.evaluation import EvalOptions, ais_log_partition, evaluate_dbn
from pipedbn.eval.likelihood import log_partition
from pipedbn.model.dbn import Model
from pipedbn.observe.monitor import Metrics
from pipedbn.pipeline.trainer import train_in_process


@cache
def trained(*overrides: str) -> tuple[Model, Data]:
    """A DBN trained in this process on the 8x8 digits (configs/tiny.yaml + ``overrides``)."""
    cfg = resolve_defaults(load_config("configs/tiny.yaml", ["monitor.enabled=false",
                                                             *overrides]))
    data = open_data(cfg, unit_range=True)
    result = train_in_process(cfg, data, Metrics(None))
    params = [{k: layer.state_dict()[k] for k in ("weight", "visible_bias", "hidden_bias")}
              for layer in result.layers]
    return Model([layer.kind for layer in result.layers], params), data


def splits(data: Data) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    assert data.source.labels is not None
    labels = np.asarray(data.source.labels)
    return (torch.from_numpy(data.rows(data.held_rows)),
            torch.from_numpy(data.rows(data.train_rows)),
            labels[data.held_rows], labels[data.train_rows])


def test_ais_is_exact_for_a_model_without_weights() -> None:
    """With W = 0 and the base rate equal to the model's biases every importance weight is 1."""
    b = torch.tensor([0.3, -1.0, 2.0, 0.0], dtype=torch.float64)
    c = torch.tensor([0.5, -0.5, 1.5], dtype=torch.float64)
    w = torch.zeros(4, 3, dtype=torch.float64)
    got = ais_log_partition(w, b, torch.zeros(3, dtype=torch.float64), chains=10,
                            temperatures=20, data_mean=b.sigmoid())
    assert got.log_z == pytest.approx(float(log_partition(w, b, torch.zeros(3))), abs=1e-9)
    # hidden biases are annealed in: still unbiased, and close with a few chains
    got = ais_log_partition(w, b, c, chains=50, temperatures=200, data_mean=b.sigmoid())
    assert got.log_z == pytest.approx(float(log_partition(w, b, c)), abs=0.05)


def test_ais_within_one_nat_of_exact_on_digits() -> None:
    dbn, data = trained("layers=[16]", "rbm.epochs=5")
    held, train, _, _ = splits(data)
    p = dbn.params[0]
    exact = float(log_partition(p["weight"], p["visible_bias"], p["hidden_bias"]))
    ais = ais_log_partition(p["weight"], p["visible_bias"], p["hidden_bias"], chains=100,
                            temperatures=1000, data_mean=train.mean(0), seed=1)
    assert abs(ais.log_z - exact) < 1.0, (ais, exact)
    assert ais.lower is not None and ais.lower - 0.5 < exact < ais.upper + 0.5
    # the same through evaluate_dbn: exact (16 hidden units) vs AIS (exact_max below 16)
    by_exact = evaluate_dbn(dbn, held, train[:len(held)])["layers"][0]
    by_ais = evaluate_dbn(dbn, held, train[:len(held)],
                          opts=EvalOptions(exact_max=8, ais_chains=100,
                                           ais_temperatures=1000))["layers"][0]
    assert by_exact["log_likelihood_method"] == "exact"
    assert by_ais["log_likelihood_method"] == "ais"
    assert abs(by_ais["log_likelihood"] - by_exact["log_likelihood"]) < 1.0
    lo, hi = by_ais["log_likelihood_interval"]
    assert lo < by_ais["log_likelihood"] < (math.inf if hi is None else hi)


def test_probe_on_learned_features_beats_raw_input_on_digits() -> None:
    """A sparse 256-unit layer on half the digits: its features beat the raw pixels for a
    logistic regression (seeds 0-4 gave +0.6 to +1.9 points; seed 0: 0.951 raw, 0.965)."""
    dbn, data = trained("layers=[256]", "rbm.epochs=100", "rbm.sparsity_cost=0.1",
                        "data.held_out=0.5")
    held, train, held_y, train_y = splits(data)
    out = evaluate_dbn(dbn, held, train[:len(held)], (train, train_y), held_y,
                       EvalOptions(ais=False))
    raw, learned = out["probe_raw_accuracy"], out["layers"][0]["probe_accuracy"]
    assert raw > 0.9
    assert learned > raw + 0.005, (raw, learned)


def test_probe_is_skipped_without_labels() -> None:
    dbn, data = trained("layers=[16]", "rbm.epochs=5")
    held, train, _, _ = splits(data)
    out = evaluate_dbn(dbn, held, train[:len(held)], opts=EvalOptions(ais=False))
    assert "probe_raw_accuracy" not in out and "probe_accuracy" not in out["layers"][0]
    assert any("no labels" in n for n in out["notes"])


def test_cli_eval_writes_json_and_prints_the_table(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # the shared run stays as the other tests expect it
    proc = cli("eval", str(run), "--ais-chains", "20", "--ais-temperatures", "200", timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(run / "eval.json")
    assert lines[0].split()[:2] == ["layer", "size"]
    assert any(line.split()[0] == "raw" for line in lines[2:])
    result = json.loads((run / "eval.json").read_text())
    assert {"held_out_rows", "layers", "notes", "probe_raw_accuracy", "model"} <= set(result)
    assert [r["layer"] for r in result["layers"]] == [0, 1, 2]
    first = result["layers"][0]
    assert first["log_likelihood_method"] == "ais"  # 64x32: too large to enumerate
    assert first["ais"]["chains"] == 20 and first["ais"]["temperatures"] == 200
    assert result["layers"][2]["log_likelihood_method"] == "exact"  # 24x16
    for row in result["layers"]:
        assert {"recon_error", "free_energy_gap", "pseudo_log_likelihood",
                "probe_accuracy"} <= set(row)
        assert 0 <= row["probe_accuracy"] <= 1


def test_cli_eval_of_an_export_file(tiny_run: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    shutil.copy(tiny_run / "model.safetensors", model)
    # the export's metadata holds its run's config: eval finds the data by it
    proc = cli("eval", str(model), "--no-ais", timeout=120)
    assert proc.returncode == 0, proc.stderr
    by_metadata = json.loads((tmp_path / "m.eval.json").read_text())
    proc = cli("eval", str(model), "--no-ais", "--config", "configs/tiny.yaml", timeout=120)
    assert proc.returncode == 0, proc.stderr
    given = json.loads((tmp_path / "m.eval.json").read_text())
    assert given["layers"][0]["hidden"] == 32 and given["layers"] == by_metadata["layers"]


@pytest.mark.slow
@pytest.mark.parametrize("make", ["missing", "no_model"])
def test_cli_eval_bad_input_is_one_line_exit_2(make: str, tmp_path: Path) -> None:
    target = tmp_path / "nowhere"
    if make == "no_model":
        target.mkdir()
        (target / "config.yaml").write_text("seed: 0\n")
    proc = cli("eval", str(target), timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("pipedbn: error: ") and str(target) in proc.stderr
