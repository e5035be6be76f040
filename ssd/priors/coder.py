"""SSD box encoding (SSD paper eq. 2) with variances.

encode: ground truth xyxy (relative) + priors cxcywh (relative) -> offsets
  (dcx, dcy) = (g_c - p_c) / (v0 * p_wh),  (dw, dh) = log(g_wh / p_wh) / v1
decode is its inverse and returns xyxy relative.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssd.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh

# exp() argument bound on decode: no box grows beyond e^4.135 ~ 62x its prior (avoids inf).
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def encode(gt_xyxy: Tensor, priors: Tensor, variances: tuple[float, float]) -> Tensor:
    """[..., P, 4] xyxy relative + [P, 4] cxcywh -> [..., P, 4] offsets.

    Degenerate ground truth (zero width/height) is clamped to a tiny size instead of giving -inf.
    """
    g = xyxy_to_cxcywh(gt_xyxy)
    eps = torch.finfo(g.dtype).eps
    dxy = (g[..., :2] - priors[..., :2]) / (variances[0] * priors[..., 2:])
    dwh = torch.log(g[..., 2:].clamp_min(eps) / priors[..., 2:]) / variances[1]
    return torch.cat([dxy, dwh], dim=-1)


def decode(deltas: Tensor, priors: Tensor, variances: tuple[float, float]) -> Tensor:
    """[..., P, 4] offsets + [P, 4] cxcywh -> [..., P, 4] xyxy relative."""
    cxy = priors[..., :2] + deltas[..., :2] * variances[0] * priors[..., 2:]
    wh = priors[..., 2:] * torch.exp((deltas[..., 2:] * variances[1]).clamp(max=_MAX_LOG_SCALE))
    return cxcywh_to_xyxy(torch.cat([cxy, wh], dim=-1))
