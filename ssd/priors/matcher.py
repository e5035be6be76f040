"""Prior <-> ground-truth matching (SSD paper section 2.2), batched on the device.

1. every ground truth is forced onto its best prior (bipartite step); when two ground truths pick
   the same prior, the later one wins (as in the reference Caffe/PyTorch ports);
2. every other prior takes its best ground truth if their IoU >= threshold, else background.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

from ssd.boxes import cxcywh_to_xyxy


@dataclass
class MatchResult:
    """`labels` [B, P] (0 = background), `boxes` [B, P, 4] xyxy relative (the matched ground truth;
    zeros for background), `gt_index` [B, P] (-1 for background) and `iou` [B, P] best IoU
    (2.0 where the prior was forced onto a ground truth; -1 in an image without ground truth)."""

    labels: Tensor
    boxes: Tensor
    gt_index: Tensor
    iou: Tensor


def pad_targets(
    boxes: list[Tensor], labels: list[Tensor], device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Ragged targets -> padded `boxes` [B, G, 4], `labels` [B, G], `valid` [B, G] bool."""
    b = len(boxes)
    g = max((int(x.shape[0]) for x in boxes), default=0)
    out_boxes = torch.zeros(b, max(g, 1), 4, device=device)
    out_labels = torch.zeros(b, max(g, 1), dtype=torch.long, device=device)
    valid = torch.zeros(b, max(g, 1), dtype=torch.bool, device=device)
    for i, (bx, lb) in enumerate(zip(boxes, labels)):
        n = int(bx.shape[0])
        if n:
            out_boxes[i, :n] = bx.to(device, torch.float32)
            out_labels[i, :n] = lb.to(device)
            valid[i, :n] = True
    return out_boxes, out_labels, valid


def iou_matrix(gt_xyxy: Tensor, valid: Tensor, priors: Tensor) -> Tensor:
    """IoU [B, G, P] of padded ground truth against priors (cxcywh); padding rows are -1."""
    b, g, _ = gt_xyxy.shape
    iou = box_iou(gt_xyxy.reshape(b * g, 4), cxcywh_to_xyxy(priors)).reshape(b, g, -1)
    return iou.masked_fill(~valid[..., None], -1.0)


def match(
    boxes: list[Tensor], labels: list[Tensor], priors: Tensor, iou_threshold: float
) -> MatchResult:
    """Match ragged ground truth (xyxy relative, labels 1..C-1) to priors [P, 4] cxcywh."""
    device = priors.device
    gt, gt_labels, valid = pad_targets(boxes, labels, device)
    iou = iou_matrix(gt, valid, priors.detach())  # [B, G, P]
    return match_from_iou(iou, gt, gt_labels, valid, iou_threshold)


def match_from_iou(
    iou: Tensor, gt: Tensor, gt_labels: Tensor, valid: Tensor, iou_threshold: float
) -> MatchResult:
    """The matching rule on a precomputed IoU [B, G, P] (padding rows < 0)."""
    bsz, g, p = iou.shape
    best_iou, best_gt = iou.max(dim=1)  # [B, P]
    best_prior = iou.argmax(dim=2)  # [B, G]
    # Forcing: prior best_prior[b, g] gets ground truth g; the largest g wins on collisions.
    g_ids = torch.arange(1, g + 1, device=iou.device)[None, :].expand(bsz, g)
    forced = torch.zeros(bsz, p, dtype=torch.long, device=iou.device)
    forced.scatter_reduce_(1, best_prior, torch.where(valid, g_ids, 0), reduce="amax")
    is_forced = forced > 0
    best_gt = torch.where(is_forced, forced - 1, best_gt)
    best_iou = torch.where(is_forced, torch.full_like(best_iou, 2.0), best_iou)
    positive = best_iou >= iou_threshold
    matched_labels = torch.gather(gt_labels, 1, best_gt)
    matched_labels = torch.where(positive, matched_labels, torch.zeros_like(matched_labels))
    matched_boxes = torch.gather(gt, 1, best_gt[..., None].expand(bsz, p, 4))
    matched_boxes = matched_boxes * positive[..., None]
    gt_index = torch.where(positive, best_gt, torch.full_like(best_gt, -1))
    return MatchResult(matched_labels, matched_boxes, gt_index, best_iou)
