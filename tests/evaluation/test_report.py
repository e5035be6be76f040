"""Markdown table and PR-curve plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssd.evaluation.coco import coco_eval, detections_to_coco, gt_to_coco
from ssd.evaluation.report import ap_table, plot_pr_curves, write_report
from ssd.evaluation.voc import GroundTruth, evaluate_voc
from ssd.structures import Detections


def test_ap_table_rows_mean_and_nan() -> None:
    table = ap_table({"a": 1.0, "b": 0.25, "c": math.nan}, 0.625, {"a": 3, "b": 2, "c": 0})
    lines = table.strip().splitlines()
    assert lines[0] == "| class | AP | GT |"
    assert lines[2] == "| a | 1.0000 | 3 |"
    assert lines[4] == "| c | n/a | 0 |"
    assert lines[5] == "| **mAP** | **0.6250** | 5 |"
    assert "excluded from the mean" in table


def test_ap_table_extra_column_mean() -> None:
    table = ap_table({"a": 0.5, "b": 0.3}, 0.4, extra_columns={"AP50": {"a": 0.9, "b": 0.7}})
    assert "| class | AP | AP50 |" in table
    assert "| **mAP** | **0.4000** | **0.8000** |" in table


def test_plot_pr_curves_writes_png(tmp_path: Path) -> None:
    names = [f"c{k}" for k in range(5)]  # 5 classes -> a 2 x 4 grid
    prec = {n: np.linspace(1.0, 0.5, 10) for n in names}
    rec = {n: np.linspace(0.1, 0.9, 10) for n in names}
    aps = dict.fromkeys(names, 0.7)
    aps["c4"] = math.nan
    prec["c4"] = np.zeros(0)
    rec["c4"] = np.zeros(0)
    path = plot_pr_curves(prec, rec, aps, tmp_path / "sub" / "pr.png", title="t")
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (1280, 560)  # figsize (3.2 * 4, 2.8 * 2) at 100 dpi


def _tiny() -> tuple[list[GroundTruth], list[Detections], list[str]]:
    gts = [GroundTruth(torch.tensor([[0.0, 0.0, 40.0, 40.0], [50, 50, 90, 90]]), torch.tensor([1, 2]),
                       torch.tensor([False, False]))]  # fmt: skip
    dets = [Detections(torch.tensor([[0.0, 0.0, 40.0, 40.0], [0, 0, 30, 30]]), torch.tensor([0.9, 0.8]),
                       torch.tensor([1, 2]))]  # fmt: skip
    return gts, dets, ["a", "b"]


def test_write_report_voc(tmp_path: Path) -> None:
    gts, dets, names = _tiny()
    res = evaluate_voc(gts, dets, names, metric="area")
    paths = write_report(res, tmp_path, {"annotations": "gt.json"})
    assert set(paths) == {"report", "plot", "json"}
    md = paths["report"].read_text()
    assert "# Evaluation (area)" in md and "- annotations: `gt.json`" in md
    assert "| a | 1.0000 | 1 |" in md and "| b | 0.0000 | 1 |" in md and "**0.5000**" in md
    assert json.loads(paths["json"].read_text()) == res.to_dict()
    assert Image.open(paths["plot"]).format == "PNG"


def test_write_report_coco(tmp_path: Path) -> None:
    gts, dets, names = _tiny()
    res = coco_eval(gt_to_coco(gts, names), detections_to_coco(dets))
    paths = write_report(res, tmp_path)
    md = paths["report"].read_text()
    assert "AP@[.5:.95]" in md and "AP50" in md and "APs" in md
    ap50 = json.loads(paths["json"].read_text())["per_class_ap50"]
    assert ap50["a"] == pytest.approx(1.0) and ap50["b"] == 0.0
