"""``pipedbn eval MODEL``: what a trained model learned, measured on its held-out data
(``eval/evaluation.py``)."""

from __future__ import annotations

import argparse

import torch

from pipedbn.errors import UserError
from pipedbn.eval.evaluation import AIS_SCHEDULES, EvalOptions, ais_progress, run_eval, table
from pipedbn.eval.likelihood import MAX_ENUMERATED
from pipedbn.run.resources import device_arg

NAME = "eval"
USAGE = "eval MODEL"
SUMMARY = "measure what a model learned (likelihood, probes)"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    ev = sub.add_parser(
        NAME, help="measure what a trained model learned (writes eval.json)",
        description="Measure what a trained model learned on its held-out data: "
                    "reconstruction, free-energy gap, pseudo- and (AIS or exact) "
                    "log-likelihood, linear probes. Writes eval.json.")
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
    ev.add_argument("--device", default="cpu",
                    help="where the likelihoods and probes are computed: cpu (the default), "
                         "cuda, cuda:N or auto (CUDA when present)")
    ev.add_argument("--seed", type=int, default=d.seed,
                    help=f"seed of AIS and the subsets (default {d.seed})")
    return ev


def run(args: argparse.Namespace) -> int:
    for name in ("ais_chains", "ais_temperatures", "probe_samples", "samples"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: give a number "
                            ">= 1")
    if args.exact_max > MAX_ENUMERATED:
        raise UserError(f"--exact-max {args.exact_max}: at most {MAX_ENUMERATED} "
                        f"(2^{MAX_ENUMERATED} states)")
    torch.set_num_threads(1)
    device = device_arg(args.device)
    opts = EvalOptions(device=str(device), ais=not args.no_ais, ais_chains=args.ais_chains,
                       ais_temperatures=args.ais_temperatures, exact_max=args.exact_max,
                       probe_samples=args.probe_samples, samples=args.samples, seed=args.seed,
                       ais_schedule=args.ais_schedule, progress=ais_progress())
    result, out = run_eval(args.model, args.config, opts, args.output)
    print(table(result))
    print(out)
    return 0
