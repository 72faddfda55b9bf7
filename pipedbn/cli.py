"""Command line: ``pipedbn train CONFIG [key=value ...]`` and ``pipedbn export RUN_DIR -o FILE``.

A user's mistake (bad config, missing file, bad data, unusable run directory) is printed as one
message without a traceback and exits with status 2; a run that diverges exits with status 3.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from pipedbn import __version__
from pipedbn.config import Config, dump_yaml, load_config, resolve_defaults
from pipedbn.errors import ConfigError, UserError

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

    ex = sub.add_parser("export", help="write a finished run's model to one safetensors file")
    ex.add_argument("run_dir", help="run directory of a finished training run")
    ex.add_argument("-o", "--output", required=True, help="output file (.safetensors)")
    return ap


def _data_checks(cfg: Config, features: int) -> None:
    problems = []
    first = cfg.layers[0]
    if first.visible is not None and first.visible != features:
        problems.append(f"layers.0.visible: {first.visible}, but the data has {features} "
                        "features per sample (remove it or fix the data)")
    if problems:
        raise ConfigError(problems)


def cmd_train(args: argparse.Namespace) -> int:
    from pipedbn.data import open_data
    from pipedbn.model import MODEL_FILE, PREPROCESS_FILE, from_run
    from pipedbn.rundir import (
        Metrics,
        atomic_write,
        check_run_dir,
        choose_run_dir,
        claim_run_dir,
        layer_state_path,
        save_tensors,
        write_config,
    )
    from pipedbn.trainer import summary, train_in_process
    from stages import registry

    cfg = resolve_defaults(load_config(args.config, args.overrides))
    if args.print_config:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    torch.set_num_threads(cfg.train.threads)
    run_dir = choose_run_dir(cfg)
    check_run_dir(run_dir)
    unit_range = registry.get(cfg.layers[0].kind).kind == "bernoulli"
    data = open_data(cfg, unit_range=unit_range)
    _data_checks(cfg, data.features)
    log.info("data: %s; %d training and %d held-out samples, %d features",
             data.source.description, len(data.train_rows), len(data.held_rows), data.features)

    run_dir = claim_run_dir(cfg)
    cfg.run.dir = str(run_dir)
    write_config(run_dir, cfg)
    save_tensors(run_dir / PREPROCESS_FILE, data.preprocessing())
    log.info("run directory: %s", run_dir)
    metrics = Metrics(run_dir)
    try:
        result = train_in_process(cfg, data, metrics)
    finally:
        metrics.close()
    for layer in result.layers:
        save_tensors(layer_state_path(run_dir, layer.index), layer.state_dict())
    from_run(run_dir).save(run_dir / MODEL_FILE)
    text = summary(cfg, data, result)
    atomic_write(run_dir / "summary.txt", (text + "\n").encode())
    print(text, file=sys.stderr)
    print(run_dir)
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
    if args.command == "train" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="[pipedbn] %(message)s", stream=sys.stderr,
    )
    try:
        if args.command == "train":
            return cmd_train(args)
        return cmd_export(args)
    except UserError as e:
        print(f"pipedbn: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("pipedbn: interrupted", file=sys.stderr)
        return 130
