"""DeepLabV3 and PSPNet as in CIRKD (winycg/CIRKD), the code base most segmentation-KD papers reuse.

CIRKD (Yang et al., CVPR 2022, "Cross-Image Relational Knowledge Distillation for Semantic Segmentation") and
the papers that copy its setting (CWD, DistKD, LGAD, ...) train on Cityscapes (19 classes) with 512x1024 crops
and evaluate at full resolution. CIRKD Table 1 reports parameters: DeepLabV3-R101 61.1M, DeepLabV3-R18 13.6M,
DeepLabV3-MobileNetV2 3.2M, PSPNet-R18 12.9M (FLOPs at 1024x2048).

What we take from the code (commit 7e0d21f, ``models/deeplabv3.py``, ``pspnet.py``, ``deeplabv3_mobile.py``,
``psp_mobile.py``, ``segbase.py``):

* ResNets are gluon-cv ``resnetv1s``: deep stem of three 3x3 convs (64, 64, 128 wide), no average-pool
  downsample, dilated to output stride 8. timm builds exactly this with ``stem_type='deep', stem_width=64``
  (timm's ``resnet101s``; ``resnet18d`` would differ: 32-wide stem and avg-pool shortcuts).
* DeepLabV3 head: ASPP with rates (12, 24, 36) (hard-coded, whatever the output stride), then a 3x3 conv block
  (BN, ReLU, dropout 0.1) and a 1x1 classifier. Width 256 for ResNet-101, 128 for ResNet-18 and MobileNetV2
  (``out_channels = 128 if in_channels == 512``): that is what makes 13.6M and 3.2M, not 256 everywhere.
* PSPNet head: pyramid pooling (bins 1, 2, 3, 6; in/4 channels each), concat with the input, 3x3 conv block to
  512 (ResNet-101; ``pspnet.py:_PSPHead``) or 128 (ResNet-18, 320-channel mobile encoders), dropout 0.1, 1x1
  classifier.
* Auxiliary FCN head on stage 3 (in/4 hidden channels) for the ResNet models, loss weight 0.4; the mobile
  models (``deeplabv3_mobile.py``, ``psp_mobile.py``) have none.

ImageNet weights: CIRKD ships its own ``resnet101-imagenet.pth`` / ``resnet18-imagenet.pth`` (gluon-cv layout;
we rename the stem keys on load). On the timm hub only ResNet-101-S has matching weights
(``resnet101s.gluon_in1k``, the gluon-cv v1s weights); no hub file matches the deep-stem ResNet-18, so that
encoder needs ``pretrained: /path/to/resnet18-imagenet.pth``.
"""

from __future__ import annotations

from benchmark.models.heads import ASPP, ConvBlock, FCNHead, PyramidPooling
from benchmark.models.pretrained import EncoderSpec
from benchmark.models.zoo_common import ZooModel, build_encoder
from benchmark.registry import MODELS

AUX_WEIGHT = 0.4  # CIRKD train_baseline.py / train_kd.py: aux loss weight 0.4
ASPP_RATES = (12, 24, 36)

_CIRKD_R18_NOTE = (
    "CIRKD's ResNet-18 is a deep-stem (64/64/128) resnet18_v1s whose ImageNet file (resnet18-imagenet.pth from "
    "the CIRKD README) is not on the timm hub."
)
ENCODERS = {
    "r101": EncoderSpec("resnet101s", hub_tag="gluon_in1k"),
    "r18": EncoderSpec("resnet18", {"stem_type": "deep", "stem_width": 64}, hub_note=_CIRKD_R18_NOTE),
    "mbv2": EncoderSpec("mobilenetv2_100", hub_tag="ra_in1k"),
    "effb0": EncoderSpec("efficientnet_b0", hub_tag="ra_in1k"),
}
HEAD_WIDTH = {"r101": 256, "r18": 128, "mbv2": 128, "effb0": 128}
# models/pspnet.py:_PSPHead: 512 after a 2048-channel stage, 128 after 512 (deeplabv3.py: 256 and 128).
PSP_WIDTH = {**HEAD_WIDTH, "r101": 512}


def _deeplabv3(encoder: str, num_classes: int, pretrained: bool | str, output_stride: int) -> ZooModel:
    backbone = build_encoder(ENCODERS[encoder], output_stride, pretrained)
    channels, width = backbone.feature_info.channels(), HEAD_WIDTH[encoder]
    aux = FCNHead(channels[2], num_classes) if encoder.startswith("r") else None
    return ZooModel(
        num_classes=num_classes,
        backbone=backbone,
        context=ASPP(channels[3], width, ASPP_RATES),
        decoder=ConvBlock(width, width),
        aux_head=aux,
        aux_weight=AUX_WEIGHT,
        output_stride=output_stride,
    )


def _pspnet(encoder: str, num_classes: int, pretrained: bool | str, output_stride: int) -> ZooModel:
    backbone = build_encoder(ENCODERS[encoder], output_stride, pretrained)
    channels, width = backbone.feature_info.channels(), PSP_WIDTH[encoder]
    context = PyramidPooling(channels[3])
    aux = FCNHead(channels[2], num_classes) if encoder.startswith("r") else None
    return ZooModel(
        num_classes=num_classes,
        backbone=backbone,
        context=context,
        decoder=ConvBlock(context.out_channels, width),
        aux_head=aux,
        aux_weight=AUX_WEIGHT,
        output_stride=output_stride,
    )


@MODELS.register("deeplabv3_r101")
def deeplabv3_r101(num_classes: int, *, pretrained: bool | str = False, output_stride: int = 8) -> ZooModel:
    """DeepLabV3 ResNet-101 (v1s, OS8, aux head): the teacher of CIRKD and the CIRKD-family papers.

    Paper: CIRKD (Yang et al., CVPR 2022) Table 1, Cityscapes (19 classes): 61.1M parameters. Ours: 61.12M
    (aux head included, as CIRKD counts it).
    """
    return _deeplabv3("r101", num_classes, pretrained, output_stride)


@MODELS.register("deeplabv3_r18")
def deeplabv3_r18(num_classes: int, *, pretrained: bool | str = False, output_stride: int = 8) -> ZooModel:
    """DeepLabV3 ResNet-18 (v1s, OS8, 128-wide head, aux head): CIRKD student.

    Paper: CIRKD (CVPR 2022) Table 1, Cityscapes (19 classes): 13.6M parameters. Ours: 13.61M.
    """
    return _deeplabv3("r18", num_classes, pretrained, output_stride)


@MODELS.register("deeplabv3_mbv2")
def deeplabv3_mbv2(num_classes: int, *, pretrained: bool | str = False, output_stride: int = 8) -> ZooModel:
    """DeepLabV3 MobileNetV2 (OS8, 128-wide head, no aux head): CIRKD student (``deeplabv3_mobile.py``).

    Paper: CIRKD (CVPR 2022) Table 1, Cityscapes (19 classes): 3.2M parameters. Ours: 3.23M.
    """
    return _deeplabv3("mbv2", num_classes, pretrained, output_stride)


@MODELS.register("pspnet_r101")
def pspnet_r101(num_classes: int, *, pretrained: bool | str = False, output_stride: int = 8) -> ZooModel:
    """PSPNet ResNet-101 (v1s, OS8, 512-wide block, aux head), as CIRKD ``models/pspnet.py`` builds it.

    The teacher of PSPNet-student tables (LGAD). No paper we follow states its parameter count (CIRKD's teacher
    is DeepLabV3); ours at 19 classes: 68.07M (aux head included), tensor for tensor CIRKD@2d8ad0f's ``psp_resnet101``.
    """
    return _pspnet("r101", num_classes, pretrained, output_stride)


@MODELS.register("pspnet_r18")
def pspnet_r18(num_classes: int, *, pretrained: bool | str = False, output_stride: int = 8) -> ZooModel:
    """PSPNet ResNet-18 (v1s, OS8, 128-wide block, aux head): CIRKD and LGAD student.

    Paper: CIRKD (CVPR 2022) Table 1, Cityscapes (19 classes): 12.9M parameters. Ours: 12.92M.
    """
    return _pspnet("r18", num_classes, pretrained, output_stride)


@MODELS.register("pspnet_effb0")
@MODELS.register("pspnet_b0")
def pspnet_effb0(num_classes: int, *, pretrained: bool | str = False, output_stride: int = 8) -> ZooModel:
    """PSPNet with an EfficientNet-B0 encoder: our reading of LGAD's "PSPNet-B0" (``pspnet_b0`` is an alias).

    LGAD (Local and Global Attention Distillation, Shaoxing Univ. / Central South Univ.) names its second
    student "PSPNet-B0" without, in the material we could reach, spelling out the encoder. We read B0 as
    EfficientNet-B0, not MiT-B0, because: the student is a PSPNet in the CIRKD lineage, whose pyramid pooling
    sits on a dilated CNN stage (a MiT-B0 encoder is paired with SegFormer's all-MLP head, and is named
    "SegFormer-B0" in every KD paper that uses it); LGAD's baselines (SKDS, IFVD, CWD, APD) are all CNN
    distillers evaluated on CNN students; and "PSPNet-B0" is the naming used for an EfficientNet-B0 PSPNet
    elsewhere. Head choices the paper leaves open follow CIRKD ``psp_mobile.py`` for a 320-channel last stage:
    OS8, pyramid pooling to 80 channels per bin, 128-wide block, no aux head. No paper states its parameter
    count; ours at 19 classes: 4.44M.
    """
    return _pspnet("effb0", num_classes, pretrained, output_stride)


# The class count these models are described with when none is asked for (`python -m benchmark models`):
# Cityscapes', the dataset CIRKD's Table 1 counts them on.
for _builder in (deeplabv3_r101, deeplabv3_r18, deeplabv3_mbv2, pspnet_r101, pspnet_r18, pspnet_effb0):
    _builder.num_classes = 19
