"""A Comprehensive Overhaul of Feature Distillation (Heo et al., ICCV 2019): margin ReLU + partial L2."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from benchmark.models.base import FeaturePoint
from benchmark.registry import METHODS
from methods.base import (
    Batch,
    ConnectorWarmup,
    DistillationMethod,
    PrepareContext,
    feature_connector,
    resize_to,
    teacher_train_mode_flag,
)


def margin_from_bn(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-channel margin m_c = E[x | x < 0] for x ~ N(β_c, γ_c²), the teacher's pre-ReLU BN output model.

    σ = |γ_c|, μ = β_c; if Φ(−μ/σ) > 0.001: m = μ − σ φ(μ/σ) / Φ(−μ/σ), else m = −3σ (Overhaul, section 3.2).
    Computed in float64, returned in float32 as the reference code stores it. A channel with σ = 0 is a
    constant μ: its margin is min(μ, 0) (the conditional mean is undefined; this keeps the loss finite).
    """
    sigma = weight.detach().double().abs()
    mu = bias.detach().double()
    safe = sigma.clamp_min(1e-12)
    cdf = 0.5 * torch.erfc((mu / safe) / math.sqrt(2.0))  # Φ(−μ/σ)
    pdf = torch.exp(-0.5 * (mu / safe) ** 2) / math.sqrt(2.0 * math.pi)  # φ(μ/σ)
    margin = torch.where(cdf > 0.001, mu - safe * pdf / cdf.clamp_min(1e-300), -3.0 * sigma)
    margin = torch.where(sigma > 0, margin, mu.clamp(max=0.0))
    return margin.float()


def partial_l2(student: torch.Tensor, teacher: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Overhaul Eq. (3)-(5): t̃ = max(T, m_c); Σ (S − t̃)² over elements where S > t̃ or t̃ > 0 (raw sum).

    Equivalent to the reference code's three-term mask because every margin is negative.
    """
    target = torch.maximum(teacher, margin.to(teacher.dtype).view(1, -1, 1, 1))
    mask = (student > target) | (target > 0)
    return ((student - target).pow(2) * mask).sum()


DEFAULT_POINTS = ("backbone.1:pre_relu", "backbone.2:pre_relu", "backbone.3:pre_relu", "backbone.4:pre_relu",
                  "encoder:pre_relu", "decoder:pre_relu")


@METHODS.register("overhaul")
class Overhaul(ConnectorWarmup, DistillationMethod):
    """Overhaul of feature distillation: pre-ReLU features, margin ReLU teacher transform, partial L2.

    Heo, Kim, Yun, Park, Kwak, Choi, "A Comprehensive Overhaul of Feature Distillation", ICCV 2019.
    Implemented: teacher transform σ_m(T) = max(T, m) (Eq. 3) with the per-channel margin m_c = E[x | x < 0]
    of the teacher's pre-ReLU BN output (Eq. 4, section 3.2); student transform r(S) = connector (1x1 conv
    + BN, Fig. 2); partial L2 d_p (Eq. 5): no loss where S ≤ t̃ ≤ 0. Loss (Eq. 6) as the authors'
    segmentation code weighs it: α · (1/B) · Σ_i d_p(r_i(S_i), σ_m(T_i)) / loss_divider_i.

    Open choices and reasons:
    - Points: both networks' pre-ReLU features of the four backbone stages, the ASPP output and the decoder
      feature (the authors' DeepLabV3+ code distils these six, with ``loss_divider`` = 8, 4, 2, 1, 1, 16,
      and α = 1e-5 of the summed loss per image).
    - Margin (``margin_source``): ``teacher_bn`` (default, the paper's and code's) reads the teacher's BN
      before each point lazily in :meth:`prepare` (the method only receives feature points at construction):
      one teacher forward records the order in which BatchNorm modules run; the BN of a point is the last
      affine BN with the point's channel count that ran before the point was captured, skipping shortcut
      (``downsample``) BNs, i.e. bn2/bn3 of the last residual block of a stage, the ASPP projection BN, the
      decoder's last BN, exactly the ``get_bn_before_relu`` of the authors' code. ``teacher_features``
      instead takes m_c as the empirical mean of the negative values of channel c over one batch of teacher
      features (the same quantity without the Gaussian assumption; for teachers whose pre-ReLU point is not
      fed by a BN). Margins live in buffers, so a resumed run does not recompute them.
    - Spatial sizes: the connector output is bilinearly resized to the teacher's size when strides differ
      (the DeepLabV3+ pairs of the paper have equal strides, so this never triggers there).

    Named options for what the authors' segmentation code does and the paper does not say
    (clovaai/overhaul-distillation@76344a8 Segmentation/train_with_distillation.py); the defaults keep the
    plain reading, the paper suites set the code's values:
    - ``teacher_mode``: "eval" vs "train" (line 104: ``t_net.train()``, batch-statistics BatchNorm in the
      teacher; the margins come from BN parameters, which train mode does not change).
    - ``connector_warmup_epochs``: 0 vs 1: epoch 0 steps ``init_optimizer``, which holds only the connectors
      (lines 62, 67-68, 109-112): the distillation gradient stops at the connectors' input and the student
      and its cross-entropy are left out (``student_frozen``). ``warmup_lr_mult``: their lr then, relative to
      the base lr: the one-group optimizer runs at the base lr (utils/lr_scheduler.py:63-65), 1; from epoch 1
      the connectors are in the main optimizer at 10x (line 60, ``schedule.method_lr_mult``). The code's
      second optimizer starts its momentum afresh; ours carries the warm-up momentum over (not expressible).
    """

    paper = ("Heo et al., A Comprehensive Overhaul of Feature Distillation, ICCV 2019 "
             "(Eq. 3-6: margin ReLU, pre-ReLU points, partial L2)")
    reference_names = ("overhaul",)
    hyperparameters_without_effect: ClassVar[dict[str, str]] = ConnectorWarmup.WARMUP_LR_MULT_WITHOUT_EFFECT

    def __init__(self, student_points: dict[str, FeaturePoint], teacher_points: dict[str, FeaturePoint],
                 num_classes: int, *, alpha: float = 1e-5, points: tuple[str, ...] = DEFAULT_POINTS,
                 loss_divider: tuple[float, ...] = (8.0, 4.0, 2.0, 1.0, 1.0, 16.0),
                 margin_source: str = "teacher_bn", teacher_mode: str = "eval", connector_warmup_epochs: int = 0,
                 warmup_lr_mult: float = 1.0):
        super().__init__(student_points, teacher_points, num_classes)
        if connector_warmup_epochs < 0 or warmup_lr_mult <= 0:
            raise ValueError(f"overhaul: connector_warmup_epochs must be >= 0 and warmup_lr_mult > 0, got "
                             f"{connector_warmup_epochs}, {warmup_lr_mult}")
        self.teacher_train_mode = teacher_train_mode_flag("overhaul", teacher_mode)
        self.connector_warmup_epochs, self.warmup_lr_mult = connector_warmup_epochs, warmup_lr_mult
        points, loss_divider = tuple(points), tuple(float(d) for d in loss_divider)
        if len(points) != len(loss_divider):
            raise ValueError(f"overhaul: {len(points)} points but {len(loss_divider)} loss_divider values")
        if margin_source not in ("teacher_bn", "teacher_features"):
            raise ValueError(f"overhaul: margin_source must be 'teacher_bn' or 'teacher_features', got {margin_source!r}")
        self.alpha, self.points, self.loss_divider, self.margin_source = alpha, points, loss_divider, margin_source
        self._teacher_specs = {name: teacher_points[name] for name in points}
        self.connectors = nn.ModuleList(
            feature_connector(student_points[name].channels, teacher_points[name].channels) for name in points
        )
        for index, name in enumerate(points):
            self.register_buffer(f"margin_{index}", torch.zeros(teacher_points[name].channels))
        self.register_buffer("margins_ready", torch.tensor(False))
        # The buffer lives on the device: reading it is a host sync, so a step reads it only until it was True once.
        self._margins_seen_ready = False
        self.student_points = list(points)
        self.teacher_points = list(points)

    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin_{index}") for index in range(len(self.points))]

    def needs_prepare(self) -> bool:
        return not bool(self.margins_ready)

    @torch.no_grad()
    def prepare(self, context: PrepareContext) -> None:
        batch = next(context.batches)
        if self.margin_source == "teacher_bn":
            bns = bns_before_points(context.teacher, self._teacher_specs, batch.images)
            values = [margin_from_bn(bns[name].weight, bns[name].bias) for name in self.points]
        else:
            features = context.teacher_features(batch.images)
            values = [negative_mean(features[name]) for name in self.points]
        for buffer, value in zip(self.margins(), values):
            buffer.copy_(value.to(buffer.device))
        self.margins_ready.fill_(True)
        context.log(f"overhaul: margins from {self.margin_source} for {', '.join(self.points)}")

    def forward(self, student: dict, teacher: dict, batch: Batch) -> dict[str, torch.Tensor]:
        if not self._margins_seen_ready:
            if not bool(self.margins_ready):
                raise RuntimeError("overhaul: margins not computed; the harness must call prepare() first")
            self._margins_seen_ready = True
        warmup = self.student_frozen(batch)
        total = 0.0
        for index, (name, margin) in enumerate(zip(self.points, self.margins())):
            feature = student[name].detach() if warmup else student[name]
            mapped = resize_to(self.connectors[index](feature), teacher[name])
            total = total + partial_l2(mapped, teacher[name], margin) / self.loss_divider[index]
        return {"overhaul": self.alpha * total / student[self.points[0]].shape[0]}

    @classmethod
    def reference_loss(cls, case_method: str, inputs: dict[str, torch.Tensor], params: dict[str, Any]) -> dict:
        source = params.get("margin_source", "given")
        if source == "given":
            margin = inputs["margin"]
            out = {}
        elif source == "teacher_bn":
            margin = margin_from_bn(inputs["teacher_bn_weight"], inputs["teacher_bn_bias"])
            out = {"margin": margin}
        else:
            raise ValueError(f"overhaul: unknown margin_source {source!r}")
        out["loss"] = partial_l2(inputs["student_feat"], inputs["teacher_feat"], margin.to(inputs["teacher_feat"].dtype))
        return out


def negative_mean(features: torch.Tensor) -> torch.Tensor:
    """Per-channel mean of the negative values of ``features`` [B, C, H, W] (0 for a channel with none)."""
    x = features.detach().double().transpose(0, 1).reshape(features.shape[1], -1)
    negative = x.clamp(max=0.0)
    count = (x < 0).sum(dim=1)
    return (negative.sum(dim=1) / count.clamp_min(1)).float()


def bns_before_points(teacher: nn.Module, points: dict[str, FeaturePoint], images: torch.Tensor) -> dict:
    """For each point, the BatchNorm whose output feeds it: the last affine BN (not a shortcut BN) with the
    point's channel count that ran before the point was captured, found by one hooked teacher forward."""
    modules = dict(teacher.named_modules())
    order: list[str] = []
    seen_at: dict[str, int] = {}
    handles = []
    for name, module in modules.items():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_hook(lambda m, i, o, name=name: order.append(name)))
    for point_name, point in points.items():
        module = modules[point.module]

        def mark(*_args, point_name=point_name):
            seen_at.setdefault(point_name, len(order))

        if point.capture == "input":
            handles.append(module.register_forward_pre_hook(lambda m, i, mark=mark: mark()))
        else:
            handles.append(module.register_forward_hook(lambda m, i, o, mark=mark: mark()))
    try:
        teacher(images)
    finally:
        for handle in handles:
            handle.remove()
    found = {}
    for point_name, point in points.items():
        if point_name not in seen_at:
            raise ValueError(f"overhaul: teacher point {point_name!r} ({point.module}) did not run in a forward")
        candidates = [
            name for name in order[: seen_at[point_name]]
            if modules[name].num_features == point.channels and modules[name].affine
            and "downsample" not in name.split(".") and "shortcut" not in name.split(".")
        ]
        if not candidates:
            raise ValueError(f"overhaul: no BatchNorm with {point.channels} channels runs before teacher point "
                             f"{point_name!r}; use margin_source='teacher_features'")
        found[point_name] = modules[candidates[-1]]
    return found
