"""The ``straggler`` section: an artificial slowdown of one layer or rank, to study balancing
on a small machine."""

from __future__ import annotations

from dataclasses import dataclass

from pipedbn.config.checks import positive


@dataclass
class StragglerConfig:
    """A stand-in for a slower device: a sleep per micro-batch, which costs no CPU."""

    layer: int | None = None
    """Slow down this layer (wherever it runs) ..."""
    rank: int | None = None
    """... or every layer on this rank (distributed runs only)."""
    sleep_s: float = 0.0
    """Seconds of sleep after each micro-batch the slowed layer handles."""
    after: int = 0
    """First micro-batch of the stream that is slowed (a device that slows down mid-run)."""

    def problems(self, layers: int) -> list[str]:
        """``layers``: how many layers the run has (``layer`` must name one)."""
        p: list[str] = []
        if self.layer is not None and not 0 <= self.layer < layers:
            p.append(f"straggler.layer: {self.layer} is not a layer index (0..{layers - 1})")
        if self.rank is not None and self.rank < 0:
            p.append(f"straggler.rank: must be >= 0, got {self.rank}")
        p += positive("straggler.sleep_s", self.sleep_s, strict=False)
        p += positive("straggler.after", self.after, strict=False)
        return p
