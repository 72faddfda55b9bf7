"""Command line: ``pipedbn train CONFIG [key=value ...]``, ``pipedbn plan``, ``pipedbn export
RUN_DIR -o FILE``, ``pipedbn finetune RUN_DIR`` (a classifier from the DBN and the data's
labels) and ``pipedbn sample RUN_DIR -o FILE.png`` (samples as a grid image): see ``finetune.py``.
``pipedbn eval RUN_DIR`` measures what a trained model learned (``evaluation.py``).

``train`` runs one process per layer: under torchrun it joins the launcher's group; without a
launcher it starts them itself (``launch.py``); ``--nproc 1`` trains in this process.

A user's mistake (bad config, missing file, bad data, unusable run directory) is printed as one
message without a traceback and exits with status 2; a run that diverges exits with status 3.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

from pipedbn import __version__
from pipedbn.cli import simulate
from pipedbn.config import dump_yaml, load_config, resolve_defaults
from pipedbn.errors import ConfigError, Interrupted, UserError
from pipedbn.pipeline.transport import LinkError
from pipedbn.run.launch import LINK_EXIT
from pipedbn.run.local import default_nproc, train_local

CONFIG_ERROR_GRACE_S = 20.0  # a torchrun rank but 0 waits this long for rank 0 to report

log = logging.getLogger("pipedbn")


HELP_EPILOG = """\
commands:
  train CONFIG [key=value ...]   train a DBN (one local process per layer; --nproc 1: here)
  plan CONFIG --world-size N     show the balancer's plan for N ranks
  export RUN_DIR -o FILE         write a finished run's model to one .safetensors file
  eval MODEL                     measure what a model learned (likelihood, probes)
  finetune RUN_DIR               fine-tune the DBN into a classifier with the data's labels
  sample MODEL -o FILE.png       draw samples from the DBN as an image grid
  simulate CONFIG --step-ms A,B  predict a plan's samples/s without running it

`pipedbn COMMAND --help` describes each one. A user's mistake is one line and exit status 2;
docs/errors.md lists them. Configs: docs/config.md."""

SUBCOMMANDS = {
    "train": "Train a DBN from a YAML config, with key=value overrides (rbm.lr=0.05, "
             "layers=[32,24,16]). Without a launcher it starts one local process per layer "
             "(--nproc N to choose, 1 trains in this process); under torchrun it joins the "
             "launcher's group. The run directory is the last line of stdout.",
    "plan": "Print the plan the balancer makes for a config on N ranks (which layers each "
            "rank trains, replicas, modelled or profiled step times).",
    "export": "Write a finished run's model to one safetensors file (weights, preprocessing "
              "and the run's config); pipedbn.load reads it.",
    "finetune": "Fine-tune a finished run's DBN into a classifier with its data's labels: "
                "trained on the run's training rows but a validation fraction (per-epoch "
                "figures), tested once on its held-out split.",
    "sample": "Draw samples from a DBN (Gibbs chains in the top RBM, then down the stack) and "
              "write them as a grid image (PNG).",
    "eval": "Measure what a trained model learned on its held-out data: reconstruction, "
            "free-energy gap, pseudo- and (AIS or exact) log-likelihood, linear probes. "
            "Writes eval.json.",
}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pipedbn", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Deep belief networks whose RBM layers train at the same time, one "
                    "pipeline stage each.",
        epilog=HELP_EPILOG)
    ap.add_argument("--version", action="version", version=f"pipedbn {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train a DBN from a YAML config",
                        description=SUBCOMMANDS["train"])
    tr.add_argument("config", help="YAML config file (see configs/)")
    tr.add_argument("overrides", nargs="*", metavar="key=value",
                    help="override config fields: rbm.lr=0.05 layers.1.hidden=256 run.dir=PATH")
    tr.add_argument("--print-config", action="store_true",
                    help="print the resolved config and exit without training")
    tr.add_argument("-q", "--quiet", action="store_true", help="only warnings and the result")
    tr.add_argument("--nproc", type=int, default=None, metavar="N",
                    help="without a launcher: processes to start on this machine (default: one "
                         "per layer; 1 trains in this process)")
    tr.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                    help="continue the run in RUN_DIR (default: run.dir) from its newest "
                         "complete checkpoint; under torchrun, restarted workers resume "
                         "by themselves")
    tr.add_argument("--prepared", action="store_true", help=argparse.SUPPRESS)  # local launcher

    pl = sub.add_parser("plan", help="print the plan the balancer makes for a config on N ranks",
                        description=SUBCOMMANDS["plan"])
    pl.add_argument("config", help="YAML config file (see configs/)")
    pl.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields")
    pl.add_argument("--world-size", type=int, required=True, metavar="N",
                    help="number of ranks (processes) to plan for")
    pl.add_argument("--profile", action="store_true",
                    help="time a few real steps of every layer here instead of counting FLOPs")

    ex = sub.add_parser("export", help="write a finished run's model to one safetensors file",
                        description=SUBCOMMANDS["export"])
    ex.add_argument("run_dir", help="run directory of a finished training run")
    ex.add_argument("-o", "--output", required=True, help="output file (.safetensors)")

    ft = sub.add_parser("finetune", help="fine-tune a finished run's DBN into a classifier "
                        "with its data's labels", description=SUBCOMMANDS["finetune"])
    ft.add_argument("run_dir", help="run directory of a finished training run")
    ft.add_argument("--epochs", type=int, default=30, help="epochs of fine-tuning (default 30)")
    ft.add_argument("--head-epochs", type=int, default=10, metavar="N",
                    help="epochs of the softmax layer alone on frozen features first (default 10)")
    ft.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    ft.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
    ft.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                    help="sgd (momentum 0.9, the default) or adam")
    ft.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    ft.add_argument("--validation", type=float, default=0.1, metavar="F",
                    help="fraction of the run's training rows kept for the per-epoch "
                         "validation error (default 0.1); the test rows (the run's held-out "
                         "split) are measured once, at the end")
    ft.add_argument("-o", "--output", default=None,
                    help="classifier file (default RUN_DIR/classifier.pt; its figures go to "
                         "RUN_DIR/finetune.json, or beside -o FILE as FILE.json)")
    ft.add_argument("-q", "--quiet", action="store_true", help="no per-epoch figures")

    sa = sub.add_parser("sample", help="draw samples from a DBN and write them as a PNG grid",
                        description=SUBCOMMANDS["sample"])
    sa.add_argument("run_dir", help="run directory of a finished run, or an exported model")
    sa.add_argument("-o", "--output", required=True, help="output image (.png)")
    sa.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    sa.add_argument("--steps", type=int, default=None,
                    help="Gibbs steps in the top RBM (default 20 from the data, as Hinton et "
                         "al. 2006 show them; 1000 with --from-noise)")
    sa.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    sa.add_argument("--from-noise", action="store_true",
                    help="start the chains from uniform noise (default: from the up pass of "
                         "held-out images of the model's data)")
    sa.add_argument("--columns", type=int, default=None,
                    help="tiles per row (default: a square-ish grid)")
    sa.add_argument("--image-shape", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="height and width of one input (needed when it is not square)")
    ev = sub.add_parser("eval", help="measure what a trained model learned (writes eval.json)",
                        description=SUBCOMMANDS["eval"])
    add_eval_arguments(ev)
    simulate.add_parser(sub)
    return ap


def add_eval_arguments(ev: argparse.ArgumentParser) -> None:
    from pipedbn.eval.evaluation import AIS_SCHEDULES, EvalOptions

    d = EvalOptions()  # the defaults live there
    ev.add_argument("model", help="run directory, or an exported .safetensors file")
    ev.add_argument("--config", help="config giving the data (default: the run's config.yaml, "
                    "or the config an export file keeps in its metadata)")
    ev.add_argument("-o", "--output", help="where to write the JSON results (default: eval.json "
                    "in the run directory, MODEL.eval.json next to an export file)")
    ev.add_argument("--ais-chains", type=int, default=d.ais_chains, metavar="N",
                    help=f"AIS chains for layer 0's log Z (default {d.ais_chains})")
    ev.add_argument("--ais-temperatures", type=int, default=d.ais_temperatures, metavar="T",
                    help=f"AIS intermediate temperatures (default {d.ais_temperatures}: ~10 s "
                         "for 784x500)")
    ev.add_argument("--ais-schedule", choices=AIS_SCHEDULES, default=d.ais_schedule,
                    help="spacing of the AIS temperatures: linear, or sm2008 (Salakhutdinov & "
                         "Murray's: denser near 1; with --ais-temperatures 14500 theirs exactly)")
    ev.add_argument("--no-ais", action="store_true", help="skip the AIS estimate")
    ev.add_argument("--exact-max", type=int, default=d.exact_max, metavar="N",
                    help="exact log-likelihood when the smaller side has <= N units "
                         f"(default {d.exact_max})")
    ev.add_argument("--probe-samples", type=int, default=d.probe_samples, metavar="N",
                    help=f"training rows the linear probe fits on, at most "
                         f"(default {d.probe_samples})")
    ev.add_argument("--samples", type=int, default=d.samples, metavar="N",
                    help=f"held-out rows measured on, at most (default {d.samples})")
    ev.add_argument("--seed", type=int, default=d.seed,
                    help=f"seed of AIS and the subsets (default {d.seed})")


def cmd_eval(args: argparse.Namespace) -> int:
    from pipedbn.eval.evaluation import EvalOptions, ais_progress, run_eval, table

    for name in ("ais_chains", "ais_temperatures", "probe_samples", "samples"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: give a number "
                            ">= 1")
    from pipedbn.eval.likelihood import MAX_ENUMERATED

    if args.exact_max > MAX_ENUMERATED:
        raise UserError(f"--exact-max {args.exact_max}: at most {MAX_ENUMERATED} "
                        f"(2^{MAX_ENUMERATED} states)")
    torch.set_num_threads(1)
    opts = EvalOptions(ais=not args.no_ais, ais_chains=args.ais_chains,
                       ais_temperatures=args.ais_temperatures, exact_max=args.exact_max,
                       probe_samples=args.probe_samples, samples=args.samples, seed=args.seed,
                       ais_schedule=args.ais_schedule, progress=ais_progress())
    result, out = run_eval(args.model, args.config, opts, args.output)
    print(table(result))
    print(out)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipedbn.pipeline.distributed import (
        torchrun_env,
        train_distributed,
    )

    cfg = resolve_defaults(load_config(args.config, args.overrides))
    if args.print_config:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    torch.set_num_threads(cfg.train.threads)
    resume = None
    if args.resume is not None:
        if not (args.resume or cfg.run.dir):
            raise UserError("--resume: give the run directory (--resume RUN_DIR) or run.dir=")
        resume = Path(args.resume or str(cfg.run.dir))
    if torchrun_env() is not None:
        if args.nproc is not None:
            raise UserError("--nproc is for runs without a launcher; under torchrun the number "
                            "of processes is --nnodes x --nproc-per-node")
        return train_distributed(cfg, prepared=args.prepared, resume=resume)
    return train_local(cfg, default_nproc(cfg) if args.nproc is None else args.nproc,
                       args.quiet, resume)


def cmd_plan(args: argparse.Namespace) -> int:
    from pipedbn.balancer import describe, evaluate, one_per_layer, solve
    from pipedbn.balancer.runtime import first_plan, problem_for, profile_layers
    from pipedbn.data.loader import open_data
    from pipedbn.pipeline.device import local_device
    from stages import registry

    cfg = resolve_defaults(load_config(args.config, args.overrides))
    if args.world_size < 1:
        raise UserError(f"--world-size {args.world_size}: give a number of ranks >= 1")
    torch.set_num_threads(cfg.train.threads)
    data = open_data(cfg, unit_range=registry.get(cfg.layers[0].kind).kind == "bernoulli")
    n = args.world_size
    if args.profile:
        times = profile_layers(cfg, data.features, local_device(cfg.train.device))
        problem = problem_for(cfg, data.features, n, costs=times)
        how = "profiled here: " + ", ".join(f"layer {i} {t * 1e3:.2f} ms"
                                            for i, t in enumerate(times))
    else:
        problem = problem_for(cfg, data.features, n)
        how = f"modelled: FLOPs at balancer.flops = {cfg.balancer.flops:.3g} per second"
    plan, _ = first_plan(cfg, data.features, n)
    if cfg.balancer.plan == "auto":
        try:
            solution = solve(problem)
        except ValueError as e:
            raise ConfigError([f"balancer: {e}"]) from None
    else:
        from pipedbn.balancer import Solution

        times = evaluate(problem, plan)
        solution = Solution(plan, times, max(times))
    print(f"plan for {len(cfg.layers)} layers on {n} ranks (costs {how})")
    print(describe(solution, cfg.train.batch_size))
    if n >= len(cfg.layers) and cfg.balancer.plan == "auto":
        base = max(evaluate(problem, one_per_layer(len(cfg.layers), n)))
        print(f"one rank per layer: {base:.4g} s per micro-batch; this plan is "
              f"{base / solution.bottleneck:.2f}x faster")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipedbn.model.dbn import from_run

    dbn = from_run(args.run_dir)
    out = Path(args.output)
    if out.is_dir():
        raise UserError(f"-o {out}: is a directory; give a file name such as model.safetensors")
    try:
        dbn.save(out)
    except OSError as e:
        raise UserError(f"-o {out}: cannot write ({e.strerror})") from None
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # overrides may come before or after options: `train c.yaml --print-config rbm.k=2`
    args, extra = parser.parse_known_args(argv)
    if args.command in ("train", "plan") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    rank = int(os.environ["RANK"]) if "RANK" in os.environ else None
    quiet = getattr(args, "quiet", False) or (rank is not None and rank > 0)
    from pipedbn.observe.progress import WhereFilter, set_where

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(WhereFilter())
    set_where("" if rank is None else f"rank {rank}")
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=[handler],
                        format="[pipedbn] %(message)s" if rank is None
                        else "[pipedbn %(where)s] %(message)s")
    if getattr(args, "quiet", False):
        logging.getLogger("pipedbn.observe.progress").setLevel(logging.WARNING)
    where = "" if rank is None else f"stage {rank}: "
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "plan":
            return cmd_plan(args)
        if args.command in ("finetune", "sample"):
            from pipedbn import finetune

            return finetune.cmd_finetune(args) if args.command == "finetune" \
                else finetune.cmd_sample(args)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "simulate":
            return simulate.run(args)
        return cmd_export(args)
    except UserError as e:
        # every rank finds the same config mistake; rank 0 alone reports it. Under torchrun the
        # others wait for rank 0 to report and the agent to stop them: exiting first would let
        # the agent stop rank 0 before it has said a word. Bounded: a rank 0 that never fails
        # this way leaves the line to this rank.
        torchrun_peer = isinstance(e, ConfigError) and bool(rank) and not getattr(
            args, "prepared", False)
        if torchrun_peer:
            time.sleep(CONFIG_ERROR_GRACE_S)
        if not (isinstance(e, ConfigError) and rank) or torchrun_peer:
            print(f"pipedbn: error: {where}{e}", file=sys.stderr)
        return e.exit_code
    except LinkError as e:  # its message names this stage and the peer it lost
        print(f"pipedbn: error: {e}", file=sys.stderr)
        return LINK_EXIT
    except Interrupted as e:
        print(f"pipedbn: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        # a stage under our launcher (or a torchrun rank but 0) says nothing: one line is
        # said for the whole run, by the launcher (or rank 0)
        if rank is None or (rank == 0 and not getattr(args, "prepared", False)):
            print("pipedbn: interrupted", file=sys.stderr)
        return 130
