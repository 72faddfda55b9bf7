"""The labels a ``label`` top layer trains on (``layers[-1].labels``): the data's own labels used
as class indices, checked once when the data opens (whole numbers in [0, K), one per sample)."""

from __future__ import annotations

import numpy as np

from pipedbn.data.datasets import Source
from pipedbn.errors import DataError


def class_indices(src: Source, classes: int, field: str) -> np.ndarray:
    """``src``'s labels as int64 class indices, or DataError naming the first bad one
    (``field``: the config field that asks for ``classes`` label units)."""
    where = f"{field}={classes}"
    if src.labels is None:
        raise DataError(f"data: {src.description} has no labels, which label units "
                        f"({where}) train on: set data.labels (an IDX labels file for idx, an "
                        "array name for .npz; digits, mnist5k, mnist and fashion-mnist have "
                        "labels) or remove the labels of the top layer")
    y = np.asarray(src.labels).reshape(-1)
    whole = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and bool(np.all(np.mod(y, 1) == 0)))
    bad = np.flatnonzero(~((y >= 0) & (y < classes))) if whole else \
        np.flatnonzero(np.mod(y, 1) != 0)
    if len(bad) or not whole:
        i = int(bad[0])
        raise DataError(f"data: label {y[i].item()!r} of sample {i} ({src.description}) is not a "
                        f"class index in [0, {classes}) for {where}: make the labels whole "
                        f"numbers 0..{classes - 1}, or set the top layer's labels to the "
                        "number of classes")
    return y.astype(np.int64)
