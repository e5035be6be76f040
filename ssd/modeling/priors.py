"""The model's prior shapes as a module: fixed (a buffer) or trainable (Zhong et al., "Anchor Box Optimization
for Object Detection"): each distinct shape of a level is a pair (log w, log h), centres stay fixed
(including the per-shape sub-cell offsets of `[w, h, dx, dy]` entries: they are never learned).

Both cases store the shapes under the same state-dict key, `log_wh` [S, 2] (relative to the input),
so a checkpoint of a learned-prior run loads into a fixed-prior model and vice versa.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssd.priors.generator import PriorLayout, PriorSet, Shape, assemble_priors, shape_entry


def break_ties(
    log_wh: Tensor, num_shapes: tuple[int, ...], spread: float = 0.02, offsets: Tensor | None = None
) -> Tensor:
    """Make identical shapes of one level distinct before learning them.

    Identical priors at the same positions receive identical assignments and gradients forever
    (matching ties always go to the first), so the k-th duplicate has its log aspect ratio moved by
    +-k*spread/2 (area kept). Distinct shapes are left untouched, and so is a shape repeated at
    another sub-cell offset (`offsets` [S, 2]): its priors sit elsewhere.
    """
    out = log_wh.clone()
    off = torch.zeros(out.shape[0], 2, dtype=torch.float64) if offsets is None else offsets.double().cpu()
    start = 0
    for n in num_shapes:
        seen: dict[tuple[float, ...], int] = {}
        for i in range(start, start + n):
            key = (round(float(out[i, 0]), 6), round(float(out[i, 1]), 6), *off[i].tolist())
            k = seen.get(key, 0)
            seen[key] = k + 1
            if k:
                sign = 1.0 if k % 2 else -1.0
                delta = sign * ((k + 1) // 2) * spread / 2
                out[i, 0] += delta
                out[i, 1] -= delta
        start += n
    return out


class PriorBoxes(nn.Module):
    """`forward()` -> priors [P, 4] cxcywh relative; differentiable in the shapes when learnable."""

    log_wh: Tensor
    _centers: Tensor
    _shape_index: Tensor
    _offsets: Tensor

    def __init__(
        self, layout: PriorLayout, shapes_wh: Tensor, clip: bool = False, learnable: bool = False
    ) -> None:
        super().__init__()
        self.layout = layout
        self.clip = clip
        self.learnable = learnable
        log_wh = shapes_wh.detach().float().log()
        if learnable:
            self.log_wh = nn.Parameter(break_ties(log_wh, layout.num_shapes, offsets=layout.shape_offsets))
        else:
            self.register_buffer("log_wh", log_wh)
        self.register_buffer("_centers", layout.centers.clone(), persistent=False)
        self.register_buffer("_shape_index", layout.shape_index.clone(), persistent=False)
        # [S, 2] per-shape centre offsets (dx, dy), units of the level's step: fixed, derived from
        # the config like the centres (not in the state dict, so checkpoints are unchanged)
        self.register_buffer("_offsets", layout.shape_offsets.clone(), persistent=False)

    @classmethod
    def from_prior_set(cls, prior_set: PriorSet, learnable: bool = False) -> PriorBoxes:
        """The module of a resolved prior set (its shapes trainable when `learnable`)."""
        return cls(prior_set.layout(), prior_set.flat_shapes(), clip=prior_set.clip, learnable=learnable)

    def prior_set(self) -> PriorSet:
        """The current shapes (learned ones included) as a resolved prior set."""
        return PriorSet.from_layout(self.layout, self.shapes_wh, clip=self.clip)

    @property
    def shapes_wh(self) -> Tensor:
        """Current shapes [S, 2] (relative w, h)."""
        return self.log_wh.exp()

    def level_shapes_px(self) -> list[list[Shape]]:
        """Current shapes (w, h) per level in input pixels (offsets: `level_entries_px`)."""
        wh = (self.shapes_wh.detach().cpu().double() * self.layout.image_size).tolist()
        out: list[list[Shape]] = []
        start = 0
        for n in self.layout.num_shapes:
            out.append([(float(w), float(h)) for w, h in wh[start : start + n]])
            start += n
        return out

    def level_entries_px(self) -> list[list[tuple[float, ...]]]:
        """What a shape-form config holds: per level `(w, h)` (input pixels) or, for a shape with
        a sub-cell offset, `(w, h, dx, dy)`."""
        offsets = self._offsets.detach().cpu().double().tolist()
        out: list[list[tuple[float, ...]]] = []
        start = 0
        for level in self.level_shapes_px():
            out.append([shape_entry(wh, offsets[start + k]) for k, wh in enumerate(level)])
            start += len(level)
        return out

    def forward(self) -> Tensor:
        wh = self.log_wh.exp()
        if self.clip:
            return assemble_priors(self.layout, wh, clip=True)
        return torch.cat([self._centers.to(wh.dtype), wh[self._shape_index]], dim=1)

    def freeze(self) -> None:
        """Turn learned shapes into a fixed buffer (no inference cost, same state-dict key)."""
        if not self.learnable:
            return
        data = self.log_wh.detach().clone()
        del self.log_wh
        self.register_buffer("log_wh", data)
        self.learnable = False
