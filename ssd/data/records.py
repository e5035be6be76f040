"""Parsed annotations, independent of image decoding.

Every annotation reader (voc.py, coco.py, labelme.py) produces `Record`s; datasets decode images
on top of them, and the prior toolkit reads records alone (fast: no image is opened).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """Bad data; the message always names the file (and the field) at fault."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        self.detail = message
        super().__init__(f"{path}: {message}")


@dataclass
class Record:
    """One image's annotations.

    `boxes_px` [G, 4] float32 xyxy in pixels of the original image (0-based, x2/y2 exclusive
    edges as floats), `labels` [G] int64 in 1..C-1 (0 is background), `difficult` [G] bool.
    `width`/`height` are the original image size as the annotation states it.
    """

    image_path: Path
    image_id: str
    width: int
    height: int
    boxes_px: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    annotation_path: Path | None = None

    @property
    def num_boxes(self) -> int:
        return int(self.boxes_px.shape[0])


# Image file suffixes the readers pair with annotations (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def image_size_from_header(path: Path) -> tuple[int, int]:
    """(width, height) of an image file from its header only (PIL opens lazily: no decoding).

    Raises DatasetError naming the file when it is missing or not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError as exc:
        raise DatasetError(path, "image file not found") from exc
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(path, f"cannot read the image header: {exc}") from exc
    return int(width), int(height)
