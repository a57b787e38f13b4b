"""Pascal VOC 2012 with the SBD augmented training set ("VOC aug"): 21 classes, 10582 train_aug / 1449 val.

Layout (``VOCtrainval_11-May-2012.tar`` unpacked; ROOT may be ``VOC2012`` itself, ``VOCdevkit`` or its parent)::

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png                palette PNGs, indices 0..20, 255 on object borders
    ROOT/ImageSets/Segmentation/{train,val}.txt    1464 / 1449 ids
    ROOT/SegmentationClassAug/<id>.png             written by `data prepare voc_aug` (or a ready copy)
    ROOT/ImageSets/Segmentation/train_aug.txt      10582 ids (also accepted: trainaug.txt, aug.txt)

``train_aug`` is the standard list of the DeepLab papers and every distillation paper since: SBD train + SBD
val + VOC train, minus every VOC val image (SBD's own train/val split overlaps VOC val). Where an image has both a
VOC and an SBD annotation the VOC one is used: it is the finer hand annotation and carries the 255 border band
that VOC evaluation ignores. SBD annotations (``cls/<id>.mat``, a struct ``GTcls`` whose field ``Segmentation``
holds class indices 0..20) are converted to PNG once by :func:`prepare_voc_aug`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image

from benchmark.atomic import create_temp
from benchmark.data.base import DatasetError
from benchmark.data.common import LabelEncoding, RealDatasetSpec, SplitScan, fetch_archive, format_values, read_label
from benchmark.registry import DATASETS

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def voc_colormap(n: int = 256) -> np.ndarray:
    """The VOC devkit's ``VOClabelcolormap.m``: bits of the class index spread over the top bits of R, G, B.

    Entry 255 (the border/ignore value) is (224, 224, 192), the cream outline of the official PNGs.
    """
    indices = np.arange(n)
    colours = np.zeros((n, 3), dtype=np.uint8)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= (((indices >> (3 * bit + channel)) & 1) << (7 - bit)).astype(np.uint8)
    return colours


PALETTE = tuple(tuple(int(c) for c in colour) for colour in voc_colormap(21))

TRAIN_AUG_COUNT = 10582
LIST_NAMES = ("train_aug.txt", "trainaug.txt", "aug.txt")
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SBD_URL = "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz"

HELP = f"""\
  VOC 2012: {VOC_URL} (unpack: VOCdevkit/VOC2012/{{JPEGImages,SegmentationClass,ImageSets/Segmentation}}).
  SBD: {SBD_URL} (unpack: benchmark_RELEASE/dataset/{{cls/*.mat,train.txt,val.txt}}).
  Then `python -m benchmark data prepare voc_aug --voc VOCdevkit/VOC2012 --sbd benchmark_RELEASE` writes
    ROOT/SegmentationClassAug/<id>.png and ROOT/ImageSets/Segmentation/train_aug.txt (10582 ids);
  a ready SegmentationClassAug folder with its list (train_aug.txt, trainaug.txt or aug.txt) works too.
  ROOT is the VOC2012 folder; val (1449) uses SegmentationClass and ImageSets/Segmentation/val.txt."""


def find_voc_root(root: Path) -> Path:
    """Accept the ``VOC2012`` folder, ``VOCdevkit`` or the folder holding ``VOCdevkit``."""
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    return root


def find_sbd_root(root: Path) -> Path:
    """Accept SBD's ``dataset`` folder, ``benchmark_RELEASE`` or the folder holding it."""
    for candidate in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir():
            return candidate
    return root


def read_ids(path: Path) -> list[str]:
    """Ids of a list file; a line may be an id or ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png``."""
    return [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]


class VOCAugSpec(RealDatasetSpec):
    name = "voc_aug"
    default_root = "data/VOCdevkit/VOC2012"
    num_classes = 21
    class_names = CLASS_NAMES
    palette = PALETTE
    splits = ("train_aug", "train", "val")
    train_split = "train_aug"
    eval_split = "val"
    selection_split = None
    max_crop = (1024, 1024)  # images are at most 500x500; 2x scale gives 1000
    image_size = None
    expected_counts = MappingProxyType({"train_aug": TRAIN_AUG_COUNT, "train": 1464, "val": 1449})
    encodings = (LabelEncoding.identity("voc", 21, "VOC class indices 0-20 and 255 (border)"),)
    help = HELP

    def resolve_root(self, root):
        return find_voc_root(super().resolve_root(root))

    def list_split(self, split: str, root: Path) -> SplitScan:
        scan = SplitScan(split)
        sets = root / "ImageSets" / "Segmentation"
        image_dir = root / "JPEGImages"
        if split == "train_aug":
            label_dir = root / "SegmentationClassAug"
            list_file = next((sets / n for n in LIST_NAMES if (sets / n).is_file()), None)
            if list_file is None:
                scan.problems.append(
                    f"no train_aug list: expected {sets}/train_aug.txt (or trainaug.txt, aug.txt); write it with "
                    f"`python -m benchmark data prepare voc_aug --voc {root} --sbd SBD_DIR`"
                )
        else:
            label_dir = root / "SegmentationClass"
            list_file = sets / f"{split}.txt"
            if not list_file.is_file():
                scan.problems.append(f"missing list {list_file} (from VOCtrainval_11-May-2012.tar)")
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                hint = " (run `python -m benchmark data prepare voc_aug`)" if folder.name.endswith("Aug") else ""
                scan.problems.append(f"missing folder {folder}{hint}")
        if scan.problems:
            return scan
        ids = read_ids(list_file)
        if not ids:
            scan.problems.append(f"{list_file} lists no image ids")
            return scan
        if split == "train_aug" and (sets / "val.txt").is_file():
            leaked = sorted(set(ids) & set(read_ids(sets / "val.txt")))
            if leaked:
                scan.problems.append(
                    f"{list_file} holds {len(leaked)} val image(s) (e.g. {', '.join(leaked[:3])}); train_aug must "
                    "exclude every id of ImageSets/Segmentation/val.txt"
                )
        # one directory listing instead of 2 x 10582 stat calls (slow on network file systems)
        images, labels = set(os.listdir(image_dir)), set(os.listdir(label_dir))
        for image_id in sorted(set(ids)):
            image, label = f"{image_id}.jpg", f"{image_id}.png"
            if image not in images:
                scan.missing.append(f"{list_file} lists {image_id} but {image_dir / image} is missing")
            elif label not in labels:
                scan.missing.append(f"{list_file} lists {image_id} but {label_dir / label} is missing")
            else:
                scan.samples.append((str(image_dir / image), str(label_dir / label), 0))
        return scan


# ---------------------------------------------------------------------------------------------------------------
# data prepare voc_aug


def read_sbd_mat(path: Path) -> np.ndarray:
    """Class indices ``uint8 [H, W]`` of one SBD ``cls/<id>.mat`` (struct ``GTcls``, field ``Segmentation``)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as error:  # scipy raises several unrelated types for corrupt files
        raise DatasetError(f"{path}: cannot read SBD .mat file ({error})") from error
    try:
        segmentation = np.asarray(mat["GTcls"].Segmentation)
    except (KeyError, AttributeError) as error:
        raise DatasetError(
            f"{path}: expected a struct 'GTcls' with a field 'Segmentation' (SBD's cls/*.mat), found keys "
            f"{sorted(k for k in mat if not k.startswith('__'))}"
        ) from error
    if segmentation.ndim != 2 or segmentation.size == 0:
        raise DatasetError(f"{path}: GTcls.Segmentation has shape {segmentation.shape}, expected a 2-D label map")
    bad = np.setdiff1d(np.unique(segmentation), np.arange(21))
    if bad.size:
        raise DatasetError(f"{path}: GTcls.Segmentation holds value(s) {format_values(bad.tolist())}, expected 0-20")
    return segmentation.astype(np.uint8)


def _write_png(array: np.ndarray, path: Path) -> None:
    """Write a mode L PNG through a temporary file, so that an interrupted run leaves no half-written label."""
    handle, temp = create_temp(path.parent, prefix=f".{path.stem}.", suffix=".png.part")
    os.close(handle)
    try:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(temp, format="PNG")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def prepare_voc_aug(voc: Path, sbd: Path, *, workers: int = 4, download: bool = False, log=print) -> Path:
    """Write ``SegmentationClassAug/<id>.png`` for the train_aug ids and ``ImageSets/Segmentation/train_aug.txt``.

    The list is (SBD train + SBD val + VOC train) - VOC val, sorted. Labels come from VOC's SegmentationClass
    where it has the image, else from SBD's .mat. Files already converted are kept, so a second run only checks.
    Returns the list path.
    """
    if download:  # each archive only where its folder is not there yet: VOC alone is 2 GB
        if not (find_voc_root(Path(voc)) / "JPEGImages").is_dir():
            fetch_archive(VOC_URL, Path(voc), what="Pascal VOC 2012 trainval")
        if not (find_sbd_root(Path(sbd)) / "cls").is_dir():
            fetch_archive(SBD_URL, Path(sbd), what="SBD (benchmark.tgz)")
    voc, sbd = find_voc_root(Path(voc)), find_sbd_root(Path(sbd))
    sets = voc / "ImageSets" / "Segmentation"
    needed = {
        "VOC train list": sets / "train.txt",
        "VOC val list": sets / "val.txt",
        "VOC images": voc / "JPEGImages",
        "VOC labels": voc / "SegmentationClass",
        "SBD train list": sbd / "train.txt",
        "SBD val list": sbd / "val.txt",
        "SBD labels": sbd / "cls",
    }
    missing = [f"{what}: {path}" for what, path in needed.items() if not path.exists()]
    if missing:
        raise DatasetError("cannot prepare voc_aug, missing:\n  " + "\n  ".join(missing) + f"\n{HELP}")
    val = set(read_ids(sets / "val.txt"))
    ids = sorted(
        (set(read_ids(sbd / "train.txt")) | set(read_ids(sbd / "val.txt")) | set(read_ids(sets / "train.txt"))) - val
    )
    out_dir = voc / "SegmentationClassAug"
    try:
        out_dir.mkdir(exist_ok=True)
    except OSError as error:
        raise DatasetError(f"cannot create {out_dir}: {error}; the VOC folder must be writable") from error
    voc_labels = set(os.listdir(voc / "SegmentationClass"))
    images = set(os.listdir(voc / "JPEGImages"))

    def convert(image_id: str) -> str | None:
        target = out_dir / f"{image_id}.png"
        if f"{image_id}.jpg" not in images:
            return f"{voc / 'JPEGImages' / image_id}.jpg is missing"
        if target.exists():
            return None
        try:
            if f"{image_id}.png" in voc_labels:
                labels = read_label(voc / "SegmentationClass" / f"{image_id}.png")
            else:
                mat = sbd / "cls" / f"{image_id}.mat"
                if not mat.is_file():
                    return f"{image_id}: neither {voc / 'SegmentationClass' / image_id}.png nor {mat} exists"
                labels = read_sbd_mat(mat)
            _write_png(labels, target)
        except DatasetError as error:
            return str(error)
        return None

    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            errors = [e for e in pool.map(convert, ids) if e]
    else:
        errors = [e for e in map(convert, ids) if e]
    if errors:
        raise DatasetError(
            f"voc_aug: {len(errors)} of {len(ids)} labels could not be written:\n  " + "\n  ".join(errors[:20])
        )
    list_path = sets / "train_aug.txt"
    handle, temp = create_temp(sets, prefix=".train_aug.", suffix=".txt.part")
    with os.fdopen(handle, "w") as out:
        out.write("".join(f"{image_id}\n" for image_id in ids))
    os.replace(temp, list_path)
    log(f"wrote {len(ids)} ids to {list_path} and their labels to {out_dir}")
    if len(ids) != TRAIN_AUG_COUNT:
        log(
            f"warning: the standard train_aug list has {TRAIN_AUG_COUNT} ids, this one {len(ids)}; are the VOC and SBD lists complete?"
        )
    return list_path


DATASETS.register("voc_aug")(VOCAugSpec())
