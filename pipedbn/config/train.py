"""The ``train`` section: schedule, micro-batches, device, number type and threads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from pipedbn.config.checks import positive


@dataclass
class TrainConfig:
    schedule: Literal["streaming", "greedy"] = "streaming"
    """``streaming``: all layers train on the stream at once, layer i from micro-batch
    ``i * offset``; ``greedy``: layer i trains for its epochs with the layers below frozen."""
    batch_size: int = 100
    """Samples per micro-batch."""
    offset_epochs: float = 1.0
    """Streaming only: epochs of the stream between the start of layer i and of layer i+1."""
    device: str = "auto"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``: CUDA when torch sees a GPU, else the CPU; a
    run writes the device it chose into its ``config.yaml``."""
    dtype: Literal["float32", "float64"] = "float32"
    """Floating point type of weights and activations."""
    threads: int | list[int] | Literal["auto"] = "auto"
    """Torch intra-op threads per process. ``auto``: the balancer chooses the processes and
    each one's threads for the cores this process may use (docs/balancer.md) and the run
    writes them into its ``config.yaml`` as a list, one number per process (a list starts
    that many processes). A number: every process's threads, one process per layer unless
    ``--nproc`` says otherwise. Results are bit-for-bit reproducible for given threads per
    layer; 1 is the reference every placement reproduces (DESIGN §2)."""
    check_every: int = 100
    """A layer's updates between full checks that all parameters are finite (activations passed
    up are checked on every micro-batch)."""

    def problems(self) -> list[str]:
        p = positive("train.batch_size", self.batch_size)
        p += positive("train.offset_epochs", self.offset_epochs, strict=False)
        p += positive("train.check_every", self.check_every)
        if isinstance(self.threads, list):
            p += [] if self.threads else ["train.threads: an empty list; give one number per "
                                          "process, a single number, or auto"]
            for i, t in enumerate(self.threads):
                p += positive(f"train.threads.{i}", t)
        elif self.threads != "auto":
            p += positive("train.threads", self.threads)
        return p + self.device_problems()

    def device_problems(self) -> list[str]:
        """Whether ``device`` names a device this torch has (none: it does)."""
        if self.device in ("cpu", "auto"):
            return []
        try:
            dev = torch.device(self.device)
            if dev.type != "cuda":
                raise RuntimeError
        except RuntimeError:
            return [f"train.device: {self.device!r} is not cpu, cuda, cuda:N or auto"]
        if not torch.cuda.is_available():
            return [f"train.device: {self.device!r} but this torch sees no CUDA device; "
                    "use cpu or auto"]
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return [f"train.device: {self.device!r} but only {torch.cuda.device_count()} "
                    "CUDA devices are visible"]
        return []
