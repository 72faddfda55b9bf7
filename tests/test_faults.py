"""tools/faults.py on tiny: torchrun jobs killed at random moments (one worker; one of two
nodes, replaced) resume from their checkpoints and end with the uninterrupted run's weights.

Process and early mode kill jobs of the same config on the same ranks, so they compare against
one uninterrupted run, made once for the module (``--trials 0``) and reused (``--reference``)."""

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


@pytest.fixture(scope="module")
def three_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted 3-rank run of tiny that process and early mode compare against: the
    ``--out`` of a ``--trials 0`` invocation, for ``--reference``."""
    tmp = tmp_path_factory.mktemp("faults-reference")
    result = _run(tmp, "--trials", "0")
    assert result["trials"] == [] and not result["reference"]["reused"]
    assert result["reference"]["window_s"] > 0 and result["reference"]["startup_s"] > 0
    return tmp / "out"


def _check(trial: dict[str, Any], killed: int) -> None:
    assert not trial["lost"] and trial["identical"], trial
    assert not trial["missed"] and len(trial["killed"]) == killed, trial
    assert trial["resumed_first"] and trial["restarts"] == 1, trial
    assert trial["resumed_from"] is not None, trial  # rank 0 logged where it resumed
    # after the kill: the old workers went, new ones came, and training went on
    assert 0 <= trial["gone_s"] <= trial["up_s"] <= trial["back_s"] < trial["wall_s"], trial


@pytest.mark.slow
def test_a_killed_worker_resumes_to_the_same_weights(tmp_path: Path, three_ranks: Path) -> None:
    # seed 1: rank 0 mid-training (the other ranks die too: in start-up in the early test,
    # two at once mid-training in the node test; torchrun restarts every worker either way)
    result = _run(tmp_path, "--trials", "1", "--seed", "1", "--reference", str(three_ranks))
    assert result["reference"]["reused"]
    (trial,) = result["trials"]
    _check(trial, killed=1)
    assert trial["killed"] == [0], trial
    assert result["summary"].startswith("trials 1, resumed on first restart 1, identical 1, "
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
def test_early_kills_resume_to_the_same_weights(tmp_path: Path, three_ranks: Path) -> None:
    # trial 0: a random rank in the start-up; trial 1: rank 0 as it claims the run directory
    result = _run(tmp_path, "--mode", "early", "--trials", "2", "--reference", str(three_ranks))
    assert result["reference"]["reused"]
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


def test_a_reused_reference_must_match(tmp_path: Path) -> None:
    """``--reference`` takes the figures of an earlier reference made with the same config,
    overrides and ranks, and refuses one made otherwise or not finished."""
    import torch
    from safetensors.torch import save_file

    prev = tmp_path / "prev"
    (prev / "reference").mkdir(parents=True)
    args = faults.parse_args(["--trials", "0", "--out", str(tmp_path / "new"),
                              "--reference", str(prev)])
    with pytest.raises(SystemExit, match="no finished reference"):
        faults.reference(args)
    save_file({"w": torch.zeros(1)}, prev / "reference" / "model.safetensors")
    figures = {"layers": 3, "window_s": 2.0, "wall_s": 9.0, "startup_s": 1.5}
    (prev / "reference.json").write_text(json.dumps({**faults.made_with(args), **figures}))
    ref = faults.reference(args)
    assert (ref.layers, ref.window_s, ref.wall_s, ref.startup_s) == (3, 2.0, 9.0, 1.5)
    assert ref.run_dir == (prev / "reference").resolve()
    node = faults.parse_args(["--mode", "node", "--out", str(tmp_path / "node"),
                              "--reference", str(prev)])
    with pytest.raises(SystemExit, match="made otherwise: nproc: 3 there, 4 here; overrides"):
        faults.reference(node)
