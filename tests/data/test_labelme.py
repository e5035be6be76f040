"""Tianchi LabelMe reader: Chinese labels, rectangles in any order, polygons, UTF-8 paths,
defect-free images, errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ssd.data.labelme import TIANCHI_CLASSES, TIANCHI_LABELS, read_labelme_records
from ssd.data.records import DatasetError
from tests.data import write_image


def _shape(label: str, points: list[list[float]], shape_type: str | None = "rectangle") -> dict[str, Any]:
    return {"label": label, "points": points, "shape_type": shape_type, "flags": {}}


def _write_json(path: Path, shapes: list[dict[str, Any]], size: tuple[int, int] | None = (64, 48)) -> None:
    doc: dict[str, Any] = {"version": "3.3.1", "shapes": shapes, "imagePath": path.with_suffix(".jpg").name}
    if size is not None:
        doc["imageWidth"], doc["imageHeight"] = size
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")


def _tianchi(root: Path) -> Path:
    # 擦花: a 2-point rectangle given bottom-right first, and a 4-point one starting top-right
    img = write_image(root / "擦花" / "擦花20180830对照样本.jpg", 64, 48)
    _write_json(
        img.with_suffix(".json"),
        [
            _shape("擦花", [[30, 40], [10, 5]]),
            _shape("脏点", [[50, 2], [60, 2], [60, 12], [50, 12]], "polygon"),
        ],
    )
    # 漏底: a polygon (reduced to its box), an English label, a 2-point box bottom-left/top-right
    img = write_image(root / "漏底" / "漏底_1.jpg", 64, 48)
    _write_json(
        img.with_suffix(".json"),
        [
            _shape("漏底", [[0, 20.5], [63.5, 18], [64, 30], [32, 33], [1, 31]], "polygon"),
            _shape("pit", [[5, 47], [40, 44]]),
        ],
    )
    # a defect-free image: no JSON, size from the header
    write_image(root / "无瑕疵样本" / "正常.jpg", 32, 24)
    return root


def test_reads_tianchi_layout_without_split(tmp_path: Path) -> None:
    root = _tianchi(tmp_path / "铝材")
    records = read_labelme_records(root, None, TIANCHI_CLASSES)
    ids = [r.image_id for r in records]
    assert ids == sorted(ids) == ["擦花/擦花20180830对照样本.jpg", "无瑕疵样本/正常.jpg", "漏底/漏底_1.jpg"]
    scratch, free, leak = records
    assert scratch.image_path == root / "擦花" / "擦花20180830对照样本.jpg"
    assert scratch.annotation_path == root / "擦花" / "擦花20180830对照样本.json"
    np.testing.assert_array_equal(scratch.boxes_px, [[10, 5, 30, 40], [50, 2, 60, 12]])
    label = {name: i + 1 for i, name in enumerate(TIANCHI_CLASSES)}
    np.testing.assert_array_equal(scratch.labels, [label["scratch"], label["dirty_spot"]])
    np.testing.assert_array_equal(scratch.difficult, [False, False])
    assert (scratch.width, scratch.height) == (64, 48)
    assert free.num_boxes == 0 and (free.width, free.height) == (32, 24) and free.annotation_path is None
    np.testing.assert_allclose(leak.boxes_px, [[0, 18, 64, 33], [5, 44, 40, 47]])
    np.testing.assert_array_equal(leak.labels, [label["bottom_leak"], label["pit"]])


def test_split_file_with_utf8_paths(tmp_path: Path) -> None:
    root = _tianchi(tmp_path / "data")
    split = root / "val.txt"
    split.write_text("无瑕疵样本/正常.jpg\n漏底/漏底_1.jpg\n", encoding="utf-8")
    records = read_labelme_records(root, split, TIANCHI_CLASSES)
    assert [r.image_id for r in records] == ["无瑕疵样本/正常.jpg", "漏底/漏底_1.jpg"]


def test_labels_follow_configured_class_order(tmp_path: Path) -> None:
    root = _tianchi(tmp_path / "data")
    classes = ("pit", "bottom_leak", "scratch", "dirty_spot")
    records = read_labelme_records(root, None, classes)
    np.testing.assert_array_equal(records[0].labels, [3, 4])
    np.testing.assert_array_equal(records[2].labels, [2, 1])


def test_mapping_covers_table_1() -> None:
    assert len(TIANCHI_LABELS) == 10 and TIANCHI_CLASSES[0] == "non_conductive"
    assert TIANCHI_CLASSES[-1] == "dirty_spot" and TIANCHI_LABELS["角位漏底"] == "corner_bottom_leak"


def test_size_from_header_and_circle_and_gbk(tmp_path: Path) -> None:
    root = tmp_path / "d"
    img = write_image(root / "桔皮" / "a.jpg", 50, 40)
    doc = {"shapes": [_shape("桔皮", [[20, 20], [23, 24]], "circle")]}
    img.with_suffix(".json").write_bytes(json.dumps(doc, ensure_ascii=False).encode("gbk"))
    (rec,) = read_labelme_records(root, None, TIANCHI_CLASSES)
    assert (rec.width, rec.height) == (50, 40)
    np.testing.assert_allclose(rec.boxes_px, [[15, 15, 25, 25]])


def test_unknown_label_names_file_and_label(tmp_path: Path) -> None:
    root = _tianchi(tmp_path / "d")
    with pytest.raises(DatasetError) as err:
        read_labelme_records(root, None, ("scratch", "bottom_leak", "pit"))
    assert "擦花20180830对照样本.json" in str(err.value)
    assert "shapes[1].label" in str(err.value) and "'脏点'" in str(err.value)


def test_malformed_json_names_file(tmp_path: Path) -> None:
    root = _tianchi(tmp_path / "d")
    (root / "漏底" / "漏底_1.json").write_text('{"shapes": [', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"漏底_1\.json: malformed JSON"):
        read_labelme_records(root, None, TIANCHI_CLASSES)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (_shape("漏底", [[1, 2]]), r"shapes\[0\]\.points: expected at least 2"),
        (_shape("漏底", [[1, 2], ["a", 3]]), r"shapes\[0\]\.points: \['a', 3\] is not an \[x, y\] pair"),
        ({"points": [[1, 2], [3, 4]]}, r"shapes\[0\]\.label: missing"),
    ],
)
def test_bad_shapes_name_file_and_field(tmp_path: Path, shape: dict[str, Any], message: str) -> None:
    root = tmp_path / "d"
    img = write_image(root / "漏底" / "x.jpg", 8, 8)
    _write_json(img.with_suffix(".json"), [shape])
    with pytest.raises(DatasetError, match=r"x\.json: " + message):
        read_labelme_records(root, None, TIANCHI_CLASSES)


def test_missing_image_in_split_names_split_file(tmp_path: Path) -> None:
    root = _tianchi(tmp_path / "d")
    split = root / "train.txt"
    split.write_text("漏底/漏底_1.jpg\n漏底/没有.jpg\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"train\.txt: image .*没有\.jpg not found"):
        read_labelme_records(root, split, TIANCHI_CLASSES)


def test_annotation_without_image_is_reported(tmp_path: Path) -> None:
    root = _tianchi(tmp_path / "d")
    (root / "擦花" / "擦花20180830对照样本.jpg").unlink()
    with pytest.raises(DatasetError, match=r"擦花20180830对照样本\.json: annotation has no image"):
        read_labelme_records(root, None, TIANCHI_CLASSES)
