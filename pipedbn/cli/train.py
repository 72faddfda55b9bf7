"""``pipedbn train CONFIG [key=value ...]``: train a DBN.

Without a launcher it starts the local processes the balancer chooses for this machine's cores
or GPUs (``run/resources.py``, ``run/local.py``); ``--nproc N`` fixes their number (1 trains in
this process); under torchrun it joins the launcher's group.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from pipedbn.config import dump_yaml, load_config, resolve_defaults
from pipedbn.errors import UserError
from pipedbn.pipeline.distributed import torchrun_env, train_distributed
from pipedbn.run.local import train_local
from pipedbn.run.resources import rank_threads, torchrun_threads

NAME = "train"
USAGE = "train CONFIG [key=value ...]"
SUMMARY = "train a DBN (processes and threads for this machine; --nproc 1: here)"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    tr = sub.add_parser(
        NAME, help="train a DBN from a YAML config",
        description="Train a DBN from a YAML config, with key=value overrides (rbm.lr=0.05, "
                    "layers=[32,24,16]). Without a launcher it starts the processes, each with "
                    "its threads, that the balancer chooses for this machine's cores (one per "
                    "GPU on CUDA; --nproc N to choose, 1 trains in this process; an explicit "
                    "train.threads number: one per layer); under torchrun it "
                    "joins the launcher's group. The run directory is the last line of stdout.")
    tr.add_argument("config", help="YAML config file (see configs/)")
    tr.add_argument("overrides", nargs="*", metavar="key=value",
                    help="override config fields: rbm.lr=0.05 layers.1.hidden=256 run.dir=PATH")
    tr.add_argument("--print-config", action="store_true",
                    help="print the resolved config and exit without training")
    tr.add_argument("-q", "--quiet", action="store_true", help="only warnings and the result")
    tr.add_argument("--nproc", type=int, default=None, metavar="N",
                    help="without a launcher: processes to start on this machine (default: "
                         "the balancer's choice for train.threads=auto, else one per layer; "
                         "1 trains in this process)")
    tr.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                    help="continue the run in RUN_DIR (default: run.dir) from its newest "
                         "complete checkpoint; under torchrun, restarted workers resume "
                         "by themselves")
    tr.add_argument("--prepared", action="store_true", help=argparse.SUPPRESS)  # local launcher
    return tr


def run(args: argparse.Namespace) -> int:
    cfg = resolve_defaults(load_config(args.config, args.overrides))
    if args.print_config:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    resume = None
    if args.resume is not None:
        if not (args.resume or cfg.run.dir):
            raise UserError("--resume: give the run directory (--resume RUN_DIR) or run.dir=")
        resume = Path(args.resume or str(cfg.run.dir))
    env = torchrun_env()
    if env is not None:
        if args.nproc is not None:
            raise UserError("--nproc is for runs without a launcher; under torchrun the number "
                            "of processes is --nnodes x --nproc-per-node")
        cfg = torchrun_threads(cfg, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        torch.set_num_threads(rank_threads(cfg, env[0]))
        return train_distributed(cfg, prepared=args.prepared, resume=resume)
    return train_local(cfg, args.nproc, args.quiet, resume)
