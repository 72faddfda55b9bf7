"""Exact log-likelihood of a small RBM, and its exact gradient, by enumerating one side.

Enumeration is over the smaller layer: 2^n states for n <= ``MAX_ENUMERATED`` units, in chunks.
Bernoulli-Bernoulli only when enumerating the visible side; Gaussian-Bernoulli (unit variance)
is handled through its hidden side, where the Gaussian integral over v is closed-form. Kinds with
real-valued hidden units (nrelu) enumerate their binary visible side through the free energy;
``enumerable`` says whether a layer can be enumerated at all.
"""

from __future__ import annotations

import math

import torch

from pipedbn.model.rbm import free_energy
from stages import registry

MAX_ENUMERATED = 24
_CHUNK = 1 << 14


def _states(n: int, lo: int, hi: int, dtype: torch.dtype,
            device: torch.device | None = None) -> torch.Tensor:
    """Rows lo..hi-1 of the 2^n binary states (bit j of the row index is unit j)."""
    idx = torch.arange(lo, hi, dtype=torch.int64, device=device)
    return ((idx[:, None] >> torch.arange(n, device=device)) & 1).to(dtype)


def _check(n: int) -> None:
    if n > MAX_ENUMERATED:
        raise ValueError(f"exact likelihood enumerates 2^{n} states; at most "
                         f"{MAX_ENUMERATED} units on the smaller side are supported")


def _hidden_side_terms(kind: str, w: torch.Tensor, vb: torch.Tensor, hb: torch.Tensor,
                       h: torch.Tensor) -> torch.Tensor:
    """log sum_v exp(-E(v, h)) for each row of h (the unnormalised log p(h))."""
    pre = torch.addmm(vb, h, w.T)  # (states, n_visible)
    if kind == "bernoulli":
        return h @ hb + torch.nn.functional.softplus(pre).sum(1)
    if kind == "gaussian":
        return (h @ hb + 0.5 * (pre.square().sum(1) - vb.square().sum())
                + 0.5 * w.shape[0] * math.log(2 * math.pi))
    raise ValueError(f"exact likelihood: unsupported layer kind {kind!r}")


def enumerable(kind: str, n_visible: int, n_hidden: int, limit: int = MAX_ENUMERATED) -> bool:
    """Whether ``log_partition`` enumerates a layer of ``kind`` and this shape within
    ``limit`` units."""
    cls = registry.get(kind)
    if not cls.binary_hidden:
        return cls.unit_visible and n_visible <= limit
    return (min(n_visible, n_hidden) if cls.unit_visible else n_hidden) <= limit


def log_partition(weight: torch.Tensor, visible_bias: torch.Tensor, hidden_bias: torch.Tensor,
                  kind: str = "bernoulli") -> torch.Tensor:
    """log Z, enumerating the smaller side (float64)."""
    w, vb, hb = (t.double() for t in (weight, visible_bias, hidden_bias))
    n_v, n_h = w.shape
    cls = registry.get(kind)
    if not cls.binary_hidden:
        if not cls.unit_visible:
            raise ValueError(f"exact likelihood: a {kind!r} layer has real-valued units on both "
                             "sides; nothing to enumerate")
        _check(n_v)
        return torch.logsumexp(torch.cat([
            -free_energy(cls, _states(n_v, lo, min(lo + _CHUNK, 2**n_v), w.dtype), w, vb, hb)
            for lo in range(0, 2**n_v, _CHUNK)]), 0)
    if n_h <= n_v or kind != "bernoulli":
        _check(n_h)
        parts = [_hidden_side_terms(kind, w, vb, hb, _states(n_h, lo, min(lo + _CHUNK, 2**n_h),
                                                             w.dtype, w.device))
                 for lo in range(0, 2**n_h, _CHUNK)]
    else:
        _check(n_v)
        parts = []
        for lo in range(0, 2**n_v, _CHUNK):
            v = _states(n_v, lo, min(lo + _CHUNK, 2**n_v), w.dtype, w.device)
            parts.append(v @ vb + torch.nn.functional.softplus(torch.addmm(hb, v, w)).sum(1))
    return torch.logsumexp(torch.cat(parts), 0)


def log_likelihood(weight: torch.Tensor, visible_bias: torch.Tensor, hidden_bias: torch.Tensor,
                   v: torch.Tensor, kind: str = "bernoulli") -> torch.Tensor:
    """Mean log p(v) over the rows of v, exactly (float64, differentiable)."""
    w, vb, hb = (t.double() for t in (weight, visible_bias, hidden_bias))
    log_z = log_partition(w, vb, hb, kind)
    return -free_energy(registry.get(kind), v.double(), w, vb, hb).mean() - log_z


def exact_gradient(weight: torch.Tensor, visible_bias: torch.Tensor, hidden_bias: torch.Tensor,
                   v: torch.Tensor) -> dict[str, torch.Tensor]:
    """d mean log p(v) / d(W, vb, hb) of a Bernoulli RBM: data term minus model expectation,
    the model expectation taken exactly by enumerating the hidden states."""
    w, vb, hb, v = (t.double() for t in (weight, visible_bias, hidden_bias, v))
    n_v, n_h = w.shape
    _check(n_h)
    ph = torch.addmm(hb, v, w).sigmoid()
    h = _states(n_h, 0, 2**n_h, w.dtype)
    log_p = _hidden_side_terms("bernoulli", w, vb, hb, h)
    p = torch.softmax(log_p, 0)  # p(h) under the model
    ev_h = torch.addmm(vb, h, w.T).sigmoid()  # E[v | h]
    model_vh = (ev_h * p[:, None]).T @ h
    return {
        "weight": v.T @ ph / len(v) - model_vh,
        "visible_bias": v.mean(0) - p @ ev_h,
        "hidden_bias": ph.mean(0) - p @ h,
    }
