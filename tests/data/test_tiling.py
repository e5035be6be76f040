"""Tile geometry, box clipping/visibility, tiles for the prior tools and the training tile sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssd.config import ConfigError, load_config
from ssd.data.records import Record
from ssd.data.tiling import (
    TiledTransform,
    Tiling,
    axis_starts,
    clip_to_window,
    records_to_tiles,
    visible_fraction,
)


def test_windows_of_a_2560x1920_photo_at_half_scale() -> None:
    t = Tiling(scale=0.5, tile=512, overlap=64)
    w = t.windows(2560, 1920)
    expected = [[x, y, x + 1024, y + 1024] for y in (0, 896) for x in (0, 768, 1536)]
    assert w.tolist() == expected
    # neighbours share at least overlap / scale = 128 original pixels; the windows cover the image
    assert (torch.diff(torch.tensor([0, 768, 1536])) <= 1024 - 128).all()
    assert w[:, 2].max() == 2560 and w[:, 3].max() == 1920


def test_full_image_window_is_appended() -> None:
    w = Tiling(scale=0.5, tile=512, overlap=64, full_image=True).windows(2560, 1920)
    assert w.shape == (7, 4) and w[-1].tolist() == [0, 0, 2560, 1920]


def test_axis_starts_edge_cases() -> None:
    assert axis_starts(300, 1024, 128) == [0]  # side shorter than a window: one window
    assert axis_starts(1024, 1024, 128) == [0]
    assert axis_starts(1025, 1024, 128) == [0, 1]
    starts = axis_starts(5000, 1000, 100)  # ceil(4900 / 900) = 6 windows, evenly spread
    assert starts == [0, 800, 1600, 2400, 3200, 4000]


def test_image_smaller_than_a_tile_gives_one_window_spanning_it() -> None:
    t = Tiling(scale=0.5, tile=512, overlap=64)
    assert t.windows(300, 200).tolist() == [[0, 0, 300, 200]]
    # ceil((2000 - 128) / (1024 - 128)) = 3 windows along x, one along the 200 px side
    assert t.windows(2000, 200).tolist() == [[0, 0, 1024, 200], [488, 0, 1512, 200], [976, 0, 2000, 200]]


def test_visible_fraction_small_box_and_band() -> None:
    window = torch.tensor([0.0, 0.0, 1024.0, 1024.0])
    boxes = torch.tensor(
        [
            [100.0, 100.0, 140.0, 140.0],  # inside: 1
            [1004.0, 100.0, 1044.0, 140.0],  # half outside: 0.5
            [0.0, 500.0, 2560.0, 560.0],  # band wider than the window crossing it: 1
            [2000.0, 0.0, 2100.0, 50.0],  # outside: 0
            [-500.0, 1000.0, 3000.0, 1100.0],  # band, a quarter of its height inside: 0.24
        ]
    )
    frac = visible_fraction(boxes, window)
    assert torch.allclose(frac, torch.tensor([1.0, 0.5, 1.0, 0.0, 0.24]))
    clipped, keep = clip_to_window(boxes, window, 0.5)
    assert keep.tolist() == [True, True, True, False, False]
    assert clipped.tolist() == [[100, 100, 140, 140], [1004, 100, 1024, 140], [0, 500, 1024, 560]]
    # clipped boxes are in window pixels
    clipped, _ = clip_to_window(boxes[:1], torch.tensor([50.0, 60.0, 1074.0, 1084.0]), 0.5)
    assert clipped.tolist() == [[50, 40, 90, 80]]


def test_records_to_tiles_clips_and_keeps_by_visibility() -> None:
    rec = Record(
        Path("a.jpg"),
        "a",
        2560,
        1920,
        boxes_px=np.array([[1000, 100, 1040, 140], [0, 1500, 2560, 1600]], np.float32),
        labels=np.array([7, 8], np.int64),
        difficult=np.zeros(2, bool),
    )
    tiles = records_to_tiles([rec], Tiling(scale=0.5, tile=512, overlap=64))
    assert [t.image_id for t in tiles] == [
        "a@0,0",
        "a@768,0",
        "a@1536,0",
        "a@0,896",
        "a@768,896",
        "a@1536,896",
    ]
    assert all((t.width, t.height) == (1024, 1024) for t in tiles)
    # the spot at x 1000..1040 is whole in windows 0 and 1; the band crosses the three lower ones
    assert [t.labels.tolist() for t in tiles] == [[7], [7], [], [8], [8], [8]]
    assert tiles[1].boxes_px.tolist() == [[232, 100, 272, 140]]
    assert tiles[4].boxes_px.tolist() == [[0, 604, 1024, 704]]
    assert tiles[5].boxes_px.tolist() == [[0, 604, 1024, 704]]


def _identity(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, difficult: torch.Tensor):
    return image, boxes, labels, difficult


def test_tiled_transform_crops_a_window_and_clips_boxes() -> None:
    tiling = Tiling(scale=0.5, tile=512, overlap=64, positive_fraction=1.0, min_visibility=0.5)
    tf = TiledTransform(_identity, tiling)
    h, w = 1920, 2560
    image = torch.arange(h * w, dtype=torch.int64).reshape(1, h, w).expand(3, h, w)
    boxes = torch.tensor([[2000.0, 1500.0, 2030.0, 1520.0]])
    labels, difficult = torch.tensor([3]), torch.tensor([False])
    for seed in range(20):
        torch.manual_seed(seed)
        crop, b, lab, _ = tf(image, boxes, labels, difficult)
        assert crop.shape == (3, 1024, 1024)
        # positive_fraction 1: the window holds the (small) box whole
        assert lab.tolist() == [3] and b.shape == (1, 4)
        x0, y0 = int(crop[0, 0, 0]) % w, int(crop[0, 0, 0]) // w
        assert b.tolist() == [[2000 - x0, 1500 - y0, 2030 - x0, 1520 - y0]]
    # seeded: the same seed gives the same window
    torch.manual_seed(5)
    a = tf(image, boxes, labels, difficult)[0][0, 0, 0]
    torch.manual_seed(5)
    assert tf(image, boxes, labels, difficult)[0][0, 0, 0] == a


def test_positive_fraction_sets_how_often_the_defect_is_shown() -> None:
    h, w = 1920, 2560
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    boxes = torch.tensor([[100.0, 100.0, 120.0, 120.0]])
    labels, difficult = torch.tensor([1]), torch.tensor([False])
    shown = {}
    for frac in (0.0, 0.75):
        tf = TiledTransform(_identity, Tiling(positive_fraction=frac))
        torch.manual_seed(0)
        shown[frac] = sum(len(tf(image, boxes, labels, difficult)[2]) for _ in range(400)) / 400
    # a random window (x0 uniform in 0..1536, y0 in 0..896) shows the 20 px corner spot at >= 0.5
    # visibility only for x0, y0 <= 110: p = 111/1537 * 111/897 = 0.009; with 0.75, 0.75 + 0.25 p.
    # 400 draws: binomial sd <= 0.022, tolerance 3 sd.
    assert shown[0.0] == pytest.approx(0.009, abs=0.015)
    assert shown[0.75] == pytest.approx(0.752, abs=0.066)


def test_tiling_config_defaults_off_and_validation_names_the_key() -> None:
    cfg = load_config(None)
    assert cfg.input.tiling.enabled is False and cfg.input.tiling.scale == 0.5
    with pytest.raises(ConfigError, match=r"input\.tiling\.overlap"):
        load_config(None, ["input.tiling.overlap=512"])
    with pytest.raises(ConfigError, match=r"input\.tiling\.min_visibility"):
        load_config(None, ["input.tiling.min_visibility=0"])
    with pytest.raises(ConfigError, match=r"input\.tiling\.merge"):
        load_config(None, ["input.tiling.merge=union"])
    with pytest.raises(ConfigError, match=r"input\.tiling\.scal"):
        load_config(None, ["input.tiling.scal=0.5"])


def test_tiled_train_loader_is_seeded_and_clips_to_the_window(tmp_path: Path) -> None:
    from ssd.config import config_from_dict, replace
    from ssd.data.loader import build_train_loader
    from tests.conftest import TINY_PRIORS, synthetic_data

    cfg = config_from_dict(
        {
            "data": synthetic_data(8, (640, 480), root=str(tmp_path / "data")),
            "priors": TINY_PRIORS,
            "train": {"batch_size": 4},
            "augment": {"enabled": False},
            "input": {"tiling": {"enabled": True, "scale": 0.5, "tile": 160, "overlap": 16}},
        }
    )
    first = next(iter(build_train_loader(cfg)))
    again = next(iter(build_train_loader(cfg)))
    assert first.images.shape == (4, 3, 272, 272)
    assert torch.equal(first.images, again.images)
    assert all(torch.equal(a, b) for a, b in zip(first.targets.boxes, again.targets.boxes))
    boxes = torch.cat(first.targets.boxes)
    assert boxes.numel() > 0 and (boxes >= 0).all() and (boxes <= 1).all()
    # a sample is a 320 x 320 window of the 640 x 480 photo, not the whole photo warped
    whole = next(iter(build_train_loader(replace(cfg, **{"input.tiling.enabled": False}))))
    assert not torch.allclose(first.images, whole.images)
