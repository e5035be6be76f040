"""Property-based fuzzing of the image decoding path (hypothesis).

Each case writes a small image in one of many modes (grey, RGB, alpha, palette, CMYK, 16-bit,
32-bit, float, bilevel) and formats (PNG, JPEG, TIFF, BMP, WebP, GIF), optionally with an EXIF
orientation, then damages it: truncated, bytes flipped, garbage inserted, or a header that claims
a huge size (a decompression bomb). It asserts that

* `read_image`, `probe_image` (header and full decode) raise nothing but the project's
  `DatasetError`, naming the file;
* a decoded image is uint8 RGB [3, H, W] of the size `probe_image` reports (the size after the
  EXIF orientation);
* the dataset check of the image (`check_image`) never raises, and reports a fatal problem
  exactly when the image does not decode (with `decode`), and the loader's dataset returns a
  `LoadFailure` carrying that error instead of raising.

Cases: `SSD_FUZZ_EXAMPLES` (default 200), derandomized unless `SSD_FUZZ_RANDOM=1`.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from ssd.config import AugmentConfig
from ssd.data.check import check_image
from ssd.data.image import ORIENTATION_TAG, probe_image, read_image
from ssd.data.loader import DetectionDataset, LoadFailure, Sample
from ssd.data.records import DatasetError, Record
from ssd.data.transforms import build_transforms

EXAMPLES = int(os.environ.get("SSD_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("SSD_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
MODES = ("1", "L", "P", "LA", "RGB", "RGBA", "CMYK", "I;16", "I", "F")
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF")
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp", "GIF": ".gif"}


def _pixels(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-(2**20), 2**20, (h, w), dtype=np.int32), mode="I")
    if mode == "F":
        return Image.fromarray(rng.random((h, w), dtype=np.float32) * 3.0, mode="F")
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return rgb.convert(mode)


def _encode(im: Image.Image, fmt: str, orientation: int | None) -> bytes:
    buf = io.BytesIO()
    kwargs = {}
    if orientation is not None and fmt in ("PNG", "JPEG", "TIFF", "WEBP"):
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = orientation
        kwargs["exif"] = exif.tobytes()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _bomb(data: bytes) -> bytes:
    """A PNG whose header claims 40000 x 40000 pixels (checksum fixed, so only the size is wrong)."""
    out = bytearray(data)
    out[16:24] = struct.pack(">II", 40000, 40000)
    out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))
    return bytes(out)


@st.composite
def image_files(draw: st.DrawFn) -> tuple[str, bytes]:
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS))
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    orientation = draw(st.one_of(st.none(), st.integers(0, 9)))
    try:
        data = _encode(_pixels(mode, w, h, draw(st.integers(0, 2**16))), fmt, orientation)
    except (OSError, ValueError, KeyError, TypeError):
        assume(False)  # PIL cannot write this mode in this format
        raise  # pragma: no cover
    damage = draw(st.sampled_from(("none", "truncate", "flip", "insert", "bomb")))
    if damage == "truncate":
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    elif damage == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] = draw(st.integers(0, 255))
        data = bytes(out)
    elif damage == "insert":
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(min_size=1, max_size=64)) + data[i:]
    elif damage == "bomb":
        assume(fmt == "PNG")
        data = _bomb(data)
    return SUFFIX[fmt], data


@FUZZ
@given(case=image_files())
def test_decoding_raises_only_dataset_errors(tmp_path: Path, case: tuple[str, bytes]) -> None:
    suffix, data = case
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        header = probe_image(path)
    except DatasetError as exc:
        assert exc.path == str(path) and "\n" not in exc.detail
        header = None
    try:
        img = read_image(path)
    except DatasetError as exc:
        assert exc.path == str(path) and exc.kind == "unreadable_image" and "\n" not in exc.detail
        img = None
    try:
        full = probe_image(path, decode=True)
    except DatasetError as exc:
        assert exc.path == str(path)
        full = None
    if img is not None:
        assert img.dtype.is_floating_point is False and img.dtype.itemsize == 1
        assert img.ndim == 3 and img.shape[0] == 3
        assert header is not None and (img.shape[2], img.shape[1]) == (header.width, header.height)
    size = (header.width, header.height) if header is not None else (0, 0)
    rec = Record(image_path=path, image_id="fuzz", width=size[0], height=size[1])
    problems = check_image(rec, decode=True)
    fatal = [p for p in problems if p.severity == "fatal"]
    assert bool(fatal) == (full is None)
    assert all(p.file == str(path) for p in fatal)
    dataset = DetectionDataset(
        [rec], build_transforms(AugmentConfig(), 32, (0, 0, 0), (1, 1, 1), False), return_failures=True
    )
    item = dataset[0]
    if img is None:
        assert isinstance(item, LoadFailure) and item.error.path == str(path) and not item.skipped
    else:
        assert isinstance(item, Sample) and item.orig_size == (img.shape[1], img.shape[2])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_fuzz_strategy_covers_the_named_cases(fmt: str) -> None:
    # the inputs the generator must reach: 16-bit, EXIF-rotated, CMYK (JPEG), oversized header
    im = _pixels("I;16", 5, 3, 0)
    assert Image.open(io.BytesIO(_encode(im, "PNG", None))).mode.startswith("I;16")
    rotated = Image.open(io.BytesIO(_encode(_pixels("RGB", 5, 3, 0), fmt, 6)))
    assert rotated.getexif().get(ORIENTATION_TAG) == 6
    assert Image.open(io.BytesIO(_encode(_pixels("CMYK", 5, 3, 0), "JPEG", None))).mode == "CMYK"
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(_bomb(_encode(im, "PNG", None))))
