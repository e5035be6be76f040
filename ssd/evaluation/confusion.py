"""Confusion matrix of a detector: classes plus background, so misses and spurious boxes show.

Rows are the true class, columns the predicted class, both over labels 1..C-1 and a last
"background" entry (index C-1 of the matrix, after the C-1 classes):

- a detection (score >= `score_threshold`) matched to a ground-truth box at IoU >= `iou_threshold`
  counts at [true class, predicted class] (the diagonal when they agree, a confusion otherwise);
- a ground-truth box that no detection matches is *missed*: [true class, background];
- a detection that matches no ground-truth box is *spurious*: [background, predicted class].

Matching is class-agnostic and one-to-one, greedily by decreasing IoU (each box at most once),
which is what lets a confusion show up at all. Difficult ground truth is ignored as in VOC: it
is neither missed, nor does a detection matched to it count as spurious.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from ssd.evaluation.voc import GroundTruth
from ssd.structures import Detections


def confusion_matrix(
    gts: Sequence[GroundTruth],
    dets: Sequence[Detections],
    num_classes: int,
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.3,
) -> np.ndarray:
    """int64 [K + 1, K + 1] with K = `num_classes` (foreground classes, labels 1..K); index K is
    background (see the module docstring). `gts[i]` and `dets[i]` are the same image; boxes xyxy
    in the same pixel space."""
    if len(gts) != len(dets):
        raise ValueError(f"{len(gts)} ground truths for {len(dets)} detection sets")
    k = num_classes
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    for gt, det in zip(gts, dets, strict=True):
        keep = det.scores.detach().cpu() >= score_threshold
        d_boxes = det.boxes.detach().cpu().to(torch.float64)[keep].reshape(-1, 4)
        d_labels = det.labels.detach().cpu()[keep].to(torch.int64) - 1
        g_labels = gt.labels - 1
        matched_g = torch.zeros(len(gt), dtype=torch.bool)
        matched_d = torch.zeros(d_boxes.shape[0], dtype=torch.bool)
        if len(gt) and d_boxes.shape[0]:
            iou = box_iou(gt.boxes, d_boxes)  # [G, D]
            gi, di = torch.nonzero(iou >= iou_threshold, as_tuple=True)
            order = torch.argsort(iou[gi, di], descending=True, stable=True)
            for g, d in zip(gi[order].tolist(), di[order].tolist()):
                if matched_g[g] or matched_d[d]:
                    continue
                matched_g[g] = matched_d[d] = True
                if not gt.difficult[g]:
                    matrix[g_labels[g], d_labels[d]] += 1
        for g in torch.nonzero(~matched_g & ~gt.difficult).flatten().tolist():
            matrix[g_labels[g], k] += 1  # missed
        for d in torch.nonzero(~matched_d).flatten().tolist():
            matrix[k, d_labels[d]] += 1  # spurious
    return matrix


def confusion_table(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """Markdown table: rows true class, columns predicted class, both ending in background."""
    names = [*class_names, "background"]
    lines = [
        "| true \\ predicted | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for name, row in zip(names, matrix.tolist(), strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """PNG heat map of `matrix` (counts written in the cells), rows true, columns predicted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [*class_names, "background"]
    n = len(names)
    size = max(4.0, 0.55 * n + 2.0)
    fig = Figure(figsize=(size, size), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.7)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                color = "white" if matrix[i, j] > top / 2 else "black"
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7, color=color)
    if title:
        ax.set_title(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
