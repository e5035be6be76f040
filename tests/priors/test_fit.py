"""The fit report (ssd/priors/fit.py) against brute-force references."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssd.config import PriorsConfig
from ssd.data.records import Record
from ssd.priors.fit import (
    BoxSet,
    best_shape_iou,
    compute_stats,
    default_shift_amplitude,
    dense_grid_stats,
    fit_report,
    fit_table_markdown,
    grid_stats,
    position_shifts,
    records_to_boxes,
    records_to_input_boxes,
    records_to_input_wh,
    subset_recall,
    translate_inside,
)
from ssd.priors.generator import PriorSet, flat_shapes, generate_priors, layout_from_config, shapes_per_level


def py_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two xyxy boxes, plain Python."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def brute_force(grid: PriorSet, boxes_rel: np.ndarray, t: float) -> tuple[list[float], list[int]]:
    """Best IoU and number of priors at IoU >= t per box: a loop over every prior of every cell
    (centre ((j + 0.5 + dx) step, (i + 0.5 + dy) step) for a shape with offset (dx, dy))."""
    s = grid.image_size
    priors = []
    for shapes, offsets, f, step in zip(grid.shapes, grid.offsets, grid.feature_maps, grid.steps):
        for i, j in itertools.product(range(f), range(f)):
            for (w, h), (dx, dy) in zip(shapes, offsets):
                cx, cy = (j + 0.5 + dx) * step, (i + 0.5 + dy) * step
                x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
                if grid.clip:
                    x1, y1, x2, y2 = (min(max(v, 0.0), s) for v in (x1, y1, x2, y2))
                priors.append((x1, y1, x2, y2))
    best, count = [], []
    for b in boxes_rel * s:
        ious = [py_iou(tuple(b), p) for p in priors]
        best.append(max(ious))
        count.append(sum(v >= t for v in ious))
    return best, count


def small_grid(clip: bool = False) -> PriorSet:
    return PriorSet(
        shapes=(((6.0, 6.0), (20.0, 5.0), (9.0, 14.0)), ((16.0, 16.0), (60.0, 10.0)), ((50.0, 40.0),)),
        feature_maps=(8, 4, 1),
        steps=(8.0, 16.0, 64.0),
        image_size=64,
        clip=clip,
    )


def random_boxes(n: int, seed: int, size: float = 64.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, size, (n, 2))
    wh = np.exp(rng.uniform(np.log(3), np.log(70), (n, 2)))
    b = np.concatenate([c - wh / 2, c + wh / 2], axis=1).clip(0, size) / size
    return b[(b[:, 2] - b[:, 0] > 0.01) & (b[:, 3] - b[:, 1] > 0.01)]


def boxset(rel: np.ndarray, labels: np.ndarray | None = None, size: int = 64) -> BoxSet:
    n = rel.shape[0]
    lab = np.ones(n, np.int64) if labels is None else labels
    return BoxSet(rel, lab, np.arange(n), tuple(f"im{i}" for i in range(n)), size)


@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_grid_stats_match_brute_force(threshold: float) -> None:
    grid = small_grid()
    rel = random_boxes(60, seed=1)
    # include boxes right on cell borders and at the image edge
    rel = np.concatenate(
        [rel, np.array([[0.0, 0.0, 8 / 64, 8 / 64], [0.25, 0.5, 0.5, 0.75], [0.0, 0.4, 1.0, 0.55]])]
    )
    ref_best, ref_count = brute_force(grid, rel, threshold)
    stats = grid_stats(grid, rel, threshold)
    np.testing.assert_allclose(stats.best_iou, ref_best, atol=1e-9)
    np.testing.assert_array_equal(stats.num_above, ref_count)
    assert (np.array(ref_count) > 1).any()  # several positives do occur
    dense = dense_grid_stats(grid.priors(), grid.layout(), rel, threshold)
    np.testing.assert_allclose(dense.best_iou, ref_best, atol=1e-5)
    np.testing.assert_array_equal(dense.num_above, ref_count)
    # a positioned prior never beats its shape co-centred
    shape = best_shape_iou(boxset(rel).wh_px, grid.distinct_shapes())
    assert np.all(stats.best_iou <= shape + 1e-12)
    # chunking does not change anything
    chunked = grid_stats(grid, rel, threshold, chunk=7)
    np.testing.assert_array_equal(chunked.num_above, stats.num_above)
    np.testing.assert_array_equal(chunked.best_iou, stats.best_iou)


def offset_grid(clip: bool = False) -> PriorSet:
    """`small_grid` plus shapes at sub-cell offsets (a 2 x 2 sub-grid of a tiny shape, a y pair
    of a band, an asymmetric offset on the single-cell level)."""
    g = small_grid()
    return PriorSet(
        shapes=(
            (*g.shapes[0], (5.0, 5.0), (5.0, 5.0), (5.0, 5.0), (5.0, 5.0)),
            (*g.shapes[1], (64.0, 6.0), (64.0, 6.0)),
            (*g.shapes[2], (30.0, 20.0)),
        ),
        feature_maps=g.feature_maps,
        steps=g.steps,
        image_size=g.image_size,
        clip=clip,
        offsets=(
            ((0.0, 0.0),) * 3 + ((-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25)),
            ((0.0, 0.0),) * 2 + ((0.0, -0.25), (0.0, 0.25)),
            ((0.0, 0.0), (0.3, -0.45)),
        ),
    )


@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_grid_stats_with_offsets_match_brute_force(threshold: float) -> None:
    grid = offset_grid()
    assert grid.has_offsets and grid.num_priors == 8 * 8 * 7 + 4 * 4 * 4 + 2
    rel = random_boxes(60, seed=11)
    tiny = np.random.default_rng(12).uniform(0, 60, (40, 2))  # 3-6 px boxes: the sub-grid's job
    tiny_wh = np.random.default_rng(13).uniform(3, 6, (40, 2))
    rel = np.concatenate([rel, np.concatenate([tiny, tiny + tiny_wh], 1) / 64, [[0.0, 0.3, 1.0, 0.4]]])
    ref_best, ref_count = brute_force(grid, rel, threshold)
    stats = grid_stats(grid, rel, threshold)
    np.testing.assert_allclose(stats.best_iou, ref_best, atol=1e-9)
    np.testing.assert_array_equal(stats.num_above, ref_count)
    # the generator's priors (dense path) are the same priors
    dense = dense_grid_stats(grid.priors(), grid.layout(), rel, threshold)
    np.testing.assert_allclose(dense.best_iou, ref_best, atol=1e-5)
    np.testing.assert_array_equal(dense.num_above, ref_count)
    # the offsets matter: without them the tiny boxes fare worse
    plain = PriorSet(grid.shapes, grid.feature_maps, grid.steps, grid.image_size)
    assert not plain.has_offsets
    assert grid_stats(plain, rel, threshold).best_iou[60:100].mean() < stats.best_iou[60:100].mean()
    # clipped offset priors agree with the brute force through the dense path
    clipped = offset_grid(clip=True)
    rep = fit_report(clipped, boxset(rel), ["a"], iou_threshold=threshold)
    ref_clip, _ = brute_force(clipped, rel, threshold)
    assert rep.mean_iou_grid == pytest.approx(float(np.mean(ref_clip)), abs=1e-5)


def test_grid_with_offsets_is_the_generator() -> None:
    grid = offset_grid()
    cfg = PriorsConfig(
        image_size=64, feature_maps=(8, 4, 1), steps=(8, 16, 64), shapes=tuple(map(tuple, grid.entries()))
    )
    assert cfg.shapes is not None and cfg.shapes[1][3] == (64.0, 6.0, 0.0, 0.25)
    assert PriorSet.from_config(cfg) == grid
    torch.testing.assert_close(grid.priors(), generate_priors(cfg), rtol=0, atol=1e-7)
    again = PriorSet.from_layout(layout_from_config(cfg), flat_shapes(shapes_per_level(cfg), 64))
    assert again.offsets == grid.offsets
    assert fit_report(grid, boxset(random_boxes(5, seed=1)), ["a"]).grid.to_dict()["shapes"][2][1] == [
        30.0,
        20.0,
        0.3,
        -0.45,
    ]
    with pytest.raises(ValueError, match="offsets"):
        PriorSet(grid.shapes, grid.feature_maps, grid.steps, 64, offsets=(((0.0, 0.5),) * 7, (), ()))


def test_clipped_priors_take_the_dense_path() -> None:
    grid = small_grid(clip=True)
    rel = random_boxes(40, seed=2)
    ref_best, _ref_count = brute_force(grid, rel, 0.5)
    rep = fit_report(grid, boxset(rel), ["a"])
    assert rep.mean_iou_grid == pytest.approx(float(np.mean(ref_best)), abs=1e-5)
    assert rep.recall == pytest.approx(float(np.mean(np.array(ref_best) >= 0.5)))
    with pytest.raises(ValueError, match="unclipped"):
        grid_stats(grid, rel, 0.5)


def test_fit_report_agrees_with_brute_force() -> None:
    grid = small_grid()
    rel = random_boxes(50, seed=3)
    labels = np.where(np.arange(rel.shape[0]) % 3 == 0, 2, 1)
    rep = fit_report(grid, boxset(rel, labels), ["a", "b", "c"], iou_threshold=0.5)
    best, count = brute_force(grid, rel, 0.5)
    best_a, count_a = np.array(best), np.array(count)
    assert rep.num_priors == 8 * 8 * 3 + 4 * 4 * 2 + 1 == grid.priors().shape[0]
    assert rep.boxes_per_cell == 6
    assert rep.mean_iou_grid == pytest.approx(best_a.mean())
    assert rep.recall == pytest.approx((best_a >= 0.5).mean())
    assert rep.positives_per_gt == pytest.approx(np.maximum(count_a, 1).mean())  # forcing: >= 1
    b = labels == 2
    assert rep.per_class["b"].num_gt == int(b.sum())
    assert rep.per_class["b"].recall == pytest.approx((best_a[b] >= 0.5).mean())
    assert rep.per_class["c"].num_gt == 0 and rep.per_class["c"].recall is None
    assert sum(rep.per_size[k].num_gt for k in ("small", "medium", "large")) == rel.shape[0]
    assert rep.unmatched.count == int((best_a < 0.5).sum())
    worst = rep.unmatched.worst
    assert [u.iou_grid for u in worst] == sorted(u.iou_grid for u in worst)
    assert sum(pl.best_for_gt for pl in rep.per_level) == rel.shape[0]
    md = fit_table_markdown({"x": rep, "y": rep})
    assert "| recall@0.5, grid | " in md and "| b |" in md


def test_subset_recall_is_the_recall_of_the_selected_boxes() -> None:
    grid = small_grid()
    rel = random_boxes(50, seed=3)
    boxes = boxset(rel, np.ones(rel.shape[0], dtype=np.int64))
    best, _ = brute_force(grid, rel, 0.5)
    mask = np.arange(rel.shape[0]) % 2 == 0
    sub = subset_recall({"g": grid}, boxes, mask, ["a"], iou_threshold=0.5)
    assert sub.num_window_boxes == int(mask.sum())
    assert sub.recall["g"] == pytest.approx((np.array(best)[mask] >= 0.5).mean())
    assert sub.recall_expected["g"] is not None
    none = subset_recall({"g": grid}, boxes, np.zeros(rel.shape[0], dtype=bool), ["a"])
    assert none.to_dict() == {"num_window_boxes": 0, "recall": {"g": None}, "recall_expected": {"g": None}}


def test_shape_iou_hand_computed() -> None:
    grid = PriorSet(
        shapes=(((512.0, 30.0), (100.0, 100.0)),), feature_maps=(1,), steps=(512.0,), image_size=512
    )
    # a 512 x 15 band: with the 512 x 30 shape co-centred IoU = 15 / 30
    band = np.array([[0.0, 100 / 512, 1.0, 115 / 512]])
    rep = fit_report(grid, boxset(band, size=512), ["band"])
    assert rep.mean_iou_shape == pytest.approx(0.5)
    # a 50 x 50 square: vs 100 x 100 -> 2500 / 10000; vs 512 x 30 -> 1500 / (2500 + 15360 - 1500)
    sq = np.array([[0.0, 0.0, 50 / 512, 50 / 512]])
    rep = fit_report(grid, boxset(sq, size=512), ["sq"])
    assert rep.mean_iou_shape == pytest.approx(max(0.25, 1500 / (2500 + 15360 - 1500)))
    # grid IoU: the single prior sits at the centre (256, 256); the square at (25, 25) misses it
    assert rep.mean_iou_grid == 0.0 and rep.recall == 0.0


def test_ssd512_grid_is_the_generator() -> None:
    cfg = PriorsConfig()
    grid = PriorSet.from_config(cfg)
    assert grid.num_priors == 24564 and grid.boxes_per_cell == 36
    torch.testing.assert_close(grid.priors(), generate_priors(cfg), rtol=0, atol=1e-6)
    assert grid.shapes[0][0] == pytest.approx((35.84, 35.84))


def test_grid_from_layout_and_learned_priors() -> None:
    cfg = PriorsConfig()
    grid = PriorSet.from_config(cfg)
    layout = layout_from_config(cfg)
    shapes = flat_shapes(shapes_per_level(cfg), cfg.image_size)
    again = PriorSet.from_layout(layout, shapes)
    assert again.num_priors == grid.num_priors and again.boxes_per_cell == 36
    np.testing.assert_allclose(np.array(again.shapes[1]), np.array(grid.shapes[1]), rtol=1e-6)
    # explicit priors (e.g. a learned model's) go through the dense path and agree
    small = small_grid()
    rel = random_boxes(30, seed=8)
    a = fit_report(small, boxset(rel), ["a"])
    b = fit_report(small, boxset(rel), ["a"], priors=small.priors())
    assert a.mean_iou_grid == pytest.approx(b.mean_iou_grid, abs=1e-6)
    assert a.positives_per_gt == pytest.approx(b.positives_per_gt)


def test_band_needs_a_fine_stride() -> None:
    """A 512 x 15 band at a random height: the same shape on the stride-8 level reaches IoU >= 0.5
    for (nearly) all positions, on the stride-32 level for few."""
    rng = np.random.default_rng(0)
    y = rng.uniform(20, 480, 400)
    rel = np.stack([np.zeros(400), y, np.full(400, 512.0), y + 15], 1) / 512
    fine = PriorSet(shapes=(((512.0, 15.0),),), feature_maps=(64,), steps=(8.0,), image_size=512)
    coarse = PriorSet(shapes=(((512.0, 15.0),),), feature_maps=(16,), steps=(32.0,), image_size=512)
    r_fine = grid_stats(fine, rel, 0.5)
    r_coarse = grid_stats(coarse, rel, 0.5)
    # offset d <= 4 px on stride 8: IoU >= (15 - 4) / (15 + 4) ~ 0.58 (x: 4 px of 512 lost)
    assert (r_fine.best_iou >= 0.5).mean() == 1.0
    assert (r_coarse.best_iou >= 0.5).mean() < 0.35


def test_records_to_input_space() -> None:
    rec = Record(
        image_path=Path("a.jpg"),
        image_id="a",
        width=2560,
        height=1920,
        boxes_px=np.array([[0, 100, 2560, 155], [100, 200, 300, 400]], np.float32),
        labels=np.array([1, 2]),
        difficult=np.array([False, True]),
    )
    empty = Record(image_path=Path("b.jpg"), image_id="b", width=100, height=100)
    wh = records_to_input_wh([rec, empty], 512)
    np.testing.assert_allclose(wh, [[512.0, 55 * 512 / 1920], [40.0, 200 * 512 / 1920]], rtol=1e-6)
    assert records_to_input_wh([rec], 512, include_difficult=False).shape == (1, 2)
    per_image = records_to_input_boxes([rec, empty], 512)
    assert per_image[1].shape == (0, 4)
    np.testing.assert_allclose(per_image[0][0], [0.0, 100 / 1920, 1.0, 155 / 1920], rtol=1e-6)
    bs = records_to_boxes([rec, empty], 300)
    assert bs.image_ids == ("a", "b") and bs.image_size == 300
    np.testing.assert_allclose(bs.wh_px[0], [300.0, 55 * 300 / 1920], rtol=1e-6)
    assert math.isclose(float(bs.boxes_px[1, 0]), 100 * 300 / 2560, rel_tol=1e-6)


def test_position_shifts_grid() -> None:
    d = position_shifts(4, 8.0)
    assert d.shape == (16, 2)
    np.testing.assert_allclose(np.unique(d[:, 0]), [-6.0, -2.0, 2.0, 6.0])
    np.testing.assert_allclose(d.mean(axis=0), [0.0, 0.0], atol=1e-12)
    assert default_shift_amplitude([8, 16, 32]) == 8.0 and default_shift_amplitude([64]) == 32.0
    with pytest.raises(ValueError, match="n >= 1"):
        position_shifts(0, 8.0)


def test_translate_inside_keeps_shape_and_image() -> None:
    b = np.array([[0.0, 100.0, 512.0, 115.0], [500.0, 10.0, 510.0, 20.0]])
    moved = translate_inside(b, np.array([7.0, -30.0]), 512)
    np.testing.assert_allclose(moved[:, 2:] - moved[:, :2], b[:, 2:] - b[:, :2])  # shape kept
    assert moved[0, 0] == 0.0 and moved[0, 2] == 512.0  # a full-width band stays full width
    np.testing.assert_allclose(moved[1], [502.0, 0.0, 512.0, 10.0])  # slid back at the corner


def test_position_averaged_recall_golden() -> None:
    """A 10 x 10 box against 10 x 10 priors on the stride-8 lattice: IoU >= 0.5 needs
    (10 - |dx|)(10 - |dy|) >= 200 / 3, so over a uniform phase the hit rate is
    (100 / 3 - 200 / 3 ln(3 / 2)) / 16 = 0.3939 (integral over |dx|, |dy| in [0, 4])."""
    grid = PriorSet(shapes=(((10.0, 10.0),),), feature_maps=(64,), steps=(8.0,), image_size=512)
    exact = (100 / 3 - 200 / 3 * math.log(1.5)) / 16
    rel = np.array([[247.0, 247.0, 257.0, 257.0]]) / 512  # centred on the lattice point 252: a hit
    stats = compute_stats(grid, boxset(rel, size=512), 0.5, shifts=64, shift_amplitude=4.0)
    assert stats.best_iou[0] == pytest.approx(1.0)
    assert stats.hit_expected is not None and stats.iou_expected is not None
    assert stats.hit_expected[0] == pytest.approx(exact, abs=0.01)
    rep = fit_report(grid, boxset(rel, size=512), ["spot"], shifts=16)
    assert rep.recall == 1.0 and rep.recall_expected == pytest.approx(exact, abs=0.03)
    assert rep.per_class["spot"].recall_expected == rep.recall_expected
    assert fit_report(grid, boxset(rel, size=512), ["spot"], shifts=0).recall_expected is None


def test_position_averaged_agrees_with_brute_force() -> None:
    """The averaged figures are the plain ones of the shifted boxes, on both paths (lattice and
    dense, the latter also clipped)."""
    rel = random_boxes(30, seed=5)
    for grid in (small_grid(), offset_grid(), small_grid(clip=True)):
        stats = compute_stats(grid, boxset(rel), 0.5, shifts=3)
        hits, ious = np.zeros(30), np.zeros(30)
        for d in position_shifts(3, default_shift_amplitude(grid.steps)):
            moved = translate_inside(rel * grid.image_size, d, grid.image_size) / grid.image_size
            best, _ = brute_force(grid, moved, 0.5)
            hits += np.array(best) >= 0.5
            ious += best
        assert stats.hit_expected is not None and stats.iou_expected is not None
        np.testing.assert_allclose(stats.hit_expected, hits / 9)
        np.testing.assert_allclose(stats.iou_expected, ious / 9, atol=1e-5)
