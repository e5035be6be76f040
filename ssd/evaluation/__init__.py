"""Evaluation: VOC per-class AP / mAP (voc.py), COCO metrics via pycocotools and COCO-format
files (coco.py), Markdown tables and PR-curve plots (report.py)."""

from ssd.evaluation.coco import (
    CocoGroundTruth,
    CocoResult,
    coco_eval,
    detections_to_coco,
    gt_to_coco,
    load_coco_gt,
    load_coco_predictions,
    parse_coco_gt,
    parse_coco_predictions,
    read_json,
)
from ssd.evaluation.report import ap_table, plot_pr_curves, write_report
from ssd.evaluation.voc import GroundTruth, VOCResult, area_ap, evaluate_voc, voc07_ap

__all__ = [
    "CocoGroundTruth",
    "CocoResult",
    "GroundTruth",
    "VOCResult",
    "ap_table",
    "area_ap",
    "coco_eval",
    "detections_to_coco",
    "evaluate_voc",
    "gt_to_coco",
    "load_coco_gt",
    "load_coco_predictions",
    "parse_coco_gt",
    "parse_coco_predictions",
    "plot_pr_curves",
    "read_json",
    "voc07_ap",
    "write_report",
]
