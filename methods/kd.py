"""Pixel-wise knowledge distillation (Hinton et al.) on the output logits."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from benchmark.registry import METHODS
from methods.base import Batch, DistillationMethod, check_logits_point


def pixel_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """τ² · KL(softmax(T/τ) ‖ softmax(S/τ)) summed over classes, averaged over B·H·W pixels.

    The divisor is the number of pixels (CIRKD's ``CriterionKD``), not B and not B·C·H·W.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"kd: student logits {tuple(student_logits.shape)} != teacher {tuple(teacher_logits.shape)}")
    classes = student_logits.shape[1]
    log_q = F.log_softmax(student_logits / temperature, dim=1).movedim(1, -1).reshape(-1, classes)
    log_p = F.log_softmax(teacher_logits / temperature, dim=1).movedim(1, -1).reshape(-1, classes)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * temperature**2


@METHODS.register("kd")
class KD(DistillationMethod):
    """Pixel-wise KD: KL between temperature-softened class distributions of teacher and student.

    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS-W 2015, Eq. (2) with
    the τ² gradient scaling of section 2.1, applied independently at every pixel as in the segmentation
    distillation literature (e.g. CIRKD, Yang et al. CVPR 2022, Eq. 1). Open choices: the divisor is the
    pixel count B·H·W and every pixel counts, ignored ones included (CIRKD's code does the same); the
    loss is on the logits at input resolution (``point="logits"``, as the pytorch-deeplab-xception family
    does), or before upsampling (``point="logits:pre_upsample"``, as the CIRKD code base does).
    ``loss_weight`` is the λ of L = CE + λ·L_kd (CIRKD uses 1 with τ = 1).
    """

    paper = "Hinton et al., Distilling the Knowledge in a Neural Network, 2015 (Eq. 2); pixel-wise as in CIRKD"
    reference_names = ("kd",)

    def __init__(self, student_points, teacher_points, num_classes, *, temperature: float = 1.0,
                 loss_weight: float = 1.0, point: str = "logits"):
        super().__init__(student_points, teacher_points, num_classes)
        if temperature <= 0:
            raise ValueError(f"kd: temperature must be > 0, got {temperature}")
        check_logits_point("kd", point)
        self.temperature, self.loss_weight, self.point = temperature, loss_weight, point
        self.student_points = [point]
        self.teacher_points = [point]

    def forward(self, student: dict, teacher: dict, batch: Batch) -> dict[str, torch.Tensor]:
        return {"kd": self.loss_weight * pixel_kd(student[self.point], teacher[self.point], self.temperature)}

    @classmethod
    def reference_loss(cls, case_method: str, inputs: dict[str, torch.Tensor], params: dict[str, Any]) -> dict:
        return {"loss": pixel_kd(inputs["student_logits"], inputs["teacher_logits"], params["temperature"])}
