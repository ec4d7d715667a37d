"""EfficientNet-Lite0/1/2 in plain PyTorch: the network of timm's ``tf_efficientnet_lite*``.

Loading the default model through timm imports torchvision and torch._dynamo, seconds
of start-up in every process that only wants this one network. This module builds the
same modules under the same names (``conv_stem``, ``bn1``, ``blocks.<stage>.<block>``,
``conv_head``, ``bn2``, ``global_pool``, ``classifier``), so state dicts, layer names
(``--layer blocks.5``, the default ``bn2``) and outputs are those of timm's models.

What the TensorFlow-trained weights need, and timm's ``tf_`` variants therefore do:
- TensorFlow's "SAME" padding: a strided convolution pads by an amount that depends on
  the input size, the odd pixel at the bottom / right (``Conv2dSame``); a stride-1 odd
  kernel pads (k - 1) // 2 on every side, which is the same thing, so a plain Conv2d;
- BatchNorm with eps 1e-3 (TensorFlow's), momentum PyTorch's 0.1;
- ReLU6 applied inside the BatchNorm module (``BatchNormAct2d``): hooking ``bn2`` sees
  the activated map, while the state-dict keys stay the BatchNorm's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# name -> (channel multiplier, depth multiplier), as in the EfficientNet-Lite release.
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0),
    "efficientnet_lite1": (1.0, 1.1),
    "efficientnet_lite2": (1.1, 1.2),
}

# Stages: (depthwise-separable or inverted residual, repeats, kernel, stride of the
# first block, expansion, output channels) before scaling.
_STAGES = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
# Lite keeps the stem and head widths whatever the multiplier (they are not rounded).
_STEM, _HEAD = 32, 1280
_BN_EPS = 1e-3


def _divisible(value: float, divisor: int = 8) -> int:
    """Nearest multiple of ``divisor`` (at least ``divisor``), never more than 10% below."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding, computed for each input size."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, **kwargs) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=0, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        # F.pad takes the last dimension first: (left, right, top, bottom).
        for size, kernel, stride, dilation in zip(
            reversed(x.shape[-2:]),
            reversed(self.kernel_size),
            reversed(self.stride),
            reversed(self.dilation),
            strict=True,
        ):
            # Enough padding that ceil(size / stride) outputs fit, split with the odd one after.
            reach = (math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1
            total = max(reach - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(
            F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups
        )


def _conv(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free convolution with "SAME" padding, static where it does not depend on size."""
    if stride == 1 and kernel % 2 == 1:
        padding = (kernel - 1) // 2
        return nn.Conv2d(in_chs, out_chs, kernel, padding=padding, groups=groups, bias=False)
    return Conv2dSame(in_chs, out_chs, kernel, stride=stride, groups=groups, bias=False)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm then ReLU6 (or nothing) in one module, as timm lays it out: the
    activation is a child (``act``), the parameters and buffers are the BatchNorm's."""

    def __init__(self, channels: int, act: bool = True) -> None:
        super().__init__(channels, eps=_BN_EPS)
        self.drop = nn.Identity()  # timm's slot for a dropout; kept so the modules match
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


class DepthwiseSeparableConv(nn.Module):
    """Depthwise conv, BN + ReLU6, pointwise projection, BN; residual if shapes allow."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_dw = _conv(in_chs, in_chs, kernel, stride, groups=in_chs)
        self.bn1 = BatchNormAct2d(in_chs)
        self.aa = nn.Identity()  # no anti-aliasing, no squeeze-excitation, no drop path in Lite
        self.se = nn.Identity()
        self.conv_pw = _conv(in_chs, out_chs, 1)
        self.bn2 = BatchNormAct2d(out_chs, act=False)
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(self.se(self.aa(self.bn1(self.conv_dw(x))))))
        return self.drop_path(out) + x if self.has_skip else out


class InvertedResidual(nn.Module):
    """Pointwise expansion, depthwise conv, linear pointwise projection (MBConv, no SE)."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, expansion: float):
        super().__init__()
        mid_chs = _divisible(in_chs * expansion)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = _conv(in_chs, mid_chs, 1)
        self.bn1 = BatchNormAct2d(mid_chs)
        self.conv_dw = _conv(mid_chs, mid_chs, kernel, stride, groups=mid_chs)
        self.bn2 = BatchNormAct2d(mid_chs)
        self.aa = nn.Identity()
        self.se = nn.Identity()
        self.conv_pwl = _conv(mid_chs, out_chs, 1)
        self.bn3 = BatchNormAct2d(out_chs, act=False)
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.se(self.aa(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))
        out = self.bn3(self.conv_pwl(out))
        return self.drop_path(out) + x if self.has_skip else out


class GlobalAvgPool(nn.Module):
    """Average over the spatial dimensions, flattened to (N, C) (timm's ``global_pool``)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(x))


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: ``name`` is one of ``VARIANTS``."""

    def __init__(self, name: str = "efficientnet_lite0", num_classes: int = 1000) -> None:
        super().__init__()
        width, depth = VARIANTS[name]
        self.num_classes = num_classes
        self.conv_stem = _conv(3, _STEM, 3, stride=2)
        self.bn1 = BatchNormAct2d(_STEM)
        stages, in_chs = [], _STEM
        for index, (kind, repeats, kernel, stride, expansion, channels) in enumerate(_STAGES):
            # Depth scales by ceil, except for the first and last stage (one block each).
            if 0 < index < len(_STAGES) - 1:
                repeats = math.ceil(repeats * depth)
            out_chs = _divisible(channels * width)
            blocks = []
            for block in range(repeats):
                step = stride if block == 0 else 1
                if kind == "ds":
                    blocks.append(DepthwiseSeparableConv(in_chs, out_chs, kernel, step))
                else:
                    blocks.append(InvertedResidual(in_chs, out_chs, kernel, step, expansion))
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = _conv(in_chs, _HEAD, 1)
        self.bn2 = BatchNormAct2d(_HEAD)
        self.global_pool = GlobalAvgPool()
        self.classifier = nn.Linear(_HEAD, num_classes)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Random weights drawn as timm draws them (TensorFlow's scheme), so an untrained
        model (sanity checks) has activations of the same scale."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0, math.sqrt(2.0 / (fan_out // module.groups)))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.out_features)
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        x = self.bn2(self.conv_head(self.blocks(x)))
        return self.classifier(self.global_pool(x))
