"""A trained DBN: the export file format (DESIGN §6) and ``pipedbn.load``.

The export is one safetensors file (loads without executing code):

- ``layers.{i}.weight`` (n_visible, n_hidden), ``layers.{i}.visible_bias``,
  ``layers.{i}.hidden_bias`` for every layer i, bottom first;
- ``preprocess.mean`` / ``preprocess.std`` when the data was standardised;
- metadata (strings): ``format``, ``kinds`` (JSON list), ``scale``, ``binarize``,
  ``stochastic_binarize`` (a seed, or empty) and ``config`` (the resolved YAML config of the
  run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from pipedbn.binarize import stochastic_binarize
from pipedbn.errors import UserError
from pipedbn.rbm import RBM, free_energy
from pipedbn.rundir import atomic_write, layer_state_path

FORMAT = "pipedbn-dbn/1"
MODEL_FILE = "model.safetensors"


def _kind(name: str) -> type[RBM]:
    from stages import registry

    return registry.get(name)


class Model:
    """A stack of trained RBMs for inference: features, reconstructions, samples, a Module."""

    def __init__(self, kinds: list[str], params: list[dict[str, torch.Tensor]], scale: float = 1.0,
                 binarize: float | None = None, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None, config: str = "",
                 stochastic_seed: int | None = None) -> None:
        assert len(kinds) == len(params) > 0
        self.kinds, self.params = kinds, params
        self.scale, self.binarize, self.mean, self.std = scale, binarize, mean, std
        self.config = config
        self.stochastic_seed = stochastic_seed

    @property
    def sizes(self) -> list[int]:
        """Units per level, visible first: [n0, n1, ..., nL]."""
        return [self.params[0]["weight"].shape[0]] + [p["weight"].shape[1] for p in self.params]

    def preprocess(self, raw: Any, rows: Any = None) -> torch.Tensor:
        """Raw data (as in the training files) -> layer 0's input, as training did it.
        ``rows``: the samples' indices in their source, which stochastic binarisation is keyed
        by (default 0, 1, 2, ...: the rows of ``raw``)."""
        x = torch.as_tensor(np.asarray(raw), dtype=torch.float32).reshape(-1, self.sizes[0])
        x = x * self.scale
        if self.stochastic_seed is not None:
            idx = np.arange(len(x)) if rows is None else np.asarray(rows)
            x = torch.from_numpy(stochastic_binarize(x.numpy(), idx, self.stochastic_seed))
        if self.binarize is not None:
            x = (x > self.binarize).float()
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return x

    def _as_input(self, x: Any) -> torch.Tensor:
        dtype = self.params[0]["weight"].dtype
        return torch.as_tensor(x).to(dtype).reshape(-1, self.sizes[0])

    @torch.no_grad()
    def transform(self, x: Any, layer: int = -1) -> torch.Tensor:
        """Hidden probabilities of ``layer`` (0-based; -1 = top) for preprocessed input ``x``."""
        top = layer % len(self.params)
        h = self._as_input(x)
        for p in self.params[: top + 1]:
            h = torch.addmm(p["hidden_bias"], h, p["weight"]).sigmoid_()
        return h

    @torch.no_grad()
    def _down(self, h: torch.Tensor, below: int) -> torch.Tensor:
        """Mean-field pass from the hidden units of layer ``below - 1`` to the data."""
        for i in range(below - 1, -1, -1):
            p = self.params[i]
            h = _kind(self.kinds[i]).visible_link(torch.addmm(p["visible_bias"], h, p["weight"].T))
        return h

    @torch.no_grad()
    def reconstruct(self, x: Any) -> torch.Tensor:
        """Up through every layer and back down (mean-field both ways)."""
        return self._down(self.transform(x), len(self.params))

    @torch.no_grad()
    def sample(self, n: int, steps: int = 1000, seed: int = 0) -> torch.Tensor:
        """``n`` samples: ``steps`` Gibbs steps in the top RBM, then a mean-field pass down."""
        g = torch.Generator().manual_seed(seed)
        top = self.params[-1]
        kind = _kind(self.kinds[-1])
        w, vb, hb = top["weight"], top["visible_bias"], top["hidden_bias"]
        v = kind.draw_visible(torch.full((n, w.shape[0]), 0.5, dtype=w.dtype), g)
        for _ in range(steps):
            h = torch.bernoulli(torch.addmm(hb, v, w).sigmoid_(), generator=g)
            v = kind.draw_visible(kind.visible_link(torch.addmm(vb, h, w.T)), g)
        h = torch.addmm(hb, v, w).sigmoid_()
        return self._down(kind.visible_link(torch.addmm(vb, h, w.T)), len(self.params) - 1)

    @torch.no_grad()
    def free_energy(self, x: Any, layer: int = 0) -> torch.Tensor:
        """F(v) per row of layer ``layer`` for its input (preprocessed data for layer 0)."""
        p = self.params[layer]
        v = self._as_input(x) if layer == 0 else self.transform(x, layer - 1)
        return free_energy(_kind(self.kinds[layer]), v, p["weight"], p["visible_bias"],
                           p["hidden_bias"])

    def to_module(self) -> torch.nn.Sequential:
        """A plain ``nn.Sequential``: Linear + Sigmoid per layer (the up pass), for fine-tuning."""
        mods: list[torch.nn.Module] = []
        for p in self.params:
            lin = torch.nn.Linear(*p["weight"].shape)
            with torch.no_grad():
                lin.weight.copy_(p["weight"].T)
                lin.bias.copy_(p["hidden_bias"])
            mods += [lin, torch.nn.Sigmoid()]
        return torch.nn.Sequential(*mods)

    def save(self, path: str | Path) -> None:
        """Write the export file (atomically)."""
        tensors: dict[str, torch.Tensor] = {}
        for i, p in enumerate(self.params):
            for name in ("weight", "visible_bias", "hidden_bias"):
                tensors[f"layers.{i}.{name}"] = p[name].detach().cpu().contiguous()
        if self.mean is not None and self.std is not None:
            tensors["preprocess.mean"] = self.mean.cpu().contiguous()
            tensors["preprocess.std"] = self.std.cpu().contiguous()
        meta = {"format": FORMAT, "kinds": json.dumps(self.kinds), "scale": repr(self.scale),
                "binarize": "" if self.binarize is None else repr(self.binarize),
                "stochastic_binarize": "" if self.stochastic_seed is None
                else str(self.stochastic_seed),
                "config": self.config}
        atomic_write(Path(path), save(tensors, metadata=meta))


def load(path: str | Path) -> Model:
    """A DBN from an export file, or from a run directory (its ``model.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise UserError(f"no model at {path}: give an exported .safetensors file or a finished "
                        "run directory (or run `pipedbn export RUN_DIR -o FILE` first)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a pipedbn model (format {meta.get('format')!r}, "
                        f"expected {FORMAT!r})")
    try:
        kinds = json.loads(meta["kinds"])
        params = [{name: tensors[f"layers.{i}.{name}"]
                   for name in ("weight", "visible_bias", "hidden_bias")}
                  for i in range(len(kinds))]
    except (KeyError, ValueError) as e:
        raise UserError(f"{path}: incomplete pipedbn model (missing {e})") from None
    return Model(kinds, params, scale=float(meta["scale"]),
               binarize=float(meta["binarize"]) if meta.get("binarize") else None,
               mean=tensors.get("preprocess.mean"), std=tensors.get("preprocess.std"),
               config=meta.get("config", ""),
               stochastic_seed=int(meta["stochastic_binarize"])
               if meta.get("stochastic_binarize") else None)


PREPROCESS_FILE = "preprocess.pt"
_PARAMS = ("weight", "visible_bias", "hidden_bias")


def from_run(run_dir: str | Path, tag: str = "final") -> Model:
    """Assemble a DBN from a run directory's per-layer states (``checkpoints/<tag>/``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    config = (run_dir / "config.yaml").read_text()
    try:
        kinds = [layer["kind"] for layer in yaml.safe_load(config)["layers"]]
    except (yaml.YAMLError, KeyError, TypeError):
        raise UserError(f"{run_dir / 'config.yaml'}: not a pipedbn run config") from None
    if not (run_dir / PREPROCESS_FILE).is_file():
        raise UserError(f"{run_dir}: {PREPROCESS_FILE} is missing: the run did not start "
                        "properly")
    params = []
    for i in range(len(kinds)):
        path = layer_state_path(run_dir, i, tag)
        if not path.is_file():
            raise UserError(f"{run_dir}: no state for layer {i} ({path.relative_to(run_dir)} is "
                            "missing): the run did not finish")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: report, do not trace back
            raise UserError(f"{path}: unreadable layer state ({e})") from None
        params.append({k: state[k] for k in _PARAMS})
    pre = torch.load(run_dir / PREPROCESS_FILE, map_location="cpu", weights_only=True)
    return Model(kinds, params, scale=float(pre["scale"]),
               binarize=float(pre["binarize"]) if "binarize" in pre else None,
               mean=pre.get("mean"), std=pre.get("std"), config=config,
               stochastic_seed=int(pre["stochastic_binarize"])
               if "stochastic_binarize" in pre else None)
