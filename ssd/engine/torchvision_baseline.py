"""torchvision's SSD512 as the baseline of the speed comparison (`ssd.engine.benchmark`).

`build_torchvision_ssd512` builds torchvision's `SSD` (torchvision calls priors "default boxes"
or anchors) with its VGG-16 highres extractor, the original SSD512 default boxes and our
postprocess settings, so that both detectors can be timed in the same process.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from ssd.config import Config
from ssd.inference.settings import InferenceSettings
from ssd.modeling.build import build_model

# The original SSD512 default boxes (SSD paper, Caffe SSD512 prototxt) in torchvision's terms:
# scales are min sizes / 512 plus the last max size, s'_k = sqrt(s_k s_k+1) reproduces max sizes.
SSD512_ASPECT_RATIOS: list[list[int]] = [[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]]
SSD512_SCALES: list[float] = [s / 512.0 for s in (35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6)]
SSD512_STEPS: list[int] = [8, 16, 32, 64, 128, 256, 512]


def _patch_ssd512_layout(extractor: Any) -> None:
    """torchvision's highres extractor keeps SSD300's conv10_2/conv11_2 (3x3, stride 1, no
    padding), giving 64/32/16/8/6/4/1 maps and 24,732 default boxes at 512. The original SSD512
    (Caffe prototxt) uses stride 2 / padding 1 there and padding 1 in conv12_2 (4x4), giving
    64/32/16/8/4/2/1 and 24,564 boxes. Same weights shapes, so only the attributes change."""
    extra: list[Any] = list(extractor.extra)
    assert len(extra) == 6, "unexpected torchvision extractor"
    for idx in (3, 4):  # conv10_2, conv11_2
        conv = extra[idx][2]
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
        conv.stride, conv.padding = (2, 2), (1, 1)
    conv12 = extra[5][2]
    assert isinstance(conv12, nn.Conv2d) and conv12.kernel_size == (4, 4)
    conv12.padding = (1, 1)


def build_torchvision_ssd512(
    num_classes: int,
    settings: InferenceSettings,
    *,
    match_ssd512_layout: bool = True,
    device: str | torch.device = "cpu",
) -> Any:
    """torchvision's `SSD` with its VGG-16 extractor in highres (512) mode, an untrained
    `torchvision.models.vgg16()` backbone (no download), the SSD512 default boxes
    (`SSD512_SCALES`, `SSD512_ASPECT_RATIOS`, `SSD512_STEPS`, no clipping, like our priors with
    `clip: false`), `num_classes` C incl. background and the postprocess settings of `settings`
    (topk_candidates = top_k). With `match_ssd512_layout` the extras follow the original SSD512
    (see `_patch_ssd512_layout`); without, torchvision's stock highres layout is kept.
    Built directly on `device` ("meta" gives a weightless model for shape checks)."""
    from torchvision.models import vgg16
    from torchvision.models.detection.ssd import _vgg_extractor

    if settings.image_size != 512:
        raise ValueError(f"torchvision SSD512 comparison needs image_size 512, got {settings.image_size}")
    with torch.device(device):
        backbone = _vgg_extractor(vgg16(weights=None), highres=True, trainable_layers=5)
        if match_ssd512_layout:
            _patch_ssd512_layout(backbone)
        return _torchvision_ssd(backbone, num_classes, settings)


def small_torchvision_ssd(cfg: Config, settings: InferenceSettings) -> Any:
    """torchvision's `SSD` (its transform, head, default boxes and post-processing) over a copy of
    our (small) backbone: the quick GPU check's stand-in for torchvision's full-width SSD512."""
    return _torchvision_ssd(_SourceMaps(build_model(cfg).backbone), cfg.num_classes, settings)


class _SourceMaps(nn.Module):
    """Our backbone with torchvision's backbone interface (an ordered dict of source maps)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return OrderedDict((str(i), f) for i, f in enumerate(self.backbone(x)))


def _torchvision_ssd(backbone: nn.Module, num_classes: int, settings: InferenceSettings) -> Any:
    """torchvision's `SSD` over `backbone` with the SSD512 default boxes at `settings.image_size`
    and the postprocess settings of `settings` (topk_candidates = top_k), in eval mode."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD

    boxes = DefaultBoxGenerator(SSD512_ASPECT_RATIOS, scales=SSD512_SCALES, steps=SSD512_STEPS, clip=False)
    size = settings.image_size
    return SSD(
        backbone,
        boxes,
        (size, size),
        num_classes,
        image_mean=list(settings.mean),
        image_std=list(settings.std),
        score_thresh=settings.score_threshold,
        nms_thresh=settings.nms_iou,
        detections_per_img=settings.max_detections,
        topk_candidates=settings.top_k,
    ).eval()


def torchvision_default_boxes(model: Any, image_size: int = 512) -> Tensor:
    """The default boxes [P, 4] cxcywh relative of a torchvision SSD at `image_size`; the grid
    sizes come from a meta-device copy of its backbone (no compute)."""
    backbone = copy.deepcopy(model.backbone).to("meta")
    with torch.no_grad():
        feats = backbone(torch.empty(1, 3, image_size, image_size, device="meta"))
    grid = [list(f.shape[-2:]) for f in feats.values()]
    gen = model.anchor_generator
    boxes = gen._grid_default_boxes(grid, [image_size, image_size], dtype=torch.float64)
    assert isinstance(boxes, Tensor)
    return boxes
