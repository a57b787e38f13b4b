"""Small models for the CPU smoke suite and the tests: the zoo's interface at a size a 2-core CPU trains
in seconds. Backbones are timm ResNets with narrow stages (built from timm's parts, not vendored), dilated
to output stride 8 as the CIRKD family is; the head is a minimal DeepLabV3+ (ASPP with 1x1, two atrous
3x3 branches and image pooling; a decoder fusing ``backbone.1``). They expose every feature point name
of the zoo, including ``:pre_relu`` variants, so every method runs on them.

They reproduce no paper: they exist so that the harness, every method and the report can be exercised
end to end without a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from benchmark.models.base import FeaturePoint, SegmentationModel
from benchmark.models.heads import conv_bn_relu
from benchmark.registry import MODELS


class TinyASPP(nn.Module):
    def __init__(self, in_channels: int, channels: int, rates: tuple[int, ...] = (2, 4)):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels)] + [conv_bn_relu(in_channels, channels, 3, r) for r in rates]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, channels))
        self.project = nn.Sequential(
            nn.Conv2d(channels * (len(rates) + 2), channels, 1, bias=False), nn.BatchNorm2d(channels)
        )
        # Not in-place: the `encoder:pre_relu` point is this ReLU's input.
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.relu(self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1)))


class TinyDeepLab(SegmentationModel):
    def __init__(self, num_classes: int, channels: tuple[int, int, int, int], layers: tuple[int, ...], head: int):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = ResNet(BasicBlock, list(layers), channels=channels, stem_width=channels[0], output_stride=8,
                               num_classes=0, global_pool="")
        for stage in (self.backbone.layer1, self.backbone.layer2, self.backbone.layer3, self.backbone.layer4):
            stage[-1].act2 = nn.ReLU(inplace=False)  # its input is the stage's pre-ReLU point
        self.aspp = TinyASPP(channels[3], head)
        self.low_level = conv_bn_relu(channels[0], head // 2)
        self.fuse = nn.Sequential(
            nn.Conv2d(head + head // 2, head, 3, padding=1, bias=False), nn.BatchNorm2d(head)
        )
        self.fuse_relu = nn.ReLU(inplace=False)
        self.classifier = nn.Conv2d(head, num_classes, 1)
        self.head_modules = ("aspp", "low_level", "fuse", "fuse_relu", "classifier")
        strides = (4, 8, 8, 8)
        self.feature_points = {}
        for index, (width, stride) in enumerate(zip(channels, strides), start=1):
            module = f"backbone.layer{index}"
            last_act = f"{module}.{len(getattr(self.backbone, f'layer{index}')) - 1}.act2"
            self.feature_points[f"backbone.{index}"] = FeaturePoint(width, stride, module)
            self.feature_points[f"backbone.{index}:pre_relu"] = FeaturePoint(width, stride, last_act, "input")
        self.feature_points.update(
            {
                "encoder": FeaturePoint(head, 8, "aspp"),
                "encoder:pre_relu": FeaturePoint(head, 8, "aspp.relu", "input"),
                "decoder": FeaturePoint(head, 4, "fuse_relu"),
                "decoder:pre_relu": FeaturePoint(head, 4, "fuse_relu", "input"),
                "logits": FeaturePoint(num_classes, 1, ""),
                "logits:pre_upsample": FeaturePoint(num_classes, 4, "classifier"),
            }
        )
        self.validate_points()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.backbone.act1(self.backbone.bn1(self.backbone.conv1(images)))
        x = self.backbone.maxpool(x)
        low = self.backbone.layer1(x)
        deep = self.backbone.layer4(self.backbone.layer3(self.backbone.layer2(low)))
        encoded = F.interpolate(self.aspp(deep), size=low.shape[-2:], mode="bilinear", align_corners=False)
        decoded = self.fuse_relu(self.fuse(torch.cat([encoded, self.low_level(low)], dim=1)))
        return F.interpolate(self.classifier(decoded), size=images.shape[-2:], mode="bilinear", align_corners=False)


@MODELS.register("tiny_teacher")
def tiny_teacher(num_classes: int, *, pretrained: bool | str = False) -> TinyDeepLab:
    """Smoke-suite teacher: ResNet (2,2,2,2) blocks, widths 32-256, OS 8, 64-channel head (about 3.0M params)."""
    _no_pretrained(pretrained, "tiny_teacher")
    return TinyDeepLab(num_classes, (32, 64, 128, 256), (2, 2, 2, 2), head=64)


@MODELS.register("tiny_student")
def tiny_student(num_classes: int, *, pretrained: bool | str = False) -> TinyDeepLab:
    """Smoke-suite student: ResNet (1,1,1,1) blocks, widths 16-128, OS 8, 32-channel head."""
    _no_pretrained(pretrained, "tiny_student")
    return TinyDeepLab(num_classes, (16, 32, 64, 128), (1, 1, 1, 1), head=32)


@MODELS.register("tiny_student_narrow")
def tiny_student_narrow(num_classes: int, *, pretrained: bool | str = False) -> TinyDeepLab:
    """Smoke-suite student, narrower: ResNet (1,1,1,1) blocks, widths 8-64, OS 8, 16-channel head."""
    _no_pretrained(pretrained, "tiny_student_narrow")
    return TinyDeepLab(num_classes, (8, 16, 32, 64), (1, 1, 1, 1), head=16)


def _no_pretrained(pretrained: bool | str, name: str) -> None:
    if pretrained:
        raise ValueError(f"model {name!r} has no pretrained weights: set `pretrained: false`")
