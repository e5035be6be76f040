"""MultiBox loss (SSD paper section 2.2): smooth-L1 localisation over positives plus softmax
cross-entropy over positives and hard-mined negatives (neg:pos = 3:1), both divided by the number
of positives in the batch. Matching and encoding run here, on the device, not in data workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssd.priors.coder import encode
from ssd.priors.matcher import MatchResult, match
from ssd.structures import HeadOutputs, Targets


@dataclass
class LossOutput:
    total: Tensor
    loc: Tensor
    cls: Tensor
    num_pos: Tensor
    match: MatchResult


def hard_negative_mask(ce: Tensor, positive: Tensor, neg_pos_ratio: float) -> Tensor:
    """Negatives to keep [B, P]: per image the `neg_pos_ratio * num_pos` background priors with the
    highest cross-entropy (never more than the number of background priors). An image without
    positives contributes no negatives, as in the SSD paper.
    """
    loss = ce.detach().masked_fill(positive, float("-inf"))
    loss = torch.nan_to_num(loss, nan=float("inf"), neginf=float("-inf"))
    order = loss.argsort(dim=1, descending=True, stable=True)
    rank = order.argsort(dim=1)
    num_pos = positive.sum(dim=1, keepdim=True)
    num_neg = torch.minimum(
        (neg_pos_ratio * num_pos).floor().long(), positive.shape[1] - num_pos
    )
    return (rank < num_neg) & ~positive


class MultiBoxLoss(nn.Module):
    def __init__(
        self,
        iou_threshold: float = 0.5,
        neg_pos_ratio: float = 3.0,
        variances: tuple[float, float] = (0.1, 0.2),
        loc_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.variances = variances
        self.loc_weight = loc_weight

    def forward(
        self,
        outputs: HeadOutputs,
        targets: Targets,
        priors: Tensor,
    ) -> LossOutput:
        """`outputs`: [B, P, C] logits and [B, P, 4] deltas; `targets`: xyxy relative boxes;
        `priors` [P, 4] cxcywh (may require grad: learnable shapes receive the localisation
        gradient through the encoding)."""
        matched = match(targets.boxes, targets.labels, priors.detach(), self.iou_threshold)
        logits = outputs.cls_logits.float()
        deltas = outputs.box_deltas.float()
        positive = matched.labels > 0
        num_pos = positive.sum()
        denom = num_pos.clamp_min(1).float()

        loc_target = encode(matched.boxes[positive], priors.expand_as(deltas)[positive], self.variances)
        loc = F.smooth_l1_loss(deltas[positive], loc_target, reduction="sum") / denom

        ce = F.cross_entropy(logits.flatten(0, 1), matched.labels.flatten(), reduction="none")
        ce = ce.view_as(matched.labels)
        negative = hard_negative_mask(ce, positive, self.neg_pos_ratio)
        cls = ce[positive | negative].sum() / denom
        total = self.loc_weight * loc + cls
        return LossOutput(total=total, loc=loc, cls=cls, num_pos=num_pos, match=matched)
