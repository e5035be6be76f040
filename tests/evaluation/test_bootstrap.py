"""Paired bootstrap over validation images (ssd/evaluation/bootstrap.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssd.evaluation.bootstrap import (
    paired_interval,
    resample_counts,
    resampled_map,
    verdict,
)
from ssd.evaluation.voc import GroundTruth, evaluate_voc, match_detections
from ssd.structures import Detections

CLASSES = ("a", "b", "c")


def _scene(n: int, seed: int) -> list[GroundTruth]:
    rng = np.random.default_rng(seed)
    gts = []
    for _ in range(n):
        g = int(rng.integers(0, 4))
        xy = rng.uniform(0, 150, (g, 2))
        wh = rng.uniform(10, 50, (g, 2))
        labels = rng.integers(1, 4, g)
        difficult = rng.random(g) < 0.1
        gts.append(GroundTruth(np.concatenate([xy, xy + wh], 1), labels, difficult))
    return gts


def _detections(gts: list[GroundTruth], seed: int, quality: float) -> list[Detections]:
    """Per image: each ground truth found with probability `quality` (jittered box, score
    ~ quality), plus random false positives with lower scores; continuous scores (no ties)."""
    rng = np.random.default_rng(seed)
    out = []
    for gt in gts:
        boxes, scores, labels = [], [], []
        for box, label in zip(gt.boxes.numpy(), gt.labels.numpy()):
            if rng.random() < quality:
                boxes.append(box + rng.normal(0, 2, 4))
                scores.append(rng.uniform(0.3, 1.0) * quality)
                labels.append(label)
        for _ in range(int(rng.integers(0, 4))):
            xy = rng.uniform(0, 150, 2)
            boxes.append(np.concatenate([xy, xy + rng.uniform(10, 50, 2)]))
            scores.append(rng.uniform(0.0, 0.6))
            labels.append(int(rng.integers(1, 4)))
        out.append(
            Detections(
                torch.tensor(np.array(boxes).reshape(-1, 4), dtype=torch.float32),
                torch.tensor(scores, dtype=torch.float32),
                torch.tensor(labels, dtype=torch.long),
            )
        )
    return out


@pytest.mark.parametrize("metric", ["voc07", "area"])
def test_resampled_map_equals_evaluate_voc_on_the_resampled_images(metric: str) -> None:
    gts = _scene(40, seed=0)
    dets = _detections(gts, seed=1, quality=0.7)
    matches, _, _ = match_detections(gts, dets, CLASSES)
    ones = np.ones((1, len(gts)), np.int64)
    full = evaluate_voc(gts, dets, CLASSES, metric=metric)  # type: ignore[arg-type]
    assert resampled_map(matches, ones, metric)[0] == pytest.approx(full.map, abs=1e-12)
    counts = resample_counts(len(gts), 5, seed=3)
    maps = resampled_map(matches, counts, metric)
    for b in range(5):
        idx = np.repeat(np.arange(len(gts)), counts[b])  # image i drawn counts[b, i] times
        ref = evaluate_voc([gts[i] for i in idx], [dets[i] for i in idx], CLASSES, metric=metric)  # type: ignore[arg-type]
        assert maps[b] == pytest.approx(ref.map, abs=1e-12)


def test_resample_counts_are_seeded_draws_of_n_images() -> None:
    c = resample_counts(30, 200, seed=7)
    assert c.shape == (200, 30) and (c.sum(axis=1) == 30).all()
    assert np.array_equal(c, resample_counts(30, 200, seed=7))
    assert not np.array_equal(c, resample_counts(30, 200, seed=8))
    assert abs(c.mean() - 1.0) < 1e-12


def test_a_variant_against_itself_contains_zero_and_a_planted_better_one_is_above() -> None:
    gts = _scene(60, seed=2)
    weak = [_detections(gts, seed=10 + s, quality=0.35) for s in range(2)]
    strong = [_detections(gts, seed=20 + s, quality=0.95) for s in range(2)]
    counts = resample_counts(len(gts), 1000, seed=0)
    weak_maps = [resampled_map(match_detections(gts, d, CLASSES)[0], counts) for d in weak]
    strong_maps = [resampled_map(match_detections(gts, d, CLASSES)[0], counts) for d in strong]
    same = paired_interval(weak_maps, weak_maps)
    assert same[0] <= 0.0 <= same[1] and verdict(same) == "no detectable difference"
    better = paired_interval(strong_maps, weak_maps)
    assert better[0] > 0 and verdict(better) == "better"
    worse = paired_interval(weak_maps, strong_maps)
    assert worse[1] < 0 and verdict(worse) == "worse"
