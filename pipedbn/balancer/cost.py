"""What one RBM layer costs: FLOPs of a training step, bytes a rank needs to hold it; what
the replicas' sync costs as the collective it is (ring, two-level, point-to-point).

The planner only needs relative costs (seconds per micro-batch follow from FLOPs divided by a
rank's measured or assumed FLOP rate), so these are counts of the dominant matrix products; the
elementwise work (sigmoids, sampling, bias updates) is O(n_in + n_out) per sample and left out.
"""

from __future__ import annotations

from collections.abc import Sequence


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


# -- what a replicas' sync costs: the collective it is ---------------------------------------------

def ring_allreduce_s(nbytes: float, ranks: int, latency: float, bandwidth: float) -> float:
    """Seconds of a ring all-reduce of ``nbytes`` over ``ranks`` on links of ``latency`` and
    ``bandwidth``: a reduce-scatter and an all-gather, ``ranks - 1`` steps each, every step moving
    one ``nbytes / ranks`` chunk per rank, so ``2 (r - 1) (latency + nbytes / (r bandwidth))``
    (each rank sends ``2 (r - 1) / r x nbytes`` in all)."""
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) * (latency + nbytes / (ranks * bandwidth))


def hierarchical_allreduce_s(nbytes: float, per_node: Sequence[int],
                             intra: tuple[float, float], inter: tuple[float, float]) -> float:
    """Seconds of the two-level all-reduce of ``nbytes`` over replicas placed ``per_node`` (a
    count per node they use), links ``(latency, bandwidth)`` inside (``intra``) and between
    (``inter``) nodes:

    1. inside each node a ring reduce-scatter, so each of its g ranks holds 1/g of the node's
       sum: ``(g - 1) (a_i + n / (g B_i))``, the fullest node (``g_max``) last;
    2. ``g_min`` rings across the m nodes at once, one per local rank, each all-reducing one
       ``n / g_min`` shard: ``2 (m - 1) (a_e + n / (g_min m B_e))`` (the slow links carry
       ``1 / g_min`` of the bytes a flat ring would);
    3. inside each node a ring all-gather, as step 1.

    On one node it is the ring (``ring_allreduce_s`` on the intra link); with one replica per
    node, the ring on the inter link."""
    counts = [g for g in per_node if g > 0]
    if sum(counts) <= 1:
        return 0.0
    (a_i, b_i), (a_e, b_e) = intra, inter
    g_max, g_min, m = max(counts), min(counts), len(counts)
    inside = 2 * (g_max - 1) * (a_i + nbytes / (g_max * b_i)) if g_max > 1 else 0.0
    across = 2 * (m - 1) * (a_e + nbytes / (g_min * m * b_e)) if m > 1 else 0.0
    return inside + across


def alltoall_s(nbytes: float, ranks: int, latency: float, bandwidth: float) -> float:
    """Seconds of the point-to-point exchange (``ssp``, ``adaptive``): each replica sends its
    whole update to each of its ``r - 1`` peers, ``(r - 1) (latency + nbytes / bandwidth)``."""
    return (ranks - 1) * (latency + nbytes / bandwidth) if ranks > 1 else 0.0


def leaders_allreduce_s(nbytes: float, per_node: Sequence[int],
                        intra: tuple[float, float], inter: tuple[float, float]) -> float:
    """Seconds of the leader-based two-level all-reduce (``pipeline/collectives.py``: a reduce
    to each node's first replica, a ring all-reduce of the whole ``nbytes`` among the m leaders,
    a broadcast inside each node), the reduce and the broadcast each priced as a ring
    reduce-scatter and a gather (a scatter and an all-gather): ``4 (g_max - 1) (a_i + n / (g_max
    B_i)) + 2 (m - 1) (a_e + n / (m B_e))``. One NIC per node carries the whole bucket, so with a
    NIC per GPU it moves g times the bytes of ``hierarchical_allreduce_s``'s shard rings."""
    counts = [g for g in per_node if g > 0]
    if len(counts) <= 1:
        return hierarchical_allreduce_s(nbytes, per_node, intra, inter)
    (a_i, b_i), (a_e, b_e) = intra, inter
    g_max, m = max(counts), len(counts)
    inside = 4 * (g_max - 1) * (a_i + nbytes / (g_max * b_i)) if g_max > 1 else 0.0
    return inside + 2 * (m - 1) * (a_e + nbytes / (m * b_e))
