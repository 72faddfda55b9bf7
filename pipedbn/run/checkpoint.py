"""Checkpoints: every layer's whole training state after micro-batch ``c``, and resume.

A checkpoint is a *consistent cut* of the stream (DESIGN §7): layer i's part is its state after
every micro-batch ``m < c`` that reaches it, and the data position of ``c`` follows from the
schedule. Activations in flight are not saved: a resumed run reads micro-batch ``c`` again and
recomputes them, so no stage waits for the pipeline to drain. On disk::

    checkpoints/step-<c>/layer-<i>.pt     torch.save of the state (loads with weights_only=True)
    checkpoints/step-<c>/layer-<i>.json   its SHA-256, size, micro-batch, config digest and
                                          the wall time (time.time()) it was written
    checkpoints/step-<c>/MANIFEST.json    every part's checksum and the data position
    checkpoints/final/...                 the same for the end of the stream (c = its length)

Each part is written by the rank that owns the layer, atomically (temp file + rename), the
``.pt`` before its ``.json``: a part counts only once its ``.json`` exists, and a checkpoint
counts only when every layer's part does (a kill during a write leaves it incomplete, and it is
ignored). Rank 0 alone writes manifests and deletes old checkpoints: it keeps the newest
``checkpoint.keep`` complete ones, and drops incomplete ones older than the newest complete one
(their writers have moved on). Loading verifies every checksum: a flipped byte in a ``torch.save``
file would otherwise load silently with wrong weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipedbn.config import Config, to_dict
from pipedbn.errors import UserError
from pipedbn.run.rundir import atomic_write

CHECKPOINTS = "checkpoints"
MANIFEST = "MANIFEST.json"
FINAL = "final"


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed from: corrupt, or from another config."""


def boundaries(every: int, length: int) -> list[int]:
    """The micro-batches ``c`` (0 < c < length) at which checkpoints are taken."""
    return list(range(every, length, every)) if every > 0 else []


def tag_of(c: int, length: int) -> str:
    return FINAL if c == length else f"step-{c}"


def part_path(run_dir: Path, tag: str, layer: int) -> Path:
    return run_dir / CHECKPOINTS / tag / f"layer-{layer}.pt"


def config_digest(cfg: Config) -> str:
    """A digest of the fields that decide the weights (see ``incompatible``)."""
    text = json.dumps(_training_fields(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_position(cfg: Config, c: int, schedule: Any) -> dict[str, int]:
    """Where micro-batch ``c`` starts in the data, independent of the world size."""
    if c >= schedule.length:
        return {"seed": cfg.seed, "epoch": -1, "sample": 0, "micro_batch": c}
    epoch, j = schedule.data_position(c)
    return {"seed": cfg.seed, "epoch": epoch, "sample": j * cfg.train.batch_size,
            "micro_batch": c}


def save_part(run_dir: Path, tag: str, c: int, layer: int, state: dict[str, Any],
              digest: str) -> None:
    """Write layer ``layer``'s part of checkpoint ``tag``: the state, then its checksum."""
    buf = io.BytesIO()
    torch.save(state, buf)
    blob = buf.getvalue()
    path = part_path(run_dir, tag, layer)
    atomic_write(path, blob)
    meta = {"layer": layer, "micro_batch": c, "sha256": hashlib.sha256(blob).hexdigest(),
            "bytes": len(blob), "config": digest, "wall_time": time.time()}
    atomic_write(path.with_suffix(".json"), (json.dumps(meta) + "\n").encode())


@dataclass
class Checkpoint:
    """A complete checkpoint on disk."""

    tag: str
    micro_batch: int
    parts: dict[int, dict[str, Any]]  # layer -> its .json

    def load(self, run_dir: Path, layer: int) -> dict[str, Any]:
        """Layer ``layer``'s state, its checksum verified."""
        path = part_path(run_dir, self.tag, layer)
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
        if hashlib.sha256(blob).hexdigest() != self.parts[layer]["sha256"]:
            raise CheckpointError(
                f"{path}: checksum mismatch, the file is corrupt (it changed after it was "
                f"written); move {path.parent} away to resume from the checkpoint before it")
        try:
            state: dict[str, Any] = torch.load(io.BytesIO(blob), map_location="cpu",
                                               weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path}: unreadable ({e})") from None
        return state

    def verify(self, run_dir: Path) -> None:
        for layer in self.parts:
            self.load(run_dir, layer)


def _parts(run_dir: Path, tag: str, layers: int) -> dict[int, dict[str, Any]] | None:
    """The parts of ``tag`` if every layer's is complete, else None."""
    out = {}
    for i in range(layers):
        meta = part_path(run_dir, tag, i).with_suffix(".json")
        try:
            out[i] = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
    return out


def _tags(run_dir: Path) -> list[tuple[int, str]]:
    """(micro-batch, tag) of every step directory, oldest first (``final`` excluded)."""
    out = []
    with contextlib.suppress(OSError):
        for d in (run_dir / CHECKPOINTS).iterdir():
            if (m := re.fullmatch(r"step-(\d+)", d.name)) and d.is_dir():
                out.append((int(m.group(1)), d.name))
    return sorted(out)


def complete(run_dir: Path, layers: int, length: int) -> list[Checkpoint]:
    """Every complete checkpoint, oldest first (the final state last, if it is complete)."""
    found = []
    for c, tag in _tags(run_dir) + [(length, FINAL)]:
        parts = _parts(run_dir, tag, layers)
        if parts is not None:
            found.append(Checkpoint(tag, c, parts))
    return found


def latest(run_dir: Path, cfg: Config, layers: int, length: int, verify: bool = True
           ) -> Checkpoint | None:
    """The newest complete checkpoint, its config checked and (``verify``) its checksums."""
    found = complete(run_dir, layers, length)
    if not found:
        return None
    ckpt = found[-1]
    digest = config_digest(cfg)
    for i, meta in ckpt.parts.items():
        if meta.get("config") != digest:
            raise CheckpointError(
                f"{part_path(run_dir, ckpt.tag, i)}: written by a run with other training "
                "settings than this config's (compare with the run's config.yaml)")
    if verify:
        ckpt.verify(run_dir)
    return ckpt


def finalize(run_dir: Path | None, cfg: Config, layers: int, length: int, schedule: Any
             ) -> None:
    """Rank 0: write the manifest of every complete checkpoint that lacks one, then keep the
    newest ``checkpoint.keep``. Cheap when there is nothing to do (a few stat calls)."""
    if run_dir is None:
        return
    found = complete(run_dir, layers, length)
    for ckpt in found:
        path = run_dir / CHECKPOINTS / ckpt.tag / MANIFEST
        if not path.exists():
            manifest = {"micro_batch": ckpt.micro_batch,
                        "data": data_position(cfg, ckpt.micro_batch, schedule),
                        "config": config_digest(cfg),
                        "layers": {str(i): {"file": f"layer-{i}.pt", "sha256": m["sha256"],
                                            "bytes": m["bytes"]}
                                   for i, m in ckpt.parts.items()}}
            atomic_write(path, (json.dumps(manifest, indent=1) + "\n").encode())
    steps = [ck for ck in found if ck.tag != FINAL]
    if not steps:
        return
    newest = steps[-1].micro_batch
    keep = {ck.tag for ck in steps[-cfg.checkpoint.keep:]}
    for c, tag in _tags(run_dir):
        if tag not in keep and c <= newest:
            shutil.rmtree(run_dir / CHECKPOINTS / tag, ignore_errors=True)


def discard_after(run_dir: Path, c: int) -> None:
    """Remove step directories past ``c`` (a resumed run writes them again)."""
    for step, tag in _tags(run_dir):
        if step > c:
            shutil.rmtree(run_dir / CHECKPOINTS / tag, ignore_errors=True)


_IGNORED = {
    "pipeline": None, "balancer": None, "monitor": None, "straggler": None, "checkpoint": None,
    "run": None, "rbm": None,  # rbm: its effect is in the resolved layers
    "train": {"device", "threads", "check_every"}, "data": {"prefetch"},
}


def _training_fields(cfg: Config) -> dict[str, Any]:
    """The fields that decide the weights of a plan without replicas."""
    d = to_dict(cfg)
    out = {}
    for section, value in d.items():
        if section in _IGNORED and _IGNORED[section] is None:
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in (_IGNORED.get(section) or ())}
        out[section] = value
    return out


def incompatible(old: Config, new: Config) -> list[str]:
    """``field: value in the run -> value now`` for every training field that differs."""
    a, b = _training_fields(old), _training_fields(new)
    out: list[str] = []

    def walk(x: Any, y: Any, where: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in list(x) + [k for k in y if k not in x]:
                walk(x.get(k), y.get(k), f"{where}.{k}" if where else str(k))
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                walk(u, v, f"{where}.{i}")
        elif x != y:
            out.append(f"{where}: {x!r} in the run, {y!r} now")

    walk(a, b, "")
    return out


class Saver:
    """One rank's checkpoint writer: the boundaries still to save for its layers.

    The stage copies a layer's state at once (training goes on changing it) and a background
    thread serialises, checksums and writes it (``fsync`` included), in order, with rank 0's
    manifests after its own parts: the stage pays for the copy, not for the disk. A write's
    error is raised in the stage at its next save or at ``close``, which waits for them all;
    a kill meanwhile leaves an incomplete checkpoint, which is ignored as before."""

    def __init__(self, run_dir: Path | None, cfg: Config, schedule: Any, begin: int,
                 finalizer: bool = False, background: bool = True) -> None:
        """``finalizer``: this is rank 0, which also writes manifests and prunes;
        ``background=False``: write in the caller's thread (``tools/bench_checkpoint.py``)."""
        self.run_dir, self.schedule, self.cfg, self.finalizer = run_dir, schedule, cfg, finalizer
        self.background = background
        every = cfg.checkpoint.every
        self.points = [c for c in boundaries(every, schedule.length) if c > begin]
        self.digest = config_digest(cfg)
        self.seconds = 0.0
        """Time the stage spent on checkpoints: copies, and waits for the writer in ``close``."""
        self._writer: ThreadPoolExecutor | None = None
        self._pending: deque[Future[None]] = deque()

    def save_upto(self, layers: list[Any], upto: int) -> None:
        """Save every pending boundary ``c <= upto``: the caller guarantees that the layers have
        handled every micro-batch before ``c`` that reaches them, and none at or after it."""
        saved = False
        while self.points and self.points[0] <= upto:
            c = self.points.pop(0)
            for layer in layers:
                self.save(layer, c)
            saved = True
        if saved and self.finalizer and self.run_dir is not None:
            self._submit(finalize, self.run_dir, self.cfg, self.schedule.layers,
                         self.schedule.length, self.schedule)

    def save(self, layer: Any, c: int) -> None:
        """Layer ``layer``'s part of the checkpoint at ``c`` (``c = length``: the final state).
        A non-finite layer raises instead: the last good checkpoint stays the newest."""
        if self.run_dir is None:
            return
        t0 = time.perf_counter()
        layer.check_parameters(c)
        i, s = layer.index, self.schedule
        state = layer.state_dict()
        state["step"] = torch.tensor(max(0, min(c, s.ends[i]) - s.starts[i]), dtype=torch.int64)
        state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        self._submit(save_part, self.run_dir, tag_of(c, s.length), c, i, state, self.digest)
        self.seconds += time.perf_counter() - t0

    def _submit(self, fn: Any, *args: Any) -> None:
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()  # a failed write raises here, in the stage
        if not self.background:
            fn(*args)
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="pipedbn-checkpoint")
        self._pending.append(self._writer.submit(fn, *args))

    def close(self) -> None:
        """Wait for every write; raise the first one's error, if one failed."""
        t0 = time.perf_counter()
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True, cancel_futures=True)
                self._writer = None
            self._pending.clear()
            self.seconds += time.perf_counter() - t0
