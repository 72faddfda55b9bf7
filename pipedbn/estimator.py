"""``pipedbn.DBN``: the pipeline behind a scikit-learn estimator and transformer, for people who
never want to see a rank.

>>> dbn = pipedbn.DBN([256, 64], epochs=10, lr=0.05).fit(X)   # X: (samples, features) in [0, 1]
>>> features = dbn.transform(X)                                # top-layer hidden probabilities
>>> dbn.score(X), dbn.save("dbn.safetensors")
>>> GridSearchCV(make_pipeline(pipedbn.DBN([64]), LogisticRegression()),
...              {"dbn__lr": [0.05, 0.1]}, cv=2).fit(X, y)

The constructor's arguments are the estimator's parameters (``get_params``/``set_params``/
``clone``), stored as given and checked by ``fit``. ``fit`` runs exactly what ``pipedbn train``
runs for the equivalent config (``config()``): X is written once to a ``.npy`` file that every
stage opens memory-mapped (nothing is pickled into the processes), the processes are started
locally, and the balancer plans them for the cores (or GPUs) present; a small problem trains in
this process instead (``local.machine_nproc``). The same options and seed give the same weights
as the CLI, bit for bit. Without a ``workdir`` the files live in a temporary directory that
``fit`` removes; the fitted model is kept in memory.

A mistake is a ``ValueError`` that names the estimator's parameter (``lr``, ``sizes[1]``,
``options['momentum']``, ``X``), not the config key the pipeline checks.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from pipedbn.config import Config, load_config, resolve_defaults
from pipedbn.errors import UserError
from pipedbn.eval.evaluation import pseudo_log_likelihood
from pipedbn.model.dbn import Model, load
from pipedbn.run.local import machine_nproc, train_local
from pipedbn.run.rundir import read_split
from stages import registry

# where a plain option name is looked up, in order (``rbm.lr`` etc. name a section explicitly)
_SECTIONS = ("rbm", "train", "data", "balancer", "monitor", "pipeline", "straggler", "run")
_OWNED = {"layers", "data.source", "data.path", "run.dir"}
_MODEL = {"reconstruct", "sample", "free_energy", "to_module", "preprocess", "kinds", "params"}
PARAMS = {"epochs": "rbm.epochs", "lr": "rbm.lr", "k": "rbm.k", "method": "rbm.method",
          "batch_size": "train.batch_size", "seed": "seed"}
"""The constructor's training parameters and the config key each one sets."""


def option_key(name: str) -> str:
    """The config key of an ``options`` entry: ``momentum`` -> ``rbm.momentum``, ``schedule``
    -> ``train.schedule``; dotted names (``balancer.plan``) are taken as they are. A name that
    two sections share must be dotted; the keys ``fit`` sets itself are refused."""
    key = name
    if "." not in name:
        fields = {f.name for f in dataclasses.fields(Config)} - set(_SECTIONS) - {"layers"}
        found = [f"{section}.{name}" for section in _SECTIONS
                 if name in {f.name for f in dataclasses.fields(
                     type(getattr(Config(layers=[]), section)))}]
        found = [name] if name in fields else found
        if len(found) > 1:
            raise ValueError(f"DBN: option {name!r} is ambiguous; name one of "
                             f"{', '.join(found)} (options={{'{found[0]}': ...}})")
        if not found:
            raise ValueError(f"DBN: unknown option {name!r}; give a config field (momentum, "
                             "weight_decay, schedule, ...) or a dotted key such as "
                             "'balancer.plan' (docs/config.md lists them all)")
        key = found[0]
    if key in _OWNED:
        raise ValueError(f"DBN: options[{name!r}]: {key} is set by fit itself (the sizes and "
                         "X); leave it out")
    named = [p for p, k in PARAMS.items() if k == key]
    if named:
        raise ValueError(f"DBN: options[{name!r}]: give it as the parameter "
                         f"DBN({named[0]}=...)")
    return key


class DBN(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A deep belief network trained by pipedbn's pipeline; a scikit-learn transformer whose
    output is the top layer's hidden probabilities.

    Parameters:
        sizes: hidden units per layer, bottom first.
        epochs, lr, k, method, batch_size, seed: the config fields ``rbm.epochs``, ``rbm.lr``
            (None: the layer kind's default), ``rbm.k``, ``rbm.method`` (``cd``/``pcd``),
            ``train.batch_size`` and ``seed``.
        options: any other config field, by name (``{"momentum": 0.5}``) or dotted key
            (``{"balancer.max_replicas": None, "layers.0.kind": "gaussian"}``).
        nproc: processes (default: this process for a small problem, else the balancer's use
            of the cores or GPUs present).
        workdir: where the data file (a float32 copy of X) and the run directory go, kept as
            the run's record (``run_dir_``); default: a temporary directory removed after fit.
        verbose: show the run's log and progress lines (stderr).

    Fitted attributes: ``model_`` (the ``pipedbn.Model``), ``n_features_in_``,
    ``held_out_`` (sorted rows of X kept out of training for monitoring, ``data.held_out``),
    ``run_dir_`` (the run directory; None without a ``workdir``)."""

    def __init__(self, sizes: Any = (256, 64), *, epochs: float = 10.0,
                 lr: float | None = None, k: int = 1, method: str = "cd",
                 batch_size: int = 100, seed: int = 0, options: dict[str, Any] | None = None,
                 nproc: int | None = None, workdir: str | Path | None = None,
                 verbose: bool = False) -> None:
        self.sizes = sizes
        self.epochs = epochs
        self.lr = lr
        self.k = k
        self.method = method
        self.batch_size = batch_size
        self.seed = seed
        self.options = options
        self.nproc = nproc
        self.workdir = workdir
        self.verbose = verbose

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # the weights' type (train.dtype)
        # binary visible units take X in [0, 1] unless it is binarized; a gaussian or
        # gaussian-var first layer takes any real X
        options = {option_key(str(k)) if "." not in str(k) else str(k): v
                   for k, v in (self.options or {}).items()}
        tags.input_tags.positive_only = options.get("data.binarize") is None and options.get(
            "layers.0.kind", options.get("rbm.kind")) not in ("gaussian", "gaussian-var")
        return tags

    def _items(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Config items of the parameters, and the parameter name of each config key."""
        sizes = list(np.atleast_1d(np.asarray(self.sizes, dtype=object)))
        if not sizes or any(isinstance(s, bool) or not isinstance(s, (int, np.integer))
                            for s in sizes):
            raise ValueError(f"DBN: sizes must be a non-empty list of hidden units (integers), "
                             f"got {self.sizes!r}")
        items: dict[str, Any] = {"layers": [int(s) for s in sizes]}
        names = {f"layers.{i}.hidden": f"sizes[{i}]" for i in range(len(sizes))}
        for param, key in PARAMS.items():
            items[key] = getattr(self, param)
            names[key] = param
        for name, value in (self.options or {}).items():
            key = option_key(str(name))
            items[key] = value
            names[key] = f"options[{name!r}]"
        return items, names

    def config(self, data_path: str | Path, run_dir: str | Path | None = None) -> Config:
        """The config ``fit`` trains with, for X saved at ``data_path`` (a ``.npy`` file)."""
        given, names = self._items()
        items = {"data.source": "npy", "data.path": [str(data_path)], "data.scale": 1.0,
                 "monitor.progress": "log" if self.verbose else "off",
                 "run.dir": str(run_dir) if run_dir is not None else None, **given}
        try:
            return resolve_defaults(load_config(None, [f"{k}={json.dumps(v)}"
                                                       for k, v in items.items()]))
        except UserError as e:
            raise ValueError(_translate(str(e), names, Path(data_path).name)) from None

    def fit(self, X: Any, y: Any = None) -> DBN:
        """Train on ``X`` (samples x features; for binary units in [0, 1]). ``y`` is ignored."""
        x = self._validate(X, reset=True)
        self.config("X.npy")  # the parameters, checked before anything is written
        if self.workdir is not None:
            work = Path(self.workdir)
            work.mkdir(parents=True, exist_ok=True)
            self._fit_in(x, work, keep=True)
        else:
            with tempfile.TemporaryDirectory(prefix="pipedbn-") as tmp:
                self._fit_in(x, Path(tmp), keep=False)
        return self

    def _fit_in(self, x: np.ndarray, work: Path, keep: bool) -> None:
        data_path = work / "X.npy"
        n = 1
        while data_path.exists():  # a kept workdir may hold earlier fits
            data_path, n = work / f"X-{n}.npy", n + 1
        run_dir = work / data_path.stem.replace("X", "run")
        np.save(data_path, x)  # the stages read it memory-mapped
        cfg = self.config(data_path, run_dir)
        _, names = self._items()
        check_range(cfg, x)
        nproc = self.nproc or machine_nproc(cfg, len(x), x.shape[1])
        try:
            code = train_local(cfg, nproc, quiet=not self.verbose, announce=False)
        except UserError as e:
            raise ValueError(_translate(str(e), names, data_path.name)) from None
        if code:
            where = f"; {run_dir} holds failure.json" if keep else " (give workdir= to keep " \
                "the run directory)"
            raise RuntimeError(f"DBN.fit: training failed (exit status {code}){where}")
        self.model_ = load(run_dir)
        self.held_out_ = read_split(run_dir)["held_out"]
        self.run_dir_ = run_dir if keep else None

    @property
    def _n_features_out(self) -> int:
        return int(self._model().sizes[-1])

    def _model(self) -> Model:
        check_is_fitted(self, "model_")
        model: Model = self.model_
        return model

    def _input(self, X: Any) -> Any:
        m = self._model()
        return m.preprocess(self._validate(X, reset=False))

    def _validate(self, X: Any, reset: bool) -> np.ndarray:
        """X as float32 samples x features (at least 2 samples to fit)."""
        # scikit-learn's own messages: a ValueError for a wrong shape, NaN, Inf or too few
        # samples, a TypeError for sparse input or objects that are not numbers
        x: np.ndarray = validate_data(self, X, reset=reset, dtype=np.float32,
                                      ensure_min_samples=2 if reset else 1)
        return x

    def transform(self, X: Any, layer: int = -1) -> np.ndarray:
        """Hidden probabilities of ``layer`` (default: the top) for ``X``."""
        return self._model().transform(self._input(X), layer).numpy()

    def score_samples(self, X: Any, seed: int = 0) -> np.ndarray:
        """Pseudo-log-likelihood of each row under layer 0 (binary units): one random unit
        flipped per row, ``n_visible * log sigmoid(F(flipped) - F(x))``, as scikit-learn's
        ``BernoulliRBM.score_samples``."""
        x = self._input(X)
        m = self._model()
        if m.kinds[0] != "bernoulli":
            raise ValueError(f"DBN.score: the pseudo-log-likelihood needs binary visible units "
                             f"(layer 0 is {m.kinds[0]!r}); score what uses the features "
                             "instead (a Pipeline with a classifier after the DBN)")
        p = m.params[0]
        return pseudo_log_likelihood(registry.get(m.kinds[0]), x, p["weight"],
                                     p["visible_bias"], p["hidden_bias"], seed).numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Mean pseudo-log-likelihood per sample (higher is better)."""
        return float(self.score_samples(X).mean())

    def save(self, path: str | Path) -> None:
        """Write the model as an export file (``pipedbn.load`` reads it)."""
        self._model().save(path)

    def __getattr__(self, name: str) -> Any:
        # reconstruct, sample, to_module, ...: the fitted model's (they take preprocessed input)
        if name not in _MODEL or self.__dict__.get("model_") is None:
            raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}"
                                 + (" before fit" if name in _MODEL else ""))
        return getattr(self.model_, name)


def check_range(cfg: Config, x: np.ndarray) -> None:
    """Binary visible units need X in [0, 1] (as given, or after ``data.binarize``): said in
    the estimator's terms before the pipeline would say it in the CLI's."""
    if cfg.layers[0].kind != "bernoulli" or cfg.data.binarize is not None \
            or cfg.data.standardize:
        return
    bad = (x < 0) | (x > 1)
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        what = "Negative values in data" if x[r, c] < 0 else "A value above 1 in data"
        raise ValueError(
            f"DBN.fit: {what}: X[{r}, {c}] = {x[r, c]:.4g} is outside [0, 1], which binary "
            "visible units need: scale X (e.g. X / 255 for 0..255 pixels), or binarize it "
            "(options={'data.binarize': 0.5}), or use options={'layers.0.kind': 'gaussian', "
            "'data.standardize': True} for real-valued data")


_KEY = re.compile(r"(?<![\w.'])((?:layers\.\d+|rbm|train|data|balancer|monitor|pipeline|"
                  r"straggler|checkpoint|run)\.[a-z_]+|seed)(?![\w'])")


def _translate(message: str, names: dict[str, str], data_file: str) -> str:
    """A pipeline message in the estimator's terms: config keys -> the parameter that set
    them, the data file -> X."""
    def name(m: re.Match[str]) -> str:
        key = m.group(1)
        layer = re.fullmatch(r"layers\.\d+\.(\w+)", key)
        if key not in names and layer is not None:  # rbm.* copied into every layer
            key = names.get(f"rbm.{layer.group(1)}") and f"rbm.{layer.group(1)}" or key
        return names.get(key, key)

    message = re.sub(rf"{re.escape(data_file)} sample (\d+)", r"X row \1", message)
    message = message.replace(data_file, "X")
    message = message.replace("config: ", "DBN: ", 1)
    return _KEY.sub(name, message)
