"""Joining the process group, in a key namespace of this attempt alone.

Under torchrun's default environment the workers' store (``MASTER_ADDR:MASTER_PORT``) is a
TCPStore server that the rank-0 agent creates once and keeps across rendezvous rounds
(``DynamicRendezvousHandler.next_rendezvous``: ``_shared_tcp_store_server`` is made only
"when this is the first rendezvous or when the node became rank 0"), while
``torch.distributed.rendezvous._create_c10d_store`` assumes "a new TCPStore for every retry so
no need to add prefix for each attempt". Restarted workers then find the keys of the attempt
before, and gloo's full-mesh connect reads dead peers' addresses: "Connection refused", or a
hang in ``waitUntilConnected``.

Nothing in a worker's environment names the attempt in a way every agent shares: the
rendezvous round stays in the agents' own store, and ``TORCHELASTIC_RESTART_COUNT`` counts per
agent (a replacement node starts again from 0; a membership change restarts without counting).
So the workers agree on a namespace themselves, over the base store, in a way that no key of
an earlier attempt can answer (by then all of that attempt's workers have been stopped):

1. Every worker takes a ticket, ``add("pipedbn/ticket", 1)``: a number no earlier worker held.
2. Rank 0 draws a fresh token and writes it under ``pipedbn/token/<t>`` for every ticket ``t``
   that may belong to this attempt: from its own ticket less ``world - 1`` (the others that
   took theirs before it) to the newest, again and again until every rank has acknowledged.
3. A worker reads the token under its own ticket (only this attempt's rank 0 can have written
   it), acknowledges it under ``pipedbn/<token>/ack/<rank>`` (fresh keys), and every rank joins
   the group through ``PrefixStore("pipedbn/<token>/", store)``.

All of it, and gloo's connect, is bounded by ``pipeline.connect_timeout``; the group's
collectives then wait up to ``pipeline.setup_timeout``.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import torch.distributed as dist
from torch.distributed.distributed_c10d import _set_pg_timeout

from pipedbn.errors import UserError

TICKET = "pipedbn/ticket"
POLL_S = 0.02


class JoinError(UserError):
    """The processes of an attempt did not all join within ``pipeline.connect_timeout``, or
    their store went away: a lost peer or agent, not a mistake that recurs (so not exit 2)."""

    exit_code = 1


def join_group(backend: str, rank: int, world: int, connect_timeout: float,
               setup_timeout: float) -> str:
    """Join the default process group in this attempt's namespace; returns its token."""
    timeout = timedelta(seconds=connect_timeout)
    deadline = time.monotonic() + connect_timeout
    try:
        base, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world,
                                          timeout=timeout))
        base.set_timeout(timeout)
        token = _lead(base, world, deadline) if rank == 0 else _follow(base, rank, deadline)
        dist.init_process_group(backend, store=dist.PrefixStore(f"pipedbn/{token}/", base),
                                rank=rank, world_size=world, timeout=timeout)
    except RuntimeError as e:  # torch's DistError and DistStoreError among them
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JoinError(f"could not connect to the other {world - 1} processes "
                        f"within pipeline.connect_timeout ({connect_timeout:g} s): {first}"
                        ) from None
    base.set_timeout(timedelta(seconds=setup_timeout))
    _set_pg_timeout(timedelta(seconds=setup_timeout))
    return token


def _lead(base: dist.Store, world: int, deadline: float) -> str:
    token = uuid.uuid4().hex
    first = max(1, base.add(TICKET, 1) - (world - 1))
    acks = [f"pipedbn/{token}/ack/{r}" for r in range(1, world)]
    answered = first
    while True:
        newest = base.add(TICKET, 0)
        for t in range(answered, newest + 1):
            base.set(f"pipedbn/token/{t}", token)
        answered = max(answered, newest + 1)
        if not acks or base.check(acks):
            return token
        if time.monotonic() > deadline:
            missing = [r for r, key in enumerate(acks, start=1) if not base.check([key])]
            raise JoinError(f"ranks {missing} did not join within pipeline.connect_timeout; "
                            "they or their node were lost, or started too late")
        time.sleep(POLL_S)


def _follow(base: dist.Store, rank: int, deadline: float) -> str:
    key = f"pipedbn/token/{base.add(TICKET, 1)}"
    while not base.check([key]):
        if time.monotonic() > deadline:
            raise JoinError("rank 0 did not answer within pipeline.connect_timeout; it or "
                            "its node was lost, or started too late")
        time.sleep(POLL_S)
    token = base.get(key).decode()
    base.set(f"pipedbn/{token}/ack/{rank}", "1")
    return token
