"""A run in this process: the same stage loop as every distributed run (``worker.py``), on a
plan of one stage that holds every layer, so its weights are those of any plan without replicas.

The order of operations (see also ``schedule.py`` and ``rbm.py``; ``tests/reference.py`` writes
it out as the specification the bit-equality tests compare every plan against):

    for m in 0, 1, ..., length - 1:            # the stream of micro-batches
        top = highest layer that trains on m    # skip m if no layer does
        x = micro-batch (epoch, j) of m         # permutation of (seed, epoch), read ahead
        for i in 0 .. top:
            x = layer_i.train_step(x)  if layer i trains on m   # one CD-k/PCD-k update
                layer_i.forward(x)     otherwise                # frozen
            every check_every updates: every parameter of layer i is finite

Each layer draws only from its own generator, seeded from (seed, i), and only inside its own
``train_step``/``forward``; what a layer computes therefore depends on nothing but its input
sequence, which is what lets each layer run on its own rank and still give the same weights.
Monitoring (metrics, held-out evaluation) never touches a layer's generator.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipedbn.config import Config
from pipedbn.data.loader import Data
from pipedbn.observe.monitor import Metrics
from pipedbn.observe.progress import Progress
from pipedbn.pipeline.context import RankContext
from pipedbn.pipeline.device import local_device
from pipedbn.pipeline.finish import Closing, Result, close_run
from pipedbn.pipeline.layers import dtype_of, make_schedule
from pipedbn.pipeline.rank import RankRun
from pipedbn.pipeline.runner import StageStats
from pipedbn.pipeline.setup import Setup
from pipedbn.pipeline.worker import open_rank0, train
from pipedbn.run.checkpoint import Checkpoint


def train_in_process(cfg: Config, data: Data, metrics: Metrics, run_dir: Path | None = None,
                     resume: Checkpoint | None = None) -> Result:
    """Train every layer in this process; with a ``run_dir``, take checkpoints there
    (``checkpoint.py``), the final state included, then export the model and write the summary;
    with ``resume``, continue from that checkpoint."""
    ctx = RankContext(0, 1, local_device(cfg.train.device), dtype_of(cfg),
                      cfg.pipeline.timeout, cfg.pipeline.setup_timeout)
    setup = Setup.in_process(cfg, run_dir, data, resume)
    schedule = make_schedule(cfg, data.batches_per_epoch)
    progress = Progress(cfg, schedule, None, 0, 1)
    run = RankRun(cfg, ctx, setup, schedule, metrics, progress, StageStats(0, None, []), None,
                  data)
    opening = open_rank0(run)
    opening.t0 = time.perf_counter()
    try:
        held = train(run)
    finally:
        progress.close()
    trained = [held[i] for i in range(len(cfg.layers))]
    return close_run(cfg, data, opening, Closing([run.stats], trained, run_dir),
                     metrics)
