"""Tile geometry for small objects on large images: windows, box clipping, training tile sampling.

A *tiling* resizes an image by `scale` and cuts it into `tile` x `tile` windows (scaled pixels)
that overlap their neighbours by at least `overlap` scaled pixels. Everything here works in
*original* pixels: a window is `tile / scale` original pixels wide, and cropping the original
then warping the crop to the network input equals resizing first and cropping then, up to
interpolation (and is cheaper). Windows are spread evenly: along a side of L pixels with windows
of t and minimum overlap o there are n = ceil((L - o) / (t - o)) windows starting at
round(i (L - t) / (n - 1)); a side with L <= t has one window spanning it (the window is then
narrower than `tile / scale` and is warped to the input like a whole image). Example: a
2560 x 1920 photo at scale 0.5 with 512 tiles and overlap 64 gives 3 x 2 windows of 1024 x 1024
original pixels starting at x = 0, 768, 1536 and y = 0, 896.

Windows are xyxy in original pixels, integers stored as float (x2, y2 exclusive edges).

Box visibility: a box cut by a window keeps `visible_fraction` = area inside the window /
(min(w, window w) * min(h, window h)), i.e. the share of what a window of that size could show of
it at best. A small box half outside scores 0.5; a band wider than the window that crosses it
scores 1 (no window shows more of it). Boxes scoring below `min_visibility` are dropped.

Training tile sampling (`TileSampler`, used by `TiledTransform`): with probability
`positive_fraction` a window is placed around a ground-truth box chosen uniformly (the window
contains the box when the box fits, otherwise lies inside its span), else anywhere in the image
(uniform). With the default 0.75 and the 6 windows of a 2560 x 1920 photo at scale 0.5, a sample
shows a defect about 4 times as often as a window drawn anywhere would when the defect is small.
All draws use torch's global generator, which `DetectionDataset` seeds per item.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from ssd.config import TilingConfig
from ssd.data.records import Record

TransformFn = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]


@dataclass(frozen=True)
class Tiling:
    """Plain tiling parameters (see the module docstring); `ssd.config.TilingConfig` maps onto
    it with `Tiling.from_config`."""

    scale: float = 0.5
    tile: int = 512
    overlap: int = 64
    full_image: bool = False
    min_visibility: float = 0.5
    positive_fraction: float = 0.75

    def __post_init__(self) -> None:
        if self.scale <= 0 or self.tile <= 0 or not 0 <= self.overlap < self.tile:
            raise ValueError(f"tiling needs scale > 0, tile > 0 and 0 <= overlap < tile, got {self}")
        if not 0 < self.min_visibility <= 1 or not 0 <= self.positive_fraction <= 1:
            raise ValueError(f"tiling needs min_visibility in (0, 1], positive_fraction in [0, 1]: {self}")

    @classmethod
    def from_config(cls, cfg: TilingConfig) -> Tiling:
        """The parameters of the config section `input.tiling`."""
        return cls(
            scale=cfg.scale,
            tile=cfg.tile,
            overlap=cfg.overlap,
            full_image=cfg.full_image,
            min_visibility=cfg.min_visibility,
            positive_fraction=cfg.positive_fraction,
        )

    def window_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) of a window in original pixels on a `width` x `height` image."""
        side = max(1, round(self.tile / self.scale))
        return min(side, width), min(side, height)

    def windows(self, width: int, height: int) -> Tensor:
        """[T, 4] xyxy windows (original pixels), row-major (y, then x); with `full_image` the
        whole image is appended as the last window."""
        tw, th = self.window_size(width, height)
        ov = self.overlap / self.scale
        xs = axis_starts(width, tw, ov)
        ys = axis_starts(height, th, ov)
        rows = [[x, y, x + tw, y + th] for y in ys for x in xs]
        if self.full_image:
            rows.append([0, 0, width, height])
        return torch.tensor(rows, dtype=torch.float32)


def axis_starts(length: int, window: int, min_overlap: float) -> list[int]:
    """Window starts along one side: as few windows of `window` pixels as cover `length` with at
    least `min_overlap` pixels shared by neighbours, spread evenly (first at 0, last ending at
    `length`)."""
    if window >= length:
        return [0]
    n = math.ceil((length - min_overlap) / (window - min_overlap))
    n = max(n, 2)
    return [round(i * (length - window) / (n - 1)) for i in range(n)]


# --------------------------------------------------------------------------- boxes


def visible_fraction(boxes_px: Tensor, window: Tensor) -> Tensor:
    """[G] share of each box (xyxy, [G, 4]) visible in `window` ([4] xyxy), relative to the most
    a window of that size could show: area(box ∩ window) / (min(w, W) * min(h, H))."""
    ww, wh = window[2] - window[0], window[3] - window[1]
    iw = (torch.minimum(boxes_px[:, 2], window[2]) - torch.maximum(boxes_px[:, 0], window[0])).clamp(min=0)
    ih = (torch.minimum(boxes_px[:, 3], window[3]) - torch.maximum(boxes_px[:, 1], window[1])).clamp(min=0)
    bw = (boxes_px[:, 2] - boxes_px[:, 0]).clamp(min=0)
    bh = (boxes_px[:, 3] - boxes_px[:, 1]).clamp(min=0)
    best = torch.minimum(bw, ww) * torch.minimum(bh, wh)
    return torch.where(best > 0, iw * ih / best.clamp(min=1e-12), torch.zeros_like(best))


def clip_to_window(boxes_px: Tensor, window: Tensor, min_visibility: float) -> tuple[Tensor, Tensor]:
    """Boxes as a crop to `window` sees them: (kept boxes [G', 4] xyxy in window pixels, clipped
    to it; boolean keep mask [G]). A box is kept when `visible_fraction >= min_visibility`."""
    keep = visible_fraction(boxes_px, window) >= min_visibility
    b = boxes_px[keep]
    out = torch.stack(
        [
            b[:, 0].clamp(window[0], window[2]) - window[0],
            b[:, 1].clamp(window[1], window[3]) - window[1],
            b[:, 2].clamp(window[0], window[2]) - window[0],
            b[:, 3].clamp(window[1], window[3]) - window[1],
        ],
        dim=1,
    ).reshape(-1, 4)
    return out, keep


def records_to_tiles(records: Sequence[Record], tiling: Tiling) -> list[Record]:
    """One record per inference window of every record (ids `"<image_id>@x0,y0"`, size the
    window's), its boxes clipped to the window and kept by `tiling.min_visibility` as in
    training: the boxes as the network sees them in tiled mode. Windows without a kept box are
    records without boxes. No image is opened."""
    out: list[Record] = []
    for rec in records:
        boxes = torch.from_numpy(np.asarray(rec.boxes_px, np.float64).reshape(-1, 4))
        for win in tiling.windows(rec.width, rec.height).double():
            clipped, keep = clip_to_window(boxes, win, tiling.min_visibility)
            keep_np = keep.numpy()
            x0, y0 = int(win[0]), int(win[1])
            out.append(
                replace(
                    rec,
                    image_id=f"{rec.image_id}@{x0},{y0}",
                    width=int(win[2] - win[0]),
                    height=int(win[3] - win[1]),
                    boxes_px=clipped.numpy().astype(np.float32),
                    labels=np.asarray(rec.labels, np.int64)[keep_np],
                    difficult=np.asarray(rec.difficult, bool).reshape(-1)[keep_np]
                    if np.asarray(rec.difficult).size
                    else np.zeros(int(keep_np.sum()), bool),
                )
            )
    return out


# --------------------------------------------------------------------------- training


class TileSampler:
    """Draws one training window per sample (see the module docstring); call under a seeded
    torch global generator."""

    def __init__(self, tiling: Tiling) -> None:
        self.tiling = tiling

    def __call__(self, width: int, height: int, boxes_px: Tensor) -> Tensor:
        """[4] xyxy window (integer original pixels) on a `width` x `height` image."""
        tw, th = self.tiling.window_size(width, height)
        u = float(torch.rand(()))
        if boxes_px.shape[0] > 0 and u < self.tiling.positive_fraction:
            i = int(torch.randint(boxes_px.shape[0], ()))
            b = boxes_px[i].tolist()
            x0 = _place(b[0], b[2], tw, width)
            y0 = _place(b[1], b[3], th, height)
        else:
            x0 = int(torch.randint(width - tw + 1, ()))
            y0 = int(torch.randint(height - th + 1, ()))
        return torch.tensor([x0, y0, x0 + tw, y0 + th], dtype=torch.float32)


def _place(lo: float, hi: float, window: int, length: int) -> int:
    """A random window start (integer) so that the window holds [lo, hi] when it fits, or lies
    inside it otherwise; clamped to the image."""
    a, b = min(lo, hi - window), max(lo, hi - window)
    a, b = max(0.0, a), min(float(length - window), b)
    if b < a:  # the box's span lies outside the reachable starts: take the nearest one
        return round(min(max(a, 0.0), float(length - window)))
    start = math.floor(a + float(torch.rand(())) * (b - a))
    return int(min(max(start, 0), length - window))


class TiledTransform:
    """Wraps a `DetectionTransform`-style callable: crops a sampled window of the uint8 image,
    clips the boxes to it (dropping those below `min_visibility`), then runs `inner` on the crop
    (augmentation and the warp to the network input)."""

    def __init__(self, inner: TransformFn, tiling: Tiling) -> None:
        self.inner = inner
        self.tiling = tiling
        self.sampler = TileSampler(tiling)

    def __call__(
        self, image: Tensor, boxes_px: Tensor, labels: Tensor, difficult: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        h, w = int(image.shape[-2]), int(image.shape[-1])
        boxes = boxes_px.to(torch.float32).reshape(-1, 4)
        win = self.sampler(w, h, boxes)
        clipped, keep = clip_to_window(boxes, win, self.tiling.min_visibility)
        x0, y0, x1, y1 = (int(v) for v in win.tolist())
        crop = image[:, y0:y1, x0:x1]
        return self.inner(crop, clipped, labels[keep], difficult[keep])


def small_before_tiling(
    records: Sequence[Record],
    tiling: Tiling,
    image_size: int,
    *,
    include_difficult: bool = True,
    small: float = 32.0,
) -> np.ndarray:
    """[N] bool over the boxes of `records_to_tiles(records, tiling)` in the order
    `ssd.priors.fit.records_to_boxes` lists them: whether the *original* box is small after the
    untiled warp of its whole image to `image_size` (sqrt of its warped area < `small` input
    pixels). Lets a tiled fit report the boxes that are small for the untiled network."""
    out: list[np.ndarray] = []
    for rec in records:
        boxes = torch.from_numpy(np.asarray(rec.boxes_px, np.float64).reshape(-1, 4))
        if boxes.shape[0] == 0:
            continue
        w_in = (boxes[:, 2] - boxes[:, 0]) * image_size / rec.width
        h_in = (boxes[:, 3] - boxes[:, 1]) * image_size / rec.height
        is_small = (w_in * h_in).clamp(min=0).sqrt() < small
        difficult = np.asarray(rec.difficult, bool).reshape(-1)
        wanted = np.ones(boxes.shape[0], bool) if include_difficult or not difficult.size else ~difficult
        for win in tiling.windows(rec.width, rec.height).double():
            _, keep = clip_to_window(boxes, win, tiling.min_visibility)
            sel = keep.numpy() & wanted
            out.append(is_small.numpy()[sel])
    return np.concatenate(out) if out else np.zeros(0, bool)
