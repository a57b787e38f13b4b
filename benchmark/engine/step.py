"""One distillation step's computation, shared by the training loop and the method contract tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models.base import SegmentationModel
from benchmark.models.hooks import FeatureCapture
from methods.base import Batch


def teacher_features(teacher: SegmentationModel, capture: FeatureCapture, images: torch.Tensor,
                     authors_forward: bool = False) -> dict:
    """The teacher's one forward of the step, under ``inference_mode`` (no autograd bookkeeping at all).

    Inference tensors cannot be saved for the student's backward (a loss like ``(s - t)**2`` saves
    ``t``), so the captured points are cloned once outside inference mode: a copy of the few maps the
    method asked for, far cheaper than the forward that autograd no longer records.
    """
    with torch.inference_mode(), authors_kd_forward(teacher, authors_forward):
        teacher(images)
        features = capture.pop()
    return {name: tensor.clone() for name, tensor in features.items()}


def student_capture(student: SegmentationModel, method: nn.Module) -> FeatureCapture:
    """Hooks for the points the method asks for, plus the auxiliary head's logits when the model trains one."""
    points = set(method.student_points)
    if student.aux_weight > 0:
        points.add("aux_logits")
    return FeatureCapture(student, points)


@contextlib.contextmanager
def authors_kd_forward(model: SegmentationModel | None, enabled: bool = True) -> Iterator[None]:
    """For one forward, bypass the modules the model's authors' distillation forward bypasses.

    pytorch-deeplab-xception's KD scripts run ``extract_feature`` instead of ``forward``, and its ASPP returns before
    ``Dropout(0.5)`` there (AmirMansurian/AttnFD@f090bbe:modeling/aspp.py:95-111 vs 73-86; likewise
    clovaai/overhaul-distillation@76344a8:Segmentation/modeling/aspp.py:89-103). Each module named by
    ``model.extract_feature_skips`` is swapped for an identity and put back after the forward, so a teacher shared
    between runs is never left changed.
    """
    swapped = []
    try:
        for name in (model.extract_feature_skips if enabled and model is not None else ()):
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent)
            swapped.append((owner, child, getattr(owner, child)))
            setattr(owner, child, nn.Identity())
        yield
    finally:
        for owner, child, module in reversed(swapped):
            setattr(owner, child, module)


def student_forward(student: SegmentationModel, capture: FeatureCapture, images: torch.Tensor,
                    authors_forward: bool = False):
    """The student's forward with grad; returns (logits, captured points)."""
    with authors_kd_forward(student, authors_forward):
        logits = student(images)
    return logits, capture.pop()


def segmentation_loss(
    student: SegmentationModel, logits: torch.Tensor, features: dict, labels: torch.Tensor, ignore_index: int
) -> dict[str, torch.Tensor]:
    """Cross-entropy on the main logits, plus the auxiliary head's where the model has one.

    The auxiliary logits are upsampled with ``align_corners=True``, as CIRKD's ``SegCrossEntropyLoss`` upsamples
    every output it scores (winycg/CIRKD@2d8ad0f:losses/task.py:14); only CIRKD-family models have that head.
    """
    terms = {"ce": F.cross_entropy(logits, labels, ignore_index=ignore_index)}
    if student.aux_weight > 0 and "aux_logits" in features:
        aux = F.interpolate(features["aux_logits"], size=labels.shape[-2:], mode="bilinear", align_corners=True)
        terms["aux_ce"] = student.aux_weight * F.cross_entropy(aux, labels, ignore_index=ignore_index)
    return terms


def step_losses(
    student: SegmentationModel,
    teacher: SegmentationModel | None,
    method: nn.Module,
    student_capture: FeatureCapture,
    teacher_capture: FeatureCapture | None,
    batch: Batch,
    authors_forward: bool = False,
) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """All loss terms of one step (cross-entropy + the method's weighted terms) and the features used.

    ``authors_forward``: both forwards bypass what the models' authors' KD forward bypasses (:func:`authors_kd_forward`).
    """
    logits, student_feats = student_forward(student, student_capture, batch.images, authors_forward)
    teacher_feats = (teacher_features(teacher, teacher_capture, batch.images, authors_forward) if teacher is not None
                     else {})
    terms = segmentation_loss(student, logits, student_feats, batch.labels, batch.ignore_index)
    terms.update(method(student_feats, teacher_feats, batch))
    return terms, student_feats, teacher_feats
