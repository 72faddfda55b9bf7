"""A DBN with a ``gaussian-var`` first layer through the real pipeline: bit for bit the
in-process reference on two processes (its log-variance and velocity included, in the states and
the export), resumed exactly, its variances in TensorBoard, and ``pipedbn eval`` giving the
exact log-likelihood or saying why it is not available."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ONE_PER_LAYER, ROOT, cli
from reference import train_reference
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipedbn.config import load_config, resolve_defaults
from pipedbn.data.loader import open_data
from pipedbn.run.rundir import layer_state_path

pytestmark = pytest.mark.slow  # every test here starts processes

TINY = str(ROOT / "configs" / "tiny.yaml")
GVAR = ["layers=[{hidden: 12, kind: gaussian-var}, 8]", "data.standardize=true",
        "rbm.epochs=1", ONE_PER_LAYER]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gaussian-var DBN on two local processes (one per layer), checkpointing often."""
    run_dir = tmp_path_factory.mktemp("gvar") / "run"
    proc = cli("train", TINY, f"run.dir={run_dir}", *GVAR, "checkpoint.every=20",
               "checkpoint.keep=100", "monitor.histograms_every=20")
    assert proc.returncode == 0, proc.stderr
    return run_dir


def test_two_processes_equal_the_in_process_reference(run: Path) -> None:
    cfg = resolve_defaults(load_config(TINY, GVAR))
    ref = [layer.state_dict() for layer in train_reference(cfg, open_data(cfg, unit_range=False))]
    assert "log_var" in ref[0] and "log_var_inc" in ref[0]
    model = load_file(run / "model.safetensors")
    for i, want in enumerate(ref):
        got = torch.load(layer_state_path(run, i), weights_only=True)
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), f"layer {i} {k}"
    assert torch.equal(model["layers.0.log_var"], ref[0]["log_var"])
    assert not torch.equal(ref[0]["log_var"], torch.zeros_like(ref[0]["log_var"]))
    assert "layers.1.log_var" not in model


def test_resume_is_exact(run: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    for d in (cut / "checkpoints").iterdir():
        if d.name == "final" or int(d.name.split("-")[1]) > 20:
            shutil.rmtree(d)
    for name in ("model.safetensors", "summary.txt", "stages.json"):
        (cut / name).unlink(missing_ok=True)
    proc = cli("train", TINY, "--resume", str(cut), *GVAR, "checkpoint.every=20",
               "checkpoint.keep=100", "monitor.histograms_every=20", "--nproc", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    a, b = load_file(run / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and "layers.0.log_var" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_tensorboard_shows_the_variances(run: Path) -> None:
    ea = EventAccumulator(str(run / "tb" / "layer-0"), size_guidance={"histograms": 0})
    ea.Reload()
    tags = set(ea.Tags()["histograms"])
    assert {"weights/log_var", "weights/variance"} <= tags
    last = ea.Histograms("weights/variance")[-1].histogram_value
    assert last.min >= 0.01 - 1e-6 and last.max <= 10 + 1e-6


def test_eval_gives_the_exact_likelihood_or_says_why_not(run: Path, tmp_path: Path) -> None:
    proc = cli("eval", str(run), "-o", str(tmp_path / "e.json"), "--probe-samples", "200")
    assert proc.returncode == 0, proc.stderr
    first = json.loads((tmp_path / "e.json").read_text())["layers"][0]
    assert first["kind"] == "gaussian-var" and first["log_likelihood_method"] == "exact"
    assert -200 < first["log_likelihood"] < 0
    proc = cli("eval", str(run), "-o", str(tmp_path / "f.json"), "--exact-max", "4",
               "--probe-samples", "200")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "f.json").read_text())
    assert "log_likelihood" not in result["layers"][0]
    assert ("layer 0 (gaussian-var): log-likelihood not available: exact enumeration needs "
            "at most exact_max=4 hidden units, it has 12, and AIS is not implemented for "
            "'gaussian-var' layers") in result["notes"]
    assert "not available" in proc.stdout + proc.stderr
