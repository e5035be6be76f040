"""SSD data augmentation (SSD paper sec. 2.2 "Data augmentation") with torchvision.transforms.v2.

Input: a uint8 image [3, H, W] and boxes [G, 4] xyxy in pixels of that image, with labels [G]
and difficult flags [G]. Output: a float image [3, S, S] (warped to S x S, scaled to [0, 1] and
normalised with mean/std) and the surviving boxes [G', 4] xyxy *relative* [0, 1] to the network
input, with their labels and difficult flags.

Training order: zoom out ("expand", up to `expand_max_ratio` x, filled with the mean colour so
that it normalises to 0) -> min-IoU random crop -> horizontal flip (-> vertical flip, for surface
data whose orientation carries no meaning) -> resize (warp) to S x S -> photometric distortion ->
clamp + sanitize boxes (drops boxes that a crop left outside or degenerate, narrower or lower than
1 input pixel) -> float + normalise.
Caffe SSD distorts colours first; here it runs on the S x S result because the distortion is
per pixel (it commutes with the warp up to interpolation) and costs 0.75 s on a 2560x1920 image
against 0.02 s at 512x512 (measured, one CPU thread). The one difference: the zoom-out fill gets
distorted too instead of staying exactly the mean colour.
Evaluation: resize + float + normalise only (no box is dropped), exactly as
`ssd.inference.detector.preprocess` does at inference time.

All randomness comes from torch's global generator: `DetectionDataset` seeds it per item.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from ssd.boxes import pixels_to_relative
from ssd.config import AugmentConfig

# Min-IoU crop options of the paper: 0.0 is "randomly sample a patch" (still containing at least
# one box centre), 0.1..0.9 the minimum Jaccard overlap with a box, 1.0 "use the whole image".
SSD_CROP_OPTIONS: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


class DetectionTransform:
    """Callable `(image uint8 [3,H,W], boxes_px [G,4] xyxy, labels [G] int64, difficult [G] bool)
    -> (image float [3,S,S] normalised, boxes [G',4] xyxy relative, labels [G'], difficult [G'])`.

    Every step runs on the uint8 image with `tv_tensors.BoundingBoxes` (pixels); the crop is
    skipped for images without boxes (torchvision's crop needs a box centre inside the patch).
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        before_crop: v2.Transform | None,
        crop: v2.Transform | None,
        after_crop: v2.Transform | None,
        photometric: v2.Transform | None,
        sanitize: bool,
    ) -> None:
        self.size = size
        self.before_crop = before_crop
        self.crop = crop
        self.after_crop = after_crop
        self.resize = v2.Resize((size, size), antialias=True)
        self.photometric = photometric
        self.sanitize = (
            v2.Compose(
                [
                    v2.ClampBoundingBoxes(),
                    v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_and_difficult),
                ]
            )
            if sanitize
            else None
        )
        self.to_float = v2.Compose(
            [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        )

    def __call__(
        self, image: Tensor, boxes_px: Tensor, labels: Tensor, difficult: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        h, w = int(image.shape[-2]), int(image.shape[-1])
        sample = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(
                boxes_px.to(torch.float32).reshape(-1, 4), format="XYXY", canvas_size=(h, w)
            ),
            "labels": labels,
            "difficult": difficult,
        }
        if self.before_crop is not None:
            sample = self.before_crop(sample)
        if self.crop is not None and sample["boxes"].shape[0] > 0:
            sample = self.crop(sample)
        if self.after_crop is not None:
            sample = self.after_crop(sample)
        sample = self.resize(sample)
        if self.photometric is not None:
            sample = self.photometric(sample)
        if self.sanitize is not None:
            sample = self.sanitize(sample)
        img = self.to_float(sample["image"]).as_subclass(Tensor)
        boxes = pixels_to_relative(sample["boxes"].as_subclass(Tensor), self.size, self.size)
        return img, boxes, sample["labels"], sample["difficult"]


def _labels_and_difficult(sample: dict[str, object]) -> tuple[object, object]:
    return sample["labels"], sample["difficult"]


def mean_fill(mean: Sequence[float]) -> list[int]:
    """The uint8 RGB colour that normalises to ~0 (zoom-out fill)."""
    return [round(255.0 * float(m)) for m in mean]


def build_transforms(
    aug: AugmentConfig, size: int, mean: Sequence[float], std: Sequence[float], train: bool
) -> DetectionTransform:
    """The training augmentation (when `train` and `aug.enabled`) or the evaluation transform
    (resize only), producing S x S = `size` inputs. See the module docstring for the order."""
    if not (train and aug.enabled):
        return DetectionTransform(size, mean, std, None, None, None, None, sanitize=False)
    before: list[v2.Transform] = []
    if aug.expand and aug.expand_max_ratio > 1.0:
        fill = {tv_tensors.Image: mean_fill(mean), "others": 0}
        before.append(v2.RandomZoomOut(fill=fill, side_range=(1.0, aug.expand_max_ratio), p=0.5))
    crop = v2.RandomIoUCrop(sampler_options=list(SSD_CROP_OPTIONS)) if aug.min_iou_crop else None
    after: list[v2.Transform] = []
    if aug.hflip:
        after.append(v2.RandomHorizontalFlip(p=0.5))
    if aug.vflip:
        after.append(v2.RandomVerticalFlip(p=0.5))
    return DetectionTransform(
        size,
        mean,
        std,
        v2.Compose(before) if before else None,
        crop,
        v2.Compose(after) if after else None,
        v2.RandomPhotometricDistort(p=0.5) if aug.photometric else None,
        sanitize=True,
    )
