"""Label units in the top RBM (``stages/label.py``) and up-down fine-tuning (``updown.py``):
the free energy of each label against brute force, the config and data checks, classification
well above chance on digits, the export round trip; on real processes, the pipeline's bit
equality with the reference, exact resume, and the CLI's up-down and eval."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ONE_THREAD, ROOT, cli
from reference import train_reference
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from warm_cli import WarmCLI

from pipedbn.config import load_config, resolve_defaults
from pipedbn.data.loader import open_data
from pipedbn.errors import ConfigError, DataError, ModelError
from pipedbn.model.dbn import Model, load
from pipedbn.model.rbm import RBMSettings
from pipedbn.run.rundir import layer_state_path
from pipedbn.updown import UpDownSettings, untied, updown_step
from stages.label import LabelRBM, label_free_energies

TINY = str(ROOT / "configs" / "tiny.yaml")
LABELS = ["layers.2.labels=10"]


def _config(*overrides: str):  # type: ignore[no-untyped-def]
    return resolve_defaults(load_config(TINY, [*LABELS, *overrides]))


def _tiny_label_rbm(n: int = 3, k: int = 3, h: int = 2) -> LabelRBM:
    cfg = _config()
    layer = LabelRBM(n, h, RBMSettings.of(cfg.layers[2]), labels=k, seed=1, index=0,
                     steps_per_epoch=1, total_steps=1, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def _energy(layer: LabelRBM, v: torch.Tensor, lab: int, hid: torch.Tensor) -> float:
    e = -(v @ layer.visible_bias) - layer.label_bias[lab] - hid @ layer.hidden_bias
    return float(e - v @ layer.weight @ hid - layer.label_weight[lab] @ hid)


def test_label_free_energy_and_posterior_match_brute_force() -> None:
    layer = _tiny_label_rbm()
    states = [torch.tensor(s, dtype=torch.float64) for s in itertools.product([0, 1], repeat=3)]
    hiddens = [torch.tensor(s, dtype=torch.float64) for s in itertools.product([0, 1], repeat=2)]
    v = torch.stack(states)
    got = label_free_energies(v, layer.weight, layer.hidden_bias, layer.label_weight,
                              layer.label_bias, chunk=3) - (v @ layer.visible_bias)[:, None]
    for r, s in enumerate(states):
        for lab in range(3):
            z = sum(math.exp(-_energy(layer, s, lab, hid)) for hid in hiddens)
            assert got[r, lab].item() == pytest.approx(-math.log(z), rel=1e-10)
        # p(label | v) of the joint distribution, by enumeration, is the softmax of -F
        joint = [sum(math.exp(-_energy(layer, s, lab, hid)) for hid in hiddens)
                 for lab in range(3)]
        want = torch.tensor(joint, dtype=torch.float64) / sum(joint)
        assert torch.allclose((-got[r]).softmax(0), want, rtol=1e-10)
    assert torch.equal(layer.classify(v), got.argmin(1))


def test_label_layer_trains_with_its_labels_and_keeps_velocities() -> None:
    layer = _tiny_label_rbm()
    names = dict(layer.named_buffers())
    assert {"label_weight_inc", "label_bias_inc"} <= set(names)
    assert len(layer.velocities()) == 5
    before = layer.label_bias.clone()
    v = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    layer.train_labelled(v, torch.tensor([0, 2]))
    assert not torch.equal(layer.label_bias, before) and layer.step == 1
    with pytest.raises(RuntimeError, match="train_labelled"):
        layer.train_step(v)


@pytest.mark.parametrize("overrides,message", [
    (["layers.1.labels=10"], "layers.1.labels: label units belong to the top layer"),
    (["layers.2.labels=1"], "layers.2.labels: the number of classes, from 2"),
    (["layers.2.kind=gaussian"], "label units join binary features"),
])
def test_label_config_mistakes_are_named(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [*LABELS, *overrides])


def test_label_kind_without_labels_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs its number of classes"):
        load_config(TINY, ["layers.2.kind=label"])


def test_labels_outside_the_classes_are_one_data_error() -> None:
    cfg = resolve_defaults(load_config(TINY, ["layers.2.labels=5"]))
    with pytest.raises(DataError, match=r"label 5 of sample \d+ .* not a class index in "
                                        r"\[0, 5\) for layers.2.labels=5"):
        open_data(cfg, unit_range=True, values=False)
    cfg = resolve_defaults(load_config(TINY, [*LABELS, "data.source=bars"]))
    with pytest.raises(DataError, match="has no labels, which label units"):
        open_data(cfg, unit_range=True, values=False)


@pytest.fixture(scope="module")
def trained() -> tuple[list, object]:
    """The tiny digits DBN with label units, trained by the reference (in this process)."""
    cfg = _config("rbm.epochs=10")
    data = open_data(cfg, unit_range=True)
    return train_reference(cfg, data), data


def test_label_dbn_on_digits_classifies_far_better_than_chance(trained) -> None:  # type: ignore[no-untyped-def]
    layers, data = trained
    x = torch.from_numpy(data.rows(data.held_rows))
    y = torch.from_numpy(data.classes[data.held_rows])
    for layer in layers[:-1]:
        x = layer.hidden_probs(x)
    error = float((layers[-1].classify(x) != y).float().mean())
    assert error < 0.35, error  # chance: 0.9 (measured: 0.22)


def test_label_export_round_trips_and_classifies_the_same(tmp_path: Path, trained) -> None:  # type: ignore[no-untyped-def]
    layers, data = trained
    params = [{n: t.clone() for n, t in layer.named_parameters()} for layer in layers]
    model = Model([layer.kind for layer in layers], params, scale=data.scale)
    model.save(tmp_path / "m.safetensors")
    back = load(tmp_path / "m.safetensors")
    assert back.kinds == ["bernoulli", "bernoulli", "label"] and back.labels == 10
    for p, q in zip(params, back.params, strict=True):
        assert p.keys() == q.keys() and all(torch.equal(p[k], q[k]) for k in p)
    x = torch.from_numpy(data.rows(data.held_rows))
    assert torch.equal(model.classify(x), back.classify(x))
    tensors = load_file(tmp_path / "m.safetensors")
    tensors["layers.2.label_bias"] = tensors["layers.2.label_bias"][:3].clone()
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(ModelError, match="layers.2.label_bias"):
        load(tmp_path / "bad.safetensors")


def test_updown_unties_the_weights_and_is_deterministic(trained) -> None:  # type: ignore[no-untyped-def]
    layers, data = trained
    params = [{n: t.clone() for n, t in layer.named_parameters()} for layer in layers]
    runs = []
    for _ in range(2):
        model = untied(Model([layer.kind for layer in layers],
                             [{k: t.clone() for k, t in p.items()} for p in params]))
        assert torch.equal(model.params[0]["generative_weight"], model.params[0]["weight"])
        rows = data.train_rows[:100]
        x, y = torch.from_numpy(data.rows(rows)), torch.from_numpy(data.classes[rows])
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            updown_step(model, x, y, UpDownSettings(lr=0.05), g)
        runs.append(model)
    a, b = runs
    assert not torch.equal(a.params[0]["generative_weight"], a.params[0]["weight"])
    assert "generative_weight" not in a.params[-1]
    assert all(torch.equal(p[k], q[k]) for p, q in zip(a.params, b.params, strict=True)
               for k in p)


# ------------------------------------------------------------------- real processes (slow)

def _assert_states_equal(run_dir: Path, ref: list) -> None:  # type: ignore[type-arg]
    model = load_file(run_dir / "model.safetensors")
    for i, layer in enumerate(ref):
        want = layer.state_dict()
        got = torch.load(layer_state_path(run_dir, i), weights_only=True)
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), f"layer {i} {k}"
    for k in ("weight", "label_weight", "label_bias"):
        assert torch.equal(model[f"layers.2.{k}"], ref[2].state_dict()[k])


@pytest.mark.slow
def test_label_pipeline_equals_the_reference_and_resumes_exactly(tmp_path: Path) -> None:
    """3 processes (one per layer: the labels cross two links) against the in-process
    reference; then a run cut back to its checkpoint at micro-batch 40 and resumed on 2
    processes ends with the same weights bit for bit."""
    over = [*LABELS, "rbm.method=pcd", "checkpoint.every=20", "checkpoint.keep=100",
            "balancer.max_replicas=1"]
    full = tmp_path / "full"
    proc = cli("train", TINY, f"run.dir={full}", *over, "--nproc", "3", "-q")
    assert proc.returncode == 0, proc.stderr
    cfg = resolve_defaults(load_config(TINY, over))
    ref = train_reference(cfg, open_data(cfg, unit_range=True))
    _assert_states_equal(full, ref)
    summary = (full / "summary.txt").read_text()
    assert "test error of the label units" in summary
    recs = [json.loads(line) for line in (full / "metrics.jsonl").open()]
    assert any(r["tag"] == "eval/test_error" and r["layer"] == 2 for r in recs)

    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    for d in (resumed / "checkpoints").iterdir():
        if d.name == "final" or int(d.name.split("-")[1]) > 40:
            shutil.rmtree(d)
    for name in ("model.safetensors", "summary.txt", "stages.json"):
        (resumed / name).unlink(missing_ok=True)
    proc = cli("train", TINY, "--resume", str(resumed), *over, "--nproc", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    _assert_states_equal(resumed, ref)


@pytest.mark.slow
def test_cli_updown_then_eval_reports_the_test_error(tmp_path: Path, tiny_run: Path,
                                                     warm: WarmCLI) -> None:
    # every command here runs in one process: the warm interpreter's children (conftest.warm)
    cli = warm.cli
    run = tmp_path / "run"
    proc = cli("train", TINY, f"run.dir={run}", *LABELS, "rbm.epochs=10", "--nproc", "1", "-q",
               ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    proc = cli("finetune", str(run), "--method", "up-down", "--epochs", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == str(run / "updown.safetensors")
    report = json.loads((run / "updown.json").read_text())
    assert report["test_error_before"] < 0.6 and report["test_error_after"] < 0.6
    assert len(report["epochs"]) == 2
    assert {"layers.0.generative_weight", "layers.1.generative_weight"} <= set(
        load_file(run / "updown.safetensors"))
    recs = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [r["step"] for r in recs if r["tag"] == "updown/validation_error"] == [0, 1, 2]
    assert any((run / "tb" / "run").iterdir())
    proc = cli("eval", str(run / "updown.safetensors"), "--no-ais", "--samples", "200")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run / "updown.eval.json").read_text())
    assert result["held_out_rows"] == report["test_samples"]  # (the whole split: the same rows)
    assert result["test_error"] == pytest.approx(report["test_error_after"])
    assert "test error (label units" in proc.stdout
    # a DBN without label units: one clear error, exit 2
    proc = cli("finetune", str(tiny_run), "--method", "up-down")
    assert proc.returncode == 2 and "label units" in proc.stderr
    assert "Traceback" not in proc.stderr
