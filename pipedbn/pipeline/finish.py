"""The end of a run, the same for every run: rank 0 evaluates the trained stack on the held-out
samples it read at the start, records the end of the run (warnings per useless layer, images,
histograms, HParams), exports the model and prints the summary.

``Opening`` is rank 0's start of the run: the layers as they start (fresh; the final states are
loaded into them at the end) and their first evaluation. TensorBoard gets the first evaluation
at the end too: the stages write to the same runs meanwhile.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipedbn.config import Config
from pipedbn.data.loader import Data
from pipedbn.model.dbn import MODEL_FILE, from_run
from pipedbn.model.rbm import RBM
from pipedbn.observe.monitor import Metrics, flat_params
from pipedbn.observe.probe import (
    gibbs_samples,
    image_shape,
    layer0_images,
    probe_generator,
    probe_layer,
    tile,
)
from pipedbn.pipeline.layers import dtype_of, make_layers, make_schedule
from pipedbn.pipeline.runner import StageStats
from pipedbn.pipeline.schedule import Schedule
from pipedbn.pipeline.step import histograms
from pipedbn.run.checkpoint import finalize
from pipedbn.run.rundir import atomic_write, layer_state_path
from stages.label import LabelRBM

log = logging.getLogger("pipedbn")

STAGES_FILE = "stages.json"


@dataclass
class Result:
    layers: list[RBM]
    start: list[dict[str, float]]
    end: list[dict[str, float]]
    seconds: float
    samples: int


@dataclass
class Opening:
    """Rank 0's start of the run."""

    layers: list[RBM]
    start: list[dict[str, float]]
    held: torch.Tensor
    ref: torch.Tensor
    t0: float = 0.0
    """``perf_counter`` when the stream began."""
    labels: torch.Tensor | None = None
    """The class indices of ``held`` when the top layer has label units."""


def open_run(cfg: Config, data: Data, schedule: Schedule, device: torch.device,
             metrics: Metrics, start_at: int) -> Opening:
    """Fresh layers and their evaluation; a resumed run's ``metrics.jsonl`` has it from the
    first attempt already."""
    layers = make_layers(cfg, data, schedule, device)
    held, ref = monitor_data(data, device, dtype_of(cfg))
    labels = monitor_labels(data, device)
    start = (record_eval(layers, held, ref, metrics, 0, tensorboard=False, labels=labels)
             if start_at == 0 else evaluate(layers, held, ref, labels))
    return Opening(layers, start, held, ref, labels=labels)


@dataclass
class Closing:
    """What rank 0 has once every rank is done: the stages' timings, and the final states
    (None: on disk, where their owners saved them)."""

    stages: list[StageStats]
    trained: list[RBM] | None
    run_dir: Path | None


def close_run(cfg: Config, data: Data, opening: Opening, closing: Closing, metrics: Metrics
              ) -> Result:
    """Rank 0's end of the run, once every stage is done: evaluate, record, and with a run
    directory complete the final checkpoint, export the model and write the summary."""
    seconds = time.perf_counter() - opening.t0  # until the last stage is done
    samples = sum(s.input_samples for s in closing.stages)
    schedule = make_schedule(cfg, data.batches_per_epoch)
    length, run_dir = schedule.length, closing.run_dir
    if run_dir is not None:
        finalize(run_dir, cfg, len(opening.layers), length, schedule)
    layers = closing.trained
    if layers is None:
        assert run_dir is not None
        layers = opening.layers
        for i, layer in enumerate(layers):
            layer.load_state_dict(torch.load(layer_state_path(run_dir, i),
                                             map_location=layer.device, weights_only=True))
    for i, row in enumerate(opening.start):  # TensorBoard's share, kept back until now
        for tag, value in row.items():
            metrics.tb_scalar(0, i, f"eval/{tag}", value)
    end = record_eval(layers, opening.held, opening.ref, metrics, length, labels=opening.labels)
    result = Result(layers, opening.start, end, seconds, samples)
    metrics.scalar(length, -1, "throughput/end_to_end_samples_per_s", samples / seconds)
    try:
        record_end(cfg, metrics, result, opening.held, length)
    except Exception as e:  # the run's results matter more than its pictures
        log.warning("monitoring at the end of the run failed: %s", e)
    if run_dir is not None:
        text = summary(cfg, data, result)
        if len(closing.stages) > 1:  # a pipeline: its stages' table
            atomic_write(run_dir / STAGES_FILE,
                         (json.dumps([s.as_dict() for s in closing.stages], indent=1)
                          + "\n").encode())
            text += "\n" + stage_table(closing.stages)
        finish_run(run_dir, text)
    return result


def evaluate(layers: list[RBM], x: torch.Tensor, reference: torch.Tensor | None = None,
             labels: torch.Tensor | None = None) -> list[dict[str, float]]:
    """Per layer, on ``x`` propagated up with probabilities: reconstruction error, the
    pseudo-log-likelihood (binary units) and the free-energy gap mean F(x) - mean F(reference)
    when a reference (training) sample is given; with ``labels`` (class indices of ``x``) a
    label layer's ``test_error``, classifying each row by free energy."""
    out: list[dict[str, float]] = []
    with torch.no_grad():
        for layer in layers:
            row = {"recon_error": layer.reconstruction_error(x)}
            if isinstance(layer, LabelRBM) and labels is not None and len(x):
                row["test_error"] = float((layer.classify(x) != labels).float().mean())
            generator = probe_generator(0, layer.index, -1, x.device)
            pll = probe_layer(layer, x, None, generator)[0].get("pseudo_log_likelihood")
            if pll is not None:
                row["pseudo_log_likelihood"] = pll
            if reference is not None:
                gap = layer.free_energy(x).mean() - layer.free_energy(reference).mean()
                row["free_energy_gap"] = float(gap)
                reference = layer.hidden_probs(reference)
            x = layer.hidden_probs(x)
            if len(x) > 1:  # how much the hidden units vary over the sample (DEAD_STD)
                std = x.std(0)
                row["hidden_std"] = float(std.mean())
                row["constant_units"] = float((std < DEAD_STD).float().mean())
                row["hidden_mean"] = float(x.mean())
            out.append(row)
    return out


DEAD_STD = 0.01
"""A hidden unit whose probability varies less than this (std over the held-out sample) is
nearly constant: it tells samples apart no better than a bias."""
DEAD_FRACTION = 0.9
"""A layer with at least this fraction of nearly constant units gets a warning at the end."""


def layer_warnings(cfg: Config, end: list[dict[str, float]], samples: int) -> list[str]:
    """Warnings for the layers whose hidden units came out nearly constant or saturated on the
    held-out sample of the final evaluation, with what to try."""
    out = []
    for i, row in enumerate(end):
        if row.get("constant_units", 0.0) < DEAD_FRACTION:
            continue
        mean = row["hidden_mean"]
        state = ("saturated: nearly always on" if mean > 0.95 else
                 "saturated: nearly always off" if mean < 0.05 else
                 f"stuck near {mean:.2f} whatever the input")
        out.append(
            f"layer {i}: {row['constant_units']:.0%} of its {cfg.layers[i].hidden} hidden units "
            f"are nearly constant over {samples} held-out samples (mean std "
            f"{row['hidden_std']:.2g}; {state}), so its features carry little information "
            "about the input. Try more epochs (rbm.epochs), another learning rate (rbm.lr), "
            "less weight decay (rbm.weight_decay), or check that the data varies (data.scale)")
    return out


def record_eval(layers: list[RBM], held: torch.Tensor, ref: torch.Tensor, metrics: Metrics,
                step: int, tensorboard: bool = True, labels: torch.Tensor | None = None
                ) -> list[dict[str, float]]:
    """``evaluate`` and write its rows to ``metrics`` as ``eval/*`` at ``step`` (a label
    layer's test error as ``eval/test_error``)."""
    rows = evaluate(layers, held, ref, labels)
    for i, row in enumerate(rows):
        metrics.scalars(step, i, row, "eval", tensorboard)
    return rows


def record_end(cfg: Config, metrics: Metrics, result: Result, held: torch.Tensor, step: int
               ) -> None:
    """What the end of a run adds: a warning per useless layer (log, ``metrics.jsonl``,
    TensorBoard text), and in TensorBoard histograms, layer 0's images and samples of the whole
    DBN, and a row of the HParams table per layer."""
    for i, text in enumerate(layer_warnings(cfg, result.end, len(held))):
        if not log.isEnabledFor(logging.INFO):  # else the summary, printed, says it
            log.warning("%s", text)
        metrics.event(step, i, "warnings/useless_layer", {"message": text}, text=text)
    if metrics.writer(0) is None:
        return
    for i, last in enumerate(result.end):
        histograms(metrics, step, result.layers[i])
        metrics.hparams(i, flat_params(cfg, i), {f"eval/{k}": v for k, v in last.items()})
    layer0 = result.layers[0]
    shape = image_shape(layer0.n_visible, cfg.monitor.image_shape)
    if shape is not None:
        generator = probe_generator(cfg.seed, -1, step, held.device)
        for tag, img in layer0_images(layer0, held, shape, generator).items():
            metrics.image(step, 0, tag, img)
        dbn = gibbs_samples(result.layers, 64, 200, generator)
        metrics.image(step, 0, "images/dbn_samples", tile(dbn, shape, columns=8))


def finish_run(run_dir: Path, text: str) -> None:
    """Export the model from the saved layer states, keep the summary and print it (stderr).
    Whoever started the run prints the run directory (``local.train_local``, a torchrun
    worker)."""
    from_run(run_dir).save(run_dir / MODEL_FILE)
    atomic_write(run_dir / "summary.txt", (text + "\n").encode())
    if log.isEnabledFor(logging.INFO):  # not under --quiet
        print(text, file=sys.stderr)


def monitor_data(data: Data, device: torch.device, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out samples (training ones if there are none) and a training reference sample of the
    same size, for ``evaluate``."""
    held_rows, ref_rows = data.eval_rows(data.eval_samples)  # bounded: monitor.final_samples
    held, ref = torch.from_numpy(data.rows(held_rows)), torch.from_numpy(data.rows(ref_rows))
    return held.to(device=device, dtype=dtype), ref.to(device=device, dtype=dtype)


def monitor_labels(data: Data, device: torch.device) -> torch.Tensor | None:
    """The class indices of ``monitor_data``'s held-out samples (None without label units)."""
    if data.classes is None:
        return None
    return torch.from_numpy(data.classes[data.eval_rows(data.eval_samples)[0]]).to(device)


def summary(cfg: Config, data: Data, result: Result) -> str:
    sizes = [data.features] + cfg.sizes
    lines = [f"{'layer':>5} {'kind':>9} {'size':>11} {'updates':>8} "
             f"{'recon init':>12} {'recon end':>10}"]
    for i, layer in enumerate(result.layers):
        lines.append(
            f"{i:>5} {cfg.layers[i].kind:>9} {f'{sizes[i]}x{sizes[i + 1]}':>11} "
            f"{layer.step:>8} {result.start[i]['recon_error']:>12.3f} "
            f"{result.end[i]['recon_error']:>10.3f}"
        )
    lines += [f"warning: {w}" for w in layer_warnings(
        cfg, result.end, len(data.eval_rows(data.eval_samples)[0]))]
    if "test_error" in result.end[-1]:
        lines.append(f"test error of the label units (least free energy): "
                     f"{result.start[-1].get('test_error', float('nan')):.2%} at the start, "
                     f"{result.end[-1]['test_error']:.2%} at the end, on "
                     f"{len(data.eval_rows(data.eval_samples)[0])} "
                     f"{'held-out' if len(data.held_rows) else 'training'} samples")
    rate = result.samples / result.seconds if result.seconds else float("nan")
    lines.append(f"{result.samples} samples through the pipeline in {result.seconds:.1f} s "
                 f"({rate:.0f} samples/s); reconstruction error on "
                 f"{'held-out' if len(data.held_rows) else 'training'} data per sample")
    return "\n".join(lines)



def stage_table(stages: list[StageStats]) -> str:
    lines = [f"{'rank':>4} {'stage':>5} {'layers':>6} {'batches':>8} {'busy':>6} "
             f"{'compute s':>10} {'recv wait s':>11} {'send wait s':>11} {'sync s':>7} "
             f"{'samples/s':>10} {'in flight':>9}"]
    for s in stages:
        stage = "idle" if s.stage is None else (
            f"{s.stage}.{s.replica}" if s.layers and s.replica else str(s.stage))
        lines.append(
            f"{s.rank:>4} {stage:>5} {','.join(map(str, s.layers)):>6} "
            f"{s.micro_batches:>8} {s.busy_frac:>6.1%} {s.compute_s:>10.2f} "
            f"{s.recv_wait_s:>11.2f} {s.send_wait_s:>11.2f} {s.sync_wait_s:>7.2f} "
            f"{s.samples_per_s:>10.0f} {s.max_in_flight:>9}")
    return "\n".join(lines)
