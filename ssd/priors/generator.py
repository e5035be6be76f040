"""Prior generation. Priors are cxcywh relative to the (square) network input.

Order: level by level; within a level row-major over the feature map (i rows, j columns); within a
cell the level's shapes in order. The heads emit predictions in the same order.

A shape-form entry is `[w, h]` or `[w, h, dx, dy]`: the optional offsets (units of the level's
step, in (-0.5, 0.5)) move that shape's prior in every cell to ((j + 0.5 + dx) step,
(i + 0.5 + dy) step). Internally the shapes (w, h) and the per-shape offsets (dx, dy) travel as
two parallel per-level lists (`shapes_per_level`, `offsets_per_level`), so code that only needs
the shapes is unaffected by offsets.

`PriorSet` is the one resolved form of a prior set (what a `PriorsConfig` describes, what the
model's prior module holds, what the fit report and the optimizer measure): per-level shapes and
offsets in input pixels on their lattices. `PriorLayout` is the tensor index of where its priors
sit (`PriorSet.layout()`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
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
        cx, cy = cx.expand(f, f, a), cy.expand(f, f, a)  # [f (rows i), f (columns j), a]
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
    return PriorSet.from_config(cfg).layout()


def generate_priors(cfg: PriorsConfig) -> Tensor:
    """All priors of a config: [P, 4] cxcywh relative to the network input.

    Shapes go through log/exp exactly as in the model's `PriorBoxes` (which stores log w/h), so
    this equals `build_model(cfg).priors()` bit for bit.
    """
    prior_set = PriorSet.from_config(cfg)
    wh = prior_set.flat_shapes().log().exp()
    return assemble_priors(prior_set.layout(), wh, clip=prior_set.clip)


@dataclass(frozen=True)
class PriorSet:
    """The resolved prior set, as levels of lattices: per level the shapes [w, h] in input pixels, the
    feature map size f (f x f cells) and the step (pixels between cell centres); `offsets`
    (parallel to `shapes`) each shape's sub-cell centre offset (dx, dy) in units of the step,
    empty = all (0, 0) (normalised to explicit zeros)."""

    shapes: tuple[tuple[Shape, ...], ...]
    feature_maps: tuple[int, ...]
    steps: tuple[float, ...]
    image_size: int
    clip: bool = False
    offsets: tuple[tuple[Offset, ...], ...] = ()

    def __post_init__(self) -> None:
        n = len(self.feature_maps)
        if len(self.shapes) != n or len(self.steps) != n:
            raise ValueError(
                f"prior grid: {len(self.shapes)} shape levels, {n} feature maps, {len(self.steps)} steps"
            )
        if not self.offsets:
            object.__setattr__(self, "offsets", tuple(((0.0, 0.0),) * len(lv) for lv in self.shapes))
        if [len(o) for o in self.offsets] != [len(lv) for lv in self.shapes]:
            raise ValueError("prior grid: offsets must parallel the shapes (one (dx, dy) per shape)")
        if any(not -0.5 < d < 0.5 for lv in self.offsets for o in lv for d in o):
            raise ValueError("prior grid: offsets (units of the step) must be in (-0.5, 0.5)")

    @classmethod
    def from_config(cls, cfg: PriorsConfig) -> PriorSet:
        levels = shapes_per_level(cfg)
        return cls(
            shapes=tuple(tuple((float(w), float(h)) for w, h in level) for level in levels),
            feature_maps=tuple(int(f) for f in cfg.feature_maps),
            steps=tuple(float(s) for s in cfg.steps),
            image_size=int(cfg.image_size),
            clip=bool(cfg.clip),
            offsets=tuple(tuple(level) for level in offsets_per_level(cfg)),
        )

    @classmethod
    def from_layout(cls, layout: PriorLayout, shapes_wh: Tensor, clip: bool = False) -> PriorSet:
        """From a `PriorLayout` and its flat shapes [S, 2] (relative w, h), e.g. learned ones;
        the sub-cell offsets come from the layout."""
        wh = (shapes_wh.detach().cpu().double() * layout.image_size).tolist()
        off = layout.shape_offsets.double().tolist()
        levels, offsets, start = [], [], 0
        for n in layout.num_shapes:
            levels.append(tuple((float(w), float(h)) for w, h in wh[start : start + n]))
            offsets.append(tuple((float(dx), float(dy)) for dx, dy in off[start : start + n]))
            start += n
        return cls(tuple(levels), layout.feature_maps, layout.steps, layout.image_size, clip, tuple(offsets))

    @property
    def num_levels(self) -> int:
        return len(self.feature_maps)

    @property
    def num_priors(self) -> int:
        return sum(f * f * len(s) for f, s in zip(self.feature_maps, self.shapes))

    @property
    def boxes_per_cell(self) -> int:
        """Sum over levels of the shapes per cell (SSD's "default boxes per location", summed)."""
        return sum(len(s) for s in self.shapes)

    @property
    def has_offsets(self) -> bool:
        return any(d != 0.0 for lv in self.offsets for o in lv for d in o)

    def entries(self, ndigits: int | None = None) -> list[list[tuple[float, ...]]]:
        """Per level the shape-form entries: (w, h), or (w, h, dx, dy) for an offset shape;
        w and h rounded to `ndigits` when given."""
        out = []
        for shapes, offsets in zip(self.shapes, self.offsets):
            level = []
            for (w, h), off in zip(shapes, offsets):
                wh = (w, h) if ndigits is None else (round(w, ndigits), round(h, ndigits))
                level.append(shape_entry(wh, off))
            out.append(level)
        return out

    def layout(self) -> PriorLayout:
        return prior_layout(
            self.feature_maps, self.steps, [len(s) for s in self.shapes], self.image_size, self.offsets
        )

    def flat_shapes(self) -> Tensor:
        """[S, 2] float32 relative (w, h) of all shapes, level 0 first."""
        return flat_shapes(self.shapes, self.image_size)

    def priors(self) -> Tensor:
        """[P, 4] cxcywh relative, in generator order (as `ssd.generate_priors`)."""
        return assemble_priors(self.layout(), self.flat_shapes(), clip=self.clip)

    def distinct_shapes(self) -> np.ndarray:
        """[U, 2] distinct (w, h) over all levels, input pixels."""
        flat = np.array([wh for level in self.shapes for wh in level], dtype=np.float64).reshape(-1, 2)
        return np.unique(flat, axis=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "feature_maps": list(self.feature_maps),
            "steps": list(self.steps),
            "shapes": [[list(e) for e in level] for level in self.entries(3)],
            "clip": self.clip,
        }
