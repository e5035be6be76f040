"""COCO reader/writer: name-based label mapping, xywh -> xyxy, iscrowd <-> difficult, round trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ssd.data.coco import coco_image_ids, read_coco_records, records_to_coco
from ssd.data.records import DatasetError, Record
from tests.data import write_image

CLASSES = ("crack", "dent")


def _coco(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    write_image(images / "x.jpg", 40, 30)
    write_image(images / "sub" / "y.jpg", 20, 10)
    doc: dict[str, Any] = {
        "images": [
            {"id": 17, "file_name": "x.jpg", "width": 40, "height": 30},
            {"id": 3, "file_name": "sub/y.jpg", "width": 20, "height": 10},
        ],
        # category ids are arbitrary: names decide the label
        "categories": [{"id": 9, "name": "dent"}, {"id": 2, "name": "crack"}],
        "annotations": [
            {"id": 1, "image_id": 17, "category_id": 9, "bbox": [1.5, 2, 10, 4], "iscrowd": 0},
            {"id": 2, "image_id": 17, "category_id": 2, "bbox": [0, 0, 40, 30], "iscrowd": 1},
        ],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(doc))
    return ann, images


def test_read_coco(tmp_path: Path) -> None:
    ann, images = _coco(tmp_path)
    x, y = read_coco_records(ann, images, CLASSES)
    assert (x.image_id, x.image_path, x.width, x.height) == ("17", images / "x.jpg", 40, 30)
    np.testing.assert_allclose(x.boxes_px, [[1.5, 2, 11.5, 6], [0, 0, 40, 30]])
    np.testing.assert_array_equal(x.labels, [2, 1])
    np.testing.assert_array_equal(x.difficult, [False, True])
    # an image without annotations is background
    assert y.image_path == images / "sub" / "y.jpg" and y.num_boxes == 0


def test_round_trip_records_coco_records(tmp_path: Path) -> None:
    ann, images = _coco(tmp_path)
    records = read_coco_records(ann, images, CLASSES)
    doc = records_to_coco(records, CLASSES)
    assert [c["id"] for c in doc["categories"]] == [1, 2]
    assert [c["name"] for c in doc["categories"]] == list(CLASSES)
    assert [i["id"] for i in doc["images"]] == [17, 3]  # decimal ids are kept
    assert doc["annotations"][0]["bbox"] == [1.5, 2.0, 10.0, 4.0]
    assert doc["annotations"][0]["area"] == 40.0
    assert [a["iscrowd"] for a in doc["annotations"]] == [0, 1]
    out = tmp_path / "out.json"
    out.write_text(json.dumps(doc))
    again = read_coco_records(out, Path("/nonexistent"), CLASSES)  # file_name holds the full path
    for a, b in zip(records, again, strict=True):
        assert (a.image_id, a.image_path, a.width, a.height) == (b.image_id, b.image_path, b.width, b.height)
        np.testing.assert_allclose(a.boxes_px, b.boxes_px)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.difficult, b.difficult)


def test_records_to_coco_loads_in_pycocotools() -> None:
    pycocotools_coco = pytest.importorskip("pycocotools.coco")
    rec = Record(
        Path("a/b.jpg"),
        "a/b.jpg",
        100,
        50,
        np.array([[10, 5, 30, 25]], np.float32),
        np.array([2], np.int64),
        np.array([False]),
    )
    doc = records_to_coco([rec, Record(Path("c.jpg"), "c.jpg", 8, 8)], CLASSES)
    assert [i["id"] for i in doc["images"]] == [1, 2]  # non-numeric image ids -> 1..N
    coco = pycocotools_coco.COCO()
    coco.dataset = doc
    coco.createIndex()
    (a,) = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert a["bbox"] == [10.0, 5.0, 20.0, 20.0] and a["category_id"] == 2
    assert coco.loadCats([2])[0]["name"] == "dent"


def test_coco_image_ids() -> None:
    def rec(i: str) -> Record:
        return Record(Path(f"{i}.jpg"), i, 1, 1)

    assert coco_image_ids([rec("5"), rec("2")]) == [5, 2]
    assert coco_image_ids([rec("5"), rec("x")]) == [1, 2]
    assert coco_image_ids([rec("5"), rec("05")]) == [1, 2]  # not unique as integers


def test_unknown_category_names_file_and_label(tmp_path: Path) -> None:
    ann, images = _coco(tmp_path)
    with pytest.raises(DatasetError, match=r"ann\.json: annotations\[0\]: unknown class label 'dent'"):
        read_coco_records(ann, images, ("crack",))


def test_malformed_json_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"bad\.json: malformed JSON"):
        read_coco_records(bad, tmp_path, CLASSES)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["images"][0].pop("width"), r"images\[0\]: field 'width' is missing"),
        (
            lambda d: d["annotations"][0].update(image_id=99),
            r"annotations\[0\]: image_id 99 is not in 'images'",
        ),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotations\[0\]\.bbox: expected 4 numbers"),
        (lambda d: d["annotations"][1].update(category_id=5), r"annotations\[1\]: category_id 5 is not in"),
    ],
)
def test_bad_fields_name_file_and_field(tmp_path: Path, edit: Any, message: str) -> None:
    ann, images = _coco(tmp_path)
    doc = json.loads(ann.read_text())
    edit(doc)
    ann.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"ann\.json: " + message):
        read_coco_records(ann, images, CLASSES)


def test_missing_image_names_file(tmp_path: Path) -> None:
    ann, images = _coco(tmp_path)
    (images / "x.jpg").unlink()
    with pytest.raises(DatasetError, match=r"ann\.json: image .*x\.jpg \(id 17\) not found"):
        read_coco_records(ann, images, CLASSES)
    assert len(read_coco_records(ann, images, CLASSES, check_images=False)) == 2
