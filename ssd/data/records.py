"""Parsed annotations, independent of image decoding.

Every annotation reader (voc.py, coco.py, labelme.py) produces `Record`s; datasets decode images
on top of them, and the prior toolkit reads records alone (fast: no image is opened).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class DatasetError(ValueError):
    """Bad data; the message always names the file (and the field) at fault.

    `kind` classifies the problem for `ssd.data.check` (one of `ssd.data.check.KINDS`) and
    `image_id` names the sample it makes unusable, when known.
    """

    def __init__(
        self,
        path: str | Path,
        message: str,
        *,
        kind: str = "malformed_annotation",
        image_id: str | None = None,
    ) -> None:
        self.path = str(path)
        self.detail = message
        self.kind = kind
        self.image_id = image_id
        super().__init__(f"{path}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        # picklable (DataLoader workers, multiprocessing) with its keyword fields
        return (self.__class__, (self.path, self.detail), dict(self.__dict__))


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
    # Number of image channels the annotation states (VOC `<size><depth>`), None when unstated.
    depth: int | None = None

    @property
    def num_boxes(self) -> int:
        return int(self.boxes_px.shape[0])

    @classmethod
    def from_parsed(
        cls,
        image_path: Path,
        image_id: str,
        width: int,
        height: int,
        parsed: Sequence[tuple[Sequence[float], int, bool]],
        *,
        annotation_path: Path | None = None,
        depth: int | None = None,
    ) -> Record:
        """A record from the (xyxy box, label, difficult) triples an annotation reader parsed."""
        return cls(
            image_path=image_path,
            image_id=image_id,
            width=width,
            height=height,
            boxes_px=np.asarray([p[0] for p in parsed], np.float32).reshape(-1, 4),
            labels=np.asarray([p[1] for p in parsed], np.int64).reshape(-1),
            difficult=np.asarray([p[2] for p in parsed], bool).reshape(-1),
            annotation_path=annotation_path,
            depth=depth,
        )


# Largest coordinate a box may have: records hold float32, beyond this a value becomes inf.
MAX_COORDINATE: float = float(np.finfo(np.float32).max)


def in_coordinate_range(*values: float) -> bool:
    """True when every value is finite and representable as float32 (see `MAX_COORDINATE`)."""
    return all(abs(v) <= MAX_COORDINATE for v in values)  # False for NaN and inf


def finite_number(v: Any) -> bool:
    """A real number (not bool) that is finite as a float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond the float range
        return False


def short_repr(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters with "..." (for error messages)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def report_problem(problems: list[DatasetError] | None, error: DatasetError) -> None:
    """Raise `error`, or append it in collecting mode (`problems` is a list)."""
    if problems is None:
        raise error
    problems.append(error)


# Image file suffixes the readers pair with annotations (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def image_folds(records: Sequence[Record], folds: int, seed: int = 0) -> np.ndarray:
    """[N] fold index (0..folds-1) of every record, for fit-on-some-images / score-on-others
    experiments. Stratified by image: records are grouped by their most frequent label (0 for
    none), each group ordered by image id, shuffled with `numpy.random.default_rng(seed)` (groups
    in label order) and dealt round-robin, so every fold gets about the same share of each
    defect class (a plain shuffle can put most images of a rare class, and e.g. all of its
    many-boxes-per-image samples, into one fold)."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    groups: dict[int, list[int]] = {}
    for i, rec in enumerate(records):
        labels = np.asarray(rec.labels, np.int64).reshape(-1)
        key = int(np.bincount(labels).argmax()) if labels.size else 0
        groups.setdefault(key, []).append(i)
    rng = np.random.default_rng(seed)
    out = np.zeros(len(records), np.int64)
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda i: records[i].image_id)
        perm = rng.permutation(len(members))
        for rank, j in enumerate(perm):
            out[members[j]] = rank % folds
    return out
