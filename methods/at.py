"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): match normalised spatial attention maps."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from benchmark.registry import METHODS
from methods.base import Batch, DistillationMethod, check_points, resize_to


def attention_map(x: torch.Tensor, p: float) -> torch.Tensor:
    """Q(x) = vec((1/C) Σ_c |x_c|^p), L2-normalised per sample: [B, H*W]."""
    return F.normalize(x.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0, variant: str = "paper") -> torch.Tensor:
    """Distance between the normalised attention maps of one pair of layers.

    ``paper`` (Eq. 2 with section 4.1's scaling of β by 1/(N·B)): Σ_b ‖Q_S,b/‖Q_S,b‖₂ − Q_T,b/‖Q_T,b‖₂‖_p
    divided by B·N. ``code`` (the authors' ``at_loss``, CIRKD ``CriterionAT``, mmrazor ``ATLoss``): the same
    with the norm squared, i.e. the mean over B·N of the squared differences. N = H·W of the teacher map; a
    student map at a different spatial size is bilinearly resized first.
    """
    a_s = student.abs().pow(p).mean(dim=1, keepdim=True)
    if a_s.shape[-2:] != teacher.shape[-2:]:
        a_s = resize_to(a_s, teacher)
    q_s = F.normalize(a_s.flatten(1), dim=1)
    q_t = attention_map(teacher, p)
    if variant == "code":
        return (q_s - q_t).pow(2).mean()
    if variant == "paper":
        difference = q_s - q_t
        # The p-norm's gradient is undefined at 0; the epsilon only matters when the maps coincide.
        return (difference.abs().pow(p).sum(dim=1) + 1e-12).pow(1.0 / p).sum() / difference.numel()
    raise ValueError(f"at: variant must be 'paper' or 'code', got {variant!r}")


@METHODS.register("at")
class AttentionTransfer(DistillationMethod):
    """Attention transfer: the student matches the teacher's L2-normalised spatial attention maps.

    Zagoruyko, Komodakis, "Paying More Attention to Attention: Improving the Performance of Convolutional
    Neural Networks via Attention Transfer", ICLR 2017. Attention map (Eq. 1, p = 2): F(A) = Σ_c |A_c|^p
    (we take the channel mean, as the authors' code does; the normalisation makes sum and mean identical).
    Loss (Eq. 2): β/2 · Σ_j ‖Q_S^j/‖Q_S^j‖₂ − Q_T^j/‖Q_T^j‖₂‖_p over the distilled layers j.

    Open choices and reasons:
    - ``variant``: ``paper`` (default) is Eq. 2's p-norm of the difference per sample; ``code`` is the
      authors' released code (and CIRKD's / mmrazor's), which squares that norm. Both divide by B·N (the
      paper sets β to "10³ divided by the number of elements in the attention map and batch size", section
      4.1; the code takes a mean) and multiply by β/2. CIRKD's program is ``variant='code'`` with β/2 = 10000 on
      the feature before the classifier (``points: [decoder]``) plus pixel KD on the stride-8 logits, no critic
      (winycg/CIRKD@2d8ad0f losses/at.py:14-19, train_kd.py:354-355, train_scripts/train_kd/train_at.sh:8-9).
    - β = 1000 (the paper's value). Points: the outputs (post-ReLU) of the four backbone stages, the
      "residual group outputs" of the paper; AttnFD's Table 1 does not state which points its AT row used.
    - Channel counts may differ (the map averages them away): no connector, no trainable parameter. When
      strides differ, the student's attention map is bilinearly resized to the teacher's size.
    """

    paper = ("Zagoruyko & Komodakis, Paying More Attention to Attention, ICLR 2017 (Eq. 1-2; "
             "variant='code' = authors' code / CIRKD / mmrazor)")
    reference_names = ("at",)

    def __init__(self, student_points, teacher_points, num_classes, *, beta: float = 1000.0, p: float = 2.0,
                 variant: str = "paper",
                 points: tuple[str, ...] = ("backbone.1", "backbone.2", "backbone.3", "backbone.4")):
        super().__init__(student_points, teacher_points, num_classes)
        if variant not in ("paper", "code"):
            raise ValueError(f"at: variant must be 'paper' or 'code', got {variant!r}")
        self.beta, self.p, self.variant, self.points = beta, p, variant, tuple(points)
        check_points(type(self).__name__, self.points, student_points, teacher_points)
        self.student_points = list(self.points)
        self.teacher_points = list(self.points)

    def forward(self, student: dict, teacher: dict, batch: Batch) -> dict[str, torch.Tensor]:
        total = sum(at_loss(student[name], teacher[name], self.p, self.variant) for name in self.points)
        return {"at": self.beta / 2 * total}

    @classmethod
    def reference_loss(cls, case_method: str, inputs: dict[str, torch.Tensor], params: dict[str, Any]) -> dict:
        # The vectors come from CIRKD / mmrazor, i.e. the code's mean of squared differences, without β.
        return {"loss": at_loss(inputs["student_feat"], inputs["teacher_feat"], params.get("p", 2), "code")}
