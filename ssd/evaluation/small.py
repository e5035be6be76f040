"""AP of the small boxes only: "small" as the untiled network sees a box.

A box is small when the square root of its area after the warp of its whole image to
`ref_size` x `ref_size` is below `limit` input pixels (default: under 32 x 32 after the 512 warp,
the size bucket of the prior fit report). AP of the small boxes follows the COCO area-range
convention in VOC terms: every other box is marked difficult, so a detection matching it counts
neither as a true nor as a false positive, and only the small boxes count as ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ssd.evaluation.voc import GroundTruth


def is_small(
    boxes_px: torch.Tensor, height: int, width: int, ref_size: int = 512, limit: float = 32.0
) -> torch.Tensor:
    """[G] bool: sqrt(w * h) < `limit` after scaling boxes ([G, 4] xyxy original pixels of a
    `width` x `height` image) by `ref_size / width` in x and `ref_size / height` in y."""
    w = (boxes_px[:, 2] - boxes_px[:, 0]).clamp(min=0) * ref_size / width
    h = (boxes_px[:, 3] - boxes_px[:, 1]).clamp(min=0) * ref_size / height
    return (w * h).sqrt() < limit


def small_only(
    gts: Sequence[GroundTruth],
    sizes: Sequence[tuple[int, int]],
    ref_size: int = 512,
    limit: float = 32.0,
) -> list[GroundTruth]:
    """The ground truth with every box that is not small marked difficult (ignored by
    `evaluate_voc`); `sizes` are the images' (height, width)."""
    if len(gts) != len(sizes):
        raise ValueError(f"{len(gts)} ground-truth images but {len(sizes)} sizes")
    if ref_size <= 0 or not limit > 0 or math.isinf(limit):
        raise ValueError(f"need ref_size > 0 and a finite limit > 0, got {ref_size}, {limit}")
    out = []
    for gt, (h, w) in zip(gts, sizes):
        small = is_small(gt.boxes, h, w, ref_size, limit)
        out.append(GroundTruth(gt.boxes, gt.labels, gt.difficult | ~small))
    return out
