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

``centering`` replaces step 3's products by the centred gradient (``_centred``) and
``method: pt`` step 2 by parallel tempering (``_tempered_negative``); docs/training.md gives
both updates. ``ph0 = p(h | v0)`` is the kind's ``hidden_link`` of ``v0 W + hb`` (sigmoid for
binary hidden units) and ``h ~ ph0`` its ``draw_hidden``.

A kind whose hidden units see a scaled ``v`` (``visible_input``, e.g. ``v / sigma^2``) computes
``ph0`` and ``ph`` from it; the gradients of W and vb keep the products with ``v`` itself (for
``gaussian-var`` the gradient preconditioned by sigma^2 per visible unit: its module doc says
why). A kind with parameters of its own updates them in ``extra_update``, after step 3 and
before the parameters move in step 4, from the same phases.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from pipedbn.errors import NonFiniteError

PARAMETERS = ("weight", "visible_bias", "hidden_bias")
"""The names an RBM registers its parameters under, in order: also what an export file or a
layer state holds as the model, which a reader of those files needs without a module. Whatever
has a module asks it (``named_parameters``, ``state_dict``)."""
VELOCITY = "{}_inc"
"""The name of a parameter's momentum buffer."""


@dataclasses.dataclass(frozen=True)
class RBMSettings:
    """A layer's resolved hyper-parameters (``layers.N`` of the config, defaults filled in):
    what the update reads, and nothing of the rest of a config (the config documents each)."""

    method: Literal["cd", "pcd", "pt"]
    k: int
    lr: float
    lr_schedule: Literal["constant", "linear", "cosine"]
    lr_final: float
    momentum: float
    momentum_final: float
    momentum_epochs: float
    weight_decay: float
    sparsity_target: float
    sparsity_cost: float
    sparsity_decay: float
    init_std: float
    forward: Literal["probs", "samples"]
    pcd_chains: int
    centering: bool = False
    centering_rate: float = 0.01
    pt_temperatures: int = 1

    @classmethod
    def of(cls, layer: Any) -> RBMSettings:
        """The settings of a resolved layer config (any object with these fields; None as
        ``pcd_chains``: no chains)."""
        values = {f.name: getattr(layer, f.name) for f in dataclasses.fields(cls)}
        values["pcd_chains"] = values["pcd_chains"] or 0
        missing = [k for k, v in values.items() if v is None]
        assert not missing, f"unresolved layer settings {missing} (resolve_defaults fills them)"
        return cls(**values)


def replica_rates(lr: float, momentum: float, replicas: int) -> tuple[float, float]:
    """The (lr, momentum) of one of ``replicas`` replicas that steps every ``replicas``-th
    micro-batch: its velocity decays momentum**r per step (as one velocity would over those r
    micro-batches), and lr grows so that a gradient's total effect lr / (1 - momentum) stays
    the same."""
    if replicas <= 1 or momentum <= 0:
        return lr, momentum
    mom_r = momentum ** replicas
    return lr * (1 - mom_r) / (1 - momentum), mom_r


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
    return kind.visible_energy(v, visible_bias) - kind.hidden_log_sum(pre)


def tempering(temperatures: int) -> torch.Tensor:
    """The inverse temperatures of parallel tempering, 1 (the model) down to 0 (uniform),
    evenly spaced (PyDeep's default spacing)."""
    return torch.linspace(1.0, 0.0, temperatures, dtype=torch.float64)


Params = Mapping[str, torch.Tensor]
"""A layer's parameters by name (``PARAMETERS`` and its kind's ``extra_parameters``): an export
file's layer, a ``Model``'s ``params[i]``, ``dict(rbm.named_parameters())``."""


def free_energy_of(kind: type[RBM], p: Params, v: torch.Tensor) -> torch.Tensor:
    """F(v) per row for a layer of ``kind`` with parameters ``p``, whatever its kind-specific
    parameters (``free_energy`` is the same for the kinds without any)."""
    pre = kind.hidden_pre_of(p, v)
    return kind.visible_terms_of(p, v) - kind.hidden_log_sum(pre)


Enumeration = Literal["either", "hidden", "visible", "none"]
"""Which side of a layer exact evaluation may enumerate (``RBM.exact_likelihood``)."""


class RBM(torch.nn.Module, abc.ABC):
    """A restricted Boltzmann machine layer as a module: its parameters (the model), its
    training state as buffers (a velocity per parameter, the persistent chains, the sparsity
    estimate), and besides them the update count and the RNG, which ``state_dict`` adds as
    ``step`` and ``rng_state``.

    The parameters do not require gradients: CD-k is not the gradient of a loss autograd could
    differentiate, and ``train_step`` updates them in place by hand."""

    kind: ClassVar[str]
    default_lr: ClassVar[float] = 0.1
    stackable: ClassVar[bool] = True
    """False for kinds whose visible units are real-valued: they can only be the first layer
    (or above a layer whose hidden units are real-valued, ``stages.registry.chain_problem``)."""
    unit_visible: ClassVar[bool] = False
    """True for binary visible units: the data must lie in [0, 1]; the pseudo-likelihood and
    exact likelihood by enumerating the visible states apply."""
    binary_hidden: ClassVar[bool] = True
    """False for real-valued hidden units (``nrelu``): the hidden side cannot be enumerated."""
    temperable: ClassVar[bool] = False
    """True when ``method: pt`` is implemented for the kind (tempered conditionals)."""
    hidden_activation: ClassVar[type[torch.nn.Module]] = torch.nn.Sigmoid
    """The module of ``hidden_link`` for ``Model.to_module``."""
    extra_parameters: ClassVar[tuple[str, ...]] = ()
    """Kind-specific parameters beyond ``PARAMETERS`` (registered by the kind after
    ``RBM.__init__``, each with its velocity): exported as ``layers.{i}.<name>``, shaped as
    ``extra_shapes`` says."""
    # What ``pipedbn eval`` can do for the kind (docs/evaluation.md):
    exact_likelihood: ClassVar[Enumeration] = "none"
    """Exact log-likelihood by enumeration: ``either`` side (binary visible and hidden units:
    the smaller one is enumerated), the ``hidden`` side only (the visible units integrate out in
    closed form: ``log_hidden_marginal``), the binary ``visible`` side only (real-valued hidden
    units: through ``free_energy_of``), or ``none`` (not available)."""
    ais: ClassVar[bool] = False
    """Whether AIS may estimate log Z (its base-rate model and sweeps are Bernoulli ones)."""

    # (for the type checker: nn.Module keeps these in its registries, not in the instance)
    weight: torch.nn.Parameter
    visible_bias: torch.nn.Parameter
    hidden_bias: torch.nn.Parameter
    weight_inc: torch.Tensor
    visible_bias_inc: torch.Tensor
    hidden_bias_inc: torch.Tensor
    chains: torch.Tensor
    hidden_activity: torch.Tensor
    visible_offset: torch.Tensor
    hidden_offset: torch.Tensor

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        settings: RBMSettings,
        *,
        seed: int,
        index: int,
        steps_per_epoch: int,
        total_steps: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        visible_mean: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.index = index
        self.n_visible, self.n_hidden = n_visible, n_hidden
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.device, self.dtype = torch.device(device), dtype
        self.generator = torch.Generator(self.device).manual_seed(layer_seed(seed, index))
        kw: dict[str, Any] = {"device": self.device, "dtype": dtype}
        weight = torch.randn(n_visible, n_hidden, generator=self.generator, **kw)
        weight.mul_(settings.init_std)
        visible_bias = self.init_visible_bias(
            visible_mean.to(**kw) if visible_mean is not None else None, n_visible, **kw
        )
        for name, t in zip(PARAMETERS, (weight, visible_bias, torch.zeros(n_hidden, **kw)),
                           strict=True):
            self.register_parameter(name, torch.nn.Parameter(t, requires_grad=False))
        for name, p in list(self.named_parameters()):
            self.register_buffer(VELOCITY.format(name), torch.zeros_like(p))
        # PCD chains start all-off: the first down pass then gives the visible biases' marginals.
        # Parallel tempering keeps pcd_chains chains per temperature, the model's (beta 1) first.
        rows = settings.pcd_chains * (settings.pt_temperatures if settings.method == "pt" else 1)
        self.register_buffer("chains", torch.zeros(rows, n_hidden, **kw))
        if settings.method == "pt":
            self.betas = tempering(settings.pt_temperatures).to(**kw)
            self.chain_betas = self.betas.repeat_interleave(settings.pcd_chains)[:, None]
        if settings.centering:  # offsets only when on: other layers' states keep their keys
            self.register_buffer("visible_offset", self.init_visible_offset(
                visible_mean.to(**kw) if visible_mean is not None else None, n_visible, **kw))
            self.register_buffer("hidden_offset", torch.full((n_hidden,), 0.5, **kw))
        self.register_buffer("hidden_activity",
                             torch.full((n_hidden,), settings.sparsity_target, **kw))
        self.step = 0
        self.defer_checks = self.device.type != "cpu"
        """Whether the activation check only raises a device-side flag (read by
        ``check_activations``) instead of reading the value on the host at every step: a host
        read waits for the GPU, every micro-batch (docs/pipeline.md)."""
        self._first_bad: torch.Tensor | None = None  # the first micro-batch flagged, or -1
        self.register_state_dict_post_hook(_save_counters)
        self.register_load_state_dict_pre_hook(_load_counters)

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

    # -- what a kind may override: defaults for kinds whose parameters are PARAMETERS only ----
    @classmethod
    def extra_shapes(cls, n_visible: int, n_hidden: int) -> dict[str, tuple[int, ...]]:
        """The shape of each of ``extra_parameters`` (what ``load`` checks an export against)."""
        return {}

    @classmethod
    def hidden_pre_of(cls, p: Params, v: torch.Tensor) -> torch.Tensor:
        """The hidden pre-activation for visible rows ``v`` (the hidden units' input)."""
        return torch.addmm(p["hidden_bias"], v, p["weight"])

    @classmethod
    def visible_terms_of(cls, p: Params, v: torch.Tensor) -> torch.Tensor:
        """The visible-only terms of the free energy per row, from the parameters ``p``."""
        return cls.visible_energy(v, p["visible_bias"])

    @classmethod
    def draw_of(cls, p: Params, mean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A sample of v given its conditional mean, from the parameters ``p``."""
        return cls.draw_visible(mean, generator)

    @classmethod
    def log_hidden_marginal(cls, p: Params, h: torch.Tensor) -> torch.Tensor:
        """log sum_v exp(-E(v, h)) per row of binary hidden states ``h`` (the unnormalised
        log p(h); float64 ``p``): what exact evaluation enumerates, for kinds whose
        ``exact_likelihood`` is not ``none``."""
        raise NotImplementedError(f"{cls.kind}: no closed-form marginal of the hidden units")

    def visible_input(self, v: torch.Tensor) -> torch.Tensor:
        """What the hidden units see of ``v`` (``hidden_pre = visible_input(v) W + hb``); the
        update's gradients of W and vb use it too. ``v`` itself for most kinds."""
        return v

    def draw(self, mean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A sample of v given its conditional mean (``draw_visible`` for most kinds)."""
        return self.draw_visible(mean, generator)

    def extra_update(self, v0: torch.Tensor, ph0: torch.Tensor, v: torch.Tensor,
                     ph: torch.Tensor, lr: float, momentum: float, v_is_mean: bool) -> None:
        """Update ``extra_parameters`` from the phases of ``train_step`` (called before W and
        the biases move, so it sees the parameters the phases were computed with). ``v_is_mean``:
        the negative phase's ``v`` is CD's noise-free reconstruction, not a sample."""

    def histogram_values(self) -> dict[str, torch.Tensor]:
        """Derived quantities to show as TensorBoard histograms beside the parameters."""
        return {}

    # -- the hidden side a kind may redefine (binary hidden units here) ---------------------
    def init_visible_offset(self, mean: torch.Tensor | None, n: int, **kw: Any) -> torch.Tensor:
        """Centering's initial visible offset: the data mean (layer 0), else 0.5."""
        return mean.clone() if mean is not None else torch.full((n,), 0.5, **kw)

    @staticmethod
    def hidden_link(pre: torch.Tensor) -> torch.Tensor:
        """E[h | v] (the positive-phase statistic) from ``v W + hb`` (may work in place)."""
        return pre.sigmoid_()

    @staticmethod
    def draw_hidden(pre: torch.Tensor, mean: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
        """A sample of h given its pre-activation and ``hidden_link`` of it (``pre`` may be
        ``mean`` itself, after an in-place link)."""
        return bernoulli(mean, generator)

    @staticmethod
    def hidden_log_sum(pre: torch.Tensor) -> torch.Tensor:
        """log sum_h exp(h . pre) per row: minus the hidden part of the free energy."""
        return torch.nn.functional.softplus(pre).sum(1)

    # -- shared -----------------------------------------------------------------------------
    def hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        return self.hidden_link(torch.addmm(self.hidden_bias, self.visible_input(v),
                                             self.weight))

    def sample_hidden(self, p: torch.Tensor) -> torch.Tensor:
        """A sample of binary hidden units given their probabilities (``draw_hidden`` for
        any kind)."""
        return bernoulli(p, self.generator)

    def visible_mean(self, h: torch.Tensor) -> torch.Tensor:
        return self.visible_link(torch.addmm(self.visible_bias, h, self.weight.T))

    def sample_visible(self, mean: torch.Tensor) -> torch.Tensor:
        return self.draw(mean, self.generator)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) per row; softplus keeps it finite for large inputs."""
        if not self.extra_parameters:
            return free_energy(type(self), v, self.weight, self.visible_bias, self.hidden_bias)
        return free_energy_of(type(self), dict(self.named_parameters()), v)

    def visible_terms(self, v: torch.Tensor) -> torch.Tensor:
        """The visible-only terms of the free energy per row."""
        if not self.extra_parameters:
            return self.visible_energy(v, self.visible_bias)
        return self.visible_terms_of(dict(self.named_parameters()), v)

    def reconstruction_error(self, v: torch.Tensor) -> float:
        """Mean over rows of the squared error of the one-step mean-field reconstruction."""
        vm = self.visible_mean(self.hidden_probs(v))
        return float((v - vm).square_().sum() / v.shape[0])

    def lr_at(self, t: int) -> float:
        c = self.settings
        if c.lr_schedule == "constant" or self.total_steps <= 1:
            return c.lr
        frac = min(t / (self.total_steps - 1), 1.0)
        if c.lr_schedule == "linear":
            return c.lr * (1.0 - (1.0 - c.lr_final) * frac)
        return c.lr * (c.lr_final + (1.0 - c.lr_final) * 0.5 * (1.0 + math.cos(math.pi * frac)))

    def momentum_at(self, t: int) -> float:
        c = self.settings
        switch = c.momentum_epochs * self.steps_per_epoch
        return c.momentum if t < switch else c.momentum_final

    @torch.no_grad()
    def forward(self, v: torch.Tensor, micro_batch: int = -1) -> torch.Tensor:
        """What this layer passes up for ``v`` without training on it (``micro_batch`` names
        it in an error)."""
        pre = torch.addmm(self.hidden_bias, v, self.weight)
        ph = self.hidden_link(pre)
        self._check(ph, micro_batch)
        if self.settings.forward == "samples":
            return self.draw_hidden(pre, ph, self.generator)
        return ph

    @torch.no_grad()
    def train_step(self, v0: torch.Tensor, micro_batch: int = -1,
                   stats: dict[str, float] | None = None, replicas: int = 1) -> torch.Tensor:
        """One CD-k / PCD-k / PT update on ``v0``; returns what the layer passes up (see module
        doc). ``replicas``: how many replicas of the layer share the stream (``replica_rates``)."""
        c = self.settings
        pcd = c.method == "pcd"
        t = self.step
        lr, mom = replica_rates(self.lr_at(t), self.momentum_at(t), replicas)
        batch = v0.shape[0]
        # Each tensor looked up once: nn.Module resolves a parameter or buffer attribute in
        # Python on every access, which a dozen times a step would add up on small layers.
        w, vb, hb = self.weight, self.visible_bias, self.hidden_bias
        w_inc, vb_inc, hb_inc = self.weight_inc, self.visible_bias_inc, self.hidden_bias_inc
        g = self.generator

        pre0 = torch.addmm(hb, self.visible_input(v0), w)
        ph0 = self.hidden_link(pre0)  # hidden_probs (pre0 is ph0 after an in-place link)
        self._check(ph0, micro_batch)
        cd = c.method == "cd"
        h0 = self.draw_hidden(pre0, ph0, g) if cd else None
        swap_rate = None
        if c.method == "pt":
            v, ph, swap_rate = self._tempered_negative(g, stats is not None)
        else:
            h = self.chains if pcd else h0
            assert h is not None
            for s in range(c.k):
                vm = self.visible_link(torch.addmm(vb, h, w.T))  # visible_mean
                v = self.draw(vm, g) if (pcd or s < c.k - 1) else vm
                pre = torch.addmm(hb, self.visible_input(v), w)
                ph = self.hidden_link(pre)
                if pcd or s < c.k - 1:
                    h = self.draw_hidden(pre, ph, g)
            if pcd:
                self.chains = h
        n_neg = v.shape[0]

        recon_error = 0.0
        if stats is not None:  # mean-field, before the update: the same measure for CD and PCD
            recon = self.visible_link(torch.addmm(vb, ph0, w.T))
            recon_error = float((v0 - recon).square_().sum() / batch)

        v0_mean = v0.mean(0)
        ph0_mean = ph0.mean(0)
        dvb = v0_mean - v.mean(0)
        dhb = ph0_mean - ph.mean(0)
        if c.centering:
            dvb, dhb = self._centred(v0, ph0, v, ph, dvb, dhb, lr, mom)
        else:  # both gradient products accumulate straight into the momentum buffer
            w_inc.addmm_(v0.T, ph0, beta=mom, alpha=lr / batch)
            w_inc.addmm_(v.T, ph, alpha=-lr / n_neg)
        if c.weight_decay:
            w_inc.add_(w, alpha=-lr * c.weight_decay)
        if c.sparsity_cost:
            q = self.hidden_activity.mul_(c.sparsity_decay).add_(
                ph0_mean, alpha=1.0 - c.sparsity_decay
            )
            push = (c.sparsity_target - q).mul_(c.sparsity_cost)
            dhb.add_(push)
            w_inc.addr_(v0_mean, push, alpha=lr)
        vb_inc.mul_(mom).add_(dvb, alpha=lr)
        hb_inc.mul_(mom).add_(dhb, alpha=lr)
        if self.extra_parameters:
            self.extra_update(v0, ph0, v, ph, lr, mom, v_is_mean=not pcd)
        w.add_(w_inc)
        vb.add_(vb_inc)
        hb.add_(hb_inc)
        self.step += 1

        if stats is not None:
            stats["recon_error"] = recon_error
            stats["hidden_mean"] = float(ph0_mean.mean())
            stats["lr"] = lr
            stats["momentum"] = mom
            if swap_rate is not None:
                stats["pt_swap_rate"] = swap_rate
        if c.forward == "samples":
            return h0 if h0 is not None else self.draw_hidden(pre0, ph0, g)
        return ph0

    def _centred(self, v0: torch.Tensor, ph0: torch.Tensor, v: torch.Tensor, ph: torch.Tensor,
                 dvb: torch.Tensor, dhb: torch.Tensor, lr: float, mom: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The centred gradient (Melchior, Fischer & Wiskott 2016, for the ordinary parameters):
        first the offsets move towards this batch's means, ``mu += nu (mean(v0) - mu)``,
        ``lam += nu (mean(ph0) - lam)``; then ``dW = <(v - mu)(h - lam)'>_data -
        <(v - mu)(h - lam)'>_model`` goes into the weights' momentum and the bias gradients
        become ``dvb - dW lam`` and ``dhb - dW' mu`` (returned).

        ``dW`` is the plain product difference ``G = v0' ph0 / B - v' ph / n`` minus the rank-1
        terms ``mu dhb' + dvb lam'``; it is never formed: the products accumulate into the
        momentum as without centering, and ``dW lam``, ``dW' mu`` come from products of the
        activations with the offsets (vectors), not from another pass over the weights."""
        nu, lr_b, lr_n = self.settings.centering_rate, lr / v0.shape[0], lr / v.shape[0]
        mu, lam = self.visible_offset, self.hidden_offset
        mu.mul_(1.0 - nu).add_(v0.mean(0), alpha=nu)
        lam.mul_(1.0 - nu).add_(ph0.mean(0), alpha=nu)
        w_inc = self.weight_inc
        w_inc.addmm_(v0.T, ph0, beta=mom, alpha=lr_b)
        w_inc.addmm_(v.T, ph, alpha=-lr_n)
        w_inc.addr_(mu, dhb, alpha=-lr).addr_(dvb, lam, alpha=-lr)
        g_lam = v0.T @ (ph0 @ lam) / v0.shape[0] - v.T @ (ph @ lam) / v.shape[0]  # G lam
        g_mu = ph0.T @ (v0 @ mu) / v0.shape[0] - ph.T @ (v @ mu) / v.shape[0]  # G' mu
        dw_lam = g_lam - mu * (dhb @ lam) - dvb * (lam @ lam)
        dw_mu = g_mu - dhb * (mu @ mu) - lam * (dvb @ mu)
        return dvb - dw_lam, dhb - dw_mu

    def _tempered_negative(self, g: torch.Generator, rate: bool
                           ) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """Parallel tempering's negative phase: k Gibbs steps of every tempered chain (p_beta
        of ``exp(-beta E)``: sigmoids of beta times the pre-activations), then swaps between
        neighbouring temperatures, the pairs (0,1), (2,3), ... on even updates and (1,2),
        (3,4), ... on odd ones, each accepted with probability
        ``min(1, exp((beta_i - beta_j)(E_i - E_j)))``. Returns the beta = 1 chains' visible
        sample and hidden probabilities before the swaps, and (when ``rate``) the fraction of
        the proposed swaps accepted."""
        c = self.settings
        w, vb, hb, beta = self.weight, self.visible_bias, self.hidden_bias, self.chain_betas
        h = self.chains
        for _ in range(c.k):
            v = bernoulli(torch.addmm(vb, h, w.T).mul_(beta).sigmoid_(), g)
            pre = torch.addmm(hb, v, w)
            ph = (pre * beta).sigmoid_()
            h = bernoulli(ph, g)
        n, temps = c.pcd_chains, c.pt_temperatures
        energy = (pre * h).sum(1).add_(v @ vb).neg_().view(temps, n)  # E(v, h) at beta = 1
        lo = torch.arange(self.step % 2, temps - 1, 2, device=h.device)
        accepted = None
        if lo.numel():
            b = self.betas
            log_ratio = (b[lo] - b[lo + 1])[:, None] * (energy[lo] - energy[lo + 1])
            accept = torch.empty_like(log_ratio).uniform_(generator=g) < log_ratio.exp()
            hs = h.view(temps, n, -1)
            low, high, keep = hs[lo], hs[lo + 1], accept[:, :, None]
            hs[lo] = torch.where(keep, high, low)
            hs[lo + 1] = torch.where(keep, low, high)
            accepted = float(accept.float().mean()) if rate else None
        self.chains = h
        return v[:n], ph[:n], accepted

    def _check(self, h: torch.Tensor, micro_batch: int) -> None:
        if self.defer_checks:
            if self._first_bad is None:
                self._first_bad = torch.full((), -1, dtype=torch.int64, device=h.device)
            bad = ~torch.isfinite(h.sum())
            self._first_bad.masked_fill_(bad & (self._first_bad < 0), micro_batch)
            return
        if not torch.isfinite(h.sum()):
            self._non_finite(micro_batch)

    def _non_finite(self, micro_batch: int) -> None:
        raise NonFiniteError(
            self.index, micro_batch, "hidden activations",
            "Its input or weights hold NaN/Inf: lower the learning rate (layers.N.lr), "
            "check the data, or for a gaussian layer standardise it (data.standardize=true).",
        )

    def check_activations(self) -> None:
        """Raise for the first micro-batch whose activations were flagged non-finite (deferred
        checks only; one host read)."""
        if self._first_bad is not None:
            first = int(self._first_bad)
            if first >= 0:
                self._non_finite(first)

    def check_parameters(self, micro_batch: int) -> None:
        self.check_activations()
        for name, p in self.named_parameters():
            if not torch.isfinite(p).all():
                raise NonFiniteError(
                    self.index, micro_batch, f"{name}",
                    "Training diverged: lower the learning rate (layers.N.lr) or momentum.",
                )

    def velocities(self) -> list[torch.Tensor]:
        """Each parameter's momentum buffer, in parameter order."""
        return [self.get_buffer(VELOCITY.format(name)) for name, _ in self.named_parameters()]

    def running_buffers(self) -> list[torch.Tensor]:
        """The buffers that are not velocities (persistent chains, the sparsity estimate)."""
        velocities = {VELOCITY.format(name) for name, _ in self.named_parameters()}
        return [b for name, b in self.named_buffers() if name not in velocities]


# ``step`` and the RNG state are part of a layer's state (a layer restored from it continues bit
# for bit) but are not tensors of the module: these hooks keep them in ``state_dict`` under the
# names the state files have always used, after the parameters and buffers.
_STEP, _RNG = "step", "rng_state"


def _save_counters(module: torch.nn.Module, state: dict[str, Any], prefix: str,
                   local_metadata: dict[str, Any]) -> None:
    assert isinstance(module, RBM)
    state[prefix + _STEP] = torch.tensor(module.step, dtype=torch.int64)
    state[prefix + _RNG] = module.generator.get_state()


def _load_counters(module: torch.nn.Module, state: dict[str, Any], prefix: str,
                   local_metadata: dict[str, Any], strict: bool, missing_keys: list[str],
                   unexpected_keys: list[str], error_msgs: list[str]) -> None:
    """Check the whole state before anything changes (the layer's own keys, every tensor's
    shape: ValueError naming the layer), then take the counters out of it; the module loads the
    tensors."""
    assert isinstance(module, RBM)
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    own = [*tensors, _STEP, _RNG]
    given = {k[len(prefix):] for k in state if k.startswith(prefix)}
    if strict and given != set(own):
        raise ValueError(f"layer {module.index}: state keys {sorted(given)} do not match "
                         f"{sorted(own)}")
    for name, current in tensors.items():
        got = state.get(prefix + name)
        if got is not None and got.shape != current.shape:
            raise ValueError(f"layer {module.index}: {name} has shape {tuple(got.shape)}, "
                             f"expected {tuple(current.shape)}")
    if prefix + _STEP in state:
        module.step = int(state.pop(prefix + _STEP))
    if prefix + _RNG in state:
        module.generator.set_state(state.pop(prefix + _RNG).cpu())
