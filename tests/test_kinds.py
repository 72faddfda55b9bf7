"""The nrelu kinds, centering and parallel tempering: conditionals and free energy against brute
force, the exact gradient against finite differences, the updates against hand-written ones,
PT's model chain against the exact distribution, and the quality claim on binarised digits."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from test_rbm import make

from pipedbn.config import load_config, resolve_defaults
from pipedbn.errors import ConfigError
from pipedbn.eval.likelihood import enumerable, log_likelihood, log_partition
from pipedbn.model.rbm import RBM, free_energy
from stages import registry
from stages.nrelu import ssu_mean
from tools.bench_kinds import SETTING, exact_test_ll, train_rbm

NRELU = registry.get("bernoulli-nrelu")
COPIES = 16  # brute force: one hidden unit as 16 binary copies; with |x| < 2 the rest < 1e-6
TRUNCATION = 1e-6


def binary_states(n: int) -> torch.Tensor:
    idx = torch.arange(2**n)
    return ((idx[:, None] >> torch.arange(n - 1, -1, -1)) & 1).double()


def small_params(n_v: int, n_h: int, seed: int = 0, scale: float = 0.5
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(*s, generator=g, dtype=torch.float64)
                 for s in ((n_v, n_h), (n_v,), (n_h,)))  # type: ignore[return-value]


def ssu_joint(w: torch.Tensor, vb: torch.Tensor, hb: torch.Tensor) -> torch.Tensor:
    """-E(v, c) for every visible state and every state of COPIES binary copies of the one
    hidden unit (copy i has bias hb - i + 1/2): shape (2^n_v, 2^COPIES)."""
    v = torch.tensor(list(itertools.product([0.0, 1.0], repeat=w.shape[0])), dtype=w.dtype)
    c = binary_states(COPIES)
    offsets = torch.arange(1, COPIES + 1, dtype=w.dtype) - 0.5
    x = v @ w[:, 0] + hb[0]  # (2^n_v,)
    count = c.sum(1)
    return (v @ vb)[:, None] + x[:, None] * count[None, :] - (c @ offsets)[None, :]


def test_nrelu_free_energy_and_log_z_equal_brute_force_over_the_copies() -> None:
    w, vb, hb = small_params(4, 1)
    neg_e = ssu_joint(w, vb, hb)
    v = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64)
    torch.testing.assert_close(free_energy(NRELU, v, w, vb, hb), -torch.logsumexp(neg_e, 1),
                               rtol=0, atol=TRUNCATION)
    torch.testing.assert_close(log_partition(w, vb, hb, "bernoulli-nrelu"),
                               torch.logsumexp(neg_e.flatten(), 0), rtol=0, atol=TRUNCATION)
    p = torch.exp(-free_energy(NRELU, v, w, vb, hb) - log_partition(w, vb, hb, "bernoulli-nrelu"))
    assert abs(float(p.sum()) - 1) < 1e-9


def test_nrelu_conditionals_equal_brute_force() -> None:
    w, vb, hb = small_params(3, 1, seed=1, scale=0.7)
    neg_e = ssu_joint(w, vb, hb)
    v = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    c = binary_states(COPIES)
    count = c.sum(1)
    # E[h | v]: the copies' count under p(c | v), against ssu_mean and its softplus stand-in
    p_c = torch.softmax(neg_e, 1)
    exact_mean = p_c @ count
    pre = (v @ w + hb)
    torch.testing.assert_close(ssu_mean(pre)[:, 0], exact_mean, rtol=0, atol=TRUNCATION)
    assert float((NRELU.hidden_link(pre.clone())[:, 0] - exact_mean).abs().max()) < 0.02
    # p(v_i = 1 | h) for a count h: sigmoid(h W_i + vb_i), the visible link
    for h in (0, 1, 3):
        rows = count == h
        p_v = torch.softmax(neg_e[:, rows].T.flatten(), 0).view(int(rows.sum()), -1).sum(0)
        marg = p_v @ v  # P(v_i = 1 | count = h)
        link = NRELU.visible_link(torch.tensor([[float(h)]], dtype=torch.float64) @ w.T + vb)
        torch.testing.assert_close(marg, link[0], rtol=0, atol=1e-12)


def test_nrelu_samples_are_noisy_rectified_units() -> None:
    g = torch.Generator().manual_seed(0)
    pre = torch.tensor([[-3.0, 0.0, 4.0]], dtype=torch.float64).expand(200_000, 3).contiguous()
    h = NRELU.draw_hidden(pre, NRELU.hidden_link(pre), g)
    assert float(h.min()) == 0.0
    # max(0, x + N(0, sigmoid(x))): E = s phi(x/s) + x Phi(x/s), s = sqrt(sigmoid(x))
    for j, x in enumerate((-3.0, 0.0, 4.0)):
        s = math.sqrt(1 / (1 + math.exp(-x)))
        z = x / s
        want = s * math.exp(-z * z / 2) / math.sqrt(2 * math.pi) + x * 0.5 * (1 + math.erf(
            z / math.sqrt(2)))
        assert abs(float(h[:, j].mean()) - want) < 0.01, (x, float(h[:, j].mean()), want)


def test_nrelu_exact_gradient_equals_finite_differences() -> None:
    """d mean log p(v) = E_data[dF] - E_model[dF] with E[h | v] = ssu_mean: the statistic
    the update approximates by softplus."""
    w, vb, hb = small_params(5, 3, seed=2)
    data = (torch.rand(40, 5, generator=torch.Generator().manual_seed(3)) < 0.4).double()
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)), dtype=torch.float64)
    p_model = torch.softmax(-free_energy(NRELU, states, w, vb, hb), 0)
    eh_d, eh_m = ssu_mean(data @ w + hb), ssu_mean(states @ w + hb)
    grad = {"weight": data.T @ eh_d / len(data) - (states * p_model[:, None]).T @ eh_m,
            "visible_bias": data.mean(0) - p_model @ states,
            "hidden_bias": eh_d.mean(0) - p_model @ eh_m}
    params = {"weight": w, "visible_bias": vb, "hidden_bias": hb}
    eps = 1e-5
    for name, t in params.items():
        fd = torch.zeros_like(t)
        for idx in itertools.product(*(range(n) for n in t.shape)):
            vals = []
            for sign in (1, -1):
                shifted = {k: p.clone() for k, p in params.items()}
                shifted[name][idx] += sign * eps
                vals.append(float(log_likelihood(shifted["weight"], shifted["visible_bias"],
                                                 shifted["hidden_bias"], data,
                                                 "bernoulli-nrelu")))
            fd[idx] = (vals[0] - vals[1]) / (2 * eps)
        torch.testing.assert_close(grad[name], fd, rtol=1e-5, atol=1e-7)


def test_what_the_kinds_can_enumerate() -> None:
    assert enumerable("bernoulli-nrelu", 16, 500) and not enumerable("bernoulli-nrelu", 64, 4)
    assert not enumerable("gaussian-nrelu", 4, 4)
    assert enumerable("bernoulli", 64, 16) and enumerable("gaussian", 64, 16)


def test_nrelu_layers_stack_on_real_valued_visible_units_only() -> None:
    ok = resolve_defaults(load_config(None, [
        "layers=[{hidden: 8, kind: bernoulli-nrelu}, {hidden: 4, kind: gaussian-nrelu}]"]))
    assert [lc.kind for lc in ok.layers] == ["bernoulli-nrelu", "gaussian-nrelu"]
    with pytest.raises(ConfigError, match=r"layers\.1\.kind: 'bernoulli' has binary visible"):
        load_config(None, ["layers=[{hidden: 8, kind: bernoulli-nrelu}, {hidden: 4}]"])
    with pytest.raises(ConfigError, match=r"layers\.1\.kind: 'gaussian-nrelu' layers take"):
        load_config(None, ["layers=[{hidden: 8}, {hidden: 4, kind: gaussian-nrelu}]"])
    with pytest.raises(ConfigError, match=r"rbm\.method: 'pt'.*'bernoulli-nrelu'"):
        load_config(None, ["layers=[{hidden: 8, kind: bernoulli-nrelu}]", "rbm.method=pt"])
    with pytest.raises(ConfigError, match=r"pt_temperatures: at least 2"):
        load_config(None, ["layers=[8]", "rbm.method=pt", "rbm.pt_temperatures=1"])
    with pytest.raises(ConfigError, match=r"centering_rate: must be in \(0, 1\]"):
        load_config(None, ["layers=[8]", "rbm.centering=true", "rbm.centering_rate=0"])


def centred_reference(layer: RBM, v0: torch.Tensor, g: torch.Generator
                      ) -> dict[str, torch.Tensor]:
    """Centred CD-1 written out from Melchior et al. (2016), the same draws in the same order:
    offsets first, then the gradient of the centred energy mapped to the ordinary biases."""
    c = layer.settings
    w, vb, hb = layer.weight.clone(), layer.visible_bias.clone(), layer.hidden_bias.clone()
    w_inc, vb_inc, hb_inc = (layer.weight_inc.clone(), layer.visible_bias_inc.clone(),
                             layer.hidden_bias_inc.clone())
    lr, mom, nu = layer.lr_at(layer.step), layer.momentum_at(layer.step), c.centering_rate
    ph0 = torch.sigmoid(v0 @ w + hb)
    h = (torch.empty_like(ph0).uniform_(generator=g) < ph0).to(ph0.dtype)
    v = torch.sigmoid(h @ w.T + vb)
    ph = torch.sigmoid(v @ w + hb)
    mu = (1 - nu) * layer.visible_offset + nu * v0.mean(0)
    lam = (1 - nu) * layer.hidden_offset + nu * ph0.mean(0)
    grad_w = ((v0 - mu).T @ (ph0 - lam)) / len(v0) - ((v - mu).T @ (ph - lam)) / len(v)
    grad_vb = (v0 - mu).mean(0) - (v - mu).mean(0) - grad_w @ lam
    grad_hb = (ph0 - lam).mean(0) - (ph - lam).mean(0) - grad_w.T @ mu
    w_inc = mom * w_inc + lr * (grad_w - c.weight_decay * w)
    vb_inc = mom * vb_inc + lr * grad_vb
    hb_inc = mom * hb_inc + lr * grad_hb
    return {"weight": w + w_inc, "visible_bias": vb + vb_inc, "hidden_bias": hb + hb_inc,
            "visible_offset": mu, "hidden_offset": lam}


def test_centred_update_equals_hand_written_reference() -> None:
    layer = make(6, 4, lr=0.3, total=4, centering=True, centering_rate=0.2, weight_decay=0.01)
    data = (torch.rand(24, 6, generator=torch.Generator().manual_seed(5)) < 0.4).double()
    for step in range(4):
        v0 = data[step * 6:(step + 1) * 6]
        g = torch.Generator()
        g.set_state(layer.generator.get_state())
        expected = centred_reference(layer, v0, g)
        layer.train_step(v0)
        for name, want in expected.items():
            torch.testing.assert_close(getattr(layer, name), want, rtol=1e-12, atol=1e-14)
        assert torch.equal(layer.generator.get_state(), g.get_state())
    assert {"visible_offset", "hidden_offset"} <= set(layer.state_dict())
    assert "visible_offset" not in make(6, 4).state_dict()  # other layers' states unchanged


def test_pt_model_chain_samples_the_exact_distribution() -> None:
    """With the weights fixed, the beta = 1 chains of PT visit the visible states with the
    model's exact probabilities, for a sharply bimodal RBM (swaps carry states between its
    modes)."""
    w = torch.tensor([[3.0, -3.0], [3.0, -3.0], [-3.0, 3.0], [-3.0, 3.0]], dtype=torch.float64)
    vb = torch.full((4,), -1.0, dtype=torch.float64)
    hb = torch.full((2,), -2.0, dtype=torch.float64)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64)
    exact = torch.exp(-free_energy(registry.get("bernoulli"), states, w, vb, hb)
                      - log_partition(w, vb, hb))
    layer = make(4, 2, method="pt", pcd_chains=50, pt_temperatures=5)
    with torch.no_grad():
        layer.weight.copy_(w), layer.visible_bias.copy_(vb), layer.hidden_bias.copy_(hb)
    seen = torch.zeros(16, dtype=torch.float64)
    rates = []
    code = 2.0 ** torch.arange(3, -1, -1, dtype=torch.float64)
    for step in range(2000):
        layer.step = step
        v, _, rate = layer._tempered_negative(layer.generator, True)
        assert v.shape == (50, 4) and layer.chains.shape == (250, 2)
        rates.append(rate)
        if step >= 100:
            seen += torch.bincount((v @ code).long(), minlength=16)
    assert 0.05 < sum(r for r in rates if r is not None) / len(rates) <= 1
    tv = 0.5 * float((seen / seen.sum() - exact).abs().sum())
    assert tv < 0.03, tv


def test_pt_update_logs_its_swap_rate_and_centres_with_any_method() -> None:
    layer = make(6, 3, method="pt", pcd_chains=4, pt_temperatures=3, centering=True)
    v0 = (torch.rand(8, 6, generator=torch.Generator().manual_seed(1)) < 0.5).double()
    stats: dict[str, float] = {}
    layer.train_step(v0, stats=stats)
    assert 0 <= stats["pt_swap_rate"] <= 1 and layer.chains.shape == (12, 3)
    assert not torch.equal(layer.hidden_offset, torch.full((3,), 0.5, dtype=torch.float64))


@pytest.mark.slow  # in process, but four trainings of 340 updates each
@pytest.mark.parametrize("method", ["centred PCD-1", "PT"])
def test_centering_and_pt_are_at_least_as_good_as_pcd_on_binarised_digits(method: str) -> None:
    """A 16-hidden RBM on binarised digits, equal updates, two seeds: the exact test
    log-likelihood (mean over the seeds) of centred PCD-1 and of PT is no worse than PCD-1's."""
    extra = {"centred PCD-1": ["rbm.method=pcd", "rbm.centering=true"],
             "PT": ["rbm.method=pt", "rbm.pt_temperatures=4"]}[method]
    ll: dict[str, list[float]] = {"pcd": [], "new": []}
    for seed in (0, 1):
        for name, ov in (("pcd", ["rbm.method=pcd"]), ("new", extra)):
            layer, test, _ = train_rbm(SETTING + ["rbm.epochs=20", f"seed={seed}", *ov])
            ll[name].append(exact_test_ll(layer, test))
    assert sum(ll["new"]) / 2 >= sum(ll["pcd"]) / 2, ll


def test_nrelu_layer_on_bars_and_stripes_raises_the_exact_likelihood() -> None:
    layer, held, _ = train_rbm(["layers=[{hidden: 10, kind: bernoulli-nrelu}]",
                                "data.source=bars", "data.bars_samples=600", "seed=3",
                                "train.batch_size=20", "rbm.lr=0.05", "rbm.epochs=30",
                                "monitor.enabled=false"])
    fresh = make(16, 10, kind="bernoulli-nrelu", dtype=torch.float32, seed=3)
    before = exact_test_ll(fresh, held)
    after = exact_test_ll(layer, held)
    # 30 distinct images: a perfect model scores log(1/30) = -3.4; a uniform one 16 log 0.5 = -11.1
    assert after > before + 2.0, (before, after)
