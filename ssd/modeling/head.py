"""Per-level 3x3 prediction heads (SSD paper section 2.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ssd.structures import HeadOutputs


class ScaleOnlyBatchNorm(nn.Module):
    """Batch normalisation without shift (Zhong et al., sec. 3.3) over the last dim of [..., F]:
    normalise with batch statistics, multiply by a learnable scale, add no bias, so that the
    size offsets stay centred on the (moving) prior shapes."""

    def __init__(self, features: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(features, affine=False, momentum=momentum)
        self.weight = nn.Parameter(torch.ones(features))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        out: Tensor = (self.bn(x.reshape(-1, shape[-1])) * self.weight).reshape(shape)
        return out


class SSDHead(nn.Module):
    """One classification and one regression 3x3 conv per level; `num_shapes[l]` priors per cell.

    Output order matches the prior generator: level, row, column, shape.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_shapes: Sequence[int],
        num_classes: int,
        wh_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls = nn.ModuleList(
            nn.Conv2d(c, a * num_classes, 3, padding=1) for c, a in zip(in_channels, num_shapes)
        )
        self.reg = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(in_channels, num_shapes))
        self.wh_norm = ScaleOnlyBatchNorm(2) if wh_batchnorm else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor]) -> HeadOutputs:
        b = features[0].shape[0]
        logits, deltas = [], []
        for x, cls, reg in zip(features, self.cls, self.reg):
            logits.append(cls(x).permute(0, 2, 3, 1).reshape(b, -1, self.num_classes))
            deltas.append(reg(x).permute(0, 2, 3, 1).reshape(b, -1, 4))
        box_deltas = torch.cat(deltas, dim=1)
        if self.wh_norm is not None:
            box_deltas = torch.cat([box_deltas[..., :2], self.wh_norm(box_deltas[..., 2:])], dim=-1)
        return HeadOutputs(torch.cat(logits, dim=1), box_deltas)
