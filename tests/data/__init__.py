"""Tests of ssd.data; `write_image` makes the tiny image files the fixtures need."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def write_image(path: Path, width: int, height: int, colour: tuple[int, int, int] = (128, 128, 128)) -> Path:
    """A solid-colour image file at `path` (format from the suffix; folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.empty((height, width, 3), np.uint8)
    arr[:] = colour
    Image.fromarray(arr).save(path)
    return path
