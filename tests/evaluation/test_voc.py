"""VOC AP: golden tiny cases and a loop-based oracle following the VOC devkit (VOCevaldet.m)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssd.data.records import Record
from ssd.evaluation.voc import GroundTruth, area_ap, evaluate_voc, voc07_ap
from ssd.structures import Detections

# --------------------------------------------------------------------------- the oracle


def _iou_loop(a: list[float], b: list[float]) -> float:
    """IoU of two xyxy boxes, continuous coordinates (no +1); 0 when they do not overlap."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def reference_voc_ap(
    gts: list[dict], dets: list[dict], num_classes: int, iou_threshold: float, metric: str
) -> list[float]:
    """Per-class AP (labels 1..num_classes-1), written from the devkit's per-class procedure with
    plain Python loops. `gts[i]` = {"boxes", "labels", "difficult"} lists, `dets[i]` = {"boxes",
    "scores", "labels"} lists. NaN for a class without non-difficult ground truth."""
    aps = []
    for c in range(1, num_classes):
        # ground truth of the class per image, with a "detected" flag per box
        gt_c = []
        npos = 0
        for g in gts:
            boxes = [b for b, lab in zip(g["boxes"], g["labels"]) if lab == c]
            diff = [d for d, lab in zip(g["difficult"], g["labels"]) if lab == c]
            gt_c.append({"boxes": boxes, "difficult": diff, "det": [False] * len(boxes)})
            npos += sum(1 for d in diff if not d)
        # detections of the class over the whole dataset
        pool = []
        for i, d in enumerate(dets):
            for b, s, lab in zip(d["boxes"], d["scores"], d["labels"]):
                if lab == c:
                    pool.append((i, s, b))
        order = sorted(range(len(pool)), key=lambda k: -pool[k][1])  # Python's sort is stable
        tp = [0.0] * len(pool)
        fp = [0.0] * len(pool)
        for rank, k in enumerate(order):
            i, _, bb = pool[k]
            ovmax, jmax = -math.inf, -1
            for j, bbgt in enumerate(gt_c[i]["boxes"]):
                iw = min(bb[2], bbgt[2]) - max(bb[0], bbgt[0])
                ih = min(bb[3], bbgt[3]) - max(bb[1], bbgt[1])
                if iw > 0 and ih > 0:
                    ov = _iou_loop(bb, bbgt)
                    if ov > ovmax:
                        ovmax, jmax = ov, j
            if ovmax >= iou_threshold:
                if not gt_c[i]["difficult"][jmax]:
                    if not gt_c[i]["det"][jmax]:
                        tp[rank] = 1.0
                        gt_c[i]["det"][jmax] = True
                    else:
                        fp[rank] = 1.0  # multiple detection
            else:
                fp[rank] = 1.0
        if npos == 0:
            aps.append(math.nan)
            continue
        rec, prec = [], []
        ctp = cfp = 0.0
        for t, f in zip(tp, fp):
            ctp += t
            cfp += f
            rec.append(ctp / npos)
            prec.append(ctp / max(ctp + cfp, np.finfo(np.float64).eps))
        if metric == "voc07":
            ap = 0.0
            for k in range(11):
                t = k / 10
                ps = [p for r, p in zip(rec, prec) if r >= t]
                ap += (max(ps) if ps else 0.0) / 11
        else:
            mrec = [0.0, *rec, 1.0]
            mpre = [0.0, *prec, 0.0]
            for k in range(len(mpre) - 2, -1, -1):
                mpre[k] = max(mpre[k], mpre[k + 1])
            ap = 0.0
            for k in range(1, len(mrec)):
                if mrec[k] != mrec[k - 1]:
                    ap += (mrec[k] - mrec[k - 1]) * mpre[k]
        aps.append(ap)
    return aps


# --------------------------------------------------------------------------- helpers


def make_gt(boxes: list, labels: list, difficult: list | None = None) -> GroundTruth:
    diff = difficult if difficult is not None else [False] * len(labels)
    return GroundTruth(
        torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
        torch.tensor(labels, dtype=torch.int64),
        torch.tensor(diff, dtype=torch.bool),
    )


def make_det(boxes: list, scores: list, labels: list) -> Detections:
    return Detections(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(labels, dtype=torch.int64),
    )


def as_lists(gts: list[GroundTruth], dets: list[Detections]) -> tuple[list[dict], list[dict]]:
    g = [
        {"boxes": x.boxes.tolist(), "labels": x.labels.tolist(), "difficult": x.difficult.tolist()}
        for x in gts
    ]
    d = [
        {
            "boxes": x.boxes.double().tolist(),
            "scores": x.scores.double().tolist(),
            "labels": x.labels.tolist(),
        }
        for x in dets
    ]
    return g, d


def assert_matches_oracle(gts, dets, names, iou=0.5, metric="voc07") -> None:
    res = evaluate_voc(gts, dets, names, iou_threshold=iou, metric=metric)
    g, d = as_lists(gts, dets)
    ref = reference_voc_ap(g, d, len(names) + 1, iou, metric)
    for name, r in zip(names, ref):
        got = res.per_class_ap[name]
        if math.isnan(r):
            assert math.isnan(got), name
        else:
            assert got == pytest.approx(r, abs=1e-4), name
            assert abs(got - r) < 1e-9, name  # in fact the same to float64 rounding
    valid = [r for r in ref if not math.isnan(r)]
    if valid:
        assert res.map == pytest.approx(float(np.mean(valid)), abs=1e-9)
    else:
        assert math.isnan(res.map)


SQ = [0.0, 0.0, 10.0, 10.0]
SQ2 = [20.0, 20.0, 30.0, 30.0]


# --------------------------------------------------------------------------- golden values


@pytest.mark.parametrize("metric", ["voc07", "area"])
def test_perfect_detection_ap_is_one(metric: str) -> None:
    gts = [make_gt([SQ], [1]), make_gt([SQ2, SQ], [1, 2])]
    dets = [make_det([SQ], [0.9], [1]), make_det([SQ2, SQ], [0.8, 0.7], [1, 2])]
    res = evaluate_voc(gts, dets, ["a", "b"], metric=metric)
    assert res.per_class_ap == {"a": 1.0, "b": 1.0}
    assert res.map == 1.0
    assert res.num_gt == {"a": 2, "b": 1}


def test_half_recall_is_half_in_area_and_six_elevenths_in_voc07() -> None:
    # two GT, one exact TP: recall 0.5 at precision 1
    gts = [make_gt([SQ, SQ2], [1, 1])]
    dets = [make_det([SQ], [0.9], [1])]
    assert evaluate_voc(gts, dets, ["a"], metric="area").per_class_ap["a"] == pytest.approx(0.5, abs=1e-12)
    # voc07: recall thresholds 0, .1, .., .5 reached (6 of 11) at precision 1
    assert evaluate_voc(gts, dets, ["a"], metric="voc07").per_class_ap["a"] == pytest.approx(
        6 / 11, abs=1e-12
    )


def test_duplicate_detection_is_false_positive() -> None:
    # det1 TP(GT1), det2 duplicate of GT1 -> FP, det3 TP(GT2): rec .5 .5 1, prec 1 .5 2/3
    gts = [make_gt([SQ, SQ2], [1, 1])]
    dets = [make_det([SQ, [0.0, 0.0, 10.0, 9.0], SQ2], [0.9, 0.8, 0.7], [1, 1, 1])]
    area = evaluate_voc(gts, dets, ["a"], metric="area")
    assert area.per_class_ap["a"] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)
    np.testing.assert_allclose(area.recall["a"], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(area.precision["a"], [1.0, 0.5, 2 / 3])
    voc07 = evaluate_voc(gts, dets, ["a"], metric="voc07")
    assert voc07.per_class_ap["a"] == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-12)


def test_difficult_match_is_neither_tp_nor_fp() -> None:
    # the higher-scored detection hits a difficult box: ignored; recall counts 1 GT only
    gts = [make_gt([SQ, SQ2], [1, 1], [False, True])]
    dets = [make_det([SQ2, SQ], [0.9, 0.8], [1, 1])]
    for metric in ("voc07", "area"):
        res = evaluate_voc(gts, dets, ["a"], metric=metric)
        assert res.per_class_ap["a"] == 1.0
        assert res.num_gt["a"] == 1 and res.num_difficult["a"] == 1
        np.testing.assert_allclose(res.precision["a"], [1.0])  # the ignored detection is dropped
    # had the difficult box counted as an ordinary GT miss -> FP, precision would be 0.5
    gts_nd = [make_gt([SQ], [1])]
    res_fp = evaluate_voc(gts_nd, dets, ["a"], metric="area")
    assert res_fp.per_class_ap["a"] == pytest.approx(0.5)


def test_best_box_already_matched_is_fp_as_in_devkit() -> None:
    # GT1 = SQ, GT2 = [0,0,10,12]. det1 = SQ -> GT1. det2 = [0,0,10,10.5]: best IoU is GT1 (0.952,
    # already matched) although GT2 (0.875) is free -> FP in the devkit (no fallback).
    gts = [make_gt([SQ, [0.0, 0.0, 10.0, 12.0]], [1, 1])]
    dets = [make_det([SQ, [0.0, 0.0, 10.0, 10.5]], [0.9, 0.8], [1, 1])]
    res = evaluate_voc(gts, dets, ["a"], metric="area")
    assert res.per_class_ap["a"] == pytest.approx(0.5, abs=1e-12)
    assert_matches_oracle(gts, dets, ["a"], metric="area")


def test_iou_threshold_is_inclusive_and_continuous() -> None:
    # det [0,0,10,5] vs GT [0,0,10,10]: IoU exactly 0.5 with continuous coordinates
    # (with the devkit's +1 it would be 66/121 = 0.545...)
    gts = [make_gt([SQ], [1])]
    dets = [make_det([[0.0, 0.0, 10.0, 5.0]], [0.9], [1])]
    assert evaluate_voc(gts, dets, ["a"], iou_threshold=0.5).per_class_ap["a"] == 1.0
    assert evaluate_voc(gts, dets, ["a"], iou_threshold=0.51).per_class_ap["a"] == 0.0


def test_class_without_gt_is_nan_and_excluded_from_map() -> None:
    gts = [make_gt([SQ], [1]), GroundTruth.empty()]
    dets = [make_det([SQ], [0.9], [1]), make_det([SQ2], [0.5], [2])]  # "b" only has a FP
    res = evaluate_voc(gts, dets, ["a", "b", "c"])
    assert res.per_class_ap["a"] == 1.0
    assert math.isnan(res.per_class_ap["b"]) and math.isnan(res.per_class_ap["c"])
    assert res.classes_without_gt == ["b", "c"]
    assert res.map == 1.0
    d = res.to_dict()
    assert d["per_class_ap"] == {"a": 1.0, "b": None, "c": None}
    assert d["mAP"] == 1.0 and d["metric"] == "voc07" and d["num_gt"] == {"a": 1, "b": 0, "c": 0}


def test_only_difficult_gt_is_nan() -> None:
    res = evaluate_voc([make_gt([SQ], [1], [True])], [make_det([SQ], [0.9], [1])], ["a"])
    assert math.isnan(res.per_class_ap["a"]) and math.isnan(res.map)


def test_class_without_detections_is_zero() -> None:
    gts = [make_gt([SQ, SQ2], [1, 2])]
    dets = [make_det([SQ], [0.9], [1])]
    res = evaluate_voc(gts, dets, ["a", "b"])
    assert res.per_class_ap == {"a": 1.0, "b": 0.0}
    assert res.map == 0.5
    assert res.precision["b"].shape == (0,)


def test_detections_on_image_without_gt_are_false_positives() -> None:
    gts = [make_gt([SQ], [1]), GroundTruth.empty()]
    dets = [make_det([SQ], [0.5], [1]), make_det([SQ], [0.9], [1])]  # the FP ranks first
    res = evaluate_voc(gts, dets, ["a"], metric="area")
    np.testing.assert_allclose(res.precision["a"], [0.0, 0.5])
    assert res.per_class_ap["a"] == pytest.approx(0.5)


def test_wrong_class_detection_does_not_match() -> None:
    gts = [make_gt([SQ], [1])]
    dets = [make_det([SQ, SQ], [0.9, 0.8], [2, 1])]
    res = evaluate_voc(gts, dets, ["a", "b"], metric="area")
    assert res.per_class_ap["a"] == 1.0 and math.isnan(res.per_class_ap["b"])


def test_no_images_gives_nan() -> None:
    res = evaluate_voc([], [], ["a"])
    assert math.isnan(res.per_class_ap["a"]) and math.isnan(res.map)


def test_ap_helpers_golden() -> None:
    rec = torch.tensor([0.2, 0.4, 0.4, 0.8], dtype=torch.float64)
    prec = torch.tensor([1.0, 1.0, 2 / 3, 0.8], dtype=torch.float64)
    # envelope: 1 up to 0.4, 0.8 up to 0.8, 0 after
    assert area_ap(rec, prec) == pytest.approx(0.4 * 1.0 + 0.4 * 0.8)
    # t=0..0.4 -> 1 (5 points), t=0.5..0.8 -> 0.8 (4 points), t=0.9,1 -> 0
    assert voc07_ap(rec, prec) == pytest.approx((5 + 4 * 0.8) / 11)
    assert voc07_ap(torch.zeros(0), torch.zeros(0)) == 0.0
    assert area_ap(torch.zeros(0), torch.zeros(0)) == 0.0


def test_recall_exactly_three_tenths_counts_for_threshold_point_three() -> None:
    # 10 GT, 3 TP: recall 3/10 must reach the t = 0.3 point (k/10 thresholds, not arange)
    boxes = [[10.0 * k, 0.0, 10.0 * k + 5, 5.0] for k in range(10)]
    gts = [make_gt(boxes, [1] * 10)]
    dets = [make_det(boxes[:3], [0.9, 0.8, 0.7], [1, 1, 1])]
    assert evaluate_voc(gts, dets, ["a"]).per_class_ap["a"] == pytest.approx(4 / 11, abs=1e-12)


def test_from_record_and_validation() -> None:
    rec = Record(
        image_path=Path("x.jpg"),
        image_id="x",
        width=20,
        height=20,
        boxes_px=np.array([SQ], np.float32),
        labels=np.array([1], np.int64),
        difficult=np.array([True]),
    )
    gt = GroundTruth.from_record(rec)
    assert gt.boxes.dtype == torch.float64 and gt.boxes.tolist() == [SQ]
    assert gt.labels.tolist() == [1] and gt.difficult.tolist() == [True]
    with pytest.raises(ValueError, match=r"labels must lie in 1\.\.1"):
        evaluate_voc([make_gt([SQ], [2])], [make_det([], [], [])], ["a"])
    with pytest.raises(ValueError, match="detections of image 0"):
        evaluate_voc([make_gt([SQ], [1])], [make_det([SQ], [0.3], [0])], ["a"])
    with pytest.raises(ValueError, match="2 ground-truth images but 1"):
        evaluate_voc([gt, gt], [make_det([], [], [])], ["a"])
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate_voc([gt], [make_det([], [], [])], ["a"], iou_threshold=0.0)
    with pytest.raises(ValueError, match="metric"):
        evaluate_voc([gt], [make_det([], [], [])], ["a"], metric="coco")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="disagree on G"):
        GroundTruth(torch.zeros(2, 4), torch.ones(1, dtype=torch.int64), torch.zeros(2, dtype=torch.bool))


# --------------------------------------------------------------------------- oracle comparisons


HAND_CASES = {
    "difficult_and_duplicates": (
        [
            make_gt([SQ, SQ2, [5.0, 5.0, 15.0, 15.0]], [1, 1, 2], [False, True, False]),
            make_gt([[0.0, 0.0, 50.0, 40.0]], [2]),
            GroundTruth.empty(),
        ],
        [
            make_det(
                [SQ, [0.5, 0.0, 10.0, 10.0], SQ2, [5.0, 5.0, 15.0, 15.0], [6.0, 6.0, 15.0, 15.0]],
                [0.9, 0.95, 0.6, 0.7, 0.65],
                [1, 1, 1, 2, 2],
            ),
            make_det([[0.0, 0.0, 50.0, 30.0], [0.0, 0.0, 50.0, 41.0]], [0.3, 0.2], [2, 2]),
            make_det([SQ], [0.99], [2]),
        ],
        ["a", "b", "c"],
    ),
    "no_detections_at_all": (
        [make_gt([SQ], [1]), make_gt([SQ2], [2])],
        [make_det([], [], []), make_det([], [], [])],
        ["a", "b"],
    ),
    "ties_on_score": (
        [make_gt([SQ, SQ2], [1, 1]), make_gt([SQ], [1])],
        [make_det([SQ, SQ], [0.5, 0.5], [1, 1]), make_det([SQ2, SQ], [0.5, 0.5], [1, 1])],
        ["a"],
    ),
}


@pytest.mark.parametrize("metric", ["voc07", "area"])
@pytest.mark.parametrize("case", sorted(HAND_CASES))
def test_hand_cases_match_oracle(case: str, metric: str) -> None:
    gts, dets, names = HAND_CASES[case]
    assert_matches_oracle(gts, dets, names, 0.5, metric)


def random_case(seed: int, num_images: int = 25, num_classes: int = 5) -> tuple[list, list, list[str]]:
    """Seeded scenes: GT boxes (some difficult, some images empty), detections jittered from GT
    (duplicates included, sometimes with the wrong class) plus random false positives."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(num_images):
        g = int(rng.integers(0, 7)) if rng.random() > 0.15 else 0
        xy = rng.uniform(0, 200, size=(g, 2))
        wh = rng.uniform(5, 80, size=(g, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(1, num_classes, size=g)
        diff = rng.random(g) < 0.15
        gts.append(make_gt(boxes.tolist(), labels.tolist(), diff.tolist()))
        d_boxes, d_labels = [], []
        for b, lab in zip(boxes, labels):
            for _ in range(int(rng.integers(0, 3))):  # 0, 1 or 2 (duplicate) detections per GT
                jitter = rng.normal(0, 0.12, size=4) * np.array([b[2] - b[0], b[3] - b[1]] * 2)
                d_boxes.append((b + jitter).tolist())
                d_labels.append(int(lab) if rng.random() > 0.1 else int(rng.integers(1, num_classes)))
        for _ in range(int(rng.integers(0, 4))):
            xy0 = rng.uniform(0, 200, size=2)
            d_boxes.append([*xy0, *(xy0 + rng.uniform(5, 80, size=2))])
            d_labels.append(int(rng.integers(1, num_classes)))
        scores = rng.random(len(d_boxes)).tolist()
        dets.append(make_det(d_boxes, scores, d_labels))
    names = [f"class{k}" for k in range(1, num_classes)]
    return gts, dets, names


@pytest.mark.parametrize("metric", ["voc07", "area"])
@pytest.mark.parametrize("iou", [0.5, 0.75])
@pytest.mark.parametrize("seed", range(4))
def test_random_cases_match_oracle(seed: int, iou: float, metric: str) -> None:
    gts, dets, names = random_case(seed)
    assert_matches_oracle(gts, dets, names, iou, metric)


def test_random_case_exercises_the_edge_cases() -> None:
    """The random scenes really contain difficult matches, duplicates and classes of each kind."""
    gts, dets, names = random_case(0)
    res = evaluate_voc(gts, dets, names, metric="area")
    assert sum(res.num_difficult.values()) > 0
    assert any(len(g) == 0 for g in gts)
    n_points = sum(len(p) for p in res.precision.values())
    assert n_points < sum(res.num_detections.values())  # some detections hit difficult boxes
    assert all(0.0 < ap < 1.0 for ap in res.per_class_ap.values())
