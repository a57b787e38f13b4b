"""Prediction images: which evaluation images a suite shows, where their PNGs live, how they are coloured.

Written by the training side (:mod:`benchmark.engine.predictions`), read by the report, which imports
only this module (no torch). In a suite's store ``results/<suite>/``::

    samples/<sample key>/<split>-<index>-image.png   the evaluation image at display size, once per dataset config
    samples/<sample key>/<split>-<index>-label.png   its ground truth
    runs/<key>/predictions/<split>-<index>.png       the run's student prediction (last checkpoint)
    teachers/<key>/predictions/<split>-<index>.png   the teacher's (trained here, or loaded from its checkpoint)

Label PNGs are palette ("P" mode) images: the pixel value is the train id, so one file is both the exact
prediction and its coloured picture, in the dataset's standard palette (Cityscapes' labels.py, the VOC
devkit's colour map, SegNet's CamVid colours; see ``benchmark/data/``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

PREDICTIONS = "predictions"
SAMPLES = "samples"
#: Images a suite shows when it names none: this many, spread over the evaluation split.
DEFAULT_COUNT = 3
#: The ignore label's colour: black where the palette does not use it (Cityscapes and CamVid show void in
#: black), else the VOC devkit's border colour (VOC's background is black).
VOID_RGB = (0, 0, 0)
VOID_RGB_IF_BLACK_TAKEN = (224, 224, 192)


def default_indices(length: int, count: int = DEFAULT_COUNT) -> list[int]:
    """``count`` indices at the centres of equal slices of the split (distinct scenes in sequence-ordered splits)."""
    if length <= count:
        return list(range(length))
    return sorted({(2 * i + 1) * length // (2 * count) for i in range(count)})


def check_indices(indices: Sequence[int], length: int, where: str) -> None:
    """Raise ValueError naming ``where`` when an index is outside a split of ``length`` images."""
    outside = [i for i in indices if not 0 <= i < length]
    if outside:
        raise ValueError(f"{where}: {outside} outside the evaluation split's {length} images (valid: 0..{length - 1})")


def ignore_rgb(palette: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    return VOID_RGB_IF_BLACK_TAKEN if tuple(VOID_RGB) in {tuple(c) for c in palette} else VOID_RGB


def display_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) scaled down (never up) so that the longer side is at most ``max_side``."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def label_png(label: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int, size: tuple[int, int]) -> bytes:
    """A train-id map ``[H, W]`` as a palette PNG at ``size`` (nearest neighbour: ids are never blended)."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    table[ignore_index] = ignore_rgb(palette)
    image = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8))  # mode L; a palette makes it P
    image.putpalette(table.reshape(-1).tolist())
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return _png(image)


def image_png(image: np.ndarray, size: tuple[int, int]) -> bytes:
    """An RGB uint8 image ``[H, W, 3]`` as a PNG at ``size`` (antialiased)."""
    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if picture.size != (size[1], size[0]):
        picture = picture.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    return _png(picture)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)  # PIL writes no time or software chunk: same input, same bytes
    return buffer.getvalue()


def prediction_path(folder: Path, split: str, index: int) -> Path:
    return Path(folder) / PREDICTIONS / f"{split}-{index}.png"


def sample_paths(samples_dir: Path, split: str, index: int) -> tuple[Path, Path]:
    """(image, ground truth) PNG paths of one evaluation image."""
    return Path(samples_dir) / f"{split}-{index}-image.png", Path(samples_dir) / f"{split}-{index}-label.png"


def read_label_png(path: Path) -> np.ndarray:
    """The train ids of a stored label PNG (its palette indices)."""
    with Image.open(path) as image:
        return np.asarray(image)
