"""The ``rbm`` and ``layers`` sections: one RBM layer's training settings and their checks.

``rbm`` holds the settings shared by all layers; an entry of ``layers`` may override any of them
for one layer (``layer_entries`` merges the two). The layer kind is looked up in the ``stages``
registry, the one place pipedbn reaches the layer kinds.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pipedbn.config.build import coerce
from pipedbn.config.checks import positive
from stages import registry


@dataclass
class RBMConfig:
    kind: str = "bernoulli"
    """Layer kind from the ``stages`` registry: ``bernoulli``, ``gaussian`` (real-valued
    visible units with unit variance; first layer only, on standardised data) or
    ``gaussian-var`` (the same with a learned variance per visible unit, bounded to
    [0.01, 10]); ``bernoulli-nrelu`` / ``gaussian-nrelu``: those visible units under noisy
    rectified hidden units (docs/training.md)."""
    method: Literal["cd", "pcd", "pt"] = "cd"
    """Contrastive divergence (``cd``), persistent CD (``pcd``) or parallel tempering (``pt``:
    persistent chains at ``pt_temperatures`` temperatures; bernoulli layers)."""
    k: int = 1
    """Gibbs steps per update (CD-k / PCD-k)."""
    epochs: float = 10.0
    """Epochs of the data stream this layer trains for (fractions allowed)."""
    lr: float | None = None
    """Learning rate on batch-mean gradients. Default: the kind's (0.1 bernoulli, 0.01 gaussian
    and gaussian-var)."""
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
    """Persistent chains for ``pcd`` (default: ``train.batch_size``); for ``pt``, per
    temperature."""
    centering: bool = False
    """Centred gradients with moving offsets (Melchior, Fischer & Wiskott 2016; any kind and
    method)."""
    centering_rate: float = 0.01
    """How fast the centering offsets follow the batch means (their moving average's step)."""
    pt_temperatures: int = 8
    """Temperatures of ``pt`` (inverse temperatures evenly spaced from 1 to 0), >= 2."""


@dataclass
class LayerConfig(RBMConfig):
    hidden: int = 0
    """Hidden units of this layer (its visible size is the previous layer's hidden size)."""
    visible: int | None = None
    """Optional: visible units, checked against the data's dimension or the layer below."""
    labels: int | None = None
    """Top layer only: K softmax label units joined to its visible units (the ``label`` kind,
    Hinton, Osindero & Teh 2006); the data's labels, class indices in [0, K), travel with each
    micro-batch, and ``pipedbn eval`` reports the test error of classifying by free energy."""

    def problems(self, i: int, below: LayerConfig | None) -> list[str]:
        """What is wrong with layer ``i`` (``below``: layer ``i - 1``, None for the first)."""
        w = f"layers.{i}"
        p = positive(f"{w}.hidden", self.hidden)
        if self.kind not in registry.kinds():
            close = difflib.get_close_matches(self.kind, registry.kinds(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            p.append(f"{w}.kind: unknown layer kind {self.kind!r}{hint}; "
                     f"known: {', '.join(registry.kinds())}")
        elif below is not None and below.kind in registry.kinds():
            why = registry.chain_problem(below.kind, self.kind)
            p += [f"{w}.kind: {why}"] if why else []
        if (self.method == "pt" and self.kind in registry.kinds()
                and not registry.get(self.kind).temperable):
            p.append(f"{w}.method: 'pt' (parallel tempering) is implemented for bernoulli "
                     f"layers; layer kind {self.kind!r} needs 'cd' or 'pcd'")
        if self.method == "pt" and self.pt_temperatures < 2:
            p.append(f"{w}.pt_temperatures: at least 2 temperatures, got {self.pt_temperatures}")
        if (self.centering and self.kind in registry.kinds()
                and registry.get(self.kind).extra_parameters):
            p.append(f"{w}.centering: not implemented for layer kind {self.kind!r} (its update "
                     "is preconditioned by the learned variances); set rbm.centering=false or "
                     "use kind 'gaussian'")
        if not 0 < self.centering_rate <= 1:
            p.append(f"{w}.centering_rate: must be in (0, 1], got {self.centering_rate}")
        if self.k < 1:
            p.append(f"{w}.k: must be >= 1, got {self.k}")
        p += positive(f"{w}.epochs", self.epochs)
        p += positive(f"{w}.lr", self.lr)
        if not 0 <= self.lr_final <= 1:
            p.append(f"{w}.lr_final: a fraction of lr in [0, 1], got {self.lr_final}")
        for name in ("momentum", "momentum_final"):
            m = getattr(self, name)
            if m is not None and not 0 <= m < 1:
                p.append(f"{w}.{name}: must be in [0, 1), got {m}")
        p += positive(f"{w}.momentum_epochs", self.momentum_epochs, strict=False)
        p += positive(f"{w}.weight_decay", self.weight_decay, strict=False)
        p += positive(f"{w}.sparsity_cost", self.sparsity_cost, strict=False)
        if not 0 < self.sparsity_target < 1:
            p.append(f"{w}.sparsity_target: must be in (0, 1), got {self.sparsity_target}")
        if not 0 <= self.sparsity_decay < 1:
            p.append(f"{w}.sparsity_decay: must be in [0, 1), got {self.sparsity_decay}")
        p += positive(f"{w}.init_std", self.init_std)
        p += positive(f"{w}.pcd_chains", self.pcd_chains)
        p += self.label_problems(w)
        if below is not None and self.visible is not None and self.visible != below.hidden:
            p.append(f"{w}.visible: {self.visible} does not chain with layers.{i - 1}.hidden = "
                     f"{below.hidden} (a layer's visible units are the hidden units "
                     "of the layer below)")
        return p

    def label_problems(self, w: str) -> list[str]:
        """``labels`` and ``kind: label`` go together, on binary features."""
        if self.labels is None:
            return [f"{w}.kind: a 'label' layer needs its number of classes: set {w}.labels "
                    "(e.g. 10)"] if self.kind == "label" else []
        p = []
        if not 2 <= self.labels <= 2**16:
            p.append(f"{w}.labels: the number of classes, from 2 to 65536, got {self.labels}")
        if self.kind not in ("bernoulli", "label"):
            p.append(f"{w}.labels: label units join binary features; {w}.kind is "
                     f"{self.kind!r} (leave it out, or use 'label')")
        if self.method == "pt" or self.centering:
            what = "rbm.method 'pt'" if self.method == "pt" else "rbm.centering"
            p.append(f"{w}.labels: {what} is not implemented for label units (their update is "
                     "plain CD/PCD); use method 'cd' or 'pcd' without centering on this layer")
        return p

    def resolve_defaults(self, batch_size: int) -> None:
        """Fill the defaults that depend on other fields: the kind's lr, the method's momentum,
        one persistent chain per sample of a micro-batch; ``labels`` makes the layer a
        ``label`` one."""
        if self.labels is not None:
            self.kind = "label"
        if self.lr is None:
            self.lr = registry.get(self.kind).default_lr
        if self.momentum is None:
            self.momentum = 0.5 if self.method == "cd" else 0.0
        if self.momentum_final is None:
            self.momentum_final = 0.9 if self.method == "cd" else 0.0
        if self.pcd_chains is None and self.method in ("pcd", "pt"):
            self.pcd_chains = batch_size

    def gibbs_steps(self) -> int:
        """Gibbs steps per update over all chains: k, times the temperatures for ``pt`` (what
        the balancer's cost model prices a step by)."""
        return self.k * (self.pt_temperatures if self.method == "pt" else 1)

    def chain_rows(self) -> int:
        """Persistent chain states the layer holds (0 for CD)."""
        return (self.pcd_chains or 0) * (self.pt_temperatures if self.method == "pt" else 1)


def expand_shorthand(raw: dict[str, Any]) -> None:
    """The shorthand ``layers: [500, 500]`` means ``[{hidden: 500}, {hidden: 500}]``."""
    if isinstance(raw.get("layers"), list):
        raw["layers"] = [{"hidden": e} if isinstance(e, int) and not isinstance(e, bool) else e
                         for e in raw["layers"]]


def layer_entries(raw: dict[str, Any], problems: list[str]) -> list[dict[str, Any]]:
    """The raw ``layers`` entries, each with the ``rbm`` settings it does not override."""
    expand_shorthand(raw)
    layers = raw.get("layers")
    if layers is None:
        problems.append("layers: required (a list such as [{hidden: 500}, {hidden: 500}])")
        layers = []
    elif not isinstance(layers, list) or not layers:
        problems.append(f"layers: expected a non-empty list of layer entries, got {layers!r}")
        layers = []
    shared = raw.get("rbm") or {}
    # Only valid keys are copied down; a bad key in ``rbm`` is reported once, for ``rbm``.
    rbm_fields = {f.name for f in dataclasses.fields(RBMConfig)}
    if not isinstance(shared, dict):
        shared = {}
    bad: set[str] = set()
    for key, value in shared.items():
        if key in rbm_fields:
            found: list[str] = []
            coerce(value, typing.get_type_hints(RBMConfig)[key], f"rbm.{key}", found)
            bad.update([key] if found else [])
    shared = {k: v for k, v in shared.items() if k in rbm_fields and k not in bad}
    merged = []
    for i, entry in enumerate(layers):
        if not isinstance(entry, dict):
            problems.append(f"layers.{i}: expected a mapping such as {{hidden: 500}}, "
                            f"got {entry!r}")
            continue
        if "hidden" not in entry:
            problems.append(f"layers.{i}.hidden: required (number of hidden units)")
        merged.append({**shared, **entry})
    return merged


def blame_shared(problems: list[str], raw: dict[str, Any]) -> list[str]:
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
