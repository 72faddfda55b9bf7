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
    device: str = "cpu"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available)."""
    dtype: Literal["float32", "float64"] = "float32"
    """Floating point type of weights and activations."""
    threads: int = 1
    """Torch intra-op threads per process. Results are bit-for-bit reproducible for a given
    number of threads; 1 is the reference every placement reproduces (DESIGN §2)."""
    check_every: int = 100
    """A layer's updates between full checks that all parameters are finite (activations passed
    up are checked on every micro-batch)."""

    def problems(self) -> list[str]:
        p = positive("train.batch_size", self.batch_size)
        p += positive("train.offset_epochs", self.offset_epochs, strict=False)
        p += positive("train.check_every", self.check_every)
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
