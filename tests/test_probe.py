"""Held-out probes and pictures (``pipedbn/observe/probe.py``), checked directly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from test_trainer import tiny

from pipedbn.model.rbm import RBMSettings
from pipedbn.observe.probe import gibbs_samples, image_shape, probe_generator, probe_layer, tile
from stages import registry


def layer(kind: str = "bernoulli", n_vis: int = 12, n_hid: int = 7):
    cfg = tiny()
    lc = cfg.layers[0]
    lc.kind = kind
    rbm = registry.get(kind)(n_vis, n_hid, RBMSettings.of(lc), seed=3, index=0,
                             steps_per_epoch=10, total_steps=100)
    g = torch.Generator().manual_seed(5)
    rbm.weight.copy_(torch.randn(n_vis, n_hid, generator=g) * 0.5)
    rbm.visible_bias.copy_(torch.randn(n_vis, generator=g) * 0.3)
    rbm.hidden_bias.copy_(torch.randn(n_hid, generator=g) * 0.3)
    return rbm


def test_probe_measures_match_direct_computation() -> None:
    rbm = layer()
    g = torch.Generator().manual_seed(0)
    held = torch.rand(20, 12, generator=g)
    train = torch.rand(9, 12, generator=g)
    values, up = probe_layer(rbm, held, train, probe_generator(0, 0, 40, held.device))
    gap = float(rbm.free_energy(held).mean() - rbm.free_energy(train).mean())
    assert abs(values["free_energy_gap"] - gap) < 1e-5
    assert abs(values["heldout_recon_error"] - rbm.reconstruction_error(held)) < 1e-5
    # PLL: the same units flipped, free energies computed from scratch (no rank-1 shortcut)
    gen = probe_generator(0, 0, 40, held.device)
    unit = torch.randint(12, (20,), generator=gen)
    flipped = held.clone()
    flipped[torch.arange(20), unit] = 1 - held[torch.arange(20), unit]
    pll = 12 * F.logsigmoid(rbm.free_energy(flipped) - rbm.free_energy(held))
    assert abs(values["pseudo_log_likelihood"] - float(pll.mean())) < 1e-4
    assert torch.allclose(up, rbm.hidden_probs(held))


def test_probe_never_touches_the_layer_generator_or_state() -> None:
    rbm = layer()
    before = {k: v.clone() for k, v in rbm.state_dict().items()}  # (state_dict shares storage)
    held = torch.rand(10, 12)
    probe_layer(rbm, held, held, probe_generator(1, 0, 0, held.device))
    after = rbm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_gaussian_layers_get_no_pseudo_likelihood() -> None:
    rbm = layer("gaussian")
    values, _ = probe_layer(rbm, torch.randn(8, 12), torch.randn(8, 12),
                            probe_generator(0, 0, 0, torch.device("cpu")))
    assert "pseudo_log_likelihood" not in values and "free_energy_gap" in values


def test_tile_and_image_shape() -> None:
    grid = tile(torch.rand(10, 6), (2, 3), columns=4)
    assert grid.shape == (3 * 3 + 1, 4 * 4 + 1) and grid.min() >= 0 and grid.max() <= 1
    assert image_shape(784, None) == (28, 28) and image_shape(64, None) == (8, 8)
    assert image_shape(60, None) is None and image_shape(60, [6, 10]) == (6, 10)
    assert image_shape(60, [5, 5]) is None and image_shape(64, [-8, -8]) is None


def test_gibbs_samples_of_a_stack_are_visible_means() -> None:
    low, top = layer(n_vis=12, n_hid=7), layer(n_vis=7, n_hid=5)
    top.index = 1
    v = gibbs_samples([low, top], 6, 10, torch.Generator().manual_seed(0))
    assert v.shape == (6, 12) and v.min() >= 0 and v.max() <= 1
