"""Masked Generative Distillation (MGD)."""

from __future__ import annotations

import torch
from torch import nn

from benchmark.registry import METHODS
from methods.base import Batch, DistillationMethod, resize_to


def random_spatial_mask(batch: int, height: int, width: int, lambda_mask: float, like: torch.Tensor) -> torch.Tensor:
    """M[b, 0, i, j] = 0 with probability λ (masked), else 1; one mask shared by all channels."""
    draw = torch.rand(batch, 1, height, width, device=like.device)
    return (draw <= 1 - lambda_mask).to(like.dtype)


def mgd_loss(generated: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Σ_{b,c,h,w} (G − T)² / B (MGD Eq. 3; the code's MSELoss(reduction='sum') / N)."""
    return (generated - teacher_feat).pow(2).sum() / teacher_feat.shape[0]


@METHODS.register("mgd")
class MGD(DistillationMethod):
    """MGD: the student's feature, randomly masked, must regenerate the teacher's full feature.

    Yang, Li, Shen, Yuan, Jiang, Yuan, "Masked Generative Distillation", ECCV 2022, Eq. (1)-(4):
    M_{i,j} = 0 if R_{i,j} < λ else 1 (R uniform, one mask per image shared by channels);
    G(F) = W_l2(ReLU(W_l1(F))) (two 3x3 convs, teacher width); L_dis = Σ (T − G(f_align(S) · M))²;
    the loss added is α · L_dis, the sum divided by the batch size as in the authors' code.

    Segmentation setting of the paper and its configs (yzd-v/MGD seg/configs/distillers/mgd): α = 2e-5
    (``alpha_mgd``), λ = 0.75 (``lambda_mgd``), on the backbone's last stage (``backbone.4``, student 512 →
    teacher 2048 channels for R18 ← R101). ``f_align`` is a 1x1 conv (with bias) when channel counts
    differ, else the identity. If the spatial sizes differ (the authors' code asserts they do not), the
    student map is resized (bilinear) to the teacher's before the connector. Our mask draws from torch's
    global RNG, so it follows the run's seed. The authors' segmentation distiller also adds a logit term
    (channel-wise KD at τ = 4, weight 3, their ``use_logit=True``): that is ``cwd`` (a suite row
    ``mgd + cwd``); this method is the feature term alone.
    """

    paper = "Yang et al., Masked Generative Distillation, ECCV 2022 (Eq. 1-4; segmentation α = 2e-5, λ = 0.75)"

    def __init__(self, student_points, teacher_points, num_classes, *, alpha_mgd: float = 2e-5,
                 lambda_mgd: float = 0.75):
        super().__init__(student_points, teacher_points, num_classes)
        if not 0 <= lambda_mgd < 1:
            raise ValueError(f"mgd: lambda_mgd (masked ratio) must be in [0, 1), got {lambda_mgd}")
        self.alpha_mgd, self.lambda_mgd = alpha_mgd, lambda_mgd
        s_channels = student_points["backbone.4"].channels
        t_channels = teacher_points["backbone.4"].channels
        self.align = nn.Conv2d(s_channels, t_channels, 1) if s_channels != t_channels else nn.Identity()
        self.generation = nn.Sequential(
            nn.Conv2d(t_channels, t_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(t_channels, t_channels, 3, padding=1),
        )
        self.student_points = ["backbone.4"]
        self.teacher_points = ["backbone.4"]

    def forward(self, student: dict, teacher: dict, batch: Batch) -> dict[str, torch.Tensor]:
        s, t = student["backbone.4"], teacher["backbone.4"]
        if s.shape[-2:] != t.shape[-2:]:
            s = resize_to(s, t)
        s = self.align(s)
        mask = random_spatial_mask(s.shape[0], s.shape[2], s.shape[3], self.lambda_mgd, s)
        return {"mgd": self.alpha_mgd * mgd_loss(self.generation(s * mask), t)}
