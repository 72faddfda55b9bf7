"""``pipedbn.DBN``: the scikit-learn-style entry runs the same pipeline as ``pipedbn train``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import cli
from safetensors.torch import load_file
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

import pipedbn
from pipedbn.estimator import option_key
from pipedbn.run.rundir import read_split

pytestmark = pytest.mark.slow  # every test here starts processes

OPTIONS: dict[str, Any] = {"epochs": 2, "batch_size": 50, "lr": 0.05, "seed": 3}
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


def test_options_map_to_config_fields_and_mistakes_name_the_parameter(
        digits: np.ndarray) -> None:
    assert option_key("momentum") == "rbm.momentum" and option_key("schedule") == "train.schedule"
    assert option_key("balancer.plan") == "balancer.plan"
    x = digits[:40]
    with pytest.raises(ValueError, match="unknown option 'learning_rate'"):
        pipedbn.DBN([8], options={"learning_rate": 0.1}).fit(x)
    with pytest.raises(ValueError, match=r"DBN\(lr=\.\.\.\)"):
        pipedbn.DBN([8], options={"lr": 0.1}).fit(x)
    with pytest.raises(NotFittedError):
        pipedbn.DBN([8]).transform(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="2D array"):
        pipedbn.DBN([8]).fit(np.zeros(5))
    # the message names what the user typed: the parameter, not the config key behind it
    with pytest.raises(ValueError) as e:
        pipedbn.DBN([8, 4], lr=-0.1).fit(x)
    assert "lr: must be > 0, got -0.1" in str(e.value) and "rbm" not in str(e.value)
    assert "1 problem" in str(e.value)  # once, not once per layer
    with pytest.raises(ValueError, match=r"sizes\[1\]") as e:
        pipedbn.DBN([8, 0]).fit(x)
    with pytest.raises(ValueError, match=r"options\['momentum'\]: must be in \[0, 1\)"):
        pipedbn.DBN([8], options={"momentum": 2.0}).fit(x)
    with pytest.raises(ValueError, match=r"X\[0, 0\] = 2 is outside \[0, 1\]") as e:
        pipedbn.DBN([8]).fit(x * 0 + 2)
    assert "X.npy" not in str(e.value) and "data.scale" not in str(e.value)
    with pytest.raises(ValueError, match="batch_size: must be > 0"):
        pipedbn.DBN([8], batch_size=0).fit(x)


def test_ambiguous_or_owned_options_are_refused_and_hasattr_works(digits: np.ndarray) -> None:
    with pytest.raises(ValueError, match="ambiguous.*train.check_every"):
        pipedbn.DBN([8], options={"check_every": 5}).fit(digits[:20])
    assert option_key("balancer.check_every") == "balancer.check_every"
    with pytest.raises(ValueError, match="set by fit"):
        pipedbn.DBN([8], options={"dir": "/tmp/x"}).fit(digits[:20])
    assert not hasattr(pipedbn.DBN([8]), "reconstruct")  # before fit


@pytest.mark.parametrize("bad", [np.zeros((100, 0)), np.zeros((0, 8)), np.zeros(8),
                                 np.zeros((4, 2, 2)), np.array([["a", "b"], ["c", "d"]]),
                                 np.array([[object(), 1], [2, 3]], dtype=object),
                                 np.array([[np.nan, 1.0], [0.0, 1.0]])])
def test_arrays_that_are_not_samples_x_features_are_one_clear_error(bad: np.ndarray) -> None:
    # scikit-learn's conventions: ValueError, or TypeError for what is not numbers
    errors = (TypeError, ValueError) if bad.dtype.kind in "OU" else ValueError
    dbn = pipedbn.DBN([4], epochs=1, batch_size=2)
    with pytest.raises(errors):
        dbn.fit(bad)
    fitted = pipedbn.DBN([4], epochs=1, batch_size=2).fit(np.full((6, 2), 0.5))
    for method in (fitted.transform, fitted.score):
        with pytest.raises(errors):
            method(bad)


def test_a_scikit_learn_estimator_that_tunes_and_leaves_nothing_behind(
        digits: np.ndarray, capfd: pytest.CaptureFixture[str]) -> None:
    before = set(Path(tempfile.gettempdir()).glob("pipedbn-*"))
    dbn = pipedbn.DBN([16], epochs=1, batch_size=20, seed=1)
    assert repr(dbn) == "DBN(batch_size=20, epochs=1, seed=1, sizes=[16])"
    assert clone(dbn).get_params() == dbn.get_params()
    assert dbn.set_params(lr=0.05).lr == 0.05 and dbn.sizes == [16]  # stored as given
    y = load_digits().target[:200]
    pipe = make_pipeline(dbn, LogisticRegression(max_iter=200))
    search = GridSearchCV(pipe, {"dbn__lr": [0.05, 0.1], "dbn__sizes": [[8], [16]]}, cv=2)
    search.fit(digits[:200], y)
    assert set(search.best_params_) == {"dbn__lr", "dbn__sizes"}
    assert 0.1 < search.best_score_ <= 1
    assert search.best_estimator_[0].get_feature_names_out()[0] == "dbn0"
    assert set(Path(tempfile.gettempdir()).glob("pipedbn-*")) == before
    out = capfd.readouterr().out
    assert out == "", out  # nothing on stdout


def test_fitted_attributes_and_the_kept_work_directory(fitted: pipedbn.DBN,
                                                     digits: np.ndarray) -> None:
    assert fitted.n_features_in_ == 64 and fitted.run_dir_ is not None
    held = fitted.held_out_
    assert len(held) == round(0.1 * len(digits)) and np.all(np.diff(held) > 0)
    assert np.array_equal(held, read_split(fitted.run_dir_)["held_out"])


def _dbn_checks(estimator: Any) -> dict[str, str]:
    return EXPECTED_FAILURES.get(estimator.options.get("layers.0.kind", "bernoulli"), {})


SCORE = ("score_samples flips one random unit per row, drawn in row order (as scikit-learn's "
         "own BernoulliRBM, which lists the same exception)")
GAUSSIAN_SCORE = "score is a pseudo-log-likelihood, which needs binary visible units"
EXPECTED_FAILURES = {
    "bernoulli": {"check_methods_sample_order_invariance": SCORE,
                  "check_methods_subset_invariance": SCORE},
    "gaussian": {"check_methods_sample_order_invariance": GAUSSIAN_SCORE,
                 "check_methods_subset_invariance": GAUSSIAN_SCORE,
                 "check_fit_score_takes_y": GAUSSIAN_SCORE,
                 "check_pipeline_consistency": GAUSSIAN_SCORE},
}
"""The checks that cannot apply, and why (docs/model.md lists them too). The checks feed
unbounded real data, which binary visible units refuse (X in [0, 1]), so the binary DBN is
checked binarizing its input (``data.binarize``); the gaussian one standardises it."""


@parametrize_with_checks(
    [pipedbn.DBN([3], epochs=1, batch_size=10, options={"data.binarize": 0.5}),
     pipedbn.DBN([3], epochs=1, batch_size=10,
                 options={"layers.0.kind": "gaussian", "data.standardize": True})],
    expected_failed_checks=_dbn_checks)
def test_scikit_learn_estimator_checks(estimator: Any, check: Any) -> None:
    check(estimator)
