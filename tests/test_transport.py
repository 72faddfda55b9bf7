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


def _stage(rank: int, store_path: str, out: str, window: int, slow: float, die_after: int
           ) -> None:
    import torch.distributed as dist

    from pipedbn.pipeline.transport import LinkError, Receiver, Sender

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank,
                            world_size=2)
    result: dict[str, object] = {}
    try:
        if rank == 0:
            tx = Sender(1, ROWS, FEATURES, torch.float32, torch.device("cpu"), window, 10.0,
                        "stage 0")
            for m, x in enumerate(_batches()):
                tx.send(m, x)
            tx.close()
            result["max_in_flight"] = tx.max_in_flight
        else:
            rx = Receiver(0, ROWS, FEATURES, torch.float32, torch.device("cpu"), 10.0, "stage 1")
            got = []
            for m, x in rx:
                if m == die_after:
                    os._exit(17)  # a stage that dies mid-stream
                got.append((m, x.clone()))
                time.sleep(slow)
            result["got"] = got
    except LinkError as e:
        result["error"] = str(e)
    torch.save(result, out)
    if "error" not in result:
        dist.destroy_process_group()


def _run(tmp_path: Path, window: int = 2, slow: float = 0.0, die_after: int = -1
         ) -> list[dict]:
    ctx = mp.get_context("spawn")
    outs = [str(tmp_path / f"out{r}.pt") for r in range(2)]
    procs = [ctx.Process(target=_stage, args=(r, str(tmp_path / "store"), outs[r], window, slow,
                                              die_after)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
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


def test_a_slow_receiver_never_lets_more_than_the_window_pile_up(tmp_path: Path) -> None:
    sent, got = _run(tmp_path, window=3, slow=0.05)
    assert len(got["got"]) == 7
    assert sent["max_in_flight"] == 3  # reached, never exceeded


def test_a_dead_receiver_fails_the_sender_with_a_message(tmp_path: Path) -> None:
    t0 = time.monotonic()
    sent, _ = _run(tmp_path, window=1, die_after=1)
    assert "stage 0: lost stage 1 while sending" in sent.get("error", ""), sent
    assert time.monotonic() - t0 < 30
