"""Joint image/label transforms, as the papers use them, on torchvision's transforms v2.

Training: random scale (default 0.5-2.0), padding to the crop size (image 0, label 255, bottom-right as
in the papers' code), random crop, horizontal flip, ImageNet normalisation. Evaluation: full resolution, or resized to a suite-given size
(labels always with nearest neighbour: v2 resizes a ``tv_tensors.Mask`` with NEAREST).

Randomness comes from torch's global generator; the loader seeds it per sample
(:mod:`benchmark.engine.loader`), so augmentation is a function of (seed, epoch, index).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from benchmark.data.base import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomScale:
    """Resize image and mask by one factor drawn uniformly from ``scale_range``."""

    def __init__(self, scale_range: Sequence[float] = (0.5, 2.0)):
        self.low, self.high = float(scale_range[0]), float(scale_range[1])

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask):
        if self.low == self.high == 1.0:
            return image, mask
        factor = self.low + (self.high - self.low) * torch.rand(()).item()
        height, width = image.shape[-2:]
        size = [max(1, round(height * factor)), max(1, round(width * factor))]
        return F.resize(image, size, antialias=True), F.resize(mask, size)


class PadBottomRight:
    """Pad image (with 0) and mask (with the ignore index) on the right and bottom up to ``crop``.

    Where the papers' code pads (CIRKD ``ImageOps.expand(border=(0, 0, padw, padh))``, mmseg ``Pad``), it pads
    bottom-right, so the scaled image sits in the crop's top-left corner; torchvision's ``pad_if_needed`` would
    pad both sides and move it around, which is a different augmentation.
    """

    def __init__(self, crop: Sequence[int], ignore_index: int = IGNORE_INDEX):
        self.height, self.width = int(crop[0]), int(crop[1])
        self.ignore_index = ignore_index

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask):
        height, width = image.shape[-2:]
        pad_h, pad_w = max(0, self.height - height), max(0, self.width - width)
        if pad_h == 0 and pad_w == 0:
            return image, mask
        padding = [0, 0, pad_w, pad_h]  # left, top, right, bottom
        return F.pad(image, padding, fill=0), F.pad(mask, padding, fill=self.ignore_index)


class TrainTransform:
    """Random scale, bottom-right padding to the crop, random crop, horizontal flip, normalisation."""

    def __init__(
        self,
        crop: Sequence[int],
        scale_range: Sequence[float] = (0.5, 2.0),
        flip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = IGNORE_INDEX,
    ):
        self.scale = RandomScale(scale_range)
        self.pad = PadBottomRight(crop, ignore_index)
        steps = [v2.RandomCrop(list(crop))]
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        self.rest = v2.Compose(steps)
        self.finish = Finish(mean, std)

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask):
        mask = compact(mask)
        image, mask = self.scale(image, mask)
        image, mask = self.pad(image, mask)
        image, mask = self.rest(image, mask)
        return self.finish(image, mask)


class EvalTransform:
    """Full resolution by default; ``size`` (h, w) resizes exactly, an int resizes the short side."""

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        self.size = [size] if isinstance(size, int) else (list(size) if size is not None else None)
        self.finish = Finish(mean, std)

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask):
        if self.size is not None:
            image, mask = F.resize(image, self.size, antialias=True), F.resize(compact(mask), self.size)
        return self.finish(image, mask)


def compact(mask: tv_tensors.Mask) -> tv_tensors.Mask:
    """The mask as uint8 for the geometric steps: train ids and the ignore value fit in a byte, and a
    1024x2048 mask then moves 2 MB through resize/crop/flip instead of 16 MB; Finish turns it back into int64."""
    if mask.dtype == torch.uint8:
        return mask
    return tv_tensors.Mask(mask.to(torch.uint8))


class Finish:
    """uint8 image -> normalised float; mask -> int64 ``[H, W]``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.normalize = v2.Normalize(list(mean), list(std))

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask):
        image = F.to_dtype(image, torch.float32, scale=True)
        return self.normalize(image).as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long().reshape(
            mask.shape[-2:]
        )
