"""The ``run`` and ``checkpoint`` sections: where the run directory goes, and how often the
training state in it is saved."""

from __future__ import annotations

from dataclasses import dataclass

from pipedbn.config.checks import positive


@dataclass
class CheckpointConfig:
    """Checkpoints: each layer's whole training state after micro-batch ``m``, and resume."""

    every: int = 250
    """Micro-batches of the stream between checkpoints (0: only the final state). A checkpoint
    is a consistent cut: no pipeline flush, activations in flight are recomputed on resume."""
    keep: int = 3
    """Complete checkpoints kept (older ones are deleted; the final state is always kept)."""

    def problems(self) -> list[str]:
        return (positive("checkpoint.every", self.every, strict=False)
                + positive("checkpoint.keep", self.keep))


@dataclass
class RunConfig:
    name: str = "dbn"
    """Experiment name: the run directory is ``<out>/<name>/<timestamp>/``. One directory
    name (no ``/``, not ``.`` or ``..``)."""
    out: str = "runs"
    """Parent directory of run directories."""
    dir: str | None = None
    """Exact run directory (overrides ``out``/``name``/timestamp). Must not exist or be empty."""

    def problems(self) -> list[str]:
        if (why := _bad_run_name(self.name)) is None:
            return []
        return [f"run.name: {self.name!r} {why}; give one directory name such as "
                "'mnist-500x500' (run.dir names any path)"]


def _bad_run_name(name: str) -> str | None:
    """Why ``name`` cannot be one directory inside ``run.out`` (None: it can): the run
    directory is ``run.out/name/<timestamp>``, and torchrun restarts find it again through a
    one-line pointer file beside it."""
    if not name:
        return "is empty"
    if name in (".", ".."):
        return "names run.out itself or its parent, not a directory in it"
    if "/" in name or "\\" in name:
        return "holds a path separator"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "holds a control character"
    if name != name.strip():
        return "starts or ends with white space"
    if len(name.encode()) > 200:
        return f"is {len(name.encode())} bytes long (at most 200)"
    return None
