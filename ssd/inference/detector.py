"""`Detector`: images in, `Detections` (xyxy, original pixels) out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor

from ssd.config import Config
from ssd.inference.backends import build_network
from ssd.inference.checkpoint import load_model
from ssd.inference.runtime import DeviceCaps
from ssd.inference.settings import InferenceSettings
from ssd.inference.sliced import build_sliced_predictor
from ssd.modeling.ssd import SSD
from ssd.structures import Detections, HeadOutputs

ImageLike = Tensor | np.ndarray | Image.Image


def to_uint8_chw(image: ImageLike) -> Tensor:
    """PIL image, HWC numpy array (RGB) or CHW tensor -> uint8 [3, H, W] tensor."""
    if isinstance(image, Image.Image):
        t: Tensor = TF.pil_to_tensor(image.convert("RGB"))
        return t
    if isinstance(image, np.ndarray):
        arr = image if image.ndim == 3 else image[..., None]
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    else:
        t = image
    if t.dim() != 3:
        raise ValueError(f"expected an image with 3 dims, got shape {tuple(t.shape)}")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    if t.shape[0] != 3:
        raise ValueError(f"expected 1 or 3 channels, got shape {tuple(t.shape)}")
    if t.dtype != torch.uint8:
        if t.is_floating_point():  # float images are taken as [0, 1]
            t = (t.float().clamp(0, 1) * 255).round()
        t = t.to(torch.uint8)
    return t


def preprocess(
    images: Sequence[Tensor], size: int, mean: Sequence[float], std: Sequence[float], device: torch.device
) -> tuple[Tensor, Tensor]:
    """uint8 [3, H, W] images -> normalised float [B, 3, size, size] (warped, as SSD does) and
    their original sizes [B, 2] (height, width). Resizing runs on `device`."""
    batch, sizes = [], []
    for img in images:
        sizes.append((img.shape[-2], img.shape[-1]))
        x = img.to(device, non_blocking=True)
        x = TF.resize(x, [size, size], antialias=True)
        batch.append(x)
    x = torch.stack(batch).float()
    # /255 and normalisation fused into one subtract and one multiply over the batch
    shift = torch.tensor(mean, dtype=torch.float32, device=x.device).mul_(255.0)[:, None, None]
    scale = torch.tensor(std, dtype=torch.float32, device=x.device).mul_(255.0).reciprocal_()[:, None, None]
    x = x.sub_(shift).mul_(scale)
    return x, torch.tensor(sizes, dtype=torch.float32, device=device)


class Detector:
    """Pre-processing, model, decode, NMS and rescaling in one callable.

    `Detector(cfg, checkpoint=None, device="cpu")(images) -> list[Detections]`; boxes are xyxy in
    the pixels of each original image, labels in 1..C-1 (`class_names[label - 1]`).
    `cfg=None` takes the config stored in the checkpoint (`Detector(None, "runs/x/best.pt")`).
    A checkpoint that does not fit `cfg` raises `CheckpointMismatchError` (a ValueError).
    `backend` runs the network: "eager" (PyTorch; `precision` None = `inference.precision`,
    channels_last per `inference.channels_last`), "onnxruntime" or "openvino" (CPU, fp32, through
    the ONNX export; written to `onnx_path` or a temporary file). See `ssd.inference.backends`. Sliced
    inference (`input.tiling`) runs the eager model.
    """

    def __init__(
        self,
        cfg: Config | None,
        checkpoint: str | Path | None = None,
        device: str | torch.device = "cpu",
        backend: str = "eager",
        precision: str | None = None,
        onnx_path: str | Path | None = None,
    ) -> None:
        cfg, model = load_model(checkpoint, cfg)
        self._setup(cfg, model, device, backend, precision, onnx_path)

    @classmethod
    def from_model(
        cls,
        cfg: Config,
        model: SSD,
        device: str | torch.device = "cpu",
        backend: str = "eager",
        precision: str | None = None,
        onnx_path: str | Path | None = None,
    ) -> Detector:
        """A Detector around a model already built and loaded (`ssd.inference.checkpoint.load_model`)."""
        detector = cls.__new__(cls)
        detector._setup(cfg, model, device, backend, precision, onnx_path)
        return detector

    def _setup(
        self,
        cfg: Config,
        model: SSD,
        device: str | torch.device,
        backend: str,
        precision: str | None,
        onnx_path: str | Path | None,
    ) -> None:
        self.cfg = cfg
        self.settings = InferenceSettings.from_config(cfg)
        self.device = torch.device(device)
        self.model = model
        self.model.priors.freeze()
        self.model.to(self.device).eval()
        self.class_names = cfg.data.classes
        # input.tiling: sliced inference (ssd.inference.sliced), the whole call goes through it
        self.sliced = (
            build_sliced_predictor(cfg, self.model, self.device) if cfg.input.tiling.enabled else None
        )
        caps = DeviceCaps.of(self.device)
        eager = backend == "eager"
        self.precision = self.settings.precision_on(caps, precision) if eager else "fp32"
        self.network = build_network(
            backend, self.model, self.settings.image_size, precision=self.precision,
            channels_last=eager and self.settings.channels_last_on(caps), onnx_path=onnx_path,
        )  # fmt: skip

    @torch.inference_mode()
    def __call__(self, images: Sequence[ImageLike]) -> list[Detections]:
        if not images:
            return []
        tensors = [to_uint8_chw(im) for im in images]
        if self.sliced is not None:
            return self.sliced(tensors)
        s = self.settings
        x, sizes = preprocess(tensors, s.image_size, s.mean, s.std, self.device)
        outputs = HeadOutputs(*self.network(x))
        return s.postprocess(outputs, self.model.priors(), sizes)
