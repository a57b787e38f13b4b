"""One distillation step's computation, shared by the training loop and the method contract tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models.base import SegmentationModel
from benchmark.models.hooks import FeatureCapture
from methods.base import Batch


def teacher_features(teacher: SegmentationModel, capture: FeatureCapture, images: torch.Tensor) -> dict:
    """The teacher's one forward of the step, under ``inference_mode`` (no autograd bookkeeping at all).

    Inference tensors cannot be saved for the student's backward (a loss like ``(s - t)**2`` saves
    ``t``), so the captured points are cloned once outside inference mode: a copy of the few maps the
    method asked for, far cheaper than the forward that autograd no longer records.
    """
    with torch.inference_mode():
        teacher(images)
        features = capture.pop()
    return {name: tensor.clone() for name, tensor in features.items()}


def student_capture(student: SegmentationModel, method: nn.Module) -> FeatureCapture:
    """Hooks for the points the method asks for, plus the auxiliary head's logits when the model trains one."""
    points = set(method.student_points)
    if student.aux_weight > 0:
        points.add("aux_logits")
    return FeatureCapture(student, points)


def student_forward(student: SegmentationModel, capture: FeatureCapture, images: torch.Tensor):
    """The student's forward with grad; returns (logits, captured points)."""
    logits = student(images)
    return logits, capture.pop()


def segmentation_loss(
    student: SegmentationModel, logits: torch.Tensor, features: dict, labels: torch.Tensor, ignore_index: int
) -> dict[str, torch.Tensor]:
    """Cross-entropy on the main logits, plus the auxiliary head's where the model has one."""
    terms = {"ce": F.cross_entropy(logits, labels, ignore_index=ignore_index)}
    if student.aux_weight > 0 and "aux_logits" in features:
        aux = F.interpolate(features["aux_logits"], size=labels.shape[-2:], mode="bilinear", align_corners=False)
        terms["aux_ce"] = student.aux_weight * F.cross_entropy(aux, labels, ignore_index=ignore_index)
    return terms


def step_losses(
    student: SegmentationModel,
    teacher: SegmentationModel | None,
    method: nn.Module,
    student_capture: FeatureCapture,
    teacher_capture: FeatureCapture | None,
    batch: Batch,
) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """All loss terms of one step (cross-entropy + the method's weighted terms) and the features used."""
    logits, student_feats = student_forward(student, student_capture, batch.images)
    teacher_feats = teacher_features(teacher, teacher_capture, batch.images) if teacher is not None else {}
    terms = segmentation_loss(student, logits, student_feats, batch.labels, batch.ignore_index)
    terms.update(method(student_feats, teacher_feats, batch))
    return terms, student_feats, teacher_feats
