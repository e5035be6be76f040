"""Dataset checks: each bad-input kind on a tiny hand-made dataset, in the report and at training
time (refused without `data.skip_invalid`, skipped with it); the clean-up of usable records;
the real NEU-DET (its quirks exactly, and training proceeds)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ssd.config import Config, config_from_dict, load_config
from ssd.data.check import (
    KINDS,
    Problem,
    check_dataset,
    check_record,
    clean_record,
    summarize,
    usable_records,
)
from ssd.data.loader import DetectionDataset, build_eval_loader, build_records, build_train_loader
from ssd.data.records import DatasetError, Record
from ssd.data.transforms import build_transforms
from tests.conftest import NEU_ROOT, needs_neu
from tests.data import REPO, write_image

CLASSES = ("crack", "dent")
Obj = tuple[str, float, float, float, float]  # VOC object: name, xmin, ymin, xmax, ymax (1-based)


def voc_xml(
    objects: list[Obj], size: tuple[int, int] | None = (64, 48), filename: str = "", depth: int = 3
) -> str:
    size_xml = (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>{depth}</depth></size>"
        if size
        else ""
    )
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for n, x1, y1, x2, y2 in objects
    )
    name = f"<filename>{filename}</filename>" if filename else ""
    return f"<annotation><folder>d</folder>{name}{size_xml}{objs}</annotation>"


GOOD: list[Obj] = [("crack", 3, 4, 30, 20), ("dent", 10, 10, 40, 40)]


def make_voc(
    root: Path, bad: dict[str, str | None], images: dict[str, tuple[int, int] | None] | None = None
) -> Path:
    """A VOC dataset with a valid sample "good" plus `bad` (stem -> XML text; None: no XML).
    Every stem gets a 64x48 JPEG unless `images` says otherwise (None: no image)."""
    ann, img = root / "Annotations", root / "JPEGImages"
    ann.mkdir(parents=True, exist_ok=True)
    img.mkdir(parents=True, exist_ok=True)
    files = {"good": voc_xml(GOOD, filename="good.jpg"), **bad}
    sizes = {stem: (64, 48) for stem in files} | (images or {})
    for stem, text in files.items():
        if text is not None:
            (ann / f"{stem}.xml").write_text(text)
    for stem, size in sizes.items():
        if size is not None:
            write_image(img / f"{stem}.jpg", *size)
    return root


def voc_cfg(root: Path, augment: dict[str, Any] | None = None, **data: Any) -> Config:
    return config_from_dict(
        {
            "augment": augment or {},
            "data": {
                "format": "voc",
                "root": str(root),
                "train_split": "",
                "val_split": "",
                "classes": list(CLASSES),
                "num_workers": 0,
                **data,
            },
            "priors": {"image_size": 64},
            "train": {"batch_size": 2},
        }
    )


def kinds(problems: list[Problem]) -> list[tuple[str, str, str]]:
    """(kind, severity, file name) of each problem, sorted."""
    return sorted((p.kind, p.severity, Path(p.file).name) for p in problems)


def train_problems(cfg: Config, **kw: Any) -> list[Problem]:
    return check_dataset(cfg, ("train",), **kw).problems


# --------------------------------------------------------------------------- one kind at a time

# (bad files, their images, the problems train_problems must report exactly)
FATAL_CASES: dict[
    str, tuple[dict[str, str | None], dict[str, tuple[int, int] | None], list[tuple[str, str, str]]]
] = {
    "malformed_xml": ({"bad": "<annotation><object>"}, {}, [("malformed_annotation", "fatal", "bad.xml")]),
    "non_numeric_coordinate": (
        {"bad": voc_xml([("crack", 1, 1, "ten", 9)])},  # type: ignore[list-item]
        {},
        [("malformed_annotation", "fatal", "bad.xml")],
    ),
    "unknown_class": (
        {"bad": voc_xml([("crack", 1, 1, 9, 9), ("scratch", 2, 2, 8, 8)])},
        {},
        [("unknown_class", "fatal", "bad.xml")],
    ),
    "degenerate_box": (
        {"bad": voc_xml([("crack", 20, 5, 10, 30)])},  # xmax < xmin
        {},
        [("degenerate_box", "fatal", "bad.xml")],
    ),
    "zero_height_box": (
        {"bad": voc_xml([("crack", 5, 21, 10, 20)])},  # 1-based: ymin - 1 == ymax -> height 0
        {},
        [("degenerate_box", "fatal", "bad.xml")],
    ),
    "box_entirely_outside": (
        {"bad": voc_xml([("crack", 70, 5, 90, 30)])},  # x from 69 on, the image is 64 wide
        {},
        [("box_outside", "fatal", "bad.xml")],
    ),
    "missing_image": ({"bad": voc_xml(GOOD)}, {"bad": None}, [("missing_image", "fatal", "bad.xml")]),
    "size_mismatch": ({"bad": voc_xml(GOOD)}, {"bad": (50, 50)}, [("size_mismatch", "fatal", "bad.xml")]),
}


@pytest.mark.parametrize("case", sorted(FATAL_CASES))
def test_fatal_kind_is_reported_refused_and_skipped(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad, images, expected = FATAL_CASES[case]
    root = make_voc(tmp_path / "voc", bad, images)
    cfg = voc_cfg(root)
    report = check_dataset(cfg, ("train",))
    assert kinds(report.problems) == expected
    assert not report.ok and report.bad_samples == {"train": ["bad"]} and report.num_samples == {"train": 2}
    # training refuses the data with the report: the file, the kind, the way out
    with pytest.raises(DatasetError) as info:
        build_train_loader(cfg)
    message = str(info.value)
    assert "bad.xml" in message and expected[0][0] in message and "data.skip_invalid" in message
    assert "good.xml" not in message
    # ... or skips the bad sample, says so, and trains on the rest
    with caplog.at_level(logging.WARNING, logger="ssd.data.check"):
        loader = build_train_loader(voc_cfg(root, skip_invalid=True))
    assert [r.image_id for r in loader.dataset.records] == ["good"]  # type: ignore[attr-defined]
    assert (
        "skipped 1 of 2 samples of the train split" in caplog.text
        and f"bad ({expected[0][0]})" in caplog.text
    )
    batch = next(iter(loader))
    assert batch.images.shape == (2, 3, 64, 64) and batch.image_ids == ["good", "good"]


def test_unreadable_image_header_and_truncated_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_voc(tmp_path / "voc", {"junk": voc_xml(GOOD), "cut": voc_xml(GOOD)})
    (root / "JPEGImages" / "junk.jpg").write_bytes(b"this is not an image")
    cut = root / "JPEGImages" / "cut.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(cut)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # the header survives, the pixels do not
    cfg = voc_cfg(root)
    # the header check finds the junk file only; decoding finds the truncated one too
    assert kinds(train_problems(cfg)) == [("unreadable_image", "fatal", "junk.jpg")]
    assert kinds(train_problems(cfg, decode=True)) == [
        ("unreadable_image", "fatal", "cut.jpg"),
        ("unreadable_image", "fatal", "junk.jpg"),
    ]
    with pytest.raises(DatasetError, match=r"junk\.jpg"):
        build_train_loader(cfg)
    with pytest.raises(DatasetError, match=r"cut\.jpg"):
        build_train_loader(voc_cfg(root, check_decode=True))
    # skip_invalid without decoding: the truncated file passes the header check, fails when it is
    # loaded, and is replaced by the next record instead of killing the run
    loader = build_train_loader(voc_cfg(root, skip_invalid=True, augment={"enabled": False}))
    records = loader.dataset.records  # type: ignore[attr-defined]
    assert [r.image_id for r in records] == ["cut", "good"]
    with caplog.at_level(logging.WARNING, logger="ssd.data.loader"):
        sample = loader.dataset[(0, 123)]  # type: ignore[index]
    assert sample.image_id == "good" and "cut.jpg" in caplog.text and "skipped" in caplog.text
    batch = next(iter(loader))
    assert set(batch.image_ids) == {"good"}


def test_dataset_without_skip_invalid_raises_naming_the_file(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.jpg", 8, 8)
    path.write_bytes(path.read_bytes()[:-50])
    rec = Record(path, "a", 8, 8)
    transform = build_transforms(voc_cfg(tmp_path).augment, 16, (0.5,) * 3, (0.5,) * 3, train=False)
    with pytest.raises(DatasetError, match=r"a\.jpg"):
        DetectionDataset([rec], transform)[0]
    with pytest.raises(DatasetError, match="all unusable"):
        DetectionDataset([rec, rec], transform, skip_invalid=True)[0]


def test_missing_annotation_and_unannotated_image(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc", {"orphan": None})  # orphan.jpg has no XML
    (root / "train.txt").write_text("good\nlost\n")  # "lost" has neither XML nor image
    cfg = voc_cfg(root, train_split="train.txt")
    report = check_dataset(cfg, ("train",))
    assert kinds(report.problems) == [
        ("missing_annotation", "fatal", "train.txt"),
        ("unannotated_image", "warning", "orphan.jpg"),
    ]
    lost = next(p for p in report.problems if p.kind == "missing_annotation")
    assert lost.sample == "lost" and "lost.xml" in lost.detail and lost.split == "train"
    with pytest.raises(DatasetError, match=r"missing_annotation.*lost\.xml"):
        build_records(cfg, "train")
    assert [
        r.image_id for r in build_records(voc_cfg(root, train_split="train.txt", skip_invalid=True), "train")
    ] == ["good"]
    # an unannotated image is only a warning: training is not refused
    assert [r.image_id for r in build_records(voc_cfg(root), "train")] == ["good"]


def test_warnings_are_fixed_and_training_proceeds(tmp_path: Path) -> None:
    objects: list[Obj] = [
        ("crack", 3, 4, 30, 20),
        ("crack", 3, 4, 30, 20),  # duplicate
        ("dent", -5, 10, 70, 40),  # reaches outside the 64x48 image on both sides
    ]
    root = make_voc(tmp_path / "voc", {"w": voc_xml(objects, filename="w.jpg"), "empty": voc_xml([])})
    cfg = voc_cfg(root)
    problems = train_problems(cfg)
    assert kinds(problems) == [
        ("box_outside", "warning", "w.xml"),
        ("duplicate_box", "warning", "w.xml"),
        ("empty_annotation", "warning", "empty.xml"),
    ]
    outside = next(p for p in problems if p.kind == "box_outside")
    assert "clipped to [0, 9, 64, 40]" in outside.detail
    records = {r.image_id: r for r in build_records(cfg, "train")}
    assert set(records) == {"empty", "good", "w"}
    np.testing.assert_array_equal(records["w"].boxes_px, [[2, 3, 30, 20], [0, 9, 64, 40]])
    np.testing.assert_array_equal(records["w"].labels, [1, 2])
    assert records["empty"].num_boxes == 0
    next(iter(build_train_loader(cfg)))
    # data.box_outside: reject makes the outside box fatal
    rejected = check_dataset(voc_cfg(root, box_outside="reject"), ("train",))
    assert [(p.kind, p.severity) for p in rejected.fatal] == [("box_outside", "fatal")]
    assert rejected.bad_samples == {"train": ["w"]}
    with pytest.raises(DatasetError, match=r"data\.box_outside: reject"):
        build_records(voc_cfg(root, box_outside="reject"), "train")
    kept = build_records(voc_cfg(root, box_outside="reject", skip_invalid=True), "train")
    assert sorted(r.image_id for r in kept) == ["empty", "good"]


def test_voc_quirks_are_notes(tmp_path: Path) -> None:
    root = make_voc(
        tmp_path / "voc",
        {
            "noext": voc_xml(GOOD, filename="noext", depth=1),  # NEU-DET's second format
            "other": voc_xml(GOOD, filename="somewhere_else.jpg"),
        },
    )
    report = check_dataset(voc_cfg(root), ("train",))
    assert kinds(report.problems) == [
        ("channel_mismatch", "info", "noext.xml"),
        ("filename_mismatch", "warning", "other.xml"),
        ("filename_without_extension", "info", "noext.xml"),
    ]
    assert report.ok


def test_every_problem_of_every_file_is_collected(tmp_path: Path) -> None:
    many: list[Obj] = [
        ("scratch", 1, 1, 5, 5),  # unknown class
        ("crack", 9, 9, 4, 20),  # degenerate
        ("crack", 2, 2, 10, 10),
        ("crack", 2, 2, 10, 10),  # duplicate
        ("dent", 40, 30, 80, 47),  # outside (clipped)
        ("rust", 1, 1, 2, 2),  # unknown class again
    ]
    bad = {"many": voc_xml(many), "broken": "<annotation>", "gone": voc_xml(GOOD)}
    root = make_voc(tmp_path / "voc", bad, {"gone": None})
    report = check_dataset(voc_cfg(root), ("train",))
    assert kinds(report.problems) == [
        ("box_outside", "warning", "many.xml"),
        ("degenerate_box", "fatal", "many.xml"),
        ("duplicate_box", "warning", "many.xml"),
        ("malformed_annotation", "fatal", "broken.xml"),
        ("missing_image", "fatal", "gone.xml"),
        ("unknown_class", "fatal", "many.xml"),
        ("unknown_class", "fatal", "many.xml"),
    ]
    assert report.bad_samples == {"train": ["broken", "gone", "many"]}
    assert report.counts()["unknown_class"] == {"fatal": 2}
    text = summarize(report.problems, max_problems=3)
    assert text.startswith("5 fatal, 2 warning (") and "... and 4 more" in text


def test_layout_problems(tmp_path: Path) -> None:
    report = check_dataset(voc_cfg(tmp_path / "nowhere"))
    assert [(p.kind, p.split) for p in report.problems] == [("layout", "train"), ("layout", "val")]
    with pytest.raises(DatasetError, match="no annotation folder"):
        build_records(voc_cfg(tmp_path / "nowhere", skip_invalid=True), "train")
    root = make_voc(tmp_path / "voc", {})
    report = check_dataset(voc_cfg(root, train_split="missing.txt"), ("train",))
    assert kinds(report.problems) == [("layout", "fatal", "missing.txt")]
    (root / "empty.txt").write_text("# nothing\n")
    report = check_dataset(voc_cfg(root, train_split="empty.txt"), ("train",))
    assert [(p.kind, p.detail) for p in report.problems] == [("layout", "the train split lists no sample")]
    with pytest.raises(DatasetError, match="lists no sample"):
        build_records(voc_cfg(root, train_split="empty.txt", skip_invalid=True), "train")


# --------------------------------------------------------------------------- LabelMe and COCO


def labelme_json(shapes: list[dict[str, Any]], size: tuple[int, int] | None = (64, 48)) -> str:
    doc: dict[str, Any] = {"shapes": shapes}
    if size:
        doc["imageWidth"], doc["imageHeight"] = size
    return json.dumps(doc, ensure_ascii=False)


def rect(label: str, pts: list[list[float]]) -> dict[str, Any]:
    return {"label": label, "points": pts, "shape_type": "rectangle"}


def test_labelme_kinds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "alu"
    files = {
        "a/good": labelme_json([rect("擦花", [[1, 2], [30, 40]])]),
        "a/unknown": labelme_json([rect("划痕", [[1, 2], [30, 40]]), rect("crack", [[1, 2], [3]])]),
        "a/flat": labelme_json([rect("crack", [[5, 5], [5, 30]])]),
        "a/outside": labelme_json([rect("crack", [[-3, 2], [30, 60]])]),
        "a/empty": labelme_json([]),
        "a/broken": '{"shapes": [',
        "b/noimage": labelme_json([rect("crack", [[1, 2], [30, 40]])]),
    }
    for stem, text in files.items():
        (root / f"{stem}.json").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{stem}.json").write_text(text, encoding="utf-8")
        if stem != "b/noimage":
            write_image(root / f"{stem}.jpg", 64, 48)
    write_image(root / "无瑕疵样本" / "free.jpg", 64, 48)  # no JSON: a defect-free sample, not a problem
    data = {"format": "labelme", "root": str(root), "train_split": "", "val_split": "",
            "classes": ["scratch", "crack"], "num_workers": 0}  # fmt: skip
    cfg = config_from_dict({"data": data, "priors": {"image_size": 64}, "train": {"batch_size": 2}})
    report = check_dataset(cfg, ("train",))
    assert kinds(report.problems) == [
        ("box_outside", "warning", "outside.json"),
        ("degenerate_box", "fatal", "flat.json"),
        ("empty_annotation", "warning", "empty.json"),
        ("malformed_annotation", "fatal", "broken.json"),
        ("malformed_annotation", "fatal", "unknown.json"),
        ("missing_image", "fatal", "noimage.json"),
        ("unknown_class", "fatal", "unknown.json"),
    ]
    assert report.bad_samples == {"train": ["a/broken.jpg", "a/flat.jpg", "a/unknown.jpg"]}
    with pytest.raises(DatasetError, match="degenerate_box"):
        build_train_loader(cfg)
    lenient = config_from_dict({"data": {**data, "skip_invalid": True}, "priors": {"image_size": 64},
                                "train": {"batch_size": 2}})  # fmt: skip
    with caplog.at_level(logging.WARNING):
        records = build_records(lenient, "train")
    assert sorted(r.image_id for r in records) == [
        "a/empty.jpg",
        "a/good.jpg",
        "a/outside.jpg",
        "无瑕疵样本/free.jpg",
    ]
    assert "skipped 3 of 7 samples" in caplog.text and "1 problem(s) not tied to a sample" in caplog.text
    outside = next(r for r in records if r.image_id == "a/outside.jpg")
    np.testing.assert_array_equal(outside.boxes_px, [[0, 2, 30, 48]])


def test_coco_kinds(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for name, size in [("a.jpg", (64, 48)), ("b.jpg", (64, 48)), ("c.jpg", (30, 30)), ("unused.jpg", (8, 8))]:
        write_image(images / name, *size)
    doc = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48},
            {"id": 3, "file_name": "c.jpg", "width": 64, "height": 48},  # the file is 30x30
            {"id": 4, "file_name": "gone.jpg", "width": 64, "height": 48},
            {"id": 5, "file_name": "a.jpg", "width": "64", "height": 48},  # mistyped
        ],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10]},
            {"image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10]},  # duplicate
            {"image_id": 2, "category_id": 9, "bbox": [1, 2, 10, 10]},  # unknown category id
            {"image_id": 2, "category_id": 2, "bbox": [1, 2, 0, 10]},  # zero width
            {"image_id": 3, "category_id": 1, "bbox": [1, 2, 10, 10]},
            {"image_id": 5, "category_id": 1, "bbox": [1, 2, 10, 10]},  # of the mistyped image
        ],
        "categories": [{"id": 1, "name": "crack"}, {"id": 2, "name": "dent"}],
    }
    (tmp_path / "train.json").write_text(json.dumps(doc))
    data = {
        "format": "coco",
        "root": str(tmp_path),
        "train_annotations": "train.json",
        "train_images": "images",
        "classes": list(CLASSES),
    }
    report = check_dataset(config_from_dict({"data": data}), ("train",))
    assert sorted((p.kind, p.severity, p.sample) for p in report.problems) == [
        ("degenerate_box", "fatal", "2"),
        ("duplicate_box", "warning", "1"),
        ("empty_annotation", "warning", "4"),
        ("malformed_annotation", "fatal", "2"),
        ("malformed_annotation", "fatal", "5"),
        ("missing_image", "fatal", "4"),
        ("size_mismatch", "fatal", "3"),
        ("unannotated_image", "warning", None),
    ]
    assert all(Path(p.file).name in ("train.json", "unused.jpg") for p in report.problems)
    records = usable_records(config_from_dict({"data": {**data, "skip_invalid": True}}), "train", images=True)
    assert [r.image_id for r in records] == ["1"] and records[0].num_boxes == 1


# --------------------------------------------------------------------------- pieces


def test_check_record_and_clean_record_agree() -> None:
    rec = Record(
        Path("x.jpg"), "x", 10, 8,
        np.array([[1, 1, 4, 4], [1, 1, 4, 4], [-2, 0, 5, 9], [3, 3, 3, 6], [np.inf, 0, 1, 1]], np.float32),
        np.array([1, 1, 2, 1, 2]), np.array([True, False, False, False, False]), Path("x.xml"),
    )  # fmt: skip
    found = [(p.kind, p.severity) for p in check_record(rec, CLASSES)]
    assert found == [
        ("duplicate_box", "warning"),
        ("box_outside", "warning"),
        ("degenerate_box", "fatal"),
        ("malformed_annotation", "fatal"),
    ]
    assert all(k in KINDS for k, _ in found)
    ok = Record(
        rec.image_path, "x", 10, 8, rec.boxes_px[:3], rec.labels[:3], rec.difficult[:3], rec.annotation_path
    )
    cleaned = clean_record(ok)
    np.testing.assert_array_equal(cleaned.boxes_px, [[1, 1, 4, 4], [0, 0, 5, 8]])
    np.testing.assert_array_equal(cleaned.labels, [1, 2])
    np.testing.assert_array_equal(cleaned.difficult, [False, False])  # difficult only if every copy is
    assert ok.boxes_px.shape == (3, 4)  # the input record is left alone
    kept = clean_record(ok, "reject")
    np.testing.assert_array_equal(kept.boxes_px[1], [-2, 0, 5, 9])  # no clipping when rejecting


def test_report_serializes(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc", {"bad": voc_xml([("crack", 20, 5, 10, 30)])})
    report = check_dataset(voc_cfg(root))
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] is False and d["num_samples"] == {"train": 2, "val": 2}
    assert d["bad_samples"] == {"train": ["bad"], "val": ["bad"]}
    assert d["counts"] == {"degenerate_box": {"fatal": 2}}
    assert {p["split"] for p in d["problems"]} == {"train", "val"}


def test_val_split_is_checked_when_training_starts(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc", {"bad": voc_xml([("crack", 20, 5, 10, 30)])})
    (root / "train.txt").write_text("good\n")
    (root / "val.txt").write_text("good\nbad\n")
    cfg = voc_cfg(root, train_split="train.txt", val_split="val.txt")
    with pytest.raises(DatasetError, match=r"(?s)val split .*bad\.xml"):
        build_train_loader(cfg)
    lenient = voc_cfg(root, train_split="train.txt", val_split="val.txt", skip_invalid=True)
    build_train_loader(lenient)
    assert [r.image_id for r in build_eval_loader(lenient).dataset.records] == ["good"]  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- NEU-DET


@needs_neu
def test_neu_det_reports_exactly_its_quirks_and_trains() -> None:
    cfg = load_config(
        REPO / "configs" / "ssd512_neu.yaml",
        [f"data.root={NEU_ROOT.resolve()}", "data.num_workers=0", "train.batch_size=2"],
    )
    report = check_dataset(cfg)
    assert report.ok and report.num_samples == {"train": 1440, "val": 360}
    # SOURCE.md: 3 exact duplicate boxes, 174 XMLs whose <filename> lacks ".jpg" (46 patches_*,
    # 128 pitted_surface_*), <depth> 1 on RGB files; every box inside, every image 200x200
    assert report.counts() == {
        "duplicate_box": {"warning": 3},
        "filename_without_extension": {"info": 174},
        "channel_mismatch": {"info": 1800},
    }
    dups = sorted(
        (Path(p.file).stem, p.detail.split(" duplicates")[0])
        for p in report.problems
        if p.kind == "duplicate_box"
    )
    assert dups == [
        ("crazing_120", "box 3 (crazing) [0, 80, 117, 146]"),  # 1,81,117,146 1-based
        ("inclusion_62", "box 6 (inclusion) [38, 76, 59, 140]"),  # 39,77,59,140
        ("patches_198", "box 2 (patches) [157, 67, 200, 158]"),  # 158,68,200,158
    ]
    noext = [Path(p.file).stem for p in report.problems if p.kind == "filename_without_extension"]
    assert sum(s.startswith("patches_") for s in noext) == 46
    assert sum(s.startswith("pitted_surface_") for s in noext) == 128
    # training proceeds: records deduplicated, a batch comes out
    train = build_records(cfg, "train")
    val = build_records(cfg, "val")
    assert len(train) == 1440 and len(val) == 360
    assert sum(r.num_boxes for r in train) + sum(r.num_boxes for r in val) == 4189 - 3
    batch = next(iter(build_train_loader(cfg)))
    assert batch.images.shape == (2, 3, 512, 512) and torch.isfinite(batch.images).all()
