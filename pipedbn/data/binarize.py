"""Stochastic binarisation fixed by a seed: the "binarized MNIST" of Salakhutdinov & Murray (2008).

Each value p in [0, 1] becomes 1 with probability p. The uniform compared with p is a hash of
(seed, sample index, feature), not a draw from a generator's stream, so a sample binarises the
same whichever process reads it, in whatever order or batch: one fixed binary data set per seed,
like the published one (which was sampled once and then kept).
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (a bijection of uint64 with good avalanche)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, rows: np.ndarray, features: int) -> np.ndarray:
    """[len(rows), features] float32 uniforms in [0, 1), a pure function of (seed, row, feature)
    (24-bit: every value is exactly representable in float32)."""
    r = np.asarray(rows, dtype=np.uint64).reshape(-1, 1)
    cols = np.arange(features, dtype=np.uint64).reshape(1, -1)
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed) * _GOLDEN + _GOLDEN)  # the seed's own stream
        z = _mix((r * np.uint64(features) + cols) * _GOLDEN ^ key)
    return ((z >> np.uint64(40)).astype(np.float32)) * np.float32(2.0**-24)


def stochastic_binarize(x: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    """Values in [0, 1] -> 0/1 (float32), 1 with probability x; ``rows`` are the samples' indices
    in their source. Non-finite values stay NaN so that the data checks still report them."""
    u = uniforms(seed, rows, x.shape[1])
    return np.where(np.isfinite(x), u < x, np.nan).astype(np.float32)
