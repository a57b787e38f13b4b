"""A procedural segmentation dataset: no files, deterministic, built so that capacity matters.

Each image holds 2-5 objects on a textured background. An object's class is the *pair* (shape,
texture): stripes appear on disks and squares, checkers on disks and triangles, so neither the local
texture nor the outline alone decides the class. A model has to combine a texture patch with the
shape around it, which needs receptive field and width: a larger teacher clearly beats a small
student, which is what a distillation benchmark needs. Colours are random per object, so colour is no
cue. Images are generated from (split seed, index), so every process, worker and rerun sees the same
data without storing any.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from benchmark.data.base import CheckReport, DatasetError, DatasetSpec
from benchmark.registry import DATASETS

#: class id -> (shape, texture)
CLASSES = {
    1: ("disk", "hstripes"),
    2: ("square", "hstripes"),
    3: ("disk", "checker"),
    4: ("triangle", "checker"),
    5: ("square", "vstripes"),
    6: ("triangle", "vstripes"),
}
CLASS_NAMES = (
    "background",
    "striped disk",
    "striped square",
    "checked disk",
    "checked triangle",
    "barred square",
    "barred triangle",
)
PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180))
_SPLIT_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    if shape == "disk":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    if shape == "square":
        return (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
    # Upward triangle: inside three half-planes.
    top, bottom = cy - r, cy + r * 0.8
    half_width = (yy - top) / (bottom - top) * r
    return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half_width)


def _texture(texture: str, yy: np.ndarray, xx: np.ndarray, period: int, phase: int) -> np.ndarray:
    if texture == "hstripes":
        return ((yy + phase) // period) % 2 == 0
    if texture == "vstripes":
        return ((xx + phase) // period) % 2 == 0
    return (((yy + phase) // period) + ((xx + phase) // period)) % 2 == 0


def render(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image [H, W, 3] uint8, label [H, W] int64) pair, a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Background: a smooth colour gradient plus noise, so "background" is not one flat colour.
    corner_colours = rng.uniform(40, 200, size=(2, 3))
    ramp = (yy / size)[..., None]
    image = corner_colours[0] * (1 - ramp) + corner_colours[1] * ramp + rng.normal(0, 12, size=(size, size, 3))
    label = np.zeros((size, size), dtype=np.int64)
    yi, xi = yy.astype(np.int64), xx.astype(np.int64)
    for _ in range(rng.integers(2, 6)):
        class_id = int(rng.integers(1, len(CLASSES) + 1))
        shape, texture = CLASSES[class_id]
        radius = rng.uniform(size * 0.12, size * 0.24)
        cy, cx = rng.uniform(radius, size - radius, size=2)
        inside = _shape_mask(shape, yy, xx, cy, cx, radius)
        pattern = _texture(texture, yi, xi, period=int(rng.integers(2, 4)), phase=int(rng.integers(0, 4)))
        light, dark = rng.uniform(150, 255, size=3), rng.uniform(0, 90, size=3)
        colours = np.where(pattern[..., None], light, dark)
        image[inside] = colours[inside] + rng.normal(0, 8, size=(int(inside.sum()), 3))
        label[inside] = class_id
    return np.clip(image, 0, 255).astype(np.uint8), label


#: Rendered samples kept per process, (seed, size) -> (image, label as uint8): a run of the smoke suite reads each
#: training image about five times and every run of a suite reads the same images, so rendering them again was a
#: tenth of a small model's run. Bounded, so a large synthetic configuration renders on demand instead.
_RENDERED: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
_RENDERED_MAX_BYTES = 256 * 2**20
_rendered_bytes = 0


def rendered(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render`, from this process's cache when it holds the sample (the arrays are read-only)."""
    global _rendered_bytes
    key = (seed, size)
    if key in _RENDERED:
        return _RENDERED[key]
    image, label = render(seed, size)
    sample = image, label.astype(np.uint8)  # class ids 0..6
    if _rendered_bytes + image.nbytes + label.size <= _RENDERED_MAX_BYTES:
        for array in sample:
            array.flags.writeable = False
        _RENDERED[key] = sample
        _rendered_bytes += image.nbytes + label.size
    return sample


class SyntheticSegmentation(Dataset):
    def __init__(self, split_seed: int, length: int, size: int):
        self.split_seed, self.length, self.size = split_seed, length, size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(index)
        image, label = rendered(self.split_seed + index, self.size)
        # Copies: the transforms may work in place, and the cached arrays stay as rendered.
        return (tv_tensors.Image(torch.tensor(image).permute(2, 0, 1)),
                tv_tensors.Mask(torch.tensor(label, dtype=torch.int64)))


class SyntheticSpec(DatasetSpec):
    name = "synthetic"
    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES
    palette = PALETTE
    splits = ("train", "val", "test")
    train_split = "train"
    eval_split = "val"
    selection_split = "val"
    needs_root = False

    def options(self) -> dict[str, Any]:
        return {"image_size": 64, "num_train": 256, "num_val": 64, "num_test": 64, "seed": 0}

    @property
    def max_crop(self) -> tuple[int, int]:  # type: ignore[override]
        return (1024, 1024)

    def _resolve(self, options: dict[str, Any]) -> dict[str, Any]:
        resolved = {**self.options(), **options}
        unknown = set(resolved) - set(self.options())
        if unknown:
            raise DatasetError(f"synthetic: unknown options {sorted(unknown)} (known: {sorted(self.options())})")
        for key in ("image_size", "num_train", "num_val", "num_test"):
            if not isinstance(resolved[key], int) or resolved[key] <= 0:
                raise DatasetError(f"synthetic: option {key} must be a positive integer, got {resolved[key]!r}")
        return resolved

    def build(self, split: str, root: Path | None = None, **options: Any) -> Dataset:
        resolved = self._resolve(options)
        parts = split.split("+")
        datasets = []
        for part in parts:
            if part not in self.splits:
                raise DatasetError(f"synthetic: unknown split {part!r} (splits: {list(self.splits)})")
            seed = resolved["seed"] * 10_000_000 + _SPLIT_OFFSETS[part]
            datasets.append(SyntheticSegmentation(seed, resolved[f"num_{part}"], resolved["image_size"]))
        return datasets[0] if len(datasets) == 1 else torch.utils.data.ConcatDataset(datasets)

    def check(self, root: Path | None = None, **options: Any) -> CheckReport:
        resolved = self._resolve(options)
        return CheckReport(self.name, None, counts={s: resolved[f"num_{s}"] for s in self.splits})


DATASETS.register("synthetic")(SyntheticSpec())
