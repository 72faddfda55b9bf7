"""Gaussian-Bernoulli RBM with a learned, bounded variance per visible unit (``gaussian-var``).

The energy of Cho, Ilin & Raiko, "Improved learning of Gaussian-Bernoulli restricted Boltzmann
machines" (ICANN 2011), with sigma_i^2 = exp(z_i) and z = ``log_var`` learned:

    E(v, h) = sum_i (v_i - b_i)^2 / (2 sigma_i^2) - sum_ij (v_i / sigma_i^2) W_ij h_j - c.h

so p(h_j = 1 | v) = sigmoid(c_j + sum_i W_ij v_i / sigma_i^2), p(v_i | h) = N(b_i + (W h)_i,
sigma_i^2), and

    F(v) = sum_i (v_i - b_i)^2 / (2 sigma_i^2) - sum_j softplus(c_j + ((v / sigma^2) W)_j).

Summing out v in closed form gives log sum_v exp(-E(v, h)) = c.h + sum_i [((b + W h)_i^2 - b_i^2)
/ (2 sigma_i^2) + log(2 pi sigma_i^2) / 2], so the exact log-likelihood enumerates the hidden
side. The log-likelihood gradient is <.>_data - <.>_model of

    dW_ij: v_i h_j / sigma_i^2,  db_i: v_i / sigma_i^2,  dc_j: h_j,
    dz_i: exp(-z_i) ((v_i - b_i)^2 / 2 - v_i (W h)_i).

The update takes the hidden probabilities from v / sigma^2 (``visible_input``) but steps W and b
along sigma_i^2 times their gradient, i.e. the shared CD-k / PCD-k products with v itself
(a learning rate lr sigma_i^2 per visible unit): the plain gradient's 1 / sigma_i^2 makes the
step of a unit whose variance falls to the bound 100 times larger, and on standardised digits
(64x12, lr 0.01, CD-1) that diverged within 20 epochs (held-out reconstruction error 4e5);
preconditioned, it trains as the unit-variance kind does. z steps along its plain gradient dz
with the same lr and momentum.

(h replaced by p(h | v) in both phases). CD's last visible step is the noise-free mean, whose
(v - b)^2 lacks the conditional variance: the model term adds it back (sigma_i^2 / 2 inside,
i.e. 1/2 after the exp(-z_i) factor), else CD would push every variance up to the bound.

Learning the variances is unstable (Cho et al. 2011; users of PyDeep's and learnergy's
variance RBMs report divergence): after every update z is clamped to [log VAR_MIN, log VAR_MAX],
sigma^2 in [0.01, 10] (pipedbn's bound, for standardised data: a unit whose data variance is 0
would otherwise shrink sigma without limit and its likelihood grow with it). z starts at 0
(unit variance, the ``gaussian`` kind).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pipedbn.model.rbm import RBM, Params, RBMSettings

VAR_MIN = 0.01
VAR_MAX = 10.0
LOG_VAR_BOUNDS = (math.log(VAR_MIN), math.log(VAR_MAX))


class GaussianVarRBM(RBM):
    kind = "gaussian-var"
    default_lr = 0.01
    stackable = False
    extra_parameters = ("log_var",)
    exact_likelihood = "hidden"

    log_var: torch.nn.Parameter
    log_var_inc: torch.Tensor

    def __init__(self, n_visible: int, n_hidden: int, settings: RBMSettings, **kw: Any) -> None:
        super().__init__(n_visible, n_hidden, settings, **kw)
        z = torch.zeros(n_visible, device=self.device, dtype=self.dtype)
        self.register_parameter("log_var", torch.nn.Parameter(z, requires_grad=False))
        self.register_buffer("log_var_inc", torch.zeros_like(z))

    def init_visible_bias(self, mean: torch.Tensor | None, n: int, **kw: Any) -> torch.Tensor:
        return mean.clone() if mean is not None else torch.zeros(n, **kw)

    @classmethod
    def extra_shapes(cls, n_visible: int, n_hidden: int) -> dict[str, tuple[int, ...]]:
        return {"log_var": (n_visible,)}

    @staticmethod
    def visible_link(pre: torch.Tensor) -> torch.Tensor:
        return pre

    @staticmethod
    def draw_visible(mean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError("gaussian-var samples need its variances: use draw_of")

    @staticmethod
    def visible_energy(v: torch.Tensor, visible_bias: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("gaussian-var's energy needs its variances: use "
                                  "visible_terms_of")

    # -- from parameters (export files, Model, eval) ----------------------------------------
    @classmethod
    def hidden_pre_of(cls, p: Params, v: torch.Tensor) -> torch.Tensor:
        return torch.addmm(p["hidden_bias"], v * torch.exp(-p["log_var"]), p["weight"])

    @classmethod
    def visible_terms_of(cls, p: Params, v: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((v - p["visible_bias"]).square() * torch.exp(-p["log_var"])).sum(1)

    @classmethod
    def draw_of(cls, p: Params, mean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.empty_like(mean).normal_(generator=generator)
        return noise.mul_(torch.exp(0.5 * p["log_var"])).add_(mean)

    @classmethod
    def log_hidden_marginal(cls, p: Params, h: torch.Tensor) -> torch.Tensor:
        vb, z = p["visible_bias"], p["log_var"]
        mean = torch.addmm(vb, h, p["weight"].T)
        quad = ((mean.square() - vb.square()) * torch.exp(-z)).sum(1)
        return (h @ p["hidden_bias"] + 0.5 * quad
                + 0.5 * float((z + math.log(2 * math.pi)).sum()))

    # -- the module's own ---------------------------------------------------------------------
    def visible_input(self, v: torch.Tensor) -> torch.Tensor:
        return v * torch.exp(-self.log_var)

    def draw(self, mean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.empty_like(mean).normal_(generator=generator)
        return noise.mul_(torch.exp(0.5 * self.log_var)).add_(mean)

    def extra_update(self, v0: torch.Tensor, ph0: torch.Tensor, v: torch.Tensor,
                     ph: torch.Tensor, lr: float, momentum: float, v_is_mean: bool) -> None:
        z, vb, w = self.log_var, self.visible_bias, self.weight
        positive = self.variance_statistic(v0, ph0, vb, w).mean(0)
        negative = self.variance_statistic(v, ph, vb, w).mean(0)
        if v_is_mean:
            negative += 0.5 * torch.exp(z)
        grad = (positive - negative).mul_(torch.exp(-z))
        self.log_var_inc.mul_(momentum).add_(grad, alpha=lr)
        z.add_(self.log_var_inc).clamp_(*LOG_VAR_BOUNDS)

    @staticmethod
    def variance_statistic(v: torch.Tensor, ph: torch.Tensor, vb: torch.Tensor,
                           w: torch.Tensor) -> torch.Tensor:
        """(v - b)^2 / 2 - v (W ph) per row and visible unit: -dE/dz without its exp(-z)."""
        return (v - vb).square_().mul_(0.5) - v * (ph @ w.T)

    def variance(self) -> torch.Tensor:
        return torch.exp(self.log_var)

    def histogram_values(self) -> dict[str, torch.Tensor]:
        return {"variance": self.variance()}
