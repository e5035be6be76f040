"""Seeded synthetic aluminum-defect images in the Tianchi layout (see `ssd.data.labelme`).

`generate_dataset` writes, under `out_dir`:

* one folder per defect, named by the Chinese label (`擦花/擦花_00012.jpg` + `.json`), holding the
  images whose *first* defect is that class; multi-defect images list every box in their JSON;
* `无瑕疵样本/` with the defect-free images (no JSON), as in the competition data;
* `train.txt` / `val.txt`: image paths relative to `out_dir` (written last, so a folder holding
  `train.txt` is complete), and `synthetic.json` (parameters + summary).

Each image is a brushed / anodized metal surface (horizontal brushing streaks, a lighting gradient
and highlight, grain, one of a few anodizing tints) with one or more of the ten defects drawn with
the box geometry of DATA.md (p10/p50/p90 of width and height, share of full-width boxes; sizes
given for 2560x1920 are scaled with the image). Every class has its own look so that a small
detector can learn it:

| class | look |
|---|---|
| non_conductive | whitish matte patch with little texture, mostly full width |
| scratch | thin bright lines with a dark edge, crossing the box |
| corner_bottom_leak | dark blue-grey band against the image's top/bottom edge, a bright specular line |
| orange_peel | band of shaded dimples (relief lighting), slightly warm |
| bottom_leak | band of rough yellow-grey substrate with ragged, dark-rimmed edges |
| jet | 2-4 dark blue-grey streaks, tapering along x |
| paint_bubble | small cream domes lit from the top-left, often in a row, several boxes per image |
| pit | band of small dark dents with a bright lower rim |
| variegated | tall band of colour mottling (red/green/blue blotches) |
| dirty_spot | dark brown irregular blots, several per image |

Width and height of a box that is not full width are drawn jointly (a Gaussian copula, see
`sample_wh`): each keeps exactly the p10/p50/p90 of DATA.md, and their normal scores are correlated
with the class's `rho` (an assumption: DATA.md gives only the marginals), so that a tiny width
with a huge height (a 40 x 1300 px dirty spot) is as rare as it is on real defects.

Class frequencies follow Table 1 (every class at least once when there are >= 10 defect images),
~9 % of the images carry a second class, ~3 % are defect-free. Randomness: one
`numpy.random.Generator` per image seeded by (seed, image index), plus one for the plan, so the
same seed gives the same bytes, whatever the number of worker processes. Large images are drawn on
a canvas of at most `RENDER_MAX_WIDTH` px width and upsampled (bilinear) before JPEG encoding: the
network sees them warped to 512 px anyway.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ssd.data.labelme import DEFECT_FREE_FOLDER, TIANCHI_CLASSES, TIANCHI_LABELS

log = logging.getLogger(__name__)

RENDER_MAX_WIDTH = 1280
REFERENCE_SIZE = (2560, 1920)  # the DATA.md pixel figures are for this (width, height)
MULTI_DEFECT_FRACTION = 0.09
DEFECT_FREE_FRACTION = 0.03
JPEG_QUALITY = 90
SUMMARY_FILE = "synthetic.json"
GENERATOR_VERSION = 2  # 2: correlated (copula) width and height

ENGLISH_TO_CHINESE: dict[str, str] = {en: zh for zh, en in TIANCHI_LABELS.items()}

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class DefectGeometry:
    """Box statistics of one class in 2560x1920 pixels (DATA.md).

    `h`: p10/p50/p90 of the height. `w`: p10/p50/p90 of the width of the boxes that are *not*
    full width when `full` is set (the probability of a full-width box); with `full=None` the
    width comes from `w` alone and a width >= 97 % of the image counts as full width.
    `count`: images in Table 1 (the class frequency). `instances`: min/max boxes per image.
    `rho`: correlation of the normal scores of width and height (Gaussian copula) of the boxes
    that are not full width. DATA.md gives only the marginals; a positive dependence is our
    assumption (bigger defects are bigger both ways): 0.8 for compact spots and bubbles, 0.7 for
    the other classes (thin scratches and streaks, partial bands, whose extent along one axis says
    less about the other).
    """

    count: int
    h: tuple[float, float, float]
    w: tuple[float, float, float]
    full: float | None
    instances: tuple[int, int] = (1, 1)
    rho: float = 0.7


_PARTIAL_BAND_W = (1300.0, 1900.0, 2400.0)  # bands that do not span the whole width

GEOMETRY: dict[str, DefectGeometry] = {
    "non_conductive": DefectGeometry(360, (59, 317, 590), (198, 800, 2200), 0.63),
    "scratch": DefectGeometry(128, (69, 147, 408), (102, 772, 2560), None, (1, 2)),
    "corner_bottom_leak": DefectGeometry(346, (87, 133, 223), _PARTIAL_BAND_W, 0.97),
    "orange_peel": DefectGeometry(173, (74, 294, 931), _PARTIAL_BAND_W, 1.0),
    "bottom_leak": DefectGeometry(538, (74, 135, 321), _PARTIAL_BAND_W, 0.94),
    "jet": DefectGeometry(86, (97, 168, 265), (261, 820, 1901), None, (1, 2)),
    "paint_bubble": DefectGeometry(82, (25, 58, 103), (31, 217, 2498), None, (1, 5), rho=0.8),
    "pit": DefectGeometry(407, (36, 55, 142), _PARTIAL_BAND_W, 1.0),
    "variegated": DefectGeometry(365, (280, 556, 706), _PARTIAL_BAND_W, 1.0),
    "dirty_spot": DefectGeometry(251, (39, 86, 1332), (41, 113, 2527), None, (1, 4), rho=0.8),
}
assert tuple(GEOMETRY) == TIANCHI_CLASSES

_Z90 = 1.2815516  # standard normal 90th percentile


# --------------------------------------------------------------------------- sampling


def quantile_transform(z: float, q: tuple[float, float, float]) -> float:
    """The value at normal score `z` of a distribution whose p10/p50/p90 are `q`: a log-normal
    with separate spreads below and above the median (so skewed statistics such as p50 = p90 are
    met exactly). Monotone in `z`; z = -1.2816 / 0 / 1.2816 give p10 / p50 / p90."""
    p10, p50, p90 = q
    ref = p90 if z >= 0 else p10
    return float(p50 * (ref / p50) ** (abs(z) / _Z90))


def sample_quantiles(rng: np.random.Generator, q: tuple[float, float, float]) -> float:
    """A draw whose p10/p50/p90 are `q` (`quantile_transform` of a standard normal)."""
    return quantile_transform(float(rng.standard_normal()), q)


def sample_wh(
    rng: np.random.Generator,
    qw: tuple[float, float, float],
    qh: tuple[float, float, float],
    rho: float,
) -> tuple[float, float]:
    """(w, h) with the marginal quantiles `qw` and `qh` and a Gaussian copula of correlation
    `rho`: z_h ~ N(0, 1), z_w = rho z_h + sqrt(1 - rho^2) e with e ~ N(0, 1) independent, so
    z_w ~ N(0, 1) as well (each marginal is exactly that of `sample_quantiles`) while the
    normal scores have correlation `rho`."""
    z_h, e = (float(v) for v in rng.standard_normal(2))
    z_w = rho * z_h + math.sqrt(max(0.0, 1.0 - rho * rho)) * e
    return quantile_transform(z_w, qw), quantile_transform(z_h, qh)


def _sample_box(
    rng: np.random.Generator, cls: str, width: int, height: int, placed: list[Box], force: bool
) -> Box | None:
    """A box (xyxy, pixels) for `cls` that overlaps no placed box by more than 30 % of the smaller
    one; None after 30 tries unless `force`. Width and height come from `sample_wh` (the class's
    quantiles, correlated by its `rho`); a full-width box keeps the height and spans the image."""
    g = GEOMETRY[cls]
    sx, sy = width / REFERENCE_SIZE[0], height / REFERENCE_SIZE[1]
    min_side = 3.0
    candidate: Box | None = None
    for _ in range(30):
        w_ref, h_ref = sample_wh(rng, g.w, g.h, g.rho)
        h = min(max(h_ref * sy, min_side), height * 0.9)
        full = bool(rng.random() < g.full) if g.full is not None else False
        w = width if full else min(max(w_ref * sx, min_side), width)
        if g.full is not None and not full:
            w = min(w, 0.95 * width)
        if w >= 0.97 * width:
            w = width
        x1 = 0.0 if w >= width else float(rng.uniform(0, width - w))
        if cls == "corner_bottom_leak" and rng.random() < 0.7:
            y1 = 0.0 if rng.random() < 0.5 else height - h  # against the profile's edge
        else:
            y1 = float(rng.uniform(0, height - h))
        candidate = (x1, y1, x1 + w, y1 + h)
        if all(_overlap_fraction(candidate, b) <= 0.3 for b in placed):
            return candidate
    return candidate if force else None


def _overlap_fraction(a: Box, b: Box) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(smaller, 1e-9)


# --------------------------------------------------------------------------- drawing helpers


def _smooth(rng: np.random.Generator, h: int, w: int, cell_y: float, cell_x: float) -> np.ndarray:
    """[h, w] float32 smooth noise (about unit variance): a coarse Gaussian grid with spacing
    (cell_y, cell_x) pixels, bilinearly upsampled."""
    gh = max(2, math.ceil(h / max(cell_y, 1.0)) + 2)
    gw = max(2, math.ceil(w / max(cell_x, 1.0)) + 2)
    grid = rng.standard_normal((gh, gw), dtype=np.float32) * 1.6
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BILINEAR))


def _smooth1d(rng: np.random.Generator, n: int, cell: float) -> np.ndarray:
    knots = rng.standard_normal(max(2, math.ceil(n / max(cell, 1.0)) + 2))
    return np.interp(np.arange(n) / max(cell, 1.0), np.arange(knots.size), knots).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _band_alpha(rng: np.random.Generator, h: int, w: int, ragged: float, soft: float) -> np.ndarray:
    """[h, w] opacity of a band whose top and bottom edges wander by up to `ragged` * h and touch
    the box's top and bottom rows somewhere (so the box stays tight)."""
    top = ragged * h * _unit(_smooth1d(rng, w, max(8.0, w / 12)))
    bottom = h - ragged * h * _unit(_smooth1d(rng, w, max(8.0, w / 12)))
    yy = np.arange(h, dtype=np.float32)[:, None] + 0.5
    soft = max(soft, 0.5)
    a = np.clip((yy - top[None, :]) / soft + 0.5, 0, 1) * np.clip((bottom[None, :] - yy) / soft + 0.5, 0, 1)
    return a.astype(np.float32)


def _blend(reg: np.ndarray, target: np.ndarray, alpha: np.ndarray) -> None:
    """reg <- reg * (1 - alpha) + target * alpha (in place); target [.., 3] or broadcastable."""
    a = alpha[..., None]
    reg *= 1.0 - a
    reg += target * a


def _tight(alpha: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """Tight (x1, y1, x2, y2) of `alpha > threshold` in the region (x2/y2 exclusive); all 0 when
    nothing passes (the defect is then dropped)."""
    mask = alpha > threshold
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, 0, 0, 0
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@dataclass(frozen=True)
class DrawContext:
    """`unit`: canvas pixels per pixel of a 2560-wide image (sizes of dents, lines, bumps);
    `at_top`: the box centre is in the upper half; `full_width`: the box spans the image."""

    unit: float
    at_top: bool
    full_width: bool


Tight = tuple[int, int, int, int] | None
Drawer = Callable[[np.ndarray, np.random.Generator, DrawContext], Tight]
# A drawer paints one defect into `reg` ([h, w, 3] float32 view of the canvas: the box region)
# and returns the tight box of what it drew in region pixels, or None for "the whole region".


def _draw_pit(reg: np.ndarray, rng: np.random.Generator, ctx: DrawContext) -> Tight:
    h, w = reg.shape[:2]
    alpha = _band_alpha(rng, h, w, 0.2, 1.5)
    reg *= (1.0 - 0.12 * alpha)[..., None]
    r_mean = float(np.clip(h * rng.uniform(0.12, 0.2), 1.2, max(1.2, 28.0 * ctx.unit)))
    n = int(0.22 * h * w / (math.pi * r_mean**2)) + 1
    cx = rng.uniform(0, w, n)
    cy = rng.uniform(0, h, n)
    rr = r_mean * rng.uniform(0.6, 1.3, n)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for x, y, r in zip(cx.tolist(), cy.tolist(), rr.tolist()):
        draw.ellipse((x - r, y - r * 0.8, x + r, y + r * 0.8), fill=255)
    m = np.asarray(canvas, np.float32) / 255.0 * (alpha > 0.4)
    shift = max(1, round(r_mean / 2.5))
    rim = np.clip(np.roll(m, shift, axis=0) - m, 0, 1)  # lit lower rim of each dent
    reg -= (95.0 * m)[..., None]
    reg += (55.0 * rim * alpha)[..., None]
    return None


def _draw_bottom_leak(reg: np.ndarray, rng: np.random.Generator, ctx: DrawContext) -> Tight:
    h, w = reg.shape[:2]
    alpha = _band_alpha(rng, h, w, 0.3, 2.5)
    tex = 0.6 * _smooth(rng, h, w, 2.5, 2.5) + 0.8 * _smooth(rng, h, w, 10, 14)
    base = np.asarray(rng.uniform([110, 100, 78], [128, 118, 96]), np.float32)
    target = base + 24.0 * tex[..., None]
    _blend(reg, target, 0.92 * alpha)
    rim = 4.0 * alpha * (1.0 - alpha)
    reg -= (55.0 * rim)[..., None]
    return None


def _draw_variegated(reg: np.ndarray, rng: np.random.Generator, ctx: DrawContext) -> Tight:
    h, w = reg.shape[:2]
    alpha = _band_alpha(rng, h, w, 0.2, max(2.0, 0.06 * h))
    cell = max(6.0, h / 5)
    for c in range(3):
        reg[..., c] += 30.0 * _smooth(rng, h, w, cell, cell * 1.5) * alpha
    reg += (18.0 * _smooth(rng, h, w, cell / 2, cell / 2) * alpha)[..., None]
    return None


def _draw_corner_bottom_leak(reg: np.ndarray, rng: np.random.Generator, ctx: DrawContext) -> Tight:
    h, w = reg.shape[:2]
    alpha = _band_alpha(rng, h, w, 0.12, 1.5)
    d = (np.arange(h, dtype=np.float32) + 0.5) / h  # 0 at the top row of the box
    if not ctx.at_top:
        d = 1.0 - d  # distance from the image edge the band lies against
    lum = 45.0 + 95.0 * d**1.5
    d0 = rng.uniform(0.55, 0.8)
    lum = lum + 120.0 * np.exp(-(((d - d0) * h / max(1.2, 4.0 * ctx.unit)) ** 2))
    tint = np.asarray([0.85, 0.9, 1.05], np.float32)
    target = lum[:, None, None] * tint + 6.0 * _smooth(rng, h, w, 3, 12)[..., None]
    _blend(reg, target, 0.95 * alpha)
    return None


def _draw_orange_peel(reg: np.ndarray, rng: np.random.Generator, ctx: DrawContext) -> Tight:
    h, w = reg.shape[:2]
    alpha = _band_alpha(rng, h, w, 0.15, max(1.5, 0.04 * h))
    cell = max(2.0, 28.0 * ctx.unit)
    hf = _smooth(rng, h, w, cell, cell)
    gy, gx = np.gradient(hf)
    shade = gy + 0.5 * gx
    shade *= 1.0 / (float(shade.std()) + 1e-6)
    reg += (32.0 * shade * alpha)[..., None]
    reg += alpha[..., None] * np.asarray([8.0, 2.0, -8.0], np.float32)
    return None


def _draw_non_conductive(reg: np.ndarray, rng: np.random.Generator, ctx: DrawContext) -> Tight:
    h, w = reg.shape[:2]
    alpha = _band_alpha(rng, h, w, 0.2, 3.0)
    if not ctx.full_width:  # soft ends of a partial patch
        soft_x = max(1.0, 0.05 * w)
        xx = np.arange(w, dtype=np.float32)[None, :] + 0.5
        alpha = alpha * np.clip(xx / soft_x + 0.5, 0, 1) * np.clip((w - xx) / soft_x + 0.5, 0, 1)
    lum = 236.0 + 4.0 * _smooth(rng, h, w, 16, 16)
    target = lum[..., None] * np.asarray([1.0, 1.0, 0.97], np.float32)
    _blend(reg, target, 0.85 * alpha)
    return None


def _draw_scratch(reg: np.ndarray, rng: np.random.Generator, ctx: DrawContext) -> Tight:
    h, w = reg.shape[:2]
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    lw = max(1, round(6.0 * ctx.unit))
    along_x = w >= h
    # the main scratch runs corner to corner along the box's long side; a scuff of finer,
    # shorter scratches runs beside it
    a, b = rng.uniform(0, 0.1), rng.uniform(0.9, 1.0)
    if rng.random() < 0.5:
        a, b = b, a
    for k in range(1 + int(rng.integers(2, 7))):
        n = 8
        if k == 0:
            t0, t1, off = 0.0, 1.0, 0.0
        else:
            t0, t1 = sorted(rng.uniform(0, 1, 2))
            off = rng.uniform(-0.35, 0.35)
        tt = t0 + (t1 - t0) * np.linspace(0.0, 1.0, n)
        across = np.clip(a + (b - a) * tt + off + rng.normal(0, 0.015, n), 0, 1)
        if along_x:
            pts = list(zip((tt * (w - 1)).tolist(), (across * (h - 1)).tolist()))
        else:
            pts = list(zip((across * (w - 1)).tolist(), (tt * (h - 1)).tolist()))
        draw.line(pts, fill=255 if k == 0 else 190, width=lw if k == 0 else max(1, lw // 2))
    m = np.asarray(canvas, np.float32) / 255.0
    shadow = np.clip(np.roll(m, 1, axis=0) + np.roll(m, 1, axis=1) - 2 * m, 0, 1)
    reg += (95.0 * m)[..., None]
    reg -= (50.0 * shadow)[..., None]
    return _tight(np.maximum(m, shadow), 0.05)


def _draw_jet(reg: np.ndarray, rng: np.random.Generator, ctx: DrawContext) -> Tight:
    h, w = reg.shape[:2]
    n = int(rng.integers(2, 5))
    yy = np.arange(h, dtype=np.float32)[:, None] + 0.5
    u = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w
    if rng.random() < 0.5:
        u = 1.0 - u  # flowing to the left
    acc = np.zeros((h, w), np.float32)
    for k in range(n):
        t = h * rng.uniform(0.07, 0.15)
        if k == 0:
            yc = t
        elif k == n - 1:
            yc = h - t
        else:
            yc = rng.uniform(t, h - t)
        slope = rng.uniform(-0.15, 0.15) * h
        centre = yc + slope * (u - 0.5)
        centre = np.clip(centre, t, h - t)
        taper = 0.35 + 0.65 * (1.0 - u) ** 1.5
        acc += np.exp(-(((yy - centre) / t) ** 2)) * taper
    a = 0.85 * np.clip(acc, 0, 1)
    _blend(reg, np.asarray([82.0, 94.0, 122.0], np.float32), a)
    return _tight(a, 0.08)


def _bubble(reg: np.ndarray, cx: float, cy: float, rx: float, ry: float, colour: np.ndarray) -> None:
    """A lit elliptical dome centred at (cx, cy) with radii (rx, ry), region pixels."""
    h, w = reg.shape[:2]
    x0, x1 = max(0, int(cx - rx)), min(w, math.ceil(cx + rx))
    y0, y1 = max(0, int(cy - ry)), min(h, math.ceil(cy + ry))
    if x1 <= x0 or y1 <= y0:
        return
    u = (np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx) / rx
    v = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy) / ry
    r2 = u * u + v * v
    inside = np.clip((1.0 - r2) * min(rx, ry) * 0.5 + 0.5, 0, 1)  # ~1 px anti-aliased rim
    z = np.sqrt(np.clip(1.0 - r2, 0, 1))
    light = (-0.45 * u - 0.55 * v + 0.7 * z) / 1.0  # lit from the top-left
    lum = 200.0 + 70.0 * (light - 0.5) - 50.0 * np.clip(r2 - 0.75, 0, 1) * 4
    target = lum[..., None] * colour
    _blend(reg[y0:y1, x0:x1], target, 0.95 * inside)


def _draw_paint_bubble(reg: np.ndarray, rng: np.random.Generator, ctx: DrawContext) -> Tight:
    h, w = reg.shape[:2]
    colour = np.asarray(rng.uniform([0.98, 0.96, 0.88], [1.02, 1.0, 0.95]), np.float32)
    if w <= 2.5 * h:  # one blister filling the box
        _bubble(reg, w / 2, h / 2, w / 2, h / 2, colour)
        return None
    x, end = 0.0, 0.0  # a row of blisters: the first one full height, then smaller ones
    first = True
    while x < w:
        d = min(h if first else h * rng.uniform(0.6, 1.0), w - x)
        if d < 0.3 * h:
            break
        cy = h / 2 if first else rng.uniform(d / 2, h - d / 2)
        _bubble(reg, x + d / 2, cy, d / 2, d / 2, colour)
        end = x + d
        x = end + h * rng.uniform(0.1, 0.6)
        first = False
    return 0, 0, min(w, math.ceil(end)), h


def _draw_dirty_spot(reg: np.ndarray, rng: np.random.Generator, ctx: DrawContext) -> Tight:
    h, w = reg.shape[:2]
    xx = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w * 2 - 1
    yy = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h * 2 - 1
    e = 1.0 - xx * xx - yy * yy
    n = _smooth(rng, h, w, max(2.0, h / 4), max(2.0, w / 4))
    a = 0.88 * np.clip((e + 0.3 * n) * 4.0, 0, 1)
    target = np.asarray(rng.uniform([55, 45, 32], [72, 60, 46]), np.float32) + 10.0 * n[..., None]
    _blend(reg, target, a)
    return _tight(a, 0.1)


DRAWERS: dict[str, Drawer] = {
    "non_conductive": _draw_non_conductive,
    "scratch": _draw_scratch,
    "corner_bottom_leak": _draw_corner_bottom_leak,
    "orange_peel": _draw_orange_peel,
    "bottom_leak": _draw_bottom_leak,
    "jet": _draw_jet,
    "paint_bubble": _draw_paint_bubble,
    "pit": _draw_pit,
    "variegated": _draw_variegated,
    "dirty_spot": _draw_dirty_spot,
}
assert tuple(DRAWERS) == TIANCHI_CLASSES

_TINTS = np.asarray(
    [[1.0, 1.0, 1.0], [0.98, 0.99, 1.04], [1.05, 1.0, 0.9], [0.95, 0.99, 1.07], [1.0, 0.98, 0.96]],
    np.float32,
)


def _surface(rng: np.random.Generator, h: int, w: int, unit: float) -> np.ndarray:
    """[h, w, 3] float32 brushed aluminium: base grey x anodizing tint, a linear lighting
    gradient, a soft highlight, horizontal brushing streaks, grain."""
    g0 = rng.uniform(135, 185)
    ys = np.linspace(-1, 1, h, dtype=np.float32)
    xs = np.linspace(-1, 1, w, dtype=np.float32)
    col = ys * rng.uniform(-18, 18)
    row = xs * rng.uniform(-18, 18)
    cx, cy = rng.uniform(-1, 1, 2)
    sx, sy = rng.uniform(0.3, 0.9, 2)
    hx = np.exp(-(((xs - cx) / sx) ** 2))
    hy = np.exp(-(((ys - cy) / sy) ** 2)) * rng.uniform(0, 28)
    brush = rng.standard_normal(h).astype(np.float32) * rng.uniform(2.5, 6.0)
    brush = np.convolve(brush, np.asarray([0.25, 0.5, 0.25], np.float32), mode="same")
    lum = (g0 + col + brush)[:, None] + row[None, :] + hy[:, None] * hx[None, :]
    # brushing streaks whose strength drifts along x: a rank-2 field (rows x smooth x-profiles)
    for _ in range(2):
        streak_rows = rng.standard_normal(h).astype(np.float32) * rng.uniform(1.5, 3.5)
        profile = _smooth1d(rng, w, max(8.0, 192.0 * unit))
        lum += streak_rows[:, None] * profile[None, :]
    grain = int(rng.integers(3, 7))
    lum += rng.integers(-grain, grain + 1, size=(h, w), dtype=np.int8)
    tint = _TINTS[int(rng.integers(len(_TINTS)))] * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    image: np.ndarray = lum[..., None] * tint
    return image


# --------------------------------------------------------------------------- one image


def render_image(
    classes: tuple[str, ...], size: tuple[int, int], seed: int, index: int
) -> tuple[bytes, list[tuple[str, tuple[int, int, int, int]]]]:
    """JPEG bytes of image `index` carrying `classes` (English names; empty = defect-free) and its
    boxes as (class, (x1, y1, x2, y2)) in integer pixels of the `size` = (width, height) image."""
    width, height = size
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, index]))
    boxes_px: list[tuple[str, Box]] = []
    for k, cls in enumerate(classes):
        lo, hi = GEOMETRY[cls].instances
        for j in range(int(rng.integers(lo, hi + 1))):
            box = _sample_box(rng, cls, width, height, [b for _, b in boxes_px], force=(k == 0 and j == 0))
            if box is not None:
                boxes_px.append((cls, box))
    scale = min(1.0, RENDER_MAX_WIDTH / width)
    cw, ch = max(1, round(width * scale)), max(1, round(height * scale))
    fx, fy = cw / width, ch / height
    unit = cw / REFERENCE_SIZE[0]
    img = _surface(rng, ch, cw, unit)
    out: list[tuple[str, tuple[int, int, int, int]]] = []
    # large defects first so that small ones stay visible on top
    for cls, (x1, y1, x2, y2) in sorted(
        boxes_px, key=lambda cb: -(cb[1][2] - cb[1][0]) * (cb[1][3] - cb[1][1])
    ):
        rx1, ry1 = max(0, math.floor(x1 * fx)), max(0, math.floor(y1 * fy))
        rx2, ry2 = min(cw, math.ceil(x2 * fx)), min(ch, math.ceil(y2 * fy))
        rx2, ry2 = max(rx2, min(cw, rx1 + 2)), max(ry2, min(ch, ry1 + 2))
        reg = img[ry1:ry2, rx1:rx2]
        ctx = DrawContext(unit=unit, at_top=(y1 + y2) < height, full_width=(x2 - x1) >= width)
        tight = DRAWERS[cls](reg, rng, ctx)
        if tight is None:
            tight = (0, 0, rx2 - rx1, ry2 - ry1)
        tx1, ty1, tx2, ty2 = tight
        if tx2 <= tx1 or ty2 <= ty1:
            continue  # too small to be drawn at this size
        bx1 = max(0, math.floor((rx1 + tx1) / fx))
        by1 = max(0, math.floor((ry1 + ty1) / fy))
        bx2 = min(width, math.ceil((rx1 + tx2) / fx))
        by2 = min(height, math.ceil((ry1 + ty2) / fy))
        out.append((cls, (bx1, by1, bx2, by2)))
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB")
    if (cw, ch) != (width, height):
        # Upsample in YCbCr: luma bilinear, chroma nearest (JPEG keeps chroma at half
        # resolution anyway): 3x cheaper than an RGB resize.
        y, cb, cr = pil.convert("YCbCr").split()
        y = y.resize((width, height), Image.Resampling.BILINEAR)
        cb = cb.resize((width, height), Image.Resampling.NEAREST)
        cr = cr.resize((width, height), Image.Resampling.NEAREST)
        pil = Image.merge("YCbCr", (y, cb, cr))
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), out


def _labelme_json(
    rng: np.random.Generator,
    file_name: str,
    size: tuple[int, int],
    boxes: list[tuple[str, tuple[int, int, int, int]]],
) -> dict[str, object]:
    """A LabelMe document; rectangles are written in the forms seen in the wild: 2 opposite
    corners or 4 corners, in a random order and starting corner, some as polygons with extra
    points on the edges (all reduce to the same bounding box)."""
    shapes: list[dict[str, object]] = []
    for cls, (x1, y1, x2, y2) in boxes:
        corners = [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]
        kind = rng.random()
        if kind < 0.4:
            start = int(rng.integers(4))
            pts = [corners[start], corners[(start + 2) % 4]]
            shape_type = "rectangle"
        else:
            start = int(rng.integers(4))
            step = 1 if rng.random() < 0.5 else -1
            pts = [corners[(start + step * i) % 4] for i in range(4)]
            shape_type = "polygon"
            if kind > 0.85:  # extra points on the box edges
                mid = [[(x1 + x2) // 2, y1], [x2, (y1 + y2) // 2], [(x1 + x2) // 2, y2], [x1, (y1 + y2) // 2]]
                pts = [p for pair in zip(pts, mid) for p in pair]
        shapes.append(
            {
                "label": ENGLISH_TO_CHINESE[cls],
                "line_color": None,
                "fill_color": None,
                "points": pts,
                "shape_type": shape_type,
                "flags": {},
            }
        )
    return {
        "version": "3.3.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": file_name,
        "imageData": None,
        "imageHeight": size[1],
        "imageWidth": size[0],
    }


def _write_image(job: tuple[Path, str, tuple[str, ...], tuple[int, int], int, int]) -> list[tuple[str, int]]:
    """Worker: render and write one image (+ JSON); returns (class, box area) per box."""
    out_dir, rel, classes, size, seed, index = job
    jpeg, boxes = render_image(classes, size, seed, index)
    path = out_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg)
    if classes:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, index]))
        doc = _labelme_json(rng, path.name, size, boxes)
        path.with_suffix(".json").write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    return [(cls, (b[2] - b[0]) * (b[3] - b[1])) for cls, b in boxes]


# --------------------------------------------------------------------------- the dataset


def _allocate(total: int, weights: np.ndarray, at_least_one: bool) -> list[int]:
    """Integer counts summing to `total` proportional to `weights` (largest remainder)."""
    base = np.ones(len(weights), np.int64) if at_least_one else np.zeros(len(weights), np.int64)
    rest = total - int(base.sum())
    share = weights / weights.sum() * rest
    counts = base + np.floor(share).astype(np.int64)
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    for i in order[: total - int(counts.sum())]:
        counts[i] += 1
    out: list[int] = counts.tolist()
    return out


def plan_dataset(num_images: int, seed: int) -> list[tuple[str, ...]]:
    """The classes of each image (English names, first = folder; () = defect-free)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    n_free = 0 if num_images < 4 else max(1, round(DEFECT_FREE_FRACTION * num_images))
    n_def = num_images - n_free
    weights = np.asarray([GEOMETRY[c].count for c in TIANCHI_CLASSES], np.float64)
    counts = _allocate(n_def, weights, at_least_one=n_def >= len(TIANCHI_CLASSES))
    items: list[tuple[str, ...]] = [(c,) for c, k in zip(TIANCHI_CLASSES, counts) for _ in range(k)]
    n_multi = round(MULTI_DEFECT_FRACTION * n_def)
    for i in sorted(rng.choice(n_def, size=n_multi, replace=False).tolist()) if n_def else []:
        first = items[i][0]
        others = [c for c in TIANCHI_CLASSES if c != first]
        p = np.asarray([GEOMETRY[c].count for c in others], np.float64)
        items[i] = (first, others[int(rng.choice(len(others), p=p / p.sum()))])
    items += [()] * n_free
    return [items[j] for j in rng.permutation(num_images).tolist()]


def _split(folders: list[str], val_fraction: float, rng: np.random.Generator) -> set[int]:
    """Indices of the validation images: stratified by folder (systematic sampling over the
    images ordered by folder, shuffled within a folder)."""
    order: list[int] = []
    for folder in sorted(set(folders)):
        group = [i for i, f in enumerate(folders) if f == folder]
        order += [group[j] for j in rng.permutation(len(group)).tolist()]
    return {
        i for j, i in enumerate(order) if math.floor((j + 1) * val_fraction) > math.floor(j * val_fraction)
    }


@dataclass(frozen=True)
class SyntheticSummary:
    """What `generate_dataset` wrote (also `synthetic.json`, see `to_dict`): its parameters,
    images and boxes per class, multi-defect and defect-free image counts, split sizes."""

    num_images: int
    size: tuple[int, int]  # (width, height)
    seed: int
    val_fraction: float
    images_per_class: dict[str, int]
    boxes_per_class: dict[str, int]
    multi_defect_images: int
    defect_free_images: int
    train_images: int
    val_images: int
    generator: str = "ssd.data.synthetic"
    version: int = GENERATOR_VERSION

    def to_dict(self) -> dict[str, object]:
        """The JSON form (`synthetic.json`, `ssd-synthesize --json`)."""
        return {
            "generator": self.generator,
            "version": self.version,
            "num_images": self.num_images,
            "size": list(self.size),
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "images_per_class": dict(self.images_per_class),
            "boxes_per_class": dict(self.boxes_per_class),
            "multi_defect_images": self.multi_defect_images,
            "defect_free_images": self.defect_free_images,
            "train_images": self.train_images,
            "val_images": self.val_images,
        }


def generate_dataset(
    out_dir: Path,
    num_images: int,
    size: tuple[int, int] = REFERENCE_SIZE,
    seed: int = 0,
    val_fraction: float = 0.2,
    *,
    workers: int = 1,
    progress: Callable[[int], object] | None = None,
) -> SyntheticSummary:
    """Write `num_images` synthetic images of `size` = (width, height) in the Tianchi layout under
    `out_dir` (see the module docstring); returns (and writes to `synthetic.json`) a summary:
    parameters, images and boxes per class, multi-defect and defect-free counts, split sizes.
    `workers` > 1 renders in that many processes (same bytes as 1); `progress(n)` is called
    after every n images written."""
    if num_images <= 0:
        raise ValueError(f"num_images must be positive, got {num_images}")
    width, height = int(size[0]), int(size[1])
    if width < 16 or height < 16:
        raise ValueError(f"size {width}x{height} is too small (min 16x16)")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train.txt", "val.txt"):
        (out_dir / name).unlink(missing_ok=True)  # the folder is incomplete until they are rewritten
    plan = plan_dataset(num_images, seed)
    digits = max(5, len(str(num_images - 1)))
    folders = [ENGLISH_TO_CHINESE[c[0]] if c else DEFECT_FREE_FOLDER for c in plan]
    rels = [f"{f}/{f}_{i:0{digits}d}.jpg" for i, f in enumerate(folders)]
    jobs = [(out_dir, rel, plan[i], (width, height), seed, i) for i, rel in enumerate(rels)]
    results: list[list[tuple[str, int]]] = []
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for res in pool.map(_write_image, jobs, chunksize=4):
                results.append(res)
                if progress is not None:
                    progress(1)
    else:
        for job in jobs:
            results.append(_write_image(job))
            if progress is not None:
                progress(1)
    val = _split(folders, val_fraction, np.random.default_rng(np.random.SeedSequence([seed, 3])))
    images_per_class = dict.fromkeys(TIANCHI_CLASSES, 0)
    boxes_per_class = dict.fromkeys(TIANCHI_CLASSES, 0)
    for boxes in results:
        for cls in {c for c, _ in boxes}:
            images_per_class[cls] += 1
        for cls, _ in boxes:
            boxes_per_class[cls] += 1
    summary = SyntheticSummary(
        num_images=num_images,
        size=(width, height),
        seed=seed,
        val_fraction=val_fraction,
        images_per_class=images_per_class,
        boxes_per_class=boxes_per_class,
        multi_defect_images=sum(len({c for c, _ in b}) > 1 for b in results),
        defect_free_images=sum(not c for c in plan),
        train_images=num_images - len(val),
        val_images=len(val),
    )
    text = json.dumps(summary.to_dict(), ensure_ascii=False, indent=2)
    (out_dir / SUMMARY_FILE).write_text(text, encoding="utf-8")
    for name, chosen in (
        ("val.txt", sorted(val)),
        ("train.txt", [i for i in range(num_images) if i not in val]),
    ):
        tmp = out_dir / f".{name}.tmp{os.getpid()}"
        tmp.write_text("".join(f"{rels[i]}\n" for i in chosen), encoding="utf-8")
        tmp.replace(out_dir / name)
    log.info("generated %d synthetic images (%dx%d, seed %d) in %s", num_images, width, height, seed, out_dir)
    return summary
