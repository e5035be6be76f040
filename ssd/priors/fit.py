"""How well a prior set fits a dataset: a read-only report that measures what the matcher sees.

Everything is computed in **network-input space**: SSD warps every image to S x S, so a box of a
W x H image is scaled by S/W in x and S/H in y before any IoU (`records_to_boxes`). Two IoUs
are reported, and labelled:

- *shape* IoU (YOLO9000's k-means measure): the box and a prior shape co-centred, best over the
  distinct shapes; it ignores where priors sit and so over-states the fit;
- *grid* IoU: best IoU against the actual positioned priors (centres
  ((j + 0.5 + dx) step, (i + 0.5 + dy) step), dx = dy = 0 unless the shape has a sub-cell
  offset), which is what `ssd.priors.matcher.match` uses.

Grid statistics are exact and cheap for the regular (unclipped) layout: on one level, all priors
of one shape (at one offset) form a lattice and the IoU with a box factorises into an x-overlap
that depends only on the column and a y-overlap that depends only on the row, each
non-increasing with the distance between centres. So the best prior of a (level, shape) is the
lattice point nearest to the box centre (O(1) per box), and the number of priors with IoU >= t
is a sum over rows of an interval length in columns (O(feature map) per box). Memory stays
O(chunk x feature map). Clipped or arbitrary priors take `dense_grid_stats` (torchvision
box_iou over chunks of ground truth).

Where a box falls relative to the cell centres of the fine levels is chance: a 10 x 10 px spot
on the stride-8 lattice reaches IoU 0.5 with a prior of its own shape at only ~39% of the
positions. So the report also gives *position-averaged* figures (`recall_expected`,
`mean_iou_grid_expected`): every box moved over a regular n x n grid of shifts spanning a whole
cell of the two finest levels (`position_shifts`), the hit rate and best IoU averaged. They are
what new images of the same shapes can expect, free of the luck of the particular positions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from ssd.boxes import cxcywh_to_xyxy, pixels_to_relative, shape_iou
from ssd.data.records import Record
from ssd.priors.generator import Offset, PriorLayout, PriorSet, Shape

log = logging.getLogger(__name__)

# Size buckets by sqrt(area) in input pixels (COCO's 32 / 96 split), plus elongated boxes.
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 32.0),
    ("medium", 32.0, 96.0),
    ("large", 96.0, math.inf),
)
BAND_ASPECT = 5.0  # "band" bucket: max(w/h, h/w) > 5 (overlaps the size buckets)


# --------------------------------------------------------------------------- boxes in input space


@dataclass(frozen=True)
class BoxSet:
    """Ground-truth boxes of many images, in network-input space.

    `boxes` [G, 4] float64 xyxy relative to the (warped) input, `labels` [G] int64 (1..C-1),
    `image_index` [G] index into `image_ids`, `image_size` S (input pixels per side).
    """

    boxes: np.ndarray
    labels: np.ndarray
    image_index: np.ndarray
    image_ids: tuple[str, ...]
    image_size: int

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def boxes_px(self) -> np.ndarray:
        """[G, 4] xyxy in input pixels."""
        out: np.ndarray = self.boxes * self.image_size
        return out

    @property
    def wh_px(self) -> np.ndarray:
        """[G, 2] (w, h) in input pixels."""
        b = self.boxes_px
        return np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)

    def subset(self, index: np.ndarray) -> BoxSet:
        """The boxes selected by an integer or boolean `index` (images are kept as they are)."""
        return BoxSet(
            self.boxes[index], self.labels[index], self.image_index[index], self.image_ids, self.image_size
        )


def records_to_boxes(records: Sequence[Record], image_size: int, *, include_difficult: bool = True) -> BoxSet:
    """All boxes of `records` warped to the S x S input exactly as the model sees them:
    relative xyxy = boxes_px / (W, H) (x scaled by S/W and y by S/H in input pixels).

    Degenerate boxes (w or h <= 0 after the warp) are dropped with a warning.
    """
    boxes, labels, index, ids = [], [], [], []
    for i, rec in enumerate(records):
        ids.append(rec.image_id)
        if rec.num_boxes == 0:
            continue
        keep = np.ones(rec.num_boxes, bool)
        if not include_difficult and rec.difficult.size:
            keep &= ~rec.difficult.astype(bool)
        if not keep.any():
            continue
        px = torch.from_numpy(np.asarray(rec.boxes_px, dtype=np.float64)[keep])
        rel = pixels_to_relative(px, float(rec.width), float(rec.height)).numpy()
        boxes.append(rel)
        labels.append(np.asarray(rec.labels, dtype=np.int64)[keep])
        index.append(np.full(rel.shape[0], i, np.int64))
    if boxes:
        b, lab, idx = np.concatenate(boxes), np.concatenate(labels), np.concatenate(index)
    else:
        b, lab, idx = np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    if not ok.all():
        log.warning("dropping %d degenerate boxes (zero width or height)", int((~ok).sum()))
        b, lab, idx = b[ok], lab[ok], idx[ok]
    return BoxSet(b, lab, idx, tuple(ids), int(image_size))


def records_to_input_wh(
    records: Sequence[Record], image_size: int, *, include_difficult: bool = True
) -> np.ndarray:
    """[N, 2] (w, h) of every box in input pixels: (w * S / W, h * S / H)."""
    return records_to_boxes(records, image_size, include_difficult=include_difficult).wh_px


def records_to_input_boxes(
    records: Sequence[Record], image_size: int, *, include_difficult: bool = True
) -> list[np.ndarray]:
    """Per image [G_i, 4] xyxy relative to the warped input (the positioned version)."""
    bs = records_to_boxes(records, image_size, include_difficult=include_difficult)
    return [bs.boxes[bs.image_index == i] for i in range(len(records))]


# --------------------------------------------------------------------------- lattice IoU


def _overlap_nearest(
    g1: np.ndarray, g2: np.ndarray, step: float, f: int, size: np.ndarray, offset: np.ndarray
) -> np.ndarray:
    """1-D overlap [G, S] of intervals [g1, g2] (pixels, [G]) with the prior of length `size` [S]
    at the lattice point (j + 0.5 + offset) step, 0 <= j < f, nearest to the interval's centre
    (`offset` [S] in units of the step; with 0 that is the cell containing the centre)."""
    centre = 0.5 * (g1 + g2)
    j = np.clip(np.floor(centre[:, None] / step - offset[None, :]), 0, f - 1)  # [G, S]
    c = (j + 0.5 + offset[None, :]) * step
    lo = np.maximum(g1[:, None], c - size[None, :] / 2)
    hi = np.minimum(g2[:, None], c + size[None, :] / 2)
    out: np.ndarray = np.clip(hi - lo, 0.0, None)
    return out


def lattice_best_iou(
    boxes_px: np.ndarray,
    shapes: np.ndarray,
    feature_map: int,
    step: float,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """Best IoU [G, S] of boxes [G, 4] (xyxy, input pixels) against each lattice of priors with
    shape `shapes` [S, 2] (w, h pixels) centred at ((j + 0.5 + dx) step, (i + 0.5 + dy) step),
    0 <= i,j < f, with `offsets` [S, 2] (dx, dy) in units of the step (default 0).

    Exact: IoU = ox * oy / (A + B - ox * oy) with ox depending on the column only and oy on the
    row only, both largest at the lattice point nearest to the box centre.
    """
    return lattice_best_iou_xy(boxes_px, shapes, (feature_map, step), (feature_map, step), offsets)


def lattice_best_iou_xy(
    boxes_px: np.ndarray,
    shapes: np.ndarray,
    x_lattice: tuple[int, float],
    y_lattice: tuple[int, float],
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """`lattice_best_iou` on a lattice with its own (points, step) along each axis: columns at
    (j + 0.5 + dx) step_x, 0 <= j < n_x, rows at (i + 0.5 + dy) step_y, 0 <= i < n_y. A shape on
    the (nx, ny) sub-grid of a level (f cells of `step`) is the lattice ((nx f, step / nx),
    (ny f, step / ny)): one evaluation instead of nx * ny."""
    b = np.asarray(boxes_px, dtype=np.float64)
    s = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)
    o = np.zeros_like(s) if offsets is None else np.asarray(offsets, dtype=np.float64).reshape(-1, 2)
    (fx, sx), (fy, sy) = x_lattice, y_lattice
    ox = _overlap_nearest(b[:, 0], b[:, 2], float(sx), int(fx), s[:, 0], o[:, 0])
    oy = _overlap_nearest(b[:, 1], b[:, 3], float(sy), int(fy), s[:, 1], o[:, 1])
    inter = ox * oy
    area_g = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[:, None]
    union = area_g + (s[:, 0] * s[:, 1])[None, :] - inter
    out: np.ndarray = inter / np.maximum(union, 1e-12)
    return out


def _count_within(
    centre: np.ndarray, radius: np.ndarray, step: float, f: int, offset: float = 0.0
) -> np.ndarray:
    """Number of lattice points c_j = (j + 0.5 + offset) step, 0 <= j < f, with |c_j - centre| <= radius."""
    lo = np.maximum(np.ceil((centre - radius) / step - 0.5 - offset), 0)
    hi = np.minimum(np.floor((centre + radius) / step - 0.5 - offset), f - 1)
    out: np.ndarray = np.where(radius >= 0, np.clip(hi - lo + 1, 0, None), 0)
    return out


def lattice_positives(
    boxes_px: np.ndarray,
    shape: Shape,
    feature_map: int,
    step: float,
    threshold: float,
    offset: Offset = (0.0, 0.0),
) -> np.ndarray:
    """Number of priors [G] of one lattice (one shape on one level, centred at
    ((j + 0.5 + dx) step, (i + 0.5 + dy) step) with `offset` = (dx, dy)) with IoU >= `threshold`.

    IoU >= t  <=>  ox * oy >= T = t (A + B) / (1 + t). For each row i with y-overlap oy_i the
    columns must have ox >= T / oy_i =: c, and ox(d) = min(gw, pw, (gw + pw) / 2 - |d|) (d the
    centre distance) is >= c iff c <= min(gw, pw) and |d| <= (gw + pw) / 2 - c: an interval.
    """
    b = np.asarray(boxes_px, dtype=np.float64)
    pw, ph = float(shape[0]), float(shape[1])
    gw, gh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    gcx, gcy = 0.5 * (b[:, 0] + b[:, 2]), 0.5 * (b[:, 1] + b[:, 3])
    big_t = threshold * (gw * gh + pw * ph) / (1.0 + threshold)  # [G]
    off_x, off_y = float(offset[0]), float(offset[1])
    cy = (np.arange(feature_map) + 0.5 + off_y) * step  # [f] row centres
    dy = np.abs(cy[None, :] - gcy[:, None])  # [G, f]
    oy = np.clip(np.minimum(np.minimum(gh, ph)[:, None], (gh[:, None] + ph) / 2 - dy), 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(oy > 0, big_t[:, None] / oy, np.inf)  # required x-overlap per row
    ok = need <= np.minimum(gw, pw)[:, None]
    radius = np.where(ok, (gw[:, None] + pw) / 2 - need, -1.0)
    counts = _count_within(np.broadcast_to(gcx[:, None], radius.shape), radius, step, feature_map, off_x)
    out: np.ndarray = counts.sum(axis=1).astype(np.int64)
    return out


@dataclass
class GridStats:
    """Per ground truth [G]: best grid IoU, its level and flat shape index (into the grid's shapes,
    level 0 first), the number of priors with IoU >= threshold, the best shape IoU and, when
    computed (`compute_stats` with shifts), the position-averaged hit rate and best grid IoU."""

    best_iou: np.ndarray
    best_level: np.ndarray
    best_shape: np.ndarray
    num_above: np.ndarray
    shape_iou: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hit_expected: np.ndarray | None = None
    iou_expected: np.ndarray | None = None


# --------------------------------------------------------------------------- positions


POSITION_SHIFTS = 8  # n: the position-averaged figures move every box over n x n shifts


def default_shift_amplitude(steps: Sequence[float]) -> float:
    """Half the stride of the second level (of the only one for a single level): shifts in
    [-a, a] span one whole cell of that level and two of the finest (SSD's steps double), so
    the phase of a box on both is uniform."""
    if not steps:
        raise ValueError("a prior layout needs at least one level")
    return float(steps[min(1, len(steps) - 1)]) / 2.0


def translate_inside(
    boxes_px: np.ndarray, shift: np.ndarray, image_size: int, half: np.ndarray | None = None
) -> np.ndarray:
    """Boxes [N, 4] (xyxy input pixels) moved by `shift` [N, 2] (or [2]) and slid back inside
    the image, with half-sizes `half` [N, 2] (default: their own, i.e. the shape is kept; a
    box at an edge stays there, a full-width band keeps spanning the width)."""
    cxcy = 0.5 * (boxes_px[:, :2] + boxes_px[:, 2:])
    r = 0.5 * (boxes_px[:, 2:] - boxes_px[:, :2]) if half is None else half
    r = np.minimum(r, 0.5 * float(image_size))
    c = np.clip(cxcy + shift, r, float(image_size) - r)
    out: np.ndarray = np.concatenate([c - r, c + r], axis=1)
    return out


def position_shifts(n: int, amplitude: float) -> np.ndarray:
    """[n * n, 2] the regular grid of shifts (midpoints of n equal parts of [-a, a] per axis)."""
    if n < 1 or amplitude < 0:
        raise ValueError(f"position shifts need n >= 1 and amplitude >= 0, got {n}, {amplitude}")
    t = -amplitude + (np.arange(n) + 0.5) * (2.0 * amplitude / n)
    return np.stack(np.meshgrid(t, t, indexing="xy"), axis=-1).reshape(-1, 2)


def grid_stats(
    grid: PriorSet,
    boxes: BoxSet | np.ndarray,
    threshold: float,
    *,
    chunk: int = 16384,
    positives: bool = True,
) -> GridStats:
    """Exact grid statistics of an unclipped `grid` for boxes (a BoxSet, or [G, 4] xyxy relative).

    Uses the lattice factorisation (see the module docstring); memory O(chunk x max(f, shapes)).
    With `positives=False` the count of priors at IoU >= threshold is skipped (`num_above` 0).
    """
    if grid.clip:
        raise ValueError("grid_stats needs unclipped priors; use dense_grid_stats for clip=True")
    rel = boxes.boxes if isinstance(boxes, BoxSet) else np.asarray(boxes, dtype=np.float64)
    px = rel * grid.image_size
    g = px.shape[0]
    best = np.full(g, -1.0)
    best_level = np.zeros(g, np.int64)
    best_shape = np.zeros(g, np.int64)
    num_above = np.zeros(g, np.int64)
    offset = 0
    for level, (shapes, offs, f, step) in enumerate(
        zip(grid.shapes, grid.offsets, grid.feature_maps, grid.steps)
    ):
        arr = np.array(shapes, dtype=np.float64).reshape(-1, 2)
        off = np.array(offs, dtype=np.float64).reshape(-1, 2)
        for start in range(0, g, chunk):
            sl = slice(start, min(start + chunk, g))
            iou = lattice_best_iou(px[sl], arr, f, step, off)  # [g', S_l]
            j = iou.argmax(axis=1)
            v = iou[np.arange(iou.shape[0]), j]
            better = v > best[sl]
            best[sl] = np.where(better, v, best[sl])
            best_level[sl] = np.where(better, level, best_level[sl])
            best_shape[sl] = np.where(better, offset + j, best_shape[sl])
            if not positives:
                continue
            for s_idx, (shape, o) in enumerate(zip(shapes, offs)):
                # a lattice can only hold a positive where its best IoU is one
                cand = np.flatnonzero(iou[:, s_idx] >= threshold)
                if cand.size:
                    num_above[start + cand] += lattice_positives(px[sl][cand], shape, f, step, threshold, o)
        offset += len(shapes)
    return GridStats(best, best_level, best_shape, num_above)


def dense_grid_stats(
    priors: Tensor,
    layout: PriorLayout,
    boxes: BoxSet | np.ndarray,
    threshold: float,
    *,
    max_elements: int = 1 << 24,
) -> GridStats:
    """Grid statistics against arbitrary priors [P, 4] (cxcywh relative; e.g. clipped), by
    torchvision box_iou over chunks of ground truth holding at most `max_elements` IoUs."""
    rel = boxes.boxes if isinstance(boxes, BoxSet) else np.asarray(boxes, dtype=np.float64)
    pri = cxcywh_to_xyxy(priors.detach().double().cpu())
    g, p = rel.shape[0], pri.shape[0]
    chunk = max(1, max_elements // max(p, 1))
    best = np.zeros(g)
    idx = np.zeros(g, np.int64)
    num_above = np.zeros(g, np.int64)
    gt = torch.from_numpy(rel)
    for start in range(0, g, chunk):
        iou = box_iou(gt[start : start + chunk], pri)
        v, j = iou.max(dim=1)
        best[start : start + chunk] = v.numpy()
        idx[start : start + chunk] = j.numpy()
        num_above[start : start + chunk] = (iou >= threshold).sum(dim=1).numpy()
    level = layout.level_index.numpy()[idx] if g else np.zeros(0, np.int64)
    shape = layout.shape_index.numpy()[idx] if g else np.zeros(0, np.int64)
    return GridStats(best, level.astype(np.int64), shape.astype(np.int64), num_above)


def best_shape_iou(wh_px: np.ndarray, shapes_px: np.ndarray, *, chunk: int = 65536) -> np.ndarray:
    """[G] best co-centred (shape) IoU of each (w, h) against the distinct prior shapes."""
    s = torch.from_numpy(np.asarray(shapes_px, dtype=np.float64).reshape(-1, 2))
    wh = torch.from_numpy(np.asarray(wh_px, dtype=np.float64).reshape(-1, 2))
    out = np.zeros(wh.shape[0])
    for start in range(0, wh.shape[0], chunk):
        out[start : start + chunk] = shape_iou(wh[start : start + chunk], s).max(dim=1).values.numpy()
    return out


def compute_stats(
    grid: PriorSet,
    boxes: BoxSet,
    threshold: float,
    *,
    priors: Tensor | None = None,
    shifts: int = POSITION_SHIFTS,
    shift_amplitude: float | None = None,
) -> GridStats:
    """Grid and shape statistics of `boxes`; `priors` (cxcywh relative, generator order) replaces
    the grid's own priors (then, like for clip=True, the dense path is used). With `shifts` n > 0
    also the position-averaged hit rate and best grid IoU of every box over the n x n
    `position_shifts` of amplitude `shift_amplitude` px (default `default_shift_amplitude`)."""
    pri: Tensor | None = None
    if priors is not None or grid.clip:
        pri = grid.priors() if priors is None else priors
        stats = dense_grid_stats(pri, grid.layout(), boxes, threshold)
    else:
        stats = grid_stats(grid, boxes, threshold)
    stats.shape_iou = best_shape_iou(boxes.wh_px, grid.distinct_shapes())
    if shifts > 0 and boxes.num_boxes:
        a = default_shift_amplitude(grid.steps) if shift_amplitude is None else float(shift_amplitude)
        px = boxes.boxes_px
        moves = position_shifts(int(shifts), a)
        moved = np.concatenate([translate_inside(px, d, boxes.image_size) for d in moves]) / boxes.image_size
        shifted = (
            dense_grid_stats(pri, grid.layout(), moved, threshold)
            if pri is not None
            else grid_stats(grid, moved, threshold, positives=False)
        )
        best = shifted.best_iou.reshape(len(moves), boxes.num_boxes)
        stats.hit_expected = (best >= threshold).mean(axis=0)
        stats.iou_expected = best.mean(axis=0)
    return stats


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class FitSummary:
    """The fit figures of one group of ground truth (all, a class, a size bucket); None where the
    group is empty (or, for the position-averaged figures, where they were not computed)."""

    num_gt: int
    mean_iou_shape: float | None = None
    mean_iou_grid: float | None = None
    recall: float | None = None
    recall_shape: float | None = None
    positives_per_gt: float | None = None
    recall_expected: float | None = None
    mean_iou_grid_expected: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LevelFit:
    """One level of the prior set in a fit report: its lattice, its shapes (shape-form entries,
    w and h rounded to 0.01 px) and how many ground truths have their best prior there."""

    level: int
    feature_map: int
    step: float
    num_shapes: int
    num_priors: int
    shapes: tuple[tuple[float, ...], ...]
    best_for_gt: int

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shapes"] = [list(e) for e in self.shapes]
        return d


@dataclass(frozen=True)
class UnmatchedBox:
    """A ground truth without a prior at grid IoU >= the threshold (input pixels)."""

    image_id: str
    class_name: str
    w: float
    h: float
    cx: float
    cy: float
    iou_grid: float
    iou_shape: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "class": self.class_name,
            "w": self.w,
            "h": self.h,
            "cx": self.cx,
            "cy": self.cy,
            "iou_grid": self.iou_grid,
            "iou_shape": self.iou_shape,
        }


@dataclass(frozen=True)
class Unmatched:
    """The ground truth without a prior at grid IoU >= the threshold: `count`, per class, and
    the worst ones (lowest best grid IoU first)."""

    count: int
    per_class: dict[str, int]
    worst: tuple[UnmatchedBox, ...]

    def to_dict(self) -> dict[str, Any]:
        worst = [b.to_dict() for b in self.worst]
        return {"count": self.count, "per_class": dict(self.per_class), "worst": worst}


@dataclass(frozen=True)
class FitReport:
    """The fit of a prior set to ground truth (`fit_report`); `to_dict()` is the JSON form.

    `num_priors`, `boxes_per_cell`, `num_gt`, `num_images`, `image_size`, `iou_threshold`; the
    overall figures (`mean_iou_shape` co-centred, best over the distinct shapes; `mean_iou_grid`
    best over the positioned priors, as the matcher sees them; `recall` share of ground truth
    with a prior at grid IoU >= threshold; `recall_shape`; `positives_per_gt` priors at IoU >=
    threshold, at least 1 because of the matcher's forcing step; the position-averaged
    `recall_expected` and `mean_iou_grid_expected`, None without shifts); `per_class` and
    `per_size` (the same figures per class name and per size bucket); `per_level`; `unmatched`;
    `grid` (the prior set measured); `shifts` and `shift_amplitude_px` (the position averaging).
    """

    num_priors: int
    boxes_per_cell: int
    num_gt: int
    num_images: int
    image_size: int
    iou_threshold: float
    shifts: int
    shift_amplitude_px: float
    overall: FitSummary
    per_class: dict[str, FitSummary]
    per_size: dict[str, FitSummary]
    per_level: tuple[LevelFit, ...]
    unmatched: Unmatched
    grid: PriorSet

    @property
    def mean_iou_shape(self) -> float | None:
        return self.overall.mean_iou_shape

    @property
    def mean_iou_grid(self) -> float | None:
        return self.overall.mean_iou_grid

    @property
    def recall(self) -> float | None:
        return self.overall.recall

    @property
    def recall_shape(self) -> float | None:
        return self.overall.recall_shape

    @property
    def positives_per_gt(self) -> float | None:
        return self.overall.positives_per_gt

    @property
    def recall_expected(self) -> float | None:
        return self.overall.recall_expected

    @property
    def mean_iou_grid_expected(self) -> float | None:
        return self.overall.mean_iou_grid_expected

    def to_dict(self) -> dict[str, Any]:
        overall = self.overall.to_dict()
        overall.pop("num_gt")
        return {
            "num_priors": self.num_priors,
            "boxes_per_cell": self.boxes_per_cell,
            "num_gt": self.num_gt,
            "num_images": self.num_images,
            "image_size": self.image_size,
            "iou_threshold": self.iou_threshold,
            "position_shifts": {"n": self.shifts, "amplitude_px": self.shift_amplitude_px},
            **overall,
            "per_class": {k: v.to_dict() for k, v in self.per_class.items()},
            "per_size": {k: v.to_dict() for k, v in self.per_size.items()},
            "per_level": [lv.to_dict() for lv in self.per_level],
            "unmatched": self.unmatched.to_dict(),
            "grid": self.grid.to_dict(),
        }


def _summary(stats: GridStats, sel: np.ndarray, threshold: float) -> FitSummary:
    n = int(sel.sum()) if sel.dtype == bool else int(sel.size)
    if n == 0:
        return FitSummary(num_gt=0)
    hit, iou = stats.hit_expected, stats.iou_expected
    return FitSummary(
        num_gt=n,
        mean_iou_shape=float(stats.shape_iou[sel].mean()),
        mean_iou_grid=float(stats.best_iou[sel].mean()),
        recall=float((stats.best_iou[sel] >= threshold).mean()),
        recall_shape=float((stats.shape_iou[sel] >= threshold).mean()),
        # the matcher forces every ground truth onto its best prior: at least one positive
        positives_per_gt=float(np.maximum(stats.num_above[sel], 1).mean()),
        recall_expected=None if hit is None else float(hit[sel].mean()),
        mean_iou_grid_expected=None if iou is None else float(iou[sel].mean()),
    )


def fit_report(
    grid: PriorSet,
    boxes: BoxSet,
    class_names: Sequence[str],
    *,
    iou_threshold: float = 0.5,
    priors: Tensor | None = None,
    max_unmatched: int = 50,
    shifts: int = POSITION_SHIFTS,
) -> FitReport:
    """The fit of a prior set to ground truth (see `FitReport` for the figures).

    Size buckets are by sqrt area in input pixels: small < 32 <= medium < 96 <= large, plus
    `band` = aspect > 5. `per_level` gives the shapes and how many ground truths have their best
    prior there; `unmatched` the count, per class, and the worst `max_unmatched` listed by
    input-pixel shape. `class_names` map labels 1..C-1. The position-averaged figures are over
    `shifts` x `shifts` moves of every box (see the module docstring; None with `shifts=0`).
    `priors` (cxcywh relative, generator order) replaces the grid's own priors.
    """
    stats = compute_stats(grid, boxes, iou_threshold, priors=priors, shifts=shifts)
    everything = np.ones(boxes.num_boxes, bool)
    wh = boxes.wh_px
    scale = np.sqrt(wh[:, 0] * wh[:, 1])
    aspect = np.maximum(wh[:, 0] / wh[:, 1], wh[:, 1] / wh[:, 0]) if boxes.num_boxes else np.zeros(0)
    per_size = {
        name: _summary(stats, (scale >= lo) & (scale < hi), iou_threshold) for name, lo, hi in SIZE_BUCKETS
    }
    per_size[f"band (aspect > {BAND_ASPECT:g})"] = _summary(stats, aspect > BAND_ASPECT, iou_threshold)
    per_level = tuple(
        LevelFit(
            level=level,
            feature_map=f,
            step=step,
            num_shapes=len(shapes),
            num_priors=f * f * len(shapes),
            shapes=tuple(tuple(e) for e in entries),
            best_for_gt=int((stats.best_level == level).sum()),
        )
        for level, (shapes, entries, f, step) in enumerate(
            zip(grid.shapes, grid.entries(2), grid.feature_maps, grid.steps)
        )
    )
    miss = np.flatnonzero(stats.best_iou < iou_threshold)
    worst = miss[np.argsort(stats.best_iou[miss], kind="stable")][:max_unmatched]
    unmatched = Unmatched(
        count=int(miss.size),
        per_class={name: int((boxes.labels[miss] == i + 1).sum()) for i, name in enumerate(class_names)},
        worst=tuple(
            UnmatchedBox(
                image_id=boxes.image_ids[int(boxes.image_index[i])],
                class_name=_class_name(class_names, int(boxes.labels[i])),
                w=round(float(wh[i, 0]), 2),
                h=round(float(wh[i, 1]), 2),
                cx=round(float((boxes.boxes[i, 0] + boxes.boxes[i, 2]) / 2 * boxes.image_size), 2),
                cy=round(float((boxes.boxes[i, 1] + boxes.boxes[i, 3]) / 2 * boxes.image_size), 2),
                iou_grid=round(float(stats.best_iou[i]), 4),
                iou_shape=round(float(stats.shape_iou[i]), 4),
            )
            for i in worst
        ),
    )
    return FitReport(
        num_priors=grid.num_priors if priors is None else int(priors.shape[0]),
        boxes_per_cell=grid.boxes_per_cell,
        num_gt=boxes.num_boxes,
        num_images=len(boxes.image_ids),
        image_size=grid.image_size,
        iou_threshold=iou_threshold,
        shifts=int(shifts),
        shift_amplitude_px=default_shift_amplitude(grid.steps),
        overall=_summary(stats, everything, iou_threshold),
        per_class={
            name: _summary(stats, boxes.labels == i + 1, iou_threshold) for i, name in enumerate(class_names)
        },
        per_size=per_size,
        per_level=per_level,
        unmatched=unmatched,
        grid=grid,
    )


@dataclass(frozen=True)
class SubsetRecall:
    """Recall of a subset of the boxes (e.g. the window boxes of originally small boxes) per
    prior set: at the grid positions (`recall`) and position-averaged (`recall_expected`); None
    for every set when the subset is empty. `num_window_boxes` is the size of the subset."""

    num_window_boxes: int
    recall: dict[str, float | None]
    recall_expected: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def subset_recall(
    grids: Mapping[str, PriorSet],
    boxes: BoxSet,
    mask: np.ndarray,
    class_names: Sequence[str],
    *,
    iou_threshold: float = 0.5,
    shifts: int = POSITION_SHIFTS,
) -> SubsetRecall:
    """`fit_report`'s recall and position-averaged recall of the boxes selected by the boolean
    `mask`, for each named prior set."""
    sub = boxes.subset(mask)
    recall: dict[str, float | None] = {}
    expected: dict[str, float | None] = {}
    for name, grid in grids.items():
        rep = None
        if sub.num_boxes:
            rep = fit_report(grid, sub, class_names, iou_threshold=iou_threshold, shifts=shifts)
        recall[name] = None if rep is None else rep.recall
        expected[name] = None if rep is None else rep.recall_expected
    return SubsetRecall(int(mask.sum()), recall, expected)


def _class_name(names: Sequence[str], label: int) -> str:
    return names[label - 1] if 1 <= label <= len(names) else str(label)


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{100 * v:.1f}" if pct else f"{v:.3f}"
    return str(v)


def fit_table_markdown(reports: Mapping[str, FitReport]) -> str:
    """Side-by-side Markdown tables of several fit reports (name -> `fit_report`): the overall
    figures, then recall@threshold per class and per size bucket."""
    names = list(reports)
    first = reports[names[0]]
    t = first.iou_threshold
    lines = [
        "| priors | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    rows = [
        ("priors", "num_priors", False),
        ("boxes per cell", "boxes_per_cell", False),
        ("mean IoU, shape (co-centred)", "mean_iou_shape", True),
        ("mean IoU, grid (matcher)", "mean_iou_grid", True),
        (f"recall@{t:g}, grid", "recall", True),
        (f"recall@{t:g}, shape", "recall_shape", True),
        ("mean IoU, grid, position-averaged", "mean_iou_grid_expected", True),
        (f"recall@{t:g}, grid, position-averaged", "recall_expected", True),
        ("positives per GT", "positives_per_gt", False),
    ]
    for label, key, pct in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(getattr(reports[n], key), pct) for n in names) + " |")
    lines += ["", f"Grid recall@{t:g} (%) per class and size bucket (ground truth count in brackets):", ""]
    lines.append("| group | GT | " + " | ".join(names) + " |")
    lines.append("|---|---:|" + "---:|" * len(names))
    for section in ("per_class", "per_size"):
        groups: dict[str, FitSummary] = getattr(first, section)
        for group, s in groups.items():
            vals = " | ".join(_fmt(getattr(reports[n], section)[group].recall, True) for n in names)
            lines.append(f"| {group} | {s.num_gt} | {vals} |")
    return "\n".join(lines) + "\n"
