"""``pipedbn export RUN_DIR -o FILE``: a finished run's model as one safetensors file."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipedbn.errors import UserError
from pipedbn.model.dbn import from_run

NAME = "export"
USAGE = "export RUN_DIR -o FILE"
SUMMARY = "write a finished run's model to one .safetensors file"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    ex = sub.add_parser(
        NAME, help="write a finished run's model to one safetensors file",
        description="Write a finished run's model to one safetensors file (weights, "
                    "preprocessing and the run's config); pipedbn.load reads it.")
    ex.add_argument("run_dir", help="run directory of a finished training run")
    ex.add_argument("-o", "--output", required=True, help="output file (.safetensors)")
    return ex


def run(args: argparse.Namespace) -> int:
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
