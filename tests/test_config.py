"""Config: YAML, overrides with dotted paths and list indices, every mistake reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipedbn.config import dump_yaml, load_config, resolve_defaults
from pipedbn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def problems(tmp_path: Path, text: str, *overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), list(overrides))
    return e.value.problems


def test_bundled_configs_load_and_start_with_their_command() -> None:
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.layers, path
        assert path.read_text().splitlines()[0].startswith("# pipedbn train configs/"), path


def test_layers_inherit_rbm_section_and_may_override_it(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
layers: [{hidden: 20}, {hidden: 10, k: 3, method: pcd}]
rbm: {k: 2, lr: 0.05}
"""))
    assert [(lc.hidden, lc.k, lc.method, lc.lr) for lc in cfg.layers] == [
        (20, 2, "cd", 0.05), (10, 3, "pcd", 0.05)]


def test_overrides_dotted_paths_list_indices_and_append(tmp_path: Path) -> None:
    path = write(tmp_path, "layers: [{hidden: 20}, {hidden: 10}]\n")
    cfg = load_config(path, ["layers.1.hidden=256", "rbm.lr=0.5", "layers.0.k=4",
                             "data.path=[a.npy, b.npy]", "train.schedule=greedy", "seed=7",
                             "layers.2.hidden=5", "run.dir=/tmp/x"])
    assert cfg.sizes == [20, 256, 5]
    assert cfg.layers[0].k == 4 and all(lc.lr == 0.5 for lc in cfg.layers)
    assert cfg.data.path == ["a.npy", "b.npy"] and cfg.seed == 7
    assert load_config(path, ["rbm.lr=1e-3"]).layers[0].lr == 0.001  # YAML 1.1 says "1e-3"
    assert cfg.train.schedule == "greedy" and cfg.run.dir == "/tmp/x"
    assert load_config(path, ["data.path=one.npy"]).data.path == ["one.npy"]


def test_every_problem_is_reported_at_once_with_hints(tmp_path: Path) -> None:
    found = problems(tmp_path, """
layers:
  - hidden: 20
    lerning_rate: 0.1
  - hidden: ten
rbm: {method: pdc, k: 0}
trian: {}
train: {batch_size: 1.5, shedule: greedy}
""")
    text = "\n".join(found)
    assert "layers.0.lerning_rate: unknown key" in text
    assert "layers.1.hidden: expected an integer, got 'ten'" in text
    assert "did you mean 'pcd'" in text
    assert "trian: unknown key (did you mean 'train'?)" in text
    assert "train.batch_size: expected an integer, got 1.5" in text
    assert "train.shedule: unknown key (did you mean 'schedule'?)" in text
    assert len(found) >= 6


def test_cross_field_checks(tmp_path: Path) -> None:
    found = problems(tmp_path, """
layers:
  - {hidden: 20, kind: gaussian, lr: -1}
  - {hidden: 10, visible: 30, kind: gaussian, k: 0, momentum: 1.5}
  - {hidden: 0, kind: bernouli}
data: {held_out: 1.0, source: npy}
train: {batch_size: 0, device: tpu}
""")
    text = "\n".join(found)
    for expected in ["layers.0.lr: must be > 0", "layers.1.visible: 30 does not chain with "
                     "layers.0.hidden = 20", "layers.1.kind: 'gaussian' layers take real-valued",
                     "layers.1.k: must be >= 1", "layers.1.momentum: must be in [0, 1)",
                     "layers.2.hidden: must be > 0", "did you mean 'bernoulli'",
                     "data.held_out: a fraction", "data.path: required for data.source=npy",
                     "train.batch_size: must be > 0", "train.device: 'tpu'"]:
        assert expected in text, expected


def test_bad_overrides_and_files(tmp_path: Path) -> None:
    path = write(tmp_path, "layers: [{hidden: 20}]\n")
    found = problems(tmp_path, "layers: [{hidden: 20}]\n", "layers.5.hidden=3", "nonsense",
                     "rbm.k.x=1", "layers.0.hidden.x=2")
    text = "\n".join(found)
    assert "index 5 is out of range (the list has 1 entries; index 1 appends one)" in text
    assert "override 'nonsense': expected key=value" in text
    assert "'layers.0.hidden' is not a section or list" in text
    assert "rbm.k: expected an integer, got {'x': 1}" in text
    assert not any(p.startswith("layers.0.k") for p in found)  # reported once, for rbm
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("layers: [hidden: 3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="layers: required"):
        load_config(None, [])


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = resolve_defaults(load_config(ROOT / "configs" / "tiny.yaml", ["layers.2.method=pcd"]))
    assert cfg.layers[0].lr == 0.1 and cfg.layers[0].momentum == 0.5
    assert cfg.layers[2].momentum_final == 0.0 and cfg.layers[2].pcd_chains == 50
    again = resolve_defaults(load_config(write(tmp_path, dump_yaml(cfg))))
    assert again == cfg
    assert yaml.safe_load(dump_yaml(cfg))["layers"][1]["hidden"] == 24


def test_gaussian_default_learning_rate_is_smaller() -> None:
    cfg = resolve_defaults(load_config(None, ["layers=[{hidden: 5, kind: gaussian}, "
                                              "{hidden: 3}]"]))
    assert cfg.layers[0].lr == 0.01 and cfg.layers[1].lr == 0.1


@pytest.mark.slow
def test_config_reference_doc_is_up_to_date() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "config_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_type_errors_and_cross_field_errors_are_reported_together(tmp_path: Path) -> None:
    found = problems(tmp_path, """
layers: [{hidden: 8, k: 0, lrr: 1}, {hidden: x, momentum: 1.5}]
data: {held_out: 2}
seed: -1
rbm: {epochs: .nan, weight_decay: .inf}
""")
    text = "\n".join(found)
    for expected in ["layers.0.lrr: unknown key", "layers.1.hidden: expected an integer",
                     "layers.0.k: must be >= 1", "layers.1.momentum: must be in [0, 1)",
                     "data.held_out: a fraction", "seed: must be >= 0",
                     "rbm.epochs: must be a finite number", "rbm.weight_decay: must be a finite"]:
        assert expected in text, expected


def test_layers_shorthand_takes_index_overrides() -> None:
    cfg = load_config(None, ["layers=[32, 16]", "layers.1.hidden=8"])
    assert cfg.sizes == [32, 8]


def test_cuda_device_without_cuda_is_a_config_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this check is for machines without CUDA")
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        load_config(None, ["layers=[4]", "train.device=cuda"])
    with pytest.raises(ConfigError, match="is not cpu, cuda"):
        load_config(None, ["layers=[4]", "train.device=cuda:x"])
