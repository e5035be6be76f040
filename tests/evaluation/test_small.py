"""AP of the small boxes only (under 32 x 32 after the 512 warp)."""

from __future__ import annotations

import math

import pytest
import torch

from ssd.evaluation.small import is_small, small_only
from ssd.evaluation.voc import GroundTruth, evaluate_voc
from ssd.structures import Detections


def test_is_small_after_the_512_warp() -> None:
    # 2560 x 1920: x scales by 0.2, y by 0.2667. 100 x 100 -> 20 x 26.7 (sqrt 23.1): small;
    # 140 x 140 -> 28 x 37.3 (sqrt 32.3): not; 2560 x 20 -> 512 x 5.3 (sqrt 52.3): not
    boxes = torch.tensor([[0.0, 0, 100, 100], [0, 0, 140, 140], [0, 0, 2560, 20]])
    assert is_small(boxes, 1920, 2560).tolist() == [True, False, False]
    assert is_small(boxes, 1920, 2560, limit=60).tolist() == [True, True, True]
    with pytest.raises(ValueError, match="limit"):
        small_only([], [], limit=math.inf)


def test_small_only_ignores_the_other_boxes() -> None:
    gt = GroundTruth(
        torch.tensor([[10.0, 10, 90, 90], [0, 500, 2560, 700]]),
        torch.tensor([1, 1]),
        torch.tensor([False, False]),
    )
    (small,) = small_only([gt], [(1920, 2560)])
    assert small.difficult.tolist() == [False, True]
    # a detection on the band only: all-box AP 0.5 (one of two found), small AP 0 (none found),
    # and the band detection is no false positive for the small AP
    det = Detections(torch.tensor([[0.0, 500, 2560, 700]]), torch.tensor([0.9]), torch.tensor([1]))
    assert evaluate_voc([gt], [det], ["a"], metric="area").per_class_ap["a"] == pytest.approx(0.5)
    assert evaluate_voc([small], [det], ["a"], metric="area").per_class_ap["a"] == pytest.approx(0.0)
    both = Detections(
        torch.tensor([[0.0, 500, 2560, 700], [10.0, 10, 90, 90]]),
        torch.tensor([0.9, 0.8]),
        torch.tensor([1, 1]),
    )
    assert evaluate_voc([small], [both], ["a"], metric="area").per_class_ap["a"] == pytest.approx(1.0)
