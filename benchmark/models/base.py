"""What every model of the zoo provides: logits at input resolution and named feature points.

A feature point is declared, with its channels and stride, at construction (as smp encoders declare
``out_channels``), so a method sizes its connectors without a forward pass. The feature itself is
captured by a forward hook on the declared module (see :mod:`benchmark.models.hooks`); models are never
edited to return features.

Point names are the same across architectures:

``backbone.1`` .. ``backbone.4``  the four backbone stages (strides 4, 8, 16, 32 before dilation)
``encoder``                      the ASPP / pyramid pooling output
``decoder``                      the feature just before the classifier
``logits``                       the model's output, upsampled to the input resolution (stride 1)
``logits:pre_upsample``          the classifier's output at its own stride, before upsampling (the CIRKD code
                                 base applies KD, CWD and DIST there; the pytorch-deeplab-xception family,
                                 after upsampling)
``aux_logits``                   the auxiliary head's output at its own stride (models with an aux head)

``NAME:pre_relu`` is the feature at the first ReLU at or after point NAME, taken before that ReLU (AttnFD and
Overhaul distil these): for most points the same feature before its final ReLU, captured as the input of a
non-in-place ReLU module; for MobileNetV2's linear-bottleneck stages the next block's expansion before its ReLU6
(its own channel count), or the stage's output where no ReLU follows (see :mod:`benchmark.models.zoo_common`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

POINT_NAMES = ("backbone.1", "backbone.2", "backbone.3", "backbone.4", "encoder", "decoder", "logits")
PRE_RELU = ":pre_relu"
PRE_UPSAMPLE = ":pre_upsample"


@dataclass(frozen=True)
class FeaturePoint:
    """Where a named feature lives in a model, and its shape.

    ``module`` is the dotted path of a submodule ("" is the model itself). ``capture`` says whether the
    feature is that module's output or its first input; an ``input`` capture is how pre-ReLU features
    are taken, so that ReLU must not be in-place.
    """

    channels: int
    stride: int
    module: str
    capture: Literal["output", "input"] = "output"


class SegmentationModel(nn.Module):
    """Base class of the zoo's models.

    Subclasses build their layers, then set ``self.feature_points`` (name -> :class:`FeaturePoint`).
    ``forward(images)`` returns logits ``[B, num_classes, H, W]`` at the input's resolution.
    ``aux_weight`` > 0 means the model has an auxiliary head whose ``aux_logits`` point the harness
    trains with cross-entropy times this weight (CIRKD-family models use 0.4).
    """

    num_classes: int
    feature_points: dict[str, FeaturePoint]
    aux_weight: float = 0.0
    #: Submodules forming the head, trained at ``schedule.head_lr_mult`` x the lr; the rest is the backbone.
    head_modules: tuple[str, ...] = ()
    #: Modules the authors' distillation forward bypasses (``schedule.kd_forward: extract_feature``).
    extract_feature_skips: tuple[str, ...] = ()

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for name in self.head_modules for p in self.get_submodule(name).parameters()]

    def point(self, name: str) -> FeaturePoint:
        try:
            return self.feature_points[name]
        except KeyError:
            known = ", ".join(sorted(self.feature_points))
            raise KeyError(f"{type(self).__name__} has no feature point {name!r} (it has: {known})") from None

    def validate_points(self) -> None:
        """Check that every declared point names an existing module, and that input captures are safe."""
        modules = dict(self.named_modules())
        for name, point in self.feature_points.items():
            if point.module not in modules:
                raise ValueError(f"feature point {name!r} names missing module {point.module!r}")
            module = modules[point.module]
            if point.capture == "input" and getattr(module, "inplace", False):
                raise ValueError(f"feature point {name!r} captures the input of in-place module {point.module!r}")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def freeze(model: nn.Module) -> nn.Module:
    """Put a teacher in eval mode with no parameter requiring grad."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


@torch.no_grad()
def check_feature_shapes(model: SegmentationModel, images: torch.Tensor, features: dict[str, torch.Tensor]) -> None:
    """Assert captured features match their declared channels and stride (used by tests and `models`)."""
    height, width = images.shape[-2:]
    for name, tensor in features.items():
        point = model.point(name)
        expected = (point.channels, -(-height // point.stride), -(-width // point.stride))
        if tuple(tensor.shape[1:]) != expected:
            raise AssertionError(f"point {name!r}: got shape {tuple(tensor.shape[1:])}, declared {expected}")
