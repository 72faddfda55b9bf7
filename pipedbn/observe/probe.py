"""Held-out probes and pictures: what a layer is measured on while it trains.

A *probe* is a fixed set of held-out samples that stage 0 attaches to micro-batch m every
``monitor.eval_every`` micro-batches; it travels up the pipeline with m (data only flows forward),
and each layer that trains on m measures itself on it just before its update on m:

- ``rbm/free_energy_gap``: mean F(held-out) - mean F(micro-batch m). It grows when the layer
  starts to overfit (Hinton, "A practical guide to training RBMs", §6);
- ``rbm/pseudo_log_likelihood``: for binary-unit layers, ``n_visible log sigmoid(F(v~) - F(v))``
  with one random unit of each sample flipped (scikit-learn's ``BernoulliRBM.score_samples``);
- ``rbm/heldout_recon_error``: the mean-field reconstruction error on the held-out samples.

The probe then passes up the same way the layer passes data (probabilities or samples). Its
randomness comes from a generator of its own, seeded by (seed, layer, m): a probe never touches
a layer's generator or state, so the weights are the same with or without monitoring.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipedbn.model.rbm import RBM, bernoulli


def probe_generator(seed: int, layer: int, m: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device).manual_seed((seed * 1_000_003 + layer) * 1_000_003 + m + 7)


@torch.no_grad()
def probe_layer(layer: RBM, held: torch.Tensor, train: torch.Tensor | None,
                generator: torch.Generator, measure: bool = True
                ) -> tuple[dict[str, float], torch.Tensor]:
    """The layer's measures on the held-out inputs ``held`` (and the training micro-batch
    ``train``, for the gap), and what the layer passes up for ``held``."""
    pre = torch.addmm(layer.hidden_bias, layer.visible_input(held), layer.weight)
    ph = layer.hidden_link(pre.clone())
    out: dict[str, float] = {}
    if measure:
        n = held.shape[0]
        recon = layer.visible_mean(ph)
        out["heldout_recon_error"] = float((held - recon).square_().sum() / n)
        f_held = layer.visible_terms(held) - layer.hidden_log_sum(pre)
        if train is not None:
            out["free_energy_gap"] = float(f_held.mean() - layer.free_energy(train).mean())
        if layer.unit_visible:
            unit = torch.randint(layer.n_visible, (n,), generator=generator,
                                 device=held.device)
            rows = torch.arange(n, device=held.device)
            flipped = held.clone()
            flipped[rows, unit] = 1 - held[rows, unit]
            delta = (flipped[rows, unit] - held[rows, unit]).unsqueeze(1)
            pre_f = pre + delta * layer.weight[unit]  # one changed unit: a rank-1 update
            f_flip = (layer.visible_energy(flipped, layer.visible_bias)
                      - layer.hidden_log_sum(pre_f))
            pll = layer.n_visible * F.logsigmoid(f_flip - f_held)
            out["pseudo_log_likelihood"] = float(pll.mean())
    up = (layer.draw_hidden(pre, ph, generator) if layer.settings.forward == "samples"
          else ph)
    return out, up


def tile(images: torch.Tensor, shape: tuple[int, int], columns: int) -> torch.Tensor:
    """Rows of ``images`` (each ``h*w`` values) as one grid image (H, W), each tile scaled to
    [0, 1] on its own, with a one-pixel border."""
    h, w = shape
    n = images.shape[0]
    rows = math.ceil(n / columns)
    x = images.detach().float().cpu().reshape(n, h, w)
    lo = x.amin(dim=(1, 2), keepdim=True)
    hi = x.amax(dim=(1, 2), keepdim=True)
    x = (x - lo) / (hi - lo).clamp_min(1e-8)
    grid = torch.ones(rows * (h + 1) + 1, columns * (w + 1) + 1)
    for k in range(n):
        r, c = divmod(k, columns)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = x[k]
    return grid


def image_shape(features: int, configured: list[int] | None) -> tuple[int, int] | None:
    """The (height, width) of one input, when the inputs are images."""
    if configured is not None:
        h, w = configured
        return (h, w) if h * w == features and min(h, w) > 0 else None
    side = math.isqrt(features)
    return (side, side) if side * side == features and side > 1 else None


@torch.no_grad()
def gibbs_samples(layers: list[RBM], n: int, steps: int, generator: torch.Generator
                  ) -> torch.Tensor:
    """``n`` samples of the DBN ``layers`` (bottom first): ``steps`` rounds of Gibbs sampling
    in the top RBM from random hidden states, then down through the layers below by their mean
    activations. Returns visible means of layer 0, (n, n_visible)."""
    top = layers[-1]
    h = bernoulli(torch.full((n, top.n_hidden), 0.5, device=top.device, dtype=top.dtype),
                  generator)
    v = top.visible_mean(h)
    for _ in range(steps):
        pre = torch.addmm(top.hidden_bias, top.visible_input(top.draw(v, generator)),
                          top.weight)
        h = top.draw_hidden(pre, top.hidden_link(pre), generator)
        v = top.visible_mean(h)
    for layer in reversed(layers[:-1]):
        v = layer.visible_mean(v)
    return v


@torch.no_grad()
def layer0_images(layer: RBM, held: torch.Tensor, shape: tuple[int, int],
                  generator: torch.Generator, samples: int = 16, steps: int = 100
                  ) -> dict[str, torch.Tensor]:
    """Layer 0's filters (up to 64 hidden units), reconstructions beside their held-out inputs,
    and samples of the RBM alone."""
    filters = tile(layer.weight[:, :64].T, shape, columns=8)
    x = held[:8]
    recon = layer.visible_mean(layer.hidden_probs(x))
    pairs = torch.stack([x, recon], 1).reshape(-1, x.shape[1])  # input, reconstruction, ...
    return {"images/filters": filters,
            "images/reconstructions": tile(pairs, shape, columns=4),
            "images/samples": tile(gibbs_samples([layer], samples, steps, generator), shape,
                                   columns=8)}
