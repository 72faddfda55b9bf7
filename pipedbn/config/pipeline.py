"""The ``pipeline`` section: how stages talk to each other in a distributed run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from pipedbn.config.checks import positive
from pipedbn.config.train import TrainConfig


@dataclass
class PipelineConfig:
    window: int = 4
    """Micro-batches a stage may have sent that the next stage has not yet taken; a stage that
    gets this far ahead waits (back-pressure), so memory stays bounded whatever the speeds."""
    timeout: float = 300.0
    """Seconds a stage may wait on a neighbour (a receive, a send) once the stream has begun
    before the run stops with an error naming the stage that did not answer. A stage that dies
    is noticed at once; this bounds the wait on one that hangs. Quiet links carry heartbeats,
    so a long wait for the first micro-batch (greedy schedule) is not a hang."""
    setup_timeout: float = 900.0
    """Seconds to wait for stage 0 to check the data and start the stream, and for the final
    gather of results."""
    connect_timeout: float = 60.0
    """Seconds for every process of an attempt to join the process group (store, then gloo's or
    NCCL's connections). A process that does not make it in time fails, and torchrun restarts
    the attempt (``--max-restarts``) instead of waiting on a peer that is gone."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """``torch.distributed`` backend: ``auto`` is nccl for CUDA devices and gloo otherwise."""

    def problems(self, train: TrainConfig) -> list[str]:
        """``train``: the section whose device the backend must carry (its own checks done:
        an unusable device is not checked against the backend again)."""
        p: list[str] = []
        if self.backend != "auto" and not train.device_problems():
            cuda = train.device.startswith("cuda") or (train.device == "auto"
                                                       and torch.cuda.is_available())
            if self.backend == "nccl" and not cuda:
                p.append(f"pipeline.backend: nccl sends CUDA tensors only, and train.device="
                         f"{train.device} trains on the CPU; use gloo or auto")
            elif self.backend == "gloo" and cuda:
                p.append(f"pipeline.backend: gloo cannot send CUDA tensors between stages, and "
                         f"train.device={train.device} trains on CUDA; use nccl or auto")
        if self.window < 1:
            p.append(f"pipeline.window: must be >= 1, got {self.window}")
        p += positive("pipeline.timeout", self.timeout)
        p += positive("pipeline.setup_timeout", self.setup_timeout)
        p += positive("pipeline.connect_timeout", self.connect_timeout)
        return p
