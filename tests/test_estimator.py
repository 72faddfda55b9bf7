"""``pipedbn.DBN``: the scikit-learn-style entry runs the same pipeline as ``pipedbn train``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli
from safetensors.torch import load_file
from sklearn.datasets import load_digits

import pipedbn
from pipedbn.estimator import option_key

pytestmark = pytest.mark.slow  # every test here starts processes

OPTIONS = {"epochs": 2, "batch_size": 50, "lr": 0.05, "seed": 3}
CONFIG = """\
layers: [{hidden: 32}, {hidden: 16}]
seed: 3
data: {source: npy, path: X.npy, scale: 1.0}
rbm: {epochs: 2, lr: 0.05}
train: {batch_size: 50}
"""


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return (load_digits().data / 16).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(digits: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> pipedbn.DBN:
    return pipedbn.DBN([32, 16], workdir=tmp_path_factory.mktemp("fit"), **OPTIONS).fit(digits)


def test_fit_gives_the_weights_of_pipedbn_train_with_the_equivalent_config(
        fitted: pipedbn.DBN, digits: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "X.npy", digits)
    (tmp_path / "dbn.yaml").write_text(CONFIG)
    proc = cli("train", str(tmp_path / "dbn.yaml"), f"run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    a = load_file(tmp_path / "run" / "model.safetensors")
    assert fitted.run_dir_ is not None
    b = load_file(fitted.run_dir_ / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_hands_x_over_as_a_file_and_the_fitted_model_works(fitted: pipedbn.DBN,
                                                              digits: np.ndarray,
                                                              tmp_path: Path) -> None:
    assert fitted.run_dir_ is not None
    config = (fitted.run_dir_ / "config.yaml").read_text()
    assert "source: npy" in config and "X.npy" in config  # read memory-mapped by every stage
    features = fitted.transform(digits[:10])
    assert features.shape == (10, 16) and ((features >= 0) & (features <= 1)).all()
    assert fitted.transform(digits[:10], layer=0).shape == (10, 32)
    assert np.isfinite(fitted.score(digits)) and fitted.score(digits) < 0
    assert fitted.score_samples(digits[:7]).shape == (7,)
    fitted.save(tmp_path / "dbn.safetensors")
    again = pipedbn.load(tmp_path / "dbn.safetensors")
    assert np.array_equal(again.transform(again.preprocess(digits[:10])).numpy(), features)
    assert fitted.reconstruct(fitted.preprocess(digits[:2])).shape == (2, 64)


def test_options_map_to_config_fields_and_mistakes_are_clear() -> None:
    assert option_key("lr") == "rbm.lr" and option_key("batch_size") == "train.batch_size"
    assert option_key("seed") == "seed" and option_key("balancer.plan") == "balancer.plan"
    with pytest.raises(ValueError, match="unknown option 'learning_rate'"):
        pipedbn.DBN([8], learning_rate=0.1)
    with pytest.raises(ValueError, match="not fitted"):
        pipedbn.DBN([8]).transform(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="2-D"):
        pipedbn.DBN([8]).fit(np.zeros(5))


def test_ambiguous_or_owned_options_are_refused_and_hasattr_works() -> None:
    with pytest.raises(ValueError, match="ambiguous.*train.check_every"):
        pipedbn.DBN([8], check_every=5)
    assert option_key("balancer.check_every") == "balancer.check_every"
    with pytest.raises(ValueError, match="set by fit"):
        pipedbn.DBN([8], dir="/tmp/x")
    assert not hasattr(pipedbn.DBN([8]), "reconstruct")  # before fit
    assert not hasattr(pipedbn.DBN([8]), "get_params")
