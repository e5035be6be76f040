"""Prior shapes as a module: fixed (a buffer) or trainable (Zhong et al., "Anchor Box Optimization
for Object Detection"): each distinct shape of a level is a pair (log w, log h), centres stay fixed.

Both cases store the shapes under the same state-dict key, `log_wh` [S, 2] (relative to the input),
so a checkpoint of a learned-prior run loads into a fixed-prior model and vice versa.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssd.priors.generator import PriorLayout, assemble_priors


class PriorBoxes(nn.Module):
    """`forward()` -> priors [P, 4] cxcywh relative; differentiable in the shapes when learnable."""

    log_wh: Tensor

    def __init__(self, layout: PriorLayout, shapes_wh: Tensor, clip: bool = False, learnable: bool = False):
        super().__init__()
        self.layout = layout
        self.clip = clip
        self.learnable = learnable
        log_wh = shapes_wh.detach().float().log()
        if learnable:
            self.log_wh = nn.Parameter(log_wh)
        else:
            self.register_buffer("log_wh", log_wh)
        self.register_buffer("_centers", layout.centers.clone(), persistent=False)
        self.register_buffer("_shape_index", layout.shape_index.clone(), persistent=False)

    @property
    def shapes_wh(self) -> Tensor:
        """Current shapes [S, 2] (relative w, h)."""
        return self.log_wh.exp()

    def level_shapes_px(self) -> list[list[tuple[float, float]]]:
        """Current shapes per level in input pixels (what a shape-form config holds)."""
        wh = (self.shapes_wh.detach().cpu().double() * self.layout.image_size).tolist()
        out, start = [], 0
        for n in self.layout.num_shapes:
            out.append([(float(w), float(h)) for w, h in wh[start : start + n]])
            start += n
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
