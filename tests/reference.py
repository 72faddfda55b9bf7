"""The specification of the weights: every layer trained in this process, in the reference order
of operations, with nothing else (no links, no monitoring, no checkpoints). The pipeline's
production loop (``pipedbn/pipeline``) must give these weights bit for bit on any plan without
replicas; the bit-equality tests compare against this, not against the production code.

    for m in 0, 1, ..., length - 1:            # the stream of micro-batches
        top = highest layer that trains on m    # skip m if no layer does
        x = micro-batch (epoch, j) of m         # permutation of (seed, epoch)
        for i in 0 .. top:
            x = layer_i.train_step(x)  if layer i trains on m   # one CD-k/PCD-k update
                                                        # (a label layer: with m's labels)
                layer_i.forward(x)     otherwise                # frozen
"""

from __future__ import annotations

import torch

from pipedbn.config import Config
from pipedbn.data.loader import Data
from pipedbn.model.rbm import RBM
from pipedbn.pipeline.layers import dtype_of, make_layers, make_schedule, train_on


def train_reference(cfg: Config, data: Data) -> list[RBM]:
    schedule = make_schedule(cfg, data.batches_per_epoch)
    layers = make_layers(cfg, data, schedule, torch.device("cpu"))
    for m in range(schedule.length):
        top = schedule.top(m)
        if top < 0:
            continue
        epoch, j = schedule.data_position(m)
        x = torch.from_numpy(data.micro_batch(epoch, j)).to(dtype_of(cfg))
        y = data.micro_batch_labels(epoch, j)
        labels = torch.from_numpy(y) if y is not None else None
        for i in range(top + 1):
            layer = layers[i]
            if schedule.trains(i, m):
                layer.step = m - schedule.starts[i]
                x = train_on(layer, x, labels, m, None)
            else:
                x = layer.forward(x, m)
    return layers
