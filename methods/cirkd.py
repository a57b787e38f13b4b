"""Cross-Image Relational Knowledge Distillation (CIRKD)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.engine.distributed import all_gather_cat
from benchmark.registry import METHODS
from methods.base import Batch, DistillationMethod, check_logits_point, resize_to
from methods.ifvd import labels_to_feature_size
from methods.kd import pixel_kd


def minibatch_pixel_pair_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor,
                              temperature: float) -> torch.Tensor:
    """CIRKD Eq. (3)-(5), the mini-batch pixel-to-pixel term.

    For every ordered pair of images (i, j): A_ij = F̂_iᵀ F̂_j (N×N cosine similarities), row-softmax at
    temperature τ; (1/N) Σ_m KL(P^t_m ‖ P^s_m), averaged over the B² pairs. Channels may differ.
    Loops over the anchor image i only (each step holds a [B, N, N] block, never B²·N²).
    """
    batch = student_feat.shape[0]
    s = F.normalize(student_feat.flatten(2), p=2, dim=1)  # [B, C_s, N]
    t = F.normalize(teacher_feat.flatten(2), p=2, dim=1)
    positions = s.shape[-1]
    total = student_feat.new_zeros(())
    for i in range(batch):
        s_logits = (s[i].T @ s) / temperature  # [B, N, N]: row m = position m of image i vs image j
        t_logits = (t[i].T @ t) / temperature
        log_q = F.log_softmax(s_logits, dim=-1)
        log_p = F.log_softmax(t_logits, dim=-1)
        total = total + (log_p.exp() * (log_p - log_q)).sum() / positions
    return total / (batch * batch)


def grouped_minibatch_pixel_pair_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, temperature: float,
                                      group_size: int) -> torch.Tensor:
    """The mini-batch term with pairs formed only inside consecutive groups of ``group_size`` images, averaged
    over the groups: CIRKD's code computes it per GPU (its all-gather is commented out, losses/cirkd_mini_batch.py:
    59-60), i.e. over each process's 2 images in the 8 x 2 setup, and DDP averages the processes' gradients. The
    last group is smaller when ``group_size`` does not divide the batch; ``group_size`` 0 pairs the whole batch."""
    batch = student_feat.shape[0]
    if group_size == 0 or group_size >= batch:
        return minibatch_pixel_pair_loss(student_feat, teacher_feat, temperature)
    losses = [minibatch_pixel_pair_loss(s, t, temperature)
              for s, t in zip(student_feat.split(group_size), teacher_feat.split(group_size))]
    return torch.stack(losses).mean()


def contrast_kd(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/τ) ‖ softmax(s/τ)) · τ², averaged over anchors (rows)."""
    log_q = F.log_softmax(s_logits / temperature, dim=1)
    log_p = F.log_softmax(t_logits / temperature, dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * temperature**2


@METHODS.register("cirkd")
class CIRKD(DistillationMethod):
    """CIRKD: pixel-to-pixel and pixel-to-region similarity distributions across images, teacher to student.

    Yang, Zhou, Wang, Zhang, Wang, Tian, "Cross-Image Relational Knowledge Distillation for Semantic
    Segmentation", CVPR 2022. Terms returned (already weighted), on the ``decoder`` points (the feature
    before the classifier, CIRKD's ``outputs[-1]``) and ``kd_point``:

    - ``kd`` = ``lambda_kd`` · pixel KD at ``kd_temperature`` (the paper's L_kd, Eq. 9; 0 drops it), on
      ``kd_point``: ``logits:pre_upsample`` (default), the stride-8 logits ``outputs[0]`` that train_cirkd.py:311
      distils (CIRKD's models return their logits before upsampling, models/deeplabv3.py:45-53), or ``logits``.
    - ``minibatch_pixel`` = ``lambda_minibatch_pixel`` · mini-batch pixel-to-pixel term (Eq. 3-5): row-
      softmax(F̂_iᵀF̂_j / τ) of every image pair, KL teacher ‖ student, no projection (each network's own
      Gram, channels may differ). Pairs are formed within groups of ``minibatch_group_size`` consecutive
      images of the process's batch and the groups averaged: 2 is the code's (per GPU, 16 images on 8 GPUs,
      losses/cirkd_mini_batch.py:59-60 leave the all-gather commented out), 0 pairs every image of the batch
      (the paper's "mini-batch"). ``minibatch_pool`` > 1 average-pools both maps first (CIRKD's optional
      ``pooling``, off in its script; useful for stride-4 decoders whose N² is 4x a stride-8 one).
    - ``memory_pixel`` / ``memory_region`` = λ · memory-based pixel-to-pixel / pixel-to-region terms (Eq. 6-8):
      the student embedding is a projection head (1x1 conv C_s→C_t, BN, ReLU, 1x1 conv C_t→C_t, trained with
      the student) then L2-normalised; the teacher embedding is the normalised teacher map. Anchors are the
      non-ignored pixels of the batch (labels nearest-resized). Contrast sets are sampled from class-wise
      queues of teacher embeddings: ``pixel_contrast_size`` // K + 1 pixel entries and
      ``region_contrast_size`` // K + 1 region entries per class (the script's division, done here), the same
      random slots for every class. Logits = anchor · entryᵀ / ``contrast_temperature``; the loss is
      KL at ``contrast_kd_temperature`` · τ², averaged over anchors.
    - The memory (CIRKD ``_dequeue_and_enqueue``), updated with the current batch's teacher embeddings
      before the contrast (as the code does): per image and present class, the normalised class-mean
      (region) enters the region queue at its pointer (circular); up to 16 random pixels of the class
      (``pixel_update_freq``) enter the pixel queue at its pointer, or the last 16 slots when the pointer
      would pass the end, which then resets to 0 (the code's wrap rule). Queues start as random unit
      vectors, as in the code. They are persistent buffers ``teacher_pixel_queue`` [K, pixel_memory_size,
      C_t], ``teacher_segment_queue`` [K, region_memory_size, C_t] and their pointers, so checkpoints hold
      them and a resumed run continues the same memory.

    Defaults: CIRKD's ``train_cirkd.py``: λ_kd 1 (τ_kd 1), λ_minibatch 1, λ_memory_pixel 0.1,
    λ_memory_region 0.1, contrast temperature 0.1, contrast-KD temperature 1, pixel memory 20000, region
    memory 2000, pixel contrast 4096, region contrast 1024. Open choices: if student and teacher maps differ
    in size, the student map is resized (bilinear) to the teacher's; a batch with no labelled pixel gives
    0 for the memory terms (as the code) but still updates nothing in the memory. Under torchrun every process
    enqueues the teacher embeddings and labels of all processes, gathered in rank order
    (losses/cirkd_memory.py:78-79), while its anchors stay its own images (as the code).
    """

    paper = ("Yang et al., Cross-Image Relational Knowledge Distillation for Semantic Segmentation, CVPR 2022 "
             "(Eq. 3-9); defaults of its train_cirkd.py")
    reference_names = ("cirkd",)

    def __init__(self, student_points, teacher_points, num_classes, *, lambda_kd: float = 1.0,
                 kd_temperature: float = 1.0, lambda_minibatch_pixel: float = 1.0,
                 lambda_memory_pixel: float = 0.1, lambda_memory_region: float = 0.1,
                 contrast_temperature: float = 0.1, contrast_kd_temperature: float = 1.0,
                 pixel_memory_size: int = 20000, region_memory_size: int = 2000, pixel_contrast_size: int = 4096,
                 region_contrast_size: int = 1024, pixel_update_freq: int = 16, minibatch_pool: int = 1,
                 minibatch_group_size: int = 2, kd_point: str = "logits:pre_upsample"):
        super().__init__(student_points, teacher_points, num_classes)
        if minibatch_group_size < 0:
            raise ValueError(f"cirkd: minibatch_group_size must be >= 0 (0: the whole batch), got {minibatch_group_size}")
        self.minibatch_group_size = minibatch_group_size
        self.kd_point = check_logits_point("cirkd", kd_point)
        for name, value in (("contrast_temperature", contrast_temperature), ("kd_temperature", kd_temperature),
                            ("contrast_kd_temperature", contrast_kd_temperature)):
            if value <= 0:
                raise ValueError(f"cirkd: {name} must be > 0, got {value}")
        if min(pixel_memory_size, region_memory_size, pixel_update_freq, minibatch_pool) < 1:
            raise ValueError("cirkd: memory sizes, pixel_update_freq and minibatch_pool must be >= 1")
        if pixel_update_freq > pixel_memory_size:
            raise ValueError(f"cirkd: pixel_update_freq {pixel_update_freq} > pixel_memory_size {pixel_memory_size}")
        self.lambda_kd, self.kd_temperature = lambda_kd, kd_temperature
        self.lambda_minibatch_pixel = lambda_minibatch_pixel
        self.lambda_memory_pixel, self.lambda_memory_region = lambda_memory_pixel, lambda_memory_region
        self.contrast_temperature, self.contrast_kd_temperature = contrast_temperature, contrast_kd_temperature
        self.pixel_memory_size, self.region_memory_size = pixel_memory_size, region_memory_size
        self.pixel_contrast_per_class = pixel_contrast_size // num_classes + 1
        self.region_contrast_per_class = region_contrast_size // num_classes + 1
        self.pixel_update_freq, self.minibatch_pool = pixel_update_freq, minibatch_pool

        self.use_memory = lambda_memory_pixel != 0 or lambda_memory_region != 0
        s_channels, t_channels = student_points["decoder"].channels, teacher_points["decoder"].channels
        if self.use_memory:
            self.project_head = nn.Sequential(
                nn.Conv2d(s_channels, t_channels, 1, bias=False),
                nn.BatchNorm2d(t_channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(t_channels, t_channels, 1, bias=False),
            )
            # persistent buffers: the memory is training state and must survive a resume
            self.register_buffer("teacher_pixel_queue",
                                 F.normalize(torch.randn(num_classes, pixel_memory_size, t_channels), dim=2))
            self.register_buffer("pixel_queue_ptr", torch.zeros(num_classes, dtype=torch.long))
            self.register_buffer("teacher_segment_queue",
                                 F.normalize(torch.randn(num_classes, region_memory_size, t_channels), dim=2))
            self.register_buffer("segment_queue_ptr", torch.zeros(num_classes, dtype=torch.long))
        points = ["decoder"] if (self.use_memory or lambda_minibatch_pixel != 0) else []
        if lambda_kd != 0:
            points.append(kd_point)
        self.student_points = list(points)
        self.teacher_points = list(points)

    # --- memory --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _dequeue_and_enqueue(self, teacher_embed: torch.Tensor, labels: torch.Tensor) -> None:
        """Push the batch's teacher embeddings (already normalised, [B, C, h, w]) into the class queues."""
        classes, freq = self.num_classes, self.pixel_update_freq
        teacher_embed, labels = all_gather_cat(teacher_embed), all_gather_cat(labels)
        feats = teacher_embed.flatten(2).to(self.teacher_pixel_queue.dtype)  # [B, C, N]
        y = labels.flatten(1)  # [B, N]
        valid = (y >= 0) & (y < classes)
        y_safe = torch.where(valid, y, classes)  # ignored -> an extra class sorted last
        arange_k = torch.arange(classes, device=y.device)
        for b in range(feats.shape[0]):  # images in order: the pointers advance image by image, as in the code
            f, yb = feats[b], y_safe[b]
            onehot = F.one_hot(yb, classes + 1)[:, :classes].to(f.dtype)  # [N, K]
            counts = onehot.sum(0)  # [K]
            present = counts > 0
            # region queue: the normalised class mean at the class's pointer
            means = F.normalize((f @ onehot).T / counts.clamp_min(1)[:, None], dim=1)  # [K, C]
            ptr = self.segment_queue_ptr
            k_idx = arange_k[present]
            self.teacher_segment_queue[k_idx, ptr[present]] = means[present]
            self.segment_queue_ptr.copy_(torch.where(present, (ptr + 1) % self.region_memory_size, ptr))
            # pixel queue: up to `freq` random pixels per class. Sort by (class, random key): each class's
            # pixels are contiguous in random order, and the first `freq` of each run are the sample.
            order = torch.argsort(yb.to(torch.float64) + torch.rand(yb.shape, device=yb.device, dtype=torch.float64))
            sorted_y = yb[order]
            starts = torch.cumsum(counts.long(), 0) - counts.long()  # [K]
            rank = torch.arange(order.numel(), device=y.device) - torch.cat([starts, starts.new_zeros(1)])[sorted_y]
            take = (sorted_y < classes) & (rank < freq)
            cls, rank, pix = sorted_y[take], rank[take], order[take]
            k_count = counts.long().clamp(max=freq)  # K_k = min(n_k, freq)
            ptr = self.pixel_queue_ptr
            wraps = ptr + k_count >= self.pixel_memory_size
            start = torch.where(wraps, self.pixel_memory_size - k_count, ptr)
            self.teacher_pixel_queue[cls, start[cls] + rank] = F.normalize(f[:, pix].T, dim=1)
            new_ptr = torch.where(wraps, torch.zeros_like(ptr), (ptr + k_count) % self.pixel_memory_size)
            self.pixel_queue_ptr.copy_(torch.where(present, new_ptr, ptr))

    def _sample(self, queue: torch.Tensor, per_class: int) -> torch.Tensor:
        """The same random slots from every class's queue: [K · n, C] (class-major, as the code)."""
        index = torch.randperm(queue.shape[1], device=queue.device)[:per_class]
        return queue[:, index].reshape(-1, queue.shape[-1])

    def _memory_terms(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, labels: torch.Tensor):
        s = F.normalize(self.project_head(student_feat), p=2, dim=1)
        t = F.normalize(teacher_feat, p=2, dim=1)
        small = labels_to_feature_size(labels, tuple(s.shape[-2:]))
        self._dequeue_and_enqueue(t.detach(), small)
        y = small.flatten()
        valid = (y >= 0) & (y < self.num_classes)
        if not bool(valid.any()):  # no labelled anchor: zero terms that keep the graph (as the code)
            zero = 0.0 * s.pow(2).mean()
            return zero, zero
        s_anchor = s.permute(0, 2, 3, 1).reshape(-1, s.shape[1])[valid]
        t_anchor = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])[valid].to(s_anchor.dtype)
        terms = []
        for queue, per_class in ((self.teacher_pixel_queue, self.pixel_contrast_per_class),
                                 (self.teacher_segment_queue, self.region_contrast_per_class)):
            entries = self._sample(queue, per_class).to(s_anchor.dtype)
            s_logits = s_anchor @ entries.T / self.contrast_temperature
            t_logits = t_anchor @ entries.T / self.contrast_temperature
            terms.append(contrast_kd(s_logits, t_logits.detach(), self.contrast_kd_temperature))
        return terms[0], terms[1]

    # --- forward -------------------------------------------------------------------------------------------

    def forward(self, student: dict, teacher: dict, batch: Batch) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.lambda_kd != 0:
            terms["kd"] = self.lambda_kd * pixel_kd(student[self.kd_point], teacher[self.kd_point], self.kd_temperature)
        if not (self.use_memory or self.lambda_minibatch_pixel != 0):
            return terms
        s, t = student["decoder"], teacher["decoder"]
        if s.shape[-2:] != t.shape[-2:]:
            s = resize_to(s, t)
        if self.lambda_minibatch_pixel != 0:
            s_mb, t_mb = s, t
            if self.minibatch_pool > 1:
                k = self.minibatch_pool
                s_mb = F.avg_pool2d(s, k, k, ceil_mode=True)
                t_mb = F.avg_pool2d(t, k, k, ceil_mode=True)
            terms["minibatch_pixel"] = self.lambda_minibatch_pixel * grouped_minibatch_pixel_pair_loss(
                s_mb, t_mb, self.contrast_temperature, self.minibatch_group_size)
        if self.use_memory:
            pixel, region = self._memory_terms(s, t, batch.labels)
            if self.lambda_memory_pixel != 0:
                terms["memory_pixel"] = self.lambda_memory_pixel * pixel
            if self.lambda_memory_region != 0:
                terms["memory_region"] = self.lambda_memory_region * region
        return terms

    @classmethod
    def reference_loss(cls, case_method: str, inputs: dict[str, torch.Tensor], params: dict[str, Any]) -> dict:
        term = params.get("term", "minibatch_pixel_pair")
        if term != "minibatch_pixel_pair":
            raise ValueError(f"cirkd: only the minibatch_pixel_pair term has reference cases, not {term!r}")
        return {"loss": minibatch_pixel_pair_loss(inputs["student_feat"], inputs["teacher_feat"],
                                                  params["temperature"])}
