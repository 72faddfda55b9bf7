"""A discrete-event simulation of pipedbn's streaming pipeline: predicted samples/s for a plan
(``pipedbn simulate``, docs/simulate.md).

What it models (each rule is the engine's, see ``pipedbn/pipeline/runner.py``, ``links.py``,
``transport.py`` and ``replicas.py``; where the engine has the rule as a function, the
simulator calls it):

- the stream m = 0..L-1 of a real ``Schedule``; micro-batch m goes up to ``schedule.top(m)``, a
  stage handles m iff one of its layers is <= top(m), replica ``m mod r`` of an r-replica stage
  (``runner.Role.micro_batches``); replica i below feeds replica j above iff ``links.feeds``;
- a stage's time for m: per layer, in order, its training step (or its frozen forward pass) on
  a core, then its non-CPU delay (a straggler's sleep, a GPU's time);
- a message between stages costs ``latency + bytes / bandwidth`` (the payload is always the
  link's static ``batch x width``); its bytes hold the sender's and the receiver's port (one
  message at a time each way per rank), its latency does not; a sender keeps at most
  ``window`` unconfirmed messages per link and waits for the oldest when full; a message moves
  only once its receiver has posted a buffer for it (gloo's rendezvous), and a receiver keeps
  two posted, re-posting one when it asks for the next message;
- the end of the stream: two END messages per link, each stage closes after its input ended;
- replicas tick at ``pipedbn.pipeline.replicas.round_boundaries`` (no checkpoints); ``bsp`` and
  ``bsp_delayed`` all-reduce the stage's update (``collective``: a ring inside a node, two-level
  across nodes; ``bsp_delayed`` waits for tick c's at tick c + 1); ``ssp`` (and ``bsp`` with
  ``collective="p2p"``) sends each peer ``messages`` messages with the parameter delta; p2p
  ``bsp`` waits for each peer's tick,
  ``ssp`` only for peers more than ``staleness`` ticks behind; ``adaptive`` is modelled as
  ``ssp`` at its maximum staleness, without its barriers (an optimistic bound); the last update
  goes out marked FINAL;
- ``cores``: CPU work shares that many cores (processor sharing); None = a device per rank.

Not modelled: monitoring (probes, metrics), heartbeats, checkpoints, re-planning, the time
before the stream starts and after it ends (setup, final save), the sync's own arithmetic.

Modules: ``engine`` (processes, shared cores, transfers), ``inputs`` (costs, links, policy,
checks), ``wires`` (the channels), ``sync`` (a replica's point-to-point sync), ``collective``
(its all-reduce), ``stream`` (the runner's loop,
``simulate``), ``result``, ``fromconfig`` (a config's run).
"""

from pipedbn.sim.fromconfig import (
    Machine,
    StepTimes,
    data_shape,
    flops_step_s,
    from_config,
    load,
    plan_world,
)
from pipedbn.sim.inputs import (
    COLLECTIVES,
    SYNC_KINDS,
    LayerCost,
    Link,
    Network,
    Options,
    SimStage,
    SyncPolicy,
    stages_of,
)
from pipedbn.sim.result import RankResult, SimResult
from pipedbn.sim.stream import simulate

__all__ = ["COLLECTIVES", "SYNC_KINDS", "LayerCost", "Link", "Machine", "Network", "Options",
           "RankResult", "SimResult", "SimStage", "StepTimes", "SyncPolicy", "data_shape",
           "flops_step_s", "from_config", "load", "plan_world", "simulate", "stages_of"]
