"""Noisy rectified linear hidden units (Nair & Hinton, "Rectified linear units improve
restricted Boltzmann machines", ICML 2010), under binary or unit-variance Gaussian visible units.

The model is the one Nair & Hinton derive the unit from: each hidden unit stands for infinitely
many binary copies sharing its weights, copy i with bias offset -(i - 1/2) ("stepped sigmoid
units"), so h_j counts the copies that are on. Given v, with x = v W + hb,

- minus the hidden part of the free energy is exact: sum_j sum_{i>=1} softplus(x_j - i + 1/2)
  (``hidden_log_sum``; the terms beyond max(x) + 40 are below 1e-17 and left out), which is
  what the exact likelihood and the free-energy measures use;
- E[h_j | v] = sum_i sigmoid(x_j - i + 1/2) (``ssu_mean``), approximated as softplus(x_j)
  (``hidden_link``: the positive-phase statistic and what the layer passes up; the two differ
  by less than 0.02);
- a sample is the noisy rectified unit max(0, x + N(0, sigmoid(x))) (``draw_hidden``), the
  approximation Nair & Hinton train with.

The visible conditionals are those of the visible kind with h real-valued: sigmoid(h W' + vb)
or h W' + vb. The hidden units are non-negative reals, so the layer above an nrelu layer must
take real-valued input (``gaussian-nrelu`` or ``gaussian``; ``stages.registry.chain_problem``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from pipedbn.model.rbm import RBM, Enumeration
from stages.bernoulli import BernoulliRBM
from stages.gaussian import GaussianRBM

_TAIL = 40
"""Copies summed beyond the largest pre-activation: softplus(-39.5) < 1e-17."""


def ssu_terms(pre: torch.Tensor) -> int:
    """How many copies the sums over copies take for these pre-activations."""
    top = float(pre.max()) if pre.numel() else 0.0
    return max(math.ceil(top), 0) + _TAIL


def ssu_mean(pre: torch.Tensor) -> torch.Tensor:
    """The exact E[h | v] of the model: sum_i sigmoid(pre - i + 1/2)."""
    out = torch.zeros_like(pre)
    for i in range(1, ssu_terms(pre) + 1):
        out += torch.sigmoid(pre - (i - 0.5))
    return out


class NReLUHidden(RBM):
    """The hidden side of an nrelu kind (combined with a visible kind below)."""

    # real-valued hidden units: only a binary visible side enumerates (bernoulli-nrelu)
    exact_likelihood: ClassVar[Enumeration] = "none"
    ais = False  # AIS needs exact hidden samples, which nrelu units approximate
    binary_hidden = False
    hidden_activation = torch.nn.Softplus

    @staticmethod
    def hidden_link(pre: torch.Tensor) -> torch.Tensor:
        return F.softplus(pre)

    @staticmethod
    def draw_hidden(pre: torch.Tensor, mean: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
        noise = torch.empty_like(pre).normal_(generator=generator)
        return noise.mul_(pre.sigmoid().sqrt_()).add_(pre).clamp_min_(0.0)

    @staticmethod
    def hidden_log_sum(pre: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(pre.shape[0], dtype=pre.dtype, device=pre.device)
        for i in range(1, ssu_terms(pre) + 1):
            out += F.softplus(pre - (i - 0.5)).sum(1)
        return out


class BernoulliNReLURBM(NReLUHidden, BernoulliRBM):
    """Binary visible units, noisy rectified hidden units (PyDeep's ``BinaryRectRBM``)."""

    kind = "bernoulli-nrelu"
    default_lr = 0.01
    temperable = False
    exact_likelihood: ClassVar[Enumeration] = "visible"


class GaussianNReLURBM(NReLUHidden, GaussianRBM):
    """Unit-variance Gaussian visible units, noisy rectified hidden units (learnergy's
    ``GaussianReluRBM``, PyDeep's ``GaussianRectRBM``)."""

    kind = "gaussian-nrelu"
    default_lr = 0.001
