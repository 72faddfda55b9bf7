"""Which layer trains on which micro-batch: the ``streaming`` and ``greedy`` schedules.

The data stream is a sequence of micro-batches ``m = 0, 1, ...``. Layer ``i`` trains on the
micro-batches of its window ``[start_i, end_i)`` and is frozen outside it. A micro-batch goes up
to the highest layer that trains on it (its ``top``); every layer below the top passes it on
(training on it if inside its own window, forwarding with frozen weights otherwise), and no layer
above the top sees it. A micro-batch that no layer trains on is never read.

- ``streaming``: ``start_i = i * offset`` (``offset = round(offset_epochs * M)``), so layer i
  begins once the layers below have had ``offset`` updates each; all layers then train at once.
  Micro-batch m is batch ``m mod M`` of data epoch ``m // M``.
- ``greedy``: layer i's window starts where layer i-1's ends. Within each layer's phase, data
  epochs count from 0 again, so each layer sees the same sequence of epochs as it would alone.

``M`` is the number of micro-batches per epoch and layer i's window holds
``max(1, round(epochs_i * M))`` micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    kind: str
    batches_per_epoch: int
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @property
    def layers(self) -> int:
        return len(self.starts)

    @property
    def length(self) -> int:
        """Micro-batches in the whole stream."""
        return max(self.ends)

    def steps(self, layer: int) -> int:
        """Updates layer ``layer`` makes over the run."""
        return self.ends[layer] - self.starts[layer]

    def trains(self, layer: int, m: int) -> bool:
        return self.starts[layer] <= m < self.ends[layer]

    def top(self, m: int) -> int:
        """The highest layer that trains on micro-batch m, or -1 if none does."""
        for i in range(self.layers - 1, -1, -1):
            if self.trains(i, m):
                return i
        return -1

    def data_position(self, m: int) -> tuple[int, int]:
        """(data epoch, batch within the epoch) of micro-batch m."""
        base = 0
        if self.kind == "greedy":
            base = max(s for s in self.starts if s <= m)
        return divmod(m - base, self.batches_per_epoch)

    def micro_batches(self, layer: int = 0, begin: int = 0) -> list[int]:
        """The micro-batches that reach ``layer`` (layer 0: those read from data), in order."""
        return [m for m in range(begin, self.length) if self.top(m) >= layer]

    def describe(self) -> str:
        rows = [f"{self.kind} schedule, {self.batches_per_epoch} micro-batches per epoch, "
                f"{self.length} in the stream"]
        for i, (s, e) in enumerate(zip(self.starts, self.ends, strict=True)):
            rows.append(f"  layer {i}: trains on micro-batches [{s}, {e}) = {e - s} updates")
        return "\n".join(rows)


def build_schedule(
    kind: str, batches_per_epoch: int, epochs: list[float], offset_epochs: float
) -> Schedule:
    m = batches_per_epoch
    assert m >= 1 and epochs
    lengths = [max(1, round(e * m)) for e in epochs]
    starts: list[int] = []
    if kind == "streaming":
        offset = round(offset_epochs * m)
        starts = [i * offset for i in range(len(epochs))]
    elif kind == "greedy":
        at = 0
        for n in lengths:
            starts.append(at)
            at += n
    else:
        raise ValueError(f"unknown schedule {kind!r}")
    ends = [s + n for s, n in zip(starts, lengths, strict=True)]
    return Schedule(kind, m, tuple(starts), tuple(ends))
