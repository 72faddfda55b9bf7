"""Pictures of a DBN's samples: ``Model.sample`` chains, tiled into one grid (``probe.tile``)
and written as an 8-bit grayscale PNG (Pillow).

The chains begin at the up pass of held-out images of the model's data (found by the config
the model carries), as the DBN literature does; without that data they start from noise.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipedbn.config import config_from_text, resolve_defaults
from pipedbn.data.loader import open_data
from pipedbn.errors import ConfigError, UserError
from pipedbn.model.dbn import Model

log = logging.getLogger("pipedbn")


def png_bytes(image: torch.Tensor) -> bytes:
    """An (H, W) image with values in [0, 1] as an 8-bit grayscale PNG."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def configured_shape(dbn: Model, src: Path) -> list[int] | None:
    """The ``monitor.image_shape`` of the config the model carries, when it names one."""
    try:
        return config_from_text(dbn.config, str(src)).monitor.image_shape
    except ConfigError:
        return None  # an edited config: the shape is then inferred or given with --image-shape


def start_rows(dbn: Model, n: int, seed: int, src: Path) -> torch.Tensor | None:
    """``n`` held-out rows of the model's data (training rows if it kept none), preprocessed,
    where the sampling chains begin; None when the data cannot be found (then noise)."""
    try:
        cfg = resolve_defaults(config_from_text(dbn.config, str(src)))
        data = open_data(cfg, unit_range=False)
    except UserError as e:
        log.warning("the model's data cannot be opened (%s): chains start from noise",
                    str(e).splitlines()[0])
        return None
    rows = data.held_rows if len(data.held_rows) else data.train_rows
    rng = np.random.default_rng([seed, 0x5A3])
    chosen = rng.choice(rows, n, replace=len(rows) < n)
    return dbn.preprocess(data.raw(np.asarray(chosen)))
