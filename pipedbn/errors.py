"""Errors that are the user's to fix: the CLI prints them as one message and exits with status 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (config, data, run directory, checkpoint).

    The CLI prints the message without a traceback and exits with status 2.
    """

    exit_code = 2


class ConfigError(UserError):
    """One or more problems in a config; ``problems`` lists every one as ``path: message``."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''}:\n{lines}")


class DataError(UserError):
    """Data that cannot be trained on: missing, truncated, wrong shape or dtype, out of range."""


class ModelError(UserError):
    """A model file (an export, a run's ``preprocess.pt`` or layer states) that is corrupt or was
    edited: the message names the file, the field and how to get a good one."""


class RunDirError(UserError):
    """A run directory that cannot be used (exists already, not writable, incomplete)."""


class NonFiniteError(UserError):
    """Training produced NaN or Inf; names the layer and micro-batch where it was detected.

    Exit status 3: the input was valid but training diverged (usually too high a learning rate).
    """

    exit_code = 3

    def __init__(self, layer: int, micro_batch: int, what: str, hint: str) -> None:
        self.layer = layer
        self.micro_batch = micro_batch
        super().__init__(
            f"layer {layer}: non-finite {what} at micro-batch {micro_batch}. {hint}"
        )


class Reported(Exception):
    """A rank that stops for a failure that another process reports in one line: a user's
    mistake found by a stage under the local launcher (the launcher says it, from the stage's
    record), or a lost link whose root cause is such a mistake on another rank (that rank, or
    the launcher, says it). The CLI prints nothing and exits with ``exit_code``."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"exit status {exit_code}, reported elsewhere")
        self.exit_code = exit_code


class Interrupted(Exception):
    """A run stopped by Ctrl-C or SIGTERM: not a failure. The message says where the run is and
    the command that continues it; exit status 130."""

    exit_code = 130

    def __init__(self, how: str, run_dir: object, resume: str) -> None:
        super().__init__(f"interrupted ({how}); the run directory is {run_dir}; continue it "
                         f"with: {resume}")


def resume_command(run_dir: object, nproc: int) -> str:
    """The exact command that continues the run in ``run_dir`` on ``nproc`` local processes."""
    return f"pipedbn train {run_dir}/config.yaml --resume {run_dir} --nproc {nproc}"
