"""What a trained DBN learned: ``pipedbn eval RUN_DIR`` (or an exported ``.safetensors`` file).

With a ``label`` top layer, also the test error of classifying each held-out row by the label
of least free energy (``Model.classify``). Per layer, on the held-out split propagated up with
probabilities: the reconstruction error,
the free-energy gap (held-out vs a training sample of equal size), the pseudo-log-likelihood
(binary visible units), the log-likelihood of the layer's input under the layer's RBM (exact by
enumeration when the smaller side has at most ``exact_max`` units; for layer 0 otherwise
estimated by annealed importance sampling), and the test accuracy of a linear probe (logistic
regression) on the layer's hidden probabilities, next to the same probe on the raw input.

AIS follows Salakhutdinov & Murray, "On the quantitative analysis of deep belief networks"
(ICML 2008): a base-rate RBM (W = 0, visible biases from the training data's mean), inverse
temperatures spaced linearly or by their schedule (``sm2008``: 500 from 0 to 0.5, 4,000 from 0.5
to 0.9, 10,000 from 0.9 to 1, scaled to the number asked for) and one Gibbs sweep per
temperature.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipedbn.config import config_from_text, load_config, resolve_defaults
from pipedbn.data.loader import open_data
from pipedbn.errors import UserError
from pipedbn.eval.likelihood import enumerable_units, log_partition_of
from pipedbn.model.dbn import MODEL_FILE, Model, load
from pipedbn.model.rbm import RBM, free_energy, free_energy_of
from pipedbn.run.rundir import atomic_write
from stages import registry

log = logging.getLogger("pipedbn")

EXACT_MAX = 20
"""Enumerate (exact log Z) when the smaller side of an RBM has at most this many units."""


@dataclass
class AISResult:
    """An AIS estimate of log Z with the interval log(mean weight +- 3 standard errors)."""

    log_z: float
    lower: float | None
    """None when mean - 3 standard errors is not positive (the interval is open below)."""
    upper: float
    chains: int
    temperatures: int
    seconds: float


AIS_SCHEDULES = ("linear", "sm2008")


def ais_betas(temperatures: int, schedule: str = "linear") -> torch.Tensor:
    """``temperatures + 1`` inverse temperatures from 0 to 1 (float64). ``sm2008``: Salakhutdinov
    & Murray's 500 / 4,000 / 10,000 split of 14,500 over [0, 0.5] / [0.5, 0.9] / [0.9, 1],
    in proportion for another total."""
    if schedule == "linear":
        return torch.linspace(0.0, 1.0, temperatures + 1, dtype=torch.float64)
    n1 = max(1, round(temperatures * 500 / 14500))
    n2 = max(1, round(temperatures * 4000 / 14500))
    n3 = max(1, temperatures - n1 - n2)
    parts = [torch.linspace(lo, hi, n + 1, dtype=torch.float64)[1:]
             for lo, hi, n in ((0.0, 0.5, n1), (0.5, 0.9, n2), (0.9, 1.0, n3))]
    return torch.cat([torch.zeros(1, dtype=torch.float64), *parts])


@torch.no_grad()
def ais_log_partition(weight: torch.Tensor, visible_bias: torch.Tensor,
                      hidden_bias: torch.Tensor, chains: int = 100, temperatures: int = 3000,
                      data_mean: torch.Tensor | None = None, seed: int = 0,
                      schedule: str = "linear",
                      progress: Callable[[int, int], None] | None = None) -> AISResult:
    """Estimate log Z of a Bernoulli-Bernoulli RBM (``weight`` is [n_visible, n_hidden]).

    The base model has W = 0, hidden biases 0 and visible biases logit(``data_mean``) (zero when
    None), so log Z_A = sum softplus(b_A) + n_hidden log 2. The intermediate models are
    p_k*(v) = exp((1 - beta_k) b_A.v + beta_k b.v) prod_j (1 + exp(beta_k (c_j + v.W_j))).
    Matrix products run in the weights' dtype; the log-weights accumulate in float64.
    ``progress(done, total)`` is called every 100 temperatures.
    """
    t0 = time.perf_counter()
    w, b, c = weight, visible_bias, hidden_bias
    g = torch.Generator(w.device).manual_seed(seed)
    n_v, n_h = w.shape
    if data_mean is None:
        base = torch.zeros(n_v, dtype=w.dtype, device=w.device)
    else:
        p = data_mean.to(w.device, torch.float64).clamp(1e-3, 1 - 1e-3)
        base = (p.log() - (-p).log1p()).to(w.dtype)
    log_z_base = float(F.softplus(base.double()).sum()) + n_h * math.log(2.0)
    betas = ais_betas(temperatures, schedule)
    temperatures = len(betas) - 1
    bias_diff = (b - base).double()

    v = torch.bernoulli(torch.sigmoid(base).expand(chains, n_v), generator=g)
    log_w = torch.zeros(chains, dtype=torch.float64, device=w.device)
    for k in range(1, temperatures + 1):
        lo, hi = float(betas[k - 1]), float(betas[k])
        pre = torch.addmm(c, v, w)
        pre64 = pre.double()
        # log p_k*(v) - log p_{k-1}*(v), taken as one difference to keep its precision
        log_w += (hi - lo) * (v.double() @ bias_diff)
        log_w += (F.softplus(hi * pre64) - F.softplus(lo * pre64)).sum(1)
        if k < temperatures:  # a Gibbs sweep that leaves p_k invariant
            h = torch.bernoulli(torch.sigmoid(hi * pre), generator=g)
            v_pre = torch.addmm(b, h, w.T).mul_(hi).add_((1 - hi) * base)
            v = torch.bernoulli(torch.sigmoid(v_pre), generator=g)
        if progress is not None and (k % 100 == 0 or k == temperatures):
            progress(k, temperatures)
    # log of the mean weight and of mean +- 3 standard errors, shifted by the largest weight
    top = float(log_w.max())
    r = torch.exp(log_w - top)
    mean = float(r.mean())
    se = float(r.std()) / math.sqrt(chains) if chains > 1 else 0.0
    shift = log_z_base + top
    lower = shift + math.log(mean - 3 * se) if mean - 3 * se > 0 else None
    return AISResult(log_z=shift + math.log(mean), lower=lower,
                     upper=shift + math.log(mean + 3 * se), chains=chains,
                     temperatures=temperatures, seconds=time.perf_counter() - t0)


def ais_progress(every_s: float = 10.0) -> Callable[[int, int], None]:
    """An AIS progress display: a tqdm bar on a terminal, else a log line every ``every_s``."""
    state: dict[str, Any] = {"bar": None, "last": time.monotonic()}

    def show(done: int, total: int) -> None:
        if sys.stderr.isatty():
            if state["bar"] is None:
                state["bar"] = tqdm(total=total, desc="AIS temperatures", unit="T",
                                    leave=False)
            state["bar"].update(done - state["bar"].n)
            if done == total:
                state["bar"].close()
                state["bar"] = None
        elif time.monotonic() - state["last"] >= every_s or done == total:
            state["last"] = time.monotonic()
            log.info("AIS: %d/%d temperatures", done, total)

    return show


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, seed: int = 0) -> float:
    """Test accuracy of a logistic regression trained on (train_x, train_y), on one BLAS thread
    (a second BLAS pool beside torch's made it ~8x slower on a small machine)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        clf = LogisticRegression(max_iter=1000, random_state=seed)
        clf.fit(train_x, train_y)
        return float(clf.score(test_x, test_y))


@dataclass
class EvalOptions:
    """What ``evaluate_dbn`` computes and how hard it tries."""

    ais: bool = True
    ais_chains: int = 100
    ais_temperatures: int = 3000
    ais_schedule: str = "linear"
    """``linear`` or ``sm2008`` (Salakhutdinov & Murray's spacing; see ``ais_betas``)."""
    exact_max: int = EXACT_MAX
    probe_samples: int = 5000
    """Training rows the linear probe fits on, at most (a seeded random subset)."""
    samples: int = 10_000
    """Held-out rows measured on, at most (the whole split when no larger: the official test
    split of ``mnist``; else a seeded random subset), and as many training rows."""
    seed: int = 0
    progress: Callable[[int, int], None] | None = None
    """Called as AIS advances (``done``, ``total`` temperatures)."""
    device: str = "cpu"
    """Where the model is measured (``cpu``, ``cuda``, ``cuda:N``); the random numbers of AIS
    and the pseudo-likelihood are the device's own, so CUDA's estimates differ from the CPU's
    within their error."""


@torch.no_grad()
def evaluate_dbn(dbn: Model, held: torch.Tensor, train: torch.Tensor,
                 probe_train: tuple[torch.Tensor, np.ndarray] | None = None,
                 held_labels: np.ndarray | None = None,
                 opts: EvalOptions | None = None) -> dict[str, Any]:
    """Measure ``dbn`` on preprocessed held-out rows ``held``; ``train`` is a training sample
    (the free-energy gap's reference, the AIS base rate). ``probe_train`` (training inputs and
    labels) and ``held_labels`` enable the linear probe. Returns a JSON-ready dict."""
    opts = opts or EvalOptions()
    notes: list[str] = []
    probing = probe_train is not None and held_labels is not None
    if probing and probe_train is not None and len(np.unique(probe_train[1])) < 2:
        probing = False
        notes.append("linear probe skipped: the training labels hold a single class")
    out: dict[str, Any] = {"held_out_rows": len(held), "layers": [], "notes": notes}
    if probing:
        assert probe_train is not None and held_labels is not None
        ptx, pty = probe_train
        out["probe_train_rows"] = len(ptx)
        out["probe_raw_accuracy"] = linear_probe(ptx.float().cpu().numpy(), pty,
                                                 held.float().cpu().numpy(), held_labels,
                                                 opts.seed)
    elif not notes:
        notes.append("linear probe skipped: no labels or no held-out split")
    dtype = dbn.params[0]["weight"].dtype
    x, ref = held.to(dbn.device, dtype), train.to(dbn.device, dtype)
    px = probe_train[0].to(x.dtype) if probing and probe_train is not None else None
    for i, (kind_name, p) in enumerate(zip(dbn.kinds, dbn.params, strict=True)):
        kind = registry.get(kind_name)
        w, vb, hb = p["weight"], p["visible_bias"], p["hidden_bias"]
        ph = kind.hidden_link(kind.hidden_pre_of(p, x))
        f_held = free_energy_of(kind, p, x)
        row: dict[str, Any] = {
            "layer": i, "kind": kind_name, "visible": w.shape[0], "hidden": w.shape[1],
            "recon_error": float((x - kind.visible_link(torch.addmm(vb, ph, w.T)))
                                 .square().sum() / len(x)),
            "free_energy_gap": float(f_held.mean() - free_energy_of(kind, p, ref).mean()),
        }
        if kind.unit_visible:
            pll = pseudo_log_likelihood(kind, x, w, vb, hb, opts.seed)
            row["pseudo_log_likelihood"] = float(pll.mean())
        method = likelihood_method(kind, i, tuple(w.shape), opts)
        if kind_name == "label":
            notes.append(f"layer {i} (label units): log-likelihood not available (exact and "
                         "AIS estimates are implemented for layers without label units); "
                         "its test error is the classification figure")
        elif method == "exact":
            log_z = float(log_partition_of(kind, p))
            row["log_z"], row["log_likelihood_method"] = log_z, "exact"
            row["log_likelihood"] = float(-f_held.double().mean()) - log_z
        elif method == "ais":
            ais = ais_log_partition(w, vb, hb, opts.ais_chains, opts.ais_temperatures,
                                    ref.mean(0), opts.seed, opts.ais_schedule, opts.progress)
            mean_neg_f = float(-f_held.double().mean())
            row["log_z"], row["log_likelihood_method"] = ais.log_z, "ais"
            row["log_likelihood"] = mean_neg_f - ais.log_z
            # a larger log Z means a smaller likelihood: the bounds swap
            row["log_likelihood_interval"] = [mean_neg_f - ais.upper,
                                              None if ais.lower is None
                                              else mean_neg_f - ais.lower]
            row["ais"] = asdict(ais)
        elif (i == 0 and (opts.ais or not kind.ais)) or kind.exact_likelihood == "none":
            notes.append(f"layer {i} ({kind_name}): log-likelihood not available: {method}")
        if probing and px is not None:
            assert probe_train is not None and held_labels is not None
            # one layer's features at a time, in float32 (a float64 copy of 60,000 x 2,000
            # features is 1 GB; scikit-learn's lbfgs fits float32 as it is)
            px = kind.hidden_link(kind.hidden_pre_of(p, px))
            row["probe_accuracy"] = linear_probe(px.float().cpu().numpy(), probe_train[1],
                                                 ph.float().cpu().numpy(), held_labels,
                                                 opts.seed)
        out["layers"].append(row)
        x, ref = ph, kind.hidden_link(kind.hidden_pre_of(p, ref))
    if dbn.labels is not None:
        if held_labels is None:
            notes.append("test error not measured: no labels or no held-out split")
        else:
            wrong = dbn.classify(held) != torch.as_tensor(np.asarray(held_labels))
            out["test_error"] = float(wrong.double().mean())
    return out


def likelihood_method(kind: type[RBM], layer: int, shape: tuple[int, ...], opts: EvalOptions
                      ) -> str:
    """How ``evaluate_dbn`` gets layer ``layer``'s log-likelihood from what its kind declares
    (``RBM.exact_likelihood``, ``RBM.ais``): ``exact`` when the units to enumerate are at most
    ``opts.exact_max``, ``ais`` on layer 0 (binary data) when the kind allows it and AIS is on,
    else why neither is available (one line for the result's notes)."""
    n_v, n_h = shape
    units = enumerable_units(kind, n_v, n_h)
    if units is not None and units <= opts.exact_max:
        return "exact"
    if kind.ais and layer == 0 and opts.ais:
        return "ais"
    exact = ("the kind has no exact likelihood" if units is None else
             f"exact enumeration needs at most exact_max={opts.exact_max} "
             f"{kind.exact_likelihood if kind.exact_likelihood != 'either' else 'smaller-side'}"
             " units, "
             f"it has {units}")
    ais = "AIS is off" if kind.ais else f"AIS is not implemented for {kind.kind!r} layers"
    return f"{exact}, and {ais}"


def pseudo_log_likelihood(kind: Any, v: torch.Tensor, w: torch.Tensor, vb: torch.Tensor,
                          hb: torch.Tensor, seed: int) -> torch.Tensor:
    """Per row: n_visible log sigmoid(F(v~) - F(v)), one random unit of each row flipped (as
    scikit-learn's ``BernoulliRBM.score_samples``)."""
    g = torch.Generator(v.device).manual_seed(seed)
    n = len(v)
    unit = torch.randint(w.shape[0], (n,), generator=g, device=v.device)
    flipped = v.clone()
    rows = torch.arange(n, device=v.device)
    flipped[rows, unit] = 1 - v[rows, unit]
    gap = free_energy(kind, flipped, w, vb, hb) - free_energy(kind, v, w, vb, hb)
    return w.shape[0] * F.logsigmoid(gap)


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def table(result: dict[str, Any]) -> str:
    """The result as a plain-text table, one row per layer and a raw-input probe row."""
    cols = ["layer", "size", "recon", "FE gap", "PLL", "log-lik", "method [interval]",
            "probe acc"]
    rows: list[list[str]] = []
    if "probe_raw_accuracy" in result:
        rows.append(["raw", "", "", "", "", "", "", f"{result['probe_raw_accuracy']:.4f}"])
    for r in result["layers"]:
        how = r.get("log_likelihood_method", "-")
        if how == "ais":
            lo, hi = r["log_likelihood_interval"]
            how = f"ais [{_fmt(lo, '.2f')}, {_fmt(hi, '.2f')}]"
        rows.append([str(r["layer"]), f"{r['visible']}x{r['hidden']}",
                     _fmt(r["recon_error"]), _fmt(r["free_energy_gap"]),
                     _fmt(r.get("pseudo_log_likelihood")), _fmt(r.get("log_likelihood"), ".2f"),
                     how, _fmt(r.get("probe_accuracy"), ".4f")])
    widths = [max(len(c), *(len(row[j]) for row in rows)) for j, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("-" * len(lines[0]))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    if "test_error" in result:
        lines.append(f"test error (label units, least free energy): {result['test_error']:.2%} "
                     f"on {result['held_out_rows']} held-out rows")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def eval_inputs(dbn: Model, data: Any, probe_samples: int, samples: int = 10_000
                ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, np.ndarray] | None,
                           np.ndarray | None]:
    """What ``pipedbn eval`` measures ``dbn`` on, from its run's ``Data``: the held-out rows (a
    training sample without a held-out split), a training reference sample of equal size, the
    probe's training inputs and labels, and the held-out labels, all preprocessed the model's
    own way; the probe parts are None without labels or without a held-out split. At most
    ``samples`` held-out rows (``EvalOptions.samples``): bounded whatever the data's size."""
    rows = data.subset(data.held_rows, samples, 0xE7B) if len(data.held_rows) \
        else data.subset(data.train_rows, min(1000, samples), 0xE7A)
    held = dbn.preprocess(data.raw(rows), rows)
    train_rows = data.subset(data.train_rows, min(len(rows), len(data.train_rows)), 0x7A1)
    train = dbn.preprocess(data.raw(train_rows), train_rows)
    labels = data.source.labels
    probe_train = held_labels = None
    if labels is not None and len(data.held_rows):  # a probe tested on rows it trained on: no
        probe_rows = data.subset(data.train_rows, probe_samples, 0x9B0)
        probe_train = (dbn.preprocess(data.raw(probe_rows), probe_rows),
                       np.asarray(labels)[probe_rows])
        held_labels = np.asarray(labels)[rows]
    return held, train, probe_train, held_labels


def run_eval(path: str | Path, config: str | None, opts: EvalOptions,
             output: str | Path | None = None) -> tuple[dict[str, Any], Path]:
    """Evaluate a run directory or an export file on its data; write ``eval.json`` (in the run
    directory, next to an export file, or at ``output``). Returns the result and that path."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such run directory or model file")
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise UserError(f"{path}: no {MODEL_FILE}: not a finished run directory")
        if config is None and not (path / "config.yaml").is_file():
            raise UserError(f"{path}: no config.yaml to find the data by; give --config")
        config = config or str(path / "config.yaml")
        default_out = path / "eval.json"
    else:
        default_out = path.with_name(path.stem + ".eval.json")
    dbn = load(path).to(opts.device)
    if config is not None:
        cfg = resolve_defaults(load_config(config))
    elif dbn.config:  # an export file keeps its run's config: its data are found by it
        config = f"{path} (the config in its metadata)"
        cfg = resolve_defaults(config_from_text(dbn.config, config))
    else:
        raise UserError(f"{path}: this model file holds no config to find the data by; give "
                        "the training config with --config")
    data = open_data(cfg, unit_range=registry.get(dbn.kinds[0]).unit_visible)
    if data.features != dbn.sizes[0]:
        raise UserError(f"{config}: the data has {data.features} features and the model "
                        f"{dbn.sizes[0]} visible units")
    if not len(data.held_rows):
        log.warning("no held-out split (data.held_out=0): measuring on training samples")
    result = evaluate_dbn(dbn, *eval_inputs(dbn, data, opts.probe_samples, opts.samples), opts)
    if not len(data.held_rows):
        result["notes"].append("no held-out split (data.held_out=0): measured on training "
                               "samples; no linear probe")
    result["model"] = str(path)
    result["data"] = data.source.description
    out = Path(output) if output is not None else default_out
    try:
        atomic_write(out, (json.dumps(result, indent=2) + "\n").encode())
    except OSError as e:
        raise UserError(f"{out}: cannot write ({e.strerror})") from None
    return result, out
