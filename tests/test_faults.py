"""tools/faults.py on tiny: torchrun jobs killed at random moments (one worker; one of two
nodes, replaced) resume from their checkpoints and end with the uninterrupted run's weights."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "faults.py"


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("faults", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["faults"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


faults = _load_tool()


def _run(tmp_path: Path, *args: str) -> dict[str, Any]:
    report = tmp_path / "faults.json"
    code = faults.main([*args, "--out", str(tmp_path / "out"), "--json", str(report),
                        "--timeout", "100"])
    result: dict[str, Any] = json.loads(report.read_text())
    assert code == 0, result["summary"]
    return result


def _check(trial: dict[str, Any], killed: int) -> None:
    assert not trial["lost"] and trial["identical"], trial
    assert not trial["missed"] and len(trial["killed"]) == killed, trial
    assert trial["resumed_first"] and trial["restarts"] == 1, trial
    assert trial["resumed_from"] is not None, trial  # rank 0 logged where it resumed
    # after the kill: the old workers went, new ones came, and training went on
    assert 0 <= trial["gone_s"] <= trial["up_s"] <= trial["back_s"] < trial["wall_s"], trial


@pytest.mark.slow
def test_a_killed_worker_resumes_to_the_same_weights(tmp_path: Path) -> None:
    result = _run(tmp_path, "--trials", "2", "--seed", "1")
    assert len(result["trials"]) == 2
    for trial in result["trials"]:
        _check(trial, killed=1)
    assert result["summary"].startswith("trials 2, resumed on first restart 2, identical 2, "
                                        "lost 0;")


@pytest.mark.slow
def test_a_lost_node_replaced_resumes_to_the_same_weights(tmp_path: Path) -> None:
    # heartbeats every second: the survivor's rendezvous drops the dead node after 3 s, not 15;
    # a replaced node needs the agents' store per round (docs/reliability.md: torch's limit)
    result = _run(tmp_path, "--mode", "node", "--trials", "1", "--keep-alive", "1",
                  "--env", "no-share")
    (trial,) = result["trials"]
    _check(trial, killed=2)
    assert sorted(trial["exit_codes"]) == [-9, 0, 0]  # the killed agent, the survivor, the new


@pytest.mark.slow
def test_early_kills_resume_to_the_same_weights(tmp_path: Path) -> None:
    # trial 0: a random rank in the start-up; trial 1: rank 0 as it claims the run directory
    result = _run(tmp_path, "--mode", "early", "--trials", "2")
    up, claim = result["trials"]
    assert (up["trigger"], claim["trigger"]) == ("up", "claim")
    for trial in (up, claim):
        assert not trial["lost"] and trial["identical"] and not trial["missed"], trial
        assert trial["resumed_first"] and trial["restarts"] == 1, trial
    assert claim["killed"] == [0] and claim["resumed_from"] is not None, claim


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The tool's verdicts on made-up run directories: one flipped bit is a mismatch, a
    checkpoint is complete only with every layer's part, and the resume line is read."""
    import torch
    from safetensors.torch import save_file

    a, b = tmp_path / "a", tmp_path / "b"
    weights = {"layers.0.weight": torch.rand(4, 3), "layers.0.hidden_bias": torch.rand(3)}
    for d in (a, b):
        d.mkdir()
        save_file(weights, d / "model.safetensors")
    assert faults.same_model(a, b)
    flipped = weights["layers.0.weight"].clone()
    flipped.view(torch.int32)[0, 0] ^= 1
    save_file({**weights, "layers.0.weight": flipped}, b / "model.safetensors")
    assert not faults.same_model(a, b)

    for c, layers in ((10, 2), (20, 1)):
        for i in range(layers):
            (a / "checkpoints" / f"step-{c}").mkdir(parents=True, exist_ok=True)
            (a / "checkpoints" / f"step-{c}" / f"layer-{i}.json").write_text("{}")
    assert faults.complete_checkpoints(a, 2) == [10]

    log = tmp_path / "agent-0.log"
    log.write_text("[pipedbn rank 0] resuming /x/run from the start (no complete checkpoint)\n"
                   "[pipedbn rank 0] resuming /x/run from step-40 (micro-batch 40 of 98)\n")
    assert faults.resumed_from([log]) == "40"
    (a / "metrics.jsonl").write_text(
        '{"step": 3, "tag": "rbm/lr", "wall_time": 5.0}\n'
        '{"step": 0, "tag": "eval/recon_error", "wall_time": 7.0}\n'
        '{"step": 4, "tag": "pipeline/busy_frac", "wall_time": 9.0}\n{"step": 5, "ta')
    assert faults.first_training_record(a, 6.0) == 9.0
