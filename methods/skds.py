"""Structured Knowledge Distillation (SKD/SKDS): pixel-wise, pair-wise and holistic (adversarial) terms.

This module also holds the one implementation of the holistic adversarial term (a SAGAN-style critic on
segmentation maps, trained by its own optimizer); ``methods/adversarial.py`` registers it alone.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from benchmark.registry import METHODS
from methods.base import Batch, DistillationMethod, check_logits_point, resize_to
from methods.kd import pixel_kd

PAIRWISE_VARIANTS = ("skd_official_pool_scale", "cirkd_fixed_kernel")
PIXELWISE_VARIANTS = ("paper", "skd_official")
ADV_LOSSES = ("wgan-gp", "hinge")
D_OPTIMIZERS = ("adam", "sgd")
D_LR_SCHEDULES = ("constant", "poly")


# --- pair-wise similarity term ---------------------------------------------------------------------------


def _pool_for_variant(feat: torch.Tensor, variant: str, pool_kernel: int | tuple[int, int], pool_scale: float):
    if variant == "cirkd_fixed_kernel":
        kernel = (pool_kernel, pool_kernel) if isinstance(pool_kernel, int) else tuple(pool_kernel)
    elif variant == "skd_official_pool_scale":
        height, width = feat.shape[-2:]
        kernel = (max(1, int(height * pool_scale)), max(1, int(width * pool_scale)))
    else:
        raise ValueError(f"skds: unknown pairwise variant {variant!r} (known: {', '.join(PAIRWISE_VARIANTS)})")
    return F.max_pool2d(feat, kernel_size=kernel, stride=kernel, padding=0, ceil_mode=True)


def _affinity(feat: torch.Tensor, variant: str) -> torch.Tensor:
    """Per image, the N'xN' cosine similarities between all pooled positions: [B, N', N']."""
    if feat.dtype in (torch.float16, torch.bfloat16):
        feat = feat.float()  # a Gram matrix of N' positions: accumulate in float32 at least
    flat = feat.flatten(2)  # [B, C, N']
    if variant == "cirkd_fixed_kernel":
        flat = F.normalize(flat, p=2, dim=1, eps=1e-12)
    else:  # the official code divides by (norm + 1e-8)
        flat = flat / (flat.norm(p=2, dim=1, keepdim=True) + 1e-8)
    return flat.transpose(1, 2) @ flat


def pairwise_similarity_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, variant: str,
                             pool_kernel: int | tuple[int, int] = 2, pool_scale: float = 0.5) -> torch.Tensor:
    """SKD Eq. (2): (1 / (B·N'²)) Σ_b Σ_{m,n} (a^s_{mn} − a^t_{mn})² on max-pooled, channel-normalised maps."""
    if student_feat.shape[-2:] != teacher_feat.shape[-2:]:
        raise ValueError(f"skds pairwise: spatial sizes differ {tuple(student_feat.shape[-2:])} vs "
                         f"{tuple(teacher_feat.shape[-2:])}")
    a_s = _affinity(_pool_for_variant(student_feat, variant, pool_kernel, pool_scale), variant)
    a_t = _affinity(_pool_for_variant(teacher_feat, variant, pool_kernel, pool_scale), variant)
    return (a_s - a_t).pow(2).mean()


def pixelwise_official_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The SKD code's pixel-wise term: −(1/(H·W)) Σ_{b,c,h,w} softmax(T) · log_softmax(S) (a cross-entropy,
    divided by H·W only, so it is the sum over images of the per-image mean)."""
    height, width = student_logits.shape[-2:]
    p = F.softmax(teacher_logits, dim=1)
    return -(p * F.log_softmax(student_logits, dim=1)).sum() / (height * width)


# --- holistic (adversarial) term -------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019): x + γ · V softmax(QᵀK)ᵀ, γ initialised at 0."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Conv2d(channels, max(channels // 8, 1), 1)
        self.key = nn.Conv2d(channels, max(channels // 8, 1), 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        query = self.query(x).flatten(2).transpose(1, 2)  # [B, N, C/8]
        key = self.key(x).flatten(2)  # [B, C/8, N]
        attention = torch.softmax(query @ key, dim=-1)  # [B, N, N]
        out = (self.value(x).flatten(2) @ attention.transpose(1, 2)).view(batch, channels, height, width)
        return self.gamma * out + x


class SegmentationDiscriminator(nn.Module):
    """The critic of SKD's holistic term, as in the SKD/IFVD/CIRKD code (SAGAN discriminator): batch-norm on
    the input, four spectrally normalised 4x4 stride-2 convs (``conv_dim``·1,2,4,8 channels, LeakyReLU 0.1),
    self-attention after the third and fourth, and a final 4x4 conv to one score map.

    Open choice: the final 4x4 conv has no padding, so the reference code needs a map of at least 64x64 at
    the critic's input; where a conv's input is smaller than it needs (2x2 for the strided convs, 4x4 for
    the last) we zero-pad it, centred (a no-op at the papers' crop sizes), so tiny smoke models also run.
    """

    def __init__(self, in_channels: int, conv_dim: int = 64):
        super().__init__()
        self.preprocess = nn.BatchNorm2d(in_channels)
        widths = [in_channels, conv_dim, conv_dim * 2, conv_dim * 4, conv_dim * 8]
        self.blocks = nn.ModuleList(
            nn.Sequential(spectral_norm(nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1)), nn.LeakyReLU(0.1))
            for i in range(4)
        )
        self.attn1 = SelfAttention(widths[3])
        self.attn2 = SelfAttention(widths[4])
        self.last = nn.Conv2d(widths[4], 1, 4)

    @staticmethod
    def _at_least(x: torch.Tensor, size: int) -> torch.Tensor:
        """Zero-pad (centred) to at least ``size`` x ``size``; a no-op at the papers' crop sizes."""
        pad_h, pad_w = max(0, size - x.shape[-2]), max(0, size - x.shape[-1])
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.preprocess(x)
        for index, block in enumerate(self.blocks):
            out = block(self._at_least(out, 2))  # a 4x4/2 conv with padding 1 needs 2x2
            if index == 2:
                out = self.attn1(out)
        out = self.attn2(out)
        return self.last(self._at_least(out, 4))


class HolisticAdversarialTerm(nn.Module):
    """The holistic term of SKD (Liu et al., CVPR 2019, Eq. 3-4), as one module used by ``skds`` and
    ``adversarial``.

    Generator side (the student's loss, through the harness):  L_G = −λ_G · mean D(Q^s [, I])
    Critic side (its own optimizer, in :meth:`discriminator_step`):
      ``wgan-gp`` (paper, SKD/IFVD code): λ_D · (mean D(Q^s) − mean D(Q^t) + λ_gp · mean (‖∇D(Q̂)‖₂ − 1)²),
      Q̂ a random per-image mix of Q^t and Q^s;
      ``hinge`` (CIRKD code): λ_D · (mean relu(1 − D(Q^t)) + mean relu(1 + D(Q^s))).

    Q are logits (the references feed the raw logits; the critic's input batch-norm rescales them), taken
    from the caller's logits point and brought (bilinear) to 1/``input_stride`` of the input image, ⌈H/s⌉ x ⌈W/s⌉
    (8: the references' critics see the output-stride-8 logits; the ``logits:pre_upsample`` map of an OS-8
    model already has that size and passes unchanged, as in the references). ``condition_on_image``
    concatenates the equally resized input image (the paper's conditional critic D(Q | I)); the reference codes
    feed Q alone.

    The critic's optimizer is private (``weight_decay``; ``lr_schedule`` "constant" or "poly", the latter
    lr_d·(1 − (t+1)/T)^0.9 at 0-based step t of T, as the SKD code's ``adjust_learning_rate(args.lr_d, D_solver,
    step)`` with its 1-based step, train_and_eval.py:21-23, networks/kd_model.py:110-117); its state is kept in the
    module's ``state_dict`` through ``get_extra_state`` so that a resumed run continues it. The critic's parameters
    are frozen during the generator pass, so the student's backward never writes their ``.grad``.
    """

    def __init__(self, num_classes: int, *, adv_loss: str, lambda_g: float, lambda_d: float, lambda_gp: float,
                 condition_on_image: bool, input_stride: int, d_optimizer: str, lr_d: float, weight_decay: float,
                 lr_schedule: str, conv_dim: int = 64):
        super().__init__()
        if adv_loss not in ADV_LOSSES:
            raise ValueError(f"adversarial: adv_loss must be one of {ADV_LOSSES}, got {adv_loss!r}")
        if d_optimizer not in D_OPTIMIZERS:
            raise ValueError(f"adversarial: d_optimizer must be one of {D_OPTIMIZERS}, got {d_optimizer!r}")
        if lr_schedule not in D_LR_SCHEDULES:
            raise ValueError(f"adversarial: d_lr_schedule must be one of {D_LR_SCHEDULES}, got {lr_schedule!r}")
        if input_stride < 1:
            raise ValueError(f"adversarial: input_stride must be >= 1, got {input_stride}")
        if weight_decay < 0:
            raise ValueError(f"adversarial: d_weight_decay must be >= 0, got {weight_decay}")
        self.adv_loss, self.lambda_g, self.lambda_d, self.lambda_gp = adv_loss, lambda_g, lambda_d, lambda_gp
        self.condition_on_image, self.input_stride = condition_on_image, input_stride
        self.d_optimizer, self.lr_d = d_optimizer, lr_d
        self.weight_decay, self.lr_schedule = weight_decay, lr_schedule
        self.discriminator = SegmentationDiscriminator(num_classes + (3 if condition_on_image else 0), conv_dim)
        self._optimizer: torch.optim.Optimizer | None = None

    # the private optimizer, created lazily so that it holds the parameters on their final device
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            params = [p for p in self.discriminator.parameters()]
            if self.d_optimizer == "adam":  # CIRKD and IFVD code: Adam(4e-4, betas 0.9, 0.99), no weight decay
                self._optimizer = torch.optim.Adam(params, lr=self.lr_d, betas=(0.9, 0.99),
                                                   weight_decay=self.weight_decay)
            else:  # SKD code: SGD(lr_d, momentum 0.9, the script's weight decay), networks/kd_model.py:75
                self._optimizer = torch.optim.SGD(params, lr=self.lr_d, momentum=0.9, weight_decay=self.weight_decay)
        return self._optimizer

    def learning_rate(self, iteration: int, total: int) -> float:
        if self.lr_schedule == "constant":
            return self.lr_d
        return self.lr_d * max(0.0, 1.0 - (iteration + 1) / max(total, 1)) ** 0.9

    def get_extra_state(self) -> Any:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def critic_input(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        x = logits
        size = (math.ceil(images.shape[-2] / self.input_stride), math.ceil(images.shape[-1] / self.input_stride))
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if self.condition_on_image:
            image = F.interpolate(images.to(x.dtype), size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, image], dim=1)
        return x

    @contextlib.contextmanager
    def _critic_frozen(self):
        flags = [p.requires_grad for p in self.discriminator.parameters()]
        for p in self.discriminator.parameters():
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(self.discriminator.parameters(), flags):
                p.requires_grad_(flag)

    def generator_loss(self, student_logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with self._critic_frozen():
            score = self.discriminator(self.critic_input(student_logits, images))
        return -self.lambda_g * score.mean()

    def critic_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    images: torch.Tensor) -> torch.Tensor:
        fake = self.critic_input(student_logits.detach(), images)
        real = self.critic_input(teacher_logits.detach(), images)
        d_fake, d_real = self.discriminator(fake), self.discriminator(real)
        if self.adv_loss == "hinge":
            loss = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        else:
            loss = d_fake.mean() - d_real.mean()
            alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
            mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
            (grad,) = torch.autograd.grad(self.discriminator(mixed).sum(), mixed, create_graph=True)
            loss = loss + self.lambda_gp * (grad.flatten(1).norm(p=2, dim=1) - 1).pow(2).mean()
        return self.lambda_d * loss

    def discriminator_step(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                           batch: Batch) -> dict[str, torch.Tensor]:
        images = batch.images
        optimizer = self.optimizer
        for group in optimizer.param_groups:
            group["lr"] = self.learning_rate(batch.iteration, batch.total_iterations)
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = self.critic_loss(student_logits, teacher_logits, images)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"d_loss": loss.detach()}  # a tensor: .item() here would wait for the GPU at every step

    def own_parameter_ids(self) -> set[int]:
        return {id(p) for p in self.discriminator.parameters()}


# --- the method --------------------------------------------------------------------------------------------


@METHODS.register("skds")
class SKDS(DistillationMethod):
    """Structured knowledge distillation: pixel-wise KD, pair-wise similarity distillation and holistic
    adversarial distillation.

    Liu, Chen, Liu, Qin, Luo, Wang, "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019
    (extended: Liu, Shu, Wang, Shen, "Structured Knowledge Distillation for Dense Prediction", TPAMI 2020).
    Objective (Eq. 5): ℓ = ℓ_mc + λ1 (ℓ_pi + ℓ_pa) − λ2 ℓ_ho. Defaults: the authors' script
    (irfanICMLL/structure_knowledge_distillation@ce208e1 run_train_val.sh, which the README has one run, with
    utils/train_options.py for what it does not pass); where we read the paper otherwise, the paper's value is
    the named alternative. Terms returned (already weighted):

    - ``pixelwise`` = ``lambda_pi`` (10, run_train_val.sh) · ℓ_pi on ``logits_point``.
      ``pixelwise_variant="skd_official"`` (default): the code's cross-entropy −Σ softmax(T)·log_softmax(S)
      divided by H·W only (utils/criterion.py:219-226; it grows with the batch). ``"paper"``: Eq. (1), the
      per-pixel KL(q^t ‖ q^s) averaged over B·H·W pixels (= CIRKD's pixel KD at τ = 1). Reference case
      ``skds_pixelwise`` checks the former.
    - ``pairwise`` = ``lambda_pa`` · ℓ_pa (Eq. 2) on the ``decoder`` points (the feature before the classifier:
      the code's ``feat_ind=-5`` is ``x_feat_after_psp``, networks/kd_model.py:82, pspnet_combine.py:187-189).
      ``lambda_pa`` 0.5: run_train_val.sh ``--lambda-pa 0.5`` (train_options.py:58 defaults to 1; our reading of
      the paper's λ1 = 10 for both ℓ_pi and ℓ_pa is the alternative value). ``variant="skd_official_pool_scale"``
      (default, the code): each node pools a β×β fraction of the map (kernel ⌊H·β⌋×⌊W·β⌋, β = ``pool_scale`` =
      0.5, ceil mode, norm + 1e-8, utils/criterion.py:236-245); ``"cirkd_fixed_kernel"``: CIRKD's 2×2 kernel
      (``pool_kernel``) with F.normalize. Channels may differ (each network has its own graph); if the spatial
      sizes differ, the student map is resized (bilinear) to the teacher's. Reference cases ``skds_pairwise``.
    - ``holistic`` = −``lambda_ho`` · mean D(Q^s) (Eq. 3-4), a Wasserstein critic (WGAN-GP, λ_gp = 10) trained in
      :meth:`separate_step` by its own optimizer with loss weight ``lambda_d`` (the code uses ``lambda_d`` = 0.1 on
      both sides, kd_model.py:149, 158). On by default (``--ho True``); ``lambda_ho = 0`` removes it and builds
      no critic. The critic reads Q = ``logits_point`` (the code's ``preds_S[0]``, the stride-8 PSPNet logits
      before upsampling, kd_model.py:148, 156) brought to 1/``adv_input_stride`` of the image (8: unchanged for
      an OS-8 model's pre-upsampling logits). ``condition_on_image`` False (the code's critic has the classes as
      its only input channels, kd_model.py:69); True is the paper's conditional critic D(Q | I). Critic optimizer:
      SGD(``lr_d`` 4e-4, momentum 0.9, weight decay ``d_weight_decay`` = the script's ``--weight-decay 5e-4``,
      kd_model.py:75) with the poly schedule of the student (``d_lr_schedule`` "poly", train_and_eval.py:23);
      "constant" and CIRKD's ``d_optimizer="adam"`` (Adam(4e-4, β = 0.9, 0.99), no decay) are the alternatives.
    - ``logits_point``: ``logits:pre_upsample`` (default; the code distils and critiques the head's output
      before upsampling, which only its cross-entropy upsamples, utils/criterion.py:179-188) or ``logits``.

    CIRKD's SKD script (train_scripts/train_kd/train_skd.sh) is another program: KD 1, pairwise 10 (2×2 kernel),
    adversarial hinge 0.001 / critic 0.1 with Adam; the suites' CIRKD rows set those values.
    """

    paper = ("Liu et al., Structured Knowledge Distillation for Semantic Segmentation, CVPR 2019 "
             "(Eq. 1 pixel-wise, Eq. 2 pair-wise, Eq. 3-5 holistic WGAN); defaults of the authors' run_train_val.sh")
    reference_names = ("skds_pairwise", "skds_pixelwise")
    hyperparameters_without_effect: ClassVar[dict[str, str]] = {"pool_kernel": "the pooling kernel of variant='cirkd_fixed_kernel'; the default "
                                                     "variant pools by pool_scale"}

    def __init__(self, student_points, teacher_points, num_classes, *, lambda_pi: float = 10.0,
                 lambda_pa: float = 0.5, lambda_ho: float = 0.1, lambda_d: float = 0.1, lambda_gp: float = 10.0,
                 variant: str = "skd_official_pool_scale", pool_scale: float = 0.5, pool_kernel: int = 2,
                 pixelwise_variant: str = "skd_official", adv_loss: str = "wgan-gp", condition_on_image: bool = False,
                 adv_input_stride: int = 8, d_optimizer: str = "sgd", lr_d: float = 4e-4,
                 d_weight_decay: float = 5e-4, d_lr_schedule: str = "poly",
                 logits_point: str = "logits:pre_upsample"):
        super().__init__(student_points, teacher_points, num_classes)
        if variant not in PAIRWISE_VARIANTS:
            raise ValueError(f"skds: variant must be one of {PAIRWISE_VARIANTS}, got {variant!r}")
        if pixelwise_variant not in PIXELWISE_VARIANTS:
            raise ValueError(f"skds: pixelwise_variant must be one of {PIXELWISE_VARIANTS}, got {pixelwise_variant!r}")
        if not 0 < pool_scale <= 1:
            raise ValueError(f"skds: pool_scale must be in (0, 1], got {pool_scale}")
        self.logits_point = check_logits_point("skds", logits_point)
        self.lambda_pi, self.lambda_pa, self.lambda_ho = lambda_pi, lambda_pa, lambda_ho
        self.variant, self.pool_scale, self.pool_kernel = variant, pool_scale, pool_kernel
        self.pixelwise_variant = pixelwise_variant
        self.holistic = None
        if lambda_ho != 0:
            self.holistic = HolisticAdversarialTerm(
                num_classes, adv_loss=adv_loss, lambda_g=lambda_ho, lambda_d=lambda_d, lambda_gp=lambda_gp,
                condition_on_image=condition_on_image, input_stride=adv_input_stride, d_optimizer=d_optimizer,
                lr_d=lr_d, weight_decay=d_weight_decay, lr_schedule=d_lr_schedule)
        points = set()
        if lambda_pi != 0 or lambda_ho != 0:
            points.add(logits_point)
        if lambda_pa != 0:
            points.add("decoder")
        self.student_points = sorted(points)
        self.teacher_points = sorted(points)

    def forward(self, student: dict, teacher: dict, batch: Batch) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.lambda_pi != 0:
            s, t = student[self.logits_point], teacher[self.logits_point]
            loss = pixel_kd(s, t, 1.0) if self.pixelwise_variant == "paper" else pixelwise_official_loss(s, t)
            terms["pixelwise"] = self.lambda_pi * loss
        if self.lambda_pa != 0:
            s, t = student["decoder"], teacher["decoder"]
            if s.shape[-2:] != t.shape[-2:]:
                s = resize_to(s, t)
            terms["pairwise"] = self.lambda_pa * pairwise_similarity_loss(
                s, t, self.variant, self.pool_kernel, self.pool_scale)
        if self.holistic is not None:
            terms["holistic"] = self.holistic.generator_loss(student[self.logits_point], batch.images)
        return terms

    def separate_step(self, student: dict, teacher: dict, batch: Batch) -> dict[str, float]:
        if self.holistic is None:
            return {}
        return self.holistic.discriminator_step(student[self.logits_point], teacher[self.logits_point], batch)

    def student_optimizer_parameters(self):
        own = self.holistic.own_parameter_ids() if self.holistic is not None else set()
        return (p for p in self.parameters() if p.requires_grad and id(p) not in own)

    @classmethod
    def reference_loss(cls, case_method: str, inputs: dict[str, torch.Tensor], params: dict[str, Any]) -> dict:
        if case_method == "skds_pixelwise":
            return {"loss": pixelwise_official_loss(inputs["student_logits"], inputs["teacher_logits"])}
        if case_method == "skds_pairwise":
            kernel = params.get("pool_kernel", 2)
            kernel = tuple(kernel) if isinstance(kernel, list | tuple) else kernel
            loss = pairwise_similarity_loss(inputs["student_feat"], inputs["teacher_feat"], params["variant"],
                                            kernel, params.get("pool_scale", 0.5))
            return {"loss": loss}
        raise ValueError(f"skds answers skds_pairwise and skds_pixelwise, not {case_method!r}")
