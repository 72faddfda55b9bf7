"""Up-down fine-tuning: the contrastive wake-sleep algorithm of Hinton, Osindero & Teh, "A fast
learning algorithm for deep belief nets" (Neural Computation 2006, appendix B).

``pipedbn finetune RUN_DIR --method up-down`` fine-tunes a DBN whose top layer has label units
(``stages/label.py``) as a generative model, without backprop. Below the top RBM the weights
are untied: each layer i keeps its bottom-up *recognition* weights R_i (``weight``) and biases
(``hidden_bias``) and gets top-down *generative* weights G_i (``generative_weight``, starting
equal to R_i) with the generative biases of its visible units (``visible_bias``). One update
on a mini-batch (data s_0, class indices y), every step computed with the weights before it:

1. *wake* (up pass, sampled): s_{i+1} ~ sigmoid(s_i R_i + rb_i) for every layer below the top;
   top: t ~ sigmoid(s_L W + e_y U + hb), the positive statistics s_L't and e_y't;
2. *top RBM*: ``k`` alternating Gibbs steps from t: pen ~ sigmoid(t W' + vb),
   lab = softmax(t U' + lb), t ~ sigmoid(pen W + lab U + hb); the negative statistics
   pen't and lab't (contrastive divergence, the label units kept as probabilities);
3. *sleep* (down pass, sampled): from the last ``pen``, d_i ~ sigmoid(d_{i+1} G_i' + gb_i), the
   data level kept as its mean (the layer kind's visible link);
4. *predictions*: generative ones of the wake states, p_i = link(s_{i+1} G_i' + gb_i), and
   recognition ones of the sleep states, q_{i+1} = sigmoid(d_i R_i + rb_i);
5. updates, batch means times ``lr``: G_i += (s_i - p_i)' s_{i+1}, gb_i += s_i - p_i (the
   generative weights learn to reconstruct the wake states); R_i += d_i' (d_{i+1} - q_{i+1}),
   rb_i += d_{i+1} - q_{i+1} (the recognition weights learn to infer the sleep states);
   the top RBM's W, U and biases by CD as in 2.

A row is then classified by the label of least free energy in the top RBM given its bottom-up
probabilities (``Model.classify``). The run's training rows, but a seeded ``validation``
fraction, are trained on; the validation error is reported after each epoch and the test error
(the run's held-out split) before and after, once each.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipedbn.config import Config, load_config, resolve_defaults
from pipedbn.data.loader import open_data
from pipedbn.errors import UserError
from pipedbn.finetune import validation_split
from pipedbn.model.dbn import GENERATIVE, MODEL_FILE, Model, from_run, load
from pipedbn.model.rbm import bernoulli
from pipedbn.observe.monitor import Metrics
from stages import registry

MODEL_OUT = "updown.safetensors"


@dataclass
class UpDownSettings:
    epochs: int = 10
    """Epochs of up-down over the training rows."""
    lr: float = 0.01
    """Learning rate of every weight and bias, on batch-mean statistics."""
    batch_size: int = 100
    k: int = 3
    """Gibbs steps in the top RBM per update."""
    weight_decay: float = 0.0
    """L2 cost on every weight matrix (not the biases)."""
    seed: int = 0
    validation: float = 0.1

    def check(self) -> None:
        if self.epochs < 0:
            raise UserError(f"--epochs {self.epochs}: give a number of epochs >= 0")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise UserError(f"--lr {self.lr}: give a learning rate > 0")
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: give a batch size >= 1")
        if self.k < 1:
            raise UserError(f"--k {self.k}: give a number of Gibbs steps >= 1")
        if not 0 <= self.weight_decay < 1:
            raise UserError(f"--weight-decay {self.weight_decay}: give a value in [0, 1)")
        if not 0 < self.validation < 1:
            raise UserError(f"--validation {self.validation}: give a fraction in (0, 1)")


@dataclass
class UpDownResult:
    model: Model
    report: dict[str, Any] = field(default_factory=dict)


def untied(dbn: Model) -> Model:
    """A copy of ``dbn`` whose layers below the top have generative weights of their own."""
    if dbn.labels is None:
        raise UserError("up-down fine-tuning needs label units in the top layer (set "
                        "layers[-1].labels: K in the training config and train again)")
    for i, kind in enumerate(dbn.kinds[:-1]):
        if kind != "bernoulli" and not (i == 0 and kind == "gaussian"):
            raise UserError(f"up-down fine-tuning: layer {i} is {kind!r}; it is implemented for "
                            "bernoulli layers (and a gaussian layer 0) below the label layer")
    params = [{k: t.clone() for k, t in p.items()} for p in dbn.params]
    for p in params[:-1]:
        p.setdefault(GENERATIVE, p["weight"].clone())
    return Model(list(dbn.kinds), params, dbn.scale, dbn.binarize, dbn.mean, dbn.std,
                 dbn.config, dbn.stochastic_seed)


@torch.no_grad()
def updown_step(dbn: Model, x: torch.Tensor, y: torch.Tensor, s: UpDownSettings,
                g: torch.Generator) -> None:
    """One up-down update of ``dbn`` (``untied``) on inputs ``x`` and class indices ``y``."""
    below, top = dbn.params[:-1], dbn.params[-1]
    n, lr = len(x), s.lr
    w, vb, hb, u, lb = (top[k] for k in ("weight", "visible_bias", "hidden_bias",
                                          "label_weight", "label_bias"))
    wake = [x]  # 1. wake
    for p in below:
        wake.append(bernoulli(torch.addmm(p["hidden_bias"], wake[-1], p["weight"]).sigmoid_(),
                              g))
    lab0 = F.one_hot(y, len(lb)).to(x.dtype)
    t0 = bernoulli(torch.addmm(hb, wake[-1], w).addmm_(lab0, u).sigmoid_(), g)
    t = t0
    for _ in range(s.k):  # 2. top RBM
        pen = bernoulli(torch.addmm(vb, t, w.T).sigmoid_(), g)
        lab = torch.addmm(lb, t, u.T).softmax(1)
        t = bernoulli(torch.addmm(hb, pen, w).addmm_(lab, u).sigmoid_(), g)
    sleep = [pen]  # 3. sleep, top down: sleep[j] is level len(below) - j
    for i in range(len(below) - 1, -1, -1):
        p = below[i]
        mean = torch.addmm(p["visible_bias"], sleep[-1], p[GENERATIVE].T)
        mean = registry.get(dbn.kinds[i]).visible_link(mean) if i == 0 else mean.sigmoid_()
        sleep.append(mean if i == 0 else bernoulli(mean, g))
    sleep.reverse()  # sleep[i] is level i
    deltas = []  # 4. predictions, with the weights before the update
    for i, p in enumerate(below):
        link = registry.get(dbn.kinds[i]).visible_link if i == 0 else torch.sigmoid_
        gen_err = wake[i] - link(torch.addmm(p["visible_bias"], wake[i + 1], p[GENERATIVE].T))
        rec_err = sleep[i + 1] - torch.addmm(p["hidden_bias"], sleep[i], p["weight"]).sigmoid_()
        deltas.append((gen_err.T @ wake[i + 1], gen_err.mean(0),
                       sleep[i].T @ rec_err, rec_err.mean(0)))
    dw = wake[-1].T @ t0 - pen.T @ t
    du = lab0.T @ t0 - lab.T @ t
    for p, (dg, dgb, dr, drb) in zip(below, deltas, strict=True):  # 5. updates
        _step(p[GENERATIVE], dg, lr / n, s.weight_decay * lr)
        p["visible_bias"].add_(dgb, alpha=lr)
        _step(p["weight"], dr, lr / n, s.weight_decay * lr)
        p["hidden_bias"].add_(drb, alpha=lr)
    _step(w, dw, lr / n, s.weight_decay * lr)
    _step(u, du, lr / n, s.weight_decay * lr)
    vb.add_((wake[-1] - pen).mean(0), alpha=lr)
    lb.add_((lab0 - lab).mean(0), alpha=lr)
    hb.add_((t0 - t).mean(0), alpha=lr)


def _step(weight: torch.Tensor, grad: torch.Tensor, rate: float, decay: float) -> None:
    if decay:
        weight.mul_(1.0 - decay)
    weight.add_(grad, alpha=rate)


def error_rate(dbn: Model, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((dbn.classify(x) != y).double().mean()) if len(x) else float("nan")


def labelled_data(run_dir: Path) -> tuple[Config, torch.Tensor, torch.Tensor, torch.Tensor,
                                          torch.Tensor]:
    """(config, x_train, y_train, x_test, y_test) of a run whose top layer has label units:
    its training and held-out rows, preprocessed as in training, with their class indices."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = resolve_defaults(load_config(path, []))
    if cfg.labels is None:
        raise UserError(f"{run_dir}: the run's top layer has no label units, which up-down "
                        "fine-tuning needs (set layers[-1].labels: K and train again)")
    data = open_data(cfg, unit_range=cfg.layers[0].kind in ("bernoulli", "label"))
    if not len(data.held_rows):
        raise UserError(f"{run_dir}: the run kept no held-out data (data.held_out=0), so there "
                        "is nothing to measure the test error on")
    assert data.classes is not None

    def split(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        assert data.classes is not None
        return torch.from_numpy(data.rows(rows)), torch.from_numpy(data.classes[rows])

    return cfg, *split(data.train_rows), *split(data.held_rows)


def updown(run_dir: str | Path, settings: UpDownSettings | None = None, log: Any = None,
           metrics: Metrics | None = None) -> UpDownResult:
    """Up-down fine-tuning of the DBN of ``run_dir`` (see the module docstring). ``metrics``
    gets ``updown/validation_error`` at each epoch (0: before the first) and
    ``updown/test_error`` before (step 0) and after (step ``epochs``), in the run's
    ``metrics.jsonl`` and TensorBoard (``tb/run``)."""
    s = settings or UpDownSettings()
    s.check()
    run_dir = Path(run_dir)
    t0 = time.monotonic()
    _, x_all, y_all, x_test, y_test = labelled_data(run_dir)
    pretrained = load(run_dir) if (run_dir / MODEL_FILE).is_file() else from_run(run_dir)
    dbn = untied(pretrained)
    fit_at, val_at = validation_split(len(x_all), s.validation, s.seed)
    if not len(val_at) or not len(fit_at):
        raise UserError(f"--validation {s.validation}: {len(x_all)} training samples leave "
                        "none for validation or for training; change --validation")
    dtype = dbn.params[0]["weight"].dtype
    x_fit, y_fit = x_all[fit_at].to(dtype), y_all[fit_at]
    x_val, y_val = x_all[val_at].to(dtype), y_all[val_at]
    x_test = x_test.to(dtype)
    before = error_rate(dbn, x_test, y_test)
    val_before = error_rate(dbn, x_val, y_val)
    if metrics is not None:
        metrics.scalar(0, -1, "updown/validation_error", val_before)
        metrics.scalar(0, -1, "updown/test_error", before)
    g = torch.Generator().manual_seed(s.seed)
    epochs = []
    for e in range(s.epochs):
        perm = torch.randperm(len(x_fit), generator=g)
        for lo in range(0, len(perm), s.batch_size):
            idx = perm[lo:lo + s.batch_size]
            updown_step(dbn, x_fit[idx], y_fit[idx], s, g)
        if not all(torch.isfinite(t).all() for p in dbn.params for t in p.values()):
            raise UserError(f"up-down fine-tuning diverged in epoch {e + 1}; lower --lr")
        err = error_rate(dbn, x_val, y_val)
        epochs.append({"epoch": e + 1, "validation_error": err})
        if metrics is not None:
            metrics.scalar(e + 1, -1, "updown/validation_error", err)
        if log:
            log(f"up-down epoch {e + 1}/{s.epochs}: validation error {err:.4f}")
    after = error_rate(dbn, x_test, y_test)
    if metrics is not None:
        metrics.scalar(s.epochs, -1, "updown/test_error", after)
        metrics.flush()
    report = {
        "run_dir": str(run_dir), "method": "up-down", "settings": asdict(s),
        "sizes": dbn.sizes, "labels": dbn.labels, "train_samples": len(x_fit),
        "validation_samples": len(x_val), "test_samples": len(x_test),
        "validation_error_before": val_before,
        "validation_error_after": epochs[-1]["validation_error"] if epochs else val_before,
        "test_error_before": before, "test_error_after": after,
        "train_error_after": error_rate(dbn, x_fit, y_fit), "epochs": epochs,
        "seconds": time.monotonic() - t0,
    }
    return UpDownResult(dbn, report)
