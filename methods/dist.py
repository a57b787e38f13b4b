"""DIST: knowledge distillation from a stronger teacher (Huang et al., NeurIPS 2022)."""

from __future__ import annotations

from typing import Any

import torch

from benchmark.registry import METHODS
from methods.base import Batch, DistillationMethod, check_logits_point


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise Pearson correlation of two [M, D] matrices; eps is added to the product of the norms."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0, gamma: float = 1.0,
              tau: float = 1.0) -> torch.Tensor:
    """τ² (β·(1 − mean_m ρ(Y^s_m, Y^t_m)) + γ·(1 − mean_c ρ(Y^s_:,c, Y^t_:,c))) on the M = B·H·W pixels."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"dist: student {tuple(student_logits.shape)} != teacher {tuple(teacher_logits.shape)}")
    classes = student_logits.shape[1]
    y_s = (student_logits / tau).softmax(dim=1).movedim(1, -1).reshape(-1, classes)
    y_t = (teacher_logits / tau).softmax(dim=1).movedim(1, -1).reshape(-1, classes)
    inter = 1 - pearson(y_s, y_t).mean()
    intra = 1 - pearson(y_s.t(), y_t.t()).mean()
    return tau**2 * (beta * inter + gamma * intra)


@METHODS.register("dist")
class DIST(DistillationMethod):
    """DIST: match the teacher's inter-class (per pixel) and intra-class (per class) relations with a
    Pearson correlation instead of KL, which tolerates a much stronger teacher.

    Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022. Eq. (6)
    inter-class: 1 − mean over rows of ρ_p(Y^s_i,:, Y^t_i,:); Eq. (7) intra-class: 1 − mean over classes
    of ρ_p(Y^s_:,j, Y^t_:,j); Eq. (8): L = β·L_inter + γ·L_intra (τ² both, with Y = softmax(Z/τ)). For
    segmentation every pixel of every image of the batch is a row (section 4.3 / the authors' code).

    Open choices and reasons:
    - β = γ = 1, τ = 1: the authors' segmentation code (``hunto/DIST_KD``, its ``DIST`` has no temperature,
      which is τ = 1; mmrazor's τ multiplies both terms by τ², which we follow for τ ≠ 1).
    - Point: the logits at input resolution by default; no ignore mask (the authors' code has none). The
      authors' code (CIRKD-based) uses the head's stride-8 logits before upsampling (``point:
      logits:pre_upsample``) and adds 0.4·DIST on the auxiliary head of its DeepLabV3 models (not
      reproduced: the DeepLabV3+ pairs of AttnFD's Table 1 have no auxiliary head).
    - No trainable parameter.
    """

    paper = "Huang et al., Knowledge Distillation from A Stronger Teacher (DIST), NeurIPS 2022 (Eq. 6-8)"
    reference_names = ("dist",)

    def __init__(self, student_points, teacher_points, num_classes, *, beta: float = 1.0, gamma: float = 1.0,
                 tau: float = 1.0, point: str = "logits"):
        super().__init__(student_points, teacher_points, num_classes)
        if tau <= 0:
            raise ValueError(f"dist: tau must be > 0, got {tau}")
        check_logits_point("dist", point)
        self.beta, self.gamma, self.tau, self.point = beta, gamma, tau, point
        self.student_points = [point]
        self.teacher_points = [point]

    def forward(self, student: dict, teacher: dict, batch: Batch) -> dict[str, torch.Tensor]:
        return {"dist": dist_loss(student[self.point], teacher[self.point], self.beta, self.gamma, self.tau)}

    @classmethod
    def reference_loss(cls, case_method: str, inputs: dict[str, torch.Tensor], params: dict[str, Any]) -> dict:
        return {"loss": dist_loss(inputs["student_logits"], inputs["teacher_logits"], params.get("beta", 1.0),
                                  params.get("gamma", 1.0), params.get("tau", 1.0))}
