"""COCO-format conversion, readers and the pycocotools metrics (checked against COCOeval run
directly, including per-class AP from single-category COCOeval runs)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssd.data.records import DatasetError
from ssd.evaluation.coco import (
    COCO_STAT_NAMES,
    coco_eval,
    detections_to_coco,
    gt_to_coco,
    load_coco_gt,
    load_coco_predictions,
    parse_coco_gt,
    parse_coco_predictions,
)
from ssd.evaluation.voc import GroundTruth, evaluate_voc
from ssd.structures import Detections
from tests.evaluation.test_voc import random_case


def scaled_case(seed: int) -> tuple[list[GroundTruth], list[Detections], list[str]]:
    """`random_case` with boxes scaled x0.6 / x3 on alternate images so that small, medium and
    large COCO areas all occur."""
    gts, dets, names = random_case(seed, num_images=20)
    scale = [0.6 if i % 2 else 3.0 for i in range(len(gts))]
    gts = [GroundTruth(g.boxes * s, g.labels, g.difficult) for g, s in zip(gts, scale)]
    dets = [Detections(d.boxes * s, d.scores, d.labels) for d, s in zip(dets, scale)]
    return gts, dets, names


def direct_cocoeval(gt_json: dict, preds: list[dict], cat_ids: list[int] | None = None) -> np.ndarray:
    """pycocotools used as documented, on copies; returns COCOeval.stats."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt_json)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(preds))
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def nan_to_minus_one(v: float) -> float:
    return -1.0 if math.isnan(v) else v


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_metrics_equal_direct_cocoeval(seed: int, capsys: pytest.CaptureFixture[str]) -> None:
    gts, dets, names = scaled_case(seed)
    gt_json = gt_to_coco(gts, names)
    preds = detections_to_coco(dets)
    gt_before, preds_before = copy.deepcopy(gt_json), copy.deepcopy(preds)
    res = coco_eval(gt_json, preds)
    assert gt_json == gt_before and preds == preds_before  # inputs untouched
    assert capsys.readouterr().out == ""  # pycocotools chatter is captured, not printed
    ref = direct_cocoeval(gt_json, preds)
    got = np.array([nan_to_minus_one(res.stats[k]) for k in COCO_STAT_NAMES])
    np.testing.assert_array_equal(got, ref)
    assert res.map == res.stats["AP"]
    assert {"APs", "APm", "APl"} <= set(res.stats) and all(res.stats[k] >= 0 for k in ("APs", "APm", "APl"))
    # per class: a COCOeval restricted to that one category
    for k, name in enumerate(names, start=1):
        ref_k = direct_cocoeval(gt_json, preds, cat_ids=[k])
        assert res.per_class_ap[name] == pytest.approx(ref_k[0], abs=1e-12)
        assert res.per_class_ap50[name] == pytest.approx(ref_k[1], abs=1e-12)
    assert np.mean(list(res.per_class_ap.values())) == pytest.approx(res.stats["AP"], abs=1e-12)
    d = coco_eval(gt_json, preds).to_dict()
    assert d["mAP"] == d["AP"] == pytest.approx(ref[0])
    assert d["AP50"] == pytest.approx(ref[1]) and d["AP75"] == pytest.approx(ref[2])
    assert set(d["per_class_ap50"]) == set(names)
    json.dumps(d, allow_nan=False)


def test_string_image_ids_give_the_same_metrics() -> None:
    gts, dets, names = scaled_case(2)
    ids = [f"img_{i:03d}" for i in range(len(gts))]
    by_str = coco_eval(gt_to_coco(gts, names, ids), detections_to_coco(dets, ids)).to_dict()
    by_int = coco_eval(gt_to_coco(gts, names), detections_to_coco(dets)).to_dict()
    assert by_str == by_int


def test_perfect_and_empty_predictions() -> None:
    gts = [
        GroundTruth(torch.tensor([[0.0, 0.0, 40.0, 40.0]]), torch.tensor([1]), torch.tensor([False])),
        GroundTruth(torch.tensor([[10.0, 10.0, 200.0, 150.0]]), torch.tensor([2]), torch.tensor([False])),
    ]
    names = ["a", "b", "c"]
    perfect = [Detections(g.boxes, torch.tensor([0.9]), g.labels) for g in gts]
    gt_json = gt_to_coco(gts, names)
    res = coco_eval(gt_json, detections_to_coco(perfect)).to_dict()
    assert res["AP"] == pytest.approx(1.0) and res["per_class_ap"]["a"] == pytest.approx(1.0)
    assert res["per_class_ap"]["c"] is None and res["classes_without_gt"] == ["c"]
    empty = coco_eval(gt_json, []).to_dict()
    assert empty["AP"] == 0.0 and empty["AP50"] == 0.0
    assert empty["per_class_ap"] == {"a": 0.0, "b": 0.0, "c": None}


def test_unknown_prediction_ids_raise() -> None:
    gts, _, names = scaled_case(0)
    gt_json = gt_to_coco(gts, names)
    with pytest.raises(ValueError, match="image_id 999"):
        coco_eval(gt_json, [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])
    with pytest.raises(ValueError, match="category_id 42"):
        coco_eval(gt_json, [{"image_id": 1, "category_id": 42, "bbox": [0, 0, 1, 1], "score": 0.5}])


def test_round_trip_through_json(tmp_path: Path) -> None:
    gts, dets, names = random_case(3)
    ids: list[int | str] = [f"im{i}" for i in range(len(gts))]
    sizes = [(480, 640)] * len(gts)
    (tmp_path / "gt.json").write_text(json.dumps(gt_to_coco(gts, names, ids, sizes)))
    (tmp_path / "pred.json").write_text(json.dumps(detections_to_coco(dets, ids)))
    gt = load_coco_gt(tmp_path / "gt.json")
    assert gt.class_names == tuple(names) and gt.image_ids == ids
    assert gt.data["images"][0]["width"] == 640
    for a, b in zip(gt.gts, gts):
        torch.testing.assert_close(a.boxes, b.boxes, rtol=0, atol=1e-9)
        assert a.labels.tolist() == b.labels.tolist() and a.difficult.tolist() == b.difficult.tolist()
    got = load_coco_predictions(tmp_path / "pred.json", gt)
    for a, b in zip(got, dets):
        order = torch.sort(b.scores.double(), descending=True, stable=True).indices
        torch.testing.assert_close(a.boxes, b.boxes.double()[order], rtol=0, atol=1e-4)
        assert a.labels.tolist() == b.labels[order].tolist()
        assert torch.all(a.scores[:-1] >= a.scores[1:])
    # the VOC metric on the files equals the VOC metric on the structures
    r_files = evaluate_voc(gt.gts, got, gt.class_names)
    r_mem = evaluate_voc(gts, dets, names)
    for name in names:
        assert r_files.per_class_ap[name] == pytest.approx(r_mem.per_class_ap[name], abs=1e-6)


def test_reader_maps_sparse_category_ids_and_crowd() -> None:
    data = {
        "images": [{"id": 5}, {"id": 9}],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
        "annotations": [
            {"id": 1, "image_id": 9, "category_id": 7, "bbox": [1, 2, 3, 4]},
            {"id": 2, "image_id": 9, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 1},
        ],
    }
    gt = parse_coco_gt(data)
    assert gt.class_names == ("three", "seven") and gt.category_ids == (3, 7)
    assert len(gt.gts[0]) == 0
    assert gt.gts[1].boxes.tolist() == [[1.0, 2.0, 4.0, 6.0], [0.0, 0.0, 10.0, 10.0]]
    assert gt.gts[1].labels.tolist() == [2, 1] and gt.gts[1].difficult.tolist() == [False, True]
    dets = parse_coco_predictions(
        [{"image_id": 9, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.7}], gt, "p.json"
    )
    assert dets[1].labels.tolist() == [1] and len(dets[0]) == 0
    # the crowd box is "difficult": the detection on it is ignored, class "three" has no GT
    res = evaluate_voc(gt.gts, dets, gt.class_names)
    assert math.isnan(res.per_class_ap["three"]) and res.per_class_ap["seven"] == 0.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a JSON object"),
        ({"images": [], "annotations": []}, "'categories'"),
        (
            {"images": [{"id": 1}], "annotations": [], "categories": [{"id": "x", "name": "a"}]},
            r"categories\[0\].id",
        ),
        ({"images": [{"id": 1}, {"id": 1}], "annotations": [], "categories": []}, "duplicate image id 1"),
        (
            {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
             "annotations": [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]},
            r"annotations\[0\].image_id 2",
        ),
        (
            {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
             "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1]}]},
            "negative width",
        ),
    ],
)  # fmt: skip
def test_gt_reader_errors_name_the_source(data: object, message: str) -> None:
    with pytest.raises(DatasetError, match=message) as info:
        parse_coco_gt(data, "gt.json")
    assert str(info.value).startswith("gt.json:")


def test_prediction_reader_errors_and_files(tmp_path: Path) -> None:
    gt = parse_coco_gt({"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}], "annotations": []})
    good = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}
    for bad, message in [
        ({}, "expected a JSON list"),
        ([{**good, "image_id": 2}], r"\[0\].image_id 2"),
        ([{**good, "category_id": 2}], r"\[0\].category_id 2"),
        ([{**good, "score": None}], "score"),
        ([{**good, "bbox": [0, 0, 1]}], "bbox"),
    ]:
        with pytest.raises(DatasetError, match=message):
            parse_coco_predictions(bad, gt, "p.json")
    with pytest.raises(DatasetError, match="file not found"):
        load_coco_gt(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"broken\.json: not valid JSON"):
        load_coco_predictions(tmp_path / "broken.json", gt)


def test_missing_pycocotools_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)  # makes the import fail
    gt_json = gt_to_coco([GroundTruth.empty()], ["a"])
    with pytest.raises(ImportError, match="pip install pycocotools"):
        coco_eval(gt_json, [])
