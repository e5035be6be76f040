"""Pascal VOC detection metrics: per-class average precision (AP) and mAP.

Semantics follow the official VOC devkit (``VOCevaldet.m`` / ``VOCap``), with two deliberate,
documented differences in geometry:

* **Continuous coordinates.** Boxes are xyxy in pixels of the original image and IoU is
  ``torchvision.ops.box_iou`` (area = (x2 - x1) * (y2 - y1)); the devkit's ``+1`` for inclusive
  integer pixel coordinates is *not* applied. Datasets convert 1-based VOC coordinates once, at
  load time (see ``ssd.data.records.Record``).
* **11-point thresholds are exactly k/10.** The VOC2007 11-point AP samples recall at
  t = 0, 0.1, ..., 1.0; they are computed as ``k / 10`` so that, e.g., a recall of exactly 3/10
  qualifies for t = 0.3 (``numpy.arange(0, 1.1, 0.1)`` would give 0.30000000000000004).

Matching, per class, as in the devkit:

1. Detections of the class are pooled over the whole dataset and sorted by decreasing score
   (stable: ties keep image order, then the order within the image).
2. Each detection is compared with all ground truth of its image and class (difficult included)
   and takes the one with the highest IoU (first one on ties). If that IoU >= ``iou_threshold``:
   the ground truth is difficult -> the detection is ignored (neither TP nor FP); it is not yet
   matched -> TP, and it becomes matched; it was already matched -> FP (duplicate). Note that, as
   in the devkit, an already matched best box is *not* replaced by the next-best unmatched one.
   Otherwise (IoU below the threshold, or no ground truth of the class in the image) -> FP.
3. Recall = cumulative TP / number of non-difficult ground truth; precision = cumulative TP /
   cumulative (TP + FP). Ignored detections are dropped from the curve (they would only repeat the
   previous point, which changes neither AP convention).

Because the best box of a detection does not depend on which boxes are already matched, the
matching is vectorised: a detection is a TP exactly when it is the first (highest-scoring)
detection whose best box is that non-difficult ground-truth box.

AP conventions (``metric``):

* ``"voc07"``: 11-point interpolated AP, mean over t in {0, 0.1, ..., 1} of the maximum
  precision at recall >= t (0 when no such point).
* ``"area"``: all-point AP (VOC2010 onwards), area under the precision envelope (precision made
  monotonically non-increasing in recall), recall running from 0 to 1.

A class without non-difficult ground truth has an undefined recall: its AP is NaN, it is listed
in ``VOCResult.classes_without_gt`` and it is excluded from the mAP (the mean over the other
classes). A class with ground truth but no detection has AP 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from ssd.structures import Detections

if TYPE_CHECKING:
    from ssd.data.records import Record

logger = logging.getLogger(__name__)

VOCMetric = Literal["voc07", "area"]
VOC_METRICS: tuple[str, ...] = ("voc07", "area")


def json_number(value: float) -> float | None:
    """A float for JSON: NaN / inf become ``None`` (JSON has no NaN)."""
    return float(value) if math.isfinite(value) else None


@dataclass
class GroundTruth:
    """Ground truth of one image: `boxes` [G, 4] xyxy in original-image pixels, `labels` [G]
    int64 in 1..C-1, `difficult` [G] bool. Inputs are converted to float64 / int64 / bool CPU
    tensors (numpy arrays and lists are accepted)."""

    boxes: Tensor
    labels: Tensor
    difficult: Tensor

    def __post_init__(self) -> None:
        self.boxes = torch.as_tensor(self.boxes, dtype=torch.float64).cpu().reshape(-1, 4)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).cpu().reshape(-1)
        self.difficult = torch.as_tensor(self.difficult, dtype=torch.bool).cpu().reshape(-1)
        g = self.boxes.shape[0]
        if self.labels.shape[0] != g or self.difficult.shape[0] != g:
            raise ValueError(
                f"GroundTruth: boxes [{g}, 4], labels {list(self.labels.shape)} and difficult "
                f"{list(self.difficult.shape)} disagree on G"
            )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls) -> GroundTruth:
        """An image without ground truth."""
        return cls(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.bool))

    @classmethod
    def from_record(cls, record: Record) -> GroundTruth:
        """From a parsed annotation (`Record.boxes_px` is xyxy in original pixels)."""
        return cls(
            torch.from_numpy(np.asarray(record.boxes_px, dtype=np.float64)),
            torch.from_numpy(np.asarray(record.labels, dtype=np.int64)),
            torch.from_numpy(np.asarray(record.difficult, dtype=bool)),
        )


@dataclass
class VOCResult:
    """Result of `evaluate_voc`. Per-class dicts are keyed by class name, in label order.

    `precision[name]` / `recall[name]` are float64 arrays [D'] along the ranked detections of
    the class (D' = detections not matched to a difficult box); `scores[name]` the detection score
    at each point. `num_gt` counts non-difficult ground truth, `num_difficult` the difficult ones.
    `map` is the mean AP over classes with ground truth (NaN when there is none)."""

    metric: str
    iou_threshold: float
    class_names: tuple[str, ...]
    per_class_ap: dict[str, float]
    precision: dict[str, np.ndarray]
    recall: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    num_gt: dict[str, int]
    num_difficult: dict[str, int]
    num_detections: dict[str, int]
    map: float = field(init=False)

    def __post_init__(self) -> None:
        valid = [ap for ap in self.per_class_ap.values() if not math.isnan(ap)]
        self.map = float(np.mean(valid)) if valid else math.nan

    @property
    def classes_without_gt(self) -> list[str]:
        """Classes whose AP is NaN (no non-difficult ground truth); excluded from the mAP."""
        return [n for n, ap in self.per_class_ap.items() if math.isnan(ap)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (NaN becomes null)."""
        return {
            "mAP": json_number(self.map),
            "per_class_ap": {n: json_number(ap) for n, ap in self.per_class_ap.items()},
            "metric": self.metric,
            "iou_threshold": self.iou_threshold,
            "num_gt": dict(self.num_gt),
            "num_difficult": dict(self.num_difficult),
            "num_detections": dict(self.num_detections),
            "classes_without_gt": self.classes_without_gt,
        }


# --------------------------------------------------------------------------- AP from a PR curve


def voc07_ap(recall: Tensor, precision: Tensor) -> float:
    """11-point interpolated AP (VOC2007). `recall`, `precision`: [D] along the ranked
    detections (recall non-decreasing). Thresholds are exactly k/10, k = 0..10."""
    thresholds = torch.arange(11, dtype=torch.float64) / 10.0
    if recall.numel() == 0:
        return 0.0
    reached = recall.to(torch.float64)[None, :] >= thresholds[:, None]  # [11, D]
    masked = torch.where(reached, precision.to(torch.float64)[None, :], torch.zeros((), dtype=torch.float64))
    return float(masked.amax(dim=1).sum() / 11.0)


def area_ap(recall: Tensor, precision: Tensor) -> float:
    """All-point AP (VOC2010+): area under the monotone precision envelope for recall in [0, 1].
    `recall`, `precision`: [D] along the ranked detections."""
    zero = torch.zeros(1, dtype=torch.float64)
    mrec = torch.cat([zero, recall.to(torch.float64), zero + 1.0])
    mpre = torch.cat([zero, precision.to(torch.float64), zero])
    # envelope: precision at recall r = max precision at any recall >= r
    mpre = torch.flip(torch.cummax(torch.flip(mpre, [0]), dim=0).values, [0])
    return float(((mrec[1:] - mrec[:-1]) * mpre[1:]).sum())


# --------------------------------------------------------------------------- evaluation


def _check_labels(labels: Tensor, num_classes: int, what: str, index: int) -> None:
    if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) > num_classes - 1):
        raise ValueError(
            f"{what} of image {index}: labels must lie in 1..{num_classes - 1} "
            f"(0 is background), got {sorted(set(labels.tolist()))}"
        )


@dataclass
class ClassMatches:
    """The ranked detections of one class after VOC matching (ignored ones dropped):
    `scores` [D] descending, `tp` [D] bool (else FP), `image` [D] int64 image index, and
    `num_gt` [N] the non-difficult ground truth of the class per image (N images)."""

    scores: np.ndarray
    tp: np.ndarray
    image: np.ndarray
    num_gt: np.ndarray


def match_detections(
    gts: Sequence[GroundTruth],
    dets: Sequence[Detections],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
) -> tuple[dict[str, ClassMatches], dict[str, int], dict[str, int]]:
    """VOC matching (module docstring, rules 1-2) of every class: (per-class `ClassMatches`,
    difficult ground truth per class, detections per class before dropping the ignored ones).
    `evaluate_voc` builds its PR curves from these; `ssd.evaluation.bootstrap` re-weights them
    per image."""
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must lie in (0, 1], got {iou_threshold}")
    if len(gts) != len(dets):
        raise ValueError(f"{len(gts)} ground-truth images but {len(dets)} detection images")
    names = tuple(class_names)
    num_classes = len(names) + 1

    # Ground truth pooled over the dataset: global index = offset of the image + local index.
    offsets: list[int] = []
    total = 0
    for i, gt in enumerate(gts):
        _check_labels(gt.labels, num_classes, "ground truth", i)
        offsets.append(total)
        total += len(gt)
    empty_i = torch.zeros(0, dtype=torch.int64)
    gt_labels = torch.cat([gt.labels for gt in gts]) if gts else empty_i
    gt_difficult = torch.cat([gt.difficult for gt in gts]) if gts else torch.zeros(0, dtype=torch.bool)
    per_gt_image = [torch.full((len(gt),), i, dtype=torch.int64) for i, gt in enumerate(gts)]
    gt_image = torch.cat(per_gt_image or [empty_i])

    # Per detection: its best ground truth of the same image and class (IoU, global index).
    d_labels, d_scores, d_best_iou, d_best_gt, d_image = [], [], [], [], []
    for i, (gt, det) in enumerate(zip(gts, dets, strict=True)):
        k = len(det)
        if k == 0:
            continue
        labels = det.labels.detach().cpu().to(torch.int64).reshape(-1)
        scores = det.scores.detach().cpu().to(torch.float64).reshape(-1)
        boxes = det.boxes.detach().cpu().to(torch.float64).reshape(-1, 4)
        if not (labels.shape[0] == scores.shape[0] == boxes.shape[0]):
            raise ValueError(f"detections of image {i}: boxes, scores and labels disagree on K")
        _check_labels(labels, num_classes, "detections", i)
        if len(gt) == 0:
            best_iou = torch.full((k,), -1.0, dtype=torch.float64)
            best = torch.zeros(k, dtype=torch.int64)
        else:
            iou = torch.nan_to_num(box_iou(boxes, gt.boxes), nan=0.0)  # [K, G]; degenerate boxes -> 0
            iou = torch.where(labels[:, None] == gt.labels[None, :], iou, torch.full_like(iou, -1.0))
            best_iou, best = iou.max(dim=1)  # first maximum on ties, as the devkit's strict '>'
        d_labels.append(labels)
        d_scores.append(scores)
        d_best_iou.append(best_iou)
        d_best_gt.append(best + offsets[i])
        d_image.append(torch.full((k,), i, dtype=torch.int64))
    all_labels = torch.cat(d_labels) if d_labels else empty_i
    all_scores = torch.cat(d_scores) if d_scores else torch.zeros(0, dtype=torch.float64)
    all_best_iou = torch.cat(d_best_iou) if d_best_iou else torch.zeros(0, dtype=torch.float64)
    all_best_gt = torch.cat(d_best_gt) if d_best_gt else empty_i
    all_image = torch.cat(d_image) if d_image else empty_i

    matches: dict[str, ClassMatches] = {}
    num_difficult: dict[str, int] = {}
    num_dets: dict[str, int] = {}
    for c, name in enumerate(names, start=1):
        is_c = gt_labels == c
        num_difficult[name] = int((is_c & gt_difficult).sum())
        per_image = torch.bincount(gt_image[is_c & ~gt_difficult], minlength=len(gts))
        sel = torch.nonzero(all_labels == c).flatten()
        num_dets[name] = int(sel.numel())
        order = torch.sort(all_scores[sel], descending=True, stable=True).indices
        sel = sel[order]
        best_gt = all_best_gt[sel]
        matched = all_best_iou[sel] >= iou_threshold
        ignored = torch.zeros_like(matched)
        ignored[matched] = gt_difficult[best_gt[matched]]
        cand = matched & ~ignored
        n = int(sel.numel())
        pos = torch.arange(n)
        tp = torch.zeros(n, dtype=torch.bool)
        if bool(cand.any()):
            # first (highest-ranked) detection per ground-truth box is the TP; later ones are FP
            first = torch.full((total,), n, dtype=torch.int64)
            first.scatter_reduce_(0, best_gt[cand], pos[cand], reduce="amin")
            tp[cand] = first[best_gt[cand]] == pos[cand]
        keep = ~ignored
        matches[name] = ClassMatches(
            scores=all_scores[sel][keep].numpy(),
            tp=tp[keep].numpy(),
            image=all_image[sel][keep].numpy(),
            num_gt=per_image.numpy(),
        )
    return matches, num_difficult, num_dets


def evaluate_voc(
    gts: Sequence[GroundTruth],
    dets: Sequence[Detections],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    metric: VOCMetric = "voc07",
) -> VOCResult:
    """Per-class AP and mAP in a VOC convention (see the module docstring for the exact rules).

    `gts[i]` and `dets[i]` belong to the same image i. `class_names` excludes background:
    `class_names[k]` is the name of label k + 1 (as `DataConfig.classes`). Detection boxes are
    xyxy in original-image pixels (`Detections`), scores [K], labels [K] in 1..C-1.
    `iou_threshold` must lie in (0, 1]; a match needs IoU >= threshold.
    """
    if metric not in VOC_METRICS:
        raise ValueError(f"metric must be one of {VOC_METRICS}, got {metric!r}")
    names = tuple(class_names)
    matches, num_difficult, num_dets = match_detections(gts, dets, names, iou_threshold)
    per_class_ap: dict[str, float] = {}
    precision: dict[str, np.ndarray] = {}
    recall: dict[str, np.ndarray] = {}
    score_pts: dict[str, np.ndarray] = {}
    num_gt: dict[str, int] = {}
    for name in names:
        m = matches[name]
        npos = int(m.num_gt.sum())
        num_gt[name] = npos
        tp_f = torch.from_numpy(m.tp).to(torch.float64)
        tp_cum = torch.cumsum(tp_f, 0)
        fp_cum = torch.cumsum(1.0 - tp_f, 0)  # every kept detection is TP or FP
        prec = tp_cum / (tp_cum + fp_cum)
        if npos == 0:
            rec = torch.full_like(tp_cum, math.nan)
            ap = math.nan
            logger.info("class %r has no non-difficult ground truth: AP undefined (NaN)", name)
        else:
            rec = tp_cum / npos
            ap = voc07_ap(rec, prec) if metric == "voc07" else area_ap(rec, prec)
        per_class_ap[name] = ap
        precision[name] = prec.numpy()
        recall[name] = rec.numpy()
        score_pts[name] = m.scores

    return VOCResult(
        metric=metric,
        iou_threshold=float(iou_threshold),
        class_names=names,
        per_class_ap=per_class_ap,
        precision=precision,
        recall=recall,
        scores=score_pts,
        num_gt=num_gt,
        num_difficult=num_difficult,
        num_detections=num_dets,
    )
