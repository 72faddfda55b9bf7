"""Fine-tuning a DBN into a classifier (``pipedbn/finetune.py``), and pictures of its samples
(``pipedbn/sample.py``)."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli
from PIL import Image
from warm_cli import WarmCLI

from pipedbn.data.loader import open_data
from pipedbn.finetune import (
    FinetuneSettings,
    _run_config,
    error_rate,
    finetune,
    labelled_splits,
    load_classifier,
)
from pipedbn.model.dbn import load
from pipedbn.run.rundir import read_split
from pipedbn.sample import png_bytes, start_rows

# 8x8 digits, two layers of 64 trained long enough for useful features; 30% held out (539
# samples) so that a difference of a few percent is many samples, not noise. ~2 s in one process.
DIGITS = ["layers=[64,64]", "rbm.epochs=10", "data.held_out=0.3"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ft") / "digits"
    proc = cli("train", "configs/tiny.yaml", *DIGITS, f"run.dir={run_dir}", "--nproc", "1", "-q",
               timeout=120)
    assert proc.returncode == 0, proc.stderr
    return run_dir


@pytest.fixture(scope="module")
def unlabelled_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run on 10-feature data without labels: no square image, nothing to fine-tune on."""
    tmp = tmp_path_factory.mktemp("ft-npy")
    x = (np.random.default_rng(0).random((200, 10)) > 0.5).astype(np.float32)
    np.save(tmp / "x.npy", x)
    run_dir = tmp / "run"
    proc = cli("train", "configs/tiny.yaml", "data.source=npy", f"data.path={tmp / 'x.npy'}",
               "layers=[6]", "rbm.epochs=1", f"run.dir={run_dir}", "--nproc", "1", "-q",
               timeout=120)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def test_finetuning_beats_a_linear_probe_on_the_dbn_features(digits_run: Path) -> None:
    x_train, y_train, x_held, y_held, classes = labelled_splits(digits_run)
    assert classes == list(range(10)) and len(y_held) == 539
    from sklearn.linear_model import LogisticRegression

    dbn = load(digits_run)
    probe = LogisticRegression(max_iter=1000).fit(dbn.transform(x_train).numpy(), y_train.numpy())
    probe_error = 1 - probe.score(dbn.transform(x_held).numpy(), y_held.numpy())

    result = finetune(digits_run, FinetuneSettings(seed=0))
    r = result.report
    after = r["test_error_after"]
    # seen: probe 0.09-0.115, fine-tuned 0.024-0.045 over seeds 0-5 (>= 26 samples apart)
    assert after < probe_error - 0.03, (probe_error, r)
    assert after < r["test_error_before"]
    assert len(r["epochs"]) == 30 and "test_error" not in r["epochs"][-1]  # test: once, at the end
    # three disjoint splits: validation drawn from the run's training rows, test = held out
    split = r["split"]
    assert split["test"] == read_split(digits_run)["held_out"].tolist()
    assert not set(split["train"]) & set(split["validation"])
    assert sorted(split["train"] + split["validation"]) == read_split(digits_run)["train"].tolist()
    assert r["validation_samples"] == len(split["validation"]) == round(0.1 * 1258)
    assert r["epochs"][-1]["train_loss"] < r["epochs"][0]["train_loss"]
    # the returned classifier is the one measured
    assert error_rate(result.classifier, x_held, y_held) == after

    again = finetune(digits_run, FinetuneSettings(seed=0, epochs=2)).report
    assert again["epochs"] == finetune(digits_run, FinetuneSettings(seed=0, epochs=2)
                                       ).report["epochs"]  # seeded


@pytest.mark.slow
def test_finetune_cli_writes_a_loadable_classifier_and_its_figures(digits_run: Path,
                                                                   tmp_path: Path) -> None:
    proc = cli("finetune", str(digits_run), "--epochs", "3", "--head-epochs", "2", "-q",
               timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(digits_run / "classifier.pt")
    blob = torch.load(digits_run / "classifier.pt", weights_only=True)
    assert blob["num_classes"] == 10 and blob["sizes"] == [64, 64, 64]
    report = json.loads((digits_run / "finetune.json").read_text())
    assert len(report["epochs"]) == 3 and report["settings"]["head_epochs"] == 2
    model, classes = load_classifier(digits_run / "classifier.pt")
    _, _, x_held, y_held, _ = labelled_splits(digits_run)
    assert classes == list(range(10))
    assert error_rate(model, x_held, y_held) == report["test_error_after"]

    out = tmp_path / "clf.pt"
    proc = cli("finetune", str(digits_run), "--epochs", "1", "--optimizer", "adam",
               "--lr", "0.01", "-o", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" in proc.stderr
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["settings"][
        "optimizer"] == "adam"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.slow
def test_sample_writes_a_png_of_the_requested_grid(digits_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "samples.png"
    proc = cli("sample", str(digits_run), "-o", str(out), "--n", "12", "--columns", "4",
               "--steps", "50", "--seed", "3", timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    assert _png_size(data) == (4 * 9 + 1, 3 * 9 + 1)  # 4 columns x 3 rows of 8x8 + borders
    assert not list(tmp_path.glob(".*.tmp"))
    with Image.open(out) as im:
        assert im.size == (37, 28) and im.mode == "L"
        pixels = np.asarray(im)
    assert pixels[0].min() == 255 and pixels[1:-1, 1:-1].min() < 255  # border, then tiles
    proc = cli("sample", str(digits_run), "-o", str(tmp_path / "again.png"), "--n", "12",
               "--columns", "4", "--steps", "50", "--seed", "3", timeout=60)
    assert (tmp_path / "again.png").read_bytes() == data  # seeded


def test_png_bytes_round_trip() -> None:
    img = torch.linspace(0, 1, 6 * 5).reshape(6, 5)
    data = png_bytes(img)
    assert _png_size(data) == (5, 6)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.mode == "L"
        got = np.asarray(im)
    assert np.array_equal(got, (img * 255).round().to(torch.uint8).numpy())
    # values outside [0, 1] are clipped, a value of 0.5 rounds to 128 (half to even: 127.5)
    with Image.open(io.BytesIO(png_bytes(torch.tensor([[-0.5, 0.5, 1.5]])))) as im:
        assert np.asarray(im).tolist() == [[0, 128, 255]]


@pytest.mark.slow
def test_mistakes_exit_2_with_one_message(unlabelled_run: Path, digits_run: Path,
                                          tmp_path: Path, warm: WarmCLI) -> None:
    cli = warm.cli
    cases = [
        (("sample", str(unlabelled_run), "-o", str(tmp_path / "s.png"), "--steps", "1"),
         "--image-shape"),
        (("sample", str(digits_run), "-o", str(tmp_path / "s.png"), "--image-shape", "4", "5"),
         "does not match"),
        (("sample", str(digits_run), "-o", str(tmp_path / "s.png"), "--n", "0"), "--n 0"),
        (("finetune", str(unlabelled_run)), "no labels"),
        (("finetune", str(tmp_path / "nowhere")), "no such run directory"),
        (("finetune", str(digits_run), "--lr", "0"), "--lr"),
    ]
    for args, words in cases:
        proc = cli(*args, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and words in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
    # the non-square run samples once it is told the shape
    out = tmp_path / "s.png"
    proc = cli("sample", str(unlabelled_run), "-o", str(out), "--steps", "1", "--n", "3",
               "--image-shape", "2", "5", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert _png_size(out.read_bytes()) == (2 * 6 + 1, 2 * 3 + 1)
    assert not (tmp_path / "s.png.tmp").exists()


def test_sampling_chains_start_from_the_data_unless_told_otherwise(digits_run: Path) -> None:
    dbn = load(digits_run)
    start = start_rows(dbn, 6, 0, digits_run)
    assert start is not None and start.shape == (6, 64)
    held = read_split(digits_run)["held_out"]
    data = open_data(_run_config(digits_run), unit_range=True)
    rows = {tuple(r) for r in dbn.preprocess(data.raw(held)).numpy().round(6)}
    assert all(tuple(r) in rows for r in start.numpy().round(6))  # held-out images
    # no Gibbs step: the samples are the data's up pass brought down, not noise's
    near = dbn.sample(6, 0, 0, start)
    far = dbn.sample(6, 0, 0)
    assert (near - start).abs().mean() < (far - start).abs().mean()
