"""The one model class behind every zoo builder: a timm encoder, a context module, a decoder, a classifier.

Architectures differ only in their parts (see :mod:`benchmark.models.zoo_xception` and
:mod:`benchmark.models.zoo_cirkd`); the feature points are declared here, once, with the same names everywhere:

=====================  ===========================================================  ==========================
point                  module                                                       stride
=====================  ===========================================================  ==========================
``backbone.1``..``4``  the encoder's four stages (timm ``features_only`` modules)   4, 8, min(16, OS), OS
``encoder``            ``context``: ASPP or pyramid pooling output                  OS
``decoder``            ``decoder``: the feature just before the 1x1 classifier      4 (DeepLabV3+), else OS
                       (DeepLabV3+: before the decoder's Dropout(0.1))
``logits``             the model itself, upsampled to the input                     1
``logits:pre_upsample`` the classifier's output before upsampling (CIRKD-family code
                       distils these)                                                as ``decoder``
``aux_logits``         ``aux_head`` (CIRKD family), on ``backbone.3``; training only  stride of ``backbone.3``
=====================  ===========================================================  ==========================

``:pre_relu`` variants are the feature at the first ReLU at or after the point, before that ReLU (Overhaul's
distillation position): ResNet stages (input of the last block's final activation, which is what Overhaul and AttnFD
distil: their code moves that ReLU into the next block), the ASPP projection and the decoder's last conv. MobileNetV2
stages end in a linear bottleneck: the first ReLU after stage k = 1..3 is the next block's expansion ReLU6, so
``backbone.k:pre_relu`` is that expansion's BN output (144, 192, 576 channels, as Overhaul's code takes it), and
``backbone.4:pre_relu`` is the linear 320-channel output itself (no ReLU follows; AttnFD's and Overhaul's ``feat4``).
EfficientNet (SiLU) declares none. Pyramid pooling ends in a concat of post-ReLU tensors and has none either.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models.authors_encoders import ActivationInputTap
from benchmark.models.base import PRE_RELU, PRE_UPSAMPLE, FeaturePoint, SegmentationModel
from benchmark.models.heads import DeepLabV3PlusDecoder
from benchmark.models.pretrained import EncoderSpec, create_encoder

OUTPUT_STRIDES = (8, 16)


def check_output_stride(output_stride: int) -> int:
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    return output_stride


def build_encoder(spec: EncoderSpec, output_stride: int, pretrained: bool | str) -> nn.Module:
    """The four stages (strides 4..32 before dilation) of a timm encoder, dilated to ``output_stride``."""
    return create_encoder(spec, pretrained, out_indices=(1, 2, 3, 4), output_stride=check_output_stride(output_stride))


def apply_multi_grid(stage: nn.Sequential, base_dilation: int, grid: Sequence[int] = (1, 2, 4)) -> None:
    """DeepLabV3's multi-grid on the last stage: block i's 3x3 conv gets dilation ``base * grid[i]``.

    pytorch-deeplab-xception ``_make_MG_unit`` does this for Bottleneck ResNets (dilations 2, 4, 8 at OS16);
    timm dilates every block of the stage equally, so we re-set the 3x3 convs (shape-preserving: no new weights).
    """
    for block, unit in zip(stage, grid, strict=True):
        rate = base_dilation * unit
        block.conv2.dilation, block.conv2.padding = (rate, rate), (rate, rate)


def kaiming_init(module: nn.Module) -> None:
    """pytorch-deeplab-xception's head init (``_init_weight``): kaiming-normal convs, BN at identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ZooModel(SegmentationModel):
    """Encoder -> context (ASPP / PPM) -> decoder -> 1x1 classifier, optional FCN auxiliary head on stage 3.

    ``forward`` returns the main logits, bilinearly upsampled to the input size (align_corners=True, as both
    CIRKD and pytorch-deeplab-xception do). The auxiliary head runs only in training mode; its output is the
    ``aux_logits`` point, captured by hook and weighted by ``aux_weight`` in the harness.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: nn.Module,
        context: nn.Module,
        decoder: nn.Module,
        aux_head: nn.Module | None = None,
        aux_weight: float = 0.0,
        output_stride: int,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        self.context = context
        self.decoder = decoder
        self.classifier = nn.Conv2d(decoder.out_channels, num_classes, 1)
        self.aux_head = aux_head
        self.aux_weight = aux_weight if aux_head is not None else 0.0
        self.output_stride = output_stride
        self._uses_low_level = isinstance(decoder, DeepLabV3PlusDecoder)
        self.head_modules = ("context", "decoder", "classifier") + (("aux_head",) if aux_head is not None else ())
        # pytorch-deeplab-xception's extract_feature: the ASPP returns before its Dropout(0.5) (modeling/aspp.py)
        self.extract_feature_skips = ("context.project.3",) if self._uses_low_level else ()
        self.feature_points = self._declare_points()
        self.validate_points()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        stages = self.backbone(images)
        context = self.context(stages[3])
        feature = self.decoder(context, stages[0]) if self._uses_low_level else self.decoder(context)
        logits = self.classifier(feature)
        if self.aux_head is not None and self.training:
            self.aux_head(stages[2])  # its output is taken by the `aux_logits` hook; inference never pays for it
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)

    def _declare_points(self) -> dict[str, FeaturePoint]:
        info = self.backbone.feature_info
        points: dict[str, FeaturePoint] = {}
        for index, (name, channels, stride) in enumerate(
            zip(info.module_name(), info.channels(), info.reduction(), strict=True), start=1
        ):
            points[f"backbone.{index}"] = FeaturePoint(channels, stride, f"backbone.{name}")
            relu = self._make_final_relu_capturable(name)
            if relu is not None:
                points[f"backbone.{index}{PRE_RELU}"] = FeaturePoint(channels, stride, relu, "input")
            elif (linear := self._linear_stage_pre_relu(name, channels, stride)) is not None:
                points[f"backbone.{index}{PRE_RELU}"] = linear
        context_channels = self.context.out_channels
        points["encoder"] = FeaturePoint(context_channels, self.output_stride, "context")
        if hasattr(self.context, "project"):  # ASPP ends in a ReLU; pyramid pooling in a concat
            points[f"encoder{PRE_RELU}"] = FeaturePoint(
                context_channels, self.output_stride, "context.project.2", "input"
            )
        decoder_stride = points["backbone.1"].stride if self._uses_low_level else self.output_stride
        relu_path = "decoder.fuse.6" if self._uses_low_level else "decoder.2"
        # DeepLabV3+: the decoder's feature before its Dropout(0.1), where both KD code bases take it
        # (AttnFD@f090bbe:modeling/decoder.py:64-67, overhaul-distillation@76344a8:Segmentation/modeling/decoder.py:60-62);
        # CIRKD's head feature is after its dropout (winycg/CIRKD@2d8ad0f:models/deeplabv3.py:94-95).
        decoder_module = "decoder.fuse.6" if self._uses_low_level else "decoder"
        points["decoder"] = FeaturePoint(self.decoder.out_channels, decoder_stride, decoder_module)
        points[f"decoder{PRE_RELU}"] = FeaturePoint(self.decoder.out_channels, decoder_stride, relu_path, "input")
        points["logits"] = FeaturePoint(self.num_classes, 1, "")
        points[f"logits{PRE_UPSAMPLE}"] = FeaturePoint(self.num_classes, decoder_stride, "classifier")
        if self.aux_head is not None:
            points["aux_logits"] = FeaturePoint(self.num_classes, points["backbone.3"].stride, "aux_head")
        return points

    def _linear_stage_pre_relu(self, stage_name: str, channels: int, stride: int) -> FeaturePoint | None:
        """MobileNetV2: the first ReLU after a linear-bottleneck stage is the next block's expansion ReLU6.

        Overhaul's code distils there (clovaai/overhaul-distillation@76344a8:Segmentation/modeling/backbone/
        mobilenet.py:123-149, ``get_bn_before_relu`` / ``extract_feature``: the next block's 1x1 expansion + BN,
        144 / 192 / 576 channels); after the last stage no ReLU follows, and both Overhaul and AttnFD distil the
        linear 320-channel output itself (``feat4``). Encoders of other activations (EfficientNet's SiLU) get none.
        """
        blocks = getattr(self.backbone, "blocks", None)
        if blocks is None or not stage_name.startswith("blocks."):
            return None
        index = int(stage_name.split(".")[1])
        activation = getattr(blocks[index][0].bn1, "act", None)
        if isinstance(activation, ActivationInputTap):  # tapped already, as the block after the previous stage
            activation = activation.activation
        if not isinstance(activation, (nn.ReLU, nn.ReLU6)):
            return None
        if index + 1 == len(blocks):
            return FeaturePoint(channels, stride, f"backbone.{stage_name}")
        following = blocks[index + 1][0]
        border = getattr(following.conv_pw, "input_padding", 0)
        following.bn1.act = ActivationInputTap(following.bn1.act, border)
        return FeaturePoint(following.bn1.num_features, stride, f"backbone.blocks.{index + 1}.0.bn1.act.tap")

    def _make_final_relu_capturable(self, stage_name: str) -> str | None:
        """Swap a ResNet stage's last activation for a non-in-place ReLU; return its path (None: no final ReLU)."""
        stage = self.backbone.get_submodule(stage_name)
        if not isinstance(stage, nn.Sequential) or len(stage) == 0:
            return None
        last = len(stage) - 1
        for attribute in ("act3", "act2"):  # timm Bottleneck, BasicBlock
            if isinstance(getattr(stage[last], attribute, None), nn.ReLU):
                setattr(stage[last], attribute, nn.ReLU(inplace=False))
                return f"backbone.{stage_name}.{last}.{attribute}"
        return None
