"""The top RBM of Hinton, Osindero & Teh (2006): binary features joined by K softmax label units.

Its visible layer is the features v (binary, from the layer below) and a one-hot label l:

    E(v, l, h) = -v.vb - l.lb - h.hb - v'Wh - l'Uh
    p(h_j = 1 | v, l) = sigmoid(vW + lU + hb)_j
    p(v_i = 1 | h) = sigmoid(hW' + vb)_i,   p(l = k | h) = softmax(hU' + lb)_k
    F(v, l) = -v.vb - l.lb - sum_j softplus(vW + lU + hb)_j

``weight``, ``visible_bias`` and ``hidden_bias`` are those of the features, so that everything
that measures a layer on its input alone (probes, reconstruction, the end-of-run evaluation,
``Model.transform``) works unchanged, with the label units off; ``label_weight`` (K, n_hidden) and
``label_bias`` (K) are the label units' own. Training needs each micro-batch's labels
(``train_labelled``): the CD-k/PCD-k update of ``rbm.py`` in the same order of operations, the
label units sampled after the features at every Gibbs step that samples (one uniform per row:
the first k whose cumulative probability exceeds it) and kept as probabilities where CD keeps
the features' mean. A test row is classified by the label of least free energy,
``argmin_k F(v, e_k)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from pipedbn.model.rbm import VELOCITY, Enumeration, RBMSettings, bernoulli, replica_rates
from stages.bernoulli import BernoulliRBM

LABEL_PARAMETERS = ("label_weight", "label_bias")
"""The label units' parameters: exported as ``layers.{i}.label_weight`` / ``label_bias``."""


def label_free_energies(v: torch.Tensor, weight: torch.Tensor, hidden_bias: torch.Tensor,
                        label_weight: torch.Tensor, label_bias: torch.Tensor,
                        chunk: int = 1024) -> torch.Tensor:
    """``F(v, e_k) + v.vb`` for every row and label, (rows, K): the free energy of each label
    but the features' own term, which is the same for every k. ``chunk`` rows at a time bound
    the (rows, K, n_hidden) intermediate."""
    out = []
    for lo in range(0, v.shape[0], chunk):
        pre = torch.addmm(hidden_bias, v[lo:lo + chunk], weight)
        joint = pre.unsqueeze(1) + label_weight.unsqueeze(0)  # (rows, K, n_hidden)
        out.append(-label_bias - F.softplus(joint).sum(2))
    return torch.cat(out) if out else v.new_zeros(0, label_bias.shape[0])


def draw_label(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A one-hot sample per row of the categorical ``probs`` (one uniform draw per row)."""
    u = torch.empty(probs.shape[0], 1, dtype=probs.dtype, device=probs.device)
    u.uniform_(generator=generator)
    k = (probs.cumsum(1) < u).sum(1).clamp_(max=probs.shape[1] - 1)
    return F.one_hot(k, probs.shape[1]).to(probs.dtype)


class LabelRBM(BernoulliRBM):
    kind = "label"
    default_lr = 0.1
    temperable = False
    # the label units join the visible side, which the bernoulli formulas leave out
    exact_likelihood: ClassVar[Enumeration] = "none"
    ais = False

    label_weight: torch.nn.Parameter
    label_bias: torch.nn.Parameter
    label_weight_inc: torch.Tensor
    label_bias_inc: torch.Tensor
    label_chains: torch.Tensor

    def __init__(self, n_visible: int, n_hidden: int, settings: RBMSettings, *, labels: int,
                 **kw: Any) -> None:
        """``n_visible``: the features (the layer below's hidden units); ``labels``: K."""
        super().__init__(n_visible, n_hidden, settings, **kw)
        self.labels = labels
        like: dict[str, Any] = {"device": self.device, "dtype": self.dtype}
        u = torch.randn(labels, n_hidden, generator=self.generator, **like)
        u.mul_(settings.init_std)
        for name, t in zip(LABEL_PARAMETERS, (u, torch.zeros(labels, **like)), strict=True):
            self.register_parameter(name, torch.nn.Parameter(t, requires_grad=False))
        for name in LABEL_PARAMETERS:
            self.register_buffer(VELOCITY.format(name), torch.zeros_like(self.get_parameter(name)))
        # PCD's chains hold the hidden states; the labels never need keeping between updates.

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y.long(), self.labels).to(self.dtype)

    def classify(self, v: torch.Tensor) -> torch.Tensor:
        """The label of least free energy for each row of features ``v``."""
        return label_free_energies(v, self.weight, self.hidden_bias, self.label_weight,
                                   self.label_bias).argmin(1)

    @torch.no_grad()
    def train_step(self, v0: torch.Tensor, micro_batch: int = -1,
                   stats: dict[str, float] | None = None, replicas: int = 1) -> torch.Tensor:
        raise RuntimeError(f"layer {self.index}: a label layer trains on features with their "
                           "labels (train_labelled)")

    @torch.no_grad()
    def train_labelled(self, v0: torch.Tensor, y: torch.Tensor, micro_batch: int = -1,
                       stats: dict[str, float] | None = None, replicas: int = 1
                       ) -> torch.Tensor:
        """One CD-k / PCD-k update on features ``v0`` with class indices ``y`` (see the module
        doc and ``rbm.py``); returns what the layer passes up."""
        c = self.settings
        pcd = c.method == "pcd"
        t = self.step
        lr, mom = replica_rates(self.lr_at(t), self.momentum_at(t), replicas)
        batch = v0.shape[0]
        w, vb, hb = self.weight, self.visible_bias, self.hidden_bias
        u, lb = self.label_weight, self.label_bias
        g = self.generator
        l0 = self.one_hot(y)

        ph0 = torch.addmm(hb, v0, w).addmm_(l0, u).sigmoid_()
        self._check(ph0, micro_batch)
        h0 = None if pcd else bernoulli(ph0, g)
        h = self.chains if pcd else h0
        assert h is not None
        for s in range(c.k):
            sample = pcd or s < c.k - 1
            vm = torch.addmm(vb, h, w.T).sigmoid_()
            lm = torch.addmm(lb, h, u.T).softmax(1)
            v = bernoulli(vm, g) if sample else vm
            lab = draw_label(lm, g) if sample else lm
            ph = torch.addmm(hb, v, w).addmm_(lab, u).sigmoid_()
            if sample:
                h = bernoulli(ph, g)
        if pcd:
            self.chains = h
        n_neg = v.shape[0]

        recon_error = 0.0
        if stats is not None:
            recon = torch.addmm(vb, ph0, w.T).sigmoid_()
            recon_error = float((v0 - recon).square_().sum() / batch)
            stats["label_error"] = float((self.classify(v0) != y).float().mean())

        for inc, pos, neg, par in ((self.weight_inc, v0, v, w),
                                   (self.label_weight_inc, l0, lab, u)):
            inc.addmm_(pos.T, ph0, beta=mom, alpha=lr / batch)
            inc.addmm_(neg.T, ph, alpha=-lr / n_neg)
            if c.weight_decay:
                inc.add_(par, alpha=-lr * c.weight_decay)
        v0_mean, l0_mean, ph0_mean = v0.mean(0), l0.mean(0), ph0.mean(0)
        dhb = ph0_mean - ph.mean(0)
        if c.sparsity_cost:
            q = self.hidden_activity.mul_(c.sparsity_decay).add_(
                ph0_mean, alpha=1.0 - c.sparsity_decay)
            push = (c.sparsity_target - q).mul_(c.sparsity_cost)
            dhb.add_(push)
            self.weight_inc.addr_(v0_mean, push, alpha=lr)
            self.label_weight_inc.addr_(l0_mean, push, alpha=lr)
        self.visible_bias_inc.mul_(mom).add_(v0_mean - v.mean(0), alpha=lr)
        self.label_bias_inc.mul_(mom).add_(l0_mean - lab.mean(0), alpha=lr)
        self.hidden_bias_inc.mul_(mom).add_(dhb, alpha=lr)
        for par, inc in ((w, self.weight_inc), (vb, self.visible_bias_inc),
                         (hb, self.hidden_bias_inc), (u, self.label_weight_inc),
                         (lb, self.label_bias_inc)):
            par.add_(inc)
        self.step += 1

        if stats is not None:
            stats["recon_error"] = recon_error
            stats["hidden_mean"] = float(ph0_mean.mean())
            stats["lr"] = lr
            stats["momentum"] = mom
        if c.forward == "samples":
            return h0 if h0 is not None else bernoulli(ph0, g)
        return ph0
