"""Prior generation. Priors are cxcywh relative to the (square) network input.

Order: level by level; within a level row-major over the feature map (i rows, j columns); within a
cell the level's shapes in order. The heads emit predictions in the same order.

A shape-form entry is `[w, h]` or `[w, h, dx, dy]`: the optional offsets (units of the level's
step, in (-0.5, 0.5)) move that shape's prior in every cell to ((j + 0.5 + dx) step,
(i + 0.5 + dy) step). Internally the shapes (w, h) and the per-shape offsets (dx, dy) travel as
two parallel per-level lists (`shapes_per_level`, `offsets_per_level`), so code that only needs
the shapes is unaffected by offsets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ssd.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from ssd.config import PriorsConfig

Shape = tuple[float, float]  # (w, h) in input pixels
Offset = tuple[float, float]  # (dx, dy) in units of the level's step


def ratio_form_shapes(
    min_sizes: Sequence[float],
    max_sizes: Sequence[float],
    aspect_ratios: Sequence[Sequence[float]],
) -> list[list[Shape]]:
    """SSD paper rule, per level, in input pixels: the square s_k, the square sqrt(s_k s_k+1)
    (when max sizes are given), then for each ratio r both (s_k sqrt r, s_k / sqrt r) and its flip.
    """
    levels: list[list[Shape]] = []
    for k, s in enumerate(min_sizes):
        shapes: list[Shape] = [(s, s)]
        if max_sizes:
            big = math.sqrt(s * max_sizes[k])
            shapes.append((big, big))
        for r in aspect_ratios[k]:
            q = math.sqrt(r)
            shapes.append((s * q, s / q))
            shapes.append((s / q, s * q))
        levels.append(shapes)
    return levels


def shapes_per_level(cfg: PriorsConfig) -> list[list[Shape]]:
    """Both config forms reduced to explicit per-level [w, h] lists in input pixels (offsets,
    if any, are in `offsets_per_level`)."""
    if cfg.shapes is not None:
        return [[(float(e[0]), float(e[1])) for e in level] for level in cfg.shapes]
    return ratio_form_shapes(cfg.min_sizes, cfg.max_sizes, cfg.aspect_ratios)


def offsets_per_level(cfg: PriorsConfig) -> list[list[Offset]]:
    """Per level, per shape (parallel to `shapes_per_level`) the centre offset (dx, dy) in units
    of the level's step: (0, 0) for the ratio form and for `[w, h]` entries."""
    if cfg.shapes is not None:
        return [[split_entry(e)[1] for e in level] for level in cfg.shapes]
    return [[(0.0, 0.0)] * len(level) for level in shapes_per_level(cfg)]


def split_entry(entry: Sequence[float]) -> tuple[Shape, Offset]:
    """A shape-form entry `[w, h]` or `[w, h, dx, dy]` -> ((w, h), (dx, dy))."""
    if len(entry) == 2:
        return (float(entry[0]), float(entry[1])), (0.0, 0.0)
    if len(entry) == 4:
        return (float(entry[0]), float(entry[1])), (float(entry[2]), float(entry[3]))
    raise ValueError(f"a prior shape is [w, h] or [w, h, dx, dy], got {list(entry)}")


def shape_entry(shape: Sequence[float], offset: Sequence[float] = (0.0, 0.0)) -> tuple[float, ...]:
    """The shape-form entry of a shape and its offset: (w, h) when the offset is (0, 0), else
    (w, h, dx, dy) (the inverse of `split_entry`)."""
    w, h, dx, dy = float(shape[0]), float(shape[1]), float(offset[0]), float(offset[1])
    return (w, h) if dx == 0.0 and dy == 0.0 else (w, h, dx, dy)


@dataclass(frozen=True)
class PriorLayout:
    """Where priors sit, independent of their shapes.

    `centers` [P, 2] relative (cx, cy); `shape_index` [P] index into the flat list of all shapes
    (level 0's shapes first); `level_index` [P]; `num_shapes` per level; `image_size` in pixels;
    `shape_offsets` [S, 2] float64, each shape's centre offset (dx, dy) in units of its level's
    step (zeros without offsets; already applied in `centers`).
    """

    centers: Tensor
    shape_index: Tensor
    level_index: Tensor
    num_shapes: tuple[int, ...]
    feature_maps: tuple[int, ...]
    steps: tuple[float, ...]
    image_size: int
    shape_offsets: Tensor

    @property
    def num_priors(self) -> int:
        return int(self.centers.shape[0])


def prior_layout(
    feature_maps: Sequence[int],
    steps: Sequence[float],
    num_shapes: Sequence[int],
    image_size: int,
    offsets: Sequence[Sequence[Offset]] | None = None,
) -> PriorLayout:
    """Centres ((j + 0.5 + dx) * step, (i + 0.5 + dy) * step) / image_size for every cell and
    shape; `offsets` per level, per shape (dx, dy) in units of the step (default all 0)."""
    if offsets is None:
        offsets = [[(0.0, 0.0)] * int(a) for a in num_shapes]
    if [len(o) for o in offsets] != [int(a) for a in num_shapes]:
        raise ValueError(
            f"offsets per level {[len(o) for o in offsets]} != shapes per level {list(num_shapes)}"
        )
    centers, shape_idx, level_idx = [], [], []
    offset = 0
    for level, (f, step, a) in enumerate(zip(feature_maps, steps, num_shapes)):
        off = torch.tensor(offsets[level], dtype=torch.float64).reshape(a, 2)  # [a, 2]
        idx = torch.arange(f, dtype=torch.float64)
        # (index + 0.5 + d) * step / size in float64: with d = 0 exactly the plain cell centre
        cx = (idx[None, :, None] + 0.5 + off[None, None, :, 0]) * step / image_size  # [1, f, a]
        cy = (idx[:, None, None] + 0.5 + off[None, None, :, 1]) * step / image_size  # [f, 1, a]
        cx, cy = torch.broadcast_tensors(cx, cy)  # [f (rows i), f (columns j), a]
        centers.append(torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1))  # [f*f*a, 2]
        shape_idx.append(torch.arange(offset, offset + a).repeat(f * f))
        level_idx.append(torch.full((f * f * a,), level, dtype=torch.long))
        offset += a
    flat_offsets = [o for level in offsets for o in level]
    return PriorLayout(
        centers=torch.cat(centers).float(),
        shape_index=torch.cat(shape_idx),
        level_index=torch.cat(level_idx),
        num_shapes=tuple(int(a) for a in num_shapes),
        feature_maps=tuple(int(f) for f in feature_maps),
        steps=tuple(float(s) for s in steps),
        image_size=int(image_size),
        shape_offsets=torch.tensor(flat_offsets, dtype=torch.float64).reshape(-1, 2),
    )


def assemble_priors(layout: PriorLayout, shapes_wh: Tensor, clip: bool = False) -> Tensor:
    """Priors [P, 4] cxcywh relative from a layout and the flat shapes [S, 2] (relative w, h).

    Differentiable in `shapes_wh` (used by learnable priors). `clip` clamps the corners to the
    image as in some SSD ports (Caffe SSD leaves it off).
    """
    centers = layout.centers.to(shapes_wh.device, shapes_wh.dtype)
    wh = shapes_wh[layout.shape_index.to(shapes_wh.device)]
    priors = torch.cat([centers, wh], dim=1)
    if clip:
        priors = xyxy_to_cxcywh(cxcywh_to_xyxy(priors).clamp(0.0, 1.0))
    return priors


def flat_shapes(levels: Sequence[Sequence[Shape]], image_size: int) -> Tensor:
    """Per-level pixel shapes -> flat [S, 2] tensor of relative (w, h)."""
    return torch.tensor([wh for level in levels for wh in level], dtype=torch.float32) / image_size


def layout_from_config(cfg: PriorsConfig) -> PriorLayout:
    offsets = offsets_per_level(cfg)
    return prior_layout(cfg.feature_maps, cfg.steps, [len(o) for o in offsets], cfg.image_size, offsets)


def generate_priors(cfg: PriorsConfig) -> Tensor:
    """All priors of a config: [P, 4] cxcywh relative to the network input.

    Shapes go through log/exp exactly as in the model's `PriorBoxes` (which stores log w/h), so
    this equals `build_model(cfg).priors()` bit for bit.
    """
    levels = shapes_per_level(cfg)
    layout = layout_from_config(cfg)
    wh = flat_shapes(levels, cfg.image_size).log().exp()
    return assemble_priors(layout, wh, clip=cfg.clip)
