"""Tianchi aluminum layout (LabelMe JSON per image) -> `Record`s.

Layout of the Tianchi 2018 aluminum data: folders per defect (any depth) under `root`, each image
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

from ssd.data.image import image_size_from_header
from ssd.data.records import (
    IMAGE_EXTENSIONS,
    DatasetError,
    Record,
    finite_number,
    in_coordinate_range,
    report_problem,
    short_repr,
)
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


def _load_labelme_json(path: Path, image_id: str | None = None) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(path, f"cannot read annotation: {exc}", image_id=image_id) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:  # some competition tools wrote GBK
            text = raw.decode("gbk")
        except UnicodeDecodeError as exc:
            raise DatasetError(
                path, f"annotation is neither UTF-8 nor GBK text: {exc}", image_id=image_id
            ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(path, f"malformed JSON: {exc}", image_id=image_id) from exc
    except RecursionError as exc:
        raise DatasetError(path, "malformed JSON: nested too deeply", image_id=image_id) from exc
    if not isinstance(data, dict):
        raise DatasetError(path, "top level must be a JSON object", image_id=image_id)
    return data


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _points(shape: dict[str, Any], path: Path, where: str) -> np.ndarray:
    pts = shape.get("points")
    if not isinstance(pts, list) or len(pts) < 2:
        raise DatasetError(path, f"{where}.points: expected at least 2 [x, y] points, got {short_repr(pts)}")
    out = []
    for p in pts:
        if not isinstance(p, (list, tuple)) or len(p) != 2 or not all(_is_number(v) for v in p):
            raise DatasetError(path, f"{where}.points: {short_repr(p)} is not an [x, y] pair of numbers")
        if not all(finite_number(v) for v in p):
            raise DatasetError(path, f"{where}.points: {short_repr(p)} is not finite")
        out.append((float(p[0]), float(p[1])))
    return np.asarray(out, np.float64)


def _shape_box(shape: dict[str, Any], path: Path, where: str) -> tuple[float, float, float, float]:
    pts = _points(shape, path, where)
    if shape.get("shape_type") == "circle":
        (cx, cy), (px, py) = (float(v) for v in pts[0]), (float(v) for v in pts[1])
        r = math.hypot(px - cx, py - cy)  # Python floats: overflow gives inf, caught below
        box = (cx - r, cy - r, cx + r, cy + r)
    else:
        x1, y1 = pts.min(axis=0)
        x2, y2 = pts.max(axis=0)
        box = (float(x1), float(y1), float(x2), float(y2))
    if not in_coordinate_range(*box):
        raise DatasetError(path, f"{where}.points: coordinates out of range")
    return box


def _size(data: dict[str, Any], path: Path, image_path: Path) -> tuple[int, int]:
    w, h = data.get("imageWidth"), data.get("imageHeight")
    if w is None or h is None:
        try:
            return image_size_from_header(image_path)
        except DatasetError as exc:
            raise DatasetError(
                path, f"no imageWidth/imageHeight and the image header cannot be read: {exc}", kind=exc.kind
            ) from exc
    if not all(finite_number(v) and v > 0 for v in (w, h)):
        raise DatasetError(
            path, f"imageWidth/imageHeight must be positive numbers, got {short_repr(w)}/{short_repr(h)}"
        )
    return int(w), int(h)


def parse_labelme_json(
    json_path: Path,
    image_path: Path,
    image_id: str,
    class_to_label: dict[str, int],
    problems: list[DatasetError] | None = None,
) -> Record:
    """One LabelMe JSON -> Record (boxes xyxy pixels, labels 1..C-1, difficult from an optional
    per-shape `difficult` flag). Raises DatasetError naming `json_path`. With a `problems` list,
    problems of single shapes are appended instead (the shape is left out); problems of the
    whole file are still raised."""
    try:
        data = _load_labelme_json(json_path, image_id)
        shapes = data.get("shapes", [])
        if not isinstance(shapes, list):
            raise DatasetError(json_path, f"'shapes' must be a list, got {type(shapes).__name__}")
        width, height = _size(data, json_path, image_path)
    except DatasetError as exc:
        exc.image_id = image_id
        raise
    parsed = []
    for k, shape in enumerate(shapes):
        try:
            parsed.append(_parse_shape(shape, k, json_path, class_to_label))
        except DatasetError as exc:
            exc.image_id = image_id
            report_problem(problems, exc)
    return Record.from_parsed(image_path, image_id, width, height, parsed, annotation_path=json_path)


def _parse_shape(
    shape: Any, k: int, json_path: Path, class_to_label: dict[str, int]
) -> tuple[tuple[float, float, float, float], int, bool]:
    """One `shapes[k]` entry -> (box xyxy pixels, label, difficult); DatasetError if unusable."""
    where = f"shapes[{k}]"
    if not isinstance(shape, dict):
        raise DatasetError(json_path, f"{where}: expected an object, got {short_repr(shape)}")
    raw = shape.get("label")
    if not isinstance(raw, str) or not raw.strip():
        raise DatasetError(json_path, f"{where}.label: missing or not a string: {short_repr(raw)}")
    name = TIANCHI_LABELS.get(raw.strip(), raw.strip())
    if name not in class_to_label:
        raise DatasetError(
            json_path,
            f"{where}.label: unknown class label {raw!r} (configured classes: {sorted(class_to_label)})",
            kind="unknown_class",
        )
    box = _shape_box(shape, json_path, where)
    raw_flags = shape.get("flags")
    flags: dict[str, Any] = raw_flags if isinstance(raw_flags, dict) else {}
    return box, class_to_label[name], bool(shape.get("difficult", False) or flags.get("difficult", False))


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
    problems: list[DatasetError] | None = None,
) -> list[Record]:
    """Read a Tianchi-layout dataset (see the module docstring).

    `split_file` lists image paths relative to `root` (all images under `root`, sorted, when
    None). `image_id` is that relative path (posix). Labels 1..C-1 follow `classes` (English
    names). Images without a JSON beside them are background-only records (their size is read
    from the image header). Raises DatasetError naming the file at fault: malformed JSON,
    unknown label, a listed image that does not exist, a JSON without its image.

    With a `problems` list every per-file problem is appended instead of raised: a listed image
    that is missing still gives the record of its JSON (a 0 x 0 record without one), a JSON
    that cannot be parsed gives no record, a bad shape is left out. A missing dataset folder or
    an unreadable split file is still raised.
    """
    root = Path(root)
    class_to_label = {name: i + 1 for i, name in enumerate(classes)}
    if split_file is not None:
        split_file = Path(split_file)
        rel_paths = read_split_file(split_file)
    else:
        if not root.is_dir():
            raise DatasetError(root, "dataset folder not found", kind="layout")
        rel_paths, orphans = _walk(root)
        for orphan in orphans:
            report_problem(
                problems,
                DatasetError(
                    root / orphan, "annotation has no image of the same name beside it", kind="missing_image"
                ),
            )
    records = []
    for rel in rel_paths:
        image_path = root / rel
        try:
            json_path = image_path.with_suffix(".json")
        except ValueError as exc:  # "", ".", "..": not a file name
            source = split_file if split_file is not None else root
            error = DatasetError(source, f"{rel!r} is not an image path: {exc}", kind="layout")
            report_problem(problems, error)
            continue
        image_missing = check_images and not image_path.is_file()
        if image_missing:
            source = split_file if split_file is not None else root
            report_problem(
                problems,
                DatasetError(source, f"image {image_path} not found", kind="missing_image", image_id=rel),
            )
        try:
            if json_path.is_file():
                records.append(parse_labelme_json(json_path, image_path, rel, class_to_label, problems))
            else:
                records.append(_background_record(image_path, rel, check_images and not image_missing))
        except DatasetError as exc:
            if not (image_missing and exc.kind == "missing_image"):  # reported above already
                exc.image_id = rel
                report_problem(problems, exc)
    return records
