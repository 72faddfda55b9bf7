"""``pipedbn sample MODEL -o FILE.png``: samples of a DBN as one grid image (``sample.py``)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from pipedbn.errors import UserError
from pipedbn.model.dbn import MODEL_FILE, from_run, load
from pipedbn.observe.probe import image_shape, tile
from pipedbn.run.resources import device_arg
from pipedbn.run.rundir import atomic_write
from pipedbn.sample import configured_shape, png_bytes, start_rows

NAME = "sample"
USAGE = "sample MODEL -o FILE.png"
SUMMARY = "draw samples from the DBN as an image grid"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    sa = sub.add_parser(
        NAME, help="draw samples from a DBN and write them as a PNG grid",
        description="Draw samples from a DBN (Gibbs chains in the top RBM, then down the "
                    "stack) and write them as a grid image (PNG).")
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
    sa.add_argument("--device", default="cpu",
                    help="where the Gibbs chains run: cpu (the default), cuda, cuda:N or auto "
                         "(CUDA when present)")
    sa.add_argument("--image-shape", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="height and width of one input (needed when it is not square)")
    return sa


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    if args.n < 1:
        raise UserError(f"--n {args.n}: give a number of samples >= 1")
    if args.steps is None:
        args.steps = 1000 if args.from_noise else 20
    if args.steps < 0:
        raise UserError(f"--steps {args.steps}: give a number of Gibbs steps >= 0")
    if args.columns is not None and args.columns < 1:
        raise UserError(f"--columns {args.columns}: give a number of columns >= 1")
    out = Path(args.output)
    if out.is_dir():
        raise UserError(f"-o {out}: is a directory; give a file name such as samples.png")
    src = Path(args.run_dir)
    device = device_arg(args.device)
    dbn = from_run(src) if src.is_dir() and not (src / MODEL_FILE).is_file() else load(src)
    dbn = dbn.to(device)
    features = dbn.sizes[0]
    shape = image_shape(features, args.image_shape or configured_shape(dbn, src))
    if shape is None:
        given = (f"--image-shape {args.image_shape[0]} {args.image_shape[1]} does not match"
                 if args.image_shape else "cannot tile")
        raise UserError(f"{given} inputs of {features} features (not a square image); give "
                        "--image-shape HEIGHT WIDTH with HEIGHT x WIDTH = "
                        f"{features}")
    columns = args.columns or math.ceil(math.sqrt(args.n))
    start = None if args.from_noise else start_rows(dbn, args.n, args.seed, src)
    x = dbn.sample(args.n, args.steps, args.seed, start).cpu()
    grid = tile(x, shape, columns)
    try:
        atomic_write(out, png_bytes(grid))
    except OSError as e:
        raise UserError(f"-o {out}: cannot write ({e.strerror})") from None
    print(out)
    return 0
