"""``pipedbn plan CONFIG [--world-size N | --nodes N --ranks-per-node G]``: the plan the
balancer makes for a config on N ranks (default: the processes ``pipedbn train`` would start
here) and the threads of each rank."""

from __future__ import annotations

import argparse
import dataclasses

import torch

from pipedbn.balancer import Solution, describe, evaluate, one_per_layer, solve
from pipedbn.balancer.runtime import first_plan, problem_for, profile_layers
from pipedbn.balancer.threads import SERIAL as THREADS_SERIAL
from pipedbn.balancer.threads import describe_threads
from pipedbn.config import load_config, resolve_defaults
from pipedbn.data.loader import open_data
from pipedbn.errors import ConfigError, UserError
from pipedbn.pipeline.device import local_device
from pipedbn.run.resources import rank_threads, resolve, usable_cores
from stages import registry

NAME = "plan"
USAGE = "plan CONFIG [--world-size N | --nodes N --ranks-per-node G]"
SUMMARY = "show the balancer's plan for N ranks"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    pl = sub.add_parser(
        NAME, help="print the plan the balancer makes for a config on N ranks",
        description="Print the plan the balancer makes for a config on N ranks (which layers "
                    "each rank trains, replicas, modelled or profiled step times).")
    pl.add_argument("config", help="YAML config file (see configs/)")
    pl.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields")
    pl.add_argument("--world-size", type=int, default=None, metavar="N",
                    help="number of ranks (processes) to plan for (default: nodes x ranks per "
                         "node, else what pipedbn train would start here)")
    pl.add_argument("--nodes", type=int, metavar="N",
                    help="nodes the ranks run on (with --ranks-per-node)")
    pl.add_argument("--ranks-per-node", type=int, metavar="G",
                    help="ranks on each node, numbered node by node (default: "
                         "balancer.ranks_per_node, else one node)")
    pl.add_argument("--profile", action="store_true",
                    help="time a few real steps of every layer here instead of counting FLOPs")
    return pl


def run(args: argparse.Namespace) -> int:
    cfg = resolve_defaults(load_config(args.config, args.overrides))
    world, per_node = _world(args)
    if per_node is not None:
        cfg = dataclasses.replace(cfg, balancer=dataclasses.replace(cfg.balancer,
                                                                    ranks_per_node=per_node))
    data = open_data(cfg, unit_range=registry.get(cfg.layers[0].kind).unit_visible)
    cfg, n, choice = resolve(cfg, world, lambda: (data.features, data.batches_per_epoch))
    torch.set_num_threads(rank_threads(cfg, 0))
    if args.profile:
        times = profile_layers(cfg, data.features, local_device(cfg.train.device))
        problem = problem_for(cfg, data.features, n, costs=times)
        how = "profiled here: " + ", ".join(f"layer {i} {t * 1e3:.2f} ms"
                                            for i, t in enumerate(times))
    else:
        problem = problem_for(cfg, data.features, n)
        how = f"modelled: FLOPs at balancer.flops = {cfg.balancer.flops:.3g} per second"
    plan, _ = first_plan(cfg, data.features, n)
    if choice is not None and not args.profile:
        solution = choice.solution
        how += (f", {usable_cores()} cores, step time on t threads x "
                f"({THREADS_SERIAL} + {1 - THREADS_SERIAL:.2f}/t), each layer's work spread "
                "over the stream")
    elif cfg.balancer.plan == "auto":
        try:
            solution = solve(problem)
        except ValueError as e:
            raise ConfigError([f"balancer: {e}"]) from None
    else:
        times = evaluate(problem, plan)
        solution = Solution(plan, times, max(times))
    print(f"plan for {len(cfg.layers)} layers on {n} ranks, device {cfg.train.device} "
          f"(costs {how})")
    print(describe(solution, cfg.train.batch_size))
    if choice is not None:
        print(describe_threads(choice, cfg.train.batch_size))
    else:
        print("threads per rank: " + ", ".join(f"rank {k}: {rank_threads(cfg, k)}"
                                               for k in range(n)))
    if problem.node_size is not None and problem.node_size < n:
        nodes = -(-n // problem.node_size)
        search = ("exact search" if solution.search == "exact" else
                  "search among contiguous blocks of ranks (the exact one is too large)")
        print(f"nodes: {nodes} of {problem.node_size} ranks (rank k on node k // "
              f"{problem.node_size}); {search}")
    if n >= len(cfg.layers) and cfg.balancer.plan == "auto":
        # both priced alike: one thread per rank, each CD step on every micro-batch
        base = max(evaluate(problem, one_per_layer(len(cfg.layers), n)))
        mine = max(evaluate(problem, solution.plan))
        print(f"one rank per layer: {base:.4g} s per micro-batch; this plan is "
              f"{base / mine:.2f}x faster")
    return 0


def _world(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """(ranks or None: what train would start, ranks per node or None) from --world-size,
    --nodes and --ranks-per-node."""
    nodes, per_node, world = args.nodes, args.ranks_per_node, args.world_size
    for flag, x in (("--world-size", world), ("--nodes", nodes), ("--ranks-per-node", per_node)):
        if x is not None and x < 1:
            raise UserError(f"{flag} {x}: give a number >= 1")
    if nodes is not None and per_node is None:
        raise UserError(f"--nodes {nodes}: give --ranks-per-node G too (ranks on each node)")
    if world is None:
        return (None if nodes is None else nodes * per_node), per_node
    elif nodes is not None and nodes * per_node != world:
        raise UserError(f"--world-size {world} is not --nodes {nodes} x --ranks-per-node "
                        f"{per_node} = {nodes * per_node}; give one or make them agree")
    return world, per_node
