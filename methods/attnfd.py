"""AttnFD: attention-guided feature distillation (CBAM-refined feature maps, normalised MSE)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.registry import METHODS
from methods.base import (
    Batch,
    ConnectorWarmup,
    DistillationMethod,
    PrepareContext,
    feature_connector,
    frozen_forward,
    resize_to,
    teacher_train_mode_flag,
)

NORMALIZATIONS = ("channel", "tensor")
CONNECTORS = ("conv", "conv_bn")
CONNECTOR_POSITIONS = ("after_attention", "before_attention")
TEACHER_ATTENTIONS = ("trained", "parameter_free", "untrained")
CBAM_LAYOUTS = ("paper", "code")
STUDENT_MLPS = ("trained", "frozen")
CONNECTOR_TRAININGS = ("always", "warmup_only")

#: The hyperparameters of the program that produced the paper's numbers (AmirMansurian/AttnFD@f090bbe, every fact
#: sourced in :class:`AttnFD` and docs/method_protocols.md); the AttnFD suites' ``AttnFD`` rows are exactly these
#: (a test holds them to it), with the table's ``points`` subset in Table 3. alpha 2 is train_kd.py's default and the
#: README command's ``--attn_lambda 2``.
CODE_PRESET: dict[str, Any] = {
    "alpha": 2.0,
    "points": ("backbone.4:pre_relu", "encoder", "decoder"),
    "normalization": "tensor",
    "connector": "conv_bn",
    "connector_position": "after_attention",
    "cbam_layout": "code",
    "student_attention_mlp": "frozen",
    "teacher_attention": "untrained",
    "connector_warmup_epochs": 1,
    "connector_training": "warmup_only",
    "warmup_lr_mult": 1.0,
    "teacher_mode": "train",
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
    it around the sum. The MLP is written with 1x1 convolutions on [B, C, 1, 1] descriptors: the same function and
    the same default initialisation as the code's ``nn.Linear`` on flattened ones (AttnFD@f090bbe cbam.py:32-37).

    The spatial gate M_S by ``layout``: ``"paper"`` (Eq. 4) σ(conv7x7([mean_c(A'); max_c(A')])) with a biased
    convolution and no normalisation; ``"code"`` (AttnFD@f090bbe cbam.py:6-20, 75-93) pools in the order
    [max_c; mean_c], convolves without bias and batch-normalises (eps 1e-5, momentum 0.01) before the sigmoid: in
    train mode the gate then sees batch statistics, which also makes the convolution's initial scale irrelevant.

    ``parameter_free`` is the authors' "teacher" mode of their CBAM (cbam.py:39, 65-66, 90-91): identity MLP and a
    plain sum of the two pooled maps instead of the convolution, so no learnable parameter at all.
    """

    def __init__(self, channels: int, ratio: int = 16, kernel_size: int = 7, parameter_free: bool = False,
                 layout: str = "paper"):
        super().__init__()
        self.parameter_free, self.layout = parameter_free, layout
        if not parameter_free:
            hidden = max(1, channels // ratio)
            self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))
            self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=layout == "paper")
            if layout == "code":
                # ASPP / decoder _init_weight (aspp.py:118, decoder.py:74) reach the gate's conv: kaiming normal.
                nn.init.kaiming_normal_(self.spatial.weight)
                self.spatial_bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg, peak = x.mean(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
        channel = avg + peak if self.parameter_free else self.mlp(avg) + self.mlp(peak)
        x = x * torch.sigmoid(channel)
        mean_c, max_c = x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
        pooled = torch.cat([max_c, mean_c] if self.layout == "code" else [mean_c, max_c], dim=1)
        if self.parameter_free:
            spatial = pooled.sum(dim=1, keepdim=True)
        else:
            spatial = self.spatial(pooled)
            if self.layout == "code":
                spatial = self.spatial_bn(spatial)
        return x * torch.sigmoid(spatial)


def _connector(in_channels: int, out_channels: int, kind: str) -> nn.Module:
    if kind == "conv":
        # The paper adds the convolution only "for any inconsistency in the size of features".
        return nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1, bias=False)
    # The code's build_feature_connector (distiller.py:10-22): 1x1 conv + BN at every point, Overhaul's init.
    return feature_connector(in_channels, out_channels)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"attnfd: {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


@METHODS.register("attnfd")
class AttnFD(ConnectorWarmup, DistillationMethod):
    """AttnFD: MSE between channel-normalised, CBAM-refined feature maps of teacher and student.

    Mansourian, Jalali, Ahmadi, Kasaei, "Attention-guided Feature Distillation for Semantic Segmentation",
    arXiv:2403.05451, 2024 (v3 is formatted for Computer Vision and Image Understanding). Implemented: CBAM refinement
    Eqs. 1-4 (see :class:`CBAM`), the loss Eq. 5 summed over the distilled ``points``, and Eq. 6's weight:
    L = CE + α·Σ_points L_attn. α = 1 is the paper's Pascal VOC value (10 on Cityscapes; the code's is 2).

    Points (Table 3): "Backbone" is ``backbone.4`` (the authors' code distils layer4, the backbone's output, through
    connector 3, although the paper calls it "low-level"), "Encoder" the ASPP output, "Decoder" the map just before
    the classifier. Section 4.2 uses pre-ReLU maps, hence the ``:pre_relu`` defaults; the code takes backbone.4
    pre-ReLU (resnet.py:207-208) but encoder and decoder after the ReLU (aspp.py:107-109, decoder.py:64-66).

    Every difference between the paper and the program that produced its numbers (AmirMansurian/AttnFD@f090bbe) is
    a named option, the paper's reading the default; ``CODE_PRESET`` is the program, and the AttnFD suites run it as
    their ``AttnFD`` row (the paper's reading is a second row labelled so):

    - ``normalization``: "channel" (Eq. 5, per-position unit vectors, squared distance averaged over positions) vs
      "tensor" (distiller.py:49: the whole tensor divided by its Frobenius norm, squared differences summed, / B).
    - ``cbam_layout``: "paper" (Eq. 4) vs "code" (cbam.py: BN in the spatial gate, [max; mean] pooling), for the
      student's CBAMs and the teacher's.
    - ``student_attention_mlp``: "trained" vs "frozen": the code's optimizer takes only Conv2d and BatchNorm
      parameters of the student (deeplab.py:47-65), so the CBAM MLPs (``nn.Linear``, cbam.py:32-37) keep their
      initialisation; the spatial gates (conv + BN) do train, from epoch 1 with the student.
    - ``teacher_attention``: "trained" (default) runs a :meth:`prepare` stage: the paper trains the teacher "and its
      attention module" and freezes both while the student trains; the authors (AttnFD issues #2, #6) say the
      teacher's CBAM is trained by the segmentation task with its output fed into the next layer. We cannot retrain
      the shared teacher, so a CBAM is inserted, by forward hooks, at each point of the frozen teacher (refined map
      fed to the next layer), and only the CBAMs are trained with cross-entropy on the teacher's output against the
      labels, for ``attention_epochs`` epochs of SGD (momentum 0.9, ``attention_lr``), the teacher in eval mode; then
      they are frozen, and a ``prepared`` buffer records it so a resumed run skips the stage. "untrained" is the
      code: the teacher's CBAMs (aspp.py:67, decoder.py:34, resnet.py:113-115) are not on the forward path of the
      training that produced the teacher (deeplab.py:32-38), so the checkpoint holds their initialisation, and
      train_kd.py never trains them (the teacher is in no optimizer, train_kd.py:56-66): random, frozen CBAMs whose
      spatial-gate BN normalises with batch statistics. "parameter_free" is the code's "teacher" CBAM mode (no
      parameters, the authors' first variant, issue #5, and AICSD's).
    - ``connector``: "conv" (a 1×1 conv only where channels differ) vs "conv_bn" (distiller.py:10-22, 32: 1×1 conv
      + BN at every point, Overhaul's initialisation).
    - ``connector_warmup_epochs`` 0 vs 1: the code's epoch 0 uses a second optimizer holding only the connectors
      (train_kd.py:60, 65-66, 107-110): the distillation gradient stops at the connectors' input and
      ``student_frozen`` tells the harness to leave the student and its cross-entropy out of those steps.
      ``warmup_lr_mult``: their lr in those epochs relative to the schedule's base lr (the code's one-group
      optimizer runs at the base lr, utils/lr_scheduler.py:63-65: 1).
    - ``connector_training``: "always" vs "warmup_only": after epoch 0 the connectors are in no optimizer
      (train_kd.py:56-58): they keep their warm-up weights (BN still normalising with batch statistics) while the
      gradient flows through them to the student.
    - ``teacher_mode``: "eval" vs "train" (train_kd.py:102: batch-statistics BatchNorm in the teacher).

    Choices the paper leaves open: the student's CBAM works on the student's channels and the connector follows it
    (the code's order, distiller.py:48; ``connector_position="before_attention"`` refines after the projection
    instead, which the paper's Fig. 2 wording "convolution and refinement" may mean); when sizes differ the
    student's refined map is resized bilinearly to the teacher's (the paper says "interpolation"); Eq. 5 prints a
    plain norm, we square it as the text ("MSE") and the code do; layers are summed, not averaged (distiller.py:45-51);
    CBAM reduction ratio 16.
    Not expressible: the code trains the student's backbone-point spatial gate at the backbone lr and its ASPP and
    decoder gates at 10x (get_1x/get_10x_lr_params); here all method modules share ``schedule.method_lr_mult``.
    """

    paper = ("Mansourian, Jalali, Ahmadi, Kasaei, Attention-guided Feature Distillation for Semantic Segmentation, "
             "arXiv:2403.05451, 2024 (Eqs. 1-6); CODE_PRESET = AmirMansurian/AttnFD@f090bbe")
    hyperparameters_without_effect: ClassVar[dict[str, str]] = ConnectorWarmup.WARMUP_LR_MULT_WITHOUT_EFFECT

    def __init__(self, student_points, teacher_points, num_classes, *, alpha: float = 1.0,
                 points: Sequence[str] = ("backbone.4:pre_relu", "encoder:pre_relu", "decoder:pre_relu"),
                 normalization: str = "channel", connector: str = "conv", connector_position: str = "after_attention",
                 cbam_layout: str = "paper", student_attention_mlp: str = "trained", reduction_ratio: int = 16,
                 teacher_attention: str = "trained", attention_epochs: float = 1.0, attention_lr: float = 0.01,
                 connector_warmup_epochs: int = 0, connector_training: str = "always", warmup_lr_mult: float = 1.0,
                 teacher_mode: str = "eval"):
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
        if warmup_lr_mult <= 0:
            raise ValueError(f"attnfd: warmup_lr_mult must be > 0, got {warmup_lr_mult}")
        self.normalization = _choice("normalization", normalization, NORMALIZATIONS)
        self.connector_position = _choice("connector_position", connector_position, CONNECTOR_POSITIONS)
        self.teacher_attention_kind = _choice("teacher_attention", teacher_attention, TEACHER_ATTENTIONS)
        self.connector_training = _choice("connector_training", connector_training, CONNECTOR_TRAININGS)
        _choice("connector", connector, CONNECTORS)
        _choice("cbam_layout", cbam_layout, CBAM_LAYOUTS)
        _choice("student_attention_mlp", student_attention_mlp, STUDENT_MLPS)
        if connector_training == "warmup_only" and connector_warmup_epochs == 0:
            raise ValueError("attnfd: connector_training 'warmup_only' needs connector_warmup_epochs >= 1 "
                             "(the connectors would never train)")
        self.teacher_train_mode = teacher_train_mode_flag("attnfd", teacher_mode)
        self.alpha, self.points = alpha, points
        self.attention_epochs, self.attention_lr = attention_epochs, attention_lr
        self.connector_warmup_epochs, self.warmup_lr_mult = connector_warmup_epochs, warmup_lr_mult
        self.student_points = list(points)
        self.teacher_points = list(points)
        self._teacher_specs = {name: teacher_points[name] for name in points}

        student_attention, connectors, teacher_attention_modules = [], [], []
        for name in points:
            s_channels, t_channels = student_points[name].channels, teacher_points[name].channels
            refined_channels = s_channels if connector_position == "after_attention" else t_channels
            student_attention.append(CBAM(refined_channels, reduction_ratio, layout=cbam_layout))
            connectors.append(_connector(s_channels, t_channels, connector))
            teacher_attention_modules.append(CBAM(t_channels, reduction_ratio, layout=cbam_layout,
                                                  parameter_free=teacher_attention == "parameter_free"))
        self.student_attention = nn.ModuleList(student_attention)
        self.connectors = nn.ModuleList(connectors)
        self.teacher_attention = nn.ModuleList(teacher_attention_modules)
        if student_attention_mlp == "frozen":
            for attention in self.student_attention:
                attention.mlp.requires_grad_(False)
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

    def project(self, index: int, x: torch.Tensor, epoch: int) -> torch.Tensor:
        """The connector; in the warm-up epochs it alone learns (its input detached), after them it stays fixed
        where ``connector_training`` is "warmup_only"."""
        connector = self.connectors[index]
        if epoch < self.connector_warmup_epochs:
            return connector(x.detach())
        if self.connector_training == "warmup_only":
            return frozen_forward(connector, x)
        return connector(x)

    def refine_student(self, index: int, feature: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        attention = self.student_attention[index]
        if self.connector_position == "before_attention":
            return attention(self.project(index, feature, epoch))
        return self.project(index, attention(feature), epoch)

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape[-2:] != teacher.shape[-2:]:
            student = resize_to(student, teacher)
        if self.normalization == "channel":
            return channel_normalized_mse(student, teacher)
        return tensor_normalized_sse(student, teacher)

    def forward(self, student: dict, teacher: dict, batch: Batch) -> dict[str, torch.Tensor]:
        total = 0.0
        for index, name in enumerate(self.points):
            with torch.no_grad():
                target = self.teacher_attention[index](teacher[name])
            total = total + self.distance(self.refine_student(index, student[name], batch.epoch), target)
        return {"attnfd": self.alpha * total}
