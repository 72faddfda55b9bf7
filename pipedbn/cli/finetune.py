"""``pipedbn finetune RUN_DIR``: a finished run's DBN fine-tuned into a classifier with its
data's labels, by backprop (``finetune.py``) or, for a DBN with label units in its top layer,
by the up-down algorithm (``--method up-down``, ``updown.py``)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from pipedbn.errors import UserError
from pipedbn.finetune import (
    CLASSIFIER_FILE,
    REPORT_FILE,
    FinetuneSettings,
    finetune,
    save_classifier,
)
from pipedbn.observe.monitor import Metrics
from pipedbn.run.resources import device_arg
from pipedbn.run.rundir import atomic_write
from pipedbn.updown import MODEL_OUT, UpDownSettings, updown

NAME = "finetune"
USAGE = "finetune RUN_DIR"
SUMMARY = "fine-tune the DBN into a classifier with the data's labels"

log = logging.getLogger("pipedbn")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    ft = sub.add_parser(
        NAME, help="fine-tune a finished run's DBN into a classifier with its data's labels",
        description="Fine-tune a finished run's DBN into a classifier with its data's labels: "
                    "trained on the run's training rows but a validation fraction (per-epoch "
                    "figures), tested once on its held-out split.")
    ft.add_argument("run_dir", help="run directory of a finished training run")
    ft.add_argument("--method", choices=["backprop", "up-down"], default="backprop",
                    help="backprop (the default: a softmax layer on the DBN, trained with "
                         "cross-entropy) or up-down (contrastive wake-sleep of Hinton, Osindero "
                         "& Teh 2006, for a DBN with label units in its top layer: writes "
                         f"RUN_DIR/{MODEL_OUT}, whose test error pipedbn eval reports)")
    ft.add_argument("--epochs", type=int, default=None,
                    help="epochs of fine-tuning (default 30; up-down 10)")
    ft.add_argument("--head-epochs", type=int, default=10, metavar="N",
                    help="epochs of the softmax layer alone on frozen features first (default 10)")
    ft.add_argument("--lr", type=float, default=None,
                    help="learning rate (default 0.05; up-down 0.01)")
    ft.add_argument("--batch-size", type=int, default=None,
                    help="mini-batch size (default 32; up-down 100)")
    ft.add_argument("--k", type=int, default=3, metavar="K",
                    help="up-down: Gibbs steps in the top RBM per update (default 3)")
    ft.add_argument("--weight-decay", type=float, default=0.0, metavar="C",
                    help="up-down: L2 cost on the weights (default 0)")
    ft.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                    help="sgd (momentum 0.9, the default) or adam")
    ft.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    ft.add_argument("--validation", type=float, default=0.1, metavar="F",
                    help="fraction of the run's training rows kept for the per-epoch "
                         "validation error (default 0.1); the test rows (the run's held-out "
                         "split) are measured once, at the end")
    ft.add_argument("--device", default="cpu",
                    help="where the classifier trains: cpu (the default), cuda, cuda:N or auto "
                         "(CUDA when present)")
    ft.add_argument("-o", "--output", default=None,
                    help="classifier file (default RUN_DIR/classifier.pt; up-down: the model, "
                         f"RUN_DIR/{MODEL_OUT}); its figures go to RUN_DIR/finetune.json "
                         "(up-down: RUN_DIR/updown.json), or beside -o FILE as FILE.json")
    ft.add_argument("-q", "--quiet", action="store_true", help="no per-epoch figures")
    return ft


def output_paths(run_dir: Path, output: str | None, default: str = CLASSIFIER_FILE
                 ) -> tuple[Path, Path]:
    """(classifier file, report file): ``RUN_DIR/classifier.pt`` and ``RUN_DIR/finetune.json``
    (``default``: the up-down model and its json), or ``-o FILE`` and FILE with the suffix
    ``.json``."""
    if output is None:
        report = REPORT_FILE if default == CLASSIFIER_FILE else Path(default).stem + ".json"
        return run_dir / default, run_dir / report
    out = Path(output)
    if out.is_dir():
        raise UserError(f"-o {out}: is a directory; give a file name such as classifier.pt")
    if out.suffix == ".json":
        raise UserError(f"-o {out}: the classifier file would collide with its .json report; "
                        "give a name such as classifier.pt")
    return out, out.with_suffix(".json")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if args.method == "up-down":
        return run_updown(args, run_dir)
    out, report = output_paths(run_dir, args.output)
    given = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr),
                               ("batch_size", args.batch_size)) if v is not None}
    s = FinetuneSettings(head_epochs=args.head_epochs, optimizer=args.optimizer, seed=args.seed,
                         validation=args.validation, device=str(device_arg(args.device)),
                         **given)
    result = finetune(run_dir, s, log=None if args.quiet else log.info)
    r = result.report
    try:
        save_classifier(result, out)
        atomic_write(report, (json.dumps(r, indent=2) + "\n").encode())
    except OSError as e:
        raise UserError(f"cannot write {out} or {report} ({e.strerror})") from None
    print(f"test error: {r['test_error_before']:.4f} before fine-tuning (softmax layer on the "
          f"frozen DBN), {r['test_error_after']:.4f} after ({r['test_samples']} held-out "
          f"samples, measured once; {r['train_samples']} trained on, {r['validation_samples']} "
          f"for validation; {r['seconds']:.1f} s)")
    print(out)
    return 0


def run_updown(args: argparse.Namespace, run_dir: Path) -> int:
    out, report = output_paths(run_dir, args.output, MODEL_OUT)
    given = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr),
                               ("batch_size", args.batch_size)) if v is not None}
    s = UpDownSettings(k=args.k, weight_decay=args.weight_decay, seed=args.seed,
                       validation=args.validation, **given)
    s.check()
    metrics = Metrics(run_dir, tensorboard=True)
    try:
        result = updown(run_dir, s, log=None if args.quiet else log.info, metrics=metrics)
    finally:
        metrics.close()
    r = result.report
    try:
        result.model.save(out)
        atomic_write(report, (json.dumps(r, indent=2) + "\n").encode())
    except OSError as e:
        raise UserError(f"cannot write {out} or {report} ({e.strerror})") from None
    print(f"test error: {r['test_error_before']:.4f} before up-down (label units, least free "
          f"energy), {r['test_error_after']:.4f} after {s.epochs} epochs ({r['test_samples']} "
          f"held-out samples, measured once; {r['train_samples']} trained on, "
          f"{r['validation_samples']} for validation; {r['seconds']:.1f} s)")
    print(out)
    return 0
