"""What a run records while it trains: ``metrics.jsonl`` and TensorBoard event files.

Every scalar goes to both: one JSON object per line in ``metrics.jsonl`` (step, stage = the rank
that wrote it, layer, tag, value, wall time) and, in TensorBoard, to the run of its layer:

    tb/layer-<i>/             layer i: rbm/*, pipeline/*, throughput/*, eval/*, images, histograms
    tb/layer-<i>-replica-<j>/ what replica j > 0 of a replicated layer measures on its micro-batches
    tb/run/                   the config, the plan and every re-plan (text), end-to-end throughput

Every layer uses the same tags, so TensorBoard overlays the stages. The step is the micro-batch's
index in the stream, the same on every rank. A rank that runs several layers (a grouped stage)
records its pipeline/* and throughput/* under its first layer.

TensorBoard's reader purges a tag's points past a step it meets again, and reads the event files
of a directory in name order (creation second first). Two processes write one tag of one run only
when a re-plan moves a layer between ranks; the new writer's file must then sort after the old
one's, so a writer opening a directory that holds a file from this very second waits for the next.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pipedbn.config import to_dict

TB_DIR = "tb"
METRICS_FILE = "metrics.jsonl"


def run_name(layer: int, replica: int = 0) -> str:
    """The TensorBoard run (directory under ``tb/``) of a layer, or of a replica of it."""
    if layer < 0:
        return "run"
    return f"layer-{layer}" if replica == 0 else f"layer-{layer}-replica-{replica}"


def _writer(logdir: Path, purge_step: int | None = None) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    logdir.mkdir(parents=True, exist_ok=True)
    stamps = [int(m.group(1)) for f in logdir.iterdir()
              if (m := re.match(r"events\.out\.tfevents\.(\d+)\.", f.name))]
    deadline = time.monotonic() + 2.0  # a clock ahead on another node must not stall us
    while stamps and int(time.time()) <= max(stamps) and time.monotonic() < deadline:
        time.sleep(0.05)  # see the module docstring: this file must sort after the others
    # flush often enough that a live TensorBoard follows the run (the default is 2 minutes)
    return SummaryWriter(str(logdir), max_queue=200, flush_secs=5, purge_step=purge_step)


class Metrics:
    """One rank's recorder. ``replica`` (set for each part of the run) picks the runs of
    ``tb/`` its layers' records go to."""

    def __init__(self, run_dir: Path | None, stage: int = 0, tensorboard: bool = False,
                 purge_step: int | None = None) -> None:
        self.stage = stage
        self.purge_step = purge_step
        """A resumed run: TensorBoard drops the steps from here on that an interrupted attempt
        wrote (for the writers opened before ``purge_step`` is reset at the first re-plan)."""
        self.replica = 0
        self.run_dir = run_dir
        self._f = open(run_dir / METRICS_FILE, "a", buffering=1) if run_dir else None
        self._tb = tensorboard and run_dir is not None
        self._writers: dict[str, Any] = {}
        self._next: dict[object, int] = {}
        self.seconds = 0.0
        """Time spent recording: scalars, probes, images, histograms (kept out of the
        balancer's costs)."""
        self._timing = False
        if self._tb:  # import now, not inside the first timed micro-batch
            import torch.utils.tensorboard  # noqa: F401

    # -- metrics.jsonl and TensorBoard ------------------------------------------------------
    def scalar(self, step: int, layer: int, tag: str, value: float,
               tensorboard: bool = True) -> None:
        with self.timed():
            if self._f is not None:
                rec = {"step": step, "stage": self.stage, "layer": layer, "tag": tag,
                       "value": value, "wall_time": time.time()}
                self._f.write(json.dumps(rec) + "\n")
            if tensorboard and math.isfinite(value):
                self.tb_scalar(step, layer, tag, value)

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Adds the time spent inside to ``seconds`` (once, however deeply nested)."""
        if self._timing:
            yield
            return
        self._timing, t0 = True, time.perf_counter()
        try:
            yield
        finally:
            self._timing = False
            self.seconds += time.perf_counter() - t0

    def scalars(self, step: int, layer: int, values: dict[str, float], prefix: str,
                tensorboard: bool = True) -> None:
        for tag, value in values.items():
            self.scalar(step, layer, f"{prefix}/{tag}", value, tensorboard)

    def event(self, step: int, layer: int, tag: str, data: dict[str, Any],
              text: str | None = None) -> None:
        """A decision or other event: ``data`` is kept whole under ``"data"``; ``text``, if
        given, also goes to TensorBoard (in ``tb/run``)."""
        if self._f is not None:
            rec = {"step": step, "stage": self.stage, "layer": layer, "tag": tag, "data": data,
                   "wall_time": time.time()}
            self._f.write(json.dumps(rec) + "\n")
        if text is not None and (w := self.writer(-1)) is not None:
            w.add_text(tag, text, step)

    # -- TensorBoard only -------------------------------------------------------------------
    def writer(self, layer: int) -> Any:
        """The SummaryWriter of ``layer``'s run (``-1``: ``tb/run``); None without TensorBoard."""
        if not self._tb:
            return None
        assert self.run_dir is not None
        name = run_name(layer, self.replica if layer >= 0 else 0)
        if name not in self._writers:
            self._writers[name] = _writer(self.run_dir / TB_DIR / name, self.purge_step)
        return self._writers[name]

    def tb_scalar(self, step: int, layer: int, tag: str, value: float) -> None:
        if (w := self.writer(layer)) is not None:
            w.add_scalar(tag, value, step)

    def image(self, step: int, layer: int, tag: str, image: torch.Tensor) -> None:
        """``image``: (H, W) or (3, H, W) in [0, 1]."""
        if (w := self.writer(layer)) is not None:
            img = image.detach().float().cpu().clamp(0, 1)
            w.add_image(tag, img.unsqueeze(0) if img.dim() == 2 else img, step)

    def histogram(self, step: int, layer: int, tag: str, values: torch.Tensor) -> None:
        if (w := self.writer(layer)) is not None:
            v = values.detach().float().cpu().flatten()
            v = v[v.isfinite()]  # a diverging layer is reported by its own check, not here
            with contextlib.suppress(ValueError):  # tensorboard's bins fail near float max
                if v.numel():
                    w.add_histogram(tag, v, step)

    def hparams(self, layer: int, params: dict[str, Any], results: dict[str, float]) -> None:
        """A row of TensorBoard's HParams table for ``layer``'s run; ``results`` name scalar tags
        that run already holds (their last values are the row's metrics)."""
        if (w := self.writer(layer)) is None:
            return
        from torch.utils.tensorboard.summary import hparams

        clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
                 for k, v in params.items()}
        for summary in hparams(clean, results):
            w.file_writer.add_summary(summary)

    def use(self, layers: list[int], replica: int) -> None:
        """This rank runs ``layers`` as ``replica`` from now on (a new segment). Writers of runs
        it no longer writes are closed, so that coming back later opens a new file (a layer's
        records may come from another rank meanwhile); its own runs' writers are opened now,
        not inside the first timed micro-batch."""
        self.replica = replica
        keep = {run_name(i, replica) for i in layers} | {"run"}
        for name in [n for n in self._writers if n not in keep]:
            self._writers.pop(name).close()
        for i in layers:
            self.writer(i)

    def due(self, key: object, step: int, every: int) -> bool:
        """Whether a record made every ``every`` steps is due at ``step``: the first step at or
        past each multiple (a replica sees only some steps of its layer)."""
        if step < self._next.get(key, 0):
            return False
        self._next[key] = (step // every + 1) * every
        return True

    def flush(self) -> None:
        for w in self._writers.values():
            w.flush()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        if self._f is not None:
            self._f.close()
            self._f = None


def tensorboard_on(cfg: Any) -> bool:
    return bool(cfg.monitor.enabled and cfg.monitor.tensorboard)


def flat_params(cfg: Any, layer: int) -> dict[str, Any]:
    """The hyperparameters of one layer's row in the HParams table."""
    d = to_dict(cfg)
    out: dict[str, Any] = {"seed": d["seed"], "layer": layer, "plan": d["balancer"]["plan"]}
    for section in ("train", "data"):
        for k, v in d[section].items():
            if isinstance(v, (bool, int, float, str)):
                out[f"{section}.{k}"] = v
    for k, v in d["layers"][layer].items():
        if isinstance(v, (bool, int, float, str)):
            out[f"layer.{k}"] = v
    return out
