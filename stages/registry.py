"""The registry of layer kinds: the one place pipedbn looks a kind up by its config name."""

from __future__ import annotations

from pipedbn.model.rbm import RBM

_KINDS: dict[str, type[RBM]] = {}


def register(cls: type[RBM]) -> type[RBM]:
    """Class decorator: make ``cls`` available as ``kind: <cls.kind>`` in configs."""
    assert cls.kind not in _KINDS, f"layer kind {cls.kind!r} registered twice"
    _KINDS[cls.kind] = cls
    return cls


def _load_builtin() -> None:
    from stages import bernoulli, gaussian  # noqa: F401  (importing registers them)


def kinds() -> list[str]:
    _load_builtin()
    return sorted(_KINDS)


def get(kind: str) -> type[RBM]:
    _load_builtin()
    try:
        return _KINDS[kind]
    except KeyError:
        known = ", ".join(sorted(_KINDS))
        raise ValueError(f"unknown layer kind {kind!r}; known: {known}") from None
