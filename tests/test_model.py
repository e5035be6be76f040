"""VGG-16 SSD512: output shapes, parameter count from the layer plan, variants, prior order, and
loading torchvision's ImageNet VGG-16 / VGG-16-BN state dicts (synthetic, real key names and shapes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import ssd
from ssd.config import Config, ConfigError, replace
from ssd.modeling.vgg import L2Norm, VGG16Backbone, feature_map_sizes
from ssd.priors.generator import layout_from_config

REPO = Path(__file__).resolve().parents[1]

# torchvision's layer indices of the 13 convolutions in `features` (vgg16 and vgg16_bn)
VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG16_BN_CONVS = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]


def conv_params(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def ssd512_param_count(num_classes: int) -> int:
    """Parameters of SSD512 derived by hand from the paper's layer plan."""
    vgg = [
        (3, 64),
        (64, 64),
        (64, 128),
        (128, 128),
        (128, 256),
        (256, 256),
        (256, 256),
        (256, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
    ]
    backbone = sum(conv_params(a, b, 3) for a, b in vgg)
    assert backbone == 14_714_688  # torchvision's vgg16().features
    fc = conv_params(512, 1024, 3) + conv_params(1024, 1024, 1)  # fc6 (3x3, dilated), fc7 (1x1)
    l2norm = 512
    extras = (
        conv_params(1024, 256, 1)
        + conv_params(256, 512, 3)  # conv8_1, conv8_2 (stride 2)
        + conv_params(512, 128, 1)
        + conv_params(128, 256, 3)  # conv9
        + 2 * (conv_params(256, 128, 1) + conv_params(128, 256, 3))  # conv10, conv11
        + conv_params(256, 128, 1)
        + conv_params(128, 256, 4)  # conv12_2 is 4x4
    )
    sources = [(512, 4), (1024, 6), (512, 6), (256, 6), (256, 6), (256, 4), (256, 4)]
    heads = sum(conv_params(c, a * num_classes, 3) + conv_params(c, a * 4, 3) for c, a in sources)
    return backbone + fc + l2norm + extras + heads


# --------------------------------------------------------------------------- full size


@pytest.fixture(scope="module")
def full_model_and_output() -> Iterator[tuple[nn.Module, ssd.HeadOutputs]]:
    cfg = ssd.load_config(REPO / "configs" / "ssd512_voc.yaml")
    torch.manual_seed(0)
    model = ssd.build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)))
    yield model, out


def test_full_ssd512_output_shapes(full_model_and_output: tuple[nn.Module, ssd.HeadOutputs]) -> None:
    _, out = full_model_and_output
    assert out.cls_logits.shape == (1, 24564, 21)
    assert out.box_deltas.shape == (1, 24564, 4)
    assert torch.isfinite(out.cls_logits).all() and torch.isfinite(out.box_deltas).all()


def test_full_ssd512_parameter_count(full_model_and_output: tuple[nn.Module, ssd.HeadOutputs]) -> None:
    model, _ = full_model_and_output
    count = sum(p.numel() for p in model.parameters())
    assert count == ssd512_param_count(21) == 27_188_676
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_feature_map_sizes() -> None:
    assert feature_map_sizes(512) == [64, 32, 16, 8, 4, 2, 1]
    assert feature_map_sizes(512) == list(Config().priors.feature_maps)
    assert feature_map_sizes(1024) == [128, 64, 32, 16, 8, 4, 3]


def test_feature_maps_must_match_the_network(small_cfg: Config) -> None:
    bad = replace(small_cfg, **{"priors.feature_maps": (63, 32, 16, 8, 4, 2, 1)})
    with pytest.raises(ConfigError, match=r"priors\.feature_maps"):
        ssd.build_model(bad)


# --------------------------------------------------------------------------- small models


def test_small_model_sources_and_outputs(small_cfg: Config) -> None:
    torch.manual_seed(0)
    model = ssd.build_model(small_cfg).eval()
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sources = model.backbone(x)
        out = model.head(sources)
    assert [tuple(s.shape[1:]) for s in sources] == [
        (64, 64, 64),
        (128, 32, 32),
        (64, 16, 16),
        (32, 8, 8),
        (32, 4, 4),
        (32, 2, 2),
        (32, 1, 1),
    ]
    assert model.backbone.out_channels == [64, 128, 64, 32, 32, 32, 32]
    assert out.cls_logits.shape == (1, 24564, 4)
    assert out.box_deltas.shape == (1, 24564, 4)
    assert model.num_classes == 4


def test_batch_norm_variant(small_cfg: Config) -> None:
    cfg = replace(small_cfg, **{"model.batch_norm": True})
    model = ssd.build_model(cfg)
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 13 + 2 + 10  # VGG convs, fc6/fc7, extras
    assert all(m.bias is None for m in model.backbone.modules() if isinstance(m, nn.Conv2d))
    x = torch.randn(2, 3, 512, 512, generator=torch.Generator().manual_seed(2))
    model.train()
    out = model(x)  # batch statistics
    assert out.cls_logits.shape == (2, 24564, 4) and torch.isfinite(out.box_deltas).all()
    model.eval()
    with torch.no_grad():
        out = model(x[:1])  # running statistics
    assert out.box_deltas.shape == (1, 24564, 4)


def test_head_output_order_matches_prior_order(small_cfg: Config) -> None:
    """Heads emit level, row, column, shape: the order of `generate_priors`. Source maps carry
    their row index in channel 0 and column index in channel 1; the head convolutions copy them
    (centre tap) into outputs 0 and 1 of every shape and put (level, shape) into biases, so every
    output names the prior it belongs to."""
    model = ssd.build_model(small_cfg)
    c = small_cfg.num_classes
    p = small_cfg.priors
    features = []
    for f, ch in zip(p.feature_maps, model.backbone.out_channels, strict=True):
        x = torch.zeros(1, ch, f, f)
        x[0, 0] = torch.arange(f, dtype=torch.float32)[:, None]  # row i
        x[0, 1] = torch.arange(f, dtype=torch.float32)[None, :]  # column j
        features.append(x)
    with torch.no_grad():
        for level, (cls, reg) in enumerate(zip(model.head.cls, model.head.reg, strict=True)):
            for conv, per in ((cls, c), (reg, 4)):
                a = conv.out_channels // per
                conv.weight.zero_()
                conv.weight[torch.arange(a) * per, 0, 1, 1] = 1.0
                conv.weight[torch.arange(a) * per + 1, 1, 1, 1] = 1.0
                shape = torch.arange(a).repeat_interleave(per).float()
                channel = torch.arange(per).repeat(a)
                conv.bias.copy_(torch.where(channel >= 2, 1000.0 * level + 10.0 * shape + channel, 0.0))
        out = model.head(features)
    layout = layout_from_config(p)
    steps = torch.tensor(p.steps)[layout.level_index]
    col = (layout.centers[:, 0] * p.image_size / steps - 0.5).round()
    row = (layout.centers[:, 1] * p.image_size / steps - 0.5).round()
    first_shape = torch.tensor([0, *torch.tensor(layout.num_shapes).cumsum(0).tolist()[:-1]])
    within = (layout.shape_index - first_shape[layout.level_index]).float()
    code = 1000.0 * layout.level_index.float() + 10.0 * within
    for t, per in ((out.box_deltas[0], 4), (out.cls_logits[0], c)):
        assert torch.equal(t[:, 0], row) and torch.equal(t[:, 1], col)
        for k in range(2, per):
            assert torch.equal(t[:, k], code + k)


def test_l2norm_rescales_every_position_to_its_scale() -> None:
    norm = L2Norm(6, 20.0)
    x = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(3))
    y = norm(x)
    torch.testing.assert_close(y.norm(dim=1), torch.full((2, 5, 7), 20.0))
    torch.testing.assert_close(y / y.norm(dim=1, keepdim=True), x / x.norm(dim=1, keepdim=True))
    assert [n for n, _ in norm.named_parameters()] == ["weight"]
    assert torch.isfinite(norm(torch.zeros(1, 6, 2, 2))).all()


# --------------------------------------------------------------------------- ImageNet weights


def real_vgg_shapes(batch_norm: bool) -> dict[str, torch.Size]:
    """Key names and shapes of torchvision's vgg16 / vgg16_bn (built on the meta device: no memory)."""
    with torch.device("meta"):
        net = torchvision.models.vgg16_bn() if batch_norm else torchvision.models.vgg16()
    return {k: v.shape for k, v in net.state_dict().items()}


def fill_features(shapes: dict[str, torch.Size], g: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for key, shape in shapes.items():
        if not key.startswith("features."):
            continue
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g)
    return out


@pytest.fixture(scope="module")
def vgg_state_dicts() -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """Synthetic ImageNet state dicts at the real shapes (~0.55 GB, shared classifier).

    Only the classifier entries that the SSD subsampling should read get random values; all the
    others are NaN, so reading a wrong entry cannot go unnoticed."""
    g = torch.Generator().manual_seed(0)
    plain_shapes, bn_shapes = real_vgg_shapes(False), real_vgg_shapes(True)
    fc6 = torch.full(tuple(plain_shapes["classifier.0.weight"]), float("nan"))
    fc6.view(4096, 512, 7, 7)[::4, :, ::3, ::3] = torch.randn(1024, 512, 3, 3, generator=g)
    fc7 = torch.full(tuple(plain_shapes["classifier.3.weight"]), float("nan"))
    fc7[::4, ::4] = torch.randn(1024, 1024, generator=g)
    fc6_b = torch.full((4096,), float("nan"))
    fc6_b[::4] = torch.randn(1024, generator=g)
    fc7_b = torch.full((4096,), float("nan"))
    fc7_b[::4] = torch.randn(1024, generator=g)
    classifier = {
        "classifier.0.weight": fc6,
        "classifier.0.bias": fc6_b,
        "classifier.3.weight": fc7,
        "classifier.3.bias": fc7_b,
        "classifier.6.weight": torch.full(tuple(plain_shapes["classifier.6.weight"]), float("nan")),
        "classifier.6.bias": torch.full((1000,), float("nan")),
    }
    dicts = {
        "vgg16": {**fill_features(plain_shapes, g), **classifier},
        "vgg16_bn": {**fill_features(bn_shapes, g), **classifier},
    }
    for name, shapes in (("vgg16", plain_shapes), ("vgg16_bn", bn_shapes)):
        assert {k: v.shape for k, v in dicts[name].items()} == shapes  # the real names and shapes
    yield dicts
    for d in dicts.values():
        d.clear()


def check_fc_subsampling(backbone: VGG16Backbone, sd: dict[str, torch.Tensor]) -> None:
    """fc6[o, c, y, x] = classifier.0[4 o, c * 49 + 7 * (3 y) + 3 x] (torchvision flattens C, H, W);
    fc7[o, i] = classifier.3[4 o, 4 i]; biases every 4th."""
    fc6, fc7 = backbone.fc6[0], backbone.fc7[0]
    assert isinstance(fc6, nn.Conv2d) and isinstance(fc7, nn.Conv2d)
    assert fc6.weight.shape == (1024, 512, 3, 3) and fc6.dilation == (6, 6) and fc6.padding == (6, 6)
    assert fc7.weight.shape == (1024, 1024, 1, 1)
    o = torch.arange(1024)[:, None, None, None]
    c = torch.arange(512)[None, :, None, None]
    y = torch.arange(3)[None, None, :, None]
    x = torch.arange(3)[None, None, None, :]
    w6 = sd["classifier.0.weight"]
    assert torch.equal(fc6.weight.detach(), w6[4 * o, c * 49 + 7 * (3 * y) + 3 * x])
    assert fc6.weight[1, 2, 1, 2] == w6[4, 2 * 49 + 3 * 7 + 6]  # one spelled out
    w7 = sd["classifier.3.weight"]
    assert torch.equal(
        fc7.weight.detach()[:, :, 0, 0], w7[4 * torch.arange(1024)[:, None], 4 * torch.arange(1024)]
    )
    if fc6.bias is not None and fc7.bias is not None:
        assert torch.equal(fc6.bias.detach(), sd["classifier.0.bias"][torch.arange(0, 4096, 4)])
        assert torch.equal(fc7.bias.detach(), sd["classifier.3.bias"][torch.arange(0, 4096, 4)])


def test_load_torchvision_vgg16(vgg_state_dicts: dict[str, dict[str, torch.Tensor]]) -> None:
    sd = vgg_state_dicts["vgg16"]
    backbone = VGG16Backbone()
    extras_before = [p.detach().clone() for p in backbone.extras.parameters()]
    loaded = backbone.load_torchvision_vgg16(sd)
    expected = {f"features.{i}.{t}" for i in VGG16_CONVS for t in ("weight", "bias")}
    expected |= {"classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"}
    assert set(loaded) == expected and len(loaded) == len(expected)
    convs = [m for m in backbone.features if isinstance(m, nn.Conv2d)]
    for conv, i in zip(convs, VGG16_CONVS, strict=True):
        assert torch.equal(conv.weight.detach(), sd[f"features.{i}.weight"])
        assert conv.bias is not None and torch.equal(conv.bias.detach(), sd[f"features.{i}.bias"])
    check_fc_subsampling(backbone, sd)
    # nothing NaN was read; extras and L2Norm keep their initialisation
    assert all(torch.isfinite(p).all() for p in backbone.parameters())
    assert all(torch.equal(a, b) for a, b in zip(extras_before, backbone.extras.parameters()))
    assert torch.equal(backbone.l2norm.weight.detach(), torch.full((512,), 20.0))
    # a vgg16_bn state dict does not fit a model without batch norm
    with pytest.raises(ValueError, match="batch norm"):
        backbone.load_torchvision_vgg16(vgg_state_dicts["vgg16_bn"])


def test_load_torchvision_vgg16_bn(vgg_state_dicts: dict[str, dict[str, torch.Tensor]]) -> None:
    sd = vgg_state_dicts["vgg16_bn"]
    backbone = VGG16Backbone(batch_norm=True)
    loaded = backbone.load_torchvision_vgg16(sd)
    assert len(loaded) == 13 * (1 + 4) + 2  # conv weights, BN weight/bias/mean/var, fc6/fc7 weights
    convs = [m for m in backbone.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in backbone.features if isinstance(m, nn.BatchNorm2d)]
    for conv, bn, i in zip(convs, bns, VGG16_BN_CONVS, strict=True):
        assert torch.equal(conv.weight.detach(), sd[f"features.{i}.weight"])
        assert torch.equal(bn.weight.detach(), sd[f"features.{i + 1}.weight"])
        assert torch.equal(bn.bias.detach(), sd[f"features.{i + 1}.bias"])
        assert bn.running_var is not None and bn.running_mean is not None
        assert torch.equal(bn.running_var, sd[f"features.{i + 1}.running_var"])
        # our conv has no bias: torchvision's is folded into the running mean
        torch.testing.assert_close(
            bn.running_mean, sd[f"features.{i + 1}.running_mean"] - sd[f"features.{i}.bias"]
        )
    check_fc_subsampling(backbone, sd)
    # eval-mode conv1_1 + BN gives what torchvision's conv (with bias) + BN gives
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    ref = F.batch_norm(
        F.conv2d(x, sd["features.0.weight"], sd["features.0.bias"], padding=1),
        sd["features.1.running_mean"],
        sd["features.1.running_var"],
        sd["features.1.weight"],
        sd["features.1.bias"],
        training=False,
    )
    with torch.no_grad():
        ours = backbone.features[:2].eval()(x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="batch norm"):
        backbone.load_torchvision_vgg16(vgg_state_dicts["vgg16"])


def test_build_model_with_pretrained_path(
    vgg_state_dicts: dict[str, dict[str, torch.Tensor]],
    small_cfg: Config,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    path = tmp_path / "vgg16.pth"
    path.write_bytes(b"placeholder: torch.load is replaced below to avoid writing 0.55 GB")
    real_load = torch.load

    def fake_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(f) == path:
            assert kwargs.get("weights_only") is True  # ImageNet files are loaded safely
            return vgg_state_dicts["vgg16"]
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", fake_load)
    cfg = replace(small_cfg, **{"model.width_mult": 1.0, "model.pretrained": str(path)})
    model = ssd.build_model(cfg)
    assert torch.equal(
        model.backbone.features[0].weight.detach(), vgg_state_dicts["vgg16"]["features.0.weight"]
    )
    check_fc_subsampling(model.backbone, vgg_state_dicts["vgg16"])
    with pytest.raises(ConfigError, match=r"model\.pretrained") as info:
        ssd.build_model(replace(cfg, **{"model.batch_norm": True}))
    assert str(path) in str(info.value) and "batch norm" in str(info.value)


def test_build_model_pretrained_errors(small_cfg: Config, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pth"
    full = replace(small_cfg, **{"model.width_mult": 1.0, "model.pretrained": str(missing)})
    with pytest.raises(ConfigError, match=r"model\.pretrained") as info:
        ssd.build_model(full)
    assert str(missing) in str(info.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x02not a pickle at all" * 10)
    with pytest.raises(ConfigError, match=r"model\.pretrained") as info:
        ssd.build_model(replace(full, **{"model.pretrained": str(garbage)}))
    assert str(garbage) in str(info.value)
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(ConfigError, match="not a torchvision VGG-16") as info:
        ssd.build_model(replace(full, **{"model.pretrained": str(foreign)}))
    assert str(foreign) in str(info.value)
    wrong = tmp_path / "wrong_shape.pth"
    torch.save(
        {"features.0.weight": torch.zeros(64, 3, 3, 3), "classifier.0.weight": torch.zeros(10, 10)}, wrong
    )
    with pytest.raises(ConfigError, match=r"model\.pretrained") as info:
        ssd.build_model(replace(full, **{"model.pretrained": str(wrong)}))
    assert str(wrong) in str(info.value)
    with pytest.raises(ConfigError, match="width_mult"):
        ssd.build_model(replace(small_cfg, **{"model.pretrained": str(foreign)}))
