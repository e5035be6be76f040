"""Property-based fuzzing of the annotation readers (hypothesis).

Each case takes a valid VOC XML, LabelMe JSON or COCO JSON document, applies random structural
mutations (deleted, duplicated or renamed fields and elements, values replaced by wrong types,
huge / negative / NaN / infinite numbers, unknown labels) and then random byte-level ones
(truncation, flipped / inserted / deleted bytes, non-UTF-8 encodings), writes it into a tiny
dataset next to one valid sample, and asserts:

* the reader either returns well-formed records or raises `DatasetError` naming the fuzzed
  file; no other exception ever escapes;
* the collecting check (`check_split`) never raises, and finds a fatal problem naming the file
  whenever the reader refused it;
* training records (`usable_records`) are refused with a DatasetError exactly when the check
  finds a fatal problem, and with `data.skip_invalid` every box that survives is finite, of
  positive size, inside its image and of a configured class (the valid sample always survives
  for VOC and LabelMe, whose samples are separate files).

Cases per format: `SSD_FUZZ_EXAMPLES` (default 200, so 600 in all); the examples are
derandomized (the same every run) unless `SSD_FUZZ_RANDOM=1`.
"""

from __future__ import annotations

import copy
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ssd.config import Config, config_from_dict
from ssd.data.check import KINDS, check_split, usable_records
from ssd.data.coco import read_coco_records
from ssd.data.labelme import read_labelme_records
from ssd.data.records import DatasetError, Record
from ssd.data.voc import read_voc_records
from tests.data import write_image

EXAMPLES = int(os.environ.get("SSD_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("SSD_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
CLASSES = ("crack", "dent")

# --------------------------------------------------------------------------- valid documents

VOC_XML = """<annotation>
  <folder>d</folder><filename>fuzz.jpg</filename>
  <size><width>64</width><height>48</height><depth>3</depth></size>
  <object><name>crack</name><difficult>0</difficult>
    <bndbox><xmin>2</xmin><ymin>3</ymin><xmax>30</xmax><ymax>20</ymax></bndbox></object>
  <object><name>dent</name><difficult>1</difficult>
    <bndbox><xmin>10</xmin><ymin>10</ymin><xmax>60</xmax><ymax>45</ymax></bndbox></object>
</annotation>"""

LABELME: dict[str, Any] = {
    "version": "3.3.1",
    "flags": {},
    "shapes": [
        {"label": "crack", "points": [[30, 40], [10, 5]], "shape_type": "rectangle", "flags": {}},
        {"label": "dent", "points": [[50, 2], [60, 2], [60, 12], [50, 12]], "shape_type": "polygon"},
        {"label": "crack", "points": [[20, 20], [25, 20]], "shape_type": "circle", "difficult": True},
    ],
    "imagePath": "fuzz.jpg",
    "imageWidth": 64,
    "imageHeight": 48,
}

COCO: dict[str, Any] = {
    "images": [
        {"id": 1, "file_name": "good.jpg", "width": 64, "height": 48},
        {"id": 7, "file_name": "fuzz.jpg", "width": 64, "height": 48},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 3, 20, 10], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 5, "bbox": [10, 10, 30, 20], "iscrowd": 0},
        {"id": 3, "image_id": 7, "category_id": 3, "bbox": [0.5, 1.5, 8, 9], "iscrowd": 1},
    ],
    "categories": [{"id": 3, "name": "crack"}, {"id": 5, "name": "dent"}],
}

# --------------------------------------------------------------------------- mutations

ODD_NUMBERS = [0, -1, -(10**9), 10**400, -(10**400), 2**63, 1e308, -1e-308, 3.5]
ODD_TEXT = ["", " ", "nan", "NaN", "inf", "-inf", "1e39", "1e400", "-1e400", "0x10", "12abc", "1_000",
            "crack", "dent", "background", "擦花", "\u0000", "\ud7ff", "<", "&amp;", "9" * 40]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(ODD_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(ODD_TEXT),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


def _containers(node: Any, out: list[Any]) -> list[Any]:
    """Every dict and list inside a JSON document (the document itself first)."""
    if isinstance(node, (dict, list)):
        out.append(node)
        for child in node.values() if isinstance(node, dict) else node:
            _containers(child, out)
    return out


@st.composite
def json_tree_mutation(draw: st.DrawFn, doc: Any) -> Any:
    """One structural change somewhere in `doc` (mutated in place; the new root is returned)."""
    nodes = _containers(doc, [])
    if not nodes:
        return draw(json_values)
    node = nodes[draw(st.integers(0, len(nodes) - 1))]
    keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
    op = draw(st.sampled_from(["delete", "replace", "duplicate", "insert", "swap_type", "replace_root"]))
    if op == "replace_root":
        return draw(json_values)
    if op == "insert" or not keys:
        if isinstance(node, dict):
            node[
                draw(st.sampled_from(["label", "points", "bbox", "id", "width", "x"]) | st.text(max_size=4))
            ] = draw(json_values)
        else:
            node.insert(draw(st.integers(0, len(node))), draw(json_values))
        return doc
    key = draw(st.sampled_from(keys))
    if op == "delete":
        del node[key]
    elif op == "replace":
        node[key] = draw(json_values)
    elif op == "duplicate":
        value = copy.deepcopy(node[key])
        if isinstance(node, list):
            node.insert(key, value)
        else:
            node[f"{key}_"] = value
    else:  # swap_type: the same data in the wrong container / as a string
        value = node[key]
        node[key] = (
            json.dumps(value, allow_nan=True)
            if not isinstance(value, str)
            else draw(st.sampled_from([[value], {"v": value}, 0]))
        )
    return doc


@st.composite
def byte_mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """Truncation, flipped / inserted / deleted bytes or a non-UTF-8 encoding (or nothing)."""
    op = draw(st.sampled_from(["none", "none", "truncate", "flip", "insert", "delete", "encoding"]))
    if op == "none" or not data:
        return data
    if op == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if op == "encoding":
        text = data.decode("utf-8", errors="replace")
        enc = draw(st.sampled_from(["utf-16", "latin-1", "gbk", "cp1252", "utf-32"]))
        return text.encode(enc, errors="replace")
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(out) - 1)) if out else 0
        if op == "flip" and out:
            out[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=6))
        elif out:
            del out[pos : pos + draw(st.integers(1, 8))]
    return bytes(out)


@st.composite
def mutated_json(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    doc: Any = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, 4))):
        doc = draw(json_tree_mutation(doc))
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), allow_nan=True)
    return draw(byte_mutation(text.encode("utf-8")))


@st.composite
def mutated_xml(draw: st.DrawFn) -> bytes:
    root = ET.fromstring(VOC_XML)
    for _ in range(draw(st.integers(0, 4))):
        elements = list(root.iter())
        el = elements[draw(st.integers(0, len(elements) - 1))]
        parents = {child: parent for parent in root.iter() for child in parent}
        op = draw(st.sampled_from(["delete", "text", "text", "duplicate", "rename", "child"]))
        if op == "delete" and el in parents:
            parents[el].remove(el)
        elif op == "duplicate" and el in parents:
            parents[el].append(copy.deepcopy(el))
        elif op == "rename":
            el.tag = draw(st.sampled_from(["name", "object", "bndbox", "size", "xmin", "difficult", "zz"]))
        elif op == "child":
            ET.SubElement(
                el, draw(st.sampled_from(["name", "object", "bndbox", "width", "depth"]))
            ).text = draw(st.sampled_from(ODD_TEXT))
        else:
            el.text = draw(st.sampled_from(ODD_TEXT) | st.text(max_size=6) | st.integers().map(str))
    try:
        text = ET.tostring(root, encoding="unicode")
    except ValueError:  # a character ET refuses to serialize: keep the raw text
        text = VOC_XML
    decl = draw(
        st.sampled_from(
            [
                "",
                '<?xml version="1.0"?>',
                '<?xml version="1.0" encoding="latin-1"?>',
                '<?xml version="1.0" encoding="bogus"?>',
            ]
        )
    )
    return draw(byte_mutation((decl + text).encode("utf-8", errors="surrogatepass")))


# --------------------------------------------------------------------------- properties


def _records_well_formed(records: list[Record]) -> None:
    for r in records:
        g = r.boxes_px.shape[0]
        assert r.boxes_px.shape == (g, 4) and r.boxes_px.dtype == np.float32
        assert r.labels.shape == (g,) and r.difficult.shape == (g,)
        assert all(1 <= int(v) <= len(CLASSES) for v in r.labels)
        assert isinstance(r.width, int) and isinstance(r.height, int)


def _assert_usable(records: list[Record]) -> None:
    """What reaches the loss: finite, positive-size boxes inside the image, known labels."""
    for r in records:
        b = r.boxes_px.astype(np.float64)
        assert np.isfinite(b).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= r.width).all() and (b[:, 3] <= r.height).all()
        assert all(1 <= int(v) <= len(CLASSES) for v in r.labels)


def check_fuzzed_file(
    cfg: Config, fuzzed: Path, read: Callable[[], list[Record]], good_survives: bool
) -> None:
    try:
        records = read()
    except DatasetError as exc:
        assert str(fuzzed) in str(exc), f"the error does not name {fuzzed}: {exc}"
        refused = True
    else:
        _records_well_formed(records)
        refused = False
    scan = check_split(cfg, "train")
    assert all(p.kind in KINDS and p.file for p in scan.problems)
    fatal_here = [p for p in scan.fatal if p.file == str(fuzzed)]
    if refused:
        assert fatal_here, f"the reader refused {fuzzed} but the check found nothing fatal there"
    try:
        strict = usable_records(cfg, "train", images=True)
    except DatasetError:
        assert scan.fatal
    else:
        assert not scan.fatal
        _assert_usable(strict)
    lenient_cfg = config_from_dict({"data": {**_data(cfg), "skip_invalid": True}})
    try:
        lenient = usable_records(lenient_cfg, "train", images=True)
    except DatasetError:
        assert not good_survives, "the valid sample must survive data.skip_invalid"
    else:
        _assert_usable(lenient)
        assert len(lenient) >= 1


def _data(cfg: Config) -> dict[str, Any]:
    d = cfg.data
    return {
        "format": d.format,
        "root": d.root,
        "train_split": d.train_split,
        "train_annotations": d.train_annotations,
        "train_images": d.train_images,
        "classes": list(d.classes),
    }


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    (root / "Annotations").mkdir()
    (root / "Annotations" / "good.xml").write_text(VOC_XML.replace("fuzz.jpg", "good.jpg"))
    write_image(root / "JPEGImages" / "good.jpg", 64, 48)
    write_image(root / "JPEGImages" / "fuzz.jpg", 64, 48)
    return root


@pytest.fixture(scope="module")
def labelme_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelme")
    write_image(root / "a" / "good.jpg", 64, 48)
    (root / "a" / "good.json").write_text(json.dumps(LABELME))
    write_image(root / "b" / "fuzz.jpg", 64, 48)
    return root


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    write_image(root / "images" / "good.jpg", 64, 48)
    write_image(root / "images" / "fuzz.jpg", 64, 48)
    return root


# Inputs that once raised something other than DatasetError (or let a bad box through).
VOC_REGRESSIONS = [
    VOC_XML.replace("<width>64</width>", "<width>inf</width>"),
    VOC_XML.replace("<width>64</width>", "<width>1e400</width>"),
    VOC_XML.replace("<difficult>0</difficult>", "<difficult>inf</difficult>"),
    VOC_XML.replace("<xmax>30</xmax>", "<xmax>1e39</xmax>"),
    '<?xml version="1.0" encoding="bogus"?>' + VOC_XML,
    VOC_XML.replace("<xmax>30</xmax>", "<xmax>1</xmax>"),
]


def fuzz_voc(root: Path, data: bytes) -> None:
    fuzzed = root / "Annotations" / "fuzz.xml"
    fuzzed.write_bytes(data)
    cfg = config_from_dict(
        {"data": {"format": "voc", "root": str(root), "train_split": "", "classes": CLASSES}}
    )
    check_fuzzed_file(cfg, fuzzed, lambda: read_voc_records(root, None, CLASSES), good_survives=True)


@FUZZ
@given(data=mutated_xml())
@example(data=b"")
@example(data=b"\xff\xfe<\x00a\x00")
@example(data=VOC_XML.encode()[:100])
def test_fuzz_voc_xml(voc_root: Path, data: bytes) -> None:
    fuzz_voc(voc_root, data)


@pytest.mark.parametrize("text", VOC_REGRESSIONS)
def test_voc_regressions(voc_root: Path, text: str) -> None:
    fuzz_voc(voc_root, text.encode())


@FUZZ
@given(data=mutated_json(LABELME))
@example(data=b"[" * 5000 + b"]" * 5000)
@example(data=json.dumps({**LABELME, "imageWidth": float("inf")}).encode())
@example(data=json.dumps({**LABELME, "imageWidth": 10**400}).encode())
@example(
    data=json.dumps({**LABELME, "shapes": [{"label": "crack", "points": [[10**400, 1], [2, 3]]}]}).encode()
)
@example(
    data=json.dumps(
        {
            **LABELME,
            "shapes": [{"label": "crack", "points": [[1e308, 1], [-1e308, 3]], "shape_type": "circle"}],
        }
    ).encode()
)
@example(data=json.dumps({**LABELME, "shapes": [{"label": "crack", "points": [[1e39, 1], [2, 3]]}]}).encode())
def test_fuzz_labelme_json(labelme_root: Path, data: bytes) -> None:
    fuzzed = labelme_root / "b" / "fuzz.json"
    fuzzed.write_bytes(data)
    cfg = config_from_dict(
        {"data": {"format": "labelme", "root": str(labelme_root), "train_split": "", "classes": CLASSES}}
    )
    check_fuzzed_file(
        cfg, fuzzed, lambda: read_labelme_records(labelme_root, None, CLASSES), good_survives=True
    )


@FUZZ
@given(data=mutated_json(COCO))
@example(data=b"{" * 3000)
@example(data=json.dumps({**COCO, "annotations": 5}).encode())
@example(
    data=json.dumps(
        {**COCO, "annotations": [{**COCO["annotations"][0], "bbox": [10**400, 1, 2, 3]}]}
    ).encode()
)
@example(
    data=json.dumps({**COCO, "annotations": [{**COCO["annotations"][0], "bbox": [1e39, 1, 2, 3]}]}).encode()
)
def test_fuzz_coco_json(coco_root: Path, data: bytes) -> None:
    fuzzed = coco_root / "train.json"
    fuzzed.write_bytes(data)
    cfg = config_from_dict(
        {
            "data": {
                "format": "coco",
                "root": str(coco_root),
                "train_annotations": "train.json",
                "train_images": "images",
                "classes": CLASSES,
            }
        }
    )
    check_fuzzed_file(
        cfg, fuzzed, lambda: read_coco_records(fuzzed, coco_root / "images", CLASSES), good_survives=False
    )
