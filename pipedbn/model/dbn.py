"""A trained DBN: the export file format (DESIGN §6) and ``pipedbn.load``.

The export is one safetensors file (loads without executing code):

- ``layers.{i}.weight`` (n_visible, n_hidden), ``layers.{i}.visible_bias``,
  ``layers.{i}.hidden_bias`` for every layer i, bottom first, and the kind's own parameters
  (``RBM.extra_parameters``: ``layers.{i}.log_var`` of a ``gaussian-var`` layer);
- a ``label`` top layer (``stages/label.py``) adds ``layers.{i}.label_weight`` (K, n_hidden) and
  ``layers.{i}.label_bias`` (K); after up-down fine-tuning (``pipedbn/updown.py``) a layer
  below the top may hold ``layers.{i}.generative_weight`` (n_visible, n_hidden), its top-down
  weights, untied from the bottom-up ``weight`` (``hidden_bias`` is then the recognition
  bias, ``visible_bias`` the generative one);
- ``preprocess.mean`` / ``preprocess.std`` when the data was standardised;
- metadata (strings): ``format``, ``kinds`` (JSON list), ``scale``, ``binarize``,
  ``stochastic_binarize`` (a seed, or empty) and ``config`` (the resolved YAML config of the
  run).

``load`` and ``from_run`` check every field before a Model exists (``ModelError`` naming the file,
the field and the fix): an edited or damaged file fails there, not as a KeyError or a matmul
shape error deep in ``sample`` or ``eval``.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from pipedbn.config import TextError, load_yaml, read_text
from pipedbn.data.binarize import stochastic_binarize
from pipedbn.errors import ModelError, UserError
from pipedbn.model.rbm import PARAMETERS, RBM, free_energy_of
from pipedbn.run.rundir import atomic_write, layer_state_path
from stages import registry
from stages.label import LABEL_PARAMETERS, label_free_energies

FORMAT = "pipedbn-dbn/1"
MODEL_FILE = "model.safetensors"
GENERATIVE = "generative_weight"
"""A layer's top-down weights once up-down fine-tuning has untied them (absent: ``weight``)."""


def _kind(name: str) -> type[RBM]:
    return registry.get(name)


def _names(kind: str) -> tuple[str, ...]:
    """The parameters a layer of ``kind`` holds: PARAMETERS, then its kind's own."""
    return PARAMETERS + _kind(kind).extra_parameters


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
    def device(self) -> torch.device:
        return self.params[0]["weight"].device

    def to(self, device: str | torch.device) -> Model:
        """This model with its tensors on ``device`` (itself when they are there already);
        inputs given to it move there too, and what it returns lives there."""
        device = torch.device(device)
        if device == self.device:
            return self

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        params = [{k: v.to(device) for k, v in p.items()} for p in self.params]
        return Model(self.kinds, params, self.scale, self.binarize, move(self.mean),
                     move(self.std), self.config, self.stochastic_seed)

    @property
    def labels(self) -> int | None:
        """The label units of the top layer (K), if it has them."""
        top = self.params[-1].get("label_weight")
        return None if top is None else int(top.shape[0])

    @torch.no_grad()
    def classify(self, x: Any) -> torch.Tensor:
        """The class index of least free energy in the top RBM for each row of preprocessed
        input ``x`` (the features of the layers below by their bottom-up probabilities)."""
        if self.labels is None:
            raise UserError("this model has no label units (give the top layer labels: K in "
                            "the training config) so it cannot classify")
        v = self._as_input(x)
        if len(self.params) > 1:
            v = self.transform(v, len(self.params) - 2)
        top = self.params[-1]
        return label_free_energies(v, top["weight"], top["hidden_bias"], top["label_weight"],
                                   top["label_bias"]).argmin(1)

    @property
    def sizes(self) -> list[int]:
        """Units per level, visible first: [n0, n1, ..., nL]."""
        return [self.params[0]["weight"].shape[0]] + [p["weight"].shape[1] for p in self.params]

    def preprocess(self, raw: Any, rows: Any = None) -> torch.Tensor:
        """Raw data (as in the training files) -> layer 0's input, as training did it.
        ``rows``: the samples' indices in their source, which stochastic binarisation is keyed
        by (default 0, 1, 2, ...: the rows of ``raw``)."""
        x = torch.as_tensor(np.asarray(raw), dtype=torch.float32).reshape(-1, self.sizes[0])
        mean = None if self.mean is None else self.mean.cpu()
        std = None if self.std is None else self.std.cpu()
        x = x * self.scale
        if self.stochastic_seed is not None:
            idx = np.arange(len(x)) if rows is None else np.asarray(rows)
            x = torch.from_numpy(stochastic_binarize(x.numpy(), idx, self.stochastic_seed))
        if self.binarize is not None:
            x = (x > self.binarize).float()
        if mean is not None and std is not None:
            x = (x - mean) / std
        return x

    def _as_input(self, x: Any) -> torch.Tensor:
        dtype = self.params[0]["weight"].dtype
        return torch.as_tensor(x).to(self.device, dtype).reshape(-1, self.sizes[0])

    @torch.no_grad()
    def transform(self, x: Any, layer: int = -1) -> torch.Tensor:
        """Hidden probabilities of ``layer`` (0-based; -1 = top) for preprocessed input ``x``."""
        top = layer % len(self.params)
        h = self._as_input(x)
        for name, p in zip(self.kinds[: top + 1], self.params[: top + 1], strict=True):
            h = _kind(name).hidden_link(_kind(name).hidden_pre_of(p, h))
        return h

    @torch.no_grad()
    def _down(self, h: torch.Tensor, below: int) -> torch.Tensor:
        """Mean-field pass from the hidden units of layer ``below - 1`` to the data."""
        for i in range(below - 1, -1, -1):
            p = self.params[i]
            w = p.get(GENERATIVE, p["weight"])
            h = _kind(self.kinds[i]).visible_link(torch.addmm(p["visible_bias"], h, w.T))
        return h

    @torch.no_grad()
    def reconstruct(self, x: Any) -> torch.Tensor:
        """Up through every layer and back down (mean-field both ways)."""
        return self._down(self.transform(x), len(self.params))

    @torch.no_grad()
    def sample(self, n: int, steps: int = 1000, seed: int = 0, start: Any = None
               ) -> torch.Tensor:
        """``n`` samples: ``steps`` Gibbs steps in the top RBM, then a mean-field pass down.

        ``start`` (preprocessed inputs, ``n`` rows): the chains begin at the up pass of these
        (a sample of the top RBM's visible units given them), as Hinton, Osindero & Teh (2006)
        and the usual DBN code do, so they start in the modes the data occupies; without it
        they begin at uniform noise, and a top RBM that mixes slowly keeps most of them in one
        mode for thousands of steps."""
        g = torch.Generator(self.device).manual_seed(seed)  # on CUDA: CUDA's stream of numbers
        top = self.params[-1]
        kind = _kind(self.kinds[-1])
        w, vb = top["weight"], top["visible_bias"]
        if start is None:
            v = kind.draw_of(top, torch.full((n, w.shape[0]), 0.5, dtype=w.dtype,
                                             device=w.device), g)
        else:
            x = self._as_input(start)[:n]
            up = x if len(self.params) == 1 else self.transform(x, len(self.params) - 2)
            v = kind.draw_of(top, up.to(w.dtype), g) if len(self.params) > 1 else up.to(w.dtype)
        for _ in range(steps):
            pre = kind.hidden_pre_of(top, v)
            h = (torch.bernoulli(pre.sigmoid_(), generator=g) if kind.binary_hidden
                 else kind.draw_hidden(pre, kind.hidden_link(pre), g))
            v = kind.draw_of(top, kind.visible_link(torch.addmm(vb, h, w.T)), g)
        h = kind.hidden_link(kind.hidden_pre_of(top, v))
        return self._down(kind.visible_link(torch.addmm(vb, h, w.T)), len(self.params) - 1)

    @torch.no_grad()
    def free_energy(self, x: Any, layer: int = 0) -> torch.Tensor:
        """F(v) per row of layer ``layer`` for its input (preprocessed data for layer 0)."""
        p = self.params[layer]
        v = self._as_input(x) if layer == 0 else self.transform(x, layer - 1)
        return free_energy_of(_kind(self.kinds[layer]), p, v)

    def to_module(self) -> torch.nn.Sequential:
        """A plain ``nn.Sequential``: Linear + the kind's hidden link (Sigmoid; Softplus for
        nrelu) per layer (the up pass), for fine-tuning."""
        mods: list[torch.nn.Module] = []
        for name, p in zip(self.kinds, self.params, strict=True):
            lin = torch.nn.Linear(*p["weight"].shape)
            with torch.no_grad():
                lin.weight.copy_(_up_weight(name, p).T)
                lin.bias.copy_(p["hidden_bias"])
            mods += [lin, _kind(name).hidden_activation()]
        return torch.nn.Sequential(*mods)

    def save(self, path: str | Path) -> None:
        """Write the export file (atomically)."""
        tensors: dict[str, torch.Tensor] = {}
        for i, p in enumerate(self.params):
            for name in (*_names(self.kinds[i]), *(k for k in p if k not in _names(self.kinds[i]))):
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


def _up_weight(kind: str, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """The up pass's weight (n_visible, n_hidden): W, or for a kind with parameters of its own
    its pre-activation of each unit vector of v with no bias (diag(1 / sigma^2) W for
    ``gaussian-var``)."""
    if not _kind(kind).extra_parameters:
        return p["weight"]
    w = p["weight"]
    no_bias = {**p, "hidden_bias": torch.zeros_like(p["hidden_bias"])}
    return _kind(kind).hidden_pre_of(no_bias, torch.eye(w.shape[0], dtype=w.dtype))


EXPORT_FIX = "export the run again (pipedbn export RUN_DIR -o FILE)"
PREPROCESS_FIX = ("pipedbn train writes it when a run starts; restore it from a copy of the run "
                  "or train again")


def _bad(path: Path, field: str, what: str, fix: str) -> ModelError:
    return ModelError(f"{path}: {field}: {what}; {fix}")


def _torch_load(path: Path) -> Any:
    """``torch.load`` of tensors only; a file it cannot read raises ValueError with one line
    (torch's own messages run to paragraphs, and its unpickling one suggests turning the
    safety off)."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": stderr stays ours
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError("not a file of tensors: a pickle of other objects, or not a torch "
                         "file at all") from None
    except Exception as e:  # truncated zip, foreign bytes: whatever torch's reader raises
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:160]
        raise ValueError(f"unreadable: {type(e).__name__}: {first}") from None


def _kinds(path: Path, field: str, kinds: Any, fix: str) -> list[str]:
    """A non-empty list of registered layer kinds, the first-layer-only ones at layer 0."""
    if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
        raise _bad(path, field, f"{str(kinds)[:80]!r} is not a list of layer kinds such as "
                   "[\"bernoulli\", \"bernoulli\"]", fix)
    for i, k in enumerate(kinds):
        if k not in registry.kinds():
            raise _bad(path, field, f"layer {i}: unknown layer kind {k!r} (known: "
                       f"{', '.join(registry.kinds())})", fix)
        why = registry.chain_problem(kinds[i - 1], k) if i > 0 else None
        if why:
            raise _bad(path, field, f"layer {i}: {why}", fix)
    return kinds


def _number(path: Path, field: str, value: Any, fix: str) -> float:
    """A finite number: a metadata string or a 0-d tensor of preprocess.pt."""
    try:
        x = float(value.item() if isinstance(value, torch.Tensor) and value.numel() == 1
                  else value)
    except (TypeError, ValueError):
        x = float("nan")
    if not np.isfinite(x):
        raise _bad(path, field, f"{value!r} is not a finite number", fix)
    return x


def _seed(path: Path, field: str, value: Any, fix: str) -> int | None:
    """The seed of stochastic binarisation (empty or absent: none)."""
    if value is None or (isinstance(value, str) and value == ""):
        return None
    try:
        return int(value.item() if isinstance(value, torch.Tensor) and value.numel() == 1
                   else value)
    except (TypeError, ValueError):
        raise _bad(path, field, f"{value!r} is not a whole number (a seed)", fix) from None


def _tensor(path: Path, field: str, t: Any, dims: int, fix: str) -> torch.Tensor:
    """A finite floating-point tensor of ``dims`` dimensions."""
    if not isinstance(t, torch.Tensor):
        raise _bad(path, field, "missing" if t is None else f"not a tensor ({type(t).__name__})",
                   fix)
    if not t.is_floating_point() or t.dim() != dims:
        raise _bad(path, field, f"a {t.dtype} tensor of shape {tuple(t.shape)}, expected a "
                   f"{dims}-D floating-point one", fix)
    if not torch.isfinite(t).all():
        raise _bad(path, field, "holds NaN or Inf", fix)
    return t


def _extras(kind: str, top: bool) -> tuple[list[str], list[str]]:
    """(required, optional) tensors of a layer besides its PARAMETERS."""
    return (list(LABEL_PARAMETERS) if kind == "label" else [],
            [] if top else [GENERATIVE])


def _layers(layers: list[dict[str, Any]], where: list[tuple[Path, str]], fix: str,
            kinds: list[str]) -> list[dict[str, torch.Tensor]]:
    """Each layer's weight (n_visible, n_hidden), biases and its kind's own parameters:
    floating, finite, of one dtype, of their shapes, and chaining (layer i's hidden units are
    layer i+1's visible ones); a label layer's label units, a fine-tuned layer's generative
    weights (``_extras``). ``where[i]``: the file that holds layer i and the prefix of its
    fields there, for the messages."""
    params: list[dict[str, torch.Tensor]] = []
    for i, raw in enumerate(layers):
        path, prefix = where[i]
        p = {name: _tensor(path, prefix + name, raw.get(name), 2 if name == "weight" else 1, fix)
             for name in PARAMETERS}
        for name in _kind(kinds[i]).extra_parameters:
            t = raw.get(name)
            if not isinstance(t, torch.Tensor):
                raise _bad(path, prefix + name, "missing" if t is None else
                           f"not a tensor ({type(t).__name__})", fix)
            p[name] = t  # (its shape and dtype are checked below, against the weight's)
        w = p["weight"]
        required, optional = _extras(kinds[i], i == len(layers) - 1)
        for name in [*required, *(k for k in optional if raw.get(k) is not None)]:
            t = _tensor(path, prefix + name, raw.get(name), 1 if name == "label_bias" else 2, fix)
            want = {"label_weight": (len(t), w.shape[1]), "label_bias": (len(t),),
                    GENERATIVE: tuple(w.shape)}[name]
            if tuple(t.shape) != want or t.dtype != w.dtype:
                raise _bad(path, prefix + name, f"{t.dtype} {tuple(t.shape)}, but "
                           f"{prefix}weight is {w.dtype} {tuple(w.shape)}", fix)
            p[name] = t
        if "label_bias" in p and len(p["label_bias"]) != len(p["label_weight"]):
            raise _bad(path, prefix + "label_bias", f"{len(p['label_bias'])} labels, "
                       f"{prefix}label_weight {len(p['label_weight'])}", fix)
        for name, size in (("visible_bias", w.shape[0]), ("hidden_bias", w.shape[1])):
            if p[name].shape[0] != size or p[name].dtype != w.dtype:
                raise _bad(path, prefix + name, f"{p[name].dtype} of {p[name].shape[0]} units, "
                           f"but {prefix}weight is {w.dtype} {tuple(w.shape)}", fix)
        shapes = _kind(kinds[i]).extra_shapes(*w.shape)
        for name, shape in shapes.items():
            t = p[name]
            if tuple(t.shape) != shape or t.dtype != w.dtype or not torch.isfinite(t).all():
                raise _bad(path, prefix + name, f"a {t.dtype} tensor of shape {tuple(t.shape)}"
                           f", expected {w.dtype} {shape} of finite values for a "
                           f"{kinds[i]!r} layer of weight {tuple(w.shape)}", fix)
        if params and (params[-1]["weight"].shape[1] != w.shape[0]
                       or params[-1]["weight"].dtype != w.dtype):
            up = params[-1]["weight"]
            raise _bad(path, prefix + "weight", f"{w.dtype} {tuple(w.shape)} does not chain "
                       f"with layer {i - 1}'s weight {up.dtype} {tuple(up.shape)} (its visible "
                       "units are the hidden units below)", fix)
        params.append(p)
    return params


def _standardisation(path: Path, mean: Any, std: Any, n: int, fix: str, prefix: str
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Both or neither of the per-feature mean and std, 1-D of ``n`` floats, std > 0."""
    if mean is None and std is None:
        return None, None
    for name, t in (("mean", mean), ("std", std)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() \
                or tuple(t.shape) != (n,) or not torch.isfinite(t).all():
            got = (f"a {t.dtype} tensor of shape {tuple(t.shape)}"
                   if isinstance(t, torch.Tensor) else repr(t))
            raise _bad(path, prefix + name, f"{got}, expected {n} finite floats (one per "
                       "input feature)", fix)
    assert isinstance(std, torch.Tensor)
    if not (std > 0).all():
        raise _bad(path, prefix + "std", "holds a value <= 0", fix)
    return mean, std


def load(path: str | Path) -> Model:
    """A DBN from an export file, or from a run directory (its ``model.safetensors``); every
    field is checked (ModelError naming the file and the field)."""
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
    for key in ("kinds", "scale"):
        if key not in meta:
            raise _bad(path, f"metadata {key}", "missing", EXPORT_FIX)
    try:
        kinds = _kinds(path, "metadata kinds", json.loads(meta["kinds"]), EXPORT_FIX)
    except ValueError:
        raise _bad(path, "metadata kinds", f"{meta['kinds'][:80]!r} is not JSON",
                   EXPORT_FIX) from None
    expected = {f"layers.{i}.{name}" for i, kind in enumerate(kinds)
                for name in (*_names(kind), *sum(_extras(kind, i == len(kinds) - 1), []))}
    expected |= {"preprocess.mean", "preprocess.std"}
    extra = sorted(set(tensors) - expected)
    if extra:
        raise _bad(path, extra[0], f"not part of a {len(kinds)}-layer model (metadata kinds "
                   f"names {len(kinds)} layers)", EXPORT_FIX)
    params = _layers([{k[len(f"layers.{i}."):]: t for k, t in tensors.items()
                       if k.startswith(f"layers.{i}.")} for i in range(len(kinds))],
                     [(path, f"layers.{i}.") for i in range(len(kinds))], EXPORT_FIX, kinds)
    binarize = meta.get("binarize", "")
    mean, std = _standardisation(path, tensors.get("preprocess.mean"),
                                 tensors.get("preprocess.std"), params[0]["weight"].shape[0],
                                 EXPORT_FIX, "preprocess.")
    return Model(kinds, params, scale=_number(path, "metadata scale", meta["scale"], EXPORT_FIX),
                 binarize=_number(path, "metadata binarize", binarize, EXPORT_FIX)
                 if binarize else None,
                 mean=mean, std=std, config=meta.get("config", ""),
                 stochastic_seed=_seed(path, "metadata stochastic_binarize",
                                       meta.get("stochastic_binarize", ""), EXPORT_FIX))


PREPROCESS_FILE = "preprocess.pt"


def _tensor_dict(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A torch file of tensors holding a dict (``preprocess.pt``, a layer state), or one error
    naming the file and the fix."""
    try:
        loaded = _torch_load(path)
    except ValueError as e:
        raise _bad(path, "the whole file", str(e), fix) from None
    if not isinstance(loaded, dict):
        raise _bad(path, "the whole file", f"holds a {type(loaded).__name__}, not {what}", fix)
    return loaded


def _preprocessing(run_dir: Path, n_visible: int) -> dict[str, Any]:
    """The run's ``preprocess.pt``, checked: scale, optional binarize, optional mean and std."""
    path = run_dir / PREPROCESS_FILE  # (from_run has checked that it exists)
    pre = _tensor_dict(path, "a dict", PREPROCESS_FIX)
    if "scale" not in pre:
        raise _bad(path, "scale", "missing", PREPROCESS_FIX)
    mean, std = _standardisation(path, pre.get("mean"), pre.get("std"), n_visible,
                                 PREPROCESS_FIX, "")
    return {"scale": _number(path, "scale", pre["scale"], PREPROCESS_FIX),
            "binarize": _number(path, "binarize", pre["binarize"], PREPROCESS_FIX)
            if "binarize" in pre else None, "mean": mean, "std": std,
            "stochastic_seed": _seed(path, "stochastic_binarize", pre.get("stochastic_binarize"),
                                     PREPROCESS_FIX)}


def from_run(run_dir: str | Path, tag: str = "final") -> Model:
    """Assemble a DBN from a run directory's per-layer states (``checkpoints/<tag>/``), checked
    as ``load`` checks an export file."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg_path = run_dir / "config.yaml"
    try:
        config = read_text(cfg_path)
        kinds = [layer["kind"] for layer in load_yaml(config)["layers"]]
    except (yaml.YAMLError, KeyError, TypeError, TextError):
        raise UserError(f"{cfg_path}: not a pipedbn run config") from None
    fix = "resume the run or train it again"
    kinds = _kinds(cfg_path, "layers.*.kind", kinds, fix)
    if not (run_dir / PREPROCESS_FILE).is_file():
        raise UserError(f"{run_dir}: {PREPROCESS_FILE} is missing: the run did not start "
                        "properly")
    states, where = [], []
    for i in range(len(kinds)):
        path = layer_state_path(run_dir, i, tag)
        if not path.is_file():
            raise UserError(f"{run_dir}: no state for layer {i} ({path.relative_to(run_dir)} is "
                            "missing): the run did not finish")
        states.append(_tensor_dict(path, "a layer state", fix))
        where.append((path, ""))
    params = _layers(states, where, fix, kinds)
    pre = _preprocessing(run_dir, params[0]["weight"].shape[0])
    return Model(kinds, params, scale=pre["scale"], binarize=pre["binarize"], mean=pre["mean"],
                 std=pre["std"], config=config, stochastic_seed=pre["stochastic_seed"])
