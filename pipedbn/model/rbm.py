"""The RBM layer interface and the CD-k / PCD-k update every layer kind shares.

A kind (in ``stages/``) supplies only its conditional distributions and free energy; this module
owns the update, the schedules, the state and the RNG, so that every kind trains the same way.

One update on a micro-batch ``v0`` of B rows (the order is part of the determinism contract: the
RNG stream of a layer is consumed in exactly this order):

1. ``ph0 = p(h | v0)``; for CD, ``h ~ ph0`` (one uniform draw of B x n_hidden).
   For PCD, ``h`` is the persistent chains' hidden state instead.
2. k Gibbs steps: ``vm = E[v | h]``; ``v = sample(vm)`` (CD's last step keeps ``v = vm``, the
   noise-free reconstruction of Hinton's guide; PCD always samples so the chains stay Markov);
   ``ph = p(h | v)``; ``h ~ ph`` except on CD's last step. PCD then keeps ``h ~ ph`` as its chains.
3. Gradients are batch means: ``dW = v0' ph0 / B - v' ph / n_neg``, ``dvb = mean(v0) - mean(v)``,
   ``dhb = mean(ph0) - mean(ph)``, plus the sparsity term; weight decay acts on W only.
4. ``inc = momentum * inc + lr * (grad - weight_decay * W)``; ``param += inc``.
5. The layer passes up ``ph0`` (computed with the weights before this update), or ``h ~ ph0``
   (CD reuses the sample of step 1; PCD draws it after step 2).
"""

from __future__ import annotations

import abc
import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from pipedbn.errors import NonFiniteError

if TYPE_CHECKING:  # a type only: the config's layer kinds come from stages, which imports this
    from pipedbn.config import LayerConfig


def layer_seed(seed: int, index: int) -> int:
    """The seed of layer ``index``'s RNG stream: a pure function of (seed, index)."""
    state = np.random.SeedSequence([seed, 0x5EED, index]).generate_state(2, np.uint32)
    return (int(state[0]) << 32 | int(state[1])) >> 1  # 63 bits


def bernoulli(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Binary samples with P(1) = p: uniform + compare is ~5x faster than torch.bernoulli on CPU."""
    u = torch.empty_like(p).uniform_(generator=generator)
    return torch.lt(u, p, out=u)


def free_energy(kind: type[RBM], v: torch.Tensor, weight: torch.Tensor,
                visible_bias: torch.Tensor, hidden_bias: torch.Tensor) -> torch.Tensor:
    """F(v) per row for a layer of ``kind``; softplus keeps it finite for large inputs."""
    pre = torch.addmm(hidden_bias, v, weight)
    return kind.visible_energy(v, visible_bias) - torch.nn.functional.softplus(pre).sum(1)


class RBM(abc.ABC):
    """A restricted Boltzmann machine layer: parameters, optimiser state, chains and RNG."""

    kind: ClassVar[str]
    default_lr: ClassVar[float] = 0.1
    stackable: ClassVar[bool] = True
    """False for kinds whose visible units are real-valued: they can only be the first layer."""

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        cfg: LayerConfig,
        *,
        seed: int,
        index: int,
        steps_per_epoch: int,
        total_steps: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        visible_mean: torch.Tensor | None = None,
    ) -> None:
        assert cfg.lr is not None and cfg.momentum is not None and cfg.momentum_final is not None
        self.cfg = cfg
        self.index = index
        self.n_visible, self.n_hidden = n_visible, n_hidden
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.device, self.dtype = torch.device(device), dtype
        self.generator = torch.Generator(self.device).manual_seed(layer_seed(seed, index))
        kw: dict[str, Any] = {"device": self.device, "dtype": dtype}
        self.weight = torch.randn(n_visible, n_hidden, generator=self.generator, **kw)
        self.weight.mul_(cfg.init_std)
        self.visible_bias = self.init_visible_bias(
            visible_mean.to(**kw) if visible_mean is not None else None, n_visible, **kw
        )
        self.hidden_bias = torch.zeros(n_hidden, **kw)
        self.weight_inc = torch.zeros_like(self.weight)
        self.visible_bias_inc = torch.zeros_like(self.visible_bias)
        self.hidden_bias_inc = torch.zeros_like(self.hidden_bias)
        # PCD chains start all-off: the first down pass then gives the visible biases' marginals.
        self.chains = torch.zeros(cfg.pcd_chains or 0, n_hidden, **kw)
        self.hidden_activity = torch.full((n_hidden,), cfg.sparsity_target, **kw)
        self.step = 0
        self.replicas = 1  # set by a replicated stage (replicas.py); not part of the state

    # -- what a kind defines ---------------------------------------------------------------
    @abc.abstractmethod
    def init_visible_bias(self, mean: torch.Tensor | None, n: int, **kw: Any) -> torch.Tensor:
        """Initial visible bias given the mean of the layer's input (None above layer 0)."""

    @staticmethod
    @abc.abstractmethod
    def visible_link(pre: torch.Tensor) -> torch.Tensor:
        """E[v | h] from the visible pre-activation ``h W' + vb`` (may work in place)."""

    @staticmethod
    @abc.abstractmethod
    def draw_visible(mean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A sample of v given its conditional mean."""

    @staticmethod
    @abc.abstractmethod
    def visible_energy(v: torch.Tensor, visible_bias: torch.Tensor) -> torch.Tensor:
        """The visible-only terms of the free energy, per row."""

    # -- shared -----------------------------------------------------------------------------
    def hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.hidden_bias, v, self.weight).sigmoid_()

    def sample_hidden(self, p: torch.Tensor) -> torch.Tensor:
        return bernoulli(p, self.generator)

    def visible_mean(self, h: torch.Tensor) -> torch.Tensor:
        return self.visible_link(torch.addmm(self.visible_bias, h, self.weight.T))

    def sample_visible(self, mean: torch.Tensor) -> torch.Tensor:
        return self.draw_visible(mean, self.generator)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) per row; softplus keeps it finite for large inputs."""
        return free_energy(type(self), v, self.weight, self.visible_bias, self.hidden_bias)

    def reconstruction_error(self, v: torch.Tensor) -> float:
        """Mean over rows of the squared error of the one-step mean-field reconstruction."""
        vm = self.visible_mean(self.hidden_probs(v))
        return float((v - vm).square_().sum() / v.shape[0])

    def lr_at(self, t: int) -> float:
        c = self.cfg
        assert c.lr is not None
        if c.lr_schedule == "constant" or self.total_steps <= 1:
            return c.lr
        frac = min(t / (self.total_steps - 1), 1.0)
        if c.lr_schedule == "linear":
            return c.lr * (1.0 - (1.0 - c.lr_final) * frac)
        return c.lr * (c.lr_final + (1.0 - c.lr_final) * 0.5 * (1.0 + math.cos(math.pi * frac)))

    def momentum_at(self, t: int) -> float:
        c = self.cfg
        switch = c.momentum_epochs * self.steps_per_epoch
        m = c.momentum if t < switch else c.momentum_final
        assert m is not None
        return m

    @torch.no_grad()
    def forward(self, v: torch.Tensor, micro_batch: int = -1) -> torch.Tensor:
        """What this layer passes up for ``v`` without training on it."""
        ph = self.hidden_probs(v)
        self._check(ph, micro_batch)
        return self.sample_hidden(ph) if self.cfg.forward == "samples" else ph

    @torch.no_grad()
    def train_step(
        self, v0: torch.Tensor, micro_batch: int = -1, stats: dict[str, float] | None = None
    ) -> torch.Tensor:
        """One CD-k / PCD-k update on ``v0``; returns what the layer passes up (see module doc)."""
        c = self.cfg
        pcd = c.method == "pcd"
        t = self.step
        lr, mom = self.lr_at(t), self.momentum_at(t)
        if self.replicas > 1 and mom > 0:
            # one of r replicas steps every r-th micro-batch: its velocity decays mom**r per
            # step (as one velocity would over those r micro-batches), and lr grows so that a
            # gradient's total effect lr / (1 - mom) stays the same
            mom_r = mom ** self.replicas
            lr, mom = lr * (1 - mom_r) / (1 - mom), mom_r
        batch = v0.shape[0]

        ph0 = self.hidden_probs(v0)
        self._check(ph0, micro_batch)
        h0 = None if pcd else self.sample_hidden(ph0)
        h = self.chains if pcd else h0
        assert h is not None
        for s in range(c.k):
            vm = self.visible_mean(h)
            v = self.sample_visible(vm) if (pcd or s < c.k - 1) else vm
            ph = self.hidden_probs(v)
            if pcd or s < c.k - 1:
                h = self.sample_hidden(ph)
        if pcd:
            self.chains = h
        n_neg = v.shape[0]

        recon_error = 0.0
        if stats is not None:  # mean-field, before the update: the same measure for CD and PCD
            recon = self.visible_link(torch.addmm(self.visible_bias, ph0, self.weight.T))
            recon_error = float((v0 - recon).square_().sum() / batch)

        # Both gradient products accumulate straight into the momentum buffer.
        self.weight_inc.addmm_(v0.T, ph0, beta=mom, alpha=lr / batch)
        self.weight_inc.addmm_(v.T, ph, alpha=-lr / n_neg)
        if c.weight_decay:
            self.weight_inc.add_(self.weight, alpha=-lr * c.weight_decay)
        v0_mean = v0.mean(0)
        ph0_mean = ph0.mean(0)
        dvb = v0_mean - v.mean(0)
        dhb = ph0_mean - ph.mean(0)
        if c.sparsity_cost:
            q = self.hidden_activity.mul_(c.sparsity_decay).add_(
                ph0_mean, alpha=1.0 - c.sparsity_decay
            )
            push = (c.sparsity_target - q).mul_(c.sparsity_cost)
            dhb.add_(push)
            self.weight_inc.addr_(v0_mean, push, alpha=lr)
        self.visible_bias_inc.mul_(mom).add_(dvb, alpha=lr)
        self.hidden_bias_inc.mul_(mom).add_(dhb, alpha=lr)
        self.weight.add_(self.weight_inc)
        self.visible_bias.add_(self.visible_bias_inc)
        self.hidden_bias.add_(self.hidden_bias_inc)
        self.step += 1

        if stats is not None:
            stats["recon_error"] = recon_error
            stats["hidden_mean"] = float(ph0_mean.mean())
            stats["lr"] = lr
            stats["momentum"] = mom
        if c.forward == "samples":
            return h0 if h0 is not None else self.sample_hidden(ph0)
        return ph0

    def _check(self, h: torch.Tensor, micro_batch: int) -> None:
        if not torch.isfinite(h.sum()):
            raise NonFiniteError(
                self.index, micro_batch, "hidden activations",
                "Its input or weights hold NaN/Inf: lower the learning rate (layers.N.lr), "
                "check the data, or for a gaussian layer standardise it (data.standardize=true).",
            )

    def check_parameters(self, micro_batch: int) -> None:
        for name, p in self.parameters().items():
            if not torch.isfinite(p).all():
                raise NonFiniteError(
                    self.index, micro_batch, f"{name}",
                    "Training diverged: lower the learning rate (layers.N.lr) or momentum.",
                )

    def parameters(self) -> dict[str, torch.Tensor]:
        """The tensors that define the model (what export writes)."""
        return {
            "weight": self.weight,
            "visible_bias": self.visible_bias,
            "hidden_bias": self.hidden_bias,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue training exactly: loadable with ``weights_only=True``."""
        return {
            **{k: v.clone() for k, v in self.parameters().items()},
            "weight_inc": self.weight_inc.clone(),
            "visible_bias_inc": self.visible_bias_inc.clone(),
            "hidden_bias_inc": self.hidden_bias_inc.clone(),
            "chains": self.chains.clone(),
            "hidden_activity": self.hidden_activity.clone(),
            "step": torch.tensor(self.step, dtype=torch.int64),
            "rng_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"layer {self.index}: state keys {sorted(state)} do not match {sorted(expected)}"
            )
        for name in ("weight", "visible_bias", "hidden_bias", "weight_inc", "visible_bias_inc",
                     "hidden_bias_inc", "chains", "hidden_activity"):
            current: torch.Tensor = getattr(self, name)
            if state[name].shape != current.shape:
                raise ValueError(
                    f"layer {self.index}: {name} has shape {tuple(state[name].shape)}, "
                    f"expected {tuple(current.shape)}"
                )
            setattr(self, name, state[name].to(device=self.device, dtype=self.dtype).clone())
        self.step = int(state["step"])
        self.generator.set_state(state["rng_state"].cpu())
