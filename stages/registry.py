"""The registry of layer kinds: the one place pipedbn looks a kind up by its config name.

The built-in kinds are listed here; a kind defined elsewhere joins with ``register``."""

from __future__ import annotations

from pipedbn.model.rbm import RBM
from stages.bernoulli import BernoulliRBM
from stages.gaussian import GaussianRBM
from stages.gaussian_var import GaussianVarRBM

_KINDS: dict[str, type[RBM]] = {}


def register(cls: type[RBM]) -> type[RBM]:
    """Make ``cls`` available as ``kind: <cls.kind>`` in configs (usable as a decorator)."""
    assert cls.kind not in _KINDS, f"layer kind {cls.kind!r} registered twice"
    _KINDS[cls.kind] = cls
    return cls


register(BernoulliRBM)
register(GaussianRBM)
register(GaussianVarRBM)


def kinds() -> list[str]:
    return sorted(_KINDS)


def get(kind: str) -> type[RBM]:
    try:
        return _KINDS[kind]
    except KeyError:
        known = ", ".join(sorted(_KINDS))
        raise ValueError(f"unknown layer kind {kind!r}; known: {known}") from None
