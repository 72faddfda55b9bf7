"""RBM layers: exact likelihood and gradient, the CD-k/PCD-k update, state, kinds, divergence."""

from __future__ import annotations

import ast
import io
import itertools
import math
from pathlib import Path

import pytest
import torch

from pipedbn.config import LayerConfig, load_config, resolve_defaults
from pipedbn.errors import NonFiniteError
from pipedbn.eval.likelihood import exact_gradient, log_likelihood, log_partition
from pipedbn.model.rbm import PARAMETERS, RBM, RBMSettings, layer_seed, replica_rates
from stages import registry


def layer_cfg(**fields: object) -> LayerConfig:
    overrides = [f"layers.0.{k}={v}" for k, v in fields.items()]
    cfg = load_config(None, ["layers=[{hidden: 4}]", "train.batch_size=8", *overrides])
    return resolve_defaults(cfg).layers[0]


def make(n_v: int, n_h: int, *, seed: int = 0, index: int = 0, total: int = 100,
         dtype: torch.dtype = torch.float64, **fields: object) -> RBM:
    cfg = layer_cfg(hidden=n_h, **fields)
    return registry.get(cfg.kind)(n_v, n_h, RBMSettings.of(cfg), seed=seed, index=index,
                                  steps_per_epoch=10, total_steps=total, dtype=dtype)


def random_params(n_v: int, n_h: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_v, n_h, generator=g, dtype=torch.float64),
            torch.randn(n_v, generator=g, dtype=torch.float64),
            torch.randn(n_h, generator=g, dtype=torch.float64))


def brute_force_log_z(w: torch.Tensor, vb: torch.Tensor, hb: torch.Tensor) -> float:
    total = 0.0
    for v in itertools.product([0.0, 1.0], repeat=w.shape[0]):
        for h in itertools.product([0.0, 1.0], repeat=w.shape[1]):
            vt, ht = torch.tensor(v, dtype=w.dtype), torch.tensor(h, dtype=w.dtype)
            total += math.exp(float(vt @ vb + ht @ hb + vt @ w @ ht))
    return math.log(total)


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4)])
def test_log_partition_matches_brute_force(shape: tuple[int, int]) -> None:
    w, vb, hb = random_params(*shape)
    assert float(log_partition(w, vb, hb)) == pytest.approx(brute_force_log_z(w, vb, hb), rel=1e-12)


def test_exact_probabilities_sum_to_one() -> None:
    w, vb, hb = random_params(6, 4, seed=3)
    every_v = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)), dtype=torch.float64)
    log_p = torch.stack([log_likelihood(w, vb, hb, v[None]) for v in every_v])
    assert float(torch.logsumexp(log_p, 0)) == pytest.approx(0.0, abs=1e-10)


def test_exact_gradient_equals_autograd_of_exact_likelihood() -> None:
    w, vb, hb = (t.requires_grad_() for t in random_params(6, 5, seed=1))
    data = (torch.rand(20, 6, generator=torch.Generator().manual_seed(2)) < 0.5).double()
    log_likelihood(w, vb, hb, data).backward()
    exact = exact_gradient(w.detach(), vb.detach(), hb.detach(), data)
    for name, t in (("weight", w), ("visible_bias", vb), ("hidden_bias", hb)):
        torch.testing.assert_close(exact[name], t.grad, rtol=1e-9, atol=1e-12)


def test_gaussian_log_partition_against_numerical_integration() -> None:
    # one visible unit: integrate exp(-F(v)) over v on a fine grid
    w, vb, hb = random_params(1, 3, seed=4)
    grid = torch.linspace(-30, 30, 200001, dtype=torch.float64)[:, None]
    neg_f = -0.5 * (grid - vb).square().sum(1) + torch.nn.functional.softplus(grid @ w + hb).sum(1)
    numeric = float(torch.logsumexp(neg_f, 0) + math.log(float(grid[1] - grid[0])))
    assert float(log_partition(w, vb, hb, "gaussian")) == pytest.approx(numeric, rel=1e-9)


def reference_update(layer: RBM, v0: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    """CD-k written out from Hinton's guide, drawing the same uniforms in the same order."""
    c = layer.settings
    w, vb, hb = layer.weight.clone(), layer.visible_bias.clone(), layer.hidden_bias.clone()
    w_inc, vb_inc, hb_inc = (layer.weight_inc.clone(), layer.visible_bias_inc.clone(),
                             layer.hidden_bias_inc.clone())
    q = layer.hidden_activity.clone()
    lr, mom = layer.lr_at(layer.step), layer.momentum_at(layer.step)

    def bern(p: torch.Tensor) -> torch.Tensor:
        return (torch.empty_like(p).uniform_(generator=g) < p).to(p.dtype)

    ph0 = torch.sigmoid(v0 @ w + hb)
    h = bern(ph0)
    for s in range(c.k):
        vm = torch.sigmoid(h @ w.T + vb)
        v = bern(vm) if s < c.k - 1 else vm
        ph = torch.sigmoid(v @ w + hb)
        if s < c.k - 1:
            h = bern(ph)
    n = len(v0)
    grad_w = (v0.T @ ph0 - v.T @ ph) / n
    grad_hb = ph0.mean(0) - ph.mean(0)
    if c.sparsity_cost:
        q = c.sparsity_decay * q + (1 - c.sparsity_decay) * ph0.mean(0)
        push = c.sparsity_cost * (c.sparsity_target - q)
        grad_w = grad_w + torch.outer(v0.mean(0), push)
        grad_hb = grad_hb + push
    w_inc = mom * w_inc + lr * (grad_w - c.weight_decay * w)
    vb_inc = mom * vb_inc + lr * (v0.mean(0) - v.mean(0))
    hb_inc = mom * hb_inc + lr * grad_hb
    return {"weight": w + w_inc, "visible_bias": vb + vb_inc, "hidden_bias": hb + hb_inc,
            "forward": ph0}


@pytest.mark.parametrize("fields", [
    {"k": 1, "momentum_epochs": 0.2, "lr_schedule": "linear", "lr_final": 0.5},  # switch at 2
    {"k": 3, "weight_decay": 0.01},
    {"k": 2, "sparsity_cost": 0.5, "sparsity_target": 0.05},
])
def test_cd_update_equals_hand_written_reference(fields: dict[str, object]) -> None:
    layer = make(7, 5, lr=0.3, total=4, **fields)
    data = (torch.rand(30, 7, generator=torch.Generator().manual_seed(5)) < 0.4).double()
    for step in range(4):  # several steps, so momentum buffers and schedules take part
        v0 = data[step * 7:(step + 1) * 7]  # 7 rows: batch means must use the real size
        g = torch.Generator()
        g.set_state(layer.generator.get_state())
        expected = reference_update(layer, v0, g)
        out = layer.train_step(v0)
        torch.testing.assert_close(out, expected["forward"], rtol=0, atol=1e-15)
        for name in ("weight", "visible_bias", "hidden_bias"):
            torch.testing.assert_close(getattr(layer, name), expected[name], rtol=1e-12,
                                       atol=1e-14)
        assert torch.equal(layer.generator.get_state(), g.get_state())  # same draws, no more


def test_pcd_chains_persist_and_survive_state_dict_round_trip() -> None:
    layer = make(6, 4, method="pcd", pcd_chains=5)
    assert layer.chains.shape == (5, 4)
    data = (torch.rand(40, 6, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    seen = []
    for step in range(3):
        layer.train_step(data[step * 8:(step + 1) * 8])
        seen.append(layer.chains.clone())
        assert set(layer.chains.unique().tolist()) <= {0.0, 1.0}
    assert not all(torch.equal(seen[0], s) for s in seen[1:])  # the chains move

    state = layer.state_dict()
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    clone = make(6, 4, method="pcd", pcd_chains=5, seed=99)  # different seed: all from state
    clone.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(clone.chains, layer.chains) and clone.step == layer.step
    for step in range(3, 5):
        a = layer.train_step(data[step * 8:(step + 1) * 8])
        b = clone.train_step(data[step * 8:(step + 1) * 8])
        assert torch.equal(a, b)
    for name in ("weight", "visible_bias", "hidden_bias", "chains", "weight_inc"):
        assert torch.equal(getattr(layer, name), getattr(clone, name)), name


def test_pcd_uses_its_chains_not_the_data_for_the_negative_phase() -> None:
    a = make(6, 4, method="pcd", pcd_chains=8)
    b = make(6, 4, method="pcd", pcd_chains=8)
    big = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a.weight.copy_(big)  # weights large enough for the chains' state to matter
    b.weight.copy_(big)
    b.chains.fill_(1.0)  # only the chains differ
    v0 = (torch.rand(8, 6, generator=torch.Generator().manual_seed(1)) < 0.5).double()
    a.train_step(v0)
    b.train_step(v0)
    assert not torch.equal(a.weight, b.weight)


def test_load_state_dict_rejects_wrong_shapes() -> None:
    state = make(6, 4).state_dict()
    with pytest.raises(ValueError, match="weight has shape"):
        make(5, 4).load_state_dict(state)


def test_layer_rng_streams_depend_on_seed_and_index_only() -> None:
    assert layer_seed(0, 1) == layer_seed(0, 1)
    assert len({layer_seed(s, i) for s in range(4) for i in range(4)}) == 16
    assert torch.equal(make(5, 3, seed=1, index=2).weight, make(5, 3, seed=1, index=2).weight)
    assert not torch.equal(make(5, 3, seed=1, index=2).weight, make(5, 3, seed=1, index=1).weight)


def test_defaults_follow_hintons_guide() -> None:
    cd, pcd = make(784, 50, dtype=torch.float32), make(784, 50, method="pcd")
    assert cd.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert (cd.settings.momentum, cd.settings.momentum_final) == (0.5, 0.9)
    assert (pcd.settings.momentum, pcd.settings.momentum_final) == (0.0, 0.0)
    assert cd.settings.weight_decay == 2e-4
    assert cd.momentum_at(0) == 0.5 and cd.momentum_at(49) == 0.5 and cd.momentum_at(50) == 0.9
    mean = torch.full((3,), 0.2)
    vb = registry.get("bernoulli").init_visible_bias(cd, mean, 3)
    torch.testing.assert_close(vb, torch.log(mean / (1 - mean)))


def test_learning_rate_schedules() -> None:
    lin = make(3, 2, lr=0.2, lr_schedule="linear", lr_final=0.25, total=11)
    assert [round(lin.lr_at(t), 6) for t in (0, 5, 10)] == [0.2, 0.125, 0.05]
    cos = make(3, 2, lr=0.2, lr_schedule="cosine", lr_final=0.0, total=11)
    assert cos.lr_at(0) == pytest.approx(0.2) and cos.lr_at(5) == pytest.approx(0.1)
    assert cos.lr_at(10) == pytest.approx(0.0, abs=1e-12)


def test_free_energy_is_finite_for_huge_inputs() -> None:
    layer = make(4, 3)
    layer.weight.fill_(1e4)
    fe = layer.free_energy(torch.ones(2, 4, dtype=torch.float64))
    assert torch.isfinite(fe).all()
    # and it matches the definition where the naive formula is still accurate
    small = make(4, 3)
    v = torch.tensor([[1.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    naive = -(v @ small.visible_bias) - torch.log1p(torch.exp(v @ small.weight
                                                              + small.hidden_bias)).sum()
    torch.testing.assert_close(small.free_energy(v), naive)


def test_training_on_bars_and_stripes_raises_exact_log_likelihood() -> None:
    from pipedbn.data.loader import open_data

    cfg = resolve_defaults(load_config(None, [
        "layers=[{hidden: 10}]", "data.source=bars", "data.bars_samples=600", "seed=3",
        "train.batch_size=20", "rbm.lr=0.1", "rbm.epochs=30"]))
    data = open_data(cfg, unit_range=True)
    layer = make(16, 10, lr=0.1, dtype=torch.float64)
    held = torch.from_numpy(data.held_out()).double()
    before = float(log_likelihood(layer.weight, layer.visible_bias, layer.hidden_bias, held))
    for epoch in range(30):
        for j in range(data.batches_per_epoch):
            layer.train_step(torch.from_numpy(data.micro_batch(epoch, j)).double())
    after = float(log_likelihood(layer.weight, layer.visible_bias, layer.hidden_bias, held))
    # 30 distinct images: a perfect model scores log(1/30) = -3.4; a uniform one 16 log 0.5 = -11.1
    assert after > before + 2.0, (before, after)
    assert after > -8.0


def test_gaussian_layer_on_standardised_real_data_learns_and_stays_finite() -> None:
    from pipedbn.data.loader import open_data

    cfg = resolve_defaults(load_config(None, [
        "layers=[{hidden: 32, kind: gaussian}]", "data.source=digits", "data.standardize=true",
        "train.batch_size=50"]))
    data = open_data(cfg, unit_range=False)
    layer = make(64, 32, kind="gaussian", lr=0.005, dtype=torch.float32,)
    held = torch.from_numpy(data.held_out())
    start = layer.reconstruction_error(held)
    for epoch in range(5):
        for j in range(data.batches_per_epoch):
            layer.train_step(torch.from_numpy(data.micro_batch(epoch, j)))
    end = layer.reconstruction_error(held)
    layer.check_parameters(0)
    assert math.isfinite(end) and end < 0.8 * start, (start, end)
    assert torch.isfinite(layer.free_energy(held)).all()


def test_non_finite_values_are_detected_before_they_are_passed_on() -> None:
    layer = make(5, 3, dtype=torch.float32)
    x = torch.rand(4, 5)
    x[2, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="layer 0: non-finite hidden activations at "
                                             "micro-batch 17"):
        layer.train_step(x, micro_batch=17)
    deferred = make(5, 3, dtype=torch.float32)
    deferred.defer_checks = True  # as on a GPU: a device-side flag, read at the next check
    deferred.train_step(torch.rand(4, 5), micro_batch=16)
    deferred.train_step(x, micro_batch=17)
    deferred.forward(x, micro_batch=18)
    with pytest.raises(NonFiniteError, match="layer 0: non-finite hidden activations at "
                                             "micro-batch 17"):
        deferred.check_parameters(20)
    diverging = make(5, 3, index=2, dtype=torch.float32)
    diverging.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="layer 2: non-finite weight at micro-batch 9"):
        diverging.check_parameters(9)


def test_pcd_metrics_with_other_chain_count_and_a_partial_batch() -> None:
    layer = make(6, 4, method="pcd", pcd_chains=20, dtype=torch.float32)
    for rows in (8, 3):  # the chains outnumber the batch; then a partial batch
        stats: dict[str, float] = {}
        v0 = (torch.rand(rows, 6) < 0.5).float()
        expected = layer.reconstruction_error(v0)  # mean-field, before the update
        layer.train_step(v0, stats=stats)
        assert stats["recon_error"] == pytest.approx(expected, rel=1e-6)
        assert 0 < stats["hidden_mean"] < 1 and stats["lr"] == 0.1


def test_monitoring_does_not_touch_the_layer_rng() -> None:
    a, b = make(6, 4), make(6, 4)
    v0 = (torch.rand(8, 6, generator=torch.Generator().manual_seed(3)) < 0.5).double()
    a.train_step(v0, stats={})
    b.train_step(v0)
    assert torch.equal(a.generator.get_state(), b.generator.get_state())
    assert torch.equal(a.weight, b.weight)


STATE_FILE_KEYS = ["weight", "visible_bias", "hidden_bias", "weight_inc", "visible_bias_inc",
                   "hidden_bias_inc", "chains", "hidden_activity", "step", "rng_state"]
"""The keys of a layer state as checkpoints and run directories have always stored them."""


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
def test_state_comes_from_the_modules_registered_tensors(kind: str) -> None:
    layer = make(6, 4, kind=kind, method="pcd", pcd_chains=3)
    assert isinstance(layer, torch.nn.Module)
    assert [n for n, _ in layer.named_parameters()] == list(PARAMETERS)
    assert not any(p.requires_grad for p in layer.parameters())  # CD updates them by hand
    assert list(layer.state_dict()) == STATE_FILE_KEYS
    assert [t.data_ptr() for t in layer.velocities()] == [
        layer.weight_inc.data_ptr(), layer.visible_bias_inc.data_ptr(),
        layer.hidden_bias_inc.data_ptr()]
    assert [t.data_ptr() for t in layer.running_buffers()] == [
        layer.chains.data_ptr(), layer.hidden_activity.data_ptr()]


def test_a_state_written_as_before_loads_and_continues() -> None:
    """A plain dict of cloned tensors under the historical keys (what checkpoints written
    before the RBM became a module hold) restores the layer exactly."""
    data = (torch.rand(24, 6, generator=torch.Generator().manual_seed(4)) < 0.5).double()
    layer = make(6, 4, method="pcd", pcd_chains=8)
    layer.train_step(data[:8])
    old = {"weight": layer.weight.clone(), "visible_bias": layer.visible_bias.clone(),
           "hidden_bias": layer.hidden_bias.clone(), "weight_inc": layer.weight_inc.clone(),
           "visible_bias_inc": layer.visible_bias_inc.clone(),
           "hidden_bias_inc": layer.hidden_bias_inc.clone(), "chains": layer.chains.clone(),
           "hidden_activity": layer.hidden_activity.clone(),
           "step": torch.tensor(layer.step, dtype=torch.int64),
           "rng_state": layer.generator.get_state()}
    buf = io.BytesIO()
    torch.save(old, buf)
    buf.seek(0)
    clone = make(6, 4, method="pcd", pcd_chains=8, seed=7)
    state = torch.load(buf, weights_only=True)
    clone.load_state_dict(state)
    assert set(state) == set(STATE_FILE_KEYS)  # the caller's dict is left whole
    assert clone.step == 1
    for x in (data[8:16], data[16:]):
        assert torch.equal(layer.train_step(x), clone.train_step(x))
    for name, t in layer.state_dict().items():
        assert torch.equal(t, clone.state_dict()[name]), name


def test_replica_count_is_an_argument_of_the_update() -> None:
    """r replicas: momentum**r per step and lr scaled so lr / (1 - momentum) is unchanged; the
    layer itself holds no replica count."""
    v0 = (torch.rand(8, 6, generator=torch.Generator().manual_seed(2)) < 0.5).double()
    one, three, default = make(6, 4), make(6, 4), make(6, 4)
    s1: dict[str, float] = {}
    s3: dict[str, float] = {}
    one.train_step(v0, stats=s1, replicas=1)
    three.train_step(v0, stats=s3, replicas=3)
    default.train_step(v0)
    assert torch.equal(one.weight, default.weight)
    assert s3["momentum"] == pytest.approx(s1["momentum"] ** 3)
    assert s3["lr"] / (1 - s3["momentum"]) == pytest.approx(s1["lr"] / (1 - s1["momentum"]))
    assert not torch.equal(one.weight, three.weight)
    assert not hasattr(three, "replicas")
    assert replica_rates(0.1, 0.0, 4) == (0.1, 0.0)  # no momentum: nothing to rescale


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_the_layer_base_and_the_kinds_depend_one_way() -> None:
    """rbm.py (the base) needs nothing of pipedbn but its errors; a kind needs only the base;
    so config may import the registry without a cycle."""
    root = Path(__file__).resolve().parent.parent
    base = {m for m in _imports(root / "pipedbn/model/rbm.py") if m.split(".")[0] == "pipedbn"}
    assert base == {"pipedbn.errors"}
    for kind in ("bernoulli", "gaussian"):
        deps = {m for m in _imports(root / f"stages/{kind}.py")
                if m.split(".")[0] in ("pipedbn", "stages")}
        assert deps == {"pipedbn.model.rbm"}, kind
