"""`InferenceSettings`: everything the inference path takes from the config, resolved once.

Pre-processing (network input size, mean/std), decoding (prior variances), postprocess (score
threshold, NMS IoU, per-class top-k, per-image cap) and the network's precision and memory
format settings (`inference.precision`, `inference.channels_last`; resolved per device by
`precision_on` / `channels_last_on`). `Detector`, sliced inference, evaluation, the benchmarks
and ONNX export all read these fields instead of the config.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ssd.config import Config
from ssd.inference.runtime import DeviceCaps, Precision, resolve_precision
from ssd.postprocess import postprocess
from ssd.structures import Detections, HeadOutputs


@dataclass(frozen=True)
class InferenceSettings:
    """`image_size` S is the square network input in pixels; `mean`/`std` apply to [0, 1] RGB;
    `variances` decode the box offsets; `score_threshold`, `nms_iou`, `top_k`, `max_detections`
    are the arguments of `ssd.postprocess.postprocess`; `precision` ("auto", "fp32", "bf16",
    "fp16") and `channels_last` are the config's settings, resolved per device."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    variances: tuple[float, float]
    score_threshold: float
    nms_iou: float
    top_k: int
    max_detections: int
    precision: str
    channels_last: bool

    @classmethod
    def from_config(cls, cfg: Config) -> InferenceSettings:
        """The inference settings of a config (`priors`, `input`, `postprocess`, `inference`)."""
        pp = cfg.postprocess
        return cls(
            image_size=cfg.priors.image_size,
            mean=cfg.input.mean,
            std=cfg.input.std,
            variances=cfg.priors.variances,
            score_threshold=pp.score_threshold,
            nms_iou=pp.nms_iou,
            top_k=pp.top_k,
            max_detections=pp.max_detections,
            precision=cfg.inference.precision,
            channels_last=cfg.inference.channels_last,
        )

    def precision_on(self, caps: DeviceCaps, override: str | None = None) -> Precision:
        """The network precision on a device: `override` when given, else `precision` (see
        `ssd.inference.runtime.resolve_precision`)."""
        return resolve_precision(override if override is not None else self.precision, caps)

    def channels_last_on(self, caps: DeviceCaps) -> bool:
        """Whether the network runs in channels_last (NHWC) memory format: the `channels_last`
        setting on CUDA and CPU devices (cuDNN / oneDNN run NHWC convolutions without layout
        reorders), off on other devices."""
        return self.channels_last and caps.type in ("cuda", "cpu")

    def postprocess(self, outputs: HeadOutputs, priors: Tensor, orig_sizes: Tensor) -> list[Detections]:
        """`ssd.postprocess.postprocess` with these settings."""
        return postprocess(
            outputs,
            priors,
            orig_sizes,
            variances=self.variances,
            score_threshold=self.score_threshold,
            nms_iou=self.nms_iou,
            top_k=self.top_k,
            max_detections=self.max_detections,
        )
