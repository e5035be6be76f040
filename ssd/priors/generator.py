"""Prior generation. Priors are cxcywh relative to the (square) network input.

Order: level by level; within a level row-major over the feature map (i rows, j columns); within a
cell the level's shapes in order. The heads emit predictions in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ssd.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from ssd.config import PriorsConfig

Shape = tuple[float, float]


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
    """Both config forms reduced to explicit per-level [w, h] lists in input pixels."""
    if cfg.shapes is not None:
        return [[(float(w), float(h)) for w, h in level] for level in cfg.shapes]
    return ratio_form_shapes(cfg.min_sizes, cfg.max_sizes, cfg.aspect_ratios)


@dataclass(frozen=True)
class PriorLayout:
    """Where priors sit, independent of their shapes.

    `centers` [P, 2] relative (cx, cy); `shape_index` [P] index into the flat list of all shapes
    (level 0's shapes first); `level_index` [P]; `num_shapes` per level; `image_size` in pixels.
    """

    centers: Tensor
    shape_index: Tensor
    level_index: Tensor
    num_shapes: tuple[int, ...]
    feature_maps: tuple[int, ...]
    steps: tuple[float, ...]
    image_size: int

    @property
    def num_priors(self) -> int:
        return int(self.centers.shape[0])


def prior_layout(
    feature_maps: Sequence[int], steps: Sequence[float], num_shapes: Sequence[int], image_size: int
) -> PriorLayout:
    """Centres ((j + 0.5) * step, (i + 0.5) * step) / image_size for every cell and shape."""
    centers, shape_idx, level_idx = [], [], []
    offset = 0
    for level, (f, step, a) in enumerate(zip(feature_maps, steps, num_shapes)):
        c = (torch.arange(f, dtype=torch.float64) + 0.5) * step / image_size
        cy, cx = torch.meshgrid(c, c, indexing="ij")
        xy = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)  # [f*f, 2]
        centers.append(xy.repeat_interleave(a, dim=0))
        shape_idx.append(torch.arange(offset, offset + a).repeat(f * f))
        level_idx.append(torch.full((f * f * a,), level, dtype=torch.long))
        offset += a
    return PriorLayout(
        centers=torch.cat(centers).float(),
        shape_index=torch.cat(shape_idx),
        level_index=torch.cat(level_idx),
        num_shapes=tuple(int(a) for a in num_shapes),
        feature_maps=tuple(int(f) for f in feature_maps),
        steps=tuple(float(s) for s in steps),
        image_size=int(image_size),
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
    num_shapes = [len(level) for level in shapes_per_level(cfg)]
    return prior_layout(cfg.feature_maps, cfg.steps, num_shapes, cfg.image_size)


def generate_priors(cfg: PriorsConfig) -> Tensor:
    """All priors of a config: [P, 4] cxcywh relative to the network input.

    Shapes go through log/exp exactly as in the model's `PriorBoxes` (which stores log w/h), so
    this equals `build_model(cfg).priors()` bit for bit.
    """
    levels = shapes_per_level(cfg)
    layout = prior_layout(cfg.feature_maps, cfg.steps, [len(s) for s in levels], cfg.image_size)
    wh = flat_shapes(levels, cfg.image_size).log().exp()
    return assemble_priors(layout, wh, clip=cfg.clip)
