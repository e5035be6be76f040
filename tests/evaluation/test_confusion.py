"""Confusion matrix on planted cases: known hits, confusions, misses and spurious boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssd.evaluation.confusion import confusion_matrix, confusion_table, plot_confusion_matrix
from ssd.evaluation.voc import GroundTruth
from ssd.structures import Detections


def dets(rows: list[tuple[list[float], float, int]]) -> Detections:
    if not rows:
        return Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    boxes, scores, labels = zip(*rows, strict=True)
    return Detections(torch.tensor(boxes), torch.tensor(scores), torch.tensor(labels))


def test_planted_case_gives_the_known_counts(tmp_path: Path) -> None:
    a, b, c = [0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 70]
    gts = [
        # image 0: A hit as class 1, B confused (class 2 predicted 3), C missed (class 3)
        GroundTruth(torch.tensor([a, b, c], dtype=torch.float64), [1, 2, 3], [False, False, False]),
        # image 1: one class-1 box found twice (the duplicate is spurious), a low-score box ignored,
        # a spurious class-2 box far away, a difficult class-3 box matched (not counted)
        GroundTruth(torch.tensor([a, c], dtype=torch.float64), [1, 3], [False, True]),
        # image 2: no ground truth, one spurious class-3 detection
        GroundTruth.empty(),
    ]
    ds = [
        dets([(a, 0.9, 1), ([21, 21, 40, 40], 0.8, 3), ([80, 80, 90, 90], 0.1, 2)]),
        dets([(a, 0.9, 1), ([1, 0, 10, 10], 0.7, 1), ([100, 0, 120, 20], 0.6, 2), (c, 0.5, 3), (b, 0.2, 2)]),
        dets([(b, 0.95, 3)]),
    ]
    m = confusion_matrix(gts, ds, 3, iou_threshold=0.5, score_threshold=0.3)
    expected = np.array(
        [
            # pred 1, 2, 3, background(missed)
            [2, 0, 0, 0],  # true 1: two hits
            [0, 0, 1, 0],  # true 2: confused as 3
            [0, 0, 0, 1],  # true 3: one missed (the difficult one is not counted)
            [1, 1, 1, 0],  # background: spurious 1 (duplicate), 2 (far away), 3 (empty image)
        ]
    )
    np.testing.assert_array_equal(m, expected)
    assert m[:3].sum() == 4 and m[:, 3].sum() == 1  # 4 counted ground truths hit/confused/missed
    table = confusion_table(m, ["x", "y", "z"])
    assert "| y | 0 | 0 | 1 | 0 |" in table and "| background | 1 | 1 | 1 | 0 |" in table
    assert plot_confusion_matrix(m, ["x", "y", "z"], tmp_path / "cm.png").stat().st_size > 1000


def test_a_detection_takes_the_ground_truth_it_overlaps_most() -> None:
    """One-to-one by decreasing IoU: the better-placed detection takes the box, the other is spurious."""
    gt = GroundTruth(torch.tensor([[0.0, 0, 10, 10]]), [1], [False])
    d = dets([([0, 0, 10, 12], 0.9, 2), ([0, 0, 10, 10], 0.5, 1)])
    m = confusion_matrix([gt], [d], 2, score_threshold=0.3)
    np.testing.assert_array_equal(m, [[1, 0, 0], [0, 0, 0], [0, 1, 0]])


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="2 ground truths for 1"):
        confusion_matrix([GroundTruth.empty(), GroundTruth.empty()], [dets([])], 1)
