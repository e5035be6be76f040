"""Clustering of box shapes (w, h): IoU k-means and the variants it is compared against.

All functions take shapes `wh` [N, 2] as (w, h) in one consistent unit; the prior toolkit passes
network-input pixels (see `ssd.priors.fit.records_to_input_wh`). Position is ignored here: the IoU
is the co-centred *shape* IoU of YOLO9000 (Redmon & Farhadi, sec. 2 "Dimension Clusters").

- `iou_kmeans`: Lloyd iterations with distance d = 1 - IoU(box, centroid), k-means++ seeding with
  the same distance (Arthur & Vassilvitskii: P(x) ~ d(x)^2), centroid update by mean or median,
  best of R restarts by mean IoU.
- `euclidean_kmeans`: plain k-means on (w, h) (the baseline YOLO9000 argues against).
- `ratio_scale_kmeans`: 1-D k-means on log aspect ratio and on log scale separately, combined as
  the grid of all ratio x scale shapes (how SSD/Faster R-CNN parameterise anchors).

Every result reports the same figure, the mean best shape IoU of the boxes against the centroids,
so the metrics compare on equal terms. Runs are deterministic for a seed: restart r draws from
`numpy.random.default_rng(SeedSequence(seed).spawn(...)[r])`, which does not depend on how many
restarts are run, so a best-of-R result is never worse than any of its single runs.

Speed: identical shapes are merged into weighted points first; the assignment step works on a
[K, n] float32 layout (contiguous rows); and Lloyd's iterations skip every point whose cluster
provably cannot change (Hamerly's bounds, valid because the Jaccard distance 1 - IoU is a
metric), which leaves the same assignments as plain Lloyd; restarts run on a thread pool.
`tools/bench_kmeans.py` measures it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

log = logging.getLogger(__name__)

Metric = Literal["iou", "euclidean", "ratio-scale"]
Update = Literal["mean", "median"]
METRICS: tuple[str, ...] = ("iou", "euclidean", "ratio-scale")
_T = TypeVar("_T")


@dataclass(frozen=True)
class KMeansResult:
    """A clustering of shapes.

    `centroids` [K, 2] (w, h), sorted by area (then w) ascending; `assignments` [N] index into
    `centroids` of each input box (for "iou" and "ratio-scale": the best shape-IoU centroid; for
    "euclidean": the nearest centroid); `mean_iou` the mean over boxes of the best shape IoU
    against the centroids; `restart_scores` the objective of every restart in order (mean IoU for
    "iou", negative inertia for the others); `iterations` of the kept restart; `ratios` and
    `scales` the 1-D centres of "ratio-scale" (None for the other metrics).
    """

    centroids: np.ndarray
    assignments: np.ndarray
    mean_iou: float
    metric: str
    update: str
    iterations: int
    restart_scores: tuple[float, ...]
    ratios: tuple[float, ...] | None = None
    scales: tuple[float, ...] | None = None

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def counts(self) -> np.ndarray:
        """[K] number of boxes assigned to each centroid."""
        return np.bincount(self.assignments, minlength=self.k)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (centroids as [w, h] lists, counts, mean IoU)."""
        factors: dict[str, Any] = {}
        if self.ratios is not None:
            factors["ratios"] = list(self.ratios)
        if self.scales is not None:
            factors["scales"] = list(self.scales)
        return {
            "metric": self.metric,
            "update": self.update,
            "k": self.k,
            "mean_iou": self.mean_iou,
            "centroids": [[float(w), float(h)] for w, h in self.centroids],
            "counts": [int(c) for c in self.counts()],
            "iterations": self.iterations,
            "restart_scores": list(self.restart_scores),
            **factors,
        }


# --------------------------------------------------------------------------- helpers


def shape_iou_np(wh: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Co-centred IoU [N, K] of shapes `wh` [N, 2] against `centroids` [K, 2] (numpy twin of
    `ssd.boxes.shape_iou`, used where the clustering loop needs numpy)."""
    wh = np.asarray(wh, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    inter = np.minimum(wh[:, None, 0], c[None, :, 0]) * np.minimum(wh[:, None, 1], c[None, :, 1])
    union = (wh[:, 0] * wh[:, 1])[:, None] + (c[:, 0] * c[:, 1])[None, :] - inter
    out: np.ndarray = inter / np.maximum(union, np.finfo(np.float64).tiny)
    return out


def paired_shape_iou(wh_a: np.ndarray, wh_b: np.ndarray) -> np.ndarray:
    """Co-centred IoU [N] of row-wise pairs of shapes [N, 2] and [N, 2]."""
    inter = np.minimum(wh_a[:, 0], wh_b[:, 0]) * np.minimum(wh_a[:, 1], wh_b[:, 1])
    union = wh_a[:, 0] * wh_a[:, 1] + wh_b[:, 0] * wh_b[:, 1] - inter
    out: np.ndarray = inter / np.maximum(union, np.finfo(np.float64).tiny)
    return out


def mean_best_iou(wh: np.ndarray, centroids: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean over boxes of max over centroids of the shape IoU (the YOLO9000 "Avg IOU")."""
    best = shape_iou_np(wh, centroids).max(axis=1)
    return float(np.average(best, weights=weights))


def _check_wh(wh: np.ndarray, k: int) -> np.ndarray:
    arr = np.asarray(wh, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"box shapes must be an [N, 2] array of (w, h), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("no boxes to cluster")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        bad = int(np.flatnonzero(~np.all(np.isfinite(arr) & (arr > 0), axis=1))[0])
        raise ValueError(f"box {bad} has a non-positive or non-finite size {arr[bad].tolist()}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return arr


def _dedup(wh: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct shapes [U, 2] (sorted by w, then h), their multiplicities [U] (float64) and the
    inverse index [N]. A lexsort of the two columns (np.unique(axis=0) sorts a structured view and
    is several times slower on 10^5 shapes)."""
    order = np.lexsort((wh[:, 1], wh[:, 0]))
    s = wh[order]
    start = np.ones(s.shape[0], bool)
    start[1:] = np.any(s[1:] != s[:-1], axis=1)
    group = np.cumsum(start) - 1
    inverse = np.empty(s.shape[0], np.int64)
    inverse[order] = group
    counts = np.bincount(group).astype(np.float64)
    return s[start], counts, inverse


def _spawn(seed: int, restarts: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(restarts)]


# Below this many distinct shapes a restart takes milliseconds and threads cost more than they save.
_THREAD_MIN_POINTS = 20_000


def _map_restarts(
    run: Callable[[np.random.Generator], _T],
    rngs: list[np.random.Generator],
    n_points: int,
    workers: int | None,
) -> list[_T]:
    """`run` applied to every restart's generator, in restart order; on a thread pool when the
    problem is big enough to gain from it. The order of the results never depends on scheduling."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    n = min(len(rngs), workers if workers is not None else (os.cpu_count() or 1))
    if n <= 1 or n_points < _THREAD_MIN_POINTS:
        return [run(r) for r in rngs]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="kmeans") as pool:
        return list(pool.map(run, rngs))


def _sample(rng: np.random.Generator, p: np.ndarray) -> int:
    """Index drawn with probability proportional to `p` (>= 0, positive sum)."""
    c = np.cumsum(p)
    i = int(np.searchsorted(c, rng.random() * c[-1], side="right"))
    return min(i, len(p) - 1)


class _IoUAssigner:
    """Best-IoU assignment of N fixed shapes to K centroids ([K, n] float32 layout: contiguous
    rows make the per-centroid passes and the running max cheap)."""

    def __init__(self, wh: np.ndarray) -> None:
        w = wh[:, 0].astype(np.float32)
        h = wh[:, 1].astype(np.float32)
        self.wha = np.stack([w, h, w * h])  # [3, N]: one gather serves all three rows
        self.w, self.h, self.area = self.wha

    def one(self, c: np.ndarray) -> np.ndarray:
        """IoU [N] against a single shape `c` (w, h)."""
        cw, ch = np.float32(c[0]), np.float32(c[1])
        inter = np.minimum(self.w, cw) * np.minimum(self.h, ch)
        out: np.ndarray = inter / (self.area + cw * ch - inter)
        return out

    def assign(
        self, centroids: np.ndarray, idx: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(assignment [n] int64, best IoU [n], second-best IoU [n]) of the points `idx`
        (all when None) against centroids [K, 2]; the first index wins ties, like argmax."""
        w, h, area = self.wha if idx is None else self.wha[:, idx]
        c = centroids.astype(np.float32)
        iou = np.minimum(w[None, :], c[:, 0:1])
        tmp = np.minimum(h[None, :], c[:, 1:2])
        np.multiply(iou, tmp, out=iou)
        np.add(area[None, :], (c[:, 0] * c[:, 1])[:, None], out=tmp)
        np.subtract(tmp, iou, out=tmp)
        np.divide(iou, tmp, out=iou)
        best = iou[0].copy()
        second = np.full_like(best, -1.0)
        assign = np.zeros(best.shape[0], np.int64)
        mask = np.empty(best.shape[0], bool)
        low = np.empty_like(best)
        for j in range(1, iou.shape[0]):
            np.greater(iou[j], best, out=mask)
            np.minimum(best, iou[j], out=low)
            np.maximum(second, low, out=second)
            np.maximum(best, iou[j], out=best)
            np.putmask(assign, mask, j)
        return assign, best, second


def _weighted_median_per_cluster(
    values: np.ndarray, assign: np.ndarray, weights: np.ndarray, k: int
) -> np.ndarray:
    """Lower weighted median of `values` within each of `k` clusters (NaN for empty ones)."""
    order = np.lexsort((values, assign))
    v, a, cw = values[order], assign[order], np.cumsum(weights[order])
    totals = np.bincount(a, weights=weights[order], minlength=k)
    before = np.concatenate([[0.0], np.cumsum(totals)[:-1]])
    idx = np.searchsorted(cw, before + totals / 2.0, side="left")
    out = np.full(k, np.nan)
    nonempty = totals > 0
    out[nonempty] = v[np.minimum(idx[nonempty], len(v) - 1)]
    return out


def _update(
    wh: np.ndarray, weights: np.ndarray, assign: np.ndarray, k: int, update: str
) -> tuple[np.ndarray, np.ndarray]:
    """New centroids [K, 2] (NaN rows for empty clusters) and the cluster weights [K]."""
    mass = np.bincount(assign, weights=weights, minlength=k)
    if update == "mean":
        sw = np.bincount(assign, weights=weights * wh[:, 0], minlength=k)
        sh = np.bincount(assign, weights=weights * wh[:, 1], minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            cen = np.stack([sw / mass, sh / mass], axis=1)
    elif update == "median":
        cen = np.stack([_weighted_median_per_cluster(wh[:, d], assign, weights, k) for d in (0, 1)], axis=1)
    else:
        raise ValueError(f"update must be 'mean' or 'median', got {update!r}")
    cen[mass <= 0] = np.nan
    return cen, mass


def _reseed_empty(
    cen: np.ndarray, mass: np.ndarray, wh: np.ndarray, dist: np.ndarray
) -> tuple[np.ndarray, int]:
    """Replace empty clusters by the points farthest from their centroid (deterministic:
    largest distance first, lowest index on ties). Returns the centroids and how many were set."""
    empty = np.flatnonzero(mass <= 0)
    if empty.size == 0:
        return cen, 0
    order = np.argsort(-dist, kind="stable")
    taken = 0
    for i in order:
        if taken == empty.size:
            break
        cand = wh[i]
        if np.any(np.all(cen[~np.isnan(cen[:, 0])] == cand, axis=1)):
            continue
        cen[empty[taken]] = cand
        taken += 1
    if taken < empty.size:  # pragma: no cover - k <= distinct shapes is checked up front
        raise RuntimeError("could not re-seed an empty cluster")
    return cen, int(empty.size)


# --------------------------------------------------------------------------- IoU k-means


def _kmeanspp_iou(
    wh: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator, assigner: _IoUAssigner
) -> np.ndarray:
    first = _sample(rng, weights)
    cen = [wh[first]]
    dist = 1.0 - assigner.one(wh[first]).astype(np.float64)
    for _ in range(1, k):
        p = weights * dist * dist
        if p.sum() <= 0:  # pragma: no cover - guarded by the distinct-shape check
            raise ValueError("fewer distinct shapes than clusters")
        i = _sample(rng, p)
        cen.append(wh[i])
        np.minimum(dist, 1.0 - assigner.one(wh[i]), out=dist)
    return np.array(cen, dtype=np.float64)


# Margin on the bound test: the bounds are float64, the IoUs float32 (relative error ~1e-7).
_BOUND_EPS = 1e-6


def _lloyd_iou(
    wh: np.ndarray,
    weights: np.ndarray,
    k: int,
    update: str,
    rng: np.random.Generator,
    assigner: _IoUAssigner,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """One k-means run: Lloyd's algorithm, accelerated as in Hamerly (2010, "Making k-means even
    faster"), with the same assignments as plain Lloyd (up to exact ties).

    The Jaccard distance d = 1 - IoU is a metric, so when centroid j moves by m_j = d(c_j, c_j'),
    a point's distance to it changes by at most m_j. Each point keeps an upper bound u on the
    distance to its own centroid and a lower bound l on the distance to every other one; after a
    move u grows by m_a and l shrinks by max_{j != a} m_j. A point with u <= l (or u <= half the
    distance from its centroid to the nearest other one) keeps its cluster without any IoU being
    computed. The bounds are stored relative to per-cluster cumulative moves, so the per-iteration
    work over all N points is one gather and one comparison. The mean update keeps per-cluster sums
    and corrects them for the points that changed cluster only.
    """
    n = wh.shape[0]
    cen = _kmeanspp_iou(wh, weights, k, rng, assigner)
    ww = weights[:, None] * wh  # [N, 2] weighted shapes for the running sums
    grow = np.zeros(k)  # cumulative sum of m_a: upper bounds of cluster a grew by this much
    shrink = np.zeros(k)  # cumulative max_{j != a} m_j: lower bounds of cluster a shrank by this
    assign = np.zeros(n, np.int64)
    # float32 halves the memory traffic of the per-iteration test; its rounding (~1e-7 on values
    # of order 1) stays well inside _BOUND_EPS
    key = np.empty(n, np.float32)  # l - u at the last exact computation, plus grow+shrink then
    u_rel = np.empty(n, np.float32)  # u at the last exact computation minus grow then

    def exact(idx: np.ndarray | None) -> np.ndarray:
        """Recompute assignments and bounds of the points `idx` (all when None); returns the
        old assignments of those points."""
        sel = slice(None) if idx is None else idx
        a, b1, b2 = assigner.assign(cen, idx)
        old = assign[sel].copy()
        assign[sel] = a
        u = 1.0 - b1.astype(np.float64)
        key[sel] = (b1.astype(np.float64) - b2) + grow[a] + shrink[a]
        u_rel[sel] = u - grow[a]
        return old

    def full_sums() -> tuple[np.ndarray, np.ndarray]:
        sums = np.stack([np.bincount(assign, weights=ww[:, d], minlength=k) for d in (0, 1)], 1)
        return sums, np.bincount(assign, weights=weights, minlength=k)

    exact(None)
    sums, mass = full_sums()
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - `it` is reported
        if update == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                new = sums / mass[:, None]
            new[mass <= 0] = np.nan
        else:
            new, mass = _update(wh, weights, assign, k, update)
        if np.any(mass <= 0):
            dist = 1.0 - paired_shape_iou(wh, cen[assign])
            cen, _ = _reseed_empty(new, mass, wh, dist)
            exact(None)
            sums, mass = full_sums()
            continue
        moved = 1.0 - paired_shape_iou(cen, new)  # [K] distance each centroid moved
        cen = new
        if k == 1:
            break
        top = int(np.argmax(moved))
        other = np.full(k, moved[top])
        other[top] = np.max(np.delete(moved, top))
        grow += moved
        shrink += other
        # l - u now = key - grow[a] - shrink[a]; test l - u < eps without touching l, u
        cand = np.flatnonzero(key < (grow + shrink + _BOUND_EPS).astype(np.float32)[assign])
        if cand.size:
            cc = 1.0 - shape_iou_np(cen, cen)
            np.fill_diagonal(cc, np.inf)
            half = cc.min(axis=1) / 2.0  # a point closer than this to its centroid stays
            cand = cand[u_rel[cand] > (half - grow - _BOUND_EPS).astype(np.float32)[assign[cand]]]
        if cand.size == 0:
            break
        old = exact(cand)
        changed = assign[cand] != old
        if not np.any(changed):
            break
        if update == "mean":
            idx, src, dst = cand[changed], old[changed], assign[cand][changed]
            for d in (0, 1):
                sums[:, d] += np.bincount(dst, weights=ww[idx, d], minlength=k) - np.bincount(
                    src, weights=ww[idx, d], minlength=k
                )
            mass += np.bincount(dst, weights=weights[idx], minlength=k) - np.bincount(
                src, weights=weights[idx], minlength=k
            )
            mass[np.abs(mass) < 1e-9] = 0.0
    score = float((paired_shape_iou(wh, cen[assign]) * weights).sum() / weights.sum())
    return cen, assign, score, it


def _sorted_result(
    cen: np.ndarray, assign_u: np.ndarray, inverse: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((cen[:, 0], cen[:, 0] * cen[:, 1]))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return cen[order], rank[assign_u][inverse]


_LloydRun = tuple[np.ndarray, np.ndarray, float, int]  # centroids, assignment, score, iterations


def _best_run(runs: Iterable[_LloydRun]) -> tuple[_LloydRun, list[float]]:
    """The restart with the highest score (strict: the earliest best is kept) and every score."""
    best: _LloydRun | None = None
    scores = []
    for run in runs:
        scores.append(run[2])
        if best is None or run[2] > best[2]:
            best = run
    assert best is not None
    return best, scores


def _kmeans_result(
    arr: np.ndarray, inverse: np.ndarray, runs: Iterable[_LloydRun], metric: str, update: Update
) -> KMeansResult:
    """The `KMeansResult` of the best of `runs` on the distinct shapes of `arr` (`inverse` maps
    each box of `arr` to its distinct shape)."""
    (cen, assign_u, _, iters), scores = _best_run(runs)
    centroids, assignments = _sorted_result(cen, assign_u, inverse)
    return KMeansResult(
        centroids=centroids,
        assignments=assignments,
        mean_iou=mean_best_iou(arr, centroids),
        metric=metric,
        update=update,
        iterations=iters,
        restart_scores=tuple(scores),
    )


def _distinct_check(n_distinct: int, k: int) -> None:
    if k > n_distinct:
        raise ValueError(
            f"k={k} exceeds the number of distinct box shapes ({n_distinct}); use k <= {n_distinct}"
        )


def iou_kmeans(
    wh: np.ndarray,
    k: int,
    *,
    update: Update = "mean",
    restarts: int = 10,
    seed: int = 0,
    max_iter: int = 300,
    workers: int | None = None,
) -> KMeansResult:
    """IoU k-means of shapes `wh` [N, 2] (w, h > 0) into `k` centroids (YOLO9000 dimension clusters).

    Distance 1 - shape IoU; k-means++ seeding with that distance; Lloyd iterations until the
    assignment stops changing (or `max_iter`); centroids are the mean or the (lower, weighted)
    median of their members; an empty cluster is re-seeded with the box farthest from its
    centroid. The restart with the highest mean IoU is kept (`restarts` >= 1).
    Restarts run on up to `workers` threads (default: the CPU count; numpy releases the GIL in
    the array passes); each restart owns its random stream, so the result does not depend on it.
    Raises ValueError when `k` exceeds the number of distinct shapes.
    """
    arr = _check_wh(wh, k)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    uniq, weights, inverse = _dedup(arr)
    _distinct_check(uniq.shape[0], k)
    assigner = _IoUAssigner(uniq)
    runs = _map_restarts(
        lambda rng: _lloyd_iou(uniq, weights, k, update, rng, assigner, max_iter),
        _spawn(seed, restarts),
        uniq.shape[0],
        workers,
    )
    return _kmeans_result(arr, inverse, runs, "iou", update)


# --------------------------------------------------------------------------- Euclidean k-means


def _euclid_assign(x: np.ndarray, cen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid [N] and squared distance [N] for points x [N, D], centroids [K, D]."""
    best = np.full(x.shape[0], np.inf)
    assign = np.zeros(x.shape[0], np.int64)
    for j in range(cen.shape[0]):
        d = ((x - cen[j]) ** 2).sum(axis=1)
        m = d < best
        best[m] = d[m]
        assign[m] = j
    return assign, best


def _lloyd_euclid(
    x: np.ndarray, weights: np.ndarray, k: int, update: str, rng: np.random.Generator, max_iter: int
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Weighted Lloyd k-means on points x [N, D] with k-means++ seeding; score = -inertia."""
    cen = [x[_sample(rng, weights)]]
    dist = ((x - cen[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        i = _sample(rng, weights * dist)  # squared distance already: P ~ D^2
        cen.append(x[i])
        np.minimum(dist, ((x - x[i]) ** 2).sum(axis=1), out=dist)
    c = np.array(cen, dtype=np.float64)
    assign, d2 = _euclid_assign(x, c)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        if update == "mean":
            mass = np.bincount(assign, weights=weights, minlength=k)
            with np.errstate(invalid="ignore", divide="ignore"):
                new = np.stack(
                    [
                        np.bincount(assign, weights=weights * x[:, d], minlength=k) / mass
                        for d in range(x.shape[1])
                    ],
                    axis=1,
                )
            new[mass <= 0] = np.nan
        else:
            new, mass = _update_nd_median(x, weights, assign, k)
        new, reseeded = _reseed_empty(new, mass, x, d2)
        c = new
        new_assign, d2 = _euclid_assign(x, c)
        if not reseeded and np.array_equal(new_assign, assign):
            break
        assign = new_assign
    return c, assign, -float(np.dot(d2, weights)), it


def _update_nd_median(
    x: np.ndarray, weights: np.ndarray, assign: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    mass = np.bincount(assign, weights=weights, minlength=k)
    cen = np.stack(
        [_weighted_median_per_cluster(x[:, d], assign, weights, k) for d in range(x.shape[1])], axis=1
    )
    cen[mass <= 0] = np.nan
    return cen, mass


def euclidean_kmeans(
    wh: np.ndarray,
    k: int,
    *,
    update: Update = "mean",
    restarts: int = 10,
    seed: int = 0,
    max_iter: int = 300,
) -> KMeansResult:
    """Standard k-means on (w, h) with squared Euclidean distance (best of `restarts` by inertia).

    `assignments` are the nearest centroids (Euclidean); `mean_iou` is still the mean best shape
    IoU, for comparison with `iou_kmeans`.
    """
    arr = _check_wh(wh, k)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if update not in ("mean", "median"):
        raise ValueError(f"update must be 'mean' or 'median', got {update!r}")
    uniq, weights, inverse = _dedup(arr)
    _distinct_check(uniq.shape[0], k)
    runs = (_lloyd_euclid(uniq, weights, k, update, rng, max_iter) for rng in _spawn(seed, restarts))
    return _kmeans_result(arr, inverse, runs, "euclidean", update)


# --------------------------------------------------------------------------- ratio x scale


def kmeans_1d(
    values: np.ndarray,
    k: int,
    *,
    weights: np.ndarray | None = None,
    restarts: int = 10,
    seed: int = 0,
    max_iter: int = 300,
) -> np.ndarray:
    """Weighted 1-D k-means (squared distance, k-means++ seeding); sorted centres [k]."""
    v = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    wts = np.ones(v.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    uniq, inv = np.unique(v[:, 0], return_inverse=True)
    uw = np.bincount(inv.reshape(-1), weights=wts, minlength=uniq.size)
    _distinct_check(uniq.size, k)
    best, _ = _best_run(
        _lloyd_euclid(uniq[:, None], uw, k, "mean", rng, max_iter) for rng in _spawn(seed, restarts)
    )
    return np.sort(best[0][:, 0])


def ratio_scale_kmeans(
    wh: np.ndarray,
    num_ratios: int,
    num_scales: int,
    *,
    restarts: int = 10,
    seed: int = 0,
    max_iter: int = 300,
) -> KMeansResult:
    """Separate 1-D k-means on log(w/h) (`num_ratios` centres) and on log sqrt(w h) (`num_scales`
    centres), combined as the grid of all ratio x scale shapes: w = s sqrt(r), h = s / sqrt(r).

    This is how ratio-form anchors are parameterised (SSD, Faster R-CNN); clustering the two
    factors separately cannot express correlated ones (thin boxes that are also large).
    """
    arr = _check_wh(wh, num_ratios * num_scales)
    if num_ratios < 1 or num_scales < 1:
        raise ValueError("num_ratios and num_scales must be >= 1")
    log_r = np.log(arr[:, 0] / arr[:, 1])
    log_s = 0.5 * np.log(arr[:, 0] * arr[:, 1])
    r = kmeans_1d(log_r, num_ratios, restarts=restarts, seed=seed, max_iter=max_iter)
    s = kmeans_1d(log_s, num_scales, restarts=restarts, seed=seed + 1, max_iter=max_iter)
    rr, ss = np.meshgrid(r, s, indexing="ij")
    cen = np.stack([np.exp(ss + rr / 2), np.exp(ss - rr / 2)], axis=-1).reshape(-1, 2)
    iou = shape_iou_np(arr, cen)
    assign = iou.argmax(axis=1)
    order = np.lexsort((cen[:, 0], cen[:, 0] * cen[:, 1]))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return KMeansResult(
        centroids=cen[order],
        assignments=rank[assign],
        mean_iou=float(iou.max(axis=1).mean()),
        metric="ratio-scale",
        update="mean",
        iterations=0,
        restart_scores=(),
        ratios=tuple(float(x) for x in np.exp(r)),
        scales=tuple(float(x) for x in np.exp(s)),
    )


def ratio_scale_best(
    wh: np.ndarray, k: int, *, restarts: int = 10, seed: int = 0, max_iter: int = 300
) -> KMeansResult:
    """The best `ratio_scale_kmeans` (by mean IoU) with at most `k` shapes: every factorisation
    num_ratios x num_scales <= k with num_scales = k // num_ratios is tried."""
    arr = _check_wh(wh, k)
    n_ratio = np.unique(np.round(np.log(arr[:, 0] / arr[:, 1]), 12)).size
    n_scale = np.unique(np.round(0.5 * np.log(arr[:, 0] * arr[:, 1]), 12)).size
    best: KMeansResult | None = None
    for nr in range(1, k + 1):
        ns = k // nr
        if nr > n_ratio or ns > n_scale or ns < 1:
            continue
        res = ratio_scale_kmeans(arr, nr, ns, restarts=restarts, seed=seed, max_iter=max_iter)
        if best is None or res.mean_iou > best.mean_iou:
            best = res
    if best is None:
        raise ValueError(f"k={k}: not enough distinct ratios/scales for a ratio x scale grid")
    return best


def cluster_shapes(
    wh: np.ndarray,
    k: int,
    *,
    metric: Metric = "iou",
    update: Update = "mean",
    restarts: int = 10,
    seed: int = 0,
    max_iter: int = 300,
) -> KMeansResult:
    """Dispatch on `metric`: "iou" (`iou_kmeans`), "euclidean" (`euclidean_kmeans`) or
    "ratio-scale" (`ratio_scale_best`, at most k shapes; `update` is ignored there)."""
    if metric == "iou":
        return iou_kmeans(wh, k, update=update, restarts=restarts, seed=seed, max_iter=max_iter)
    if metric == "euclidean":
        return euclidean_kmeans(wh, k, update=update, restarts=restarts, seed=seed, max_iter=max_iter)
    if metric == "ratio-scale":
        return ratio_scale_best(wh, k, restarts=restarts, seed=seed, max_iter=max_iter)
    raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
