"""Shared test fixtures: the repository root, the real data sets (when present) and a small,
fast SSD512 configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ssd.config import Config, replace
from ssd.data.labelme import TIANCHI_CLASSES

REPO = Path(__file__).resolve().parents[1]

# The real data sets, outside the repository: a copy of NEU-DET (VOC XML; `SSD_NEU_ROOT`) and a COCO
# JSON of Tianchi boxes (`SSD_TIANCHI_BOXES`). Tests that need them skip when they are absent.
DATA_ROOT = Path(os.environ.get("SSD_TEST_DATA", REPO.parent / "shared" / "data"))
NEU_ROOT = Path(os.environ.get("SSD_NEU_ROOT", DATA_ROOT / "neu-det"))
TIANCHI_BOXES = Path(os.environ.get("SSD_TIANCHI_BOXES", DATA_ROOT / "tianchi-boxes" / "boxes.json"))
needs_neu = pytest.mark.skipif(not (NEU_ROOT / "ANNOTATIONS").is_dir(), reason=f"NEU-DET not at {NEU_ROOT}")
needs_tianchi = pytest.mark.skipif(
    not TIANCHI_BOXES.is_file(), reason=f"Tianchi boxes not at {TIANCHI_BOXES}"
)

# The smallest input with the SSD512 layout of feature maps (64/32/16/8/4/2/1 at 512 -> 34/17/9/5/3/2/1):
# the `priors` section of the tiny training configs.
TINY_PRIORS = {
    "image_size": 272,
    "feature_maps": [34, 17, 9, 5, 3, 2, 1],
    "steps": [8, 16, 30, 54, 91, 136, 272],
    "min_sizes": [19, 41, 82, 122, 163, 204, 245],
    "max_sizes": [41, 82, 122, 163, 204, 245, 286],
}


def synthetic_data(num_images: int, size: tuple[int, int], **extra: object) -> dict[str, object]:
    """The `data` section of a tiny training config: `num_images` synthetic aluminum images of
    `size` (w, h), all ten Tianchi classes, a quarter for validation, no loader workers."""
    return {
        "format": "synthetic",
        "classes": list(TIANCHI_CLASSES),
        "num_workers": 0,
        "synthetic_num_images": num_images,
        "synthetic_size": list(size),
        "synthetic_val_fraction": 0.25,
        **extra,
    }


@pytest.fixture
def small_cfg() -> Config:
    """The SSD512 layout (24,564 priors) at width 1/8 with three classes (C = 4): ~0.6 M
    parameters, a 512x512 forward pass takes well under a second on one CPU core."""
    cfg = replace(Config(), **{"model.width_mult": 0.125, "data.classes": ("crack", "dent", "scratch")})
    assert isinstance(cfg, Config)
    return cfg
