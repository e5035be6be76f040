"""Tianchi aluminum layout (LabelMe JSON per image) -> `Record`s.

Layout (../shared/DATA.md): folders per defect (any depth) under `root`, each image
`<name>.jpg` with `<name>.json` beside it; defect-free images have no JSON and become
background-only records. JSON fields used: `shapes[].label` (Chinese names are mapped with
`TIANCHI_LABELS`; the English names are accepted as they are), `shapes[].points` (a rectangle as
2 opposite corners or 4 corners in any order, or a polygon: all reduced to their bounding box;
a `circle` shape is [centre, point on the rim]), `imageWidth` / `imageHeight` (the image header
is read when they are absent). Points are LabelMe's continuous pixel coordinates, used as they
are (xyxy, pixels of the original image). Paths may be UTF-8 (Chinese folder names).

A split file lists image paths relative to `root`, one per line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssd.data.records import IMAGE_EXTENSIONS, DatasetError, Record, image_size_from_header
from ssd.data.voc import read_split_file

# Chinese label of the 2018 Guangdong (Tianchi) aluminum competition -> English name of the
# paper's Table 1 (insertion order = Table 1 order).
TIANCHI_LABELS: dict[str, str] = {
    "不导电": "non_conductive",
    "擦花": "scratch",
    "角位漏底": "corner_bottom_leak",
    "桔皮": "orange_peel",
    "漏底": "bottom_leak",
    "喷流": "jet",
    "漆泡": "paint_bubble",
    "起坑": "pit",
    "杂色": "variegated",
    "脏点": "dirty_spot",
}
# The ten English class names in Table-1 order (labels 1..10 when used as `data.classes`).
TIANCHI_CLASSES: tuple[str, ...] = tuple(TIANCHI_LABELS.values())
# Folder of the defect-free images in the competition data ("defect-free samples").
DEFECT_FREE_FOLDER = "无瑕疵样本"


def _load_labelme_json(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(path, f"cannot read annotation: {exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:  # some competition tools wrote GBK
            text = raw.decode("gbk")
        except UnicodeDecodeError as exc:
            raise DatasetError(path, f"annotation is neither UTF-8 nor GBK text: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(path, f"malformed JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(path, "top level must be a JSON object")
    return data


def _points(shape: dict[str, Any], path: Path, where: str) -> np.ndarray:
    pts = shape.get("points")
    if not isinstance(pts, list) or len(pts) < 2:
        raise DatasetError(path, f"{where}.points: expected at least 2 [x, y] points, got {pts!r}")
    out = []
    for p in pts:
        if (
            not isinstance(p, (list, tuple))
            or len(p) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
        ):
            raise DatasetError(path, f"{where}.points: {p!r} is not an [x, y] pair of numbers")
        if not all(math.isfinite(v) for v in p):
            raise DatasetError(path, f"{where}.points: {p!r} is not finite")
        out.append((float(p[0]), float(p[1])))
    return np.asarray(out, np.float64)


def _shape_box(shape: dict[str, Any], path: Path, where: str) -> tuple[float, float, float, float]:
    pts = _points(shape, path, where)
    if shape.get("shape_type") == "circle":
        (cx, cy), (px, py) = pts[0], pts[1]
        r = math.hypot(px - cx, py - cy)
        return cx - r, cy - r, cx + r, cy + r
    x1, y1 = pts.min(axis=0)
    x2, y2 = pts.max(axis=0)
    return float(x1), float(y1), float(x2), float(y2)


def _size(data: dict[str, Any], path: Path, image_path: Path) -> tuple[int, int]:
    w, h = data.get("imageWidth"), data.get("imageHeight")
    if w is None or h is None:
        return image_size_from_header(image_path)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (w, h)):
        raise DatasetError(path, f"imageWidth/imageHeight must be positive numbers, got {w!r}/{h!r}")
    return int(w), int(h)


def parse_labelme_json(
    json_path: Path, image_path: Path, image_id: str, class_to_label: dict[str, int]
) -> Record:
    """One LabelMe JSON -> Record (boxes xyxy pixels, labels 1..C-1, difficult from an optional
    per-shape `difficult` flag). Raises DatasetError naming `json_path`."""
    data = _load_labelme_json(json_path)
    shapes = data.get("shapes", [])
    if not isinstance(shapes, list):
        raise DatasetError(json_path, f"'shapes' must be a list, got {type(shapes).__name__}")
    width, height = _size(data, json_path, image_path)
    boxes, labels, difficult = [], [], []
    for k, shape in enumerate(shapes):
        where = f"shapes[{k}]"
        if not isinstance(shape, dict):
            raise DatasetError(json_path, f"{where}: expected an object, got {shape!r}")
        raw = shape.get("label")
        if not isinstance(raw, str) or not raw.strip():
            raise DatasetError(json_path, f"{where}.label: missing or not a string: {raw!r}")
        name = TIANCHI_LABELS.get(raw.strip(), raw.strip())
        if name not in class_to_label:
            raise DatasetError(
                json_path,
                f"{where}.label: unknown class label {raw!r} (configured classes: {sorted(class_to_label)})",
            )
        boxes.append(_shape_box(shape, json_path, where))
        labels.append(class_to_label[name])
        raw_flags = shape.get("flags")
        flags: dict[str, Any] = raw_flags if isinstance(raw_flags, dict) else {}
        difficult.append(bool(shape.get("difficult", False) or flags.get("difficult", False)))
    return Record(
        image_path=image_path,
        image_id=image_id,
        width=width,
        height=height,
        boxes_px=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int64).reshape(-1),
        difficult=np.asarray(difficult, bool).reshape(-1),
        annotation_path=json_path,
    )


def _background_record(image_path: Path, image_id: str, check_images: bool) -> Record:
    # Without `check_images` a missing image gets size 0 x 0 (annotation-only use).
    exists = check_images or image_path.is_file()
    width, height = image_size_from_header(image_path) if exists else (0, 0)
    return Record(image_path=image_path, image_id=image_id, width=width, height=height)


def _walk(root: Path) -> tuple[list[str], list[str]]:
    """Relative posix paths of all images and of JSONs without an image of the same stem."""
    images, jsons = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        stems = set()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTENSIONS:
                images.append((rel_dir / name).as_posix())
                stems.add(stem)
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() == ".json" and stem not in stems:
                jsons.append((rel_dir / name).as_posix())
    return sorted(images), jsons


def read_labelme_records(
    root: Path,
    split_file: Path | None,
    classes: Sequence[str],
    *,
    check_images: bool = True,
) -> list[Record]:
    """Read a Tianchi-layout dataset (see the module docstring).

    `split_file` lists image paths relative to `root` (all images under `root`, sorted, when
    None). `image_id` is that relative path (posix). Labels 1..C-1 follow `classes` (English
    names). Images without a JSON beside them are background-only records (their size is read
    from the image header). Raises DatasetError naming the file at fault: malformed JSON,
    unknown label, a listed image that does not exist, a JSON without its image.
    """
    root = Path(root)
    class_to_label = {name: i + 1 for i, name in enumerate(classes)}
    if split_file is not None:
        split_file = Path(split_file)
        rel_paths = read_split_file(split_file)
    else:
        if not root.is_dir():
            raise DatasetError(root, "dataset folder not found")
        rel_paths, orphans = _walk(root)
        if orphans:
            raise DatasetError(root / orphans[0], "annotation has no image of the same name beside it")
    records = []
    for rel in rel_paths:
        image_path = root / rel
        if check_images and not image_path.is_file():
            source = split_file if split_file is not None else root
            raise DatasetError(source, f"image {image_path} not found")
        json_path = image_path.with_suffix(".json")
        if json_path.is_file():
            records.append(parse_labelme_json(json_path, image_path, rel, class_to_label))
        else:
            records.append(_background_record(image_path, rel, check_images))
    return records
