"""Pascal VOC reader: NEU-DET quirks on hand-made XML, errors naming the file, the real NEU-DET."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssd.config import load_config
from ssd.data.loader import build_records
from ssd.data.records import DatasetError
from ssd.data.voc import read_voc_records
from tests.conftest import NEU_ROOT, needs_neu
from tests.data import REPO, write_image

CLASSES = ("crazing", "inclusion", "patches")


def _xml(
    filename: str, objects: list[tuple[str, int, int, int, int, int]], size: tuple[int, int] | None
) -> str:
    size_xml = (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>1</depth></size>" if size else ""
    )
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for n, x1, y1, x2, y2, d in objects
    )
    return f"<annotation><folder>x</folder><filename>{filename}</filename>{size_xml}{objs}</annotation>"


def _dataset(root: Path, ann_dir: str = "Annotations", img_dir: str = "JPEGImages") -> Path:
    (root / ann_dir).mkdir(parents=True)
    # a: the NEU "second format": filename without extension, duplicate boxes, difficult
    (root / ann_dir / "a.xml").write_text(
        _xml(
            "a",
            [
                ("inclusion", 1, 81, 117, 146, 0),
                ("inclusion", 1, 81, 117, 146, 0),
                ("patches", 5, 6, 20, 40, 1),
            ],
            (200, 100),
        )
    )
    # b: no <size> (read from the image header), a <filename> that names some other file
    (root / ann_dir / "b.xml").write_text(_xml("other.jpg", [("crazing", 10, 10, 30, 30, 0)], None))
    write_image(root / img_dir / "a.jpg", 200, 100)
    write_image(root / img_dir / "b.png", 64, 48)
    return root


def test_reads_voc_with_neu_quirks(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "voc")
    records = read_voc_records(root, None, CLASSES)
    assert [r.image_id for r in records] == ["a", "b"]
    a, b = records
    assert a.image_path == root / "JPEGImages" / "a.jpg"
    assert (a.width, a.height) == (200, 100)
    # 1-based inclusive -> 0-based: (x1 - 1, y1 - 1, x2, y2); the duplicate is kept
    np.testing.assert_array_equal(
        a.boxes_px, np.array([[0, 80, 117, 146], [0, 80, 117, 146], [4, 5, 20, 40]], np.float32)
    )
    assert a.boxes_px.dtype == np.float32
    np.testing.assert_array_equal(a.labels, [2, 2, 3])
    np.testing.assert_array_equal(a.difficult, [False, False, True])
    assert a.annotation_path == root / "Annotations" / "a.xml"
    # paired by stem, whatever <filename> says; size from the PNG header
    assert b.image_path == root / "JPEGImages" / "b.png"
    assert (b.width, b.height) == (64, 48)
    np.testing.assert_array_equal(b.boxes_px, [[9, 9, 30, 30]])
    np.testing.assert_array_equal(b.labels, [1])


def test_neu_folder_names_and_split_file(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "neu", "ANNOTATIONS", "IMAGES")
    split = root / "splits" / "val.txt"
    split.parent.mkdir()
    split.write_text("b\n\n# comment\n")
    records = read_voc_records(root, split, CLASSES)
    assert [r.image_id for r in records] == ["b"]
    assert records[0].image_path == root / "IMAGES" / "b.png"


def test_class_order_defines_labels(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "voc")
    records = read_voc_records(root, None, ("patches", "inclusion", "crazing"))
    np.testing.assert_array_equal(records[0].labels, [2, 2, 1])
    np.testing.assert_array_equal(records[1].labels, [3])


def test_object_free_xml_is_background(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "e.xml").write_text(_xml("e.jpg", [], (10, 8)))
    write_image(root / "JPEGImages" / "e.jpg", 10, 8)
    (rec,) = read_voc_records(root, None, CLASSES)
    assert rec.boxes_px.shape == (0, 4) and rec.labels.shape == (0,) and rec.difficult.shape == (0,)


def test_unknown_label_names_file_and_label(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "voc")
    with pytest.raises(DatasetError) as err:
        read_voc_records(root, None, ("crazing", "patches"))
    assert "a.xml" in str(err.value) and "'inclusion'" in str(err.value)
    assert err.value.path == str(root / "Annotations" / "a.xml")


def test_malformed_xml_names_file(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "voc")
    (root / "Annotations" / "b.xml").write_text("<annotation><object><name>crazing</name>")
    with pytest.raises(DatasetError, match=r"b\.xml: malformed XML"):
        read_voc_records(root, None, CLASSES)


def test_non_numeric_coordinate_names_file_and_field(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "voc")
    text = (root / "Annotations" / "b.xml").read_text().replace("<xmin>10</xmin>", "<xmin>ten</xmin>")
    (root / "Annotations" / "b.xml").write_text(text)
    with pytest.raises(DatasetError, match=r"b\.xml: object 0 \(crazing\): <xmin> is not a number"):
        read_voc_records(root, None, CLASSES)


def test_missing_image_names_annotation(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "voc")
    (root / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(DatasetError, match=r"a\.xml: no image with stem 'a'"):
        read_voc_records(root, None, CLASSES)
    # annotation-only use does not need the images (when the XML states the size)
    split = root / "split.txt"
    split.write_text("a\n")
    (rec,) = read_voc_records(root, split, CLASSES, check_images=False)
    assert rec.image_path == root / "JPEGImages" / "a.jpg" and (rec.width, rec.height) == (200, 100)


def test_split_entry_without_annotation_names_split_file(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "voc")
    split = root / "split.txt"
    split.write_text("a\nzzz\n")
    with pytest.raises(DatasetError, match=r"split\.txt: zzz: annotation .* not found"):
        read_voc_records(root, split, CLASSES)


# --------------------------------------------------------------------------- real NEU-DET

NEU_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")


@needs_neu
def test_neu_det_every_file() -> None:
    records = read_voc_records(NEU_ROOT, None, NEU_CLASSES)
    assert len(records) == 1800
    assert sum(r.num_boxes for r in records) == 4189
    labels = np.concatenate([r.labels for r in records])
    # boxes per <name> (SOURCE.md), not per file-name prefix
    np.testing.assert_array_equal(np.bincount(labels, minlength=7)[1:], [689, 1011, 881, 432, 628, 548])
    assert sum(int(r.difficult.sum()) for r in records) == 81
    boxes = np.concatenate([r.boxes_px for r in records])
    assert boxes.min() == 0 and boxes.max() == 200  # 1-based 1..200 -> 0..200
    assert all((r.width, r.height) == (200, 200) for r in records)
    by_id = {r.image_id: r for r in records}
    # a file whose <filename> lacks ".jpg" is paired by stem
    assert by_id["patches_104"].image_path == NEU_ROOT / "IMAGES" / "patches_104.jpg"
    # the exact duplicate box of crazing_120 (1,81,117,146) is kept twice
    dup = by_id["crazing_120"].boxes_px.tolist()
    assert dup.count([0.0, 80.0, 117.0, 146.0]) == 2


@needs_neu
def test_neu_det_config_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(REPO / "configs" / "ssd512_neu.yaml", [f"data.root={NEU_ROOT.resolve()}"])
    train, val = build_records(cfg, "train"), build_records(cfg, "val")
    assert (len(train), len(val)) == (1440, 360)
    assert not {r.image_id for r in train} & {r.image_id for r in val}
    # the config's own relative root works from the repository root
    monkeypatch.chdir(REPO)
    assert load_config("configs/ssd512_neu.yaml").data.root == "data/neu-det"
    if (REPO / "data" / "neu-det" / "ANNOTATIONS").is_dir():
        assert len(build_records(load_config("configs/ssd512_neu.yaml"), "val")) == 360
