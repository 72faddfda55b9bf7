"""Command line: ``pipedbn COMMAND ...``, one module per subcommand.

Each subcommand module has ``NAME``, ``USAGE`` and ``SUMMARY`` (its line of ``pipedbn --help``),
``add_parser(subparsers)`` (its arguments) and ``run(args) -> int`` (its exit status); adding one
is adding its module to ``COMMANDS``. ``main`` parses, sets up logging, dispatches, and turns
the errors of ``pipedbn/errors.py`` into one line and an exit status.

A user's mistake (bad config, missing file, bad data, unusable run directory) is printed as one
message without a traceback and exits with status 2; a run that diverges exits with status 3.
Nothing in the library imports this package.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from pipedbn import __version__
from pipedbn.cli import eval, export, finetune, plan, sample, simulate, train
from pipedbn.errors import ConfigError, Interrupted, Reported, UserError
from pipedbn.observe.progress import WhereFilter, set_where
from pipedbn.pipeline.transport import LinkError
from pipedbn.run.launch import LINK_EXIT

COMMANDS = (train, plan, export, finetune, sample, eval, simulate)
"""The subcommands, in the order ``pipedbn --help`` lists them."""

CONFIG_ERROR_GRACE_S = 20.0  # a torchrun rank but 0 waits this long for rank 0 to report



def _epilog() -> str:
    lines = "\n".join(f"  {c.USAGE:<31}{c.SUMMARY}" for c in COMMANDS)
    return (f"commands:\n{lines}\n\n"
            "`pipedbn COMMAND --help` describes each one. A user's mistake is one line and exit "
            "status 2;\ndocs/errors.md lists them. Configs: docs/config.md.")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pipedbn", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Deep belief networks whose RBM layers train at the same time, one "
                    "pipeline stage each.",
        epilog=_epilog())
    ap.add_argument("--version", action="version", version=f"pipedbn {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # overrides may come before or after options: `train c.yaml --print-config rbm.k=2`
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    rank = int(os.environ["RANK"]) if "RANK" in os.environ else None
    quiet = getattr(args, "quiet", False) or (rank is not None and rank > 0)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(WhereFilter())
    set_where("" if rank is None else f"rank {rank}")
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=[handler],
                        format="[pipedbn] %(message)s" if rank is None
                        else "[pipedbn %(where)s] %(message)s")
    if getattr(args, "quiet", False):
        logging.getLogger("pipedbn.observe.progress").setLevel(logging.WARNING)
    where = "" if rank is None else f"stage {rank}: "
    run = {c.NAME: c.run for c in COMMANDS}[args.command]
    try:
        return run(args)
    except Reported as e:  # another process says it, in one line
        return e.exit_code
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
