"""Prior <-> ground-truth matching (SSD paper section 2.2), batched on the device.

1. every ground truth is forced onto its best prior (bipartite step); when two ground truths pick
   the same prior, the later one wins (as in the reference Caffe/PyTorch ports);
2. every other prior takes its best ground truth if their IoU >= threshold, else background.

Memory grows with the boxes of each image, not with the largest count times the batch: images
are matched in groups whose padding to the group's largest count at most doubles their boxes
(one image with 5,000 boxes among images with a few is matched on its own), and the IoU of a
group is computed in chunks of ground-truth rows of at most `MAX_IOU_ELEMENTS` values (the
running best ground truth per prior is kept across chunks). The result is the same as matching
the whole padded batch at once.
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
    iou: Tensor = box_iou(gt_xyxy.reshape(b * g, 4), cxcywh_to_xyxy(priors)).reshape(b, g, -1)
    return iou.masked_fill(~valid[..., None], -1.0)


# Most IoU values computed at once: 2**24 float32 values are 64 MiB, and torchvision's box_iou
# holds about eight tensors of that size while it runs (~0.5 GiB).
MAX_IOU_ELEMENTS = 1 << 24


def match(
    boxes: list[Tensor],
    labels: list[Tensor],
    priors: Tensor,
    iou_threshold: float,
    max_iou_elements: int = MAX_IOU_ELEMENTS,
) -> MatchResult:
    """Match ragged ground truth (xyxy relative, labels 1..C-1) to priors [P, 4] cxcywh.

    Images are matched in groups (`match_groups`) with the IoU in chunks of at most
    `max_iou_elements` values, so memory follows each image's boxes (module docstring)."""
    device = priors.device
    priors_xyxy = cxcywh_to_xyxy(priors.detach())
    counts = [int(x.shape[0]) for x in boxes]
    groups = match_groups(counts)
    results = []
    for group in groups:
        gt, gt_labels, valid = pad_targets([boxes[i] for i in group], [labels[i] for i in group], device)
        best_iou, best_gt, best_prior = _best_matches(gt, valid, priors_xyxy, max_iou_elements)
        results.append(_assign(best_iou, best_gt, best_prior, gt, gt_labels, valid, iou_threshold))
    if len(groups) == 1 and groups[0] == list(range(len(boxes))):
        return results[0]
    order = torch.tensor([i for g in groups for i in g], device=device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=device)
    return MatchResult(
        torch.cat([r.labels for r in results])[inverse],
        torch.cat([r.boxes for r in results])[inverse],
        torch.cat([r.gt_index for r in results])[inverse],
        torch.cat([r.iou for r in results])[inverse],
    )


def match_groups(counts: list[int]) -> list[list[int]]:
    """Indices of the images to match together: images taken by increasing number of boxes
    (ties in batch order), a group closed when adding the next image would make its padded size
    (images x largest count) more than twice its boxes. Every image is in exactly one group;
    images with similar counts share one (usually the whole batch)."""
    order = sorted(range(len(counts)), key=lambda i: (counts[i], i))
    groups: list[list[int]] = []
    group: list[int] = []
    total = 0
    for i in order:
        c = max(counts[i], 1)
        if group and (len(group) + 1) * c > 2 * (total + c):
            groups.append(group)
            group, total = [], 0
        group.append(i)
        total += c
    if group:
        groups.append(group)
    return groups


def _best_matches(
    gt: Tensor, valid: Tensor, priors_xyxy: Tensor, max_iou_elements: int
) -> tuple[Tensor, Tensor, Tensor]:
    """For padded ground truth [B, G, 4]: the best IoU [B, P] and ground truth [B, P] of every
    prior (the first one on ties) and the best prior [B, G] of every ground truth, with the IoU
    computed in chunks of ground-truth rows of at most `max_iou_elements` values."""
    b, g, _ = gt.shape
    p = priors_xyxy.shape[0]
    rows = max(1, max_iou_elements // max(b * p, 1))
    best_prior = torch.zeros(b, g, dtype=torch.long, device=gt.device)
    best_iou = best_gt = None
    for start in range(0, g, rows):
        stop = min(start + rows, g)
        chunk = box_iou(gt[:, start:stop].reshape(-1, 4), priors_xyxy).reshape(b, stop - start, p)
        chunk = chunk.masked_fill(~valid[:, start:stop, None], -1.0)
        value, index = chunk.max(dim=1)
        best_prior[:, start:stop] = chunk.argmax(dim=2)
        if best_iou is None or best_gt is None:
            best_iou, best_gt = value, index
        else:
            better = value > best_iou  # strictly: the earlier chunk keeps ties
            best_iou = torch.where(better, value, best_iou)
            best_gt = torch.where(better, index + start, best_gt)
        del chunk
    assert best_iou is not None and best_gt is not None
    return best_iou, best_gt, best_prior


def match_from_iou(
    iou: Tensor, gt: Tensor, gt_labels: Tensor, valid: Tensor, iou_threshold: float
) -> MatchResult:
    """The matching rule on a precomputed IoU [B, G, P] (padding rows < 0)."""
    best_iou, best_gt = iou.max(dim=1)  # [B, P]
    best_prior = iou.argmax(dim=2)  # [B, G]
    return _assign(best_iou, best_gt, best_prior, gt, gt_labels, valid, iou_threshold)


def _assign(
    best_iou: Tensor,
    best_gt: Tensor,
    best_prior: Tensor,
    gt: Tensor,
    gt_labels: Tensor,
    valid: Tensor,
    iou_threshold: float,
) -> MatchResult:
    """The matching rule from the best ground truth of every prior (`best_iou`, `best_gt`
    [B, P]) and the best prior of every ground truth (`best_prior` [B, G])."""
    bsz, p = best_iou.shape
    g = gt.shape[1]
    # Forcing: prior best_prior[b, g] gets ground truth g; the largest g wins on collisions.
    g_ids = torch.arange(1, g + 1, device=best_iou.device)[None, :].expand(bsz, g)
    forced = torch.zeros(bsz, p, dtype=torch.long, device=best_iou.device)
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
