"""The stage-to-stage transport, between two real processes on gloo (no ports: a FileStore)."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # every test here starts processes

FEATURES, ROWS = 6, 5


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sizes = [ROWS] * 6 + [3]  # a partial final micro-batch
    return [torch.rand(n, FEATURES, generator=g) for n in sizes]


def _labels(m: int, rows: int) -> torch.Tensor:
    return torch.arange(rows, dtype=torch.int64) + 100 * m


def _stage(rank: int, store_path: str, out: str, window: int, slow: float, die_after: int,
           labels: bool = False) -> None:
    import torch.distributed as dist

    from pipedbn.pipeline.transport import LinkError, Receiver, Sender

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank,
                            world_size=2)
    result: dict[str, object] = {}
    try:
        if rank == 0:
            extras = [((), torch.int64)] if labels else []
            tx = Sender(1, ROWS, FEATURES, torch.float32, torch.device("cpu"), window, 10.0,
                        "stage 0", extras=extras)
            for m, x in enumerate(_batches()):
                tx.send(m, x, extras=[_labels(m, len(x))] if labels else [])
            tx.close()
            result["max_in_flight"] = tx.max_in_flight
        else:
            rx = Receiver(0, ROWS, FEATURES, torch.float32, torch.device("cpu"), 10.0, "stage 1",
                          extras=[((), torch.int64)] if labels else [])
            got, carried = [], []
            for m, x in rx:
                if m == die_after:
                    os._exit(17)  # a stage that dies mid-stream
                got.append((m, x.clone()))
                carried.append([e.clone() for e in rx.extras])
                time.sleep(slow)
            result["got"], result["extras"] = got, carried
    except LinkError as e:
        result["error"] = str(e)
    torch.save(result, out)
    if "error" not in result:
        dist.destroy_process_group()


def _run(tmp_path: Path, window: int = 2, slow: float = 0.0, die_after: int = -1,
         labels: bool = False) -> list[dict]:
    ctx = mp.get_context("spawn")
    outs = [str(tmp_path / f"out{r}.pt") for r in range(2)]
    procs = [ctx.Process(target=_stage, args=(r, str(tmp_path / "store"), outs[r], window, slow,
                                              die_after, labels)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)  # (spawning two torch processes takes a minute on a loaded machine)
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail("a stage hung")
    return [torch.load(o, weights_only=False) if os.path.exists(o) else {} for o in outs]


def test_micro_batches_arrive_bitwise_in_order_with_a_partial_last_one(tmp_path: Path) -> None:
    sent, got = _run(tmp_path)
    batches = _batches()
    assert [m for m, _ in got["got"]] == list(range(len(batches)))
    for (_, x), y in zip(got["got"], batches, strict=True):
        assert torch.equal(x, y)  # the partial batch keeps its 3 rows, no padding
    assert sent["max_in_flight"] <= 2


def test_a_message_carries_extra_tensors_beside_its_rows(tmp_path: Path) -> None:
    # one message per micro-batch: the labels travel in the payload's message, not a second
    _, got = _run(tmp_path, window=2, labels=True)
    batches = _batches()
    assert [m for m, _ in got["got"]] == list(range(len(batches)))
    for m, ((_, x), extras, y) in enumerate(zip(got["got"], got["extras"], batches,
                                                strict=True)):
        assert torch.equal(x, y)
        assert len(extras) == 1 and torch.equal(extras[0], _labels(m, len(y)))


def test_the_layout_packs_payload_extras_and_header_aligned() -> None:
    from pipedbn.pipeline.transport import Layout

    layout = Layout(5, 3, torch.float32, (((), torch.int64), ((2,), torch.float64)))
    msg = layout.buffer(torch.device("cpu"))
    assert msg.payload.shape == (5, 3) and msg.payload.dtype == torch.float32
    assert [e.shape for e in msg.extras] == [(5,), (5, 2)]
    assert layout.header_at % 8 == 0 and layout.nbytes == layout.header_at + 24
    msg.write_header(7, 4, 0)
    assert msg.read_header() == (7, 4, 0)
    msg.payload.fill_(1.5)
    msg.extras[0].fill_(-3)
    assert msg.read_header() == (7, 4, 0)  # the parts do not overlap
    assert (msg.payload == 1.5).all() and (msg.extras[0] == -3).all()


def test_a_slow_receiver_never_lets_more_than_the_window_pile_up(tmp_path: Path) -> None:
    sent, got = _run(tmp_path, window=3, slow=0.05)
    assert len(got["got"]) == 7
    assert sent["max_in_flight"] == 3  # reached, never exceeded


def test_a_dead_receiver_fails_the_sender_with_a_message(tmp_path: Path) -> None:
    t0 = time.monotonic()
    sent, _ = _run(tmp_path, window=1, die_after=1)
    assert "stage 0: lost stage 1 while sending" in sent.get("error", ""), sent
    assert time.monotonic() - t0 < 30
