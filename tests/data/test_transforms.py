"""Augmentation keeps boxes, labels and difficult flags consistent with the pixels."""

from __future__ import annotations

import torch

from ssd.config import AugmentConfig
from ssd.data.transforms import build_transforms, mean_fill
from ssd.inference.detector import preprocess

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
OFF = AugmentConfig(photometric=False, expand=False, min_iou_crop=False, hflip=False, vflip=False)
COLOURS = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}


def _scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 200x160 grey image with three solid boxes of distinct colours (label k <-> colour k)."""
    image = torch.full((3, 160, 200), 128, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 20.0, 70.0, 90.0], [100.0, 10.0, 190.0, 60.0], [80.0, 100.0, 150.0, 150.0]])
    for (x1, y1, x2, y2), label in zip(boxes.int().tolist(), (1, 2, 3)):
        image[:, y1:y2, x1:x2] = torch.tensor(COLOURS[label], dtype=torch.uint8)[:, None, None]
    return image, boxes, torch.tensor([1, 2, 3]), torch.tensor([False, True, False])


def _run(aug: AugmentConfig, seed: int, size: int = 96, train: bool = True) -> tuple[torch.Tensor, ...]:
    image, boxes, labels, difficult = _scene()
    tf = build_transforms(aug, size, MEAN, STD, train=train)
    torch.manual_seed(seed)
    return tf(image, boxes, labels, difficult)


def _denormalise(img: torch.Tensor) -> torch.Tensor:
    return (img * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]) * 255


def test_eval_transform_is_resize_only_and_matches_detector_preprocess() -> None:
    image, boxes, labels, difficult = _scene()
    tf = build_transforms(AugmentConfig(), 96, MEAN, STD, train=False)
    img, out_boxes, out_labels, out_diff = tf(image, boxes, labels, difficult)
    expected, _ = preprocess([image], 96, MEAN, STD, torch.device("cpu"))
    torch.testing.assert_close(img, expected[0])
    torch.testing.assert_close(out_boxes, boxes / torch.tensor([200.0, 160.0, 200.0, 160.0]))
    assert torch.equal(out_labels, labels) and torch.equal(out_diff, difficult)


def test_hflip_mirrors_boxes_and_flip_twice_is_identity() -> None:
    _, boxes, _, _ = _scene()
    rel = boxes / torch.tensor([200.0, 160.0, 200.0, 160.0])
    mirrored = torch.stack([1 - rel[:, 2], rel[:, 1], 1 - rel[:, 0], rel[:, 3]], dim=1)
    seen = set()
    for seed in range(12):
        _, out, _, _ = _run(AugmentConfig(**{**OFF.__dict__, "hflip": True}), seed)
        if torch.allclose(out, rel, atol=1e-6):
            seen.add("same")
        else:
            torch.testing.assert_close(out, mirrored)
            seen.add("mirrored")
            # flipping the mirrored boxes again gives the originals back
            again = torch.stack([1 - out[:, 2], out[:, 1], 1 - out[:, 0], out[:, 3]], dim=1)
            torch.testing.assert_close(again, rel)
    assert seen == {"same", "mirrored"}


def test_full_augmentation_keeps_boxes_inside_and_aligned_with_pixels() -> None:
    aug = AugmentConfig(photometric=False, expand=True, min_iou_crop=True, hflip=True, vflip=True)
    flag = {1: False, 2: True, 3: False}
    for seed in range(15):
        img, boxes, labels, difficult = _run(aug, seed, size=128)
        assert img.shape == (3, 128, 128) and img.dtype == torch.float32
        assert boxes.shape[0] == labels.shape[0] == difficult.shape[0] >= 1
        assert boxes.min() >= 0 and boxes.max() <= 1
        assert torch.all(boxes[:, 2] > boxes[:, 0]) and torch.all(boxes[:, 3] > boxes[:, 1])
        pixels = _denormalise(img)
        for box, label, diff in zip(boxes.tolist(), labels.tolist(), difficult.tolist()):
            assert flag[label] == diff
            cx, cy = int((box[0] + box[2]) / 2 * 128), int((box[1] + box[3]) / 2 * 128)
            colour = pixels[:, cy, cx]
            torch.testing.assert_close(
                colour, torch.tensor(COLOURS[label], dtype=torch.float32), atol=8.0, rtol=0
            )


def test_zoom_out_fills_with_the_mean() -> None:
    aug = AugmentConfig(**{**OFF.__dict__, "expand": True, "expand_max_ratio": 4.0})
    _, boxes, _, _ = _scene()
    rel = boxes / torch.tensor([200.0, 160.0, 200.0, 160.0])
    padded = 0
    for seed in range(10):
        img, out, _, _ = _run(aug, seed)
        scale = float((out[0, 2] - out[0, 0]) / (rel[0, 2] - rel[0, 0]))  # image width on the canvas
        left = float(out[0, 0] - scale * rel[0, 0])  # where the image starts on the canvas
        if left > 0.05:  # zoomed out with fill on the left: normalises to ~0
            padded += 1
            torch.testing.assert_close(img[:, 48, 0], torch.zeros(3), atol=0.03, rtol=0)
    assert padded > 0
    assert mean_fill(MEAN) == [124, 116, 104]


def test_sanitize_drops_degenerate_boxes_with_their_labels() -> None:
    image, boxes, labels, difficult = _scene()
    boxes = torch.cat([boxes, torch.tensor([[50.0, 50.0, 50.0, 80.0], [0.0, 0.0, 0.5, 0.5]])])
    labels = torch.cat([labels, torch.tensor([2, 1])])
    difficult = torch.cat([difficult, torch.tensor([True, False])])
    tf = build_transforms(OFF, 96, MEAN, STD, train=True)
    _, out, out_labels, out_diff = tf(image, boxes, labels, difficult)
    assert out.shape == (3, 4)
    assert out_labels.tolist() == [1, 2, 3] and out_diff.tolist() == [False, True, False]
    # evaluation keeps every box (the metric decides)
    ev = build_transforms(AugmentConfig(), 96, MEAN, STD, train=False)
    assert ev(image, boxes, labels, difficult)[1].shape == (5, 4)


def test_background_image_passes_through_augmentation() -> None:
    image = torch.full((3, 40, 50), 90, dtype=torch.uint8)
    tf = build_transforms(AugmentConfig(vflip=True), 64, MEAN, STD, train=True)
    for seed in range(5):
        torch.manual_seed(seed)
        img, boxes, labels, difficult = tf(
            image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.bool)
        )
        assert img.shape == (3, 64, 64) and boxes.shape == (0, 4) and labels.shape == difficult.shape == (0,)


def test_photometric_changes_pixels_not_boxes() -> None:
    aug = AugmentConfig(**{**OFF.__dict__, "photometric": True})
    ref, ref_boxes, _, _ = _run(OFF, 0)
    changed = 0
    for seed in range(6):
        img, boxes, _, _ = _run(aug, seed)
        torch.testing.assert_close(boxes, ref_boxes)
        changed += int(not torch.allclose(img, ref))
    assert changed > 0
