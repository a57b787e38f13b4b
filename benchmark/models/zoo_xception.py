"""DeepLabV3+ as in pytorch-deeplab-xception (jfzhang95), the code base of Overhaul and AttnFD.

Overhaul of Feature Distillation (Heo et al., ICCV 2019, clovaai/overhaul-distillation ``Segmentation/``) and
AttnFD (Mansourian et al., CVIU 2025, arXiv:2403.05451, AmirMansurian/AttnFD ``modeling/``) both train
DeepLabV3+ from that code base: teacher ResNet-101, students ResNet-18 and MobileNetV2, output stride 16,
513x513 VOC crops. AttnFD Table 1 (VOC, 21 classes) reports 59.3M, 16.6M and 5.9M parameters.

What we take from the code (``modeling/aspp.py``, ``decoder.py``, ``backbone/resnet.py``, ``mobilenet.py``):

* ResNets with the plain 7x7 stem (torchvision layout; their ImageNet weights are torchvision's
  ``resnet101-5d3b4d8f.pth`` / ``resnet18-5c106cde.pth``: timm ``resnet101.tv_in1k`` / ``resnet18.tv_in1k``).
* ResNet-101's last stage is a multi-grid unit (dilations 1, 2, 4 x the stage dilation); ResNet-18's is plain
  (their ``ResNet`` uses ``_make_layer`` for BasicBlock), and its first block dilates both 3x3 convolutions
  (timm's only the second: without the fix our R18 student's output differed by 17% of its largest value).
* MobileNetV2 as their ``mobilenet.py``: dilation per stage and ``fixed_padding`` of each block's input before the
  1x1 expansion (:mod:`benchmark.models.authors_encoders`).
* ASPP with 256 channels and rates (6, 12, 18) at OS16, (12, 24, 36) at OS8; dropout 0.5 after the projection.
* Decoder: low-level feature from stage 1 (256 ch for R101, 64 for R18, 24 for MobileNetV2) reduced to 48,
  then two 3x3 convs of 256 (dropouts 0.5, 0.1) and a 1x1 classifier. Heads use kaiming-normal init.
* No auxiliary head.

Choices the papers leave open, written down: MobileNetV2 weights are timm ``mobilenetv2_100.ra_in1k`` (the
code's own file is a torchvision-style checkpoint of the same architecture, not on the timm hub); the
``logits`` upsampling uses ``align_corners=True`` as the code does.
"""

from __future__ import annotations

from benchmark.models.authors_encoders import dilate_like_deeplab_xception_resnet, match_deeplab_xception_mobilenet_v2
from benchmark.models.heads import ASPP, DeepLabV3PlusDecoder
from benchmark.models.pretrained import EncoderSpec
from benchmark.models.zoo_common import ZooModel, apply_multi_grid, build_encoder, check_output_stride, kaiming_init
from benchmark.registry import MODELS

ENCODERS = {
    "r101": EncoderSpec("resnet101", hub_tag="tv_in1k"),
    "r18": EncoderSpec("resnet18", hub_tag="tv_in1k"),
    "mbv2": EncoderSpec("mobilenetv2_100", hub_tag="ra_in1k"),
}


def _deeplabv3plus(encoder: str, num_classes: int, pretrained: bool | str, output_stride: int) -> ZooModel:
    check_output_stride(output_stride)
    backbone = build_encoder(ENCODERS[encoder], output_stride, pretrained)
    if encoder == "mbv2":
        match_deeplab_xception_mobilenet_v2(backbone)
    else:
        dilate_like_deeplab_xception_resnet(backbone)
    if encoder == "r101":
        apply_multi_grid(backbone.layer4, base_dilation=32 // output_stride)
    channels = backbone.feature_info.channels()
    rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
    context = ASPP(channels[3], 256, rates, dropout=0.5)
    decoder = DeepLabV3PlusDecoder(channels[0], in_channels=256, reduced=48, channels=256)
    model = ZooModel(
        num_classes=num_classes, backbone=backbone, context=context, decoder=decoder, output_stride=output_stride
    )
    for head in (model.context, model.decoder, model.classifier):
        kaiming_init(head)
    return model


@MODELS.register("deeplabv3plus_r101")
def deeplabv3plus_r101(num_classes: int, *, pretrained: bool | str = False, output_stride: int = 16) -> ZooModel:
    """DeepLabV3+ ResNet-101, the teacher of Overhaul and AttnFD (pytorch-deeplab-xception code base).

    Paper: AttnFD (Mansourian et al., arXiv:2403.05451) Table 1, VOC (21 classes): 59.3M parameters.
    Ours at 21 classes: 59.34M.
    """
    return _deeplabv3plus("r101", num_classes, pretrained, output_stride)


@MODELS.register("deeplabv3plus_r18")
def deeplabv3plus_r18(num_classes: int, *, pretrained: bool | str = False, output_stride: int = 16) -> ZooModel:
    """DeepLabV3+ ResNet-18, student of Overhaul and AttnFD (pytorch-deeplab-xception code base).

    Paper: AttnFD (arXiv:2403.05451) Table 1, VOC (21 classes): 16.6M parameters. Ours at 21 classes: 16.61M.
    """
    return _deeplabv3plus("r18", num_classes, pretrained, output_stride)


@MODELS.register("deeplabv3plus_mbv2")
def deeplabv3plus_mbv2(num_classes: int, *, pretrained: bool | str = False, output_stride: int = 16) -> ZooModel:
    """DeepLabV3+ MobileNetV2, student of Overhaul and AttnFD (pytorch-deeplab-xception code base).

    Paper: AttnFD (arXiv:2403.05451) Table 1, VOC (21 classes): 5.9M parameters. Ours at 21 classes: 5.82M.
    """
    return _deeplabv3plus("mbv2", num_classes, pretrained, output_stride)


# The class count these models are described with when none is asked for (`python -m benchmark models`): VOC's,
# the dataset their papers count them on (AttnFD Table 1).
for _builder in (deeplabv3plus_r101, deeplabv3plus_r18, deeplabv3plus_mbv2):
    _builder.num_classes = 21
