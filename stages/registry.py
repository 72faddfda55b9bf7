"""The registry of layer kinds: the one place pipedbn looks a kind up by its config name.

The built-in kinds are listed here; a kind defined elsewhere joins with ``register``."""

from __future__ import annotations

from pipedbn.model.rbm import RBM
from stages.bernoulli import BernoulliRBM
from stages.gaussian import GaussianRBM
from stages.gaussian_var import GaussianVarRBM
from stages.label import LabelRBM
from stages.nrelu import BernoulliNReLURBM, GaussianNReLURBM

_KINDS: dict[str, type[RBM]] = {}


def register(cls: type[RBM]) -> type[RBM]:
    """Make ``cls`` available as ``kind: <cls.kind>`` in configs (usable as a decorator)."""
    assert cls.kind not in _KINDS, f"layer kind {cls.kind!r} registered twice"
    _KINDS[cls.kind] = cls
    return cls


register(BernoulliRBM)
register(GaussianRBM)
register(LabelRBM)
register(BernoulliNReLURBM)
register(GaussianNReLURBM)

register(GaussianVarRBM)


def kinds() -> list[str]:
    return sorted(_KINDS)


def get(kind: str) -> type[RBM]:
    try:
        return _KINDS[kind]
    except KeyError:
        known = ", ".join(sorted(_KINDS))
        raise ValueError(f"unknown layer kind {kind!r}; known: {known}") from None


def chain_problem(below: str, kind: str) -> str | None:
    """Why a layer of ``kind`` cannot sit on a layer of kind ``below`` (None: it can). Binary
    visible units need binary input; real-valued visible units take real-valued hidden units
    (nrelu), otherwise only data (the first layer)."""
    low, up = get(below), get(kind)
    if not low.binary_hidden:
        if up.unit_visible:
            return (f"{kind!r} has binary visible units, but the layer below ({below!r}) passes "
                    "up non-negative real values; use 'gaussian-nrelu' or 'gaussian' above it")
        return None
    if not up.stackable:
        return (f"{kind!r} layers take real-valued input and can only be the first layer (or "
                "sit on an nrelu layer); use 'bernoulli' above it")
    return None
