"""Config -> model, and a model's learned prior shapes -> config."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from ssd.config import Config, ConfigError, config_to_dict, load_config
from ssd.modeling.head import SSDHead
from ssd.modeling.priors import PriorBoxes
from ssd.modeling.ssd import SSD
from ssd.modeling.vgg import VGG16Backbone, feature_map_sizes
from ssd.priors.generator import PriorSet
from ssd.priors.writer import write_priors_config

log = logging.getLogger(__name__)


def build_prior_boxes(cfg: Config) -> PriorBoxes:
    return PriorBoxes.from_prior_set(PriorSet.from_config(cfg.priors), learnable=cfg.priors.learnable)


def uses_wh_batchnorm(cfg: Config) -> bool:
    if cfg.model.wh_batchnorm is not None:
        return cfg.model.wh_batchnorm
    return cfg.priors.learnable and cfg.priors.learn.bn_no_shift


def build_model(cfg: Config) -> SSD:
    """Build the SSD512 model of a config (weights random unless `model.pretrained` is set)."""
    p = cfg.priors
    expected = feature_map_sizes(p.image_size)
    if list(p.feature_maps) != expected:
        raise ConfigError(
            f"priors.feature_maps: {list(p.feature_maps)} does not match the SSD512 network at "
            f"priors.image_size={p.image_size}, which produces {expected}"
        )
    m = cfg.model
    backbone = VGG16Backbone(m.batch_norm, m.width_mult, m.l2norm_scale)
    if m.pretrained:
        path = Path(m.pretrained)
        if m.width_mult != 1.0:
            raise ConfigError("model.pretrained: ImageNet weights need model.width_mult = 1")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types: OSError, UnpicklingError, KeyError, ...
            raise ConfigError(f"model.pretrained: cannot load {path}: {exc}") from exc
        if not isinstance(state, dict) or "classifier.0.weight" not in state:
            raise ConfigError(
                f"model.pretrained: {path} is not a torchvision VGG-16 state dict (no 'classifier.0.weight')"
            )
        try:
            loaded = backbone.load_torchvision_vgg16(state)
        except (ValueError, KeyError, RuntimeError) as exc:  # RuntimeError: a tensor of the wrong size
            raise ConfigError(f"model.pretrained: {path}: {exc}") from exc
        log.info("loaded %d tensors of ImageNet VGG-16 from %s", len(loaded), path)
    priors = build_prior_boxes(cfg)
    head = SSDHead(
        backbone.out_channels,
        priors.layout.num_shapes,
        cfg.num_classes,
        wh_batchnorm=uses_wh_batchnorm(cfg),
    )
    return SSD(backbone, head, priors)


def export_learned_priors(model: nn.Module, cfg: Config, path: str | Path) -> Config:
    """Freeze the model's current prior shapes and write them as a shape-form config at `path`.

    The written config (`ssd.priors.writer.write_priors_config`, shapes written exactly) is `cfg`
    with `priors.learnable: false`, the learned `priors.shapes` (with their fixed sub-cell
    offsets, if any) and an explicit `model.wh_batchnorm`, so it builds the same network with
    ordinary fixed priors. The model's shapes are re-derived from the written numbers, so
    `generate_priors(exported.priors)` equals `model.priors()` exactly.
    """
    priors = model.priors
    assert isinstance(priors, PriorBoxes)
    shapes = tuple(tuple(level) for level in priors.level_entries_px())
    learned = dataclasses.replace(cfg.priors, shapes=shapes, learnable=False)
    updates = {"priors": {"learnable": False}, "model": {"wh_batchnorm": uses_wh_batchnorm(cfg)}}
    base = config_to_dict(cfg)
    write_priors_config(base, learned, path, updates=updates, ndigits=None, keep_ratio_keys=True)
    exported = load_config(path)  # exactly what a user will get from the file
    priors.freeze()
    fresh = build_prior_boxes(exported).to(priors.log_wh.device)
    with torch.no_grad():
        priors.log_wh.copy_(fresh.log_wh)
    return exported
