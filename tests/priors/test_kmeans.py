"""IoU k-means and its comparison variants (ssd/priors/kmeans.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ssd.boxes import shape_iou
from ssd.priors import kmeans as km
from ssd.priors.kmeans import (
    cluster_shapes,
    euclidean_kmeans,
    iou_kmeans,
    ratio_scale_best,
    ratio_scale_kmeans,
)

TRUE = np.array([[10.0, 40.0], [60.0, 60.0], [200.0, 30.0], [400.0, 12.0]])


def blobs(n_per: int = 150, noise: float = 0.08, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shapes scattered log-normally around TRUE; returns (wh [N, 2], generating label [N])."""
    rng = np.random.default_rng(seed)
    label = np.repeat(np.arange(len(TRUE)), n_per)
    wh = TRUE[label] * np.exp(rng.normal(0.0, noise, (label.size, 2)))
    return wh, label


def reference_best_iou(wh: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    iou = shape_iou(torch.from_numpy(wh), torch.from_numpy(centroids))
    return iou.max(dim=1).values.numpy()


def naive_lloyd(
    wh: np.ndarray, w: np.ndarray, cen: np.ndarray, update: str = "mean", max_iter: int = 300
) -> tuple[np.ndarray, np.ndarray]:
    """Plain Lloyd with a 1 - IoU assignment and a weighted mean (or lower weighted median)
    update, every distance recomputed: the oracle for the bound-accelerated loop (same seeding)."""
    k = len(cen)
    assign = km.shape_iou_np(wh, cen).argmax(axis=1)
    for _ in range(max_iter):
        if update == "mean":
            mass = np.bincount(assign, weights=w, minlength=k)
            cen = np.stack([np.bincount(assign, weights=w * wh[:, d], minlength=k) / mass for d in (0, 1)], 1)
        else:
            cen = np.stack([km._weighted_median_per_cluster(wh[:, d], assign, w, k) for d in (0, 1)], 1)
        nxt = km.shape_iou_np(wh, cen).argmax(axis=1)
        if np.array_equal(nxt, assign):
            break
        assign = nxt
    return cen, assign


def test_recovers_hand_made_clusters() -> None:
    wh, label = blobs()
    res = iou_kmeans(wh, 4, restarts=5, seed=0)
    # centroids come sorted by area: 10x40, 60x60, 400x12, 200x30
    order = np.argsort(TRUE[:, 0] * TRUE[:, 1])
    np.testing.assert_allclose(res.centroids, TRUE[order], rtol=0.05)
    # every generated cluster maps onto exactly one found cluster
    for c in range(len(TRUE)):
        assert np.unique(res.assignments[label == c]).size == 1
    assert np.unique(res.assignments).size == 4
    assert res.mean_iou > 0.85


def test_mean_iou_is_the_mean_best_shape_iou() -> None:
    wh, _ = blobs(seed=3)
    res = iou_kmeans(wh, 3, restarts=3, seed=1)
    assert res.mean_iou == pytest.approx(reference_best_iou(wh, res.centroids).mean(), abs=1e-9)
    # IoU k-means assigns each box to its best-IoU centroid
    best = km.shape_iou_np(wh, res.centroids)
    np.testing.assert_array_equal(best[np.arange(len(wh)), res.assignments], best.max(axis=1))


@pytest.mark.parametrize("update", ["mean", "median"])
def test_accelerated_lloyd_matches_naive_lloyd(update: str) -> None:
    rng = np.random.default_rng(7)
    wh = np.exp(rng.uniform(np.log(4), np.log(500), (3000, 2)))  # no structure: many iterations
    wh[:300] = np.round(wh[:300])  # and some duplicates (weighted points)
    wh[300:600] = wh[:300]
    uniq, w, _ = km._dedup(wh)
    for k in (2, 5, 9):
        assigner = km._IoUAssigner(uniq)
        cen0 = km._kmeanspp_iou(uniq, w, k, km._spawn(11, 1)[0], assigner)
        ref_cen, ref_assign = naive_lloyd(uniq, w, cen0, update)
        cen, assign, score, _ = km._lloyd_iou(uniq, w, k, update, km._spawn(11, 1)[0], assigner, 300)
        np.testing.assert_allclose(cen, ref_cen, rtol=1e-9)
        np.testing.assert_array_equal(assign, ref_assign)
        assert score == pytest.approx(
            np.average(km.paired_shape_iou(uniq, cen[assign]), weights=w), abs=1e-12
        )


def test_restarts_never_worsen() -> None:
    rng = np.random.default_rng(2)
    wh = np.exp(rng.normal(np.log(60), 0.9, (800, 2)))
    results = [iou_kmeans(wh, 6, restarts=r, seed=5) for r in range(1, 7)]
    full = results[-1]
    # restart r is the same run whatever the number of restarts (seeded per restart) ...
    for r, res in enumerate(results, start=1):
        assert res.restart_scores == full.restart_scores[:r]
    # ... and the kept result is the best of them: never worse than any single run
    singles = full.restart_scores
    assert full.mean_iou == pytest.approx(max(singles), abs=1e-9)
    assert all(full.mean_iou >= s - 1e-9 for s in singles)
    ious = [res.mean_iou for res in results]
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(ious))
    assert len(set(np.round(singles, 9))) > 1  # the restarts do differ, so the check has teeth


def test_dedup_matches_numpy_unique() -> None:
    rng = np.random.default_rng(11)
    wh = rng.integers(1, 6, (500, 2)).astype(np.float64)  # many repeats, ties in either column
    uniq, counts, inverse = km._dedup(wh)
    ref_u, ref_inv, ref_c = np.unique(wh, axis=0, return_inverse=True, return_counts=True)
    np.testing.assert_array_equal(uniq, ref_u)
    np.testing.assert_array_equal(counts, ref_c)
    np.testing.assert_array_equal(inverse, ref_inv.reshape(-1))
    np.testing.assert_array_equal(uniq[inverse], wh)  # the round trip


def test_threaded_restarts_give_the_same_result() -> None:
    rng = np.random.default_rng(12)
    n = km._THREAD_MIN_POINTS + 5_000  # big enough to take the thread-pool path
    wh = np.exp(rng.normal(np.log(50), 0.8, (n, 2)))
    serial = iou_kmeans(wh, 5, restarts=4, seed=3, workers=1)
    threaded = iou_kmeans(wh, 5, restarts=4, seed=3, workers=3)
    assert threaded.restart_scores == serial.restart_scores
    np.testing.assert_array_equal(threaded.centroids, serial.centroids)
    np.testing.assert_array_equal(threaded.assignments, serial.assignments)
    with pytest.raises(ValueError, match="workers"):
        iou_kmeans(wh[:50], 2, workers=0)


def test_deterministic_for_a_seed() -> None:
    wh, _ = blobs(noise=0.4, seed=4)
    for update in ("mean", "median"):
        a = iou_kmeans(wh, 5, update=update, restarts=3, seed=9)
        b = iou_kmeans(wh, 5, update=update, restarts=3, seed=9)
        np.testing.assert_array_equal(a.centroids, b.centroids)
        np.testing.assert_array_equal(a.assignments, b.assignments)
    e1, e2 = euclidean_kmeans(wh, 5, seed=3), euclidean_kmeans(wh, 5, seed=3)
    np.testing.assert_array_equal(e1.centroids, e2.centroids)


def test_median_update_centroids_are_member_values() -> None:
    wh, _ = blobs(noise=0.3, seed=6)
    wh[:5] = [[5000.0, 5000.0]] * 5  # outliers pull a mean, not a median
    res = iou_kmeans(wh, 4, update="median", restarts=2, seed=0)
    for c in range(res.k):
        members = wh[res.assignments == c]
        assert res.centroids[c, 0] in members[:, 0] and res.centroids[c, 1] in members[:, 1]


def test_weighted_median_matches_numpy_lower_median() -> None:
    rng = np.random.default_rng(0)
    vals = rng.normal(size=101)
    assign = rng.integers(0, 4, 101)
    out = km._weighted_median_per_cluster(vals, assign, np.ones(101), 5)
    for c in range(4):
        v = np.sort(vals[assign == c])
        assert out[c] == v[(len(v) - 1) // 2]
    assert np.isnan(out[4])  # empty cluster
    # weights count as multiplicities
    w = rng.integers(1, 4, 101).astype(float)
    out_w = km._weighted_median_per_cluster(vals, assign, w, 4)
    rep = np.repeat(vals, w.astype(int))
    rep_a = np.repeat(assign, w.astype(int))
    for c in range(4):
        v = np.sort(rep[rep_a == c])
        assert out_w[c] == v[(len(v) - 1) // 2]


def test_duplicates_and_k_equal_to_distinct_shapes() -> None:
    shapes = np.array([[10.0, 10.0], [10.0, 100.0], [100.0, 10.0], [50.0, 50.0]])
    wh = np.repeat(shapes, [50, 3, 7, 1], axis=0)
    res = iou_kmeans(wh, 4, restarts=3, seed=0)
    assert res.mean_iou == pytest.approx(1.0)
    assert sorted(map(tuple, res.centroids)) == sorted(map(tuple, shapes))
    np.testing.assert_array_equal(np.sort(res.counts()), [1, 3, 7, 50])


def test_empty_cluster_is_reseeded_with_the_farthest_point() -> None:
    wh = np.array([[10.0, 10.0], [11.0, 10.0], [100.0, 10.0], [10.0, 300.0]])
    cen = np.array([[10.5, 10.0], [np.nan, np.nan], [100.0, 10.0]])
    mass = np.array([2.0, 0.0, 1.0])
    dist = np.array([0.05, 0.05, 0.0, 0.9])  # point 3 is far from its centroid
    out, n = km._reseed_empty(cen.copy(), mass, wh, dist)
    assert n == 1
    np.testing.assert_array_equal(out[1], wh[3])


def test_errors_are_clear() -> None:
    wh = np.array([[10.0, 10.0]] * 5 + [[20.0, 5.0]] * 5)
    with pytest.raises(ValueError, match="k=3 exceeds the number of distinct box shapes \\(2\\)"):
        iou_kmeans(wh, 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        iou_kmeans(wh, 0)
    with pytest.raises(ValueError, match="non-positive"):
        iou_kmeans(np.array([[10.0, 0.0], [3.0, 4.0]]), 1)
    with pytest.raises(ValueError, match="no boxes"):
        iou_kmeans(np.zeros((0, 2)), 1)
    with pytest.raises(ValueError, match="metric"):
        cluster_shapes(wh, 2, metric="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="update"):
        iou_kmeans(wh, 2, update="mode")  # type: ignore[arg-type]


def test_euclidean_variant() -> None:
    wh, _label = blobs(noise=0.05)
    res = euclidean_kmeans(wh, 4, restarts=5, seed=0)
    order = np.argsort(TRUE[:, 0] * TRUE[:, 1])
    np.testing.assert_allclose(res.centroids, TRUE[order], rtol=0.05)
    assert res.metric == "euclidean"
    assert res.mean_iou == pytest.approx(reference_best_iou(wh, res.centroids).mean(), abs=1e-9)


def test_ratio_scale_grid() -> None:
    # shapes that ARE a 2 ratios x 3 scales grid: the factorised clustering recovers it
    ratios, scales = np.array([0.25, 3.0]), np.array([20.0, 80.0, 300.0])
    rr, ss = np.meshgrid(ratios, scales, indexing="ij")
    grid = np.stack([ss * np.sqrt(rr), ss / np.sqrt(rr)], -1).reshape(-1, 2)
    rng = np.random.default_rng(1)
    wh = np.repeat(grid, 40, axis=0) * np.exp(rng.normal(0, 0.02, (240, 1)))  # scale jitter only
    res = ratio_scale_kmeans(wh, 2, 3, seed=0)
    assert res.k == 6
    np.testing.assert_allclose(sorted(res.ratios), ratios, rtol=0.01)
    np.testing.assert_allclose(sorted(res.scales), scales, rtol=0.03)
    best = ratio_scale_best(wh, 6, seed=0)
    assert best.mean_iou >= res.mean_iou - 1e-12 and best.k <= 6
    # IoU k-means with the same number of shapes is at least as good on its own objective here
    assert iou_kmeans(wh, 6, seed=0).mean_iou >= best.mean_iou - 1e-6
