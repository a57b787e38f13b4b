"""Adjust timm encoders, after construction, so that each computes the function of its authors' backbone.

timm builds the architectures (and loads their ImageNet files); where the papers' code bases compute something
else with the same tensors, the functions here change the modules in place, never a parameter's name or shape, so
that timm's ImageNet files and the authors' converted checkpoints both load strictly. Each difference was found by
reading the authors' code and confirmed by outputs (``shared/reference``; ``docs/models.md`` gives the numbers).

* :func:`dilate_like_deeplab_xception_resnet`: in pytorch-deeplab-xception's ResNets every block of a dilated stage,
  its first block included, has the stage's dilation (AmirMansurian/AttnFD@f090bbe:modeling/backbone/resnet.py:123-138,
  ``_make_layer`` passes ``dilation`` to block 0; ``BasicBlock`` dilates both its 3x3 convolutions, lines 13-15).
  timm, like torchvision and CIRKD's gluon-cv ResNets, gives block 0 the previous stage's dilation.
* :func:`match_deeplab_xception_mobilenet_v2`: that code base's MobileNetV2
  (AmirMansurian/AttnFD@f090bbe:modeling/backbone/mobilenet.py) sets a stage's dilation *before* multiplying the rate
  by the dropped stride (lines 95-98), so every block of a stage has the dilation timm gives only its first block
  (at output stride 16: the 160-channel stage undilated, the 320 block at 2; timm: 1, 2, 2 and 2); and
  ``fixed_padding`` pads each block's *input* by the dilation before the 1x1 expansion (lines 62-67), so the
  depthwise convolution sees ReLU6(BN(0)) at the border instead of zeros.
* :class:`ActivationInputTap`: exposes the input of an activation inside timm's ``BatchNormAct2d`` (the expansion's
  BN output before its ReLU6) as the output of an ``Identity``, the module a feature point hooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models._efficientnet_blocks import InvertedResidual
from torch import nn


def dilate_like_deeplab_xception_resnet(encoder: nn.Module) -> None:
    """Give block 0 of every dilated ResNet stage the stage's dilation in each of its 3x3 convolutions."""
    for name in ("layer1", "layer2", "layer3", "layer4"):
        stage = getattr(encoder, name)
        rate = stage[-1].conv2.dilation  # timm dilates every later block with the stage's rate
        if rate == (1, 1):
            continue
        first = stage[0]
        for conv in (first.conv1, first.conv2):
            if conv.kernel_size == (3, 3):
                conv.dilation, conv.padding = rate, rate


class PaddedInputConv2d(nn.Conv2d):
    """A convolution that zero-pads its input by ``input_padding`` on every side first (same parameters)."""

    def __init__(self, conv: nn.Conv2d, input_padding: int):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                         device=conv.weight.device, dtype=conv.weight.dtype)
        self.weight = conv.weight  # the same Parameter: weights loaded before stay in place
        self.bias = conv.bias
        self.input_padding = input_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, [self.input_padding] * 4))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, input_padding={self.input_padding}"


def match_deeplab_xception_mobilenet_v2(encoder: nn.Module) -> None:
    """Dilation and border padding of pytorch-deeplab-xception's MobileNetV2 on a timm ``mobilenetv2_100``."""
    for stage in encoder.blocks:
        rate = stage[0].conv_dw.dilation
        for block in stage:
            block.conv_dw.dilation = rate
            if isinstance(block, InvertedResidual):
                # Their pad comes before the 1x1 expansion: the padded border goes through conv (no bias), BN
                # and ReLU6 before the depthwise convolution, which itself pads nothing.
                block.conv_pw = PaddedInputConv2d(block.conv_pw, rate[0] * (block.conv_dw.kernel_size[0] // 2))
                block.conv_dw.padding = (0, 0)
            else:  # the first block starts with the depthwise convolution: their pad is its zero padding
                block.conv_dw.padding = tuple(r * (k // 2) for r, k in zip(rate, block.conv_dw.kernel_size))


class ActivationInputTap(nn.Module):
    """An activation whose input, less ``border`` pixels on each side, is the output of ``self.tap``.

    ``border`` removes the pre-padding of :class:`PaddedInputConv2d`, so the tap holds the map the authors' code
    computes on the unpadded input (AttnFD@f090bbe:modeling/backbone/mobilenet.py:147-150 applies the expansion
    ``conv[0:2]`` to the stage output itself). The activation is made non-in-place so it cannot overwrite the tap.
    """

    def __init__(self, activation: nn.Module, border: int = 0):
        super().__init__()
        if hasattr(activation, "inplace"):
            activation.inplace = False
        self.activation = activation
        self.border = border
        self.tap = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.border
        self.tap(x[..., b : x.shape[-2] - b, b : x.shape[-1] - b] if b else x)
        return self.activation(x)
