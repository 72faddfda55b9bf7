"""Exact log-likelihood of a small RBM, and its exact gradient, by enumerating one side.

Enumeration is over the smaller layer: 2^n states for n <= ``MAX_ENUMERATED`` units, in chunks.
Which side a kind allows is its ``exact_likelihood`` (``RBM``): Bernoulli-Bernoulli either side;
the Gaussian kinds the hidden side only, where the integral over v is closed-form (the kind's
``log_hidden_marginal``); binary visible units under real-valued (nrelu) hidden units the visible
side, through the kind's free energy.
"""

from __future__ import annotations

import torch

from pipedbn.model.rbm import RBM, Params, free_energy_of
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
    return registry.get(kind).log_hidden_marginal(
        {"weight": w, "visible_bias": vb, "hidden_bias": hb}, h)


def enumerable_units(kind: type[RBM], n_visible: int, n_hidden: int) -> int | None:
    """How many binary units exact evaluation of a ``kind`` layer enumerates (2^n states), or
    None when the kind has no exact likelihood (``RBM.exact_likelihood``)."""
    if kind.exact_likelihood == "either":
        return min(n_visible, n_hidden)
    if kind.exact_likelihood == "visible":
        return n_visible
    return n_hidden if kind.exact_likelihood == "hidden" else None


def enumerable(kind: str, n_visible: int, n_hidden: int, limit: int = MAX_ENUMERATED) -> bool:
    """Whether ``log_partition`` enumerates a layer of ``kind`` and this shape within
    ``limit`` units."""
    units = enumerable_units(registry.get(kind), n_visible, n_hidden)
    return units is not None and units <= limit


def log_partition_of(kind: type[RBM], p: Params) -> torch.Tensor:
    """log Z of a ``kind`` layer with parameters ``p`` (any of its kind's), enumerating the
    side ``enumerable_units`` names (float64)."""
    q = {name: t.double() for name, t in p.items()}
    w = q["weight"]
    n_v, n_h = w.shape
    units = enumerable_units(kind, n_v, n_h)
    if units is None:
        raise ValueError(f"exact likelihood: not available for layer kind {kind.kind!r}")
    if units == n_h and kind.exact_likelihood != "visible":
        _check(n_h)
        parts = [kind.log_hidden_marginal(q, _states(n_h, lo, min(lo + _CHUNK, 2**n_h),
                                                     w.dtype, w.device))
                 for lo in range(0, 2**n_h, _CHUNK)]
    else:
        _check(n_v)
        parts = []
        for lo in range(0, 2**n_v, _CHUNK):
            v = _states(n_v, lo, min(lo + _CHUNK, 2**n_v), w.dtype, w.device)
            parts.append(-free_energy_of(kind, q, v))
    return torch.logsumexp(torch.cat(parts), 0)


def log_partition(weight: torch.Tensor, visible_bias: torch.Tensor, hidden_bias: torch.Tensor,
                  kind: str = "bernoulli") -> torch.Tensor:
    """log Z, enumerating the smaller side (float64), for a kind of the three PARAMETERS."""
    return log_partition_of(registry.get(kind), {"weight": weight, "visible_bias": visible_bias,
                                                 "hidden_bias": hidden_bias})


def log_likelihood_of(kind: type[RBM], p: Params, v: torch.Tensor) -> torch.Tensor:
    """Mean log p(v) over the rows of v, exactly (float64, differentiable), for any kind with
    an exact likelihood."""
    q = {name: t.double() for name, t in p.items()}
    return -free_energy_of(kind, q, v.double()).mean() - log_partition_of(kind, q)


def log_likelihood(weight: torch.Tensor, visible_bias: torch.Tensor, hidden_bias: torch.Tensor,
                   v: torch.Tensor, kind: str = "bernoulli") -> torch.Tensor:
    """Mean log p(v) over the rows of v, exactly (float64, differentiable)."""
    return log_likelihood_of(registry.get(kind), {"weight": weight, "visible_bias": visible_bias,
                                                  "hidden_bias": hidden_bias}, v)


def exact_gradient(weight: torch.Tensor, visible_bias: torch.Tensor, hidden_bias: torch.Tensor,
                   v: torch.Tensor) -> dict[str, torch.Tensor]:
    """d mean log p(v) / d(W, vb, hb) of a Bernoulli RBM: data term minus model expectation,
    the model expectation taken exactly by enumerating the hidden states."""
    w, vb, hb, v = (t.double() for t in (weight, visible_bias, hidden_bias, v))
    n_v, n_h = w.shape
    _check(n_h)
    ph = torch.addmm(hb, v, w).sigmoid()
    h = _states(n_h, 0, 2**n_h, w.dtype, w.device)
    log_p = _hidden_side_terms("bernoulli", w, vb, hb, h)
    p = torch.softmax(log_p, 0)  # p(h) under the model
    ev_h = torch.addmm(vb, h, w.T).sigmoid()  # E[v | h]
    model_vh = (ev_h * p[:, None]).T @ h
    return {
        "weight": v.T @ ph / len(v) - model_vh,
        "visible_bias": v.mean(0) - p @ ev_h,
        "hidden_bias": ph.mean(0) - p @ h,
    }
