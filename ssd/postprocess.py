"""Decode -> score threshold -> per-class top-k -> one batched NMS for the whole batch ->
per-image cap -> rescale to original pixels. No Python loop over classes; one over images only
to split the final result into per-image `Detections`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from ssd.boxes import relative_to_pixels
from ssd.priors.coder import decode
from ssd.structures import Detections, HeadOutputs


def postprocess(
    outputs: HeadOutputs,
    priors: Tensor,
    orig_sizes: Tensor,
    variances: tuple[float, float] = (0.1, 0.2),
    score_threshold: float = 0.01,
    nms_iou: float = 0.45,
    top_k: int = 200,
    max_detections: int = 200,
) -> list[Detections]:
    """`outputs` [B, P, C] / [B, P, 4]; `priors` [P, 4] cxcywh relative; `orig_sizes` [B, 2]
    (height, width). Returns per image xyxy boxes in original pixels, clipped to the image.
    Non-finite scores or boxes (NaN logits) are dropped, never crash."""
    logits = outputs.cls_logits.float()
    bsz, p, c = logits.shape
    scores = logits.softmax(dim=-1)[..., 1:]  # [B, P, C-1]
    boxes = decode(outputs.box_deltas.float(), priors.float(), variances).clamp(0.0, 1.0)
    k = min(top_k, p)
    # per-class top-k over priors: [B, k, C-1]
    top_scores, top_idx = scores.topk(k, dim=1)
    cand_boxes = torch.gather(
        boxes[:, :, None, :].expand(bsz, p, c - 1, 4), 1, top_idx[..., None].expand(bsz, k, c - 1, 4)
    )
    img = torch.arange(bsz, device=logits.device)[:, None, None].expand(bsz, k, c - 1)
    cls = torch.arange(1, c, device=logits.device)[None, None, :].expand(bsz, k, c - 1)
    keep = (top_scores > score_threshold) & torch.isfinite(top_scores)
    keep &= torch.isfinite(cand_boxes).all(dim=-1)
    cand_boxes, top_scores, img, cls = cand_boxes[keep], top_scores[keep], img[keep], cls[keep]
    kept = batched_nms(cand_boxes, top_scores, img * c + cls, nms_iou)  # sorted by score
    # stable sort by image keeps the score order inside each image; then cap per image.
    kept = kept[torch.sort(img[kept], stable=True).indices]
    counts = torch.bincount(img[kept], minlength=bsz)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(kept.numel(), device=kept.device) - starts[img[kept]]
    kept = kept[rank < max_detections]
    counts = counts.clamp(max=max_detections)

    sizes = orig_sizes.to(cand_boxes.device, torch.float32)
    out_boxes = relative_to_pixels(cand_boxes[kept], sizes[img[kept], 1], sizes[img[kept], 0])
    results = []
    for bx, sc, lb in zip(
        out_boxes.split_with_sizes(counts.tolist()),
        top_scores[kept].split_with_sizes(counts.tolist()),
        cls[kept].split_with_sizes(counts.tolist()),
    ):
        results.append(Detections(bx, sc, lb))
    return results
