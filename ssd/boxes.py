"""The only box-format conversions (thin over torchvision.ops).

Formats use torchvision's names: xyxy (corners), xywh (COCO: top-left + size), cxcywh (centre +
size). Spaces: pixels of the original image, or relative [0, 1] of the network input.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] cxcywh -> [..., 4] xyxy (same space)."""
    out: Tensor = box_convert(boxes, "cxcywh", "xyxy")
    return out


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """[..., 4] xyxy -> [..., 4] cxcywh (same space)."""
    out: Tensor = box_convert(boxes, "xyxy", "cxcywh")
    return out


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """[..., 4] xyxy -> [..., 4] COCO xywh (same space)."""
    out: Tensor = box_convert(boxes, "xyxy", "xywh")
    return out


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] COCO xywh -> [..., 4] xyxy (same space)."""
    out: Tensor = box_convert(boxes, "xywh", "xyxy")
    return out


def scale_boxes(boxes: Tensor, sx: float | Tensor, sy: float | Tensor) -> Tensor:
    """Multiply x coordinates by `sx` and y by `sy` ([..., 4] xyxy or cxcywh). `sx`/`sy` are
    scalars or tensors broadcasting against `boxes[..., 0]` (one scale per box)."""
    tx = torch.as_tensor(sx, dtype=boxes.dtype, device=boxes.device)
    ty = torch.as_tensor(sy, dtype=boxes.dtype, device=boxes.device)
    tx, ty = tx + torch.zeros_like(ty), ty + torch.zeros_like(tx)  # broadcast to one shape
    return boxes * torch.stack([tx, ty, tx, ty], dim=-1)


def pixels_to_relative(boxes_px: Tensor, width: float, height: float) -> Tensor:
    """xyxy pixels of a `width` x `height` image -> xyxy relative [0, 1]."""
    return scale_boxes(boxes_px, 1.0 / width, 1.0 / height)


def relative_to_pixels(boxes: Tensor, width: float | Tensor, height: float | Tensor) -> Tensor:
    """xyxy relative [0, 1] -> xyxy pixels of a `width` x `height` image."""
    return scale_boxes(boxes, width, height)


def shape_iou(wh_a: Tensor, wh_b: Tensor) -> Tensor:
    """IoU of co-centred boxes given only their sizes: [N, 2] x [M, 2] -> [N, M].

    This is the YOLO9000 k-means "shape" IoU: position is ignored.
    """
    inter = torch.minimum(wh_a[:, None, 0], wh_b[None, :, 0]) * torch.minimum(
        wh_a[:, None, 1], wh_b[None, :, 1]
    )
    area_a = (wh_a[:, 0] * wh_a[:, 1])[:, None]
    area_b = (wh_b[:, 0] * wh_b[:, 1])[None, :]
    return inter / (area_a + area_b - inter).clamp_min(torch.finfo(wh_a.dtype).tiny)
