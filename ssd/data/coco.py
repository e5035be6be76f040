"""COCO JSON annotations <-> `Record`s.

COCO boxes are xywh (top-left + size) in pixels; records hold xyxy pixels (converted with
`ssd.boxes`). Category *names* are mapped to our labels (1..C-1 in the order of the configured
class list), so a COCO file's category ids never leak into the label space. COCO has no
"difficult" flag: `iscrowd: 1` is read as difficult and written for difficult boxes (that is
the only way COCO excludes a box from both true positives and the recall denominator).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssd.boxes import xywh_to_xyxy, xyxy_to_xywh
from ssd.data.records import (
    DatasetError,
    Record,
    finite_number,
    in_coordinate_range,
    report_problem,
    short_repr,
)


def _load_json(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DatasetError(path, "annotation file not found", kind="missing_annotation") from exc
    except OSError as exc:
        raise DatasetError(path, f"cannot read annotation file: {exc}") from exc
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(path, f"malformed JSON: {exc}") from exc
    except RecursionError as exc:
        raise DatasetError(path, "malformed JSON: nested too deeply") from exc


def _field(obj: Any, key: str, kind: type | tuple[type, ...], path: Path, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DatasetError(path, f"{where}: field '{key}' is missing")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetError(path, f"{where}.{key}: unexpected value {short_repr(value)}")
    return value


def read_coco_records(
    annotation_file: Path,
    image_root: Path,
    classes: Sequence[str],
    *,
    check_images: bool = True,
    problems: list[DatasetError] | None = None,
) -> list[Record]:
    """Read a COCO detection JSON: one Record per entry of `images` (in file order).

    `image_path` = `image_root / file_name`, `image_id` = str(COCO image id). Boxes xyxy in
    pixels; labels from the category *name*'s position in `classes` (+1). Images without
    annotations become background-only records. Raises DatasetError naming the file for
    malformed JSON, missing fields, unknown category names and (with `check_images`) missing
    image files.

    With a `problems` list, problems of single entries are appended instead (with the image id
    they affect, when known): a bad `images` entry gives no record, a bad annotation is left out
    of its image's record, a missing image file still gives its record. A file that does not
    parse, or lacks `images`/`categories`, is still raised.
    """
    path = Path(annotation_file)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DatasetError(path, "top level must be a JSON object")
    class_to_label = {name: i + 1 for i, name in enumerate(classes)}
    cat_names: dict[int, str] = {}
    for k, cat in enumerate(_field(data, "categories", list, path, "file")):
        try:
            cid = _field(cat, "id", int, path, f"categories[{k}]")
            cat_names[cid] = str(_field(cat, "name", str, path, f"categories[{k}]"))
        except DatasetError as exc:
            report_problem(problems, exc)
    images: list[tuple[int, str, int, int]] = []
    seen: set[int] = set()
    bad_ids: set[int] = set()  # image ids whose entry is unusable (collecting mode)
    for k, img in enumerate(_field(data, "images", list, path, "file")):
        where = f"images[{k}]"
        iid = img.get("id") if isinstance(img, dict) else None
        iid_str = str(iid) if isinstance(iid, int) and not isinstance(iid, bool) else None
        try:
            iid = _field(img, "id", int, path, where)
            if iid in seen:
                raise DatasetError(path, f"{where}: duplicate image id {iid}")
            file_name = _field(img, "file_name", str, path, where)
            width = _field(img, "width", int, path, where)
            height = _field(img, "height", int, path, where)
            if width <= 0 or height <= 0:
                raise DatasetError(path, f"{where}: size {width}x{height} is not positive")
        except DatasetError as exc:
            exc.image_id = iid_str
            report_problem(problems, exc)
            if iid_str is not None:
                bad_ids.add(int(iid_str))
            continue
        seen.add(iid)
        images.append((iid, file_name, width, height))
    per_image: dict[int, list[tuple[list[float], int, bool]]] = {iid: [] for iid in seen}
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DatasetError(path, f"'annotations' must be a list, got {type(annotations).__name__}")
    for k, ann in enumerate(annotations):
        where = f"annotations[{k}]"
        raw_iid = ann.get("image_id") if isinstance(ann, dict) else None
        try:
            iid = _field(ann, "image_id", int, path, where)
            if iid in bad_ids:
                continue  # its image entry is already reported
            if iid not in per_image:
                raise DatasetError(path, f"{where}: image_id {iid} is not in 'images'")
            per_image[iid].append(_annotation(ann, path, where, cat_names, class_to_label))
        except DatasetError as exc:
            if isinstance(raw_iid, int) and not isinstance(raw_iid, bool) and raw_iid in per_image:
                exc.image_id = str(raw_iid)
            report_problem(problems, exc)
    records = []
    root = Path(image_root)
    for iid, file_name, width, height in images:
        image_path = root / file_name
        if check_images and not image_path.is_file():
            report_problem(
                problems,
                DatasetError(
                    path, f"image {image_path} (id {iid}) not found", kind="missing_image", image_id=str(iid)
                ),
            )
        anns = per_image[iid]
        xywh = torch.tensor([a[0] for a in anns], dtype=torch.float64).reshape(-1, 4)
        records.append(
            Record(
                image_path=image_path,
                image_id=str(iid),
                width=width,
                height=height,
                boxes_px=xywh_to_xyxy(xywh).numpy().astype(np.float32),
                labels=np.asarray([a[1] for a in anns], np.int64).reshape(-1),
                difficult=np.asarray([a[2] for a in anns], bool).reshape(-1),
                annotation_path=path,
            )
        )
    return records


def _annotation(
    ann: dict[str, Any], path: Path, where: str, cat_names: dict[int, str], class_to_label: dict[str, int]
) -> tuple[list[float], int, bool]:
    """One `annotations` entry -> (bbox xywh pixels, label, difficult); DatasetError if unusable."""
    cid = _field(ann, "category_id", int, path, where)
    if cid not in cat_names:
        raise DatasetError(path, f"{where}: category_id {cid} is not in 'categories'")
    name = cat_names[cid]
    if name not in class_to_label:
        raise DatasetError(
            path,
            f"{where}: unknown class label {name!r} (configured classes: {sorted(class_to_label)})",
            kind="unknown_class",
        )
    bbox = _field(ann, "bbox", list, path, where)
    if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        raise DatasetError(path, f"{where}.bbox: expected 4 numbers, got {short_repr(bbox)}")
    if not all(finite_number(v) for v in bbox):
        raise DatasetError(path, f"{where}.bbox: not finite: {short_repr(bbox)}")
    x, y, w, h = (float(v) for v in bbox)
    if not in_coordinate_range(x, y, x + w, y + h):
        raise DatasetError(path, f"{where}.bbox: coordinates out of range: {short_repr(bbox)}")
    return [x, y, w, h], class_to_label[name], bool(ann.get("iscrowd", 0))


def coco_image_ids(records: Sequence[Record]) -> list[int]:
    """The integer COCO image id of each record, as `records_to_coco` writes them.

    Records whose `image_id`s are all distinct decimal integers (e.g. read from a COCO file)
    keep them; otherwise ids are the positions 1..N. Predictions must use the same ids.
    """
    ids = [r.image_id for r in records]
    if ids and all(i.isdecimal() for i in ids):
        as_int = [int(i) for i in ids]
        if len(set(as_int)) == len(as_int):
            return as_int
    return list(range(1, len(records) + 1))


def coco_annotations(
    image_id: Any, boxes_xyxy: torch.Tensor, labels: Sequence[int], crowd: Sequence[bool], first_id: int
) -> list[dict[str, Any]]:
    """COCO `annotations` entries of one image: `boxes_xyxy` [N, 4] pixels (converted in float64
    to xywh, `area` = w * h), category id = label, `iscrowd` from `crowd`, ids from `first_id` on."""
    xywh = xyxy_to_xywh(boxes_xyxy.to(torch.float64).reshape(-1, 4)).tolist()
    return [
        {
            "id": first_id + k,
            "image_id": image_id,
            "category_id": int(label),
            "bbox": [float(v) for v in box],
            "area": float(box[2] * box[3]),
            "iscrowd": int(bool(c)),
        }
        for k, (box, label, c) in enumerate(zip(xywh, labels, crowd, strict=True))
    ]


def records_to_coco(records: Sequence[Record], classes: Sequence[str]) -> dict[str, Any]:
    """Records -> a COCO ground-truth dict (`images`, `annotations`, `categories`).

    Category id = our label (1..C-1, name `classes[label - 1]`); image ids from
    `coco_image_ids`; `file_name` is the record's image path as stored; boxes are xywh pixels
    with `area` = w * h; difficult boxes get `iscrowd: 1`. Loads with pycocotools.
    """
    image_ids = coco_image_ids(records)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for rec, iid in zip(records, image_ids):
        images.append(
            {"id": iid, "file_name": str(rec.image_path), "width": int(rec.width), "height": int(rec.height)}
        )
        labels = rec.labels.tolist()
        for label in labels:
            if not 1 <= label <= len(classes):
                raise ValueError(f"{rec.image_id}: label {label} outside 1..{len(classes)}")
        boxes = torch.from_numpy(np.asarray(rec.boxes_px, np.float64))
        annotations += coco_annotations(iid, boxes, labels, rec.difficult.tolist(), len(annotations) + 1)
    categories = [{"id": i + 1, "name": name, "supercategory": "none"} for i, name in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}
