"""Builders of tiny datasets in the exact on-disk formats of Cityscapes, VOC 2012 + SBD and CamVid (SegNet).

Each builder writes real files (PNG/JPEG/.mat, list files) with the official names and folder layout, at the
official image size where the dataset has one, and returns what it wrote so that tests can compare decoded
samples with the values on disk. Content is blocky (large uniform rectangles) so files are small and fast.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.data.voc import voc_colormap


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread for the data tests (import this fixture into a test module to apply it).

    Their tensors are small, so threads cannot help, and on a loaded 2-core machine OpenMP workers spinning
    against other processes made each small op ~20x slower (measured: 7 s instead of 0.4 s for one test).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blocks(height: int, width: int, values: np.ndarray, block: int, seed: int) -> np.ndarray:
    """A ``uint8 [H, W]`` map of ``block``-sized squares, each holding one value drawn from ``values``."""
    rng = np.random.default_rng(seed)
    grid = rng.choice(values, size=(-(-height // block), -(-width // block))).astype(np.uint8)
    return np.kron(grid, np.ones((block, block), dtype=np.uint8))[:height, :width]


def rgb_for(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """An RGB image whose colour follows the label map (so image and label visibly belong together)."""
    rng = np.random.default_rng(seed)
    lut = rng.integers(20, 236, size=(256, 3), dtype=np.uint8)
    return lut[labels]


def save_png(array: np.ndarray, path: Path, palette: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette is not None:
        image = image.convert("P")  # from mode L: keeps the indices, then attach the colour table
        image.putpalette(palette.reshape(-1).tolist())
    image.save(path)
    return path


# ---------------------------------------------------------------------------------------------------------------


CITYSCAPES_SIZE = (1024, 2048)  # height, width


def make_cityscapes(
    root: Path,
    counts: dict[str, int] | None = None,
    *,
    cities: tuple[str, ...] = ("aachen", "bochum"),
    train_ids_for: tuple[str, ...] = (),
    size: tuple[int, int] = CITYSCAPES_SIZE,
) -> dict[str, np.ndarray]:
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelIds.png``.

    Label maps hold every labelId 0..33 (so ids mapping to 255 occur). For the frame keys in ``train_ids_for``
    (``"<split>/<city>/<frame>"``) a ``*_gtFine_labelTrainIds.png`` is written as well, holding a *different*
    pattern (all 5 = pole), so a test can tell which of the two files was read. Returns key -> labelIds array.
    """
    counts = counts or {"train": 3, "val": 2}
    height, width = size
    written: dict[str, np.ndarray] = {}
    for split, count in counts.items():
        for index in range(count):
            city = cities[index % len(cities)]
            frame = f"{city}_{index:06d}_000019"
            key = f"{split}/{city}/{frame}"
            label_ids = blocks(height, width, np.arange(34), 128, seed=zlib.crc32(key.encode()))
            save_png(rgb_for(label_ids), root / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png")
            save_png(label_ids, root / "gtFine" / split / city / f"{frame}_gtFine_labelIds.png")
            if key in train_ids_for:
                save_png(
                    np.full_like(label_ids, 5), root / "gtFine" / split / city / f"{frame}_gtFine_labelTrainIds.png"
                )
            written[key] = label_ids
    return written


# ---------------------------------------------------------------------------------------------------------------


def voc_label(height: int, width: int, seed: int) -> np.ndarray:
    """Classes 0..20 in blocks, with VOC's 255 band (3 px) around every object, as in SegmentationClass."""
    labels = blocks(height, width, np.arange(21), 16, seed)
    edges = np.zeros_like(labels, dtype=bool)
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edges[1:, :] |= labels[1:, :] != labels[:-1, :]
    band = edges.copy()
    for shift in (1, 2):  # widen the one-pixel edge into a band, as the VOC annotations draw it
        band[:, shift:] |= edges[:, :-shift]
        band[shift:, :] |= edges[:-shift, :]
    labels[band] = 255
    return labels


def make_voc(
    root: Path, train: list[str], val: list[str], *, extra_images: list[str] = (), size: tuple[int, int] = (48, 64)
) -> dict[str, np.ndarray]:
    """``VOCdevkit/VOC2012`` with JPEGImages (every id of train, val and ``extra_images``), palette PNG labels
    for train and val, and ``ImageSets/Segmentation/{train,val}.txt``. Returns id -> label array."""
    voc = root / "VOCdevkit" / "VOC2012"
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    palette = voc_colormap(256)
    labels: dict[str, np.ndarray] = {}
    for index, image_id in enumerate(sorted({*train, *val, *extra_images})):
        label = voc_label(*size, seed=index)
        (voc / "JPEGImages").mkdir(exist_ok=True)
        Image.fromarray(rgb_for(label)).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
        if image_id in train or image_id in val:
            save_png(label, voc / "SegmentationClass" / f"{image_id}.png", palette=palette)
            labels[image_id] = label
    (sets / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (sets / "val.txt").write_text("".join(f"{i}\n" for i in val))
    (sets / "trainval.txt").write_text("".join(f"{i}\n" for i in sorted({*train, *val})))
    return labels


def make_sbd(
    root: Path, train: list[str], val: list[str], *, size: tuple[int, int] = (48, 64)
) -> dict[str, np.ndarray]:
    """``benchmark_RELEASE/dataset`` with ``cls/<id>.mat`` (struct ``GTcls``, fields ``Segmentation``,
    ``Boundaries``, ``CategoriesPresent`` as SBD stores them) and ``train.txt``/``val.txt``. No 255 band: SBD
    has none. Returns id -> Segmentation array."""
    from scipy.io import savemat
    from scipy.sparse import csc_matrix

    dataset = root / "benchmark_RELEASE" / "dataset"
    (dataset / "cls").mkdir(parents=True)
    labels: dict[str, np.ndarray] = {}
    for index, image_id in enumerate(sorted({*train, *val})):
        segmentation = blocks(*size, np.arange(21), 8, seed=1000 + index)
        present = np.unique(segmentation[segmentation > 0]).astype(np.uint8)
        boundaries = np.empty((20, 1), dtype=object)  # SBD: one sparse edge map per class, in a cell array
        for cell in range(20):
            boundaries[cell, 0] = csc_matrix(segmentation == cell + 1)
        savemat(
            dataset / "cls" / f"{image_id}.mat",
            {
                "GTcls": {
                    "Segmentation": segmentation,
                    "Boundaries": boundaries,
                    "CategoriesPresent": present,
                }
            },
        )
        labels[image_id] = segmentation
    (dataset / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (dataset / "val.txt").write_text("".join(f"{i}\n" for i in val))
    return labels


# ---------------------------------------------------------------------------------------------------------------


CAMVID_SIZE = (360, 480)  # height, width


def make_camvid(root: Path, counts: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """The SegNet layout: ``{split}/<name>.png`` RGB 480x360, ``{split}annot/<name>.png`` mode L 0..11, and
    ``{split}.txt`` lists with the authors' absolute paths. Returns ``"<split>/<name>"`` -> label array."""
    counts = counts or {"train": 3, "val": 2, "test": 2}
    written: dict[str, np.ndarray] = {}
    for split, count in counts.items():
        lines = []
        for index in range(count):
            name = f"0001TP_{split}_{index:06d}"
            label = blocks(*CAMVID_SIZE, np.arange(12), 40, seed=len(written))
            save_png(rgb_for(label), root / split / f"{name}.png")
            save_png(label, root / f"{split}annot" / f"{name}.png")
            lines.append(f"/SegNet/CamVid/{split}/{name}.png /SegNet/CamVid/{split}annot/{name}.png\n")
            written[f"{split}/{name}"] = label
        (root / f"{split}.txt").write_text("".join(lines))
    return written
