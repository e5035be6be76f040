"""The SSD512 network: backbone sources -> heads, plus the prior boxes it predicts against."""

from __future__ import annotations

from torch import Tensor, nn

from ssd.modeling.head import SSDHead
from ssd.modeling.priors import PriorBoxes
from ssd.modeling.vgg import VGG16Backbone
from ssd.structures import HeadOutputs


class SSD(nn.Module):
    """`forward(images [B, 3, S, S] float, normalised) -> HeadOutputs` ([B, P, C], [B, P, 4]).

    `self.priors()` returns the priors [P, 4] cxcywh relative that the outputs refer to.
    """

    def __init__(self, backbone: VGG16Backbone, head: SSDHead, priors: PriorBoxes) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.priors = priors

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(self, images: Tensor) -> HeadOutputs:
        out: HeadOutputs = self.head(self.backbone(images))
        return out


class TensorOutputs(nn.Module):
    """`forward(images [B, 3, S, S]) -> (cls_logits [B, P, C], box_deltas [B, P, 4])`: the
    network with plain tensor outputs (for torch.compile, tracing and ONNX export)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(images)
        return out.cls_logits, out.box_deltas
