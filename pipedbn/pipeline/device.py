"""Where a rank trains and how its stages talk: the one place that decides CUDA or CPU.

``train.device`` is ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when torch sees a GPU);
``pipeline.backend`` is ``gloo``, ``nccl`` or ``auto`` (NCCL on CUDA, gloo on the CPU). A rank of
a distributed run takes the GPU of its ``LOCAL_RANK``; a run in one process takes the device as
written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipedbn.errors import UserError


def wants_cuda(device: str) -> bool:
    """Whether ``train.device`` (as written in the config) trains on CUDA here."""
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def gpus() -> int:
    return torch.cuda.device_count()


@dataclass(frozen=True)
class Placement:
    device: torch.device
    backend: str
    """The process group's backend (``gloo`` or ``nccl``)."""


def local_device(device: str) -> torch.device:
    """The device of a run in this process (and of ``pipedbn plan --profile``)."""
    if device == "auto":
        return torch.device("cuda" if wants_cuda(device) else "cpu")
    return torch.device(device)


def placement(device: str, backend: str, local_rank: int) -> Placement:
    """A distributed rank's device and the process group backend; selects the rank's GPU."""
    cuda = wants_cuda(device)
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if not cuda:
        if backend == "nccl":
            raise UserError("pipeline.backend: nccl needs train.device=cuda")
        return Placement(torch.device("cpu"), backend)
    if backend == "gloo":
        raise UserError("pipeline.backend: gloo cannot send CUDA tensors between stages; use "
                        "nccl (or auto) with train.device=cuda")
    if local_rank >= gpus():
        # only some ranks get here: a plain UserError, which every rank prints
        raise UserError(f"train.device: {device}, but local rank {local_rank} has no GPU of "
                        f"its own ({gpus()} visible): start at most one process per GPU on "
                        "each node")
    torch.cuda.set_device(local_rank)
    return Placement(torch.device("cuda", local_rank), backend)

