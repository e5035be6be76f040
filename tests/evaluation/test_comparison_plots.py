"""The comparison report's prior-shape plot: one panel per variant over the ground-truth density."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ssd.evaluation.comparison import plot_prior_shapes
from ssd.priors.fit import BoxSet


def _boxes(n: int) -> BoxSet:
    rng = np.random.default_rng(0)
    x0 = rng.uniform(0.0, 0.5, n)
    y0 = rng.uniform(0.0, 0.5, n)
    w = rng.uniform(0.02, 0.5, n)
    h = rng.uniform(0.02, 0.5, n)
    boxes = np.stack([x0, y0, x0 + w, y0 + h], axis=1)
    return BoxSet(boxes, np.ones(n, np.int64), np.zeros(n, np.int64), ("img",), 320)


def test_prior_shape_plot_is_written_for_single_and_many_boxes(tmp_path: Path) -> None:
    shapes = {
        "original": [[(22.4, 22.4), (32.0, 16.0)], [(48.0, 48.0)]],
        "coverage": [[(300.0, 10.0)], [(60.0, 60.0), (120.0, 30.0)]],
    }
    # one box (a single hexbin count: a log colour scale must still accept it), and many
    for n in (1, 86):
        out = plot_prior_shapes(shapes, _boxes(n), tmp_path / f"shapes_{n}.png")
        with Image.open(out) as im:
            assert im.width >= 2 * im.height > 0  # two square panels side by side
