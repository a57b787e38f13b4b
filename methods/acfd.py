"""ACFD: adaptive channel-wise feature distillation (backbone, fusion layer and label layer), reimplemented
from the paper's description alone (no public code exists)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.registry import METHODS
from methods.base import Batch, DistillationMethod, resize_to

AFD_SOFTMAX = ("spatial", "channel")


def channel_self_attention(features: torch.Tensor) -> torch.Tensor:
    """Parameter-free channel self-attention with a residual: ``X + softmax(X Xᵀ / √N) X`` on ``[B, C, N]``.

    Scaled dot-product over the N spatial positions (each channel is a token), so every channel is
    re-expressed through the channels it correlates with. Being parameter-free, it is the same function on
    both networks: equal inputs give equal outputs, so it can only change what is compared, never create a
    gap by itself.
    """
    # float32 with autocast off: energies are sums over N positions, and bf16's relative error on them
    # becomes an absolute error of whole units inside the softmax
    with torch.autocast(features.device.type, enabled=False):
        flat = features.flatten(2).float()
        energy = torch.bmm(flat, flat.transpose(1, 2)) / flat.shape[-1] ** 0.5
        attended = torch.bmm(energy.softmax(dim=-1), flat)
    return (flat + attended).view_as(features)


def softmax_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float, dim: int) -> torch.Tensor:
    """τ² · KL(softmax(T/τ) ‖ softmax(S/τ)) along ``dim`` of ``[B, C, N]``, averaged over the other two axes.

    ``dim=2`` is CWD's channel distribution over positions (Shu et al., ICCV 2021, Eq. 2-3: the sum over
    positions, then the mean over B·C); ``dim=1`` is a distribution over channels at every position.
    """
    # float32: the log-ratio of two close distributions cancels catastrophically under bf16 autocast
    log_q = F.log_softmax(student.float() / temperature, dim=dim)
    log_p = F.log_softmax(teacher.float() / temperature, dim=dim)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=dim)
    return kl.mean() * temperature**2


def channel_correlation(features: torch.Tensor) -> torch.Tensor:
    """The ``[B, C, C]`` cosine correlation of channels, each channel a vector over positions."""
    # float32 with autocast off: entries near ±1 whose small differences are the loss; bf16 keeps ~3 digits
    with torch.autocast(features.device.type, enabled=False):
        flat = F.normalize(features.flatten(2).float(), dim=2)
        return torch.bmm(flat, flat.transpose(1, 2))


def connector(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


@METHODS.register("acfd")
class ACFD(DistillationMethod):
    """ACFD: adaptive feature (backbone), channel correlation (fusion) and channel significance (label) distillation.

    Paper: "语义分割中的自适应通道特征蒸馏" (Adaptive channel-wise feature distillation in semantic
    segmentation), Journal of Jiangsu University (Natural Science Edition) 46(5):556-, 2025,
    DOI 10.3969/j.issn.1671-7775.2025.05.009 (PSPNet-R18 student, +5.79 mIoU). **No public code exists and
    only the abstract was accessible: this is a reimplementation from the abstract's description**; every
    formula below is our reading of it, and every default a value from the closest published method (named).

    L = λ_afd·L_afd + λ_ccd·L_ccd + λ_csd·L_csd (each component switchable), where

    * L_afd, adaptive feature distillation at the backbone (``backbone_point``, default ``backbone.4``):
      X_s = φ(F_s), φ a trainable 1x1 conv + BN to the teacher's width (what lets heterogeneous backbones be
      paired: the "adaptive" part), bilinearly resized to the teacher's spatial size when strides differ;
      both maps refined by the parameter-free channel self-attention A(X) = X + softmax(XXᵀ/√N)X; then
      ``softmax_kl`` with temperature τ: CWD's per-channel spatial distributions (``afd_softmax="spatial"``)
      or per-position distributions over channels (``"channel"``; the abstract's "softmax normalisation"
      names no axis).
    * L_ccd, channel correlation distillation at the fusion layer (``fusion_point``, default ``encoder``:
      PSPNet's pyramid-pooling / DeepLab's ASPP output, the "feature enhancement" layer): the C×C cosine
      correlation G = X̂X̂ᵀ (rows L2-normalised over positions) of φ'(F_s) and F_t, φ' another 1x1 conv + BN
      to the teacher's width; L = mean over B of ‖G_s − G_t‖²_F / C². G is C×C whatever the spatial size,
      so no resizing is needed.
    * L_csd, channel significance distillation at the label layer: each class channel of the logits
      (at input resolution) as a spatial distribution, ``softmax_kl`` along positions with τ (CWD on
      logits: a class channel's activations encode the saliency, "significance", of that class).

    Our interpretation (every choice the abstract leaves open):

    * self-attention: parameter-free scaled dot-product over channels with a residual (DANet's channel
      attention form without its learnt γ); a learnt γ would let the student's branch differ from the
      teacher's and the loss would no longer compare like with like. ``afd_self_attention=False`` skips it.
      On large maps the self-similarity (diagonal) energies dominate the softmax and the attention tends to
      the identity, so L_afd tends to CWD on the aligned features. Computed in float32 outside autocast.
    * softmax axis of L_afd: spatial by default (CWD, the best-known "channel-wise softmax normalisation"
      distillation), the channel axis as an option.
    * correlation measure: cosine (scale-free, so the connector cannot shrink it away), squared Frobenius
      distance averaged over the C² entries (as CCD, Wang et al. IJPRAI 2023, and CSD of DSD, Feng et al.).
    * defaults: the paper's weights are not available to us. τ=4, λ_afd=50 and λ_csd=3 are CWD's feature
      and logit settings (CIRKD's scripts); λ_ccd=1 has no published anchor; suites should sweep it.
    * one backbone stage (the last, where the semantics are) rather than all four: the abstract says
      "backbone" without stages; ``backbone_point`` picks another.
    """

    paper = ("ACFD, 语义分割中的自适应通道特征蒸馏 (Adaptive channel-wise feature distillation in semantic "
             "segmentation), J. Jiangsu Univ. (Nat. Sci.) 46(5), 2025, DOI 10.3969/j.issn.1671-7775.2025.05.009; "
             "reimplemented from the abstract (no public code); AFD/CCD/CSD as documented in the class")

    def __init__(self, student_points, teacher_points, num_classes, *, use_afd: bool = True, use_ccd: bool = True,
                 use_csd: bool = True, lambda_afd: float = 50.0, lambda_ccd: float = 1.0, lambda_csd: float = 3.0,
                 temperature: float = 4.0, afd_self_attention: bool = True, afd_softmax: str = "spatial",
                 backbone_point: str = "backbone.4", fusion_point: str = "encoder"):
        super().__init__(student_points, teacher_points, num_classes)
        if not (use_afd or use_ccd or use_csd):
            raise ValueError("acfd: every component is off (use_afd, use_ccd, use_csd): enable at least one")
        if temperature <= 0:
            raise ValueError(f"acfd: temperature must be > 0, got {temperature}")
        for name, value in (("lambda_afd", lambda_afd), ("lambda_ccd", lambda_ccd), ("lambda_csd", lambda_csd)):
            if value < 0:
                raise ValueError(f"acfd: {name} must be >= 0, got {value}")
        if afd_softmax not in AFD_SOFTMAX:
            raise ValueError(f"acfd: afd_softmax must be one of {AFD_SOFTMAX}, got {afd_softmax!r}")
        if not backbone_point.startswith("backbone."):
            raise ValueError(f"acfd: backbone_point must be a backbone stage (backbone.1..4), got {backbone_point!r}")
        if fusion_point in ("logits", backbone_point):
            raise ValueError(f"acfd: fusion_point must be a feature layer other than the backbone point and the "
                             f"logits, got {fusion_point!r}")
        self.use_afd, self.use_ccd, self.use_csd = use_afd, use_ccd, use_csd
        self.lambda_afd, self.lambda_ccd, self.lambda_csd = lambda_afd, lambda_ccd, lambda_csd
        self.temperature, self.afd_self_attention = temperature, afd_self_attention
        self.afd_softmax_dim = 2 if afd_softmax == "spatial" else 1
        self.backbone_point, self.fusion_point = backbone_point, fusion_point

        points = ([backbone_point] if use_afd else []) + ([fusion_point] if use_ccd else [])
        for point in points:
            for side, available in (("student", student_points), ("teacher", teacher_points)):
                if point not in available:
                    raise ValueError(f"acfd: the {side} has no feature point {point!r} "
                                     f"(it has: {', '.join(sorted(available))})")
        if use_afd:
            self.afd_connector = connector(student_points[backbone_point].channels,
                                           teacher_points[backbone_point].channels)
        if use_ccd:
            self.ccd_connector = connector(student_points[fusion_point].channels, teacher_points[fusion_point].channels)
        self.student_points = points + (["logits"] if use_csd else [])
        self.teacher_points = list(self.student_points)

    def adaptive_feature_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        aligned = self.afd_connector(student)
        if aligned.shape[-2:] != teacher.shape[-2:]:
            aligned = resize_to(aligned, teacher)
        if self.afd_self_attention:
            aligned, teacher = channel_self_attention(aligned), channel_self_attention(teacher)
        return softmax_kl(aligned.flatten(2), teacher.flatten(2), self.temperature, self.afd_softmax_dim)

    def channel_correlation_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        gram_s, gram_t = channel_correlation(self.ccd_connector(student)), channel_correlation(teacher)
        return (gram_s - gram_t).pow(2).mean()

    def channel_significance_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return softmax_kl(student.flatten(2), teacher.flatten(2), self.temperature, dim=2)

    def forward(self, student: dict, teacher: dict, batch: Batch) -> dict[str, torch.Tensor]:
        terms = {}
        if self.use_afd:
            point = self.backbone_point
            terms["afd"] = self.lambda_afd * self.adaptive_feature_loss(student[point], teacher[point])
        if self.use_ccd:
            point = self.fusion_point
            terms["ccd"] = self.lambda_ccd * self.channel_correlation_loss(student[point], teacher[point])
        if self.use_csd:
            terms["csd"] = self.lambda_csd * self.channel_significance_loss(student["logits"], teacher["logits"])
        return terms
