"""Command line: ``pipedbn train CONFIG [key=value ...]`` and ``pipedbn export RUN_DIR -o FILE``.

Also ``pipedbn finetune RUN_DIR`` (a classifier from the DBN and the data's labels) and
``pipedbn sample RUN_DIR -o FILE.png`` (samples as a grid image): see ``finetune.py``.
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
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipedbn import __version__
from pipedbn.config import Config, dump_yaml, load_config, resolve_defaults
from pipedbn.errors import ConfigError, UserError
from pipedbn.launch import LINK_EXIT
from pipedbn.transport import LinkError

if TYPE_CHECKING:
    from pipedbn.checkpoint import Checkpoint
    from pipedbn.data import Data

log = logging.getLogger("pipedbn")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pipedbn", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"pipedbn {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train a DBN from a YAML config")
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

    pl = sub.add_parser("plan", help="print the plan the balancer makes for a config on N ranks")
    pl.add_argument("config", help="YAML config file (see configs/)")
    pl.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields")
    pl.add_argument("--world-size", type=int, required=True, metavar="N",
                    help="number of ranks (processes) to plan for")
    pl.add_argument("--profile", action="store_true",
                    help="time a few real steps of every layer here instead of counting FLOPs")

    ex = sub.add_parser("export", help="write a finished run's model to one safetensors file")
    ex.add_argument("run_dir", help="run directory of a finished training run")
    ex.add_argument("-o", "--output", required=True, help="output file (.safetensors)")

    ft = sub.add_parser("finetune", help="fine-tune a finished run's DBN into a classifier "
                        "with its data's labels")
    ft.add_argument("run_dir", help="run directory of a finished training run")
    ft.add_argument("--epochs", type=int, default=30, help="epochs of fine-tuning (default 30)")
    ft.add_argument("--head-epochs", type=int, default=10, metavar="N",
                    help="epochs of the softmax layer alone on frozen features first (default 10)")
    ft.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    ft.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
    ft.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                    help="sgd (momentum 0.9, the default) or adam")
    ft.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    ft.add_argument("-o", "--output", default=None,
                    help="classifier file (default RUN_DIR/classifier.pt; its figures go to "
                         "RUN_DIR/finetune.json, or beside -o FILE as FILE.json)")
    ft.add_argument("-q", "--quiet", action="store_true", help="no per-epoch figures")

    sa = sub.add_parser("sample", help="draw samples from a DBN and write them as a PNG grid")
    sa.add_argument("run_dir", help="run directory of a finished run, or an exported model")
    sa.add_argument("-o", "--output", required=True, help="output image (.png)")
    sa.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    sa.add_argument("--steps", type=int, default=1000,
                    help="Gibbs steps in the top RBM (default 1000)")
    sa.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    sa.add_argument("--columns", type=int, default=None,
                    help="tiles per row (default: a square-ish grid)")
    sa.add_argument("--image-shape", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="height and width of one input (needed when it is not square)")
    ev = sub.add_parser("eval", help="measure what a trained model learned (writes eval.json)")
    add_eval_arguments(ev)
    return ap


def add_eval_arguments(ev: argparse.ArgumentParser) -> None:
    from pipedbn.evaluation import AIS_SCHEDULES, EvalOptions

    d = EvalOptions()  # the defaults live there
    ev.add_argument("model", help="run directory, or an exported .safetensors file")
    ev.add_argument("--config", help="config giving the data (needed for an export file)")
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
    ev.add_argument("--seed", type=int, default=d.seed,
                    help=f"seed of AIS and the subsets (default {d.seed})")


def cmd_eval(args: argparse.Namespace) -> int:
    from pipedbn.evaluation import EvalOptions, ais_progress, run_eval, table

    for name in ("ais_chains", "ais_temperatures", "probe_samples"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: give a number "
                            ">= 1")
    from pipedbn.likelihood import MAX_ENUMERATED

    if args.exact_max > MAX_ENUMERATED:
        raise UserError(f"--exact-max {args.exact_max}: at most {MAX_ENUMERATED} "
                        f"(2^{MAX_ENUMERATED} states)")
    torch.set_num_threads(1)
    opts = EvalOptions(ais=not args.no_ais, ais_chains=args.ais_chains,
                       ais_temperatures=args.ais_temperatures, exact_max=args.exact_max,
                       probe_samples=args.probe_samples, seed=args.seed,
                       ais_schedule=args.ais_schedule, progress=ais_progress())
    result, out = run_eval(args.model, args.config, opts, args.output)
    print(table(result))
    print(out)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipedbn.distributed import (
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
    return train_config(cfg, default_nproc(cfg) if args.nproc is None else args.nproc,
                        args.quiet, resume)


def train_config(cfg: Config, nproc: int, quiet: bool, resume: Path | None = None) -> int:
    """Train ``cfg`` on ``nproc`` local processes (1: in this one), or continue the run in
    ``resume``; the exit status. The run directory is the last line of stdout."""
    from pipedbn.distributed import check_world, failure_record, wants_cuda
    from pipedbn.rundir import discard_run_dir, record_failure, start_run, write_root_failure

    if nproc < 1:
        raise UserError(f"--nproc {nproc}: give a number of processes >= 1")
    if nproc > 1:
        check_world(cfg, nproc, f"--nproc {nproc}")
        if wants_cuda(cfg) and torch.cuda.device_count() < nproc:
            raise UserError(f"--nproc {nproc} with train.device={cfg.train.device}: one GPU per "
                            f"process is needed and {torch.cuda.device_count()} are visible")
    ckpt = None
    if resume is not None:
        from pipedbn.resume import resume_run

        cfg, data, ckpt = resume_run(cfg, resume)
        run_dir = resume
    else:
        run_dir, data = start_run(cfg)
    if nproc > 1:
        from pipedbn.balance import first_plan

        try:  # a plan the world cannot run is reported once, here, before any process starts
            plan, _ = first_plan(cfg, data.features, nproc)
        except UserError:
            if resume is None:
                discard_run_dir(run_dir)
            raise
    log.info("data: %s; %d training and %d held-out samples, %d features",
             data.source.description, len(data.train_rows), len(data.held_rows), data.features)
    log.info("run directory: %s", run_dir)
    if nproc > 1:
        from pipedbn.launch import launch_local

        log.info("starting %d local processes; plan%s: %s", nproc,
                 " (modelled costs)" if cfg.balancer.plan == "auto" else "", plan.describe())
        return launch_local(run_dir, nproc, cfg.train.threads, quiet, resume is not None)
    try:
        _train_here(cfg, run_dir, data, ckpt, resume is not None)
    except BaseException as e:
        record_failure(run_dir, failure_record(e, 0))
        write_root_failure(run_dir)
        raise
    return 0


def default_nproc(cfg: Config) -> int:
    """Processes to start without a launcher: the ranks an explicit plan names, else one per
    layer."""
    from pipedbn.balancer import Plan

    if cfg.balancer.plan == "auto":
        return len(cfg.layers)
    plan = Plan.parse(cfg.balancer.plan, 1 << 16, len(cfg.layers))
    return max(r for st in plan.stages for r in st.ranks) + 1


def _train_here(cfg: Config, run_dir: Path, data: Data, ckpt: Checkpoint | None,
                resumed: bool) -> None:
    from pipedbn.monitor import Metrics, tensorboard_on
    from pipedbn.trainer import finish_run, summary, train_in_process

    # a resumed run's TensorBoard drops what the interrupted attempt wrote from ckpt on
    purge = (ckpt.micro_batch if ckpt is not None else 0) if resumed else None
    metrics = Metrics(run_dir, tensorboard=tensorboard_on(cfg), purge_step=purge)
    try:
        result = train_in_process(cfg, data, metrics, run_dir, ckpt)
    finally:
        metrics.close()
    finish_run(run_dir, summary(cfg, data, result))


def cmd_plan(args: argparse.Namespace) -> int:
    from pipedbn.balance import first_plan, problem_for, profile_layers
    from pipedbn.balancer import describe, evaluate, one_per_layer, solve
    from pipedbn.data import open_data
    from pipedbn.trainer import resolve_device
    from stages import registry

    cfg = resolve_defaults(load_config(args.config, args.overrides))
    if args.world_size < 1:
        raise UserError(f"--world-size {args.world_size}: give a number of ranks >= 1")
    torch.set_num_threads(cfg.train.threads)
    data = open_data(cfg, unit_range=registry.get(cfg.layers[0].kind).kind == "bernoulli")
    n = args.world_size
    if args.profile:
        times = profile_layers(cfg, data.features, resolve_device(cfg.train.device))
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
    from pipedbn.model import from_run

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
    from pipedbn.progress import WhereFilter, set_where

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(WhereFilter())
    set_where("" if rank is None else f"rank {rank}")
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=[handler],
                        format="[pipedbn] %(message)s" if rank is None
                        else "[pipedbn %(where)s] %(message)s")
    if getattr(args, "quiet", False):
        logging.getLogger("pipedbn.progress").setLevel(logging.WARNING)
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
        return cmd_export(args)
    except UserError as e:
        # every rank finds the same config mistake; rank 0 alone reports it
        if not (isinstance(e, ConfigError) and rank):
            print(f"pipedbn: error: {where}{e}", file=sys.stderr)
        return e.exit_code
    except LinkError as e:  # its message names this stage and the peer it lost
        print(f"pipedbn: error: {e}", file=sys.stderr)
        return LINK_EXIT
    except KeyboardInterrupt:
        print("pipedbn: interrupted", file=sys.stderr)
        return 130
