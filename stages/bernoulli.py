"""Bernoulli-Bernoulli RBM: binary (or [0, 1]) visible units, binary hidden units.

E(v, h) = -v.vb - h.hb - v'Wh;  F(v) = -v.vb - sum_j softplus(vW + hb)_j.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from pipedbn.model.rbm import RBM, Enumeration, Params, bernoulli


class BernoulliRBM(RBM):
    kind = "bernoulli"
    default_lr = 0.1
    unit_visible = True
    temperable = True

    exact_likelihood: ClassVar[Enumeration] = "either"
    ais = True

    def init_visible_bias(self, mean: torch.Tensor | None, n: int, **kw: Any) -> torch.Tensor:
        # Hinton's guide: log(p / (1 - p)) with p the fraction of the time unit i is on.
        if mean is None:
            return torch.zeros(n, **kw)
        p = mean.clamp(1e-3, 1 - 1e-3)
        return torch.log(p / (1 - p))

    @staticmethod
    def visible_link(pre: torch.Tensor) -> torch.Tensor:
        return pre.sigmoid_()

    @staticmethod
    def draw_visible(mean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return bernoulli(mean, generator)

    @staticmethod
    def visible_energy(v: torch.Tensor, visible_bias: torch.Tensor) -> torch.Tensor:
        return -(v @ visible_bias)

    @classmethod
    def log_hidden_marginal(cls, p: Params, h: torch.Tensor) -> torch.Tensor:
        pre = torch.addmm(p["visible_bias"], h, p["weight"].T)
        return h @ p["hidden_bias"] + torch.nn.functional.softplus(pre).sum(1)
