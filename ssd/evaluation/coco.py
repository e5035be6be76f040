"""COCO-format files and COCO metrics (AP, AP50, AP75, APs, APm, APl) through pycocotools.

Conventions:

* COCO json boxes are xywh (top-left + size) in pixels of the original image; ours are xyxy
  pixels. Conversions go through `ssd.boxes`.
* Label space: in a GT file, categories sorted by increasing ``id`` get labels 1..C-1 (0 is
  background); class names come from the categories' ``name``. When we *write* COCO json from our
  structures, category ids equal our labels.
* ``difficult`` <-> ``iscrowd``: COCO has no "difficult" flag; its only way to exclude a GT box
  from both the TP count and the recall denominator is ``iscrowd: 1``. So difficult boxes are
  written as crowd boxes, and crowd boxes are read as difficult. (pycocotools matches detections to
  crowd boxes by intersection over the *detection* area; the VOC metrics use plain IoU.)
* Image ids may be ints or strings. pycocotools needs sortable, hashable ids: non-integer ids are
  mapped to 1..N (in sorted order) on internal copies before evaluation; the caller's dicts are
  never modified.

pycocotools is imported lazily (`coco_eval` only); its console output is captured and logged
at DEBUG level.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssd.boxes import xywh_to_xyxy, xyxy_to_xywh
from ssd.data.coco import coco_annotations
from ssd.data.records import DatasetError
from ssd.evaluation.voc import GroundTruth, json_number
from ssd.structures import Detections

logger = logging.getLogger(__name__)

ImageId = int | str

# Order of COCOeval.stats.
COCO_STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip


# --------------------------------------------------------------------------- our structures -> COCO


def gt_to_coco(
    gts: Sequence[GroundTruth],
    class_names: Sequence[str],
    image_ids: Sequence[ImageId] | None = None,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Ground truth -> a COCO GT dict (``images``, ``annotations``, ``categories``).

    `class_names[k]` names label k + 1 and becomes category id k + 1. `image_ids` default to
    1..N; `image_sizes` are (height, width) per image (written as ``height`` / ``width`` when
    given). Boxes become xywh pixels with ``area`` = w * h; difficult boxes get ``iscrowd: 1``.
    """
    ids = list(image_ids) if image_ids is not None else list(range(1, len(gts) + 1))
    if len(ids) != len(gts):
        raise ValueError(f"{len(ids)} image ids for {len(gts)} images")
    if len(set(ids)) != len(ids):
        raise ValueError("image ids must be unique")
    if image_sizes is not None and len(image_sizes) != len(gts):
        raise ValueError(f"{len(image_sizes)} image sizes for {len(gts)} images")
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, (gt, img_id) in enumerate(zip(gts, ids, strict=True)):
        image: dict[str, Any] = {"id": img_id, "file_name": str(img_id)}
        if image_sizes is not None:
            image["height"], image["width"] = int(image_sizes[i][0]), int(image_sizes[i][1])
        images.append(image)
        labels, crowd = gt.labels.tolist(), gt.difficult.tolist()
        annotations += coco_annotations(img_id, gt.boxes, labels, crowd, len(annotations) + 1)
    categories = [{"id": k, "name": name} for k, name in enumerate(class_names, start=1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detections_to_coco(
    dets: Sequence[Detections],
    image_ids: Sequence[ImageId] | None = None,
    category_ids: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Detections -> COCO results list ``[{image_id, category_id, bbox (xywh px), score}]``.

    `image_ids` default to 1..N. `category_ids[k]` is the category id of label k + 1 (default:
    the label itself)."""
    ids = list(image_ids) if image_ids is not None else list(range(1, len(dets) + 1))
    if len(ids) != len(dets):
        raise ValueError(f"{len(ids)} image ids for {len(dets)} images")
    out: list[dict[str, Any]] = []
    for det, img_id in zip(dets, ids, strict=True):
        xywh = xyxy_to_xywh(det.boxes.detach().cpu().to(torch.float64).reshape(-1, 4)).tolist()
        for box, label, score in zip(xywh, det.labels.tolist(), det.scores.tolist(), strict=True):
            cat = int(label) if category_ids is None else int(category_ids[int(label) - 1])
            out.append(
                {
                    "image_id": img_id,
                    "category_id": cat,
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )
    return out


# --------------------------------------------------------------------------- COCO files -> our structures


@dataclass
class CocoGroundTruth:
    """A COCO GT file in our structures: per image (file order) `gts`, `image_ids` as written in
    the file, `class_names` (label k + 1 = `class_names[k]`) and `category_ids` (the COCO id of
    label k + 1), plus the raw dict for pycocotools."""

    gts: list[GroundTruth]
    image_ids: list[ImageId]
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    data: dict[str, Any]

    @property
    def label_of_category(self) -> dict[int, int]:
        return {cat: k for k, cat in enumerate(self.category_ids, start=1)}


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing or malformed file raises `DatasetError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"not valid JSON ({e})") from e


def _is_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def _image_and_label(
    entry: Any,
    index: Mapping[Any, int],
    label_of: Mapping[Any, int],
    source: str,
    where: str,
    image_is: str,
    category_is: str,
) -> tuple[int, int]:
    """Check one annotation or prediction object: its `image_id` must be a key of `index` and its
    `category_id` one of `label_of` (else DatasetError "... is not {image_is}" / "{category_is}").
    Returns (image index, our label)."""
    if not isinstance(entry, dict):
        raise DatasetError(source, f"{where} must be an object")
    img_id = entry.get("image_id")
    if not _is_id(img_id) or img_id not in index:
        raise DatasetError(source, f"{where}.image_id {img_id!r} is not {image_is}")
    cat = entry.get("category_id")
    if cat not in label_of:
        raise DatasetError(source, f"{where}.category_id {cat!r} is not {category_is}")
    return index[img_id], label_of[cat]


def _bbox(value: Any, source: str, where: str, positive: bool = False) -> list[float]:
    """A [x, y, w, h] box of 4 finite numbers with w, h >= 0 (> 0 with `positive`: a ground-truth
    box of zero width or height could never be matched and would lower the AP silently)."""
    ok = isinstance(value, list | tuple) and len(value) == 4
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not ok or not all(math.isfinite(float(v)) for v in value):
        raise DatasetError(source, f"{where}.bbox must be 4 finite numbers [x, y, w, h], got {value!r}")
    if value[2] < 0 or value[3] < 0:
        raise DatasetError(source, f"{where}.bbox has a negative width or height: {value!r}")
    if positive and (value[2] == 0 or value[3] == 0):
        raise DatasetError(
            source,
            f"{where}.bbox has zero width or height: {value!r} (a ground-truth box needs a positive size; "
            "fix or delete the annotation)",
        )
    return [float(v) for v in value]


def parse_coco_gt(data: Any, source: str | Path = "<coco gt>") -> CocoGroundTruth:
    """Validate a COCO GT dict and convert it. `source` names the file in error messages
    (`DatasetError`). ``iscrowd`` boxes become difficult."""
    src = str(source)
    if not isinstance(data, dict):
        raise DatasetError(
            src, f"expected a JSON object with images/annotations/categories, got {type(data).__name__}"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(src, f"missing or non-list field '{key}'")
    cat_names: dict[int, str] = {}
    for j, cat in enumerate(data["categories"]):
        where = f"categories[{j}]"
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or isinstance(cat.get("id"), bool):
            raise DatasetError(src, f"{where}.id must be an integer")
        if not isinstance(cat.get("name"), str):
            raise DatasetError(src, f"{where}.name must be a string")
        if cat["id"] in cat_names:
            raise DatasetError(src, f"{where}: duplicate category id {cat['id']}")
        cat_names[cat["id"]] = cat["name"]
    category_ids = tuple(sorted(cat_names))
    label_of = {cat: k for k, cat in enumerate(category_ids, start=1)}
    image_ids: list[ImageId] = []
    index: dict[ImageId, int] = {}
    for j, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not _is_id(img.get("id")):
            raise DatasetError(src, f"images[{j}].id must be an integer or a string")
        if img["id"] in index:
            raise DatasetError(src, f"images[{j}]: duplicate image id {img['id']!r}")
        index[img["id"]] = len(image_ids)
        image_ids.append(img["id"])
    boxes: list[list[list[float]]] = [[] for _ in image_ids]
    labels: list[list[int]] = [[] for _ in image_ids]
    crowd: list[list[bool]] = [[] for _ in image_ids]
    for j, ann in enumerate(data["annotations"]):
        where = f"annotations[{j}]"
        i, label = _image_and_label(ann, index, label_of, src, where, "in 'images'", "in 'categories'")
        boxes[i].append(_bbox(ann.get("bbox"), src, where, positive=True))
        labels[i].append(label)
        crowd[i].append(bool(ann.get("iscrowd", 0)))
    gts = [
        GroundTruth(
            xywh_to_xyxy(torch.tensor(b, dtype=torch.float64).reshape(-1, 4)),
            torch.tensor(lab, dtype=torch.int64),
            torch.tensor(cr, dtype=torch.bool),
        )
        for b, lab, cr in zip(boxes, labels, crowd, strict=True)
    ]
    names = tuple(cat_names[c] for c in category_ids)
    return CocoGroundTruth(gts, image_ids, names, category_ids, data)


def load_coco_gt(path: str | Path) -> CocoGroundTruth:
    """Read and convert a COCO GT json file (errors name the file)."""
    return parse_coco_gt(read_json(path), path)


def parse_coco_predictions(
    data: Any, gt: CocoGroundTruth, source: str | Path = "<predictions>"
) -> list[Detections]:
    """Validate a COCO results list (``[{image_id, category_id, bbox xywh px, score}]``) against
    `gt` and convert it to one `Detections` per GT image (GT order; images without predictions
    get empty ones), each sorted by decreasing score."""
    src = str(source)
    if not isinstance(data, list):
        raise DatasetError(src, f"expected a JSON list of predictions, got {type(data).__name__}")
    index = {img_id: i for i, img_id in enumerate(gt.image_ids)}
    label_of = gt.label_of_category
    boxes: list[list[list[float]]] = [[] for _ in gt.image_ids]
    labels: list[list[int]] = [[] for _ in gt.image_ids]
    scores: list[list[float]] = [[] for _ in gt.image_ids]
    for j, pred in enumerate(data):
        where = f"[{j}]"
        i, label = _image_and_label(
            pred, index, label_of, src, where,
            "an image of the annotation file", "a category of the annotation file",
        )  # fmt: skip
        score = pred.get("score")
        if not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(score):
            raise DatasetError(src, f"{where}.score must be a finite number, got {score!r}")
        boxes[i].append(_bbox(pred.get("bbox"), src, where))
        labels[i].append(label)
        scores[i].append(float(score))
    out = []
    for b, lab, s in zip(boxes, labels, scores, strict=True):
        s_t = torch.tensor(s, dtype=torch.float64)
        order = torch.sort(s_t, descending=True, stable=True).indices
        out.append(
            Detections(
                xywh_to_xyxy(torch.tensor(b, dtype=torch.float64).reshape(-1, 4))[order],
                s_t[order],
                torch.tensor(lab, dtype=torch.int64)[order],
            )
        )
    return out


def load_coco_predictions(path: str | Path, gt: CocoGroundTruth) -> list[Detections]:
    """Read and convert a COCO results json file (errors name the file)."""
    return parse_coco_predictions(read_json(path), gt, path)


# --------------------------------------------------------------------------- pycocotools


@dataclass
class CocoResult:
    """COCOeval summary. `stats` holds the 12 COCOeval.stats under `COCO_STAT_NAMES`
    (-1 from pycocotools, "no ground truth", becomes NaN). `per_class_ap` is AP@[.5:.95] and
    `per_class_ap50` AP@0.5 per class (area all, 100 detections; NaN without ground truth).
    `precision` / `recall`: per class the interpolated PR curve at IoU 0.5 on COCO's 101 recall
    points (points with undefined precision dropped). `num_gt`: non-crowd GT boxes per class.
    The headline `map` is AP@[.5:.95] (COCO's primary metric)."""

    stats: dict[str, float]
    class_names: tuple[str, ...]
    per_class_ap: dict[str, float]
    per_class_ap50: dict[str, float]
    precision: dict[str, np.ndarray]
    recall: dict[str, np.ndarray]
    num_gt: dict[str, int]
    metric: str = "coco"

    @property
    def map(self) -> float:
        return self.stats["AP"]

    @property
    def classes_without_gt(self) -> list[str]:
        return [n for n, ap in self.per_class_ap.items() if math.isnan(ap)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``mAP`` (= AP@[.5:.95]), the 12 stats, per-class AP and AP50, num_gt."""
        return {
            "mAP": json_number(self.map),
            "metric": self.metric,
            **{k: json_number(v) for k, v in self.stats.items()},
            "per_class_ap": {n: json_number(v) for n, v in self.per_class_ap.items()},
            "per_class_ap50": {n: json_number(v) for n, v in self.per_class_ap50.items()},
            "num_gt": dict(self.num_gt),
            "classes_without_gt": self.classes_without_gt,
        }


def _import_pycocotools() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError(
            "the COCO metric needs pycocotools, which is not installed (pip install pycocotools)"
        ) from e
    return COCO, COCOeval


def _prepare_for_pycocotools(
    gt_json: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Copies that pycocotools accepts: integer image ids (non-int ids mapped to 1..N in sorted
    order), unique annotation ids, ``area`` / ``iscrowd`` filled in where missing."""
    gt = copy.deepcopy(dict(gt_json))
    preds = copy.deepcopy([dict(p) for p in predictions])
    ids = [img["id"] for img in gt["images"]]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        mapping = {old: new for new, old in enumerate(sorted(ids, key=str), start=1)}
        for img in gt["images"]:
            img["id"] = mapping[img["id"]]
        for ann in gt["annotations"]:
            ann["image_id"] = mapping.get(ann["image_id"], ann["image_id"])
        for p in preds:
            if p.get("image_id") not in mapping:
                raise ValueError(f"prediction image_id {p.get('image_id')!r} is not in the ground truth")
            p["image_id"] = mapping[p["image_id"]]
    known_images = {img["id"] for img in gt["images"]}
    known_cats = {cat["id"] for cat in gt["categories"]}
    for p in preds:
        if p.get("image_id") not in known_images:
            raise ValueError(f"prediction image_id {p.get('image_id')!r} is not in the ground truth")
        if p.get("category_id") not in known_cats:
            raise ValueError(f"prediction category_id {p.get('category_id')!r} is not in the ground truth")
    for k, ann in enumerate(gt["annotations"], start=1):
        ann["id"] = k
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    return gt, preds


def coco_eval(gt_json: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> CocoResult:
    """Run pycocotools' COCOeval (bbox) on a COCO GT dict and a COCO results list (xywh pixels).
    Raises ImportError naming pycocotools when it is missing, ValueError for predictions on
    unknown images or categories."""
    coco_cls, cocoeval_cls = _import_pycocotools()
    gt, preds = _prepare_for_pycocotools(gt_json, predictions)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        coco_gt = coco_cls()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if preds:
            coco_dt = coco_gt.loadRes(preds)
        else:  # loadRes cannot take an empty list; an empty result set scores 0 where GT exists
            coco_dt = coco_cls()
            coco_dt.dataset = {
                "images": list(gt["images"]),
                "categories": gt["categories"],
                "annotations": [],
            }
            coco_dt.createIndex()
        ev = cocoeval_cls(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    logger.debug("pycocotools output:\n%s", log.getvalue())

    def nan_if_missing(v: float) -> float:
        return math.nan if v < 0 else float(v)

    stats = {name: nan_if_missing(float(v)) for name, v in zip(COCO_STAT_NAMES, ev.stats, strict=True)}
    cat_ids = list(ev.params.catIds)
    names_by_id = {c["id"]: c["name"] for c in gt["categories"]}
    prec_all = ev.eval["precision"]  # [T, R, K, A, M]
    rec_thrs = np.asarray(ev.params.recThrs, dtype=np.float64)
    iou_thrs = np.asarray(ev.params.iouThrs)
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    a_all = list(ev.params.areaRngLbl).index("all")
    m_last = len(ev.params.maxDets) - 1
    per_ap, per_ap50, precision, recall, num_gt = {}, {}, {}, {}, {}
    counts: dict[int, int] = {}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0):
            counts[ann["category_id"]] = counts.get(ann["category_id"], 0) + 1
    for k, cat in enumerate(cat_ids):
        name = names_by_id[cat]
        p = prec_all[:, :, k, a_all, m_last]
        per_ap[name] = float(np.mean(p[p > -1])) if (p > -1).any() else math.nan
        p50 = p[t50]
        per_ap50[name] = float(np.mean(p50[p50 > -1])) if (p50 > -1).any() else math.nan
        valid = p50 > -1
        precision[name] = np.asarray(p50[valid], dtype=np.float64)
        recall[name] = rec_thrs[valid]
        num_gt[name] = counts.get(cat, 0)
    return CocoResult(
        stats=stats,
        class_names=tuple(names_by_id[c] for c in cat_ids),
        per_class_ap=per_ap,
        per_class_ap50=per_ap50,
        precision=precision,
        recall=recall,
        num_gt=num_gt,
    )
