"""Pascal VOC XML annotations -> `Record`s (no image decoding).

Layout: `root/Annotations/<stem>.xml` and `root/JPEGImages/<stem>.<ext>` (VOC), or the NEU-DET
spelling `root/ANNOTATIONS/` + `root/IMAGES/`; see `ANNOTATION_DIRS` / `IMAGE_DIRS`. A split file
lists one stem per line (VOC `ImageSets/Main/*.txt`; only the first token of a line is used).

Conventions handled (all present in NEU-DET, the Northeastern University steel-defect set):
* the class is `<object><name>`, never the file name;
* image and XML are paired by file stem: `<filename>` is ignored (NEU-DET writes it without
  `.jpg` in 174 files);
* VOC pixel coordinates are 1-based and inclusive, so a box (xmin, ymin, xmax, ymax) covers the
  0-based continuous span [xmin - 1, xmax] x [ymin - 1, ymax]: that is what `Record.boxes_px`
  holds (xyxy, pixels of the original image);
* `<difficult>` flags are kept (missing = 0); duplicate boxes are kept as written;
* the image size comes from `<size>`; when it is absent or zero the image header is read.

Readers raise a DatasetError on the first problem; given a `problems` list they collect instead
(`ssd.data.check`): every problem of every file is appended (a bad object is left out of its
record, a file that cannot be parsed gives no record) and the harmless quirks are noted too
(`<filename>` without extension or naming another file).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssd.data.image import image_size_from_header
from ssd.data.records import (
    IMAGE_EXTENSIONS,
    DatasetError,
    Record,
    in_coordinate_range,
    report_problem,
)

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
        raise DatasetError(split_file, "split file not found", kind="layout") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(split_file, f"cannot read split file: {exc}", kind="layout") from exc
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


def _number(obj: ET.Element, tag: str, xml_path: Path, where: str, image_id: str | None = None) -> float:
    node = obj.find(tag)
    if node is None or node.text is None or not node.text.strip():
        raise DatasetError(xml_path, f"{where}: <{tag}> is missing", image_id=image_id)
    try:
        value = float(node.text.strip())
    except ValueError as exc:
        raise DatasetError(
            xml_path, f"{where}: <{tag}> is not a number: {node.text.strip()!r}", image_id=image_id
        ) from exc
    if not np.isfinite(value):
        raise DatasetError(
            xml_path, f"{where}: <{tag}> is not finite: {node.text.strip()!r}", image_id=image_id
        )
    return value


def _int_text(text: str) -> int:
    """An integer written as an integer or a float ("200", "200.0"); ValueError otherwise."""
    value = float(text.strip())
    if not np.isfinite(value):
        raise ValueError(f"not finite: {text.strip()!r}")
    return int(value)


def _size(root_el: ET.Element, xml_path: Path, image_id: str | None = None) -> tuple[int, int] | None:
    size = root_el.find("size")
    if size is None:
        return None
    try:
        width = _int_text(size.findtext("width") or "0")
        height = _int_text(size.findtext("height") or "0")
    except ValueError as exc:
        raise DatasetError(xml_path, f"<size> is not numeric: {exc}", image_id=image_id) from exc
    if width <= 0 or height <= 0:
        return None
    return width, height


def _depth(root_el: ET.Element) -> int | None:
    """`<size><depth>` when it is a positive integer (anything else: unstated)."""
    try:
        depth = _int_text(root_el.findtext("size/depth") or "0")
    except ValueError:
        return None
    return depth if depth > 0 else None


def _note_filename(
    root_el: ET.Element, xml_path: Path, image_path: Path, image_id: str, problems: list[DatasetError]
) -> None:
    """Note a `<filename>` that differs from the paired image's name (pairing is by stem)."""
    written = (root_el.findtext("filename") or "").strip()
    if not written or written == image_path.name:
        return
    if written == image_path.stem:
        problems.append(
            DatasetError(
                xml_path,
                f"<filename> {written!r} lacks the extension of {image_path.name} (paired by stem)",
                kind="filename_without_extension",
                image_id=image_id,
            )
        )
    else:
        problems.append(
            DatasetError(
                xml_path,
                f"<filename> {written!r} names another file than the paired image {image_path.name} "
                "(paired by stem)",
                kind="filename_mismatch",
                image_id=image_id,
            )
        )


def parse_voc_xml(
    xml_path: Path,
    image_path: Path,
    image_id: str,
    class_to_label: dict[str, int],
    problems: list[DatasetError] | None = None,
) -> Record:
    """One VOC XML file -> Record (boxes xyxy, 0-based pixels; labels 1..C-1).

    Raises DatasetError naming `xml_path` for malformed XML, missing/non-numeric fields and
    class names not in `class_to_label`. With a `problems` list, object-level problems are
    appended instead (the object is left out) and `<filename>` quirks are noted; problems of the
    whole file (it does not parse, no size anywhere) are still raised.
    """
    try:
        root_el = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise DatasetError(xml_path, f"malformed XML: {exc}", image_id=image_id) from exc
    except FileNotFoundError as exc:
        raise DatasetError(
            xml_path, "annotation not found", kind="missing_annotation", image_id=image_id
        ) from exc
    except (OSError, ValueError, LookupError, RecursionError) as exc:
        # ValueError/LookupError: an unknown or impossible encoding declaration
        raise DatasetError(xml_path, f"cannot read annotation: {exc}", image_id=image_id) from exc
    if root_el.tag != "annotation":
        raise DatasetError(
            xml_path, f"root element is <{root_el.tag}>, expected <annotation>", image_id=image_id
        )
    size = _size(root_el, xml_path, image_id)
    if size is None:
        try:
            size = image_size_from_header(image_path)
        except DatasetError as exc:
            raise DatasetError(
                xml_path,
                f"no <size> and the image header cannot be read: {exc}",
                kind=exc.kind,
                image_id=image_id,
            ) from exc
    width, height = size
    if problems is not None:
        _note_filename(root_el, xml_path, image_path, image_id, problems)
    parsed = []
    for k, obj in enumerate(root_el.iter("object")):
        try:
            parsed.append(_parse_object(obj, k, xml_path, image_id, class_to_label))
        except DatasetError as exc:
            report_problem(problems, exc)
    return Record.from_parsed(
        image_path, image_id, width, height, parsed, annotation_path=xml_path, depth=_depth(root_el)
    )


def _parse_object(
    obj: ET.Element, k: int, xml_path: Path, image_id: str, class_to_label: dict[str, int]
) -> tuple[tuple[float, float, float, float], int, bool]:
    """One `<object>` -> (box xyxy 0-based pixels, label, difficult); DatasetError if unusable."""
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise DatasetError(xml_path, f"object {k}: <name> is missing", image_id=image_id)
    if name not in class_to_label:
        raise DatasetError(
            xml_path,
            f"object {k}: unknown class label {name!r} (configured classes: {sorted(class_to_label)})",
            kind="unknown_class",
            image_id=image_id,
        )
    bnd = obj.find("bndbox")
    where = f"object {k} ({name})"
    if bnd is None:
        raise DatasetError(xml_path, f"{where}: <bndbox> is missing", image_id=image_id)
    x1, y1, x2, y2 = (_number(bnd, t, xml_path, where, image_id) for t in ("xmin", "ymin", "xmax", "ymax"))
    diff_text = (obj.findtext("difficult") or "0").strip()
    try:
        diff = bool(_int_text(diff_text))
    except ValueError as exc:
        raise DatasetError(
            xml_path, f"{where}: <difficult> is not 0/1: {diff_text!r}", image_id=image_id
        ) from exc
    if not in_coordinate_range(x1 - 1.0, y1 - 1.0, x2, y2):
        raise DatasetError(xml_path, f"{where}: <bndbox> coordinates out of range", image_id=image_id)
    return (x1 - 1.0, y1 - 1.0, x2, y2), class_to_label[name], diff


def read_voc_records(
    root: Path,
    split_file: Path | None,
    classes: Sequence[str],
    *,
    check_images: bool = True,
    problems: list[DatasetError] | None = None,
) -> list[Record]:
    """Read a Pascal VOC style dataset.

    `classes` (background excluded) give labels 1..C-1 in order. `split_file` lists stems (all
    XMLs in the annotation folder, sorted, when None). `check_images=False` skips pairing with
    image files (the path then defaults to `<image dir>/<stem>.jpg`), for annotation-only use.
    `image_id` is the stem. Raises DatasetError naming the file at fault.

    With a `problems` list every per-file problem is appended instead of raised and the records
    that could be parsed are returned (see the module docstring); a missing annotation or image
    folder or an unreadable split file is still raised.
    """
    root = Path(root)
    ann_dir = _first_dir(root, ANNOTATION_DIRS)
    if ann_dir is None:
        raise DatasetError(
            root, f"no annotation folder (looked for {', '.join(ANNOTATION_DIRS)})", kind="layout"
        )
    img_dir = _first_dir(root, IMAGE_DIRS)
    if img_dir is None:
        if check_images:
            raise DatasetError(root, f"no image folder (looked for {', '.join(IMAGE_DIRS)})", kind="layout")
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
            report_problem(
                problems,
                DatasetError(
                    source,
                    f"{stem}: annotation {xml_path} not found",
                    kind="missing_annotation",
                    image_id=stem,
                ),
            )
            continue
        image_missing = False
        if check_images:
            found = images.get(stem)
            if found is None:
                report_problem(
                    problems,
                    DatasetError(
                        xml_path,
                        f"no image with stem {stem!r} in {img_dir}",
                        kind="missing_image",
                        image_id=stem,
                    ),
                )
                image_missing = True
                found = img_dir / f"{stem}.jpg"
            image_path = found
        else:
            image_path = img_dir / f"{stem}.jpg"
        found_here: list[DatasetError] | None = None if problems is None else []
        try:
            records.append(parse_voc_xml(xml_path, image_path, stem, class_to_label, found_here))
        except DatasetError as exc:
            if not (image_missing and exc.kind == "missing_image"):  # reported above already
                report_problem(problems, exc)
        if problems is not None and found_here:
            # without the image, `<filename>` was compared with a guessed name: drop those notes
            problems.extend(p for p in found_here if not (image_missing and p.kind.startswith("filename")))
    return records
