"""Shared test fixtures: the repository root and a small, fast SSD512 configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssd.config import Config, replace

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_cfg() -> Config:
    """The SSD512 layout (24,564 priors) at width 1/8 with three classes (C = 4): ~0.6 M
    parameters, a 512x512 forward pass takes well under a second on one CPU core."""
    cfg = replace(Config(), **{"model.width_mult": 0.125, "data.classes": ("crack", "dent", "scratch")})
    assert isinstance(cfg, Config)
    return cfg
