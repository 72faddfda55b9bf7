"""The cost model: FLOPs of a CD-k step, bytes to hold a layer."""

from __future__ import annotations

import pytest

from pipedbn.balancer import cd_flops, forward_flops, param_count, state_bytes


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
