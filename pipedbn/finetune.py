"""Supervised fine-tuning of a trained DBN, and pictures of its samples.

``pipedbn finetune RUN_DIR`` turns a finished run into a classifier: the DBN's up pass
(``Model.to_module()``: Linear + Sigmoid per layer) followed by a ``Linear(top, classes)`` softmax
layer, trained with backprop and cross-entropy on the labels of the run's training split (the
data and split come from the run's ``config.yaml``). It goes in two phases:

1. *before*: the DBN frozen, only the softmax layer trains (``head_epochs``), on the top-layer
   features; its test error is the "before fine-tuning" figure;
2. *after*: the whole network trains from there (``epochs``), reporting the training loss and the
   validation error after each epoch.

Three splits: *train* (the run's training rows but a ``validation`` fraction), *validation*
(that fraction, drawn from the seed: the per-epoch figures) and *test* (the run's held-out
split, which pre-training never trained on: measured once, at the end, for the softmax layer
alone and for the fine-tuned network). The report lists the rows of each (``split``).

The classifier is written with ``torch.save`` (loads with ``weights_only=True``): a dict with
``state_dict`` (of ``build_classifier(sizes, num_classes)``), ``num_classes``, ``classes`` (the
label value of each output) and ``sizes``. The figures go to a JSON file beside it
(``pipedbn finetune``, ``cli/finetune.py``).
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
from pipedbn.model.dbn import MODEL_FILE, from_run, load
from pipedbn.run.rundir import SPLIT_FILE, read_split, save_tensors
from stages import registry

CLASSIFIER_FILE = "classifier.pt"
REPORT_FILE = "finetune.json"


@dataclass
class FinetuneSettings:
    epochs: int = 30
    """Epochs of fine-tuning the whole network."""
    head_epochs: int = 10
    """Epochs of training the softmax layer alone on frozen DBN features first."""
    lr: float = 0.05
    batch_size: int = 32
    optimizer: str = "sgd"
    """``sgd`` (momentum 0.9) or ``adam``."""
    momentum: float = 0.9
    seed: int = 0
    validation: float = 0.1
    """Fraction of the run's training rows kept out of fine-tuning to watch it per epoch (the
    test rows, the run's held-out split, are measured once, at the end)."""
    device: str = "cpu"
    """Where the classifier trains (``cpu``, ``cuda``, ``cuda:N``); it is initialised on the
    CPU either way and returned there."""

    def check(self) -> None:
        if self.epochs < 0:
            raise UserError(f"--epochs {self.epochs}: give a number of epochs >= 0")
        if self.head_epochs < 0:
            raise UserError(f"--head-epochs {self.head_epochs}: give a number of epochs >= 0")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise UserError(f"--lr {self.lr}: give a learning rate > 0")
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: give a batch size >= 1")
        if not 0 < self.validation < 1:
            raise UserError(f"--validation {self.validation}: give a fraction in (0, 1)")
        if self.optimizer not in ("sgd", "adam"):
            raise UserError(f"--optimizer {self.optimizer}: expected sgd or adam")


@dataclass
class FinetuneResult:
    classifier: torch.nn.Sequential
    classes: list[int]
    sizes: list[int]
    report: dict[str, Any] = field(default_factory=dict)


def build_classifier(sizes: list[int], num_classes: int) -> torch.nn.Sequential:
    """The classifier's layout: Linear + Sigmoid per DBN layer, then Linear(top, classes) (its
    outputs are logits: softmax is in the loss)."""
    mods: list[torch.nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        mods += [torch.nn.Linear(a, b), torch.nn.Sigmoid()]
    mods.append(torch.nn.Linear(sizes[-1], num_classes))
    return torch.nn.Sequential(*mods)


def load_classifier(path: str | Path) -> tuple[torch.nn.Sequential, list[int]]:
    """A saved classifier and the label value of each of its outputs."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = build_classifier(list(blob["sizes"]), int(blob["num_classes"]))
    model.load_state_dict(blob["state_dict"])
    return model, list(blob["classes"])


def _run_config(run_dir: Path) -> Config:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    return resolve_defaults(load_config(path, []))


def labelled_splits(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                             torch.Tensor, list[int]]:
    """(x_train, y_train, x_held, y_held, classes) of the run's data, preprocessed as in
    training; ``y`` are class indices into ``classes`` (the sorted label values)."""
    cfg = _run_config(run_dir)
    data = open_data(cfg, unit_range=registry.get(cfg.layers[0].kind).unit_visible)
    labels = data.source.labels
    if labels is None:
        raise UserError(f"{run_dir}: the run's data ({data.source.description}) has no labels; "
                        "fine-tuning needs them (set data.labels: an IDX labels file for idx, "
                        "an array name for .npz; digits and mnist5k have labels)")
    if len(data.held_rows) == 0:
        raise UserError(f"{run_dir}: the run kept no held-out data (data.held_out=0), so there "
                        "is nothing to measure the test error on")
    labels = np.asarray(labels).reshape(-1)
    classes, index = np.unique(labels[: data.source.rows], return_inverse=True)
    if len(classes) < 2:
        raise UserError(f"{run_dir}: the labels hold {len(classes)} class; a classifier needs 2 "
                        "or more")

    def split(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(data.rows(rows)),
                torch.from_numpy(index[rows].astype(np.int64)))

    x_train, y_train = split(data.train_rows)
    x_held, y_held = split(data.held_rows)
    return x_train, y_train, x_held, y_held, classes.tolist()


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) positions in the run's training rows: ``fraction`` of them, drawn
    from ``seed``, sorted."""
    perm = np.random.default_rng([seed, 0x7A11D]).permutation(n)
    cut = int(round(fraction * n))
    return np.sort(perm[cut:]), np.sort(perm[:cut])


@torch.no_grad()
def error_rate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) != y).float().mean())


def _optimizer(params: Any, s: FinetuneSettings) -> torch.optim.Optimizer:
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr)
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum)


def _epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
           batch_size: int, g: torch.Generator) -> float:
    """One shuffled pass; returns the mean training loss over it."""
    model.train()
    perm = torch.randperm(len(x), generator=g).to(x.device)
    total = 0.0
    for lo in range(0, len(x), batch_size):
        idx = perm[lo:lo + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if not torch.isfinite(loss):
            raise UserError(f"fine-tuning diverged (loss {float(loss)}); lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
    model.eval()
    return total / len(x)


def finetune(run_dir: str | Path, settings: FinetuneSettings | None = None,
             log: Any = None) -> FinetuneResult:
    """Fine-tune the DBN of ``run_dir`` into a classifier (see the module docstring)."""
    s = settings or FinetuneSettings()
    s.check()
    run_dir = Path(run_dir)
    t0 = time.monotonic()
    x_all, y_all, x_held, y_held, classes = labelled_splits(run_dir)
    dbn = load(run_dir) if (run_dir / MODEL_FILE).is_file() else from_run(run_dir)
    if dbn.sizes[0] != x_all.shape[1]:
        raise UserError(f"{run_dir}: the model has {dbn.sizes[0]} inputs but the run's data has "
                        f"{x_all.shape[1]} features")
    fit_at, val_at = validation_split(len(x_all), s.validation, s.seed)
    if not len(val_at) or not len(fit_at):
        raise UserError(f"--validation {s.validation}: {len(x_all)} training samples leave "
                        "none for validation or for training; change --validation")
    dtype, device = dbn.params[0]["weight"].dtype, torch.device(s.device)
    x_train, y_train = x_all[fit_at].to(device, dtype), y_all[fit_at].to(device)
    x_val, y_val = x_all[val_at].to(device, dtype), y_all[val_at].to(device)
    x_held, y_held = x_held.to(device, dtype), y_held.to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        body = dbn.to_module().to(dtype)
        head = torch.nn.Linear(dbn.sizes[-1], len(classes)).to(dtype)
    g = torch.Generator().manual_seed(s.seed)
    body, head = body.to(device), head.to(device)
    model = torch.nn.Sequential(*body, head)
    model.eval()

    # Phase 1: the softmax layer alone on frozen features (computed once).
    with torch.no_grad():
        f_train = body(x_train)
    opt = _optimizer(head.parameters(), s)
    head_losses = [_epoch(head, opt, f_train, y_train, s.batch_size, g)
                   for _ in range(s.head_epochs)]
    val_before = error_rate(model, x_val, y_val)
    before = error_rate(model, x_held, y_held)  # reported at the end, with the final test
    if log:
        log(f"softmax layer on frozen DBN features ({s.head_epochs} epochs): validation error "
            f"{val_before:.4f}")

    # Phase 2: the whole network, watched on the validation rows.
    opt = _optimizer(model.parameters(), s)
    epochs = []
    for e in range(s.epochs):
        loss = _epoch(model, opt, x_train, y_train, s.batch_size, g)
        err = error_rate(model, x_val, y_val)
        epochs.append({"epoch": e + 1, "train_loss": loss, "validation_error": err})
        if log:
            log(f"epoch {e + 1}/{s.epochs}: train loss {loss:.4f}, validation error {err:.4f}")
    after = error_rate(model, x_held, y_held)
    train_rows = read_split(run_dir)["train"] if (run_dir / SPLIT_FILE).is_file() else None
    report = {
        "run_dir": str(run_dir),
        "settings": asdict(s),
        "sizes": dbn.sizes,
        "classes": classes,
        "train_samples": len(x_train),
        "validation_samples": len(x_val),
        "test_samples": len(x_held),
        "head_train_loss": head_losses[-1] if head_losses else None,
        "validation_error_before": val_before,
        "validation_error_after": epochs[-1]["validation_error"] if epochs else val_before,
        "test_error_before": before,
        "test_error_after": after,
        "train_error_after": error_rate(model, x_train, y_train),
        "epochs": epochs,
        "split": None if train_rows is None else {
            "train": train_rows[fit_at].tolist(), "validation": train_rows[val_at].tolist(),
            "test": read_split(run_dir)["held_out"].tolist()},
        "seconds": time.monotonic() - t0,
    }
    return FinetuneResult(model.cpu(), classes, dbn.sizes, report)


def save_classifier(result: FinetuneResult, path: Path) -> None:
    save_tensors(path, {"state_dict": {k: v.detach().cpu().contiguous()
                                       for k, v in result.classifier.state_dict().items()},
                        "num_classes": len(result.classes), "classes": result.classes,
                        "sizes": result.sizes})
