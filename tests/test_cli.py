"""End to end through the real command line: train, export, load, and users' mistakes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import cli
from safetensors import safe_open
from warm_cli import WarmCLI

import pipedbn
from pipedbn.run.rundir import layer_state_path

pytestmark = pytest.mark.slow  # every test here starts processes


def assert_user_error(proc, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pipedbn: error:")]
    assert len(errors) == 1, proc.stderr
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)


def test_train_writes_a_complete_run_directory(tiny_run: Path) -> None:
    for name in ("config.yaml", "preprocess.pt", "metrics.jsonl", "model.safetensors",
                 "summary.txt"):
        assert (tiny_run / name).is_file(), name
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert cfg["run"]["dir"] == str(tiny_run) and cfg["layers"][0]["lr"] == 0.1
    assert [layer_state_path(tiny_run, i).is_file() for i in range(3)] == [True] * 3
    assert not list(tiny_run.rglob("*.tmp"))


def test_export_and_load(tiny_run: Path, tmp_path: Path, warm: WarmCLI) -> None:
    out = tmp_path / "dbn.safetensors"
    proc = warm.cli("export", str(tiny_run), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    with safe_open(str(out), framework="pt") as f:  # loads without executing code
        meta = f.metadata()
        keys = set(f.keys())
        assert f.get_tensor("layers.0.weight").shape == (64, 32)
    assert meta["format"] == "pipedbn-dbn/1" and yaml.safe_load(meta["config"])["layers"]
    assert {f"layers.{i}.{n}" for i in range(3)
            for n in ("weight", "visible_bias", "hidden_bias")} == keys

    dbn = pipedbn.load(out)
    state = torch.load(layer_state_path(tiny_run, 2), weights_only=True)
    assert torch.equal(dbn.params[2]["weight"], state["weight"])
    assert dbn.sizes == [64, 32, 24, 16]
    raw = np.arange(2 * 64).reshape(2, 64) % 17  # digits pixels are 0..16
    x = dbn.preprocess(raw)
    assert float(x.max()) <= 1.0
    assert dbn.transform(x).shape == (2, 16) and dbn.transform(x, 0).shape == (2, 32)
    assert dbn.reconstruct(x).shape == (2, 64)
    samples = dbn.sample(3, steps=20)
    assert samples.shape == (3, 64) and ((samples >= 0) & (samples <= 1)).all()
    with torch.no_grad():
        torch.testing.assert_close(dbn.to_module()(x), dbn.transform(x))
    torch.testing.assert_close(pipedbn.load(tiny_run).params[0]["weight"],
                               dbn.params[0]["weight"])


def test_default_run_directory_and_print_config(tmp_path: Path, warm: WarmCLI) -> None:
    proc = cli("train", "configs/tiny.yaml", f"run.out={tmp_path}", "rbm.epochs=0.2", "-q")
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert run_dir.parent == tmp_path / "tiny" and re.fullmatch(r"\d{8}-\d{6}", run_dir.name)
    # (no process starts for it: the warm interpreter's child, see conftest.warm)
    proc = warm.cli("train", "configs/tiny.yaml", "--print-config", "layers.1.hidden=7")
    assert proc.returncode == 0
    printed = yaml.safe_load(proc.stdout)
    assert printed["layers"][1]["hidden"] == 7 and printed["layers"][1]["momentum"] == 0.5


def test_users_mistakes_exit_2_with_one_message(tmp_path: Path, warm: WarmCLI) -> None:
    cli = warm.cli
    assert_user_error(cli("train", "configs/tiny.yaml", "rbm.lrr=0.1", "train.batch_size=x"),
                      "2 problems", "rbm.lrr: unknown key (did you mean 'lr'?)",
                      "train.batch_size: expected an integer")
    assert_user_error(cli("train", "nope.yaml"), "no such file")
    assert_user_error(cli("train", "configs/tiny.yaml", "data.source=npy",
                          f"data.path={tmp_path}/missing.npy"), "no such file")
    np.save(tmp_path / "pixels.npy", np.full((20, 64), 200, np.uint8).astype(np.float32))
    assert_user_error(cli("train", "configs/tiny.yaml", "data.source=npy",
                          f"data.path={tmp_path}/pixels.npy"), "outside [0, 1]", "data.scale")
    assert_user_error(cli("train", "configs/tiny.yaml", "layers.0.visible=100"),
                      "layers.0.visible: 100, but the data has 64 features")
    assert_user_error(cli("export", str(tmp_path), "-o", str(tmp_path / "x")),
                      "not a run directory")


def test_existing_run_directory_is_refused_and_left_alone(tmp_path: Path,
                                                         warm: WarmCLI) -> None:
    (tmp_path / "notes.txt").write_text("keep me")  # refused before any worker would start
    assert_user_error(warm.cli("train", "configs/tiny.yaml", f"run.dir={tmp_path}"),
                      "exists and is not empty")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_divergence_stops_with_layer_and_micro_batch(tmp_path: Path) -> None:
    proc = cli("train", "configs/tiny.yaml", f"run.dir={tmp_path / 'run'}", "layers.1.lr=1e38")
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(r"layer 1: non-finite \w+ .*at micro-batch \d+", proc.stderr), proc.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_python_m_and_version() -> None:
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("pipedbn ")


# `pipedbn plan` starts no worker: the warm interpreter's children run it (conftest.warm),
# without importing torch again for each command line

def test_plan_prints_the_balancers_plan_and_its_prediction(warm: WarmCLI) -> None:
    cli = warm.cli
    proc = cli("plan", "configs/quickstart.yaml", "--world-size", "5")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "plan for 3 layers on 5 ranks" in out and "predicted" in out and "samples/s" in out
    assert "x faster" in out  # against one rank per layer
    proc = cli("plan", "configs/quickstart.yaml", "--world-size", "2", "balancer.plan=0-1|2")
    assert proc.returncode == 0 and "0-1" in proc.stdout


def test_plan_refuses_what_cannot_run(warm: WarmCLI) -> None:
    cli = warm.cli
    assert_user_error(cli("plan", "configs/tiny.yaml", "--world-size", "0"), "--world-size 0")
    assert_user_error(cli("plan", "configs/tiny.yaml", "--world-size", "2",
                          "balancer.plan=0|1|2"), "needs 3 ranks")
    assert_user_error(cli("plan", "configs/tiny.yaml", "--world-size", "3",
                          "balancer.memory_mb=0.01"), "MiB")
