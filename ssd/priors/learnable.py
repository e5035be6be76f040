"""Prior shapes as a module: fixed (a buffer) or trainable (Zhong et al., "Anchor Box Optimization
for Object Detection"): each distinct shape of a level is a pair (log w, log h), centres stay fixed
(including the per-shape sub-cell offsets of `[w, h, dx, dy]` entries: they are never learned).

Both cases store the shapes under the same state-dict key, `log_wh` [S, 2] (relative to the input),
so a checkpoint of a learned-prior run loads into a fixed-prior model and vice versa.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from ssd.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from ssd.losses import LossOutput, MultiBoxLoss
from ssd.priors.coder import encode
from ssd.priors.generator import PriorLayout, assemble_priors, shape_entry
from ssd.structures import HeadOutputs, Targets

if TYPE_CHECKING:
    from ssd.config import Config


def break_ties(
    log_wh: Tensor, num_shapes: tuple[int, ...], spread: float = 0.02, offsets: Tensor | None = None
) -> Tensor:
    """Make identical shapes of one level distinct before learning them.

    Identical priors at the same positions receive identical assignments and gradients forever
    (matching ties always go to the first), so the k-th duplicate has its log aspect ratio moved by
    +-k*spread/2 (area kept). Distinct shapes are left untouched, and so is a shape repeated at
    another sub-cell offset (`offsets` [S, 2]): its priors sit elsewhere.
    """
    out = log_wh.clone()
    off = torch.zeros(out.shape[0], 2, dtype=torch.float64) if offsets is None else offsets.double().cpu()
    start = 0
    for n in num_shapes:
        seen: dict[tuple[float, ...], int] = {}
        for i in range(start, start + n):
            key = (round(float(out[i, 0]), 6), round(float(out[i, 1]), 6), *off[i].tolist())
            k = seen.get(key, 0)
            seen[key] = k + 1
            if k:
                sign = 1.0 if k % 2 else -1.0
                delta = sign * ((k + 1) // 2) * spread / 2
                out[i, 0] += delta
                out[i, 1] -= delta
        start += n
    return out


class PriorBoxes(nn.Module):
    """`forward()` -> priors [P, 4] cxcywh relative; differentiable in the shapes when learnable."""

    log_wh: Tensor
    _centers: Tensor
    _shape_index: Tensor
    _offsets: Tensor

    def __init__(self, layout: PriorLayout, shapes_wh: Tensor, clip: bool = False, learnable: bool = False):
        super().__init__()
        self.layout = layout
        self.clip = clip
        self.learnable = learnable
        log_wh = shapes_wh.detach().float().log()
        if learnable:
            self.log_wh = nn.Parameter(break_ties(log_wh, layout.num_shapes, offsets=layout.shape_offsets))
        else:
            self.register_buffer("log_wh", log_wh)
        self.register_buffer("_centers", layout.centers.clone(), persistent=False)
        self.register_buffer("_shape_index", layout.shape_index.clone(), persistent=False)
        # [S, 2] per-shape centre offsets (dx, dy), units of the level's step: fixed, derived from
        # the config like the centres (not in the state dict, so checkpoints are unchanged)
        self.register_buffer("_offsets", layout.shape_offsets.clone(), persistent=False)

    @property
    def shapes_wh(self) -> Tensor:
        """Current shapes [S, 2] (relative w, h)."""
        return self.log_wh.exp()

    def level_shapes_px(self) -> list[list[tuple[float, float]]]:
        """Current shapes (w, h) per level in input pixels (offsets: `level_entries_px`)."""
        wh = (self.shapes_wh.detach().cpu().double() * self.layout.image_size).tolist()
        out, start = [], 0
        for n in self.layout.num_shapes:
            out.append([(float(w), float(h)) for w, h in wh[start : start + n]])
            start += n
        return out

    def level_entries_px(self) -> list[list[tuple[float, ...]]]:
        """What a shape-form config holds: per level `(w, h)` (input pixels) or, for a shape with
        a sub-cell offset, `(w, h, dx, dy)`."""
        offsets = self._offsets.detach().cpu().double().tolist()
        out, start = [], 0
        for level in self.level_shapes_px():
            out.append([shape_entry(wh, offsets[start + k]) for k, wh in enumerate(level)])
            start += len(level)
        return out

    def forward(self) -> Tensor:
        wh = self.log_wh.exp()
        if self.clip:
            return assemble_priors(self.layout, wh, clip=True)
        return torch.cat([self._centers.to(wh.dtype), wh[self._shape_index]], dim=1)

    def freeze(self) -> None:
        """Turn learned shapes into a fixed buffer (no inference cost, same state-dict key)."""
        if not self.learnable:
            return
        data = self.log_wh.detach().clone()
        del self.log_wh
        self.register_buffer("log_wh", data)
        self.learnable = False


# --------------------------------------------------------------------------- training aids


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
        from ssd.priors.generator import layout_from_config

        lp = cfg.priors.learn
        return cls(
            layout_from_config(cfg.priors),
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


def export_learned_priors(model: nn.Module, cfg: Config, path: str | Path) -> Config:
    """Freeze the model's current prior shapes and write them as a shape-form config at `path`.

    The written config has `priors.learnable: false`, the learned `priors.shapes` (with their
    fixed sub-cell offsets, if any) and an explicit `model.wh_batchnorm`, so it builds the same
    network with ordinary fixed priors. The model's shapes are re-derived from the written
    numbers, so `generate_priors(exported.priors)` equals `model.priors()` exactly.
    """
    from ssd.config import load_config, replace, save_config
    from ssd.modeling.build import build_prior_boxes, uses_wh_batchnorm

    priors = model.priors
    assert isinstance(priors, PriorBoxes)
    shapes = tuple(tuple(level) for level in priors.level_entries_px())
    exported = replace(
        cfg,
        **{
            "priors.shapes": shapes,
            "priors.learnable": False,
            "model.wh_batchnorm": uses_wh_batchnorm(cfg),
        },
    )
    save_config(exported, path)
    exported = load_config(path)  # exactly what a user will get from the file
    priors.freeze()
    fresh = build_prior_boxes(exported).to(priors.log_wh.device)
    with torch.no_grad():
        priors.log_wh.copy_(fresh.log_wh)
    return exported
