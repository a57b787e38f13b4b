"""Segmentation metrics from one confusion matrix accumulated over a whole split.

IoU is computed from counts summed over every pixel of every image (not averaged per image or per
batch), as mmseg, CIRKD and the AttnFD code all do. They differ only on a class that is neither
predicted nor labelled anywhere in the split (union 0), hence ``absent_class_policy``:

- ``nan_excluded`` (default; mmseg ``IoUMetric``, AttnFD ``Evaluator``): its IoU is NaN and left out of
  the mean.
- ``zero_included`` (CIRKD ``SegmentationMetric``): its IoU is 0 and counts in the mean over all classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

AbsentClassPolicy = Literal["nan_excluded", "zero_included"]


class ConfusionMatrix:
    """``matrix[g, p]`` counts pixels of ground-truth class g predicted as p; ignored pixels are dropped."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu"):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """``predictions`` (class ids) and ``labels`` of the same shape; stays on device (no host sync)."""
        if predictions.shape != labels.shape:
            raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ")
        valid = labels != self.ignore_index
        labels, predictions = labels[valid].long(), predictions[valid].long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"label values outside 0..{self.num_classes - 1} (ignore {self.ignore_index})")
        flat = labels * self.num_classes + predictions
        self.matrix += torch.bincount(flat, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def merge(self, other: torch.Tensor) -> None:
        self.matrix += other.to(self.matrix.device)

    def compute(self, absent_class_policy: AbsentClassPolicy = "nan_excluded") -> SegmentationScores:
        return scores_from_confusion(self.matrix, absent_class_policy)


@dataclass
class SegmentationScores:
    miou: float
    pixel_accuracy: float
    per_class_iou: list[float]  # NaN for a class absent from prediction and labels under nan_excluded

    def as_dict(self) -> dict:
        return {"miou": self.miou, "pixel_accuracy": self.pixel_accuracy, "per_class_iou": self.per_class_iou}


def scores_from_confusion(matrix: torch.Tensor, absent_class_policy: AbsentClassPolicy = "nan_excluded"):
    matrix = matrix.double().cpu()
    intersection = matrix.diag()
    ground_truth, predicted = matrix.sum(dim=1), matrix.sum(dim=0)
    union = ground_truth + predicted - intersection
    if absent_class_policy == "nan_excluded":
        iou = intersection / union  # 0/0 -> NaN, excluded by nanmean
        miou = torch.nanmean(iou).item() if (union > 0).any() else float("nan")
    elif absent_class_policy == "zero_included":
        iou = intersection / (union + 2.220446049250313e-16)
        miou = iou.mean().item()
    else:
        raise ValueError(f"absent_class_policy must be 'nan_excluded' or 'zero_included', got {absent_class_policy!r}")
    total = ground_truth.sum()
    pixel_accuracy = (intersection.sum() / total).item() if total > 0 else float("nan")
    return SegmentationScores(miou=miou, pixel_accuracy=pixel_accuracy, per_class_iou=iou.tolist())
