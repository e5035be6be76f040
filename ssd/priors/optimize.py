"""Turn a dataset's boxes into a complete SSD prior configuration (shape form).

Three methods, all deterministic for a seed, each with its own public function:

- `optimize_chi` / `chi_priors`: Chi et al., "An Optimized SSD Target Detection Algorithm Based on
  K-Means Clustering", section 3.2, as published: IoU k-means with k = 7 sets the `min_size` of
  the first two levels, ratios 2 and 3 are removed from them, the last level gets `min_size` =
  the input size and one box of aspect ratio 15; everything else stays the original SSD512
  (33 boxes per cell, 14,325 priors at 512).
- `optimize_kmeans` / `kmeans_priors` (ours): a generalisation of that idea to any data: k-means
  with k = levels sets *every* level's scale, ratios no cluster needs are pruned everywhere and an
  extreme ratio is added to a level whose cluster needs it. It is not the paper's procedure.
- `coverage_priors` (ours): choose (level, shape) pairs greedily to maximise grid recall@t and
  grid mean IoU of the training boxes under a prior budget, evaluating every candidate on the
  actual lattice of its level, so the stride is accounted for (a 512 x 15 band can only be hit
  vertically by a fine-stride level). A candidate may also be a shape on a *sub-grid* of its
  level: the same shape at nx x ny sub-cell offsets (`[w, h, dx, dy]` entries, e.g. dx, dy =
  +-0.25 for 2 x 2), i.e. a lattice of step / nx in x and step / ny in y at nx ny times the cost:
  the only way a box a few pixels across reaches IoU 0.5 wherever it sits, and the cheap way to
  give thin full-width bands fine rows (1 x 64 on the 1 x 1 level: 64 priors).

`optimize_priors` dispatches on the method and returns a `PriorsConfig`;
`ssd.priors.writer.write_priors_config` writes a YAML that is the base config plus the new
`priors:` section.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from ssd.config import PriorsConfig
from ssd.priors.fit import BoxSet, default_shift_amplitude, grid_stats, lattice_best_iou_xy, translate_inside
from ssd.priors.generator import Offset, PriorSet, Shape, shape_entry
from ssd.priors.kmeans import KMeansResult, iou_kmeans
from ssd.priors.writer import Entry, rounded_entry

log = logging.getLogger(__name__)

Method = Literal["chi", "kmeans", "coverage"]
Subgrids = Literal["auto"] | Sequence[tuple[int, int]]
Balance = Literal["class", "size"]
BALANCES: tuple[str, ...] = ("class", "size")
METHODS: tuple[str, ...] = ("chi", "kmeans", "coverage")
# Sub-grids (nx, ny) that coverage may put a shape on: nx x ny priors per cell at the offsets
# `subgrid_offsets(nx, ny)`, a lattice of step (step / nx, step / ny). "auto": on every level
# each power of two nx, ny whose lattice step is no finer than half the finest level's step and
# whose copies fit the per-level cap (`auto_subgrids`), refined in both directions on the finest
# level only (small-both-ways shapes belong there). On the 1 x 1 level of SSD512 that includes
# 1 x 64: one band shape every 8 px in y for 64 priors, where the stride-8 level pays 4096.
# Off by default: sub-grids raise grid recall, but copies at sub-cell offsets share one feature
# vector per cell and the head learns to tell them apart slowly, so on short schedules they can
# cost more mAP than the recall they add (the README's prior section measures both).
SUBGRIDS: Final[tuple[tuple[int, int], ...]] = ()
# Defaults of the coverage method (ssd-priors uses the same), chosen on held-out synthetic
# aluminum data (fitted on one set of images, scored on another): a recall-first objective,
# 16 jittered copies of every box with size noise, room for sub-grid copies on a level, and no
# shape that adds less than 0.1 % to the objective (smaller gains are a handful of sample
# points: fitting them does not carry over to new images).
IOU_WEIGHT = 0.2
MAX_SHAPES_PER_LEVEL = 64
JITTER_SCALE = 0.3
JITTER_COPIES = 16
SAMPLE_SIZE = 32000
MIN_GAIN = 1e-3


def auto_subgrids(step: float, min_step: float, max_copies: int) -> list[tuple[int, int]]:
    """The sub-grids "auto" offers on a level of stride `step`: (nx, ny) for nx, ny powers of
    two with step / n >= `min_step` and nx * ny <= `max_copies`, (1, 1) first."""
    if step <= 0 or min_step <= 0 or max_copies < 1:
        raise ValueError(
            "auto_subgrids needs step, min_step > 0 and max_copies >= 1, "
            f"got {step}, {min_step}, {max_copies}"
        )
    ns = [1]
    while step / (ns[-1] * 2) >= min_step:
        ns.append(ns[-1] * 2)
    return [(nx, ny) for ny in ns for nx in ns if nx * ny <= max_copies]


def subgrid_offsets(nx: int, ny: int) -> list[Offset]:
    """The nx * ny centre offsets (dx, dy), units of the step, that split every cell evenly:
    d_k = (k + 0.5) / n - 0.5 (n = 2: -0.25, 0.25; n = 1: 0), dy outer. The priors of one shape
    at these offsets on a level of step s and f x f cells are exactly the lattice of step
    (s / nx, s / ny) with (nx f) x (ny f) cells."""
    if nx < 1 or ny < 1:
        raise ValueError(f"a sub-grid needs nx, ny >= 1, got {nx}x{ny}")
    dxs = [(k + 0.5) / nx - 0.5 for k in range(nx)]
    dys = [(k + 0.5) / ny - 0.5 for k in range(ny)]
    return [(dx, dy) for dy in dys for dx in dxs]


def _clustering_dict(clustering: KMeansResult, centres: np.ndarray) -> dict[str, Any]:
    """The clustering's JSON summary with the centres in the order the method reads them."""
    return clustering.to_dict() | {"centroids": [[float(w), float(h)] for w, h in centres]}


@dataclass(frozen=True)
class ClusterNeed:
    """One cluster of the kmeans method: its centre (w, h), the scale it sets, its ratio w/h and
    the ratio it needs (the log-nearest candidate)."""

    w: float
    h: float
    scale: float
    ratio: float
    needs: float

    def to_dict(self) -> dict[str, float]:
        return {"w": self.w, "h": self.h, "scale": self.scale, "ratio": self.ratio, "needs": self.needs}


@dataclass(frozen=True)
class KMeansRecord:
    """What the kmeans method did (`kmeans_priors`): the clustering and its centres (scale
    order), what each cluster needs, the per-level min and max sizes, the ratios kept and pruned
    everywhere, and the extreme ratio added to a level (level -> w/h)."""

    clustering: KMeansResult
    centres: np.ndarray
    clusters: tuple[ClusterNeed, ...]
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    kept_ratios: tuple[float, ...]
    pruned_ratios: tuple[float, ...]
    extreme_ratios: dict[int, float]
    method: str = "kmeans"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "kmeans": _clustering_dict(self.clustering, self.centres),
            "clusters": [c.to_dict() for c in self.clusters],
            "min_sizes": list(self.min_sizes),
            "max_sizes": list(self.max_sizes),
            "kept_ratios": list(self.kept_ratios),
            "pruned_ratios": list(self.pruned_ratios),
            "extreme_ratios": {str(k): v for k, v in self.extreme_ratios.items()},
        }


CHI_CHOICES: Final[dict[str, str]] = {
    "centre_order": "width, ties by height",
    "min_size_of_centre": "width",
    "max_sizes": "max of level l = min of level l + 1 for the changed minimums; others unchanged",
    "last_level_ratio": "one box w/h = 15 from the last min_size by eq. 7",
}


@dataclass(frozen=True)
class ChiRecord:
    """What the chi method did (`chi_priors`): the clustering and its centres (width order), the
    resulting ratio-form sizes and ratios per level, the extra shape of the last level (level ->
    ratios) and the choices where the paper is silent (`CHI_CHOICES`)."""

    clustering: KMeansResult
    centres: np.ndarray
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    extra_shapes: dict[int, tuple[float, ...]]
    method: str = "chi"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "kmeans": _clustering_dict(self.clustering, self.centres),
            "min_sizes": list(self.min_sizes),
            "max_sizes": list(self.max_sizes),
            "aspect_ratios": [list(r) for r in self.aspect_ratios],
            "extra_shapes": {str(k): list(v) for k, v in self.extra_shapes.items()},
            "choices": dict(CHI_CHOICES),
        }


MethodRecord = ChiRecord | KMeansRecord | Mapping[str, Any]


@dataclass(frozen=True)
class OptimizeInfo:
    """What an optimisation did: the prior counts of the result and of the base layout, and
    `details`, the method's own record (`ChiRecord`, `KMeansRecord`, or the JSON-ready record of
    `coverage_priors`: budget, runs, chosen candidates)."""

    num_priors: int
    boxes_per_cell: int
    base_num_priors: int
    base_boxes_per_cell: int
    details: MethodRecord

    @property
    def method(self) -> str:
        return str(self.details_dict()["method"])

    def details_dict(self) -> dict[str, Any]:
        """The method's record, JSON-ready."""
        if isinstance(self.details, (ChiRecord, KMeansRecord)):
            return self.details.to_dict()
        return dict(self.details)

    def to_dict(self) -> dict[str, Any]:
        """The method's record with the prior counts (a count the method also reports is
        replaced in place)."""
        return {
            **self.details_dict(),
            "num_priors": self.num_priors,
            "boxes_per_cell": self.boxes_per_cell,
            "base_num_priors": self.base_num_priors,
            "base_boxes_per_cell": self.base_boxes_per_cell,
        }


@dataclass(frozen=True)
class OptimizeResult:
    """`priors`: the new prior config (shape form, other fields as in the base); `info`: what the
    method did (`OptimizeInfo`)."""

    priors: PriorsConfig
    info: OptimizeInfo

    @property
    def grid(self) -> PriorSet:
        return PriorSet.from_config(self.priors)


# --------------------------------------------------------------------------- kmeans (ours, after Chi et al.)


def _round_ratio(a: float) -> float:
    """An elongated ratio as Chi et al. state theirs: an integer (or the inverse of one)."""
    return float(max(1, round(a))) if a >= 1 else 1.0 / max(1, round(1.0 / a))


def kmeans_priors(
    wh_px: np.ndarray,
    feature_maps: Sequence[int],
    aspect_ratios: Sequence[Sequence[float]],
    *,
    restarts: int = 10,
    seed: int = 0,
) -> tuple[list[list[Shape]], KMeansRecord]:
    """Our generalisation of Chi et al.'s idea to any data: per level shapes in input pixels
    plus a record of what it did. Not the published procedure (that is `chi_priors`): here the clusters
    set every level's scale and decide which ratios every level keeps.

    1. IoU k-means (distance 1 - shape IoU, mean update, best of `restarts`) of the training
       boxes in input pixels with k = L, the number of levels (7 for SSD512).
    2. The clusters, sorted by scale s_c = sqrt(w_c h_c), give level l its min size s_l (the
       smallest cluster to the finest level). The max size is the next cluster's scale; the last
       level continues the geometric progression: s_L^2 / s_{L-1}. As in SSD each level keeps the
       two squares s_l and sqrt(s_l max_l).
    3. Aspect ratios are read as oriented w/h values: the base config's ratio r gives r and 1/r.
       Each cluster *needs* the candidate ratio nearest to its own w/h in log space, among
       {1} + the base ratios (both orientations) + its own ratio rounded to an integer (or the
       inverse of one). A base ratio (one orientation) that no cluster needs is pruned from every
       level. A cluster whose nearest candidate is its own rounded ratio (more elongated than any
       base ratio) gets that *extreme* ratio added to its level, in its orientation only (no
       flipped twin: the clusters say which orientation the data has).
    4. Shapes of a ratio q on level l: (s_l sqrt(q), s_l / sqrt(q)), as in SSD.

    `aspect_ratios` are the base config's per-level ratios (SSD512: [2], [2,3] x 4, [2], [2]).
    """
    num_levels = len(feature_maps)
    if len(aspect_ratios) != num_levels:
        raise ValueError(f"aspect_ratios has {len(aspect_ratios)} levels, feature_maps {num_levels}")
    km = iou_kmeans(wh_px, num_levels, restarts=restarts, seed=seed)
    cen = km.centroids  # sorted by area: scale order
    scales = np.sqrt(cen[:, 0] * cen[:, 1])
    order = np.argsort(scales, kind="stable")
    cen, scales = cen[order], scales[order]
    if num_levels > 1:
        max_sizes = [*scales[1:].tolist(), float(scales[-1] ** 2 / scales[-2])]
    else:
        max_sizes = [float(scales[0] * 1.2)]
    base = sorted({float(r) for level in aspect_ratios for r in level})
    standard = [1.0] + [q for r in base for q in (r, 1.0 / r)]
    needed: set[float] = set()
    extremes: dict[int, float] = {}
    cluster_info: list[ClusterNeed] = []
    for level, (w, h) in enumerate(cen):
        a = float(w / h)
        rounded = _round_ratio(a)
        cands = standard + ([rounded] if rounded not in standard else [])
        dist = [abs(math.log(a) - math.log(q)) for q in cands]
        pick = cands[int(np.argmin(dist))]
        if pick in standard:
            needed.add(pick)
        else:
            extremes[level] = pick
        cluster_info.append(ClusterNeed(float(w), float(h), float(scales[level]), a, pick))
    kept = sorted(q for q in needed if q != 1.0)
    pruned = sorted(q for q in standard if q != 1.0 and q not in needed)
    levels: list[list[Shape]] = []
    for level in range(num_levels):
        s = float(scales[level])
        big = math.sqrt(s * max_sizes[level])
        shapes: list[Shape] = [(s, s), (big, big)]
        for r in aspect_ratios[level]:
            for q in (float(r), 1.0 / float(r)):
                if q in needed:
                    shapes.append((s * math.sqrt(q), s / math.sqrt(q)))
        if level in extremes:
            q = extremes[level]
            shapes.append((s * math.sqrt(q), s / math.sqrt(q)))
        # identical scales of neighbouring clusters would repeat the square: keep shapes distinct
        uniq: list[Shape] = []
        for wh in shapes:
            if not any(abs(wh[0] - u[0]) < 1e-6 and abs(wh[1] - u[1]) < 1e-6 for u in uniq):
                uniq.append(wh)
        levels.append(uniq)
    record = KMeansRecord(
        clustering=km,
        centres=cen,
        clusters=tuple(cluster_info),
        min_sizes=tuple(float(s) for s in scales),
        max_sizes=tuple(float(s) for s in max_sizes),
        kept_ratios=tuple(kept),
        pruned_ratios=tuple(pruned),
        extreme_ratios=dict(extremes),
    )
    return levels, record


# --------------------------------------------------------------------------- chi (Chi et al., as published)

CHI_K: Final = 7
CHI_LAST_RATIO: Final = 15.0


def chi_priors(
    wh_px: np.ndarray,
    base: PriorsConfig,
    *,
    k: int = CHI_K,
    restarts: int = 10,
    seed: int = 0,
) -> tuple[list[list[Shape]], ChiRecord]:
    """Chi et al. section 3.2 as published: per level shapes in input pixels plus a record.

    The procedure of the paper, on the original ratio-form layout `base` (SSD512: min sizes
    35.84 ... 460.8, max sizes 76.8 ... 537.6, ratios [2], [2, 3] x 4, [2], [2]):

    1. IoU k-means (distance 1 - IoU of co-centred shapes, eq. 9; mean update; best of
       `restarts` seeded restarts, `ssd.priors.kmeans.iou_kmeans`) of the training boxes in
       network-input pixels (every image warped to the square input) with k = 7 ("SSD512 has 7
       feature layers, so k takes 7").
    2. Level 1 `min_size` = the width ("abscissa") of cluster centre 1; ratios 2 and 1/2 removed
       from level 1. Level 2 `min_size` = the width of cluster centre 2; ratios 3 and 1/3 removed
       from level 2.
    3. Last level `min_size` = the input size (512) and one box of aspect ratio 15 added, in one
       orientation (w / h = 15: the paper adds "an aspect ratio of 15" and counts one box for it).
    4. Every other setting as the original: the square min_size and the square
       sqrt(min_size max_size) per level, and for each kept ratio r both (min sqrt r, min / sqrt r)
       and its flip (eq. 7). On SSD512: 2/4/6/6/6/4/5 = 33 boxes per cell, 14,325 priors.

    Where the text is silent, our choices (also in the record's `choices`, `CHI_CHOICES`):

    - *Which centre is "1" and "2"*: centres are numbered by width (ties by height). The paper
      reads each level's size off the abscissa (the width) and says the "other five" centres all
      have width 512, so its centres 1 and 2 are the two narrowest; numbering by width also keeps
      level 1's min size below level 2's, as SSD's scales ascend. Numbering by area (small in both
      directions) picks the same two centres on the real Tianchi boxes, but not on every data
      set: on NEU-DET it would give level 1 a 42.7 px and level 2 a 33.0 px min size.
    - *What the neighbours' `max_size` become*: the paper's own rule, "the maximum value is the
      minimum value of the next layer", is applied to the new minimums: level 1 max = level 2's
      new min, the second-to-last level's max = the new last min (the input size). Level 2's max
      (level 3's min) and the last level's max (537.6 on SSD512) are unchanged, as they are not
      touched by the text.
    - *The ratio-15 box* follows eq. 7 with the last level's min_size: (512 sqrt 15, 512 / sqrt 15)
      = 1982.9 x 132.2 px on SSD512 (it reaches past the input, like the original last squares).
    - *k*: the paper ties k to the number of levels; `k` may be changed, but levels 1 and 2 take
      the first two centres whatever k is.

    `base` must be in ratio form (`min_sizes`, `max_sizes`, `aspect_ratios`) with at least three
    levels. Raises ValueError otherwise, or when there are fewer than `k` distinct box shapes.
    """
    if base.shapes is not None:
        raise ValueError(
            "the chi method needs a ratio-form base (min_sizes, max_sizes, aspect_ratios), not priors.shapes"
        )
    num_levels = len(base.feature_maps)
    if num_levels < 3:
        raise ValueError(f"the chi method needs at least 3 levels, the base has {num_levels}")
    if not (len(base.min_sizes) == len(base.max_sizes) == len(base.aspect_ratios) == num_levels):
        raise ValueError(
            f"the chi method needs min_sizes, max_sizes and aspect_ratios for each of the {num_levels} levels"
        )
    km = iou_kmeans(wh_px, k, restarts=restarts, seed=seed)
    centres = km.centroids[np.lexsort((km.centroids[:, 1], km.centroids[:, 0]))]  # by width, then height
    min_sizes = [float(v) for v in base.min_sizes]
    max_sizes = [float(v) for v in base.max_sizes]
    ratios = [[float(r) for r in level] for level in base.aspect_ratios]
    min_sizes[0] = float(centres[0, 0])
    min_sizes[1] = float(centres[1, 0])
    min_sizes[-1] = float(base.image_size)
    max_sizes[0] = min_sizes[1]  # "the maximum value is the minimum value of the next layer"
    max_sizes[-2] = min_sizes[-1]
    ratios[0] = [r for r in ratios[0] if r != 2.0]
    ratios[1] = [r for r in ratios[1] if r != 3.0]
    levels: list[list[Shape]] = []
    for level in range(num_levels):
        s, m = min_sizes[level], max_sizes[level]
        shapes: list[Shape] = [(s, s), (math.sqrt(s * m), math.sqrt(s * m))]
        for r in ratios[level]:
            q = math.sqrt(r)
            shapes += [(s * q, s / q), (s / q, s * q)]
        levels.append(shapes)
    q = math.sqrt(CHI_LAST_RATIO)
    levels[-1].append((min_sizes[-1] * q, min_sizes[-1] / q))
    record = ChiRecord(
        clustering=km,
        centres=centres,
        min_sizes=tuple(min_sizes),
        max_sizes=tuple(max_sizes),
        aspect_ratios=tuple(tuple(r) for r in ratios),
        extra_shapes={num_levels - 1: (CHI_LAST_RATIO,)},
    )
    return levels, record


# --------------------------------------------------------------------------- coverage (ours)


def _candidate_base_shapes(
    wh: np.ndarray, num_levels: int, extra: Sequence[Shape], *, restarts: int, seed: int
) -> np.ndarray:
    """Shapes worth trying anywhere: IoU k-means clusters of all boxes (k = L, 2L and 4L),
    clusters within L size ranges (quantiles of sqrt area, up to 3 each) and the `extra` (base)
    shapes, deduplicated at 0.01 px."""
    out: list[np.ndarray] = [np.asarray(extra, dtype=np.float64).reshape(-1, 2)]
    distinct = np.unique(wh, axis=0).shape[0]
    for k in sorted({num_levels, 2 * num_levels, 4 * num_levels}):
        if k <= distinct:
            out.append(iou_kmeans(wh, k, restarts=restarts, seed=seed).centroids)
    scale = np.sqrt(wh[:, 0] * wh[:, 1])
    edges = np.quantile(scale, np.linspace(0, 1, num_levels + 1))
    for b in range(num_levels):
        sel = (scale >= edges[b]) & ((scale < edges[b + 1]) if b < num_levels - 1 else True)
        sub = wh[sel]
        if sub.shape[0] == 0:
            continue
        k = min(3, np.unique(sub, axis=0).shape[0])
        out.append(iou_kmeans(sub, k, restarts=restarts, seed=seed + 1 + b).centroids)
    shapes = np.concatenate(out)
    return np.unique(np.round(shapes, 2), axis=0)


def _level_variants(shapes: np.ndarray, step: float, image_size: int) -> np.ndarray:
    """Stride-aware variants of each shape for a level of stride `step`: the shape itself, grown
    by half a stride in w, in h and in both (a box may sit up to half a stride off the nearest
    centre, and a slightly larger prior keeps IoU >= t over more of those offsets), and grown
    by 25% in w or in h."""
    w, h = shapes[:, 0:1], shapes[:, 1:2]
    half = step / 2.0
    var = np.concatenate(
        [
            np.concatenate([w, h], 1),
            np.concatenate([w, h + half], 1),
            np.concatenate([w + half, h], 1),
            np.concatenate([w + half, h + half], 1),
            np.concatenate([w * 1.25, h], 1),
            np.concatenate([w, h * 1.25], 1),
        ]
    )
    var = np.minimum(var, 2.0 * image_size)
    return np.unique(np.round(var, 2), axis=0)


def _jittered_index(
    boxes_px: np.ndarray,
    copies: int,
    amplitude: float,
    image_size: int,
    rng: np.random.Generator,
    scale_sigma: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The boxes [N, 4] (xyxy input pixels) plus `copies` - 1 copies shifted by a uniform offset
    in [-amplitude, amplitude] in x and y and, with `scale_sigma` > 0, with w and h each scaled
    by exp(N(0, scale_sigma^2)) about the centre (`translate_inside`: slid back inside the
    image; degenerate ones dropped), and [M] the index of the box every point is a copy of.

    Where a box falls relative to the cell centres of the fine levels is chance; evaluating a
    few phases per box estimates the *expected* grid IoU of a shape instead of fitting the
    offsets of the particular training boxes. The size noise does the same for the shapes (a
    kernel estimate of the shape distribution): priors fitted to exactly the training shapes
    generalise worse, most of all for the few, varied small boxes."""
    out, source = [boxes_px], [np.arange(boxes_px.shape[0])]
    half = 0.5 * (boxes_px[:, 2:] - boxes_px[:, :2])
    for _ in range(copies - 1):
        shift = rng.uniform(-amplitude, amplitude, (boxes_px.shape[0], 2))
        scale = np.exp(rng.normal(0.0, scale_sigma, (boxes_px.shape[0], 2))) if scale_sigma > 0 else 1.0
        moved = translate_inside(boxes_px, shift, image_size, half * scale)
        ok = (moved[:, 2] - moved[:, 0] > 0.5) & (moved[:, 3] - moved[:, 1] > 0.5)
        out.append(moved[ok])
        source.append(np.flatnonzero(ok))
    return np.concatenate(out), np.concatenate(source)


@dataclass
class _Candidates:
    level: np.ndarray  # [C]
    shape: np.ndarray  # [C, 2] input pixels
    iou: np.ndarray  # [C, N] float32: best IoU of each sample box over the candidate's priors
    grid: np.ndarray | None = None  # [C, 2] sub-grid (nx, ny); None = all (1, 1)
    checker: np.ndarray | None = None  # [C] bool: on the checkerboard of its sub-grid; None = none

    def __post_init__(self) -> None:
        if self.grid is None:
            self.grid = np.ones((self.level.shape[0], 2), np.int64)
        if self.checker is None:
            self.checker = np.zeros(self.level.shape[0], bool)

    @property
    def count(self) -> np.ndarray:
        """[C] shapes (priors per cell) each candidate adds to its level: nx * ny, twice that
        on a checkerboard."""
        assert self.grid is not None and self.checker is not None
        out: np.ndarray = self.grid[:, 0] * self.grid[:, 1] * np.where(self.checker, 2, 1)
        return out

    def entries(self, c: int) -> list[Entry]:
        """The shape-form entries of candidate `c`: its shape at each offset of its sub-grid
        (`checker_offsets` on a checkerboard)."""
        assert self.grid is not None and self.checker is not None
        w, h = (float(v) for v in self.shape[c])
        nx, ny = (int(v) for v in self.grid[c])
        offsets = checker_offsets(nx, ny) if self.checker[c] else subgrid_offsets(nx, ny)
        return [shape_entry((w, h), off) for off in offsets]


def _subgrid_iou(
    boxes_px: np.ndarray, shapes: np.ndarray, f: int, step: float, nx: int, ny: int
) -> np.ndarray:
    """[S, N] float32 best IoU of each box over the priors of each shape placed at every offset
    of the (nx, ny) sub-grid of a level (f x f cells of `step` pixels): exactly the lattice of
    step (step / nx, step / ny) with (nx f) x (ny f) points (see `subgrid_offsets`)."""
    iou = lattice_best_iou_xy(boxes_px, shapes, (nx * f, step / nx), (ny * f, step / ny))
    out: np.ndarray = iou.T.astype(np.float32)
    return out


def _build_candidates(
    boxes_px: np.ndarray,
    shapes: np.ndarray,
    feature_maps: Sequence[int],
    steps: Sequence[float],
    image_size: int,
    threshold: float,
    iou_weight: float,
    chunk: int = 256,
    subgrids: Subgrids = (),
    subgrid_max_ratio: float = 2.0,
    max_copies: int = MAX_SHAPES_PER_LEVEL,
    checkerboards: bool = False,
) -> _Candidates:
    """Every (level, shape variant) as a candidate, plus each variant on the `subgrids` of its
    level ("auto": `auto_subgrids` with half the finest step and `max_copies`; above the finest
    level refined in one direction only, where a two-way refinement repeats, at more copies per
    cell, a lattice a finer level offers, and only for shapes whose long side is at least half
    the level's step) where refining an
    axis n-fold starts from a lattice step (2 step / n) longer than the side / `subgrid_max_ratio`
    (a longer side already reaches IoU 0.5 from the coarser lattice: no need to pay for more).
    Candidates that no sample box reaches at the threshold and that add next to no IoU are
    dropped; every level keeps at least its best single-shape candidate."""
    levels, cand_shapes, rows, grids, checkers = [], [], [], [], []
    fixed = [] if subgrids == "auto" else [(int(nx), int(ny)) for nx, ny in subgrids if (nx, ny) != (1, 1)]
    min_step = float(min(steps)) / 2.0
    for level, (f, step) in enumerate(zip(feature_maps, steps)):
        if subgrids == "auto":
            patterns = auto_subgrids(float(step), min_step, max_copies)
            if level > 0:  # refined both ways = small both ways: that lattice belongs on a finer level
                patterns = [(nx, ny) for nx, ny in patterns if nx == 1 or ny == 1]
        else:
            patterns = [(1, 1), *fixed]
        var = _level_variants(shapes, float(step), image_size)
        kept_iou, kept_shape, kept_grid, kept_checker = [], [], [], []
        best_score, best_row, best_shape = -1.0, None, None
        for nx, ny, checker in _with_checkerboards(patterns, checkerboards, max_copies):
            ok = np.ones(var.shape[0], bool)
            if nx > 1:
                ok &= var[:, 0] < subgrid_max_ratio * float(step) * 2.0 / nx
            if ny > 1:
                ok &= var[:, 1] < subgrid_max_ratio * float(step) * 2.0 / ny
            if checker:  # both axes refined by about sqrt(2) beyond the sub-grid
                ok &= var[:, 0] < subgrid_max_ratio * float(step) * math.sqrt(2.0) / nx
                ok &= var[:, 1] < subgrid_max_ratio * float(step) * math.sqrt(2.0) / ny
            if subgrids == "auto" and level > 0 and (nx * ny > 1 or checker):
                # above the finest level only shapes at the level's scale along their long side
                # (bands, streaks): a small blob on many rows of a coarse map is the finest
                # level's job, from features of its resolution
                ok &= var.max(axis=1) >= float(step) / 2.0
            eligible = var[ok]
            for start in range(0, eligible.shape[0], chunk):
                part = eligible[start : start + chunk]
                if checker:
                    iou = _checker_iou(boxes_px, part, int(f), float(step), nx, ny)
                else:
                    iou = _subgrid_iou(boxes_px, part, int(f), float(step), nx, ny)  # [c, N]
                # drop what cannot matter: no box reaches the threshold and the IoU gain is negligible
                useful = ((iou >= threshold).any(axis=1)) | (iou_weight * iou.mean(axis=1) > 1e-3)
                kept_iou.append(iou[useful])
                kept_shape.append(part[useful])
                kept_grid.append(np.tile(np.array([[nx, ny]], np.int64), (int(useful.sum()), 1)))
                kept_checker.append(np.full(int(useful.sum()), checker))
                if (nx, ny) == (1, 1) and not checker:
                    score = (iou >= threshold).mean(axis=1) + iou_weight * iou.mean(axis=1)
                    j = int(np.argmax(score))
                    if score[j] > best_score:
                        best_score, best_row, best_shape = float(score[j]), iou[j : j + 1], part[j : j + 1]
        if not any(g.shape[0] and ((g == 1).all(axis=1) & ~k).any() for g, k in zip(kept_grid, kept_checker)):
            # every level needs a head, hence a single-shape candidate: keep its best one
            assert best_row is not None and best_shape is not None
            kept_iou.append(best_row)
            kept_shape.append(best_shape)
            kept_grid.append(np.ones((1, 2), np.int64))
            kept_checker.append(np.zeros(1, bool))
        block = np.concatenate(kept_iou)
        rows.append(block)
        cand_shapes.append(np.concatenate(kept_shape))
        grids.append(np.concatenate(kept_grid))
        checkers.append(np.concatenate(kept_checker))
        levels.append(np.full(block.shape[0], level, np.int64))
    return _Candidates(
        np.concatenate(levels),
        np.concatenate(cand_shapes),
        np.concatenate(rows),
        np.concatenate(grids),
        np.concatenate(checkers),
    )


def _gain_rows(
    m: np.ndarray,
    cur: np.ndarray,
    hit: np.ndarray,
    threshold: float,
    iou_weight: float,
    wts: np.ndarray | None,
) -> np.ndarray:
    """[b] gain in F = (weighted) recall@threshold + iou_weight x mean IoU of adding each row of
    `m` [b, N] (best IoU of every sample point over a candidate's priors) to a selection whose
    points have best IoU `cur` [N] and are hit (`hit` [N], IoU >= threshold) already; `wts` [N]
    weights of mean 1 (None: all 1)."""
    n = m.shape[1]
    new = (m >= threshold) & ~hit[None, :]
    better = np.maximum(m - cur[None, :], 0.0)
    if wts is None:
        out: np.ndarray = (new.sum(axis=1) + iou_weight * better.sum(axis=1, dtype=np.float64)) / n
        return out
    new_w, better_w = (new @ wts).astype(np.float64), (better @ wts).astype(np.float64)
    weighted: np.ndarray = (new_w + iou_weight * better_w) / n
    return weighted


def _objective(cur: np.ndarray, threshold: float, iou_weight: float, wts: np.ndarray | None) -> float:
    """F = (weighted) recall@threshold + iou_weight x mean IoU of sample points whose best IoU
    over a selection is `cur` [N]; `wts` [N] weights of mean 1 (None: all 1)."""
    hit = cur >= threshold
    if wts is None:
        return (int(hit.sum()) + iou_weight * float(cur.astype(np.float64).sum())) / cur.size
    return (float(hit @ wts) + iou_weight * float(cur @ wts)) / cur.size


def _unit_weights(weights: np.ndarray | None) -> np.ndarray | None:
    """Point weights scaled to mean 1 (float32), or None for all alike."""
    if weights is None:
        return None
    out: np.ndarray = (np.asarray(weights, np.float64) / np.mean(weights)).astype(np.float32)
    return out


def _standalone_gains(
    cands: _Candidates, threshold: float, iou_weight: float, wts: np.ndarray | None
) -> np.ndarray:
    """[C] gain of every candidate added to an empty selection (`_gain_rows` from nothing): an
    upper bound of its gain in any selection, F being submodular."""
    n = cands.iou.shape[1]
    if wts is None:
        alone: np.ndarray = (
            (cands.iou >= threshold).sum(axis=1) + iou_weight * cands.iou.sum(axis=1, dtype=np.float64)
        ) / n
        return alone
    weighted: np.ndarray = (((cands.iou >= threshold) @ wts) + iou_weight * (cands.iou @ wts)).astype(
        np.float64
    ) / n
    return weighted


def _trace_entry(cands: _Candidates, c: int, gain: float, priors: int) -> dict[str, Any]:
    """What a selection records of candidate `c`: level, shape, sub-grid, checkerboard, the gain
    in the objective it was chosen for, and its priors."""
    assert cands.grid is not None and cands.checker is not None
    return {
        "level": int(cands.level[c]),
        "shape": [float(x) for x in cands.shape[c]],
        "subgrid": [int(v) for v in cands.grid[c]],
        "checkerboard": bool(cands.checker[c]),
        "gain": gain,
        "priors": priors,
    }


def _greedy(
    cands: _Candidates,
    level_cost: np.ndarray,
    budget: int,
    alpha: float,
    threshold: float,
    iou_weight: float,
    max_per_level: np.ndarray,
    min_gain: float,
    batch: int = 32,
    allowed: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    standalone: np.ndarray | None = None,
) -> tuple[list[int], float, list[dict[str, Any]]]:
    """Lazy greedy (Minoux) maximisation of F = recall@t + iou_weight * mean IoU over the sample
    points, choosing at each step the feasible candidate with the largest gain / cost^alpha.

    F is monotone submodular (a coverage term plus a facility-location term), so gains only
    shrink and a stale gain is an upper bound: candidates are re-evaluated in batches in order of
    their bound until the best fresh score beats every remaining bound. A candidate on a sub-grid
    (nx, ny) costs nx * ny shapes of its level. Feasible: the priors of the chosen shapes plus
    one shape for every level still empty fit in `budget`, and at most `max_per_level[l]` shapes
    on level l; `allowed` [C] (default all) masks candidates out. `weights` [N] (default all
    equal) weighs the sample points in both terms of F (normalised to mean 1). `standalone`:
    `_standalone_gains` of these candidates and weights, when the caller has it already. Levels
    left empty get their best single shape at the end."""
    c_count, n = cands.iou.shape
    num_levels = level_cost.shape[0]
    count = cands.count
    cost = (level_cost[cands.level] * count).astype(np.float64)
    weight = cost**alpha
    cur = np.zeros(n, np.float32)
    hit = np.zeros(n, bool)

    wts = _unit_weights(weights)

    def gains(idx: np.ndarray) -> np.ndarray:
        return _gain_rows(cands.iou[idx], cur, hit, threshold, iou_weight, wts)

    if standalone is None:
        standalone = _standalone_gains(cands, threshold, iou_weight, wts)
    upper = standalone.copy()
    taken = np.zeros(c_count, bool) if allowed is None else ~np.asarray(allowed, bool)
    per_level = np.zeros(num_levels, np.int64)
    filled = np.zeros(num_levels, bool)
    spent = 0
    chosen: list[int] = []
    trace: list[dict[str, Any]] = []

    def select(c: int, g: float) -> None:
        nonlocal spent
        chosen.append(c)
        taken[c] = True
        lvl = int(cands.level[c])
        per_level[lvl] += int(count[c])
        filled[lvl] = True
        spent += int(cost[c])
        np.maximum(cur, cands.iou[c], out=cur)
        hit[:] |= cands.iou[c] >= threshold
        trace.append(_trace_entry(cands, c, g, int(cost[c])))

    while True:
        slack = budget - spent - int(level_cost[~filled].sum())
        own = np.where(filled[cands.level], 0, level_cost[cands.level])  # already reserved
        room = per_level[cands.level] + count <= max_per_level[cands.level]
        feasible = (~taken) & (cost - own <= slack) & room
        prio = np.where(feasible & (upper > min_gain), upper / weight, -np.inf)
        order = np.argsort(-prio, kind="stable")
        order = order[np.isfinite(prio[order])]
        best_c, best_val, best_gain, pos = -1, -np.inf, 0.0, 0
        while pos < order.size:
            idx = order[pos : pos + batch]
            pos += idx.size
            g = gains(idx)
            upper[idx] = g
            val = np.where(g > min_gain, g / weight[idx], -np.inf)
            j = int(np.argmax(val))
            if val[j] > best_val:
                best_c, best_val, best_gain = int(idx[j]), float(val[j]), float(g[j])
            if pos >= order.size or best_val >= prio[order[pos]]:
                break
        if best_c < 0:
            break
        select(best_c, best_gain)
    # every level needs a head, hence at least one shape: the best one for the level
    for lvl in np.flatnonzero(~filled):
        idx = np.flatnonzero((cands.level == lvl) & (count == 1))
        if idx.size == 0:
            raise ValueError(f"no candidate shape for level {lvl}")
        g = gains(idx)
        key = np.lexsort((-standalone[idx], -g))
        select(int(idx[key[0]]), float(g[key[0]]))
    return chosen, _objective(cur, threshold, iou_weight, wts), trace


def _local_search(
    cands: _Candidates,
    chosen: Sequence[int],
    level_cost: np.ndarray,
    budget: int,
    max_per_level: np.ndarray,
    threshold: float,
    iou_weight: float,
    min_gain: float,
    weights: np.ndarray | None = None,
    standalone: np.ndarray | None = None,
    batch: int = 64,
) -> tuple[list[int], float, list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """Steepest-ascent local search from the selection `chosen` on the objective of `_greedy`
    (same budget, caps `max_per_level`, weights): a move adds a feasible candidate or swaps a
    chosen one for another (the swap keeps every level non-empty), and the best move is made
    while it raises F by more than `min_gain`, the smallest gain the greedy accepts. Returns
    the selection, its F and the moves made ("add" or "swap"; "in" and "out" as in the greedy's
    trace, "gain" the candidate's marginal gain in the selection it joins or leaves, and the
    "improvement" in F), and the "in" entry of every candidate a move brought in.

    Greedy by gain / cost commits to its early choices: a shape taken first for the points no
    other covered yet may, once later shapes cover most of them, be worth less than a shape
    it crowded out. Every move raises F by more than `min_gain`, so the search ends. Bounds
    keep it cheap: a swap of c for c' gains at most gain(c' | S) (F is monotone) and at most
    gain(c' | {}) - loss(c) (F is submodular), so only candidates whose bound beats the best
    move so far are evaluated. `standalone` as in `_greedy`."""
    n = int(cands.iou.shape[1])
    wts = _unit_weights(weights)
    count = cands.count
    level = cands.level
    cost = level_cost[level] * count
    c_count = level.size

    def gains(idx: np.ndarray, cur: np.ndarray, hit: np.ndarray) -> np.ndarray:
        out = np.empty(idx.size, np.float64)
        for s in range(0, idx.size, 256):
            part = idx[s : s + 256]
            out[s : s + part.size] = _gain_rows(cands.iou[part], cur, hit, threshold, iou_weight, wts)
        return out

    def value(cur: np.ndarray) -> float:
        return _objective(cur, threshold, iou_weight, wts)

    if standalone is None:
        standalone = _standalone_gains(cands, threshold, iou_weight, wts)
    sel = [int(c) for c in chosen]
    moves: list[dict[str, Any]] = []
    entries: dict[int, dict[str, Any]] = {}
    while True:
        rows = cands.iou[sel]  # [k, N]
        arg = rows.argmax(axis=0)
        best = rows[arg, np.arange(n)]
        rest = rows.copy()
        rest[arg, np.arange(n)] = 0.0
        second = rest.max(axis=0)
        f_now = value(best)
        taken = np.zeros(c_count, bool)
        taken[sel] = True
        spent = int(cost[sel].sum())
        per_level = np.bincount(level[sel], weights=count[sel], minlength=level_cost.size).astype(np.int64)
        shapes_on = np.bincount(level[sel], minlength=level_cost.size)
        free = np.flatnonzero(~taken)
        g_now = np.full(c_count, -np.inf)
        g_now[free] = gains(free, best, best >= threshold)
        pool = np.flatnonzero(g_now > min_gain)
        if pool.size == 0:
            break
        cap = max_per_level[level[pool]]
        fits = (spent + cost[pool] <= budget) & (per_level[level[pool]] + count[pool] <= cap)
        if fits.any():
            j = int(pool[fits][np.argmax(g_now[pool[fits]])])
            sel.append(j)
            gain = float(g_now[j])
            entries[j] = _trace_entry(cands, j, gain, int(cost[j]))
            moves.append({"move": "add", "in": entries[j], "improvement": gain})
            continue
        best_gain, best_move = float(min_gain), None
        removed = [np.where(arg == i, second, best) for i in range(len(sel))]
        losses = np.array([f_now - value(cur) for cur in removed])
        for i in np.argsort(losses, kind="stable"):
            c = sel[i]
            same = level[pool] == level[c]
            room = per_level[level[pool]] - np.where(same, count[c], 0) + count[pool] <= cap
            ok = (spent - cost[c] + cost[pool] <= budget) & room & (same | (shapes_on[level[c]] > 1))
            bound = np.minimum(g_now[pool], standalone[pool] - losses[i])
            ok &= bound > best_gain
            order = np.argsort(-bound[ok], kind="stable")
            idx_all, bound_all = pool[ok][order], bound[ok][order]
            cur = removed[i]
            for s in range(0, idx_all.size, batch):
                if bound_all[s] <= best_gain:
                    break
                idx = idx_all[s : s + batch]
                imp = gains(idx, cur, cur >= threshold) - losses[i]
                j = int(np.argmax(imp))
                if imp[j] > best_gain:
                    best_gain, best_move = float(imp[j]), (int(i), int(idx[j]))
        if best_move is None:
            break
        i, j = best_move
        entries[j] = _trace_entry(cands, j, best_gain + float(losses[i]), int(cost[j]))
        moves.append(
            {
                "move": "swap",
                "out": _trace_entry(cands, sel[i], float(losses[i]), int(cost[sel[i]])),
                "in": entries[j],
                "improvement": best_gain,
            }
        )
        sel[i] = j
    return sel, value(cands.iou[sel].max(axis=0)), moves, entries


def coverage_priors(
    boxes: BoxSet,
    feature_maps: Sequence[int],
    steps: Sequence[float],
    budget: int,
    *,
    base_shapes: Sequence[Shape] = (),
    iou_threshold: float = 0.5,
    seed: int = 0,
    sample_size: int = SAMPLE_SIZE,
    iou_weight: float = IOU_WEIGHT,
    restarts: int = 5,
    max_shapes_per_level: int = MAX_SHAPES_PER_LEVEL,
    min_gain: float = MIN_GAIN,
    alphas: Sequence[float] = (0.0, 0.5, 1.0),
    jitter: int = JITTER_COPIES,
    jitter_px: float | None = None,
    jitter_scale: float = JITTER_SCALE,
    subgrids: Subgrids = SUBGRIDS,
    subgrid_max_ratio: float = 2.0,
    checkerboards: bool = False,
    balance: Balance | None = None,
    balance_power: float = 1.0,
    local_search: bool = False,
) -> tuple[list[list[Entry]], dict[str, Any]]:
    """Coverage-optimised priors (ours): per level shape-form entries (input pixels: (w, h), or
    (w, h, dx, dy) for a shape at a sub-cell offset) plus a description.

    1. A seeded sample of at most `sample_size / jitter` training boxes (positioned, input space),
       each also in `jitter - 1` copies shifted by up to `jitter_px` (default half the second
       level's stride) in x and y and with w, h scaled by exp(N(0, `jitter_scale`^2)): the
       sample points. Where a box falls relative to the fine cells is chance, so the score
       estimates a shape's expected grid IoU; the size noise keeps the shapes from fitting the
       particular training boxes (it narrows the train/val gap of the few, varied small boxes).
    2. Candidate shapes: IoU k-means clusters (k = L, 2L, 4L), clusters per size range (L
       quantile bins of sqrt area, 3 each) and the `base_shapes`; on every level each also in
       stride-aware variants (grown by half the level's stride in w, h or both; by 25% in w or h).
       Each variant also on the sub-grids (nx, ny) of the level (nx x ny copies at the offsets
       of `subgrid_offsets`, e.g. 2 x 2 at dx, dy = +-0.25: a lattice of half the step; 1 x 64
       on a 1 x 1 level: 64 rows) where refining helps a side of that length (see
       `_build_candidates`); `subgrids="auto"` offers every power-of-two sub-grid down to half
       the finest stride within `max_shapes_per_level` copies, a list offers those, () (the
       default, see `SUBGRIDS`) none.
    3. For each candidate (level, shape, sub-grid) the exact best grid IoU of every sample point
       against its priors (`lattice_best_iou_xy`: the stride and the offsets are in the numbers).
    4. Lazy greedy selection under the budget (each shape on level l costs f_l^2 priors, a
       sub-grid candidate nx ny f_l^2; every level keeps at least one shape; at most
       `max_shapes_per_level` per level, sub-grid copies included) maximising
       F = recall@t + `iou_weight` x mean IoU over the sample points, by marginal gain /
       cost^alpha, for each alpha in `alphas` (gain-first to cheap-first) and each cap on the
       number of shapes of the costliest level (partial enumeration of the knapsack split);
       the run with the highest F (then fewest priors) wins. With `balance` ("class" or "size")
       the sample points of a box weigh `balance_weights(sample, balance, balance_power)` in F,
       so rare groups count for more than their share of the training boxes.
    5. With `local_search`, the winning selection is improved by adding and swapping candidates
       (`_local_search`) while a move raises F by more than `min_gain`.

    `info` holds the budget, the runs (alpha, cap, F, priors), the chosen (level, shape) pairs
    with their marginal gains, and recall / mean IoU over the sample points.
    """
    num_levels = len(feature_maps)
    level_cost = np.array([int(f) ** 2 for f in feature_maps], np.int64)
    minimum = int(level_cost.sum())
    if budget < minimum:
        raise ValueError(
            f"max_priors={budget} is below the {minimum} priors of one shape per level "
            f"(feature maps {list(feature_maps)})"
        )
    if boxes.num_boxes == 0:
        raise ValueError("no ground-truth boxes to fit priors to")
    rng = np.random.default_rng(seed)
    amplitude = default_shift_amplitude(steps) if jitter_px is None else float(jitter_px)
    sample, points, _, weights = _sample_points(
        boxes, rng, sample_size, jitter, amplitude, jitter_scale, balance, balance_power
    )
    wh = sample.wh_px
    shapes = _candidate_base_shapes(wh, num_levels, base_shapes, restarts=restarts, seed=seed)
    cands = _build_candidates(
        points,
        shapes,
        feature_maps,
        steps,
        boxes.image_size,
        iou_threshold,
        iou_weight,
        subgrids=subgrids,
        subgrid_max_ratio=subgrid_max_ratio,
        max_copies=max_shapes_per_level,
        checkerboards=checkerboards and bool(subgrids),
    )
    log.info(
        "coverage: %d sample boxes, %d candidate (level, shape) pairs", sample.num_boxes, cands.level.size
    )
    # the gain of every candidate alone: the greedy's first bounds in every run, the search's too
    standalone = _standalone_gains(cands, iou_threshold, iou_weight, _unit_weights(weights))
    best: tuple[float, int, float, list[int], list[dict[str, Any]]] | None = None
    runs = []
    # Partial enumeration of the costliest level: greedy by gain / cost^alpha is blind to how a
    # knapsack is best split, so the number of shapes on the finest level is also fixed in turn.
    finest = int(np.argmax(level_cost))
    most_fine = min(max_shapes_per_level, 1 + (budget - minimum) // int(level_cost[finest]))
    # Sub-grid candidates are strong but costly: greedy by ratio can spend the budget on them
    # too early, so every run is also made without them and the better objective wins (adding
    # sub-grids to the candidates never makes the result worse than leaving them out).
    masks = [None] + ([cands.count == 1] if bool((cands.count > 1).any()) else [])
    for allowed in masks:
        for alpha in alphas:
            for cap0 in range(1, most_fine + 1):
                caps = np.full(num_levels, max_shapes_per_level, np.int64)
                caps[finest] = cap0
                chosen, score, trace = _greedy(
                    cands,
                    level_cost,
                    budget,
                    float(alpha),
                    iou_threshold,
                    iou_weight,
                    caps,
                    min_gain,
                    allowed=allowed,
                    weights=weights,
                    standalone=standalone,
                )
                priors = int((level_cost[cands.level[chosen]] * cands.count[chosen]).sum())
                runs.append(
                    {
                        "alpha": float(alpha),
                        "finest_level_cap": cap0,
                        "subgrids": allowed is None,
                        "objective": score,
                        "num_priors": priors,
                    }
                )
                if best is None or (score, -priors) > (best[0], -best[1]):
                    best = (score, priors, float(alpha), chosen, trace)
    assert best is not None
    score, priors, alpha, chosen, trace = best
    moves: list[dict[str, Any]] | None = None
    if local_search:
        caps = np.full(num_levels, max_shapes_per_level, np.int64)
        found = dict(zip(chosen, trace))
        chosen, score, moves, entries = _local_search(
            cands, chosen, level_cost, budget, caps, iou_threshold, iou_weight, min_gain, weights, standalone
        )
        found.update(entries)
        trace = [found[c] for c in chosen]
        priors = int((level_cost[cands.level[chosen]] * cands.count[chosen]).sum())
        log.info("coverage: local search made %d moves, objective %.4f -> %.4f", len(moves), best[0], score)
    levels: list[list[Entry]] = [[] for _ in range(num_levels)]
    for c in chosen:
        levels[int(cands.level[c])].extend(cands.entries(c))
    levels = [sorted(level, key=lambda e: (e[0] * e[1], e[0], *e[2:][::-1])) for level in levels]
    sel = np.array(chosen)
    best_iou = cands.iou[sel].max(axis=0)
    info = {
        "method": "coverage",
        "budget": int(budget),
        "num_priors": priors,
        "sample_boxes": sample.num_boxes,
        "candidate_shapes": int(shapes.shape[0]),
        "candidates": int(cands.level.size),
        "subgrid_candidates": int((cands.count > 1).sum()),
        "subgrids": "auto" if subgrids == "auto" else [list(g) for g in subgrids],
        "iou_weight": iou_weight,
        **({} if balance is None else {"balance": balance, "balance_power": float(balance_power)}),
        "alpha": alpha,
        "runs": runs,
        "objective": score,
        **({} if moves is None else {"local_search": moves}),
        "sample_points": int(points.shape[0]),
        "sample_recall": float((best_iou >= iou_threshold).mean()),
        "sample_mean_iou_grid": float(best_iou.mean()),
        "chosen": trace,
    }
    return levels, info


# --------------------------------------------------------------------------- front door


def _result(
    base: PriorsConfig, levels: Sequence[Sequence[Sequence[float]]], info: MethodRecord
) -> OptimizeResult:
    """The shape-form config of `levels` (rounded to 0.01 px) on `base`'s layout, with the
    prior counts of both beside the method's record `info`."""
    shapes = tuple(tuple(rounded_entry(e) for e in level) for level in levels)
    priors = dataclasses.replace(base, shapes=shapes)
    grid, base_grid = PriorSet.from_config(priors), PriorSet.from_config(base)
    counts = (grid.num_priors, grid.boxes_per_cell, base_grid.num_priors, base_grid.boxes_per_cell)
    return OptimizeResult(priors, OptimizeInfo(*counts, details=info))


def _check_space(boxes: BoxSet, base: PriorsConfig) -> None:
    if boxes.image_size != base.image_size:
        raise ValueError(f"boxes are in a {boxes.image_size} input, priors.image_size is {base.image_size}")


def optimize_chi(
    boxes: BoxSet, base: PriorsConfig, *, k: int = CHI_K, restarts: int = 10, seed: int = 0
) -> OptimizeResult:
    """Chi et al.'s published prior design (`chi_priors`) fitted to `boxes` (training set, input
    space of `base`), as a shape-form config; other `base` fields are kept."""
    _check_space(boxes, base)
    levels, info = chi_priors(boxes.wh_px, base, k=k, restarts=restarts, seed=seed)
    return _result(base, levels, info)


def optimize_kmeans(
    boxes: BoxSet,
    base: PriorsConfig,
    *,
    max_priors: int | None = None,
    restarts: int = 10,
    seed: int = 0,
) -> OptimizeResult:
    """Our k-means generalisation (`kmeans_priors`) fitted to `boxes`, as a shape-form config.
    It has no budget of its own: raises ValueError when an explicit `max_priors` is exceeded."""
    _check_space(boxes, base)
    levels, info = kmeans_priors(
        boxes.wh_px, base.feature_maps, base.aspect_ratios, restarts=restarts, seed=seed
    )
    res = _result(base, levels, info)
    if max_priors is not None and res.grid.num_priors > max_priors:
        raise ValueError(
            f"the kmeans method gives {res.grid.num_priors} priors, more than max_priors={max_priors}"
        )
    return res


def checker_offsets(nx: int, ny: int) -> list[Offset]:
    """The 2 nx ny centre offsets (dx, dy), units of the step, of the checkerboard of the
    (nx, ny) sub-grid: each `subgrid_offsets` point split into two, a quarter of the sub-step
    before and after it along the diagonal. The priors of one shape at these offsets are a
    centred lattice of sub-step (step / nx, step / ny): a point in every sub-cell corner pair
    and one in between, i.e. the sub-grid turned by 45 degrees."""
    qx, qy = 0.25 / nx, 0.25 / ny
    return [(dx + sx * qx, dy + sx * qy) for dx, dy in subgrid_offsets(nx, ny) for sx in (-1.0, 1.0)]


def _checker_iou(
    boxes_px: np.ndarray, shapes: np.ndarray, f: int, step: float, nx: int, ny: int
) -> np.ndarray:
    """`_subgrid_iou` for the checkerboard of the (nx, ny) sub-grid (`checker_offsets`): the
    better of its two interleaved lattices, each of step (step / nx, step / ny)."""
    out = None
    for sign in (-0.25, 0.25):
        off = np.full(np.asarray(shapes).reshape(-1, 2).shape, sign)
        iou = lattice_best_iou_xy(boxes_px, shapes, (nx * f, step / nx), (ny * f, step / ny), off)
        out = iou if out is None else np.maximum(out, iou)
    assert out is not None
    res: np.ndarray = out.T.astype(np.float32)
    return res


def _with_checkerboards(
    patterns: Sequence[tuple[int, int]], checkerboards: bool, max_copies: int
) -> list[tuple[int, int, bool]]:
    """The sub-grid `patterns` as (nx, ny, checker) and, with `checkerboards`, each also on its
    checkerboard where twice its copies fit `max_copies`."""
    out = [(nx, ny, False) for nx, ny in patterns]
    if checkerboards:
        out += [(nx, ny, True) for nx, ny in patterns if 2 * nx * ny <= max_copies]
    return out


def balance_weights(boxes: BoxSet, balance: Balance, power: float = 1.0) -> np.ndarray:
    """[G] weight of every box for a coverage objective balanced by `balance`: "class" groups
    the boxes by label, "size" by octave of sqrt area in input pixels (< 8, 8-16, 16-32, ...).
    A box of a group of n boxes weighs n^-`power` (normalised to mean 1): 0 = every box alike,
    1 = every group alike, in between a tempered balance. Rare groups (a class of a few photos,
    the smallest boxes) then count for more than their share of the fitting boxes, as a hedge
    against their share among new photos."""
    if boxes.num_boxes == 0:
        raise ValueError("no boxes to weigh")
    if not power >= 0:
        raise ValueError(f"balance power must be >= 0, got {power}")
    if balance == "class":
        groups = np.asarray(boxes.labels, np.int64)
    elif balance == "size":
        wh = boxes.wh_px
        groups = np.maximum(np.floor(np.log2(np.sqrt(wh[:, 0] * wh[:, 1]) / 4.0)), 0).astype(np.int64)
    else:
        raise ValueError(f"balance must be one of {list(BALANCES)}, got {balance!r}")
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    w = counts[inverse].astype(np.float64) ** -float(power)
    out: np.ndarray = w / w.mean()
    return out


def optimize_coverage(
    boxes: BoxSet,
    base: PriorsConfig,
    *,
    max_priors: int | None = None,
    iou_threshold: float = 0.5,
    seed: int = 0,
    restarts: int = 5,
    sample_size: int = SAMPLE_SIZE,
    iou_weight: float = IOU_WEIGHT,
    max_shapes_per_level: int = MAX_SHAPES_PER_LEVEL,
    subgrids: Subgrids = SUBGRIDS,
    jitter_scale: float = JITTER_SCALE,
    jitter: int = JITTER_COPIES,
    jitter_px: float | None = None,
    min_gain: float = MIN_GAIN,
    checkerboards: bool = False,
    balance: Balance | None = None,
    balance_power: float = 1.0,
    fits: int = 1,
    local_search: bool = False,
) -> OptimizeResult:
    """Our coverage optimizer (`coverage_priors`) fitted to `boxes` within `max_priors` (default:
    the base's number of priors), as a shape-form config. `subgrids`: the sub-grids a shape may
    be put on ("auto" = powers of two, () = cell centres only); `checkerboards` (with sub-grids
    only): each sub-grid also as its checkerboard (`checker_offsets`), twice the copies for a
    lattice that reaches IoU 0.5 like the sub-grid refined twice in both directions; `balance`,
    `balance_power`: weigh the boxes by `balance_weights` (default: every box alike; to choose
    the power without held-out data see `select_by_inner_split`).

    `fits` > 1: the fit is made with the seeds `seed` .. `seed + fits - 1` (other jittered
    samples, other k-means starts) and the one with the best objective on an independent
    jittered sample of the same boxes (`holdout_objective`, seeded apart from every fit) wins;
    ties go to fewer priors, then to the lower seed. The greedy maximises its objective on the
    sample it sees, so the objective it reports is biased upwards by that sample's chance
    features, and most for the fine-level choices a few small boxes decide; scoring every fit
    on a fresh sample removes that bias (the sample average approximation of stochastic
    programming: solve on several samples, choose on another). The details record every fit's
    seed, priors and both objectives under "fits" (and, with `local_search`, how many moves the
    search made in each fit)."""
    _check_space(boxes, base)
    if fits < 1:
        raise ValueError(f"fits must be >= 1, got {fits}")
    base_grid = PriorSet.from_config(base)
    budget = base_grid.num_priors if max_priors is None else int(max_priors)
    base_shapes = [wh for level in base_grid.shapes for wh in level]
    results = []
    for k in range(fits):
        levels, info = coverage_priors(
            boxes,
            base.feature_maps,
            base.steps,
            budget,
            base_shapes=base_shapes,
            iou_threshold=iou_threshold,
            seed=seed + k,
            sample_size=sample_size,
            iou_weight=iou_weight,
            restarts=max(1, min(restarts, 5)),
            max_shapes_per_level=max_shapes_per_level,
            subgrids=subgrids,
            jitter_scale=jitter_scale,
            jitter=jitter,
            jitter_px=jitter_px,
            min_gain=min_gain,
            checkerboards=checkerboards,
            balance=balance,
            balance_power=balance_power,
            local_search=local_search,
        )
        res = _result(base, levels, info)
        if res.grid.num_priors > budget:  # pragma: no cover - greedy invariant
            raise AssertionError(f"coverage produced {res.grid.num_priors} priors > budget {budget}")
        results.append(res)
    if fits == 1:
        return results[0]
    scores = [
        holdout_objective(
            r.grid,
            boxes,
            seed=seed,
            iou_threshold=iou_threshold,
            iou_weight=iou_weight,
            sample_size=sample_size,
            jitter=jitter,
            jitter_px=jitter_px,
            jitter_scale=jitter_scale,
            balance=balance,
            balance_power=balance_power,
        )
        for r in results
    ]
    best = min(range(fits), key=lambda k: (-scores[k], results[k].grid.num_priors, k))
    record = [
        {
            "seed": seed + k,
            "num_priors": r.grid.num_priors,
            "sample_objective": _sample_objective(r.info.details_dict()),
            "holdout_objective": scores[k],
            **({"local_search_moves": len(r.info.details_dict()["local_search"])} if local_search else {}),
        }
        for k, r in enumerate(results)
    ]
    log.info("coverage: %d fits, holdout objectives %s -> seed %d", fits, scores, seed + best)
    chosen = results[best]
    details = {**chosen.info.details_dict(), "fit_seed": seed + best, "fits": record}
    return dataclasses.replace(chosen, info=dataclasses.replace(chosen.info, details=details))


def _sample_objective(details: Mapping[str, Any]) -> float:
    """The objective the fit reached on its own sample (the greedy's best run, after the local
    search with it)."""
    return float(details["objective"])


# Stream of the evaluation sample of `holdout_objective`: a SeedSequence of (seed, this) never
# equals the plain integer seeds of the fits.
_HOLDOUT_STREAM: Final = 0x5A4D


def holdout_objective(
    grid: PriorSet,
    boxes: BoxSet,
    *,
    seed: int = 0,
    iou_threshold: float = 0.5,
    iou_weight: float = IOU_WEIGHT,
    sample_size: int = SAMPLE_SIZE,
    jitter: int = JITTER_COPIES,
    jitter_px: float | None = None,
    jitter_scale: float = JITTER_SCALE,
    balance: Balance | None = None,
    balance_power: float = 1.0,
) -> float:
    """The coverage objective F = recall@t + `iou_weight` x mean grid IoU (weighted by
    `balance_weights` with `balance`) of `grid`'s priors over a jittered sample of `boxes`
    drawn as `coverage_priors` draws its own (at most `sample_size / jitter` boxes, `jitter`
    copies each, shifted by up to `jitter_px`, default half the second level's stride, sizes
    scaled by exp(N(0, `jitter_scale`^2))), but from the generator
    `numpy.random.default_rng([seed, 0x5A4D])`: a sample independent of every fit's."""
    rng = np.random.default_rng([int(seed), _HOLDOUT_STREAM])
    amplitude = default_shift_amplitude(grid.steps) if jitter_px is None else float(jitter_px)
    sample, points, source, weights = _sample_points(
        boxes, rng, sample_size, jitter, amplitude, jitter_scale, balance, balance_power
    )
    size = boxes.image_size
    labels, images = sample.labels[source], sample.image_index[source]
    jittered = BoxSet(points / size, labels, images, sample.image_ids, size)
    return objective_on_points(grid, jittered, iou_threshold, iou_weight, weights)


def _sample_points(
    boxes: BoxSet,
    rng: np.random.Generator,
    sample_size: int,
    jitter: int,
    amplitude: float,
    jitter_scale: float,
    balance: Balance | None,
    balance_power: float,
) -> tuple[BoxSet, np.ndarray, np.ndarray, np.ndarray | None]:
    """The sample points of the coverage objective: at most `sample_size / jitter` of `boxes`
    (a seeded subset when there are more), each in `jitter` copies (`_jittered_index`), and
    their weights with `balance` (else None). Returns (sampled boxes, points [M, 4] xyxy input
    pixels, the sampled box of every point [M], weights [M] or None)."""
    copies = max(1, int(jitter))
    per_copy = max(1, sample_size // copies)
    sample = boxes
    if boxes.num_boxes > per_copy:
        sample = boxes.subset(np.sort(rng.choice(boxes.num_boxes, size=per_copy, replace=False)))
    points, source = _jittered_index(sample.boxes_px, copies, amplitude, boxes.image_size, rng, jitter_scale)
    weights = None if balance is None else balance_weights(sample, balance, balance_power)[source]
    return sample, points, source, weights


def objective_on_points(
    grid: PriorSet, points: BoxSet, iou_threshold: float, iou_weight: float, weights: np.ndarray | None = None
) -> float:
    """F = recall@`iou_threshold` + `iou_weight` x mean best IoU of `points` over `grid`'s priors,
    every point weighing `weights` (default alike): the objective `_greedy` maximises."""
    best = grid_stats(grid, points, iou_threshold, positives=False).best_iou.astype(np.float64)
    w = np.ones_like(best) if weights is None else np.asarray(weights, np.float64)
    return float(((best >= iou_threshold) @ w + iou_weight * (best @ w)) / w.sum())


def image_halves(boxes: BoxSet, seed: int = 0) -> np.ndarray:
    """[G] half (0 or 1) of every box: the half of its image, the images with boxes grouped by
    their most frequent label, each group ordered by image id, shuffled with
    `numpy.random.default_rng(seed)` and dealt in turn (as `ssd.data.records.image_folds` with
    two folds), so both halves get about the same share of every class."""
    labels = np.asarray(boxes.labels, np.int64)
    images = np.unique(boxes.image_index)
    groups: dict[int, list[int]] = {}
    for img in images:
        groups.setdefault(int(np.bincount(labels[boxes.image_index == img]).argmax()), []).append(int(img))
    rng = np.random.default_rng(seed)
    half_of: dict[int, int] = {}
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda i: boxes.image_ids[i])
        for rank, j in enumerate(rng.permutation(len(members))):
            half_of[members[j]] = rank % 2
    return np.array([half_of[int(i)] for i in boxes.image_index], np.int64)


@dataclass(frozen=True)
class InnerSplitChoice:
    """What `select_by_inner_split` measured: for every candidate (its options), the held-out
    recall of each direction (fitted on half 0 scored on half 1, and the reverse), over all
    boxes and over the boxes of at least `large_side` x `large_side` input px (sqrt area), and
    the index of the chosen candidate."""

    candidates: tuple[dict[str, Any], ...]
    recall: tuple[tuple[float, float], ...]
    recall_large: tuple[tuple[float, float], ...]
    chosen: int
    large_side: float

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.candidates[self.chosen])

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "large_side": self.large_side,
            "candidates": [
                {"options": dict(c), "recall": list(r), "recall_large": list(rl)}
                for c, r, rl in zip(self.candidates, self.recall, self.recall_large)
            ],
        }


def select_by_inner_split(
    boxes: BoxSet,
    base: PriorsConfig,
    candidates: Sequence[Mapping[str, Any]],
    *,
    max_priors: int | None = None,
    iou_threshold: float = 0.5,
    seed: int = 0,
    large_side: float = 32.0,
    **options: Any,
) -> InnerSplitChoice:
    """Choose among option sets of `optimize_coverage` without held-out data: the images of
    `boxes` are split in two (`image_halves`), every candidate (`options` updated by it) is
    fitted on each half and scored on the other (grid recall@`iou_threshold`), and the candidate
    with the best mean held-out recall wins; ties go to the better recall of the boxes of at
    least `large_side` px (sqrt area), then to the earlier candidate. The halves hold half the
    boxes each, so the choice is noisy where boxes are few: offer few, distinct candidates."""
    if not candidates:
        raise ValueError("select_by_inner_split needs at least one candidate")
    halves = image_halves(boxes, seed)
    if not ((halves == 0).any() and (halves == 1).any()):
        raise ValueError("an inner split needs boxes in at least two images")
    parts = [boxes.subset(halves == k) for k in (0, 1)]
    recall, recall_large = [], []
    for cand in candidates:
        r, rl = [], []
        for k in (0, 1):
            fit, held = parts[k], parts[1 - k]
            res = optimize_coverage(
                fit,
                base,
                max_priors=max_priors,
                iou_threshold=iou_threshold,
                seed=seed,
                **{**options, **cand},
            )
            hit = grid_stats(res.grid, held, iou_threshold, positives=False).best_iou >= iou_threshold
            wh = held.wh_px
            large = np.sqrt(wh[:, 0] * wh[:, 1]) >= large_side
            r.append(float(hit.mean()))
            rl.append(float(hit[large].mean()) if large.any() else 1.0)
        recall.append((r[0], r[1]))
        recall_large.append((rl[0], rl[1]))
        log.info("inner split: %s: held-out recall %.4f / %.4f", dict(cand), r[0], r[1])
    keys = [(-sum(r), -sum(rl), i) for i, (r, rl) in enumerate(zip(recall, recall_large))]
    chosen = min(keys)[2]
    return InnerSplitChoice(
        tuple(dict(c) for c in candidates), tuple(recall), tuple(recall_large), chosen, float(large_side)
    )


def optimize_priors(
    boxes: BoxSet,
    base: PriorsConfig,
    *,
    method: Method = "coverage",
    max_priors: int | None = None,
    iou_threshold: float = 0.5,
    seed: int = 0,
    restarts: int = 10,
    **coverage_options: Any,
) -> OptimizeResult:
    """A complete prior config (shape form) for `base`'s layout fitted to `boxes` (training set,
    input space; its image size must be the base's) by `method`: `optimize_chi`,
    `optimize_kmeans` or `optimize_coverage` (which also takes `coverage_options`). `chi` follows
    the paper and has no budget: an explicit `max_priors` it exceeds raises ValueError, as for
    `kmeans`."""
    if method == "chi":
        res = optimize_chi(boxes, base, restarts=restarts, seed=seed)
        if max_priors is not None and res.grid.num_priors > max_priors:
            raise ValueError(
                f"the chi method gives {res.grid.num_priors} priors, more than max_priors={max_priors}"
            )
        return res
    if method == "kmeans":
        return optimize_kmeans(boxes, base, max_priors=max_priors, restarts=restarts, seed=seed)
    if method == "coverage":
        return optimize_coverage(
            boxes, base, max_priors=max_priors, iou_threshold=iou_threshold, seed=seed, restarts=restarts,
            **coverage_options,
        )  # fmt: skip
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
