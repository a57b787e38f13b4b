"""Similarity-preserving knowledge distillation (Tung & Mori, ICCV 2019)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from benchmark.registry import METHODS
from methods.base import Batch, DistillationMethod, check_points


def sp_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(1/B²) ‖Ĝ_T − Ĝ_S‖²_F with G = Q Qᵀ over the B flattened samples and Ĝ its row-L2-normalised form
    (Eq. 2-4). Only B must match: each network's B x B similarity is independent of its C, H, W."""
    batch = student.shape[0]
    if teacher.shape[0] != batch:
        raise ValueError(f"sp: student batch {batch} != teacher batch {teacher.shape[0]}")
    q_s, q_t = student.reshape(batch, -1), teacher.reshape(batch, -1)
    g_s = F.normalize(q_s @ q_s.t(), dim=1)
    g_t = F.normalize(q_t @ q_t.t(), dim=1)
    return (g_t - g_s).pow(2).sum() / batch**2


@METHODS.register("sp")
class SimilarityPreserving(DistillationMethod):
    """Similarity-preserving KD: the student keeps the teacher's pairwise similarities between the images
    of a mini-batch.

    Tung, Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019. Per layer: G = Q Qᵀ with Q the
    B x (C·H·W) flattened activations (Eq. 2), rows L2-normalised (Eq. 3); L_SP = γ/B² Σ_l ‖Ĝ_T − Ĝ_S‖²_F
    (Eq. 4), added to cross-entropy (Eq. 5).

    Open choices and reasons:
    - γ = 3000, the paper's (and RepDistiller's) setting.
    - Points: the output of the last backbone stage (the paper distils the last residual group's output;
      AttnFD's Table 1 does not state its SP points).
    - Channels and spatial sizes may differ (the B x B matrix does not depend on them): no connector, no
      resizing, no trainable parameter. Ignore labels play no part (the loss has no per-pixel term).
    """

    paper = "Tung & Mori, Similarity-Preserving Knowledge Distillation, ICCV 2019 (Eq. 2-4)"
    reference_names = ("sp",)

    def __init__(self, student_points, teacher_points, num_classes, *, gamma: float = 3000.0,
                 points: tuple[str, ...] = ("backbone.4",)):
        super().__init__(student_points, teacher_points, num_classes)
        self.gamma, self.points = gamma, tuple(points)
        check_points(type(self).__name__, self.points, student_points, teacher_points)
        self.student_points = list(self.points)
        self.teacher_points = list(self.points)

    def forward(self, student: dict, teacher: dict, batch: Batch) -> dict[str, torch.Tensor]:
        return {"sp": self.gamma * sum(sp_loss(student[name], teacher[name]) for name in self.points)}

    @classmethod
    def reference_loss(cls, case_method: str, inputs: dict[str, torch.Tensor], params: dict[str, Any]) -> dict:
        return {"loss": sp_loss(inputs["student_feat"], inputs["teacher_feat"])}
