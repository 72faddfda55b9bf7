"""``pipedbn.DBN``: the pipeline behind a scikit-learn-style estimator, for people who never want
to see a rank.

>>> dbn = pipedbn.DBN([256, 64], epochs=10, lr=0.05).fit(X)   # X: (samples, features) in [0, 1]
>>> features = dbn.transform(X)                                # top-layer hidden probabilities
>>> dbn.score(X), dbn.save("dbn.safetensors")

``fit`` runs exactly what ``pipedbn train`` runs for the equivalent config (``config()``): X is
written once to a ``.npy`` file that every stage opens memory-mapped (nothing is pickled into the
processes), the processes are started locally, and the balancer plans them for the cores (or
GPUs) present. The same options and seed give the same weights as the CLI, bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipedbn.config import Config, load_config, resolve_defaults
from pipedbn.model import Model, load

# where a plain option name is looked up, in order (``rbm.lr`` etc. name a section explicitly)
_SECTIONS = ("rbm", "train", "data", "balancer", "monitor", "pipeline", "straggler", "run")
_OWNED = {"layers", "data.source", "data.path", "run.dir"}
_MODEL = {"reconstruct", "sample", "free_energy", "to_module", "preprocess", "kinds", "params"}


def option_key(name: str) -> str:
    """The config key of a keyword option: ``lr`` -> ``rbm.lr``, ``batch_size`` ->
    ``train.batch_size``; dotted names (``balancer.plan``) are taken as they are. A name that
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
                             f"{', '.join(found)} (as **{{'{found[0]}': ...}})")
        if not found:
            raise ValueError(f"DBN: unknown option {name!r}; give a config field (lr, epochs, "
                             "k, method, batch_size, seed, ...) or a dotted key such as "
                             "'balancer.plan' (docs/config.md lists them all)")
        key = found[0]
    if key in _OWNED:
        raise ValueError(f"DBN: {key} is set by fit itself (the sizes and X); leave it out")
    return key


class DBN:
    """A deep belief network trained by pipedbn's pipeline on local processes.

    ``sizes``: hidden units per layer, bottom first. ``options``: config fields by name
    (``lr=0.05``, ``epochs=10``, ``method="pcd"``, ``batch_size=50``, ``seed=1``) or dotted key
    (``**{"balancer.max_replicas": None}``). ``nproc``: processes (default: the balancer's use of
    the cores or GPUs present). ``workdir``: where the data file (a float32 copy of X, which the
    run's config names) and the run directory go (default: a new temporary directory, kept: it
    is the run's record; ``shutil.rmtree(dbn.run_dir_.parent)`` removes it). ``verbose``: the
    run's log and progress lines."""

    def __init__(self, sizes: list[int], *, nproc: int | None = None,
                 workdir: str | Path | None = None, verbose: bool = False,
                 **options: Any) -> None:
        if not sizes or any(int(s) < 1 for s in sizes):
            raise ValueError(f"DBN: sizes must be a non-empty list of hidden sizes, got {sizes}")
        self.sizes = [int(s) for s in sizes]
        self.options = {option_key(k): v for k, v in options.items()}
        self.nproc, self.workdir, self.verbose = nproc, workdir, verbose
        self.model_: Model | None = None
        self.run_dir_: Path | None = None

    def config(self, data_path: str | Path, run_dir: str | Path | None = None) -> Config:
        """The config ``fit`` trains with, for X saved at ``data_path`` (a ``.npy`` file)."""
        items: dict[str, Any] = {
            "layers": self.sizes, "data.source": "npy", "data.path": [str(data_path)],
            "data.scale": 1.0, "monitor.progress": "log" if self.verbose else "off",
            "run.dir": str(run_dir) if run_dir is not None else None, **self.options}
        return resolve_defaults(load_config(None, [f"{k}={json.dumps(v)}"
                                                   for k, v in items.items()]))

    def fit(self, X: Any, y: Any = None) -> DBN:
        """Train on ``X`` (samples x features; for binary units in [0, 1]). ``y`` is ignored."""
        from pipedbn.cli import train_config

        x = np.asarray(X, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"DBN.fit: X must be a non-empty 2-D array (samples x features), "
                             f"got shape {x.shape}")
        work = Path(self.workdir) if self.workdir else Path(tempfile.mkdtemp(prefix="pipedbn-"))
        work.mkdir(parents=True, exist_ok=True)
        data_path = work / "X.npy"
        np.save(data_path, x)  # the stages read it memory-mapped
        run_dir = work / "run"
        n = 1
        while run_dir.exists():
            run_dir, n = work / f"run-{n}", n + 1
        cfg = self.config(data_path, run_dir)
        code = train_config(cfg, self.nproc or machine_nproc(cfg), quiet=not self.verbose)
        if code:
            raise RuntimeError(f"DBN.fit: training failed (exit status {code}); the run "
                               f"directory {run_dir} holds failure.json")
        self.run_dir_, self.model_ = run_dir, load(run_dir)
        return self

    def _model(self) -> Model:
        if self.model_ is None:
            raise ValueError("this DBN is not fitted yet: call fit(X) first")
        return self.model_

    def transform(self, X: Any, layer: int = -1) -> np.ndarray:
        """Hidden probabilities of ``layer`` (default: the top) for ``X``."""
        m = self._model()
        return m.transform(m.preprocess(X), layer).numpy()

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        return self.fit(X).transform(X)

    def score_samples(self, X: Any, seed: int = 0) -> np.ndarray:
        """Pseudo-log-likelihood of each row under layer 0 (binary units): one random unit
        flipped per row, ``n_visible * log sigmoid(F(flipped) - F(x))``, as scikit-learn's
        ``BernoulliRBM.score_samples``."""
        from pipedbn.evaluation import pseudo_log_likelihood
        from stages import registry

        m = self._model()
        if m.kinds[0] != "bernoulli":
            raise ValueError("score needs binary visible units (layer 0 is "
                             f"{m.kinds[0]!r})")
        p = m.params[0]
        return pseudo_log_likelihood(registry.get(m.kinds[0]), m.preprocess(X), p["weight"],
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


def machine_nproc(cfg: Config) -> int:
    """Processes for the devices present: one per GPU, else one per core; never more than the
    layers unless replicas are allowed (the balancer would leave the rest idle)."""
    devices = torch.cuda.device_count() if cfg.train.device.startswith("cuda") or (
        cfg.train.device == "auto" and torch.cuda.is_available()) else (os.cpu_count() or 1)
    if cfg.balancer.plan != "auto":
        from pipedbn.cli import default_nproc

        return default_nproc(cfg)
    if cfg.balancer.max_replicas == 1:
        return max(1, min(devices, len(cfg.layers)))
    return max(1, devices)
