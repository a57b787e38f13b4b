"""Segmentation heads as the papers' code bases define them (not smp's variants).

* :class:`ASPP`: DeepLabV3's atrous spatial pyramid pooling, plain (not separable) 3x3 atrous convolutions, as in
  CIRKD ``models/deeplabv3.py`` and pytorch-deeplab-xception ``modeling/aspp.py`` (smp uses separable convs).
* :class:`DeepLabV3PlusDecoder`: pytorch-deeplab-xception ``modeling/decoder.py`` (48-channel low-level
  reduction, two 3x3 convs of 256, dropout 0.5 and 0.1).
* :class:`PyramidPooling`: PSPNet's pyramid pooling module with bins 1, 2, 3, 6, as in CIRKD ``models/pspnet.py``.
* :class:`FCNHead`: CIRKD's auxiliary head (``_FCNHead``), in_channels // 4 hidden channels.

The ReLU after each point that methods distil pre-ReLU (``encoder``, ``decoder``) is a separate, non-in-place
module, so its input can be captured by a forward pre-hook (see :mod:`benchmark.models.hooks`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ASPPPooling(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # align_corners=True as both code bases; for a 1x1 map it is a broadcast either way.
        return F.interpolate(self.gap(x), size=x.shape[-2:], mode="bilinear", align_corners=True)


class ASPP(nn.Module):
    """1x1 branch, three 3x3 atrous branches, image pooling; concat -> 1x1 projection -> BN -> ReLU -> dropout."""

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int], dropout: float = 0.5):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels)]
            + [conv_bn_relu(in_channels, channels, 3, dilation=rate) for rate in rates]
            + [ASPPPooling(in_channels, channels)]
        )
        self.project = nn.Sequential(
            nn.Conv2d(channels * (len(rates) + 2), channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=False),  # `encoder:pre_relu` is this ReLU's input
            nn.Dropout(dropout),
        )
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """Fuse the ASPP output (upsampled) with the reduced stride-4 feature; output = feature before the classifier."""

    def __init__(self, low_level_channels: int, in_channels: int = 256, reduced: int = 48, channels: int = 256):
        super().__init__()
        self.reduce = conv_bn_relu(low_level_channels, reduced)
        self.fuse = nn.Sequential(
            nn.Conv2d(in_channels + reduced, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=False),  # `decoder:pre_relu` is this ReLU's input
            nn.Dropout(0.1),
        )
        self.out_channels = channels

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.reduce(low)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.fuse(torch.cat([high, low], dim=1))


class PyramidPooling(nn.Module):
    """Concat of the input and its 1x1-reduced average pools at each bin, upsampled: 2 x in_channels out."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_bn_relu(in_channels, in_channels // 4)) for b in bins
        )
        self.out_channels = in_channels + len(bins) * (in_channels // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=True) for stage in self.stages]
        return torch.cat([x, *pooled], dim=1)


class ConvBlock(nn.Sequential):
    """3x3 conv -> BN -> ReLU -> dropout 0.1: the head block before the classifier in CIRKD's DeepLabV3 and PSPNet."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=False),  # `decoder:pre_relu` is this ReLU's input
            nn.Dropout(0.1),
        )
        self.out_channels = channels


class FCNHead(nn.Sequential):
    """CIRKD's auxiliary head on ``backbone.3``: 3x3 conv to in//4 -> BN -> ReLU -> dropout 0.1 -> 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int):
        hidden = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(hidden, num_classes, 1),
        )
