"""Every file in configs/ loads, and its priors fit the network it builds."""

from __future__ import annotations

from pathlib import Path

import pytest

import ssd
from ssd.config import Config, replace
from ssd.modeling.vgg import feature_map_sizes
from ssd.priors.generator import shapes_per_level

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_original_ssd512_voc_config_is_there() -> None:
    names = [p.name for p in CONFIGS]
    assert "ssd512_voc.yaml" in names
    # its file holds only differences, and the defaults are the original SSD512 on VOC
    assert ssd.load_config(CONFIGS[names.index("ssd512_voc.yaml")]) == Config()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads_and_priors_fit_the_model(path: Path) -> None:
    cfg = ssd.load_config(path)
    p = cfg.priors
    assert list(p.feature_maps) == feature_map_sizes(p.image_size)
    priors = ssd.generate_priors(p)
    per_cell = [len(level) for level in shapes_per_level(p)]
    assert priors.shape == (sum(f * f * a for f, a in zip(p.feature_maps, per_cell)), 4)
    assert priors[:, 2:].min() > 0
    # the heads predict exactly one output per prior (built at width 1/8 and without ImageNet
    # weights to stay fast; neither changes the heads' prior counts)
    small = replace(cfg, **{"model.width_mult": 0.125, "model.pretrained": None})
    model = ssd.build_model(small)
    assert model.head.num_classes == cfg.num_classes
    for conv, a in zip(model.head.reg, per_cell, strict=True):
        assert conv.out_channels == 4 * a
    for conv, a in zip(model.head.cls, per_cell, strict=True):
        assert conv.out_channels == cfg.num_classes * a
    assert model.priors().shape == priors.shape
