"""The simulated links: one channel of ordered messages per (kind, sender, receiver), each
message priced by the ``Network`` link between its two ranks."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipedbn.sim.engine import Engine, Transfer
from pipedbn.sim.inputs import Link, Network


@dataclass
class Channel:
    """Messages from one rank to another, in order (created on first use)."""

    src: int
    dst: int
    messages: list[Transfer] = field(default_factory=list)

    def message(self, n: int) -> Transfer:
        while len(self.messages) <= n:
            self.messages.append(Transfer(self.src, self.dst))
        return self.messages[n]


class Wires:
    """Every channel of one run, on one engine."""

    def __init__(self, engine: Engine, network: Network) -> None:
        self.engine, self.network = engine, network
        self.channels: dict[tuple[str, int, int], Channel] = {}

    def channel(self, kind: str, src: int, dst: int) -> Channel:
        key = (kind, src, dst)
        if key not in self.channels:
            self.channels[key] = Channel(src, dst)
        return self.channels[key]

    def transmit(self, t: Transfer, nbytes: float, messages: int = 1, link: Link | None = None
                 ) -> None:
        """Send ``t``: ``nbytes`` hold both ports, each of ``messages`` adds the latency;
        priced on ``link`` if given, else on the link between its two ranks."""
        link = link or self.network.between(t.src, t.dst)
        t.occupy, t.delay, t.cpu = nbytes / link.bandwidth, messages * link.latency, link.cpu
        self.engine.send(t)
