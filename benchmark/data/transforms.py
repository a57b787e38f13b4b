"""Joint image/label transforms, as the papers' code bases apply them, on torchvision's transforms v2.

Training, by default (CIRKD ``dataset/cityscapes.py`` order): random scale (ratio in 0.5-2.0), padding to the
crop size (bottom-right), random crop, horizontal flip, normalisation. The suite's ``dataset`` keys select the
other code bases' variants, each a fact of some authors' program:

* ``scale_mode: short_side``: pytorch-deeplab-xception ``RandomHorizontalFlip`` then ``RandomScaleCrop`` (the short
  side set to an integer drawn from ``scale_range`` x ``base_size``, the long side floored to keep the aspect), then
  ``RandomGaussianBlur`` when ``gaussian_blur``; AmirMansurian/AttnFD@f090bbe:dataloaders/datasets/pascal.py:85-90.
* ``scale_step``: CIRKD's discrete ratios ``0.5 + randint(0, 15) / 10`` (winycg/CIRKD@2d8ad0f:dataset/cityscapes.py:52).
* ``normalization: bgr_mean``: CIRKD's BGR 0-255 input minus the mean, no std (cityscapes.py:69,79).
* ``image_pad: mean``: CIRKD pads after subtracting the mean, so the padding is the mean colour (cityscapes.py:85-87);
  ``black`` pads the 0-255 image with 0 (pytorch-deeplab-xception ``ImageOps.expand(fill=0)``).
* ``label_pad``: 255 (ignore) or, as pytorch-deeplab-xception's VOC loader, 0 (``RandomScaleCrop(fill=0)``).

Padding goes bottom-right, so the scaled image sits in the crop's top-left corner, as every code base pads
(CIRKD ``cv2.copyMakeBorder(0, pad_h, 0, pad_w)``, pytorch-deeplab-xception ``ImageOps.expand(border=(0, 0, padw,
padh))``); crop offsets are drawn over the padded size. Normalisation runs on the crop (not the scaled image), and
the ``mean`` padding is written after it, where the mean colour is exactly 0. Evaluation: full resolution, or
resized to a suite-given size (an int: the short side, as torchvision ``Resize(int)`` and AttnFD's ``FixedResize``).
Labels are always resized with nearest neighbour (v2 resizes a ``tv_tensors.Mask`` with NEAREST).

Randomness comes from torch's global generator; the loader seeds it per sample
(:mod:`benchmark.engine.loader`), so augmentation is a function of (seed, epoch, index).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from benchmark.data.base import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: CIRKD's per-channel mean in BGR order, 0-255 (winycg/CIRKD@2d8ad0f:dataset/cityscapes.py:79, voc.py:69).
BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)


class RandomScale:
    """Resize image and mask by one factor: uniform in ``scale_range``, or one of its ``step``-spaced values."""

    def __init__(self, scale_range: Sequence[float] = (0.5, 2.0), step: float | None = None, antialias: bool = True):
        self.low, self.high = float(scale_range[0]), float(scale_range[1])
        self.step, self.antialias = step, antialias
        self.count = round((self.high - self.low) / step) + 1 if step else 0

    def factor(self) -> float:
        if self.step:
            return self.low + int(torch.randint(0, self.count, ())) * self.step
        return self.low + (self.high - self.low) * torch.rand(()).item()

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask):
        if self.low == self.high == 1.0:
            return image, mask
        factor = self.factor()
        height, width = image.shape[-2:]
        size = [max(1, round(height * factor)), max(1, round(width * factor))]
        return F.resize(image, size, antialias=self.antialias), F.resize(mask, size)


class RandomShortSide:
    """pytorch-deeplab-xception ``RandomScaleCrop``'s scaling: short side = randint(int(base*low), int(base*high)).

    The long side is ``int(long * short / short_before)`` (floored), as the code computes it
    (AmirMansurian/AttnFD@f090bbe:dataloaders/custom_transforms.py:99-108).
    """

    def __init__(self, base_size: int, scale_range: Sequence[float] = (0.5, 2.0), antialias: bool = True):
        self.low, self.high = int(base_size * scale_range[0]), int(base_size * scale_range[1])
        self.antialias = antialias

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask):
        short = int(torch.randint(self.low, self.high + 1, ()))
        height, width = image.shape[-2:]
        if height > width:
            size = [int(height * short / width), short]
        else:
            size = [short, int(width * short / height)]
        return F.resize(image, size, antialias=self.antialias), F.resize(mask, size)


def crop_offsets(height: int, width: int, crop: Sequence[int]) -> tuple[int, int]:
    """Top-left corner of a random crop of the image padded bottom-right to at least ``crop``.

    Drawn as torchvision's ``RandomCrop`` draws it (top, then left; no draw where the padded side equals the
    crop), so the default pipeline consumes the generator exactly as before these options existed.
    """
    padded_h, padded_w = max(height, crop[0]), max(width, crop[1])
    top = int(torch.randint(0, padded_h - crop[0] + 1, ())) if padded_h > crop[0] else 0
    left = int(torch.randint(0, padded_w - crop[1] + 1, ())) if padded_w > crop[1] else 0
    return top, left


def pad_bottom_right(tensor: torch.Tensor, crop: Sequence[int], fill: float) -> torch.Tensor:
    height, width = tensor.shape[-2:]
    pad_h, pad_w = max(0, crop[0] - height), max(0, crop[1] - width)
    if pad_h == 0 and pad_w == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, pad_w, 0, pad_h), value=fill)  # (left, right, top, bottom)


def random_flip(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip with probability 0.5 (one draw, as v2.RandomHorizontalFlip)."""
    if torch.rand(1) < 0.5:
        return F.horizontal_flip(image), F.horizontal_flip(mask)
    return image, mask


def random_gaussian_blur(image: torch.Tensor) -> torch.Tensor:
    """pytorch-deeplab-xception ``RandomGaussianBlur``: p = 0.5, sigma = U(0, 1)
    (AmirMansurian/AttnFD@f090bbe:dataloaders/custom_transforms.py:77-83).

    The code blurs with PIL's ``GaussianBlur(radius=sigma)`` (box passes approximating the Gaussian); this is
    torchvision's Gaussian kernel with the same sigma, 2*ceil(3*sigma)+1 wide.
    """
    if torch.rand(()) >= 0.5:
        return image
    sigma = float(torch.rand(()))
    if sigma < 1e-3:  # a kernel that narrow is the identity to 8-bit precision
        return image
    size = 2 * math.ceil(3 * sigma) + 1
    return F.gaussian_blur(image, [size, size], [sigma, sigma])


class Normalize:
    """uint8 RGB ``[3, H, W]`` -> float: ImageNet mean/std on [0, 1], or CIRKD's BGR 0-255 minus ``BGR_MEAN``."""

    def __init__(self, normalization: str = "imagenet"):
        if normalization not in ("imagenet", "bgr_mean"):
            raise ValueError(f"normalization must be 'imagenet' or 'bgr_mean', got {normalization!r}")
        self.normalization = normalization
        self._bgr_mean = torch.tensor(BGR_MEAN, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.normalization == "imagenet":
            return F.normalize(F.to_dtype(image, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD))
        return F.to_dtype(image, torch.float32, scale=False).flip(-3) - self._bgr_mean


class TrainTransform:
    """Scale, pad bottom-right + random crop, flip (before scaling in ``short_side`` mode), blur, normalise."""

    def __init__(
        self,
        crop: Sequence[int],
        scale_range: Sequence[float] = (0.5, 2.0),
        flip: bool = True,
        ignore_index: int = IGNORE_INDEX,
        *,
        normalization: str = "imagenet",
        scale_mode: str = "ratio",
        scale_step: float | None = None,
        base_size: int | None = None,
        image_pad: str = "black",
        label_pad: int | None = None,
        gaussian_blur: bool = False,
        resize_antialias: bool = True,
    ):
        self.crop = (int(crop[0]), int(crop[1]))
        if scale_mode == "short_side":
            if base_size is None:
                raise ValueError("scale_mode short_side needs base_size")
            self.scale = RandomShortSide(base_size, scale_range, resize_antialias)
        elif scale_mode == "ratio":
            self.scale = RandomScale(scale_range, scale_step, resize_antialias)
        else:
            raise ValueError(f"scale_mode must be 'ratio' or 'short_side', got {scale_mode!r}")
        self.flip_first = flip and scale_mode == "short_side"
        self.flip_last = flip and scale_mode != "short_side"
        if image_pad not in ("black", "mean"):
            raise ValueError(f"image_pad must be 'black' or 'mean', got {image_pad!r}")
        self.image_pad, self.blur = image_pad, gaussian_blur
        self.label_pad = ignore_index if label_pad is None else label_pad
        self.normalize = Normalize(normalization)

    @classmethod
    def from_config(cls, dataset: dict[str, Any], ignore_index: int = IGNORE_INDEX) -> TrainTransform:
        """From a resolved ``dataset`` config (:class:`benchmark.suite.DatasetConfig`)."""
        return cls(dataset["crop"], dataset["scale_range"], dataset["flip"], ignore_index,
                   normalization=dataset["normalization"], scale_mode=dataset["scale_mode"],
                   scale_step=dataset["scale_step"], base_size=dataset["base_size"], image_pad=dataset["image_pad"],
                   label_pad=dataset["label_pad"], gaussian_blur=dataset["gaussian_blur"],
                   resize_antialias=dataset["resize_antialias"])

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = image.as_subclass(torch.Tensor), compact(mask)
        if self.flip_first:
            image, mask = random_flip(image, mask)
        image, mask = self.scale(tv_tensors.Image(image), mask)
        image, mask = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        top, left = crop_offsets(*image.shape[-2:], self.crop)
        image = image[..., top : top + self.crop[0], left : left + self.crop[1]]
        mask = pad_bottom_right(mask[..., top : top + self.crop[0], left : left + self.crop[1]], self.crop,
                                self.label_pad)
        if self.image_pad == "black":
            image = pad_bottom_right(image, self.crop, 0)
        else:  # the mean colour is 0 only after normalising; pad before the flip, which may move the strip left
            image = pad_bottom_right(self.normalize(image), self.crop, 0.0)
        if self.flip_last:
            image, mask = random_flip(image, mask)
        if self.blur:
            image = random_gaussian_blur(image)
        if self.image_pad == "black":
            image = self.normalize(image)
        return image, finish_mask(mask)


def finish_mask(mask: torch.Tensor) -> torch.Tensor:
    return mask.long().reshape(mask.shape[-2:])


class EvalTransform:
    """Full resolution by default; ``size`` (h, w) resizes exactly, an int resizes the short side."""

    def __init__(self, size: int | Sequence[int] | None = None, normalization: str = "imagenet",
                 antialias: bool = True):
        self.size = [size] if isinstance(size, int) else (list(size) if size is not None else None)
        self.normalize, self.antialias = Normalize(normalization), antialias

    @classmethod
    def from_config(cls, dataset: dict[str, Any]) -> EvalTransform:
        return cls(dataset["eval_size"], dataset["normalization"], dataset["resize_antialias"])

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[torch.Tensor, torch.Tensor]:
        mask = compact(mask)
        if self.size is not None:
            image, mask = F.resize(image, self.size, antialias=self.antialias), F.resize(mask, self.size)
        return self.normalize(image.as_subclass(torch.Tensor)), finish_mask(mask.as_subclass(torch.Tensor))


def compact(mask: tv_tensors.Mask) -> tv_tensors.Mask:
    """The mask as uint8 for the geometric steps: train ids and the ignore value fit in a byte, and a
    1024x2048 mask then moves 2 MB through resize/crop/flip instead of 16 MB; the end turns it back into int64."""
    if mask.dtype == torch.uint8:
        return mask
    return tv_tensors.Mask(mask.to(torch.uint8))
