"""Pascal VOC XML annotations -> `Record`s (no image decoding).

Layout: `root/Annotations/<stem>.xml` and `root/JPEGImages/<stem>.<ext>` (VOC), or the NEU-DET
spelling `root/ANNOTATIONS/` + `root/IMAGES/`; see `ANNOTATION_DIRS` / `IMAGE_DIRS`. A split file
lists one stem per line (VOC `ImageSets/Main/*.txt`; only the first token of a line is used).

Conventions handled (all present in NEU-DET, see ../shared/data/neu-det/SOURCE.md):
* the class is `<object><name>`, never the file name;
* image and XML are paired by file stem: `<filename>` is ignored (NEU-DET writes it without
  `.jpg` in 174 files);
* VOC pixel coordinates are 1-based and inclusive, so a box (xmin, ymin, xmax, ymax) covers the
  0-based continuous span [xmin - 1, xmax] x [ymin - 1, ymax]: that is what `Record.boxes_px`
  holds (xyxy, pixels of the original image);
* `<difficult>` flags are kept (missing = 0); duplicate boxes are kept as written;
* the image size comes from `<size>`; when it is absent or zero the image header is read.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssd.data.records import IMAGE_EXTENSIONS, DatasetError, Record, image_size_from_header

ANNOTATION_DIRS: tuple[str, ...] = ("Annotations", "ANNOTATIONS", "annotations")
IMAGE_DIRS: tuple[str, ...] = ("JPEGImages", "IMAGES", "images", "Images")


def _first_dir(root: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def read_split_file(split_file: Path) -> list[str]:
    """Non-empty lines of a split file, first token each (`#` starts a comment line)."""
    try:
        text = split_file.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DatasetError(split_file, "split file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(split_file, f"cannot read split file: {exc}") from exc
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line.split()[0])
    return out


def _image_index(image_dir: Path) -> dict[str, Path]:
    """stem -> image path for every image file in `image_dir` (one directory listing)."""
    index: dict[str, Path] = {}
    for entry in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(entry)
        if ext.lower() in IMAGE_EXTENSIONS and stem not in index:
            index[stem] = image_dir / entry
    return index


def _number(obj: ET.Element, tag: str, xml_path: Path, where: str) -> float:
    node = obj.find(tag)
    if node is None or node.text is None or not node.text.strip():
        raise DatasetError(xml_path, f"{where}: <{tag}> is missing")
    try:
        value = float(node.text.strip())
    except ValueError as exc:
        raise DatasetError(xml_path, f"{where}: <{tag}> is not a number: {node.text.strip()!r}") from exc
    if not np.isfinite(value):
        raise DatasetError(xml_path, f"{where}: <{tag}> is not finite: {node.text.strip()!r}")
    return value


def _size(root_el: ET.Element, xml_path: Path) -> tuple[int, int] | None:
    size = root_el.find("size")
    if size is None:
        return None
    try:
        width = int(float((size.findtext("width") or "0").strip()))
        height = int(float((size.findtext("height") or "0").strip()))
    except ValueError as exc:
        raise DatasetError(xml_path, f"<size> is not numeric: {exc}") from exc
    if width <= 0 or height <= 0:
        return None
    return width, height


def parse_voc_xml(xml_path: Path, image_path: Path, image_id: str, class_to_label: dict[str, int]) -> Record:
    """One VOC XML file -> Record (boxes xyxy, 0-based pixels; labels 1..C-1).

    Raises DatasetError naming `xml_path` for malformed XML, missing/non-numeric fields and
    class names not in `class_to_label`.
    """
    try:
        root_el = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise DatasetError(xml_path, f"malformed XML: {exc}") from exc
    except OSError as exc:
        raise DatasetError(xml_path, f"cannot read annotation: {exc}") from exc
    if root_el.tag != "annotation":
        raise DatasetError(xml_path, f"root element is <{root_el.tag}>, expected <annotation>")
    size = _size(root_el, xml_path)
    width, height = size if size is not None else image_size_from_header(image_path)
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root_el.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DatasetError(xml_path, f"object {k}: <name> is missing")
        if name not in class_to_label:
            raise DatasetError(
                xml_path,
                f"object {k}: unknown class label {name!r} (configured classes: {sorted(class_to_label)})",
            )
        bnd = obj.find("bndbox")
        where = f"object {k} ({name})"
        if bnd is None:
            raise DatasetError(xml_path, f"{where}: <bndbox> is missing")
        x1, y1, x2, y2 = (_number(bnd, t, xml_path, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((x1 - 1.0, y1 - 1.0, x2, y2))
        labels.append(class_to_label[name])
        diff_text = (obj.findtext("difficult") or "0").strip()
        try:
            difficult.append(bool(int(float(diff_text))))
        except ValueError as exc:
            raise DatasetError(xml_path, f"{where}: <difficult> is not 0/1: {diff_text!r}") from exc
    return Record(
        image_path=image_path,
        image_id=image_id,
        width=width,
        height=height,
        boxes_px=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int64).reshape(-1),
        difficult=np.asarray(difficult, bool).reshape(-1),
        annotation_path=xml_path,
    )


def read_voc_records(
    root: Path,
    split_file: Path | None,
    classes: Sequence[str],
    *,
    check_images: bool = True,
) -> list[Record]:
    """Read a Pascal VOC style dataset.

    `classes` (background excluded) give labels 1..C-1 in order. `split_file` lists stems (all
    XMLs in the annotation folder, sorted, when None). `check_images=False` skips pairing with
    image files (the path then defaults to `<image dir>/<stem>.jpg`), for annotation-only use.
    `image_id` is the stem. Raises DatasetError naming the file at fault.
    """
    root = Path(root)
    ann_dir = _first_dir(root, ANNOTATION_DIRS)
    if ann_dir is None:
        raise DatasetError(root, f"no annotation folder (looked for {', '.join(ANNOTATION_DIRS)})")
    img_dir = _first_dir(root, IMAGE_DIRS)
    if img_dir is None:
        if check_images:
            raise DatasetError(root, f"no image folder (looked for {', '.join(IMAGE_DIRS)})")
        img_dir = root / IMAGE_DIRS[0]
    class_to_label = {name: i + 1 for i, name in enumerate(classes)}
    if split_file is not None:
        split_file = Path(split_file)
        stems = read_split_file(split_file)
    else:
        stems = sorted(p[:-4] for p in os.listdir(ann_dir) if p.lower().endswith(".xml"))
    images = _image_index(img_dir) if check_images else {}
    records = []
    for stem in stems:
        xml_path = ann_dir / f"{stem}.xml"
        if not xml_path.is_file():
            source = split_file if split_file is not None else ann_dir
            raise DatasetError(source, f"{stem}: annotation {xml_path} not found")
        if check_images:
            image_path = images.get(stem)
            if image_path is None:
                raise DatasetError(xml_path, f"no image with stem {stem!r} in {img_dir}")
        else:
            image_path = img_dir / f"{stem}.jpg"
        records.append(parse_voc_xml(xml_path, image_path, stem, class_to_label))
    return records
