"""LFD: logit-guided feature distillation (Yu et al., Neural Networks 2026)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.registry import METHODS
from methods.base import Batch, DistillationMethod, check_logits_point, resize_to
from methods.ifvd import labels_to_feature_size
from methods.kd import pixel_kd

EPS = 1e-12


def pixel_discrepancy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-pixel KL(softmax(T/τ) ‖ softmax(S/τ)), ``[B, H, W]``, detached: where the two disagree."""
    with torch.no_grad():
        log_q = F.log_softmax(student_logits.detach().float() / temperature, dim=1)
        log_p = F.log_softmax(teacher_logits.float() / temperature, dim=1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=1).clamp_min(0)


def spatial_mask(discrepancy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The discrepancy averaged onto the feature grid and divided by its per-image mean: ``[B, 1, h, w]``, mean 1.

    EPS in numerator and denominator makes a zero discrepancy (student = teacher) a uniform mask of ones
    rather than 0/0.
    """
    pooled = F.adaptive_avg_pool2d(discrepancy.unsqueeze(1), size)
    return (pooled + EPS) / (pooled.mean(dim=(2, 3), keepdim=True) + EPS)


def class_weights(discrepancy: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """``[K]`` weights: each class's mean discrepancy over its labelled pixels, divided by the mean over present
    classes (absent classes get 1; they weigh no pixel)."""
    # scatter over all pixels with a 0/1 validity weight, not boolean indexing: no host sync in the step
    valid = (labels != ignore_index).to(discrepancy.dtype).flatten()
    index = labels.flatten().clamp(0, num_classes - 1)
    counts = discrepancy.new_zeros(num_classes).scatter_add_(0, index, valid)
    sums = discrepancy.new_zeros(num_classes).scatter_add_(0, index, discrepancy.flatten() * valid)
    present = counts > 0
    per_class = sums / counts.clamp_min(1)
    scale = (per_class * present).sum() / present.sum().clamp_min(1)
    return torch.where(present, (per_class + EPS) / (scale + EPS), torch.ones_like(per_class))


def weighted_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None,
                ignore_index: int) -> torch.Tensor:
    """Cross-entropy at label resolution, each pixel weighted by its class's weight, averaged over labelled pixels."""
    logits = resize_to(logits, labels)
    per_pixel = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    valid = labels != ignore_index
    if weights is not None:
        per_pixel = per_pixel * weights[labels.clamp(0, weights.numel() - 1)]
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1)


def pixel_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """τ² · KL(softmax(T/τ) ‖ softmax(S/τ)) summed over classes, averaged over pixels (CIRKD's CriterionKD)."""
    # float32: the log-ratio of two close distributions cancels catastrophically under bf16 autocast
    return pixel_kd(student_logits.float(), teacher_logits.float(), temperature)


class SharedAuxHead(nn.Module):
    """3x3 conv + BN + ReLU to ``mid`` channels, then a 1x1 classifier (the authors' ``SegmentHead``)."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.conv(x))


@METHODS.register("lfd")
class LFD(DistillationMethod):
    """LFD: logit-guided spatial masks on feature distillation, class-weighted shared auxiliary head, delayed logit KD.

    Yu, Lou, Zhao, Zhang, Mei, "Efficient semantic segmentation via logit-guided feature distillation",
    Neural Networks 199:108663, 2026 (DOI 10.1016/j.neunet.2026.108663). The paper's full text was not
    accessible to us and the authors' repository (github.com/fate2715/LFD) lacks its core criterion
    (``CriterionLFD``); its training script gives the facts used here: a 1x1 bias-free adapter from the
    student's feature to the teacher's width, a shared auxiliary head ``SegmentHead(C_t, 128, K)``
    (3x3 conv-BN-ReLU, 1x1 classifier), feature weight 1, auxiliary weight 0.1, the logit term on from
    iteration 1000 with weight 1 and temperature 1, the feature term divided by its own detached value.

    With a(·) the adapter, h(·) the shared head, F the ``feature_point`` maps (default ``decoder``, the
    feature before the classifier, as the script's ``outputs[-1]``), z the logits, y the labels:

    * discrepancy d_i = KL(softmax(z_t,i/τ) ‖ softmax(z_s,i/τ)) at every pixel, detached: the "logits from
      deep layers" that mark critical pixels and categories.
    * spatial mask M = avgpool(d) / mean(avgpool(d)) on the teacher feature's grid (mean 1 per image; uniform
      when the networks agree) ("fine-grained spatial masks conveyed to the feature distillation stage").
    * L_feat = mean_{b,c,h,w} M·(a(F_s) − F_t)²; returned as λ_f·L_feat / sg(L_feat) (the script's
      self-normalisation: value λ_f, gradient λ_f·∇L/L) when ``self_normalize``.
    * class mask w_k = mean_{i: y_i=k} d_i / mean over present classes ("class masks that modulate the weights
      of the auxiliary heads"); pixel i of the auxiliary cross-entropies is weighted by w_{y_i}.
    * shared auxiliary head distillation, all × λ_aux: class-weighted CE(h(a(F_s)), y) (the student's
      features must be readable by the head), class-weighted CE(h(F_t), y) (teacher features, detached, train
      the head: it is the teacher's classifier the student is held to), and τ²·KL(h(F_t) ‖ h(a(F_s))) per
      pixel with the teacher branch detached.
    * L_kl = τ²·KL(z_t ‖ z_s) per pixel, × λ_kd, from ``batch.iteration >= start_iter``; a zero term before.

    Our interpretation (what neither the abstract nor the script fixes):

    * mask source: teacher-student discrepancy (not teacher entropy), linear normalisation to mean 1 (no extra
      temperature to tune); class mask from the same discrepancy, averaged over batch pixels per labelled class.
    * "shared" = one head applied to the adapted student feature and to the teacher feature; the teacher-side
      CE is what gives the head its meaning (the script builds the head with the student's optimizer).
    * resolution: the adapted student feature is bilinearly resized to the teacher's grid when strides
      differ; aux logits are upsampled to the labels for CE (as the harness does for ``aux_ce``).
    * the script also divides its task loss (CE + 0.4·aux CE) by its detached value: ``self_normalize_task``
      (default on, the script's fact, train_lfd_v1.py:434) asks the harness to do the same through
      ``scale_task_loss``. It adds, outside the LFD criterion, CIRKD's pixel KD on the stride-8 logits divided by
      its own detached value (``kd_loss / kd_loss.detach()``, train_lfd_v1.py:413-414, 435, with
      ``--lambda-kd 1.0`` in train_lfd.sh): ``self_normalized_kd`` (default on) returns it as the term ``kd``
      (value 1, gradient ∇KD/KD, so its λ cancels) at ``kd_temperature`` (the script passes the same
      ``--kd-temperature`` to both). An option of ``lfd`` rather than a ``kd`` component because it is a fact of
      this script alone (every LFD run has it, no other row self-normalises KD), like ``self_normalize_task``.
    * ``logits_point``: ``logits:pre_upsample`` (default): the script's models return the stride-8 logits
      ``s_outputs[0]``, which its KD and ``CriterionLFD`` receive (train_lfd_v1.py:389-390, 414); the discrepancy
      masks and the KL read the same map (the class mask with the labels nearest-resized onto its grid).
      ``logits`` is the upsampled output.
    * ``start_iter`` compares with the 0-based ``batch.iteration`` (the script counts from 1 and does not say
      whether the bound is inclusive).
    """

    paper = ("Yu, Lou, Zhao, Zhang, Mei, Efficient semantic segmentation via logit-guided feature distillation, "
             "Neural Networks 199:108663, 2026; adapter, shared head, weights, start_iter and self-normalisation "
             "from github.com/fate2715/LFD train_lfd_v1.py (criterion not public)")
    terms_without_student_gradient: ClassVar[dict[str, str]] = {"aux_teacher": "cross-entropy of the shared head on the (detached) teacher "
                                                     "features: it trains the head, which the student is then held to"}

    def __init__(self, student_points, teacher_points, num_classes, *, use_feature: bool = True,
                 use_spatial_mask: bool = True, use_shared_head: bool = True, use_class_mask: bool = True,
                 use_kl: bool = True, lambda_feature: float = 1.0, lambda_aux: float = 0.1, lambda_kd: float = 1.0,
                 kd_temperature: float = 1.0, start_iter: int = 1000, self_normalize: bool = True,
                 self_normalize_task: bool = True, self_normalized_kd: bool = True,
                 aux_mid_channels: int = 128, feature_point: str = "decoder",
                 logits_point: str = "logits:pre_upsample"):
        super().__init__(student_points, teacher_points, num_classes)
        if not (use_feature or use_shared_head or use_kl or self_normalized_kd):
            raise ValueError("lfd: every component is off (use_feature, use_shared_head, use_kl, self_normalized_kd): "
                             "enable one")
        self.logits_point = check_logits_point("lfd", logits_point)
        self.self_normalized_kd = self_normalized_kd
        if use_spatial_mask and not use_feature:
            raise ValueError("lfd: use_spatial_mask weights the feature term, which use_feature=false removes; "
                             "set use_spatial_mask=false too")
        if use_class_mask and not use_shared_head:
            raise ValueError("lfd: use_class_mask weights the shared auxiliary head's losses, which "
                             "use_shared_head=false removes; set use_class_mask=false too")
        if kd_temperature <= 0:
            raise ValueError(f"lfd: kd_temperature must be > 0, got {kd_temperature}")
        for name, value in (("lambda_feature", lambda_feature), ("lambda_aux", lambda_aux), ("lambda_kd", lambda_kd),
                            ("start_iter", start_iter)):
            if value < 0:
                raise ValueError(f"lfd: {name} must be >= 0, got {value}")
        if aux_mid_channels < 1:
            raise ValueError(f"lfd: aux_mid_channels must be >= 1, got {aux_mid_channels}")
        if feature_point == "logits":
            raise ValueError("lfd: feature_point must be a feature layer, not the logits")
        self.use_feature, self.use_spatial_mask, self.use_kl = use_feature, use_spatial_mask, use_kl
        self.use_shared_head, self.use_class_mask = use_shared_head, use_class_mask
        self.lambda_feature, self.lambda_aux, self.lambda_kd = lambda_feature, lambda_aux, lambda_kd
        self.kd_temperature, self.start_iter, self.self_normalize = kd_temperature, start_iter, self_normalize
        self.self_normalize_task = self_normalize_task
        self.feature_point = feature_point

        uses_feature = use_feature or use_shared_head
        if uses_feature:
            for side, available in (("student", student_points), ("teacher", teacher_points)):
                if feature_point not in available:
                    raise ValueError(f"lfd: the {side} has no feature point {feature_point!r} "
                                     f"(it has: {', '.join(sorted(available))})")
            teacher_channels = teacher_points[feature_point].channels
            self.adapter = nn.Conv2d(student_points[feature_point].channels, teacher_channels, 1, bias=False)
        if use_shared_head:
            self.aux_head = SharedAuxHead(teacher_channels, aux_mid_channels, num_classes)
        needs_logits = use_kl or use_spatial_mask or use_class_mask or self_normalized_kd
        if needs_logits:
            for side, available in (("student", student_points), ("teacher", teacher_points)):
                if logits_point not in available:
                    raise ValueError(f"lfd: the {side} has no point {logits_point!r} (logits_point; it has: "
                                     f"{', '.join(sorted(available))})")
        self.student_points = ([feature_point] if uses_feature else []) + ([logits_point] if needs_logits else [])
        self.teacher_points = list(self.student_points)

    def adapted(self, student: torch.Tensor, size: torch.Size) -> torch.Tensor:
        aligned = self.adapter(student)
        if aligned.shape[-2:] != size:
            aligned = F.interpolate(aligned, size=size, mode="bilinear", align_corners=False)
        return aligned

    def scale_task_loss(self, task_loss: torch.Tensor, batch: Batch) -> torch.Tensor:
        if not self.self_normalize_task:
            return task_loss
        return task_loss / task_loss.detach().clamp_min(EPS)

    def forward(self, student: dict, teacher: dict, batch: Batch) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        discrepancy = None
        if self.use_spatial_mask or self.use_class_mask:
            discrepancy = pixel_discrepancy(student[self.logits_point], teacher[self.logits_point],
                                            self.kd_temperature)
        if self.use_feature or self.use_shared_head:
            feat_t = teacher[self.feature_point]
            feat_s = self.adapted(student[self.feature_point], feat_t.shape[-2:])
        if self.use_feature:
            squared = (feat_s.float() - feat_t.float()).pow(2)
            if self.use_spatial_mask:
                squared = squared * spatial_mask(discrepancy, feat_t.shape[-2:])
            loss = squared.mean()
            if self.self_normalize:
                loss = loss / loss.detach().clamp_min(EPS)
            terms["feature"] = self.lambda_feature * loss
        if self.use_shared_head:
            weights = None
            if self.use_class_mask:
                # the discrepancy lives on the logits' grid: labels nearest-resized onto it (as CIRKD's memory does)
                labels = labels_to_feature_size(batch.labels, tuple(discrepancy.shape[-2:]))
                weights = class_weights(discrepancy, labels, self.num_classes, batch.ignore_index)
            aux_s, aux_t = self.aux_head(feat_s), self.aux_head(feat_t)
            terms["aux_student"] = self.lambda_aux * weighted_ce(aux_s, batch.labels, weights, batch.ignore_index)
            terms["aux_teacher"] = self.lambda_aux * weighted_ce(aux_t, batch.labels, weights, batch.ignore_index)
            terms["aux_kd"] = self.lambda_aux * pixel_kl(aux_s, aux_t.detach(), self.kd_temperature)
        kl_active = self.use_kl and batch.iteration >= self.start_iter
        if kl_active or self.self_normalized_kd:
            # one KL for both terms that read it
            kl = pixel_kl(student[self.logits_point], teacher[self.logits_point], self.kd_temperature)
        if self.use_kl:
            terms["kl"] = self.lambda_kd * kl if kl_active else student[self.logits_point].new_zeros(())
        if self.self_normalized_kd:
            terms["kd"] = kl / kl.detach().clamp_min(EPS)
        return terms
