"""Data carried across stage boundaries (shapes: B batch, P priors, C classes, G ground truth)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class HeadOutputs:
    """Raw network outputs: `cls_logits` [B, P, C] and `box_deltas` [B, P, 4] (encoded offsets)."""

    cls_logits: Tensor
    box_deltas: Tensor


@dataclass
class Targets:
    """Ground truth for a batch: per image `boxes` [G, 4] xyxy relative to the network input and
    `labels` [G] in 1..C-1 (0 is the background). Boxes marked difficult in the annotations are
    left out unless `data.use_difficult` (see `ssd.data.loader.collate`); evaluation reads the
    difficult flags from the records."""

    boxes: list[Tensor]
    labels: list[Tensor]

    def to(self, device: torch.device | str) -> Targets:
        return Targets(
            [b.to(device, non_blocking=True) for b in self.boxes],
            [lab.to(device, non_blocking=True) for lab in self.labels],
        )

    def pin_memory(self) -> Targets:
        """Page-locked copies (called by DataLoader(pin_memory=True))."""
        return Targets([b.pin_memory() for b in self.boxes], [lab.pin_memory() for lab in self.labels])


@dataclass
class Batch:
    """A collated batch: `images` [B, 3, S, S] float (normalised), targets in input-relative xyxy,
    `image_ids` and `orig_sizes` [B, 2] as (height, width) of the original images.

    Images that could not be read travel with the batch instead of being raised inside a
    DataLoader worker (where the error would arrive wrapped): `skipped` holds the errors
    (`ssd.data.records.DatasetError`, naming the file) of images left out under
    `data.skip_invalid` (replaced by another sample in training), `errors` those of images that
    make the batch unusable; `ssd.data.loader.checked` raises the first of them."""

    images: Tensor
    targets: Targets
    image_ids: list[str]
    orig_sizes: Tensor
    skipped: list[Exception] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)

    def pin_memory(self) -> Batch:
        """Page-locked copies (called by DataLoader(pin_memory=True))."""
        return Batch(
            self.images.pin_memory(),
            self.targets.pin_memory(),
            self.image_ids,
            self.orig_sizes.pin_memory(),
            self.skipped,
            self.errors,
        )


@dataclass
class Detections:
    """Detections of one image: `boxes` [K, 4] xyxy in original-image pixels, `scores` [K],
    `labels` [K] in 1..C-1, sorted by decreasing score."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to(self, device: torch.device | str) -> Detections:
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device))
