"""The one image reader (`ssd.data.image`): 16-bit samples, EXIF orientation, CMYK,
decompression bombs; and what the dataset check and the loaders make of them."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssd.data.check import check_dataset
from ssd.data.image import ORIENTATION_TAG, probe_image, read_image
from ssd.data.loader import DetectionDataset, build_records
from ssd.data.records import DatasetError
from ssd.data.transforms import build_transforms
from tests.data.test_check import make_voc, voc_cfg, voc_xml

STORED = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 2  # 6 wide, 4 high, all distinct


def save_with_orientation(path: Path, array: np.ndarray, orientation: int) -> Path:
    im = Image.fromarray(array)
    exif = im.getexif()
    exif[ORIENTATION_TAG] = orientation
    im.save(path, exif=exif.tobytes())
    return path


def bomb_png(path: Path, width: int = 40000, height: int = 40000) -> Path:
    """A valid 8x8 PNG whose header claims `width` x `height` (1.6 G pixels by default)."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts at byte 16
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC of type + data
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------- bit depth


def test_16bit_png_keeps_its_grey_levels(tmp_path: Path) -> None:
    values = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)  # 256 levels over the range
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    img = read_image(path)
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8
    expected = torch.from_numpy((values >> 8).astype(np.uint8))
    for c in range(3):
        assert torch.equal(img[c], expected)
    assert len(torch.unique(img)) == 256  # not clipped to a few levels
    info = probe_image(path)
    assert info.high_bit_depth and (info.width, info.height) == (16, 16)


def test_32bit_and_float_images_scale_by_their_range(tmp_path: Path) -> None:
    wide = np.array([[-1000, 0], [500, 1000]], np.int32)  # beyond 16 bits: min..max -> 0..255
    Image.fromarray(wide, mode="I").save(tmp_path / "wide.tif")
    assert read_image(tmp_path / "wide.tif")[0].tolist() == [[0, 127], [191, 255]]
    unit = np.array([[0.0, 0.5], [0.25, 1.0]], np.float32)  # [0, 1] floats -> x 255
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    assert read_image(tmp_path / "unit.tif")[0].tolist() == [[0, 128], [64, 255]]


def test_16bit_rgb_png_reads_its_high_bytes(tmp_path: Path) -> None:
    # PIL has no 16-bit RGB mode; write the PNG with zlib to be sure of the stored samples
    h, w = 2, 3
    rgb16 = (np.arange(h * w * 3, dtype=np.uint16).reshape(h, w, 3) * 3000 + 7).astype(">u2")
    raw = b"".join(b"\x00" + rgb16[y].tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
    png += chunk(b"IEND", b"")
    (tmp_path / "rgb16.png").write_bytes(png)
    img = read_image(tmp_path / "rgb16.png")
    high = torch.from_numpy((rgb16.astype(np.uint16) >> 8).astype(np.uint8))
    assert torch.equal(img.permute(1, 2, 0), high)


def test_cmyk_and_palette_images_become_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (5, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    img = read_image(tmp_path / "cmyk.jpg")
    assert img.shape == (3, 4, 5) and int(img[0].float().mean()) > 200 and int(img[1].float().mean()) < 60
    Image.new("P", (3, 2), 0).save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png").shape == (3, 2, 3)


# --------------------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        (1, lambda a: a),
        (2, lambda a: a[:, ::-1]),
        (3, lambda a: a[::-1, ::-1]),
        (6, lambda a: np.rot90(a, -1)),  # stored pixels are shown turned 90 degrees clockwise
        (8, lambda a: np.rot90(a, 1)),
    ],
)
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, expected: object) -> None:
    path = save_with_orientation(tmp_path / "o.png", STORED, orientation)
    img = read_image(path).permute(1, 2, 0).numpy()
    want = expected(STORED)  # type: ignore[operator]
    np.testing.assert_array_equal(img, want)
    info = probe_image(path)
    assert (info.width, info.height) == (want.shape[1], want.shape[0]) and info.orientation == orientation
    assert info.stored_size == (6, 4)


def test_rotated_voc_image_boxes_and_size_stay_consistent(tmp_path: Path) -> None:
    # a VOC annotation without <size> takes the size as read (rotated); its boxes refer to that
    # view and the loader reads the image in it: no size mismatch, the box lands where it was drawn
    root = make_voc(tmp_path / "voc", {"rot": voc_xml([("crack", 1, 2, 3, 5)], size=None)}, {"rot": None})
    stored = np.zeros((4, 6, 3), np.uint8)
    save_with_orientation(root / "JPEGImages" / "rot.png", stored, 6)
    cfg = voc_cfg(root)
    (rec,) = [r for r in build_records(cfg, "train", open_images=True) if r.image_id == "rot"]
    assert (rec.width, rec.height) == (4, 6)
    sample = DetectionDataset([rec], build_transforms(cfg.augment, 64, (0, 0, 0), (1, 1, 1), False))[0]
    assert sample.orig_size == (6, 4)
    # VOC corners are 1-based: (1, 2, 3, 5) is [0, 1, 3, 5] in pixels of the 4 x 6 view
    torch.testing.assert_close(sample.boxes, torch.tensor([[0.0, 1 / 6, 3 / 4, 5 / 6]]))


def test_check_dataset_reports_orientation_and_bit_depth(tmp_path: Path) -> None:
    root = make_voc(
        tmp_path / "voc",
        {
            "rot": voc_xml([("crack", 1, 1, 3, 3)], size=(4, 6)),
            "stored": voc_xml([("crack", 1, 1, 3, 3)], size=(6, 4)),  # the size before rotation
            "deep": voc_xml([("crack", 1, 1, 3, 3)], size=(6, 4), depth=1),
        },
        {"rot": None, "stored": None, "deep": None},
    )
    save_with_orientation(root / "JPEGImages" / "rot.png", STORED, 6)
    save_with_orientation(root / "JPEGImages" / "stored.png", STORED, 6)
    Image.fromarray(np.full((4, 6), 40000, np.uint16)).save(root / "JPEGImages" / "deep.png")
    report = check_dataset(voc_cfg(root), ("train",))
    found = {(p.kind, p.severity, p.sample) for p in report.problems}
    assert ("exif_orientation", "warning", "rot") in found
    assert ("exif_orientation", "warning", "stored") in found
    assert ("high_bit_depth", "info", "deep") in found
    (mismatch,) = [p for p in report.problems if p.kind == "size_mismatch"]
    assert mismatch.sample == "stored" and "EXIF orientation 6" in mismatch.detail
    assert "stored size" in mismatch.detail
    assert report.bad_samples == {"train": ["stored"]}


# --------------------------------------------------------------------------- decompression bombs


def test_oversized_header_is_a_reported_problem(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc", {"huge": voc_xml([("crack", 1, 1, 3, 3)], size=None)}, {"huge": None})
    bomb = bomb_png(root / "JPEGImages" / "huge.png")
    for call in (lambda: probe_image(bomb), lambda: read_image(bomb)):
        with pytest.raises(DatasetError, match="too large to read: DecompressionBombError") as info:
            call()
        assert info.value.path == str(bomb)
    report = check_dataset(voc_cfg(root), ("train",))
    (p,) = [p for p in report.problems if p.sample == "huge"]
    assert p.kind == "unreadable_image" and p.severity == "fatal" and "huge.png" in p.detail
    with pytest.raises(DatasetError, match=r"(?s)huge"):
        build_records(voc_cfg(root), "train")
    assert [r.image_id for r in build_records(voc_cfg(root, skip_invalid=True), "train")] == ["good"]
