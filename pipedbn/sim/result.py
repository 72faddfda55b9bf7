"""What a simulation reports: per-rank timings as the runner's, the run's rate and its
bottleneck."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class RankResult:
    stage: int
    replica: int
    rank: int
    micro_batches: int = 0
    samples: int = 0
    compute_s: float = 0.0
    """Layers' work and delays, as the runner's ``compute_s``."""
    recv_wait_s: float = 0.0
    """Waiting for the next micro-batch after the first one."""
    send_wait_s: float = 0.0
    """Waiting for a place in the window, and for the last messages to be taken."""
    sync_wait_s: float = 0.0
    """Time at the ticks and at the final exchange of updates."""
    began: float = math.nan
    ended: float = math.nan

    @property
    def active_s(self) -> float:
        return self.ended - self.began if self.micro_batches else 0.0

    @property
    def busy_frac(self) -> float:
        return self.compute_s / self.active_s if self.active_s > 0 else 0.0


@dataclass
class SimResult:
    seconds: float
    """Whole run: from the first read to the last rank's end."""
    samples: int
    """Samples read by stage 0 (every micro-batch some layer trains on)."""
    ranks: list[RankResult]
    bottleneck: int
    """The stage whose replicas spend the largest share of their active time computing or
    syncing (the one that never waits on its neighbours)."""
    limit: str
    """What holds the bottleneck back: ``compute``, ``sync`` or ``link`` (no stage is more than
    80% busy: the stages wait on messages)."""
    plan: str = ""
    """The plan's spec, when known."""

    @property
    def samples_per_s(self) -> float:
        """As ``throughput/end_to_end_samples_per_s``: samples read over the whole run."""
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def stage(self, s: int) -> list[RankResult]:
        return [r for r in self.ranks if r.stage == s]

    def describe(self) -> str:
        lines = [f"{'stage.replica':>13} {'rank':>4} {'batches':>7} {'busy':>6} {'recv wait':>9} "
                 f"{'send wait':>9} {'sync':>7}"]
        for r in self.ranks:
            lines.append(f"{f'{r.stage}.{r.replica}':>13} {r.rank:>4} {r.micro_batches:>7} "
                         f"{r.busy_frac:>6.1%} {r.recv_wait_s:>9.3f} {r.send_wait_s:>9.3f} "
                         f"{r.sync_wait_s:>7.3f}")
        lines.append(f"{self.samples:,} samples in {self.seconds:.3f} s: "
                     f"{self.samples_per_s:,.0f} samples/s; bottleneck stage {self.bottleneck} "
                     f"({self.limit})")
        return "\n".join(lines)


def summarise(results: list[RankResult], stages: int, seconds: float, samples: int
              ) -> SimResult:
    """The run's result, with the bottleneck stage and what limits it."""

    def share(s: int, what: str) -> float:
        rs = [r for r in results if r.stage == s and r.active_s > 0]
        if not rs:
            return 0.0
        if what == "sync":
            return sum(min(r.sync_wait_s, r.active_s) / r.active_s for r in rs) / len(rs)
        return sum(r.busy_frac for r in rs) / len(rs)

    load = [share(s, "compute") + share(s, "sync") for s in range(stages)]
    b = max(range(stages), key=lambda s: load[s])
    limit = ("link" if load[b] < 0.8 else
             "sync" if share(b, "sync") > share(b, "compute") else "compute")
    return SimResult(seconds, samples, results, b, limit)
