"""What one RBM layer costs: FLOPs of a training step, bytes a rank needs to hold it.

The planner only needs relative costs (seconds per micro-batch follow from FLOPs divided by a
rank's measured or assumed FLOP rate), so these are counts of the dominant matrix products; the
elementwise work (sigmoids, sampling, bias updates) is O(n_in + n_out) per sample and left out.
"""

from __future__ import annotations


def _check_shape(n_in: int, n_out: int) -> None:
    if n_in < 1 or n_out < 1:
        raise ValueError(f"layer shape {n_in} x {n_out}: both sizes must be >= 1")


def param_count(n_in: int, n_out: int) -> int:
    """Parameters of an RBM with ``n_in`` visible and ``n_out`` hidden units: W, b_v, b_h."""
    _check_shape(n_in, n_out)
    return n_in * n_out + n_in + n_out


def cd_flops(n_in: int, n_out: int, k: int) -> float:
    """FLOPs per sample of one CD-k (or PCD-k) update of an ``n_in`` x ``n_out`` RBM.

    A multiply-add counts as 2 FLOPs, so one product with W costs ``2 * n_in * n_out``:

    - one up pass from the data, ``h0 = sigmoid(v0 W + b_h)``: ``2nm``;
    - k Gibbs steps, each a down pass and an up pass: ``4knm``;
    - the two gradient products ``v0^T h0`` and ``vk^T hk``: ``4nm``.

    In all ``(6 + 4k) * n_in * n_out``.
    """
    _check_shape(n_in, n_out)
    if k < 1:
        raise ValueError(f"CD-k with k = {k}: k must be >= 1 Gibbs step")
    return float((6 + 4 * k) * n_in * n_out)


def forward_flops(n_in: int, n_out: int) -> float:
    """FLOPs per sample of passing data up through a frozen layer: one product with W."""
    _check_shape(n_in, n_out)
    return float(2 * n_in * n_out)


def state_bytes(n_in: int, n_out: int, batch: int, chains: int, dtype_bytes: int) -> int:
    """Bytes a rank needs to hold and train one layer (an estimate for planning, not a bound).

    - parameters twice: their values and their momentum;
    - the persistent chains of PCD, ``chains`` hidden states of ``n_out`` units (0 for CD);
    - working buffers: about 4 activations of ``batch x (n_in + n_out)`` (data, hidden
      probabilities and samples, the chain's end) alive at once during a step.
    """
    _check_shape(n_in, n_out)
    if batch < 1:
        raise ValueError(f"batch size {batch}: must be >= 1")
    if chains < 0:
        raise ValueError(f"{chains} persistent chains: must be >= 0 (0 for plain CD)")
    if dtype_bytes < 1:
        raise ValueError(f"dtype of {dtype_bytes} bytes: must be >= 1 (4 for float32)")
    values = 2 * param_count(n_in, n_out) + chains * n_out + 4 * batch * (n_in + n_out)
    return values * dtype_bytes
