"""Detector: images of any kind and size in, Detections in original pixels out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ssd
from ssd.config import Config, replace
from ssd.inference.checkpoint import CheckpointError, save_checkpoint
from ssd.inference.detector import to_uint8_chw
from ssd.structures import Detections


@pytest.fixture(scope="module")
def detector() -> Iterator[ssd.Detector]:
    cfg = replace(Config(), **{"model.width_mult": 0.125, "data.classes": ("crack", "dent", "scratch")})
    torch.manual_seed(0)
    yield ssd.Detector(cfg)


def random_image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def check_detections(det: Detections, height: int, width: int, cfg: Config) -> None:
    k = len(det)
    assert det.boxes.shape == (k, 4) and det.scores.shape == (k,) and det.labels.shape == (k,)
    assert 0 < k <= cfg.postprocess.max_detections  # random weights: every class scores ~1/C
    b = det.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 2] <= width).all() and (b[:, 3] <= height).all()
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    assert ((det.labels >= 1) & (det.labels < cfg.num_classes)).all()
    assert (det.scores > cfg.postprocess.score_threshold).all()
    assert (det.scores[:-1] >= det.scores[1:]).all()


def test_detector_accepts_tensors_numpy_and_pil_of_different_sizes(detector: ssd.Detector) -> None:
    arr = random_image(300, 400, 0)
    wide = random_image(120, 700, 1)
    images = [
        torch.from_numpy(arr).permute(2, 0, 1).contiguous(),  # uint8 CHW tensor
        arr,  # HWC numpy
        Image.fromarray(arr),  # PIL
        Image.fromarray(wide),
        torch.from_numpy(random_image(640, 480, 2)).permute(2, 0, 1).float() / 255.0,  # float CHW in [0, 1]
    ]
    results = detector(images)
    sizes = [(300, 400), (300, 400), (300, 400), (120, 700), (640, 480)]
    assert len(results) == len(images)
    for det, (h, w) in zip(results, sizes):
        check_detections(det, h, w, detector.cfg)
    # the same pixels give the same detections whatever the container
    for other in results[1:3]:
        assert torch.equal(other.boxes, results[0].boxes) and torch.equal(other.labels, results[0].labels)
    # boxes reach beyond the 400 px of the first image's width only on the wide one
    assert results[3].boxes[:, 2].max() > 400
    # an image's detections do not depend on its batch neighbours
    alone = detector([Image.fromarray(wide)])[0]
    assert len(alone) == len(results[3])
    torch.testing.assert_close(alone.boxes, results[3].boxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(alone.scores, results[3].scores, rtol=1e-4, atol=1e-5)


def test_detector_on_empty_list(detector: ssd.Detector) -> None:
    assert detector([]) == []


def test_to_uint8_chw_conversions() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    t = to_uint8_chw(gray)
    assert t.shape == (3, 3, 4) and t.dtype == torch.uint8
    assert torch.equal(t[0], torch.from_numpy(gray)) and torch.equal(t[2], t[0])
    pil_gray = to_uint8_chw(Image.fromarray(gray))
    assert torch.equal(pil_gray, t)
    rgba = Image.fromarray(np.zeros((2, 2, 4), np.uint8), mode="RGBA")
    assert to_uint8_chw(rgba).shape == (3, 2, 2)
    f = to_uint8_chw(torch.tensor([[[0.0, 0.5, 1.0, 2.0]]]))  # float in [0, 1], clamped
    assert f.shape == (3, 1, 4) and f[0, 0].tolist() == [0, 128, 255, 255]
    with pytest.raises(ValueError, match="channels"):
        to_uint8_chw(torch.zeros(4, 5, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 dims"):
        to_uint8_chw(torch.zeros(1, 3, 5, 5, dtype=torch.uint8))


def test_detector_loads_a_checkpoint(detector: ssd.Detector, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint({"model": detector.model.state_dict()}, path)
    torch.manual_seed(123)  # a different random initialisation, overwritten by the checkpoint
    loaded = ssd.Detector(detector.cfg, checkpoint=path)
    image = random_image(200, 260, 3)
    a, b = detector([image])[0], loaded([image])[0]
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)


def test_detector_rejects_bad_checkpoints(detector: ssd.Detector, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint({"model": detector.model.state_dict()}, path)
    other = replace(detector.cfg, **{"data.classes": ("crack", "dent")})  # head of another size
    with pytest.raises(ValueError, match="does not fit") as info:
        ssd.Detector(other, checkpoint=path)
    assert str(path) in str(info.value)
    state = {k: v for k, v in detector.model.state_dict().items() if not k.startswith("head.reg.0")}
    partial = tmp_path / "partial.pt"
    save_checkpoint({"model": state}, partial)
    with pytest.raises(ValueError, match="missing") as info:
        ssd.Detector(detector.cfg, checkpoint=partial)
    assert str(partial) in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        ssd.Detector(detector.cfg, checkpoint=tmp_path / "absent.pt")
