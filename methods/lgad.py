"""LGAD: local and global attention distillation (block-wise channel attention on features and outputs)."""

from __future__ import annotations

import torch
from torch import nn

from benchmark.registry import METHODS
from methods.base import Batch, DistillationMethod, resize_to


def local_block_ids(height: int, width: int, blocks: int, device=None) -> torch.Tensor:
    """Block index of every position (row-major, [H·W]) for a P×P split into contiguous windows.

    Row i goes to window ⌊i·P/H⌋: exactly the H/P-row bands when P divides H, near-equal bands otherwise."""
    rows = torch.arange(height, device=device) * blocks // height
    cols = torch.arange(width, device=device) * blocks // width
    return (rows[:, None] * blocks + cols[None, :]).reshape(-1)


def global_block_ids(height: int, width: int, blocks: int, device=None) -> torch.Tensor:
    """Block index of every position for a G×G split into dilated groups: position (i, j) belongs to group
    (i mod G, j mod G), so each group is a stride-G lattice of pixels spread over the whole map."""
    rows = torch.arange(height, device=device) % blocks
    cols = torch.arange(width, device=device) % blocks
    return (rows[:, None] * blocks + cols[None, :]).reshape(-1)


def block_log_softmax(x: torch.Tensor, ids: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """log softmax over the positions of each block, per (image, channel): x [B, C, N], ids [N] -> [B, C, N]."""
    index = ids.expand_as(x)
    shape = (*x.shape[:2], num_blocks)
    # The per-block maximum is only a numerical shift; softmax does not depend on it, so no gradient through it.
    peak = torch.full(shape, float("-inf"), dtype=x.dtype, device=x.device)
    peak = peak.scatter_reduce(2, index, x.detach(), reduce="amax").gather(2, index)
    shifted = x - peak
    total = torch.zeros(shape, dtype=x.dtype, device=x.device).scatter_add(2, index, shifted.exp())
    return shifted - total.log().gather(2, index)


def block_attention_kl(student: torch.Tensor, teacher: torch.Tensor, ids: torch.Tensor, num_blocks: int,
                       temperature: float, occupied: int | None = None) -> torch.Tensor:
    """τ² · mean over (image, channel, block) of KL(φ_T ‖ φ_S), φ = softmax of X/τ over the block's positions.

    ``ids`` in [0, num_blocks); ``occupied`` is the number of non-empty blocks (a map narrower than P has empty
    ones, which must not dilute the mean). With one block (P = G = 1) this is channel-wise distillation (Shu et al.,
    ICCV 2021) exactly."""
    if student.shape != teacher.shape:
        raise ValueError(f"lgad: student {tuple(student.shape)} != teacher {tuple(teacher.shape)}")
    batch, channels = student.shape[:2]
    log_q = block_log_softmax(student.float().reshape(batch, channels, -1) / temperature, ids, num_blocks)
    log_p = block_log_softmax(teacher.float().reshape(batch, channels, -1) / temperature, ids, num_blocks)
    kl = (log_p.exp() * (log_p - log_q)).sum()
    return kl * temperature**2 / (batch * channels * (occupied or num_blocks))


def local_global_terms(student: torch.Tensor, teacher: torch.Tensor, P: int, G: int, temperature: float,
                       local: bool = True, glob: bool = True) -> dict[str, torch.Tensor]:
    """The unweighted local (P×P windows) and global (G×G dilated groups) block-attention losses of one map pair."""
    height, width = teacher.shape[-2:]
    terms = {}
    if local:
        ids = local_block_ids(height, width, P, teacher.device)
        occupied = min(P, height) * min(P, width)
        terms["local"] = block_attention_kl(student, teacher, ids, P * P, temperature, occupied)
    if glob:
        ids = global_block_ids(height, width, G, teacher.device)
        occupied = min(G, height) * min(G, width)
        terms["global"] = block_attention_kl(student, teacher, ids, G * G, temperature, occupied)
    return terms


@METHODS.register("lgad")
class LGAD(DistillationMethod):
    """LGAD: channel-wise spatial attention distilled within P×P local windows and G×G global dilated groups.

    "LGAD: Local and Global Attention Distillation for Efficient Semantic Segmentation" (Shaoxing University and
    Central South University; authors, venue and year are not in the summary available to us, written 2025-03;
    experiments with PSPNet-R18/B0 students on Cityscapes, CamVid, VOC). No public code exists: this is a reimplementation from the paper's description as
    available to us (a detailed summary; the equations themselves were not available), so every formula below is
    our reading. L = L_seg + λ1·(L_lafd + L_gafd) + λ2·(L_laod + L_gaod), λ1 = 30, λ2 = 3, P = G = 2 (the best of
    the ablation over {1, 2, 4, 8}); each of the four terms has a switch so a suite can enumerate the loss ablation.

    Our reading, with reasons:
    - "Attention" within a block is, for every image and channel, the softmax over the block's positions of X/τ.
      The paper's motivation (positive pixels get attention ≈ 0.0004, the background ≈ 0, diluted by too many
      positive pixels) describes a spatial softmax over the whole map; splitting the map into blocks raises the
      weights and sharpens the contrast inside each block. The distance is KL(teacher ‖ student) times τ², averaged
      over (image, channel, block): with one block it is exactly channel-wise distillation (CWD), which the paper
      compares against and whose loss weights (3 on the logits with τ = 4) match λ2; hence τ = 4 by default.
    - Local blocks: the map split into P×P contiguous windows (row i in window ⌊i·P/H⌋, so sizes not divisible
      by P give near-equal windows). Global blocks: G×G groups of pixels sampled with stride G across the whole map
      (pixel (i, j) in group (i mod G, j mod G)), so each global block sees the entire scene at a coarser lattice;
      otherwise local and global blocks would coincide.
    - Features (L_lafd, L_gafd): one map, ``feature_point`` (default ``decoder``, the feature before the classifier,
      which CWD-family segmentation distillers use; the summary does not name the layer). Channels must correspond
      for channel-wise attention, so a 1×1 convolution (no bias) maps the student's channels to the teacher's when
      they differ (as CWD does); the student's map is resized bilinearly to the teacher's size when they differ.
    - Outputs (L_laod, L_gaod): the ``logits`` point (input resolution). The paper says "output probabilities";
      the block softmax over space is applied to the logits/τ (as CWD does), not to class-softmaxed probabilities.
    """

    paper = ("LGAD: Local and Global Attention Distillation for Efficient Semantic Segmentation (reimplemented from "
             "the paper's description; no public code): L = L_seg + λ1(L_lafd + L_gafd) + λ2(L_laod + L_gaod)")

    def __init__(self, student_points, teacher_points, num_classes, *, lambda1: float = 30.0, lambda2: float = 3.0,
                 P: int = 2, G: int = 2, temperature: float = 4.0, feature_point: str = "decoder",
                 lafd: bool = True, gafd: bool = True, laod: bool = True, gaod: bool = True):
        super().__init__(student_points, teacher_points, num_classes)
        for name, value in (("P", P), ("G", G)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"lgad: {name} (blocks per side) must be an integer >= 1, got {value!r}")
        if temperature <= 0:
            raise ValueError(f"lgad: temperature must be > 0, got {temperature}")
        if lambda1 < 0 or lambda2 < 0:
            raise ValueError(f"lgad: lambda1 and lambda2 must be >= 0, got {lambda1}, {lambda2}")
        if not (lafd or gafd or laod or gaod):
            raise ValueError("lgad: all four terms (lafd, gafd, laod, gaod) are switched off; use method 'none'")
        self.lambda1, self.lambda2, self.P, self.G, self.temperature = lambda1, lambda2, P, G, temperature
        self.lafd, self.gafd, self.laod, self.gaod = lafd, gafd, laod, gaod
        self.feature_point = feature_point
        self.connector: nn.Module | None = None
        if lafd or gafd:
            for side, available in (("student", student_points), ("teacher", teacher_points)):
                if feature_point not in available:
                    raise ValueError(f"lgad: feature_point {feature_point!r} is not a {side} feature point "
                                     f"(available: {', '.join(sorted(available))})")
            s_channels, t_channels = student_points[feature_point].channels, teacher_points[feature_point].channels
            self.connector = (nn.Identity() if s_channels == t_channels
                              else nn.Conv2d(s_channels, t_channels, 1, bias=False))
            self.student_points.append(feature_point)
            self.teacher_points.append(feature_point)
        if laod or gaod:
            self.student_points.append("logits")
            self.teacher_points.append("logits")

    def forward(self, student: dict, teacher: dict, batch: Batch) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.connector is not None:
            feature, target = self.connector(student[self.feature_point]), teacher[self.feature_point]
            if feature.shape[-2:] != target.shape[-2:]:
                feature = resize_to(feature, target)
            parts = local_global_terms(feature, target, self.P, self.G, self.temperature, self.lafd, self.gafd)
            for key, name in (("local", "lafd"), ("global", "gafd")):
                if key in parts:
                    terms[name] = self.lambda1 * parts[key]
        if self.laod or self.gaod:
            parts = local_global_terms(student["logits"], teacher["logits"], self.P, self.G, self.temperature,
                                       self.laod, self.gaod)
            for key, name in (("local", "laod"), ("global", "gaod")):
                if key in parts:
                    terms[name] = self.lambda2 * parts[key]
        return terms
