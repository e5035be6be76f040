"""Sliced inference: mapping back to original pixels, the seam merge, small images, and tiled
evaluation equal to the untiled one when a single window covers the image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import ssd
from ssd.config import Config, config_from_dict, replace
from ssd.data.tiling import Tiling
from ssd.engine.evaluate import predict_split, score
from ssd.inference.settings import InferenceSettings
from ssd.inference.sliced import SlicedPredictor, merge_detections, seam_flags
from ssd.modeling.build import build_model
from ssd.structures import HeadOutputs
from tests.conftest import TINY_PRIORS, synthetic_data

HALF = Tiling(scale=0.5, tile=512, overlap=64)  # 2560 x 1920 -> 3 x 2 windows of 1024 px
W, H = 2560, 1920


class OnePriorModel(nn.Module):
    """Scores class `label` on prior `prior` of window `tile` only (box deltas 0: the prior)."""

    def __init__(self, num_priors: int, num_classes: int, tile: int, prior: int, label: int) -> None:
        super().__init__()
        self.p, self.c, self.tile, self.prior, self.label = num_priors, num_classes, tile, prior, label
        self.inputs: Tensor | None = None

    def forward(self, x: Tensor) -> HeadOutputs:
        self.inputs = x
        logits = torch.zeros(x.shape[0], self.p, self.c)
        logits[..., 0] = 10.0  # background everywhere
        logits[self.tile, self.prior, self.label] = 20.0
        return HeadOutputs(logits, torch.zeros(x.shape[0], self.p, 4))


def _predictor(model: nn.Module, priors: Tensor, tiling: Tiling) -> SlicedPredictor:
    return SlicedPredictor(
        model=model,
        priors=priors,
        tiling=tiling,
        settings=InferenceSettings(
            image_size=64,
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
            variances=(0.1, 0.2),
            score_threshold=0.5,
            nms_iou=0.45,
            top_k=200,
            max_detections=200,
            precision="fp32",
            channels_last=False,
        ),
        device=torch.device("cpu"),
    )


def test_detection_in_a_window_maps_back_to_original_pixels() -> None:
    # prior cxcywh (0.5, 0.5, 0.25, 0.125) relative = xyxy (0.375, 0.4375, 0.625, 0.5625) of the
    # window; window 1 is x 768..1792, y 0..1024 -> x 768 + 0.375 * 1024 = 1152 .. 1408,
    # y 0.4375 * 1024 = 448 .. 576
    priors = torch.tensor([[0.1, 0.1, 0.05, 0.05], [0.5, 0.5, 0.25, 0.125]])
    model = OnePriorModel(2, 3, tile=1, prior=1, label=2)
    pred = _predictor(model, priors, HALF)
    (det,) = pred([torch.zeros(3, H, W, dtype=torch.uint8)])
    assert pred.last_num_tiles == 6
    assert model.inputs is not None and model.inputs.shape == (6, 3, 64, 64)  # one batch
    assert det.labels.tolist() == [2]
    assert det.boxes.tolist() == [[1152.0, 448.0, 1408.0, 576.0]]
    # window 4 (x 768..1792, y 896..1920): y 896 + 448 = 1344 .. 1472
    (det,) = _predictor(OnePriorModel(2, 3, tile=4, prior=1, label=2), priors, HALF)(
        [torch.zeros(3, H, W, dtype=torch.uint8)]
    )
    assert det.boxes.tolist() == [[1152.0, 1344.0, 1408.0, 1472.0]]


def test_windows_are_cropped_from_the_image() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.25, 0.125]])
    model = OnePriorModel(1, 2, tile=0, prior=0, label=1)
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    image[:, 896:, 1536:] = 255  # the last window (bottom right) is white, the others black
    _predictor(model, priors, HALF)([image])
    assert model.inputs is not None
    means = model.inputs.mean(dim=(1, 2, 3))
    # white share of each 1024 px window: x overlap with 1536..2560 times y overlap with 896..1920
    white_x = torch.tensor([0.0, 256.0, 1024.0]) / 1024
    white_y = torch.tensor([128.0, 1024.0]) / 1024
    share = (white_y[:, None] * white_x[None, :]).flatten()
    assert torch.allclose(means, -2.0 + 4.0 * share, atol=0.01)  # black (0 - 0.5) / 0.25, white +2


def test_image_smaller_than_a_tile() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    pred = _predictor(OnePriorModel(1, 2, tile=0, prior=0, label=1), priors, HALF)
    (det,) = pred([torch.zeros(3, 200, 300, dtype=torch.uint8)])
    assert pred.last_num_tiles == 1
    assert det.boxes.tolist() == [[75.0, 50.0, 225.0, 150.0]]


def _windows() -> Tensor:
    return HALF.windows(W, H)


def test_band_cut_by_two_seams_comes_out_once() -> None:
    # a full-width band y 500..600 seen by the three top windows, each piece reaching its
    # window's inner borders (up to a few pixels of regression error)
    boxes = torch.tensor(
        [[2.0, 502.0, 1022.0, 598.0], [770.0, 498.0, 1790.0, 601.0], [1538.0, 500.0, 2558.0, 600.0]]
    )
    scores = torch.tensor([0.6, 0.9, 0.7])
    labels = torch.tensor([5, 5, 5])
    tiles = torch.tensor([0, 1, 2])
    det = merge_detections(boxes, scores, labels, tiles, _windows(), (H, W))
    assert len(det) == 1
    assert det.boxes.tolist() == [[2.0, 498.0, 2558.0, 601.0]]
    assert det.scores.tolist() == pytest.approx([0.9]) and det.labels.tolist() == [5]
    # batched NMS alone keeps all three pieces (they overlap by IoU ~0.14 at most)
    assert len(merge_detections(boxes, scores, labels, tiles, _windows(), (H, W), seam=False)) == 3


def test_box_cut_by_one_seam_comes_out_once_and_other_classes_stay() -> None:
    # a scratch x 900..1200 across the seam at x 1024 of windows 0 and 1 (overlap 768..1024):
    # window 0 sees 900..1024, window 1 sees 900..1200 whole -> absorbed, not joined
    boxes = torch.tensor(
        [
            [900.0, 100.0, 1023.0, 160.0],  # window 0, cut at its right border
            [899.0, 101.0, 1201.0, 161.0],  # window 1, whole
            [900.0, 100.0, 1023.0, 160.0],  # window 0, another class: kept
        ]
    )
    det = merge_detections(
        boxes,
        torch.tensor([0.8, 0.6, 0.3]),
        torch.tensor([2, 2, 3]),
        torch.tensor([0, 1, 0]),
        _windows(),
        (H, W),
    )
    assert sorted(det.labels.tolist()) == [2, 3]
    cls2 = det.labels == 2
    assert det.boxes[cls2].tolist() == [[899.0, 101.0, 1201.0, 161.0]]
    assert det.scores[cls2].tolist() == pytest.approx([0.8])  # the higher score of the two
    # a spot across a vertical seam (windows 0 and 3, overlap y 896..1024), cut in both
    boxes = torch.tensor([[300.0, 1000.0, 330.0, 1023.0], [301.0, 897.0, 331.0, 1040.0]])
    det = merge_detections(
        boxes, torch.tensor([0.5, 0.7]), torch.tensor([1, 1]), torch.tensor([0, 3]), _windows(), (H, W)
    )
    assert len(det) == 1


def test_merge_keeps_separate_objects_apart() -> None:
    # two spots either side of the seam, not touching it, and two band pieces of different rows
    boxes = torch.tensor(
        [
            [700.0, 100.0, 740.0, 140.0],
            [1100.0, 100.0, 1140.0, 140.0],
            [0.0, 300.0, 1023.0, 340.0],  # window 0 piece, y 300..340
            [770.0, 600.0, 1790.0, 700.0],  # window 1 piece of another band, y 600..700
        ]
    )
    det = merge_detections(
        boxes,
        torch.tensor([0.9, 0.8, 0.7, 0.6]),
        torch.tensor([1, 1, 4, 4]),
        torch.tensor([0, 1, 0, 1]),
        _windows(),
        (H, W),
    )
    assert len(det) == 4


def test_seam_flags_ignore_image_borders() -> None:
    win = _windows()
    boxes = torch.tensor([[0.0, 0.0, 1024.0, 1024.0], [768.0, 0.0, 1792.0, 1024.0]])
    flags = seam_flags(boxes, win[:2], W, H, 0.03)
    # window 0: left/top are image borders; right and bottom are seams
    assert flags.tolist() == [[False, False, True, True], [True, False, True, True]]


# --------------------------------------------------------------------------- end to end


def _tiny_cfg(root: Path) -> Config:
    return config_from_dict(
        {
            "data": synthetic_data(8, (320, 240), root=str(root)),
            "model": {"width_mult": 0.0625},
            "priors": TINY_PRIORS,
            "eval": {"batch_size": 3},
            "postprocess": {"score_threshold": 0.05, "top_k": 50, "max_detections": 50},
        }
    )


def test_tiled_evaluate_equals_untiled_when_one_window_covers_the_image(tmp_path: Path) -> None:
    cfg = _tiny_cfg(tmp_path / "data")
    torch.manual_seed(0)
    model = build_model(cfg)
    model.priors.freeze()
    dev = torch.device("cpu")
    untiled_run = predict_split(model, cfg, "val", dev)
    untiled = untiled_run.detections
    tiled_cfg = replace(
        cfg, **{"input.tiling.enabled": True, "input.tiling.scale": 1.0, "input.tiling.tile": 512}
    )
    tiled_run = predict_split(model, tiled_cfg, "val", dev)
    tiled = tiled_run.detections
    assert [r.image_id for r in untiled_run.records] == [r.image_id for r in tiled_run.records]
    assert untiled.keys() == tiled.keys() and len(untiled) == 2
    for k in untiled:
        a, b = untiled[k], tiled[k]
        assert len(a) == len(b) > 0
        assert torch.allclose(a.boxes, b.boxes, atol=1e-3)
        assert torch.allclose(a.scores, b.scores, atol=1e-6)
        assert torch.equal(a.labels, b.labels)
    assert score(cfg, "val", untiled_run).map == score(tiled_cfg, "val", tiled_run).map


def test_detector_tiled_on_large_and_small_images(tmp_path: Path) -> None:
    cfg = _tiny_cfg(tmp_path / "data")
    cfg = replace(cfg, **{"input.tiling.enabled": True, "input.tiling.scale": 0.5, "input.tiling.tile": 272})
    torch.manual_seed(0)
    det = ssd.Detector(cfg)
    big = torch.randint(0, 256, (3, 600, 1000), dtype=torch.uint8)
    small = torch.randint(0, 256, (3, 100, 150), dtype=torch.uint8)
    out = det([big, small])
    assert det.sliced is not None and det.sliced.last_num_tiles == 3 * 2 + 1
    for d, (h, w) in zip(out, [(600, 1000), (100, 150)]):
        assert 0 < len(d) <= cfg.postprocess.max_detections
        assert (d.boxes[:, :2] >= 0).all() and (d.boxes[:, 2] <= w).all() and (d.boxes[:, 3] <= h).all()
        assert (d.scores[:-1] >= d.scores[1:]).all()
