"""Cityscapes (fine annotations), as every segmentation-distillation paper uses it: 19 classes, eval on val.

Layout (the official ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` unzipped into one root)::

    ROOT/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

2975 train and 500 val images of 2048x1024. Labels are read from ``*_gtFine_labelIds.png`` and mapped to the
19 train ids with the official table; a ``*_gtFine_labelTrainIds.png`` made by cityscapesScripts'
``createTrainIdLabelImgs.py`` is used instead where present (it holds the same values, already mapped).
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from benchmark.data.common import LabelEncoding, RealDatasetSpec, SplitScan, pair_by_stem
from benchmark.registry import DATASETS

#: labelId -> trainId, from cityscapesScripts ``cityscapesscripts/helpers/labels.py`` (the ``labels`` table,
#: columns ``id`` and ``trainId``). Ids whose trainId is 255 there (unlabeled, ego vehicle, rectification border,
#: out of roi, static, dynamic, ground, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan,
#: trailer) are not evaluated by the official benchmark, so they become the ignore index. License plate has
#: id -1 and is never drawn into labelIds images (json2labelImg skips negative ids), so 0..33 is the full range.
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255,
    7: 0, 8: 1, 9: 255, 10: 255, 11: 2, 12: 3, 13: 4, 14: 255, 15: 255, 16: 255,
    17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15,
    29: 255, 30: 255, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

#: The ``color`` column of cityscapesScripts' labels.py for the 19 train ids, in train-id order.
PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_ID_SUFFIX = "_gtFine_labelIds.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"

HELP = """\
  Cityscapes needs a (free) account: log in at https://www.cityscapes-dataset.com, Downloads, and fetch
  leftImg8bit_trainvaltest.zip (11 GB) and gtFine_trainvaltest.zip (241 MB). Unzip both into one ROOT so that
    ROOT/leftImg8bit/train/<city>/<city>_<seq>_<frame>_leftImg8bit.png   (2975 train, 500 val)
    ROOT/gtFine/train/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
  exist (optionally also *_gtFine_labelTrainIds.png from cityscapesScripts' createTrainIdLabelImgs.py)."""


class CityscapesSpec(RealDatasetSpec):
    name = "cityscapes"
    default_root = "data/cityscapes"
    num_classes = 19
    class_names = CLASS_NAMES
    palette = PALETTE
    splits = ("train", "val", "test")
    train_split = "train"
    eval_split = "val"
    selection_split = None
    max_crop = (1024, 2048)
    image_size = (2048, 1024)
    # test labels are withheld by the benchmark server (gtFine/test holds placeholders), so test serves
    # inference only; it is never checked unless asked for.
    expected_counts = MappingProxyType({"train": 2975, "val": 500, "test": 1525})
    encodings = (
        LabelEncoding(
            "labelIds", LABEL_ID_TO_TRAIN_ID, "Cityscapes labelIds 0-33 (cityscapesScripts labels.py, column id)"
        ),
        LabelEncoding.identity("labelTrainIds", 19, "Cityscapes trainIds 0-18 and 255"),
    )
    help = HELP

    def list_split(self, split: str, root: Path) -> SplitScan:
        scan = SplitScan(split)
        image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        image_glob = f"{image_dir}/<city>/*{IMAGE_SUFFIX}"
        if not image_dir.is_dir():
            scan.problems.append(f"missing folder {image_dir} (expected images {image_glob})")
        if not label_dir.is_dir():
            scan.problems.append(f"missing folder {label_dir} (expected labels {label_dir}/<city>/*{LABEL_ID_SUFFIX})")
        if scan.problems:
            return scan
        # key: "<city>/<city>_<seq>_<frame>", so that the same frame name in two cities cannot pair wrongly
        images = {f"{p.parent.name}/{p.name[: -len(IMAGE_SUFFIX)]}": p for p in image_dir.glob(f"*/*{IMAGE_SUFFIX}")}
        labels = {
            f"{p.parent.name}/{p.name[: -len(LABEL_ID_SUFFIX)]}": p for p in label_dir.glob(f"*/*{LABEL_ID_SUFFIX}")
        }
        # a trainIds file replaces (or stands in for) the labelIds file of its frame
        for path in label_dir.glob(f"*/*{TRAIN_ID_SUFFIX}"):
            labels[f"{path.parent.name}/{path.name[: -len(TRAIN_ID_SUFFIX)]}"] = path
        if not images:
            scan.problems.append(f"no images matching {image_glob}")
            return scan
        pair_by_stem(
            images,
            labels,
            image_pattern=f"{image_dir}/<name>{IMAGE_SUFFIX}",
            label_pattern=f"{label_dir}/<name>{LABEL_ID_SUFFIX} (or {TRAIN_ID_SUFFIX})",
            scan=scan,
            encoding=lambda path: 1 if path.name.endswith(TRAIN_ID_SUFFIX) else 0,
        )
        return scan


DATASETS.register("cityscapes")(CityscapesSpec())
