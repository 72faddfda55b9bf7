"""``pipedbn simulate``: predict a config's samples/s on a plan without running it
(``pipedbn.sim``, docs/simulate.md)."""

from __future__ import annotations

import argparse

from pipedbn.errors import UserError
from pipedbn.sim import (
    Link,
    Machine,
    SimResult,
    StepTimes,
    data_shape,
    flops_step_s,
    from_config,
    load,
    plan_world,
)

NAME = "simulate"
USAGE = "simulate CONFIG --step-ms A,B"
SUMMARY = "predict a plan's samples/s without running it"
DESCRIPTION = ("Predict what a config does on a plan before it runs: a discrete-event "
               "simulation of the streaming pipeline, its links and its replicas, from "
               "per-layer step times (measured, --step-ms, or modelled, --flops). Prints each "
               "rank's busy fraction and waits, the samples/s and the bottleneck stage.")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    sp = subparsers.add_parser(NAME, help="predict a config's samples/s on a plan",
                               description=DESCRIPTION)
    sp.add_argument("config", help="YAML config file (see configs/)")
    sp.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields")
    sp.add_argument("--plan", help="plan spec (default: balancer.plan)")
    sp.add_argument("--world", type=int, help="ranks (default: the plan's, one per layer for "
                                              "auto)")
    times = sp.add_mutually_exclusive_group(required=True)
    times.add_argument("--step-ms", metavar="A,B,...",
                       help="each layer's CD step in ms, comma-separated")
    times.add_argument("--flops", type=float, metavar="F",
                       help="step times from cd_flops at F FLOP/s")
    sp.add_argument("--latency", type=float, default=1e-4, help="s per message (default 1e-4)")
    sp.add_argument("--bandwidth", type=float, default=1e9, help="bytes/s (default 1e9)")
    sp.add_argument("--cores", type=float,
                    help="host cores the ranks share (default: a device each)")
    return sp


def run(args: argparse.Namespace) -> int:
    try:
        result = predict(args)
    except ValueError as e:  # a plan, a count of step times or an option the model refuses
        raise UserError(str(e)) from None
    print(result.describe())
    return 0


def predict(args: argparse.Namespace) -> SimResult:
    cfg = load(args.config, args.overrides)
    features, per_epoch, rows = data_shape(cfg)
    if args.step_ms is not None:
        try:
            step = [float(x) / 1e3 for x in args.step_ms.split(",")]
        except ValueError:
            raise UserError(f"--step-ms {args.step_ms}: give one number of milliseconds per "
                            "layer, comma-separated (--step-ms 3.9,2.6,10.4)") from None
    else:
        if not args.flops > 0:
            raise UserError(f"--flops {args.flops:g}: give a rate > 0 (--flops 3e10)")
        step = flops_step_s(cfg, features, args.flops)
    spec = args.plan or cfg.balancer.plan
    world = plan_world(cfg, spec) if args.world is None else args.world
    machine = Machine(Link(args.latency, args.bandwidth), cores=args.cores)
    return from_config(cfg, spec, world, StepTimes(step), machine, (features, per_epoch, rows))
