"""The cost model: FLOPs of a CD-k step, bytes to hold a layer."""

from __future__ import annotations

import pytest

from pipedbn.balancer import cd_flops, forward_flops, param_count, state_bytes
from pipedbn.balancer.cost import (
    alltoall_s,
    hierarchical_allreduce_s,
    leaders_allreduce_s,
    ring_allreduce_s,
)


def test_cd_flops_counts_up_pass_gibbs_steps_and_gradients():
    n, m = 784, 500
    assert cd_flops(n, m, 1) == 10 * n * m
    for k in range(1, 6):
        assert cd_flops(n, m, k + 1) - cd_flops(n, m, k) == 4 * n * m
    assert forward_flops(n, m) == 2 * n * m


def test_param_count():
    assert param_count(784, 500) == 784 * 500 + 784 + 500
    assert param_count(1, 1) == 3


def test_state_bytes_holds_params_twice_chains_and_buffers():
    n, m, batch = 100, 50, 32
    params = n * m + n + m
    cd = state_bytes(n, m, batch, chains=0, dtype_bytes=4)
    assert cd == 4 * (2 * params + 4 * batch * (n + m))
    pcd = state_bytes(n, m, batch, chains=64, dtype_bytes=4)
    assert pcd - cd == 4 * 64 * m
    assert state_bytes(n, m, batch, chains=64, dtype_bytes=2) * 2 == pcd


@pytest.mark.parametrize("call, match", [
    (lambda: cd_flops(0, 5, 1), "both sizes"),
    (lambda: cd_flops(5, 5, 0), "k must be >= 1"),
    (lambda: state_bytes(5, 5, 0, 0, 4), "batch size"),
    (lambda: state_bytes(5, 5, 8, -1, 4), "chains"),
    (lambda: state_bytes(5, 5, 8, 0, 0), "dtype"),
])
def test_bad_shapes_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_ring_allreduce_moves_two_r_minus_one_over_r_of_the_bytes():
    # the figure: 16 MB over 16 replicas at 25 GB/s is 1.2 ms of bytes, 30 latencies
    assert ring_allreduce_s(16e6, 16, 0.0, 25e9) == pytest.approx(1.2e-3)
    assert ring_allreduce_s(16e6, 16, 1e-5, 25e9) == pytest.approx(1.2e-3 + 30e-5)
    assert ring_allreduce_s(16e6, 1, 1e-5, 25e9) == 0.0
    # the point-to-point exchange it replaces: 15 x 16 MB, 9.6 ms
    assert alltoall_s(16e6, 16, 0.0, 25e9) == pytest.approx(9.6e-3)
    assert alltoall_s(16e6, 64, 0.0, 25e9) == pytest.approx(40.32e-3)


def test_hierarchical_allreduce_closed_form():
    intra, inter = (8e-6, 300e9), (15e-6, 25e9)
    n = 16e6
    # 2 nodes of 8: reduce-scatter and all-gather of 7 steps inside, 8 shard rings of 2 nodes
    inside = 2 * 7 * (8e-6 + n / (8 * 300e9))
    across = 2 * 1 * (15e-6 + n / (8 * 2 * 25e9))
    assert hierarchical_allreduce_s(n, [8, 8], intra, inter) == pytest.approx(inside + across)
    # the slow link carries 1/g of what a flat ring over the 16 replicas would put on it
    flat = ring_allreduce_s(n, 16, 0.0, 25e9)
    assert hierarchical_allreduce_s(n, [8, 8], (0.0, 1e30), (0.0, 25e9)) == pytest.approx(
        n / 8 / 25e9)
    assert flat / (n / 8 / 25e9) == pytest.approx(2 * 15 / 16 * 8)
    # one node: the ring on the intra link; one replica per node: the ring on the inter link
    assert hierarchical_allreduce_s(n, [5], intra, inter) == ring_allreduce_s(n, 5, *intra)
    assert hierarchical_allreduce_s(n, [1, 1, 1], intra, inter) == pytest.approx(
        ring_allreduce_s(n, 3, *inter))
    assert hierarchical_allreduce_s(n, [0, 1, 0], intra, inter) == 0.0
    # uneven: the fullest node sets the inside phases, the emptiest the shard size
    uneven = 2 * 4 * (8e-6 + n / (5 * 300e9)) + 2 * (15e-6 + n / (4 * 2 * 25e9))
    assert hierarchical_allreduce_s(n, [5, 4], intra, inter) == pytest.approx(uneven)


def test_leader_all_reduce_puts_the_whole_bucket_on_one_link_per_node():
    intra, inter, n = (8e-6, 300e9), (15e-6, 25e9), 16e6
    inside = 4 * 7 * (8e-6 + n / (8 * 300e9))
    across = 2 * 1 * (15e-6 + n / (2 * 25e9))
    assert leaders_allreduce_s(n, [8, 8], intra, inter) == pytest.approx(inside + across)
    # one node: no leaders' ring, the plain ring
    assert leaders_allreduce_s(n, [6], intra, inter) == ring_allreduce_s(n, 6, *intra)
    # against the shard rings: 8 times the bytes on the slow link
    no_latency = (0.0, 1e30), (0.0, 25e9)
    assert leaders_allreduce_s(n, [8, 8], *no_latency) == pytest.approx(
        8 * hierarchical_allreduce_s(n, [8, 8], *no_latency))
