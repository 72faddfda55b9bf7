"""Gaussian-Bernoulli RBM: real-valued visible units of unit variance, binary hidden units.

For standardised data (zero mean, unit variance per feature; ``data.standardize: true``), as in
Hinton's guide §13.2: E(v, h) = |v - vb|^2 / 2 - h.hb - v'Wh, so E[v | h] = Wh + vb and
F(v) = |v - vb|^2 / 2 - sum_j softplus(vW + hb)_j. Learning rates should be 1-2 orders of
magnitude below the binary case; the default is 0.01. Real-valued input only fits the first layer.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from pipedbn.model.rbm import RBM, Enumeration, Params


class GaussianRBM(RBM):
    kind = "gaussian"
    default_lr = 0.01
    stackable = False
    exact_likelihood: ClassVar[Enumeration] = "hidden"

    def init_visible_bias(self, mean: torch.Tensor | None, n: int, **kw: Any) -> torch.Tensor:
        return mean.clone() if mean is not None else torch.zeros(n, **kw)

    @staticmethod
    def visible_link(pre: torch.Tensor) -> torch.Tensor:
        return pre

    @staticmethod
    def draw_visible(mean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.empty_like(mean).normal_(generator=generator).add_(mean)

    @staticmethod
    def visible_energy(v: torch.Tensor, visible_bias: torch.Tensor) -> torch.Tensor:
        return 0.5 * (v - visible_bias).square().sum(1)

    @classmethod
    def log_hidden_marginal(cls, p: Params, h: torch.Tensor) -> torch.Tensor:
        # the Gaussian integral over v: exp(|Wh + vb|^2 / 2 - |vb|^2 / 2) (2 pi)^(n_visible / 2)
        vb = p["visible_bias"]
        pre = torch.addmm(vb, h, p["weight"].T)
        return (h @ p["hidden_bias"] + 0.5 * (pre.square().sum(1) - vb.square().sum())
                + 0.5 * vb.shape[0] * math.log(2 * math.pi))
