"""VGG-16 backbone as modified by the SSD paper (section 3) plus the SSD512 extra layers.

conv1_1..conv5_3 (pool3 with ceil mode, pool5 3x3 stride 1), fc6 as a 3x3 convolution with dilation
6 (1024 channels), fc7 as 1x1 (1024), L2Norm (learnable per-channel scale, init 20) on conv4_3,
then conv8..conv12 for the source maps 64/32/16/8/4/2/1 at 512x512.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# VGG-16 convolution plan: channels, "M" max-pool 2x2, "C" max-pool 2x2 with ceil mode.
_VGG16: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M",
                           512, 512, 512]  # fmt: skip
# SSD512 extras: (out channels of the 1x1, out channels of the second conv, its kernel, stride, pad)
_EXTRAS512: list[tuple[int, int, int, int, int]] = [
    (256, 512, 3, 2, 1),  # conv8
    (128, 256, 3, 2, 1),  # conv9
    (128, 256, 3, 2, 1),  # conv10
    (128, 256, 3, 2, 1),  # conv11
    (128, 256, 4, 1, 1),  # conv12
]


def scaled(channels: int, width_mult: float) -> int:
    return max(8, round(channels * width_mult))


def feature_map_sizes(image_size: int) -> list[int]:
    """Spatial sizes of the 7 source maps for a square input (64/32/16/8/4/2/1 at 512)."""
    s = image_size // 2 // 2
    s = math.ceil(s / 2)  # pool3, ceil mode
    sizes = [s]
    s = s // 2  # pool4; pool5 keeps the size; fc6 (pad 6, dilation 6) and fc7 keep it
    sizes.append(s)
    for _, _, k, stride, pad in _EXTRAS512:
        s = (s + 2 * pad - k) // stride + 1
        sizes.append(s)
    return sizes


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learnable per-channel scale (ParseNet; SSD sec. 3)."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1, eps=1e-10) * self.weight[None, :, None, None]


def _conv(
    cin: int,
    cout: int,
    batch_norm: bool,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel_size, stride, padding, dilation, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


class VGG16Backbone(nn.Module):
    """Returns the 7 source maps; `out_channels` lists their channel counts."""

    def __init__(self, batch_norm: bool = False, width_mult: float = 1.0, l2norm_scale: float = 20.0):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for item in _VGG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            elif item == "C":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                assert isinstance(item, int)
                cout = scaled(item, width_mult)
                layers += _conv(cin, cout, batch_norm, kernel_size=3, padding=1)
                cin = cout
        self.features = nn.Sequential(*layers)
        self._conv4_3_end = self._find_conv4_3_end()
        c_fc = scaled(1024, width_mult)
        self.pool5 = nn.MaxPool2d(3, stride=1, padding=1)
        self.fc6 = nn.Sequential(*_conv(cin, c_fc, batch_norm, kernel_size=3, padding=6, dilation=6))
        self.fc7 = nn.Sequential(*_conv(c_fc, c_fc, batch_norm, kernel_size=1))
        self.l2norm = L2Norm(cin, l2norm_scale)
        extras = []
        c_prev = c_fc
        out_channels = [cin, c_fc]
        for mid, out, k, stride, pad in _EXTRAS512:
            m, o = scaled(mid, width_mult), scaled(out, width_mult)
            extras.append(
                nn.Sequential(
                    *_conv(c_prev, m, batch_norm, kernel_size=1),
                    *_conv(m, o, batch_norm, kernel_size=k, stride=stride, padding=pad),
                )
            )
            out_channels.append(o)
            c_prev = o
        self.extras = nn.ModuleList(extras)
        self.out_channels = out_channels
        self._init_weights()

    def _find_conv4_3_end(self) -> int:
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        return pools[3]  # index of pool4: conv4_3 (+ReLU) ends just before it

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.features[: self._conv4_3_end](x)
        sources = [self.l2norm(x)]
        x = self.features[self._conv4_3_end :](x)
        x = self.fc7(self.fc6(self.pool5(x)))
        sources.append(x)
        for layer in self.extras:
            x = layer(x)
            sources.append(x)
        return sources

    def load_torchvision_vgg16(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Load torchvision's ImageNet `vgg16` or `vgg16_bn` state dict.

        Convolutions (and batch norms) of `features.*` are copied in order; fc6/fc7 come from
        `classifier.0`/`classifier.3` subsampled as in the SSD paper (sec. 3): every 4th output
        (and input for fc7) unit, every 3rd tap of fc6's 7x7 kernel, used with dilation 6.
        Returns the names of the parameters that were loaded. Needs `width_mult == 1`.
        """
        src_idx = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("features.")})
        src_kinds = []
        for i in src_idx:
            w = state_dict.get(f"features.{i}.weight")
            if w is None:
                continue
            src_kinds.append((i, "conv" if w.dim() == 4 else "bn"))
        dst = [(j, m) for j, m in enumerate(self.features) if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        src_convs = [i for i, kind in src_kinds if kind == "conv"]
        dst_convs = [m for _, m in dst if isinstance(m, nn.Conv2d)]
        if len(src_convs) != len(dst_convs):
            raise ValueError(
                f"VGG-16 state dict has {len(src_convs)} convolutions in features, expected {len(dst_convs)}"
            )
        src_bns = [i for i, kind in src_kinds if kind == "bn"]
        dst_bns = [m for _, m in dst if isinstance(m, nn.BatchNorm2d)]
        if len(src_bns) != len(dst_bns):
            # Copying vgg16_bn convolutions without their batch norms (or the reverse) would
            # silently give wrong features.
            raise ValueError(
                f"VGG-16 state dict has {len(src_bns)} batch norms in features, the model has "
                f"{len(dst_bns)}: use vgg16 weights with model.batch_norm=false and vgg16_bn "
                "weights with model.batch_norm=true"
            )
        loaded: list[str] = []

        def copy(dst_t: Tensor, src: Tensor, name: str) -> None:
            if dst_t.shape != src.shape:
                raise ValueError(f"{name}: shape {tuple(src.shape)} does not fit {tuple(dst_t.shape)}")
            with torch.no_grad():
                dst_t.copy_(src)
            loaded.append(name)

        for i, conv in zip(src_convs, dst_convs):
            copy(conv.weight, state_dict[f"features.{i}.weight"], f"features.{i}.weight")
            if conv.bias is not None:
                copy(conv.bias, state_dict[f"features.{i}.bias"], f"features.{i}.bias")
        for i_conv, i, bn in zip(src_convs, src_bns, dst_bns):
            assert bn.running_mean is not None and bn.running_var is not None
            for attr, t in (("weight", bn.weight), ("bias", bn.bias), ("running_var", bn.running_var)):
                copy(t, state_dict[f"features.{i}.{attr}"], f"features.{i}.{attr}")
            # Our convolutions before a batch norm have no bias; torchvision's do. Fold it into the
            # running mean (BN(conv(x) + b) with mean m equals BN(conv(x)) with mean m - b), so the
            # eval-mode output is unchanged.
            mean = state_dict[f"features.{i}.running_mean"]
            conv_bias = state_dict.get(f"features.{i_conv}.bias")
            folded = mean if conv_bias is None else mean - conv_bias
            copy(bn.running_mean, folded, f"features.{i}.running_mean")
        fc6_w = state_dict["classifier.0.weight"].view(4096, 512, 7, 7)[::4, :, ::3, ::3]
        fc6_b = state_dict["classifier.0.bias"][::4]
        fc7_w = state_dict["classifier.3.weight"].view(4096, 4096, 1, 1)[::4, ::4]
        fc7_b = state_dict["classifier.3.bias"][::4]
        fc6, fc7 = self.fc6[0], self.fc7[0]
        assert isinstance(fc6, nn.Conv2d) and isinstance(fc7, nn.Conv2d)
        copy(fc6.weight, fc6_w, "classifier.0.weight")
        copy(fc7.weight, fc7_w, "classifier.3.weight")
        if fc6.bias is not None and fc7.bias is not None:
            copy(fc6.bias, fc6_b, "classifier.0.bias")
            copy(fc7.bias, fc7_b, "classifier.3.bias")
        return loaded
