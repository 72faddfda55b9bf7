"""The value checks every section shares; each returns the problems it found (``path: message``)."""

from __future__ import annotations


def positive(where: str, value: float | int | None, strict: bool = True) -> list[str]:
    """``value`` > 0 (``strict``) or >= 0; None (a default still to be filled) passes."""
    if value is not None and (value <= 0 if strict else value < 0):
        return [f"{where}: must be {'>' if strict else '>='} 0, got {value}"]
    return []
