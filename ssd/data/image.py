"""The one way image files are read: training, evaluation, prediction and the dataset check.

`read_image(path)` decodes a file to uint8 RGB [3, H, W] with PIL; `probe_image(path)` gives its
size, channels, EXIF orientation and bit depth from the header (every pixel with `decode`). Any
failure, whatever PIL raises (OSError, SyntaxError, ValueError, DecompressionBombError, ...),
becomes a `DatasetError` naming the file, so no caller ever sees a decoder exception.

Pixel conventions, the same everywhere:

* **EXIF orientation is applied** (as `PIL.ImageOps.exif_transpose` does): the image is read as photo
  viewers and annotation tools such as LabelMe show it, so boxes and the size stated in an
  annotation refer to that view (for orientations 5-8 width and height are swapped against the
  stored pixels). `probe_image` reports the size after orientation.
* **More than 8 bits per sample** is scaled to 8 bit by the range of its bit depth: 16-bit
  samples (PIL modes ``I;16*``, and mode ``I`` when every value lies in 0..65535, as PIL gives
  16-bit PNGs) are shifted right by 8; other 32-bit integer images are scaled linearly from
  their minimum..maximum, float images from [0, 1] (or from their minimum..maximum when they
  leave it). 16-bit RGB PNGs are reduced to 8 bit by PIL itself (the high byte).
* Grey, palette, alpha and CMYK images are converted to RGB (alpha dropped).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ssd.data.records import DatasetError

# EXIF tag 0x0112; values 5..8 transpose width and height.
ORIENTATION_TAG = 0x0112
_TRANSPOSING = (5, 6, 7, 8)
_ORIENTATION_NAMES = {
    2: "mirrored",
    3: "rotated 180",
    4: "flipped",
    5: "transposed",
    6: "rotated 90 clockwise",
    7: "transversed",
    8: "rotated 90 counter-clockwise",
}
# How each orientation turns the stored pixels into the view (what PIL.ImageOps.exif_transpose does).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Channels of PIL modes (what VOC `<depth>` counts); unknown modes: their bands.
_MODE_CHANNELS = {"1": 1, "L": 1, "P": 1, "I": 1, "F": 1, "I;16": 1, "LA": 2, "PA": 2, "RGBA": 4, "CMYK": 4}
_HIGH_DEPTH_MODES = ("I", "F")


def _is_high_depth(mode: str) -> bool:
    return mode in _HIGH_DEPTH_MODES or mode.startswith("I;16")


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file says: `width`/`height` as the image is read (after the
    EXIF orientation), `channels` of the stored file, PIL `mode`, EXIF `orientation` (1 when
    absent or upright) and `high_bit_depth` (samples of more than 8 bits, scaled when read)."""

    width: int
    height: int
    channels: int
    mode: str
    orientation: int = 1
    high_bit_depth: bool = False

    @property
    def stored_size(self) -> tuple[int, int]:
        """(width, height) of the stored pixels, before the orientation is applied."""
        if self.orientation in _TRANSPOSING:
            return self.height, self.width
        return self.width, self.height

    @property
    def orientation_name(self) -> str:
        return _ORIENTATION_NAMES.get(self.orientation, "upright")


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block: PIL's exif_transpose ignores it too
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION_NAMES else 1


def _orients_itself(im: Image.Image) -> bool:
    """PIL's TIFF reader applies the orientation tag itself: its size is already the oriented
    one, and the pixels are turned when they are loaded (on most paths; see
    `_pending_orientation`)."""
    return im.format == "TIFF"


def _pending_orientation(im: Image.Image) -> int:
    """The orientation still to apply to the pixels of a loaded image: the EXIF one, or for a
    TIFF the orientation tag PIL left in place (it removes the tag when it turned the pixels)."""
    if not _orients_itself(im):
        return _orientation(im)
    value = getattr(im, "tag_v2", {}).get(ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and value in _ORIENTATION_NAMES else 1


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def probe_image(path: str | Path, decode: bool = False) -> ImageInfo:
    """The `ImageInfo` of an image file from its header; with `decode` every pixel is decoded
    first (`read_image`: finds truncated and corrupt files). Raises DatasetError naming the file (kind
    `missing_image` or `unreadable_image`)."""
    path = Path(path)
    if decode:
        read_image(path)  # every pixel, with the same checks as training
    try:
        with Image.open(path) as im:
            width, height = im.size
            pre_oriented = _orients_itself(im)
            info = ImageInfo(
                width=int(width),
                height=int(height),
                channels=_MODE_CHANNELS.get(im.mode, len(im.getbands())),
                mode=im.mode,
                orientation=_orientation(im),
                high_bit_depth=_is_high_depth(im.mode),
            )
    except FileNotFoundError as exc:
        raise DatasetError(path, "image file not found", kind="missing_image") from exc
    except Image.DecompressionBombError as exc:
        raise DatasetError(path, f"too large to read: {_describe(exc)}", kind="unreadable_image") from exc
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, struct.error...)
        detail = f"cannot read the image header: {_describe(exc)}"
        raise DatasetError(path, detail, kind="unreadable_image") from exc
    if info.orientation in _TRANSPOSING and not pre_oriented:
        info = replace(info, width=info.height, height=info.width)
    return info


def to_8bit(im: Image.Image) -> Image.Image:
    """An image with more than 8 bits per sample (modes I;16*, I, F) as an 8-bit grey "L"
    image, scaled by the range of its bit depth (see the module docstring); other images are
    returned unchanged."""
    if not _is_high_depth(im.mode):
        return im
    if im.mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.uint32) >> 8
    elif im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        if a.size == 0 or (a.min() >= 0 and a.max() <= 0xFFFF):
            arr = a >> 8
        else:
            lo, hi = int(a.min()), int(a.max())
            arr = (a - lo) * 255 // max(hi - lo, 1)
    else:  # "F"
        f = np.nan_to_num(np.asarray(im, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        in_unit = f.size == 0 or (f.min() >= 0.0 and f.max() <= 1.0)
        f_lo, f_hi = (0.0, 1.0) if in_unit else (float(f.min()), float(f.max()))
        arr = np.rint((f - f_lo) * 255.0 / max(f_hi - f_lo, 1e-12))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")


def read_image(path: str | Path) -> Tensor:
    """Decode an image file to uint8 RGB [3, H, W]: EXIF orientation applied, more than 8 bits
    per sample scaled to 8, grey/palette/alpha/CMYK converted to RGB (module docstring). Raises
    DatasetError naming the file (kind `missing_image` or `unreadable_image`) when it is missing,
    unreadable, truncated, corrupt or too large for PIL's decompression-bomb guard."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            header = im.size
            if not _orients_itself(im) and _orientation(im) in _TRANSPOSING:
                header = header[1], header[0]  # the size the view will have
            im.load()
            pending = _pending_orientation(im)
            oriented = im.transpose(_TRANSPOSE[pending]) if pending in _TRANSPOSE else im
            eight = to_8bit(oriented)
            rgb = eight if eight.mode == "RGB" else eight.convert("RGB")
            array = np.asarray(rgb, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DatasetError(path, "cannot read image: file not found", kind="missing_image") from exc
    except Image.DecompressionBombError as exc:
        raise DatasetError(path, f"too large to read: {_describe(exc)}", kind="unreadable_image") from exc
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, struct.error...)
        raise DatasetError(path, f"cannot decode image: {_describe(exc)}", kind="unreadable_image") from exc
    if array.ndim != 3 or array.shape[2] != 3:  # pragma: no cover - convert("RGB") guarantees it
        raise DatasetError(path, f"decoded to an unexpected shape {array.shape}", kind="unreadable_image")
    if (array.shape[1], array.shape[0]) != header:  # a corrupt file whose header and pixels disagree
        raise DatasetError(
            path,
            f"cannot decode image: decoded to {array.shape[1]}x{array.shape[0]} pixels but its header "
            f"says {header[0]}x{header[1]}",
            kind="unreadable_image",
        )
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def image_size_from_header(path: Path) -> tuple[int, int]:
    """(width, height) of an image file as it is read (EXIF orientation applied), from its
    header only (no decoding; see `probe_image`).

    Raises DatasetError naming the file when it is missing or not a readable image.
    """
    info = probe_image(path)
    return info.width, info.height
