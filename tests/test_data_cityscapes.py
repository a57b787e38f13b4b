"""Cityscapes: official layout, labelId -> trainId mapping, labelTrainIds preference, checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_data import make_cityscapes, one_torch_thread, save_png  # noqa: F401 (autouse)

from benchmark.data.base import DatasetError
from benchmark.data.cityscapes import LABEL_ID_TO_TRAIN_ID
from benchmark.data.cli import main as data_cli
from benchmark.registry import DATASETS

SPEC = DATASETS.get("cityscapes")

# labelId -> trainId for the 19 evaluated classes, as listed in cityscapesScripts' labels.py
OFFICIAL = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
            27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip


def test_mapping_is_the_official_one():
    lut = SPEC.encodings[0].lut
    for label_id in range(256):
        assert lut[label_id] == OFFICIAL.get(label_id, 255), label_id
    assert set(LABEL_ID_TO_TRAIN_ID) == set(range(34))
    assert SPEC.encodings[0].valid.sum() == 34  # ids 34..255 never occur in a labelIds file
    assert (SPEC.num_classes, len(SPEC.class_names), len(SPEC.palette)) == (19, 19, 19)
    assert SPEC.class_names[13] == "car" and SPEC.palette[13] == (0, 0, 142)
    assert (SPEC.train_split, SPEC.eval_split, SPEC.selection_split, SPEC.max_crop) == (
        "train",
        "val",
        None,
        (1024, 2048),
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    written = make_cityscapes(root, {"train": 3, "val": 2}, train_ids_for=("val/bochum/bochum_000001_000019",))
    return root, written


def test_build_maps_label_ids_and_ignores_the_rest(tiny):
    root, written = tiny
    dataset = SPEC.build("train", root)
    assert len(dataset) == 3
    for index, (image_path, label_path, _) in enumerate(dataset.samples):
        assert image_path.endswith("_leftImg8bit.png") and label_path.endswith("_gtFine_labelIds.png")
        key = "train/" + "/".join(image_path.split("/")[-2:])[: -len("_leftImg8bit.png")]
        raw = written[key]
        image, mask = dataset[index]
        assert image.shape == (3, 1024, 2048) and mask.dtype == torch.int64
        expected = np.vectorize(lambda v: OFFICIAL.get(int(v), 255))(raw[::64, ::64])  # sparse grid: fast
        assert np.array_equal(mask.numpy()[::64, ::64], expected)
        assert (mask == 255).any() and set(mask.unique().tolist()) <= set(range(19)) | {255}
    # sorted by city then frame, pairs never cross cities
    assert [s[0].split("/")[-2] for s in dataset.samples] == ["aachen", "aachen", "bochum"]


def test_label_train_ids_file_is_preferred(tiny):
    root, _ = tiny
    dataset = SPEC.build("val", root)
    by_frame = {s[0].split("/")[-1]: (s, dataset[i][1]) for i, s in enumerate(dataset.samples)}
    (sample, mask) = by_frame["bochum_000001_000019_leftImg8bit.png"]
    assert sample[1].endswith("_gtFine_labelTrainIds.png") and sample[2] == 1
    assert torch.equal(mask.unique(), torch.tensor([5]))  # the fixture's trainIds file is all "pole"
    (sample, mask) = by_frame["aachen_000000_000019_leftImg8bit.png"]
    assert sample[1].endswith("_gtFine_labelIds.png") and len(mask.unique()) > 5


def test_check_counts_and_subset(tiny):
    root, _ = tiny
    report = SPEC.check(root)
    assert report.counts == {"train": 3, "val": 2}
    assert any("found 3 image/label pairs, expected 2975" in p for p in report.problems)
    assert any("found 2 image/label pairs, expected 500" in p for p in report.problems)
    assert SPEC.check(root, partial=True).ok
    assert SPEC.check(root, subset=2).ok
    assert len(SPEC.build("val", root, subset=1)) == 1


def test_broken_copy_is_named_precisely(tmp_path):
    make_cityscapes(tmp_path, {"train": 3, "val": 1})
    labels = sorted((tmp_path / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))
    labels[0].unlink()
    bad = np.full((1024, 2048), 7, dtype=np.uint8)
    bad[:10, :10] = 40
    save_png(bad, labels[1])
    save_png(np.zeros((512, 1024), dtype=np.uint8), labels[2])  # wrong size
    report = SPEC.check(tmp_path, partial=True)
    text = "\n".join(report.problems)
    assert f"has no label: expected {labels[0]} (or _gtFine_labelTrainIds.png)" in text
    assert f"{labels[1]}: label value(s) 40 not allowed; expected Cityscapes labelIds 0-33" in text
    assert f"{labels[2]}: label is 1024x512 but its image" in text and "is 2048x1024" in text
    with pytest.raises(DatasetError, match="has no label"):
        SPEC.build("train", tmp_path)


def test_missing_root_layout_and_prepare_message(tmp_path, capsys):
    (tmp_path / "leftImg8bit" / "train").mkdir(parents=True)
    report = SPEC.check(tmp_path, splits=["train"])
    text = "\n".join(report.problems)
    assert f"missing folder {tmp_path / 'gtFine' / 'train'}" in text
    assert "https://www.cityscapes-dataset.com" in text and "gtFine_trainvaltest.zip" in text
    assert data_cli(["data", "check", "cityscapes", "--root", str(tmp_path)]) == 1
    assert data_cli(["data", "prepare", "cityscapes", "--download"]) == 1
    err = capsys.readouterr().err
    assert "needs a login" in err and "leftImg8bit_trainvaltest.zip" in err
