"""Box-format conversions: golden values and round trips."""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

from ssd.boxes import (
    cxcywh_to_xyxy,
    pixels_to_relative,
    relative_to_pixels,
    scale_boxes,
    shape_iou,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)


def test_conversions_golden() -> None:
    xyxy = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert torch.equal(xyxy_to_cxcywh(xyxy), torch.tensor([[20.0, 40.0, 20.0, 40.0]]))
    assert torch.equal(xyxy_to_xywh(xyxy), torch.tensor([[10.0, 20.0, 20.0, 40.0]]))
    assert torch.equal(cxcywh_to_xyxy(torch.tensor([[20.0, 40.0, 20.0, 40.0]])), xyxy)
    assert torch.equal(xywh_to_xyxy(torch.tensor([[10.0, 20.0, 20.0, 40.0]])), xyxy)


def test_conversions_round_trip_with_batch_dims() -> None:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(3, 5, 2, generator=g, dtype=torch.float64)
    wh = torch.rand(3, 5, 2, generator=g, dtype=torch.float64) + 0.01
    xyxy = torch.cat([xy, xy + wh], dim=-1)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy)
    torch.testing.assert_close(xywh_to_xyxy(xyxy_to_xywh(xyxy)), xyxy)
    assert xyxy_to_cxcywh(xyxy).shape == (3, 5, 4)


def test_scale_boxes_scalar_and_per_box() -> None:
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]])
    torch.testing.assert_close(
        scale_boxes(boxes, 10.0, 100.0), torch.tensor([[1.0, 20.0, 5.0, 60.0], [0.0, 0.0, 10.0, 100.0]])
    )
    per_box = scale_boxes(boxes, torch.tensor([10.0, 2.0]), torch.tensor([100.0, 3.0]))
    torch.testing.assert_close(per_box, torch.tensor([[1.0, 20.0, 5.0, 60.0], [0.0, 0.0, 2.0, 3.0]]))


def test_pixels_relative_round_trip_non_square() -> None:
    boxes_px = torch.tensor([[160.0, 60.0, 320.0, 180.0], [0.0, 0.0, 800.0, 300.0]])
    rel = pixels_to_relative(boxes_px, width=800, height=300)
    torch.testing.assert_close(rel, torch.tensor([[0.2, 0.2, 0.4, 0.6], [0.0, 0.0, 1.0, 1.0]]))
    torch.testing.assert_close(relative_to_pixels(rel, 800, 300), boxes_px)


def test_shape_iou_golden_and_against_box_iou() -> None:
    a = torch.tensor([[2.0, 2.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 4.0], [2.0, 2.0]])
    # [2,2] vs [1,4]: intersection 1*2 = 2, union 4 + 4 - 2 = 6
    expected = torch.tensor([[2 / 6, 1.0], [1 / 4, 1 / 4]])
    torch.testing.assert_close(shape_iou(a, b), expected)
    # equals the IoU of the same sizes placed at a common centre
    g = torch.Generator().manual_seed(1)
    wa, wb = torch.rand(6, 2, generator=g) + 0.1, torch.rand(4, 2, generator=g) + 0.1

    def centred(wh: torch.Tensor) -> torch.Tensor:
        return torch.cat([-wh / 2, wh / 2], dim=1)

    torch.testing.assert_close(shape_iou(wa, wb), box_iou(centred(wa), centred(wb)))
