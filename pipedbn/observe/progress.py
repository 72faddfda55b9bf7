"""The progress display: samples/s, epoch and the current bottleneck, on one rank.

The rank that runs the first replica of stage 0 reads every micro-batch of the stream, so its
count is the run's progress and its input rate the pipeline's throughput. Every rank publishes
its busy fraction (compute / wall time) to the c10d store with its pipeline records; the showing
rank reads them about once a second and names the busiest stage, the one that sets the pace.
In a single process the bottleneck is the layer that took the most time since the last refresh.

``monitor.progress``: ``bar`` (tqdm), ``log`` (a line every ``log_seconds``, for files and CI
logs) or ``auto`` (the bar on a terminal). Log lines carry the rank and stage.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from pipedbn.config import Config
from pipedbn.pipeline.schedule import Schedule

log = logging.getLogger("pipedbn.observe.progress")
log.setLevel(logging.INFO)  # shown on whichever rank runs stage 0 (cli.main quiets the others)

REFRESH_S = 1.0
_where = {"text": ""}


def set_where(text: str) -> None:
    """What this process is (``rank 2 stage 1``): the prefix of its log lines from now on."""
    _where["text"] = text


class WhereFilter(logging.Filter):
    """Gives log records the ``where`` field that ``cli.main``'s format shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.where = _where["text"]
        return True


class Progress:
    def __init__(self, cfg: Config, schedule: Schedule, kv: Any, rank: int, world: int) -> None:
        mode = cfg.monitor.progress if cfg.monitor.enabled else "off"
        if not log.isEnabledFor(logging.INFO):  # --quiet
            mode = "off"
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.schedule, self.kv, self.rank, self.world = mode, schedule, kv, rank, world
        self.every = REFRESH_S if mode == "bar" else cfg.monitor.log_seconds
        self.shown = False
        self.bar: Any = None
        self._last = 0.0
        self._window: tuple[float, int] = (0.0, 0)  # (time, samples) at the last refresh
        self._start = self._window
        self.samples = 0
        self.segment, self.replicas = 0, 1
        self._layer_s: list[float] = []

    def begin_segment(self, segment: int, stage: int, replica: int, replicas: int) -> None:
        """This rank's part of a segment; only stage 0's first replica shows progress, and
        counts its ``replicas`` peers' micro-batches as its own (they read as many)."""
        self.segment, self.replicas = segment, replicas
        name = f"stage {stage}" + (f" replica {replica}" if replica else "")
        if self.kv is not None:
            set_where(f"rank {self.rank} {name}")
        shown = self.mode != "off" and stage == 0 and replica == 0
        if self.shown and not shown:
            self.close()
        self.shown = shown
        now = time.perf_counter()
        self._last, self._window = now, (now, self.samples)
        self._start = self._window

    def publish(self, stage: int, layers: list[int], busy: float) -> None:
        """This rank's latest busy fraction, for the showing rank's bottleneck."""
        if self.kv is not None and self.mode != "off":
            self.kv.set(f"monitor/rank/{self.rank}", json.dumps(
                {"segment": self.segment, "stage": stage, "layers": layers, "busy": busy}))

    def update(self, m: int, rows: int, layer_s: list[float] | None = None) -> None:
        """Micro-batch m (``rows`` samples) has been read and trained on; ``layer_s``: the
        seconds each layer has taken so far (single process)."""
        if not self.shown:
            return
        self.samples += rows * self.replicas
        now = time.perf_counter()
        last = m + self.replicas >= self.schedule.length
        if self.bar is None and self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=self.schedule.length, initial=m, unit="mb", desc="pipedbn",
                            dynamic_ncols=True, file=sys.stderr)
        if self.bar is not None:
            self.bar.update(m + 1 - self.bar.n)
        if now - self._last < self.every and not last:
            return
        t_prev, s_prev = self._window
        if last:  # the last line: the whole segment's rate
            t_prev, s_prev = self._start
        rate = (self.samples - s_prev) / max(now - t_prev, 1e-9)
        self._last, self._window = now, (now, self.samples)
        text = (f"{rate:,.0f} samples/s, layer epochs {self._epochs(m)}, bottleneck "
                f"{self._bottleneck(layer_s)}")
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)
        else:
            log.info("micro-batch %d/%d, %s", m + 1, self.schedule.length, text)

    def _epochs(self, m: int) -> str:
        """Each layer's epochs done of its own (the stream itself is longer: its layers start
        one after another), e.g. ``2.0/2 1.5/2 1.0/2``."""
        sch, per = self.schedule, self.schedule.batches_per_epoch
        return " ".join(
            f"{min(max(m + 1 - sch.starts[i], 0), sch.steps(i)) / per:.1f}/"
            f"{sch.steps(i) / per:g}" for i in range(sch.layers))

    def _bottleneck(self, layer_s: list[float] | None) -> str:
        if layer_s is not None:
            delta = [t - (self._layer_s[i] if i < len(self._layer_s) else 0.0)
                     for i, t in enumerate(layer_s)]
            self._layer_s = list(layer_s)
            total = sum(delta)
            i = max(range(len(delta)), key=delta.__getitem__)
            return f"layer {i} ({delta[i] / total:.0%} of compute)" if total > 0 else "-"
        best: dict[str, Any] | None = None
        for r in range(self.world):
            key = f"monitor/rank/{r}"
            try:
                if not self.kv.check([key]):  # not published yet: get() would block
                    continue
                info = json.loads(self.kv.get(key))
            except Exception:  # progress is best effort; the run's own waits catch failures
                continue
            if info["segment"] != self.segment:
                continue  # idle since the last re-plan
            if best is None or info["busy"] > best["busy"]:
                best = info
        if best is None:
            return "-"
        layers = ",".join(map(str, best["layers"]))
        return f"stage {best['stage']} (layer {layers}, busy {best['busy']:.0%})"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
