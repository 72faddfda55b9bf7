"""The nrelu kinds, centering and parallel tempering through the pipeline: two processes equal
the in-process reference bit for bit, a resume under another world size ends equal, the export
loads with its kinds, ``pipedbn eval`` says what it can measure, and PT's swap rate is logged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ONE_THREAD, cli
from test_distributed import TINY, assert_run_equals, reference
from test_resume import EVERY, assert_same, cut_back
from warm_cli import WarmCLI

from pipedbn import load
from pipedbn.eval.evaluation import EvalOptions, run_eval

pytestmark = pytest.mark.slow  # every test here starts processes

VARIANTS = [
    ("nrelu-centred", ["layers=[{hidden: 32, kind: bernoulli-nrelu}, "
                       "{hidden: 24, kind: gaussian-nrelu, centering: true}]",
                       "layers.0.forward=samples"]),
    ("pt-centred", ["layers=[32, 24]", "rbm.method=pt", "rbm.pt_temperatures=3",
                    "layers.1.centering=true"]),
]


@pytest.mark.parametrize("overrides", [v[1] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_new_kinds_and_methods_keep_the_pipeline_contract(tmp_path: Path, overrides: list[str],
                                                          warm: WarmCLI) -> None:
    full = tmp_path / "full"
    proc = cli("train", TINY, f"run.dir={full}", *EVERY, *overrides, "balancer.plan=0|1",
               "--nproc", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    assert_run_equals(full, reference(overrides))
    cut_back(full, tmp_path / "resumed", 40)
    # --nproc 1 resumes in the process the user started: the warm interpreter's child
    proc = warm.cli("train", TINY, ONE_THREAD, "--resume", str(tmp_path / "resumed"), *EVERY,
                    *overrides, "--nproc", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    assert_same(full, tmp_path / "resumed")

    model = load(full)
    result, _ = run_eval(full, None, EvalOptions(ais_chains=10, ais_temperatures=50,
                                                 probe_samples=200))
    rows = result["layers"]
    if model.kinds[0] == "bernoulli-nrelu":
        assert model.kinds == ["bernoulli-nrelu", "gaussian-nrelu"]
        assert "log_likelihood" not in rows[0]
        assert any("not available" in n for n in result["notes"])
        assert "pseudo_log_likelihood" in rows[0]
    else:
        assert model.kinds == ["bernoulli", "bernoulli"]
        assert rows[0]["log_likelihood_method"] == "ais"
        tags = {json.loads(line)["tag"] for line in (full / "metrics.jsonl").open()}
        assert "rbm/pt_swap_rate" in tags
