"""The holistic adversarial term alone (SKD's Eq. 3-4), for baseline rows such as ``cwd + kd + adversarial``."""

from __future__ import annotations

from typing import ClassVar

import torch

from benchmark.registry import METHODS
from methods.base import Batch, DistillationMethod, check_logits_point
from methods.skds import HolisticAdversarialTerm


@METHODS.register("adversarial")
class Adversarial(DistillationMethod):
    """Adversarial (holistic) distillation alone: a critic on segmentation logits, trained by its own optimizer.

    The holistic term of Liu et al., "Structured Knowledge Distillation for Semantic Segmentation", CVPR
    2019, Eq. (3)-(4), as CIRKD's ``train_kd.py`` (Yang et al., CVPR 2022 code, winycg/CIRKD) adds it to every
    baseline row (CWD, SKD, IFVD, AT, ...): student term −λ_adv · mean D(Q^s), critic term
    λ_d · (mean relu(1 − D(Q^t)) + mean relu(1 + D(Q^s))) with a SAGAN critic, one step of
    Adam(4e-4, β = 0.9, 0.99) per iteration after the student's step (the harness's ``separate_step``).
    The implementation is :class:`methods.skds.HolisticAdversarialTerm` (one implementation for both).

    Defaults are CIRKD's scripts (``--lambda-adv 0.001 --lambda-d 0.1``, hinge loss hard-coded,
    train_kd.py:240-241), since this method exists to reproduce those rows: ``adv_loss="hinge"``, the critic sees
    the logits alone (``condition_on_image=False``), namely ``point="logits:pre_upsample"``, the stride-8
    ``s_outputs[0]`` CIRKD's critic reads (train_kd.py:337-340), brought to 1/``adv_input_stride`` of the image
    (8: unchanged for an OS-8 model); Adam(4e-4, β = 0.9, 0.99) at a constant lr without weight decay
    (train_kd.py:261-263; ``d_lr_schedule``, ``d_weight_decay``). ``adv_loss="wgan-gp"`` (λ_gp = 10) with
    ``condition_on_image=True`` is the SKD paper's conditional Wasserstein critic; IFVD's code uses wgan-gp on
    logits alone with the same weights. Returns the term ``adv``; the critic's loss is logged by
    ``separate_step`` as ``d_loss``.
    """

    paper = ("Liu et al., Structured Knowledge Distillation for Semantic Segmentation, CVPR 2019 (Eq. 3-4); "
             "defaults of CIRKD's train_kd.py (Yang et al., CVPR 2022 code)")
    hyperparameters_without_effect: ClassVar[dict[str, str]] = {"lambda_gp": "the gradient penalty of adv_loss='wgan-gp'; the default hinge "
                                                   "loss has none"}

    def __init__(self, student_points, teacher_points, num_classes, *, lambda_adv: float = 0.001,
                 lambda_d: float = 0.1, adv_loss: str = "hinge", lambda_gp: float = 10.0,
                 condition_on_image: bool = False, adv_input_stride: int = 8, d_optimizer: str = "adam",
                 lr_d: float = 4e-4, d_weight_decay: float = 0.0, d_lr_schedule: str = "constant",
                 point: str = "logits:pre_upsample"):
        super().__init__(student_points, teacher_points, num_classes)
        self.lambda_adv = lambda_adv
        self.point = check_logits_point("adversarial", point)
        self.holistic = HolisticAdversarialTerm(
            num_classes, adv_loss=adv_loss, lambda_g=lambda_adv, lambda_d=lambda_d, lambda_gp=lambda_gp,
            condition_on_image=condition_on_image, input_stride=adv_input_stride, d_optimizer=d_optimizer,
            lr_d=lr_d, weight_decay=d_weight_decay, lr_schedule=d_lr_schedule)
        self.student_points = [point]
        self.teacher_points = [point]

    def forward(self, student: dict, teacher: dict, batch: Batch) -> dict[str, torch.Tensor]:
        return {"adv": self.holistic.generator_loss(student[self.point], batch.images)}

    def separate_step(self, student: dict, teacher: dict, batch: Batch) -> dict[str, float]:
        return self.holistic.discriminator_step(student[self.point], teacher[self.point], batch)

    def student_optimizer_parameters(self):
        own = self.holistic.own_parameter_ids()
        return (p for p in self.parameters() if p.requires_grad and id(p) not in own)
