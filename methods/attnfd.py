"""AttnFD: attention-guided feature distillation (CBAM-refined feature maps, normalised MSE)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.registry import METHODS
from methods.base import Batch, DistillationMethod, PrepareContext, resize_to

NORMALIZATIONS = ("channel", "tensor")
CONNECTORS = ("conv", "conv_bn")
CONNECTOR_POSITIONS = ("after_attention", "before_attention")
TEACHER_ATTENTIONS = ("trained", "parameter_free", "untrained")
TEACHER_MODES = ("eval", "train")

#: The hyperparameters that reproduce the authors' public code (AmirMansurian/AttnFD @ b9ee23cb) instead of the
#: paper; a suite copies them to run "the code". Its encoder/decoder maps are taken after the ReLU.
CODE_PRESET: dict[str, Any] = {
    "points": ("backbone.4:pre_relu", "encoder", "decoder"),
    "normalization": "tensor",
    "connector": "conv_bn",
    "connector_position": "after_attention",
    "teacher_attention": "untrained",
    "connector_warmup_epochs": 1,
    "teacher_mode": "train",
    "alpha": 2.0,
}


def channel_normalized_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Paper (Eq. 5, "normalized along its channels"): every position's channel vector is L2-normalised, the squared
    distance between the unit vectors is summed over channels and averaged over the B·H·W positions (each in [0, 4])."""
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(teacher.float(), dim=1)
    return (s - t).pow(2).sum(dim=1).mean()


def tensor_normalized_sse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Authors' code: (1/B)·Σ(S/‖S‖ − T/‖T‖)² with ‖·‖ the Frobenius norm of the whole [B, C, H, W] tensor.

    The same expression as the reference README's ``lad`` definition; the clamp only keeps an all-zero map finite
    (the code divides by the raw norm)."""
    s, t = student.float(), teacher.float()
    s = s / s.norm().clamp_min(1e-12)
    t = t / t.norm().clamp_min(1e-12)
    return (s - t).pow(2).sum() / student.shape[0]


class CBAM(nn.Module):
    """Woo et al., ECCV 2018, as AttnFD Eqs. 1-4 use it: A' = M_C(A)·A, then A'' = M_S(A')·A'.

    M_C(A) = σ(MLP(avgpool(A)) + MLP(maxpool(A))), a shared two-layer MLP with ReLU and reduction ``ratio``; AttnFD's
    Eq. 3 prints the sigmoid around the first summand only, a typo against CBAM and the authors' code, which both put
    it around the sum. M_S(A') = σ(conv7x7([mean_c(A'); max_c(A')])). The authors' code (and CBAM's) put a BatchNorm
    after the 7×7 convolution; Eq. 4 has none and we follow Eq. 4 with a biased convolution, which keeps the module
    free of batch statistics (its output then does not depend on train/eval mode or the batch).

    ``parameter_free`` is the authors' "teacher" mode of their CBAM: identity MLP and a plain sum of the two pooled
    maps instead of the convolution, so no learnable parameter at all.
    """

    def __init__(self, channels: int, ratio: int = 16, kernel_size: int = 7, parameter_free: bool = False):
        super().__init__()
        self.parameter_free = parameter_free
        if not parameter_free:
            hidden = max(1, channels // ratio)
            # 1x1 convolutions are the shared MLP applied to [B, C, 1, 1] descriptors without reshaping.
            self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))
            self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg, peak = x.mean(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
        channel = avg + peak if self.parameter_free else self.mlp(avg) + self.mlp(peak)
        x = x * torch.sigmoid(channel)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        spatial = pooled.sum(dim=1, keepdim=True) if self.parameter_free else self.spatial(pooled)
        return x * torch.sigmoid(spatial)


def _connector(in_channels: int, out_channels: int, kind: str) -> nn.Module:
    if kind == "conv":
        # The paper adds the convolution only "for any inconsistency in the size of features".
        return nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1, bias=False)
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"attnfd: {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


@METHODS.register("attnfd")
class AttnFD(DistillationMethod):
    """AttnFD: MSE between channel-normalised, CBAM-refined feature maps of teacher and student.

    Mansourian, Jalali, Ahmadi, Kasaei, "Attention-guided Feature Distillation for Semantic Segmentation",
    arXiv:2403.05451, 2024 (v3 is formatted for Computer Vision and Image Understanding). Implemented: CBAM refinement
    Eqs. 1-4 (see :class:`CBAM`), the loss Eq. 5 summed over the distilled ``points``, and Eq. 6's weight:
    L = CE + α·Σ_points L_attn. α = 1 is the paper's Pascal VOC value (10 on Cityscapes; the code's default is 2).

    Points (Table 3): "Backbone" is ``backbone.4`` (the authors' code distils layer4, the backbone's output, through
    connector 3, although the paper calls it "low-level"), "Encoder" the ASPP output, "Decoder" the map just before
    the classifier. Section 4.2 uses pre-ReLU maps, hence the ``:pre_relu`` defaults; the code takes backbone.4
    pre-ReLU but encoder and decoder after the ReLU (see ``CODE_PRESET``). Enumerate Table 3 by overriding ``points``.

    The teacher's attention (``teacher_attention``): the paper trains the teacher "and its attention module" and
    freezes both while the student trains. The authors (AttnFD issues #2, #6) say the teacher's CBAM is trained by the
    segmentation task with its output fed into the next layer; their published code never does it (the teacher's
    CBAM is not on its forward path, so it stays at its initialisation). We cannot retrain the shared teacher, so
    ``"trained"`` (default) runs a :meth:`prepare` stage: a CBAM is inserted, by forward hooks, at each point of the
    frozen teacher (refined map fed to the next layer), and only the CBAMs are trained with cross-entropy on the
    teacher's output against the labels, for ``attention_epochs`` epochs of SGD (momentum 0.9, ``attention_lr``), the
    teacher in eval mode; then they are frozen, and a ``prepared`` buffer records it so a resumed run skips the stage.
    ``"untrained"`` is the code's literal behaviour (frozen at initialisation); ``"parameter_free"`` is the code's
    "teacher" CBAM mode (no parameters, the authors' first variant, issue #5).

    Named options where the code differs from the paper (paper's first): ``normalization`` "channel" (per-position
    unit vectors, squared distance averaged over positions) vs "tensor" (the code: the whole tensor divided by its
    norm, squared differences summed and divided by B); ``connector`` "conv" (a 1×1 conv only where channels differ)
    vs "conv_bn" (the code: 1×1 conv + BN at every point); ``connector_warmup_epochs`` 0 vs 1 (the code trains only
    the connectors in epoch 0: the distillation gradient stops at the connectors' input and ``student_frozen`` tells
    the harness to leave the student and its cross-entropy out of those steps); ``teacher_mode`` "eval" vs "train"
    (the code runs the teacher with batch-statistics BatchNorm).

    Choices the paper leaves open: the student's CBAM works on the student's channels and the connector follows it
    (the code's order; ``connector_position="before_attention"`` refines after the projection instead, which the
    paper's Fig. 2 wording "convolution and refinement" may mean); when sizes differ the student's refined map is
    resized bilinearly to the teacher's (the paper says "interpolation"); Eq. 5 prints a plain norm, we square it as
    the text ("MSE") and the code do; layers are summed, not averaged (the code); CBAM reduction ratio 16.
    """

    paper = ("Mansourian, Jalali, Ahmadi, Kasaei, Attention-guided Feature Distillation for Semantic Segmentation, "
             "arXiv:2403.05451, 2024 (Eqs. 1-6)")

    def __init__(self, student_points, teacher_points, num_classes, *, alpha: float = 1.0,
                 points: Sequence[str] = ("backbone.4:pre_relu", "encoder:pre_relu", "decoder:pre_relu"),
                 normalization: str = "channel", connector: str = "conv", connector_position: str = "after_attention",
                 reduction_ratio: int = 16, teacher_attention: str = "trained", attention_epochs: float = 1.0,
                 attention_lr: float = 0.01, connector_warmup_epochs: int = 0, teacher_mode: str = "eval"):
        super().__init__(student_points, teacher_points, num_classes)
        if isinstance(points, str) or not points:
            raise ValueError(f"attnfd: points must be a non-empty list of feature point names, got {points!r}")
        points = tuple(points)
        if len(set(points)) != len(points):
            raise ValueError(f"attnfd: points has duplicates: {points}")
        for name in points:
            for side, available in (("student", student_points), ("teacher", teacher_points)):
                if name not in available:
                    raise ValueError(f"attnfd: point {name!r} is not a {side} feature point "
                                     f"(available: {', '.join(sorted(available))})")
        if alpha < 0:
            raise ValueError(f"attnfd: alpha must be >= 0, got {alpha}")
        if reduction_ratio < 1:
            raise ValueError(f"attnfd: reduction_ratio must be >= 1, got {reduction_ratio}")
        if attention_epochs <= 0 or attention_lr <= 0:
            raise ValueError(f"attnfd: attention_epochs and attention_lr must be > 0, got {attention_epochs}, "
                             f"{attention_lr}")
        if connector_warmup_epochs < 0:
            raise ValueError(f"attnfd: connector_warmup_epochs must be >= 0, got {connector_warmup_epochs}")
        self.normalization = _choice("normalization", normalization, NORMALIZATIONS)
        self.connector_position = _choice("connector_position", connector_position, CONNECTOR_POSITIONS)
        self.teacher_attention_kind = _choice("teacher_attention", teacher_attention, TEACHER_ATTENTIONS)
        _choice("connector", connector, CONNECTORS)
        self.teacher_train_mode = _choice("teacher_mode", teacher_mode, TEACHER_MODES) == "train"
        self.alpha, self.points = alpha, points
        self.attention_epochs, self.attention_lr = attention_epochs, attention_lr
        self.connector_warmup_epochs = connector_warmup_epochs
        self.student_points = list(points)
        self.teacher_points = list(points)
        self._teacher_specs = {name: teacher_points[name] for name in points}

        student_attention, connectors, teacher_attention_modules = [], [], []
        for name in points:
            s_channels, t_channels = student_points[name].channels, teacher_points[name].channels
            refined_channels = s_channels if connector_position == "after_attention" else t_channels
            student_attention.append(CBAM(refined_channels, reduction_ratio))
            connectors.append(_connector(s_channels, t_channels, connector))
            teacher_attention_modules.append(
                CBAM(t_channels, reduction_ratio, parameter_free=teacher_attention == "parameter_free"))
        self.student_attention = nn.ModuleList(student_attention)
        self.connectors = nn.ModuleList(connectors)
        self.teacher_attention = nn.ModuleList(teacher_attention_modules)
        # Frozen as the paper freezes the teacher's side: never in the student's optimizer.
        self.teacher_attention.requires_grad_(False)
        # A buffer, so a checkpoint carries it and a resumed run does not repeat the stage.
        self.register_buffer("prepared", torch.tensor(teacher_attention != "trained"))

    # --- the teacher-side attention stage -----------------------------------------------------------------------

    def needs_prepare(self) -> bool:
        return not bool(self.prepared)

    def prepare(self, context: PrepareContext) -> None:
        """Train the teacher-side CBAMs inside the frozen teacher with cross-entropy, then freeze them."""
        teacher = context.teacher
        modules = dict(teacher.named_modules())
        handles = []
        for attention, name in zip(self.teacher_attention, self.points):
            spec = self._teacher_specs[name]
            module = modules[spec.module]
            if spec.capture == "output":
                handles.append(module.register_forward_hook(lambda m, args, out, a=attention: a(out)))
            else:
                handles.append(module.register_forward_pre_hook(
                    lambda m, args, a=attention: (a(args[0]),) + tuple(args[1:])))
        parameters = list(self.teacher_attention.parameters())
        for parameter in parameters:
            parameter.requires_grad_(True)
        optimizer = torch.optim.SGD(parameters, lr=self.attention_lr, momentum=0.9)
        was_training = teacher.training
        # Eval mode: the teacher's BatchNorm running statistics must not move while its attention trains.
        teacher.eval()
        try:
            batch = next(context.batches)
            iterations = max(1, math.ceil(self.attention_epochs * batch.iterations_per_epoch))
            for iteration in range(iterations):
                if iteration:
                    batch = next(context.batches)
                with torch.enable_grad():
                    logits = teacher(batch.images)
                    loss = F.cross_entropy(logits.float(), batch.labels, ignore_index=batch.ignore_index)
                if not torch.isfinite(loss):  # a batch with every pixel ignored
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if iteration % 50 == 0 or iteration == iterations - 1:
                    context.log(f"attnfd: teacher attention {iteration + 1}/{iterations} ce {loss.item():.4f}")
        finally:
            for handle in handles:
                handle.remove()
            teacher.train(was_training)
            for parameter in parameters:
                parameter.requires_grad_(False)
                parameter.grad = None
        self.prepared.fill_(True)

    # --- the loss ----------------------------------------------------------------------------------------------

    def refine_student(self, index: int, feature: torch.Tensor, warmup: bool = False) -> torch.Tensor:
        attention, connector = self.student_attention[index], self.connectors[index]
        if self.connector_position == "before_attention":
            return attention(connector(feature.detach() if warmup else feature))
        refined = attention(feature)
        return connector(refined.detach() if warmup else refined)

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape[-2:] != teacher.shape[-2:]:
            student = resize_to(student, teacher)
        if self.normalization == "channel":
            return channel_normalized_mse(student, teacher)
        return tensor_normalized_sse(student, teacher)

    def student_frozen(self, batch: Batch) -> bool:
        return batch.epoch < self.connector_warmup_epochs

    def forward(self, student: dict, teacher: dict, batch: Batch) -> dict[str, torch.Tensor]:
        warmup = self.student_frozen(batch)
        total = 0.0
        for index, name in enumerate(self.points):
            with torch.no_grad():
                target = self.teacher_attention[index](teacher[name])
            total = total + self.distance(self.refine_student(index, student[name], warmup), target)
        return {"attnfd": self.alpha * total}
