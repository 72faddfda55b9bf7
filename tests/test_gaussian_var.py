"""The ``gaussian-var`` kind (learned, bounded per-unit variance): conditionals, free energy and
log Z against brute force (enumeration of h, numerical integration over v), the exact gradient
against a finite difference of the exact log-likelihood, the update's bound, the export round
trip with its extra tensor, the config's refusals and what ``eval`` says it can do."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits

from pipedbn.config import load_config, resolve_defaults
from pipedbn.errors import ConfigError, ModelError
from pipedbn.eval.evaluation import EvalOptions, evaluate_dbn, likelihood_method
from pipedbn.eval.likelihood import log_likelihood_of, log_partition_of
from pipedbn.model.dbn import Model, load
from pipedbn.model.rbm import RBMSettings, free_energy_of
from stages import registry
from stages.gaussian_var import LOG_VAR_BOUNDS, GaussianVarRBM

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
KIND = registry.get("gaussian-var")


def params(n_v: int, n_h: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(n_v, n_h, generator=g, dtype=torch.float64) * 0.7,
            "visible_bias": torch.randn(n_v, generator=g, dtype=torch.float64),
            "hidden_bias": torch.randn(n_h, generator=g, dtype=torch.float64) * 0.5,
            "log_var": torch.randn(n_v, generator=g, dtype=torch.float64) * 0.5}


def energy(p: dict[str, torch.Tensor], v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """E(v, h) written out from Cho et al. (2011), for rows v (B, n_v) and one state h."""
    var = p["log_var"].exp()
    return (((v - p["visible_bias"]).square() / (2 * var)).sum(1)
            - ((v / var) @ p["weight"] @ h) - p["hidden_bias"] @ h)


def hidden_states(n: int) -> list[torch.Tensor]:
    return [torch.tensor(s, dtype=torch.float64) for s in itertools.product([0, 1], repeat=n)]


def make_layer(n_v: int, n_h: int, method: str = "cd", lr: float = 0.01) -> GaussianVarRBM:
    layers = "layers=[{hidden: " + str(n_h) + ", kind: gaussian-var}]"
    cfg = resolve_defaults(load_config(TINY, [layers, f"rbm.method={method}", f"rbm.lr={lr}",
                                              "data.standardize=true"]))
    layer = KIND(n_v, n_h, RBMSettings.of(cfg.layers[0]), seed=0, index=0, steps_per_epoch=10,
                 total_steps=100, dtype=torch.float64)
    assert isinstance(layer, GaussianVarRBM)
    return layer


@pytest.mark.fast
def test_conditionals_and_free_energy_match_brute_force() -> None:
    p = params(3, 4)
    v = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hs = hidden_states(4)
    neg_e = torch.stack([-energy(p, v, h) for h in hs], 1)  # (rows, 2^4)
    post = torch.softmax(neg_e, 1)
    p_h = post @ torch.stack(hs)  # P(h_j = 1 | v) by enumeration
    torch.testing.assert_close(KIND.hidden_pre_of(p, v).sigmoid(), p_h)
    torch.testing.assert_close(free_energy_of(KIND, p, v), -torch.logsumexp(neg_e, 1))
    # p(v | h) is N(b + W h, sigma^2): -E(v, h) - log N(v; b + W h, sigma^2) is constant in v
    h = hs[5]
    mean = p["visible_bias"] + p["weight"] @ h
    var = p["log_var"].exp()
    gauss = (-(v - mean).square() / (2 * var) - 0.5 * (2 * math.pi * var).log()).sum(1)
    gap = -energy(p, v, h) - gauss
    torch.testing.assert_close(gap, gap[:1].expand(5))
    # the sampler draws from it (and the module's sampler is the same draw)
    g = torch.Generator().manual_seed(2)
    draws = KIND.draw_of(p, mean.expand(50_000, 3).clone(), g)
    assert torch.allclose(draws.mean(0), mean, atol=0.03)
    assert torch.allclose(draws.var(0), p["log_var"].exp(), rtol=0.03)


@pytest.mark.fast
def test_log_partition_matches_numerical_integration() -> None:
    p = params(2, 3, seed=4)
    grid = torch.linspace(-10, 10, 501, dtype=torch.float64)
    v = torch.cartesian_prod(grid, grid)
    neg_e = torch.stack([-energy(p, v, h) for h in hidden_states(3)], 1)
    density = torch.logsumexp(neg_e, 1).exp().reshape(len(grid), len(grid))
    z = torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid)
    assert float(log_partition_of(KIND, p)) == pytest.approx(math.log(float(z)), abs=1e-6)


def exact_gradient(layer: GaussianVarRBM, v0: torch.Tensor) -> dict[str, torch.Tensor]:
    """d mean log p(v0) / d parameters: the data term of the update's own statistics minus
    their model expectation, taken exactly (h enumerated; v | h Gaussian, whose (v - b)^2 adds
    sigma^2 to the mean's, as the update's CD correction says)."""
    p = dict(layer.named_parameters())
    prec = (-p["log_var"]).exp()
    ph0 = layer.hidden_probs(v0)
    h = torch.stack(hidden_states(layer.n_hidden))
    p_h = torch.softmax(KIND.log_hidden_marginal(p, h), 0)
    mu = torch.addmm(p["visible_bias"], h, p["weight"].T)  # E[v | h]
    stat = layer.variance_statistic
    return {
        "weight": (layer.visible_input(v0).T @ ph0 / len(v0)
                   - (layer.visible_input(mu) * p_h[:, None]).T @ h),
        "visible_bias": layer.visible_input(v0).mean(0) - p_h @ layer.visible_input(mu),
        "hidden_bias": ph0.mean(0) - p_h @ h,
        "log_var": prec * (stat(v0, ph0, p["visible_bias"], p["weight"]).mean(0)
                           - p_h @ stat(mu, h, p["visible_bias"], p["weight"])
                           - 0.5 * p["log_var"].exp()),
    }


@pytest.mark.fast
def test_exact_gradient_matches_finite_differences_of_the_exact_likelihood() -> None:
    layer = make_layer(3, 4)
    with torch.no_grad():
        for name, t in params(3, 4, seed=7).items():
            layer.get_parameter(name).copy_(t)
    v0 = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    grad = exact_gradient(layer, v0)
    p = {k: t.clone() for k, t in layer.named_parameters()}
    eps = 1e-6
    for name, t in p.items():
        numeric = torch.empty_like(t)
        for idx in itertools.product(*(range(n) for n in t.shape)):
            old = float(t[idx])
            t[idx] = old + eps
            up = float(log_likelihood_of(KIND, p, v0))
            t[idx] = old - eps
            down = float(log_likelihood_of(KIND, p, v0))
            t[idx] = old
            numeric[idx] = (up - down) / (2 * eps)
        torch.testing.assert_close(grad[name], numeric, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.fast
def test_the_variance_update_is_its_gradient_statistic_and_stays_in_its_bound() -> None:
    layer = make_layer(3, 4)
    g = torch.Generator().manual_seed(3)
    v0, v = (torch.randn(8, 3, dtype=torch.float64, generator=g) for _ in range(2))
    ph0, ph = (torch.rand(8, 4, dtype=torch.float64, generator=g) for _ in range(2))
    stat = layer.variance_statistic(v0, ph0, layer.visible_bias, layer.weight).mean(0) \
        - layer.variance_statistic(v, ph, layer.visible_bias, layer.weight).mean(0)
    z = layer.log_var.clone()
    layer.extra_update(v0, ph0, v, ph, lr=0.001, momentum=0.0, v_is_mean=False)
    torch.testing.assert_close(layer.log_var - z, 0.001 * (-z).exp() * stat)
    layer.extra_update(v0, ph0, v, ph, lr=0.001, momentum=0.0, v_is_mean=True)  # + 1/2 each
    assert layer.log_var.shape == z.shape
    for big in (1e6, -1e6):
        layer.log_var_inc.zero_()
        layer.extra_update(v0, ph0, v, ph, lr=big, momentum=0.0, v_is_mean=True)
        lo, hi = LOG_VAR_BOUNDS
        assert bool(((layer.log_var >= lo) & (layer.log_var <= hi)).all())
        assert float(layer.log_var.abs().max()) == pytest.approx(max(-lo, hi))


@pytest.mark.fast
def test_a_trained_layer_beats_unit_variance_and_round_trips_through_export(
        tmp_path: Path) -> None:
    # CD-1 on standardised digits: the learned variances give a better exact likelihood
    x = torch.from_numpy(load_digits().data[:600]).double()
    x = (x - x.mean(0)) / torch.where(x.std(0) > 1e-6, x.std(0), torch.ones(64))
    layers = [make_layer(64, 8), registry.get("gaussian")(
        64, 8, make_layer(64, 8).settings, seed=0, index=0, steps_per_epoch=10,
        total_steps=100, dtype=torch.float64)]
    for layer in layers:
        for _ in range(10):
            for b in range(0, 600, 50):
                layer.train_step(x[b:b + 50])
    ll = [float(log_likelihood_of(type(r), dict(r.named_parameters()), x)) for r in layers]
    assert ll[0] > ll[1] + 3
    var = layers[0].variance()
    assert float(var.min()) < 0.5 and float(var.max()) <= math.exp(LOG_VAR_BOUNDS[1]) + 1e-9

    model = Model(["gaussian-var"], [{k: t.detach().clone() for k, t in
                                      layers[0].named_parameters()}])
    model.save(tmp_path / "m.safetensors")
    back = load(tmp_path / "m.safetensors")
    assert back.kinds == ["gaussian-var"]
    for k, t in model.params[0].items():
        assert torch.equal(back.params[0][k], t), k
    torch.testing.assert_close(back.free_energy(x), layers[0].free_energy(x))
    torch.testing.assert_close(back.transform(x), layers[0].hidden_probs(x))
    module = back.to_module().double()
    torch.testing.assert_close(module(x), layers[0].hidden_probs(x))
    result = evaluate_dbn(back, x, x, opts=EvalOptions(ais=False))
    assert result["layers"][0]["log_likelihood_method"] == "exact"
    assert result["layers"][0]["log_likelihood"] == pytest.approx(ll[0], abs=1e-6)

    # an export without the extra tensor, or with a wrong one, is refused naming it
    tensors = load_file(str(tmp_path / "m.safetensors"))
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta = f.metadata()
    for name, bad in (("missing", None), ("short", tensors["layers.0.log_var"][:3])):
        broken = {k: t for k, t in tensors.items() if k != "layers.0.log_var"}
        if bad is not None:
            broken["layers.0.log_var"] = bad.contiguous()
        save_file(broken, str(tmp_path / f"{name}.safetensors"), metadata=meta)
        with pytest.raises(ModelError, match=r"layers\.0\.log_var"):
            load(tmp_path / f"{name}.safetensors")


@pytest.mark.fast
def test_eval_says_what_each_kind_allows() -> None:
    opts = EvalOptions(exact_max=20)
    assert likelihood_method(KIND, 0, (64, 12), opts) == "exact"
    no = likelihood_method(KIND, 0, (64, 128), opts)
    assert "exact_max=20 hidden units, it has 128" in no
    assert "AIS is not implemented for 'gaussian-var'" in no
    bern = registry.get("bernoulli")
    assert likelihood_method(bern, 0, (784, 500), opts) == "ais"
    assert likelihood_method(bern, 0, (784, 12), opts) == "exact"
    assert "AIS is off" in likelihood_method(bern, 0, (784, 500), EvalOptions(ais=False))


@pytest.mark.fast
def test_config_refuses_gaussian_var_above_the_first_layer() -> None:
    with pytest.raises(ConfigError, match=r"layers\.1\.kind: 'gaussian-var' layers take "
                                          r"real-valued input"):
        load_config(TINY, ["layers=[{hidden: 8}, {hidden: 4, kind: gaussian-var}]"])
    cfg = resolve_defaults(load_config(TINY, ["layers=[{hidden: 8, kind: gaussian-var}, 4]"]))
    assert cfg.layers[0].lr == 0.01
