"""MultiBox loss (SSD paper section 2.2): smooth-L1 localisation over positives plus softmax
cross-entropy over positives and hard-mined negatives (neg:pos = 3:1), both divided by the number
of positives in the batch. Matching and encoding run here, on the device, not in data workers.

`PriorAids`: the warm-up terms of learnable priors (soft assignment, online clustering).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from ssd.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from ssd.config import Config
from ssd.modeling.priors import PriorBoxes
from ssd.priors.coder import encode
from ssd.priors.generator import PriorLayout, PriorSet
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
    num_neg = torch.minimum((neg_pos_ratio * num_pos).floor().long(), positive.shape[1] - num_pos)
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


# --------------------------------------------------------------------------- learnable-prior warm-up


def _linear_anneal(start: float, it: int, warmup_iters: int) -> float:
    """`start` at iteration 0 falling linearly to 0 at `warmup_iters` (0 afterwards)."""
    if warmup_iters <= 0 or it >= warmup_iters:
        return 0.0
    return start * (1.0 - it / warmup_iters)


class PriorAids:
    """The warm-up aids of Zhong et al. for learnable priors (sec. 3.2.1-3.2.3), used by the loop.

    * soft assignment (sec. 3.2.1, eq. 10): during warm-up the localisation loss of each ground
      truth j is spread over the priors i "at the same spatial cell" with weights
      delta_ij = softmax_i(-dist(a_i, g_j) / T); T falls linearly from `temperature_start` (2, as
      the paper) to 0 over `warmup_iters`, after which the usual hard matching alone is used.
      Every shape therefore receives gradient early, not only the ones that already match well.
    * online clustering (sec. 3.2.2, eqs. 11-12): lambda / (2 N) sum_ij delta_ij T_ij with
      T_ij = (log a_w - log g_w)^2 + (log a_h - log g_h)^2 and N = sum_ij delta_ij, lambda
      falling linearly from `clustering_weight_start` (1, as the paper) to 0 over the warm-up.
      delta is the assignment in force at that iteration: the soft weights while the soft
      assignment runs (they sum to 1 per ground truth, so N = G), the hard matches otherwise
      (N = number of positives).
    (The third aid, batch norm without shift on the w/h offsets, lives in the head.)

    Where we follow the paper and where we deviate (and why):

    - Warm-up length: the paper anneals both aids over the first 1500 iterations (of 30k on VOC
      and 100k on COCO, with mini-batches of 64); `warmup_iters` defaults to 1500. Short
      schedules (the demo, tests) set it lower: 1500 iterations would be the whole run.
    - "The same spatial cell" is one cell of one map in YOLOv2. SSD has several levels, so the
      candidates of a ground truth are, on every level, the priors of the cell containing its
      centre, one per distinct shape, all in one softmax: every learnable shape competes for
      every box, as all YOLOv2 anchors of a cell do.
    - dist is 1 - IoU (the paper leaves it open; it uses IoU for the hard assignment). With
      dist in [0, 1] the weights are near uniform at T = 2 and one-hot as T -> 0.
    - The soft assignment replaces the localisation term only (eq. 1: delta enters L_loc); the
      classification loss keeps SSD's hard matching and hard-negative mining, as SSD has no
      class-agnostic objectness to weight.
    - The shapes receive the gradient of the whole loss (eq. 7). In SSD's encoding the centre
      offsets are divided by the prior size, so unlike the paper's YOLOv2 form (eq. 9, w/h
      terms only) the x/y terms also reach the shapes.
    """

    def __init__(
        self,
        layout: PriorLayout,
        variances: tuple[float, float],
        warmup_iters: int,
        soft_assignment: bool = True,
        temperature_start: float = 2.0,
        online_clustering: bool = True,
        clustering_weight_start: float = 1.0,
        loc_weight: float = 1.0,
    ) -> None:
        self.layout = layout
        self.variances = variances
        self.warmup_iters = warmup_iters
        self.soft_assignment = soft_assignment
        self.temperature_start = temperature_start
        self.online_clustering = online_clustering
        self.clustering_weight_start = clustering_weight_start
        self.loc_weight = loc_weight
        starts, offset = [], 0
        for f, a in zip(layout.feature_maps, layout.num_shapes):
            starts.append(offset)
            offset += f * f * a
        self._level_start = starts

    @classmethod
    def from_config(cls, cfg: Config) -> PriorAids:
        lp = cfg.priors.learn
        return cls(
            PriorSet.from_config(cfg.priors).layout(),
            cfg.priors.variances,
            lp.warmup_iters,
            lp.soft_assignment,
            lp.temperature_start,
            lp.online_clustering,
            lp.clustering_weight_start,
            cfg.loss.loc_weight,
        )

    def temperature(self, it: int) -> float:
        """Soft-assignment temperature at iteration `it` (0 once the warm-up is over)."""
        return _linear_anneal(self.temperature_start, it, self.warmup_iters) if self.soft_assignment else 0.0

    def clustering_weight(self, it: int) -> float:
        """Online-clustering weight lambda at iteration `it` (0 once the warm-up is over)."""
        if not self.online_clustering:
            return 0.0
        return _linear_anneal(self.clustering_weight_start, it, self.warmup_iters)

    def cell_priors(self, centers: Tensor) -> Tensor:
        """Indices [G, S] of the priors, one per distinct shape, in the cells (of every level)
        that contain each centre [G, 2] (relative cx, cy)."""
        cols = []
        lay = self.layout
        for start, f, step, a in zip(self._level_start, lay.feature_maps, lay.steps, lay.num_shapes):
            cell = (centers * lay.image_size / step).floor().long().clamp(0, f - 1)
            base = start + (cell[:, 1] * f + cell[:, 0]) * a
            cols.append(base[:, None] + torch.arange(a, device=centers.device)[None, :])
        return torch.cat(cols, dim=1)

    def _soft_assignment(
        self, deltas: Tensor, targets: Targets, priors: Tensor, temperature: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None:
        """(gt_boxes [G, 4] xyxy, image index [G], candidate prior indices [G, S], candidate
        priors [G, S, 4] cxcywh (carrying the shape gradient), weights delta [G, S] summing to 1
        per ground truth), or None without ground truth."""
        gt_boxes = torch.cat([b.to(deltas.device, torch.float32) for b in targets.boxes])
        if gt_boxes.numel() == 0:
            return None
        img = torch.cat([torch.full((len(b),), i, device=deltas.device) for i, b in enumerate(targets.boxes)])
        g = gt_boxes.shape[0]
        idx = self.cell_priors(xyxy_to_cxcywh(gt_boxes)[:, :2])  # [G, S]
        s = idx.shape[1]
        cand = priors[idx]  # [G, S, 4] cxcywh (carries the shape gradient)
        with torch.no_grad():
            iou = box_iou(gt_boxes, cxcywh_to_xyxy(cand.reshape(-1, 4)))  # [G, G*S]
            iou = iou.view(g, g, s)[torch.arange(g), torch.arange(g)]  # [G, S] own cell only
            weights = torch.softmax(-(1.0 - iou) / max(temperature, 1e-3), dim=1)
        return gt_boxes, img, idx, cand, weights

    def soft_loc_loss(self, deltas: Tensor, targets: Targets, priors: Tensor, temperature: float) -> Tensor:
        """Soft-assigned smooth-L1 localisation loss, averaged over ground truth."""
        soft = self._soft_assignment(deltas, targets, priors, temperature)
        if soft is None:
            return deltas.sum() * 0.0
        gt_boxes, img, idx, cand, weights = soft
        g, s = idx.shape
        target = encode(gt_boxes[:, None, :].expand(g, s, 4), cand, self.variances)
        pred = deltas.float()[img[:, None], idx]  # [G, S, 4]
        per = F.smooth_l1_loss(pred, target, reduction="none").sum(-1)
        return (weights * per).sum() / g

    def soft_cluster_term(
        self, deltas: Tensor, targets: Targets, priors: Tensor, temperature: float
    ) -> Tensor:
        """1 / (2 N) sum_ij delta_ij T_ij (eqs. 11-12) with the soft weights delta of
        `soft_loc_loss` (N = sum delta = G), without lambda."""
        soft = self._soft_assignment(deltas, targets, priors, temperature)
        if soft is None:
            return priors.sum() * 0.0
        gt_boxes, _, _, cand, weights = soft
        gt_wh = xyxy_to_cxcywh(gt_boxes)[:, 2:].clamp_min(1e-6)
        t = (cand[..., 2:].log() - gt_wh[:, None, :].log()).pow(2).sum(-1)  # [G, S]
        return (weights * t).sum() / (2.0 * weights.sum())

    def loss(
        self, criterion: MultiBoxLoss, outputs: HeadOutputs, targets: Targets, priors: Tensor, it: int
    ) -> tuple[LossOutput, dict[str, Tensor]]:
        """MultiBox loss with the warm-up aids of iteration `it`; returns (loss, extra terms).
        `extra["cluster"]` is normalised by the count of the localisation term in force (G
        during the soft assignment, the positives after), as the data-parallel loop expects."""
        result = criterion(outputs, targets, priors)
        extra: dict[str, Tensor] = {}
        t = self.temperature(it)
        if t > 0:
            soft = self.soft_loc_loss(outputs.box_deltas, targets, priors, t)
            result = LossOutput(
                total=self.loc_weight * soft + result.cls,
                loc=soft,
                cls=result.cls,
                num_pos=result.num_pos,
                match=result.match,
            )
        lam = self.clustering_weight(it)
        if lam > 0:
            if t > 0:
                extra["cluster"] = lam * self.soft_cluster_term(outputs.box_deltas, targets, priors, t)
            else:
                pos = result.match.labels > 0
                if bool(pos.any()):
                    gt_wh = xyxy_to_cxcywh(result.match.boxes[pos])[:, 2:].clamp_min(1e-6)
                    prior_wh = priors.expand(pos.shape[0], -1, -1)[pos][:, 2:]
                    # hard delta: N = number of positives; 1 / (2N) as eq. 11
                    extra["cluster"] = lam * 0.5 * (prior_wh.log() - gt_wh.log()).pow(2).sum(-1).mean()
        return result, extra

    def log_shapes(self, writer: Any, model: nn.Module, it: int) -> None:
        """Current shapes (input pixels) to TensorBoard, one w/h pair per shape and level."""
        priors_module = getattr(model, "priors", None)
        if not isinstance(priors_module, PriorBoxes):
            return
        for level, shapes in enumerate(priors_module.level_shapes_px()):
            for k, (w, h) in enumerate(shapes):
                writer.add_scalars(f"priors/level{level}_shape{k}", {"w": w, "h": h}, it)
