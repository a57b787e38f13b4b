"""VOC 2012 + SBD: palette PNGs with the 255 border, SBD .mat conversion, the train_aug list without val."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_data import make_sbd, make_voc, one_torch_thread, save_png  # noqa: F401 (autouse)
from PIL import Image

from benchmark.data import voc
from benchmark.data.base import DatasetError
from benchmark.data.cli import main as data_cli
from benchmark.data.voc import prepare_voc_aug, read_sbd_mat, voc_colormap
from benchmark.registry import DATASETS

SPEC = DATASETS.get("voc_aug")

VOC_TRAIN = ["2007_000032", "2007_000039", "2008_000008"]
VOC_VAL = ["2007_000033", "2007_000042"]
SBD_TRAIN = ["2007_000032", "2008_000123", "2007_000033"]  # overlaps VOC train and VOC val, as the real one does
SBD_VAL = ["2008_000456", "2007_000042"]
TRAIN_AUG = sorted({*VOC_TRAIN, *SBD_TRAIN, *SBD_VAL} - set(VOC_VAL))


def test_palette_and_attributes():
    colours = voc_colormap(256)
    assert [tuple(c) for c in colours[:5]] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)]
    assert tuple(colours[15]) == (192, 128, 128) and tuple(colours[255]) == (224, 224, 192)
    assert (SPEC.num_classes, len(SPEC.class_names), len(SPEC.palette)) == (21, 21, 21)
    assert SPEC.class_names[15] == "person" and SPEC.palette[15] == (192, 128, 128)
    assert (SPEC.train_split, SPEC.eval_split, SPEC.selection_split) == ("train_aug", "val", None)


@pytest.fixture
def voc_sbd(tmp_path):
    labels = make_voc(tmp_path / "voc", VOC_TRAIN, VOC_VAL, extra_images=["2008_000123", "2008_000456"])
    sbd = make_sbd(tmp_path / "sbd", SBD_TRAIN, SBD_VAL)
    return tmp_path / "voc", tmp_path / "sbd", labels, sbd


def test_val_reads_palette_indices_and_keeps_border(voc_sbd):
    root, _, labels, _ = voc_sbd
    assert Image.open(root / "VOCdevkit/VOC2012/SegmentationClass/2007_000033.png").mode == "P"
    dataset = SPEC.build("val", root)  # root may be the folder holding VOCdevkit
    assert [s[0].split("/")[-1] for s in dataset.samples] == ["2007_000033.jpg", "2007_000042.jpg"]
    image, mask = dataset[0]
    assert image.shape == (3, 48, 64) and mask.dtype == torch.int64
    assert np.array_equal(mask.numpy(), labels["2007_000033"])
    assert (mask == 255).sum() > 100 and (mask == 0).any()


def test_prepare_writes_train_aug_without_val(voc_sbd, capsys):
    voc_root, sbd_root, voc_labels, sbd_labels = voc_sbd
    list_path = prepare_voc_aug(voc_root, sbd_root, workers=1)
    assert list_path == voc_root / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt"
    ids = list_path.read_text().split()
    assert ids == TRAIN_AUG and not set(ids) & set(VOC_VAL)
    assert "warning: the standard train_aug list has 10582 ids, this one 5" in capsys.readouterr().out
    aug = voc_root / "VOCdevkit/VOC2012/SegmentationClassAug"
    # VOC's own annotation wins where both exist (it carries the 255 border); SBD's .mat elsewhere
    assert np.array_equal(np.asarray(Image.open(aug / "2007_000032.png")), voc_labels["2007_000032"])
    assert np.array_equal(np.asarray(Image.open(aug / "2008_000123.png")), sbd_labels["2008_000123"])
    assert Image.open(aug / "2008_000123.png").mode == "L"
    dataset = SPEC.build("train_aug", voc_root)
    assert len(dataset) == 5 == len(TRAIN_AUG)
    assert SPEC.check(voc_root, partial=True, splits=["train_aug", "val", "train"]).ok
    assert any("expected 10582" in p for p in SPEC.check(voc_root).problems)
    # a second run converts nothing and leaves the files as they are
    before = (aug / "2008_000123.png").stat().st_mtime_ns
    prepare_voc_aug(voc_root, sbd_root, workers=2)
    assert (aug / "2008_000123.png").stat().st_mtime_ns == before


def test_prepare_via_cli_and_missing_inputs(voc_sbd, tmp_path, capsys):
    voc_root, sbd_root, _, _ = voc_sbd
    args = ["data", "prepare", "voc_aug", "--voc", str(voc_root / "VOCdevkit"), "--sbd", str(sbd_root)]
    assert data_cli(args) == 1  # converted, but the tiny copy is not the official 10582 + 1449
    out = capsys.readouterr().out
    assert "wrote 5 ids" in out and "train_aug: 5 pairs" in out
    assert data_cli(["data", "prepare", "voc_aug", "--voc", str(voc_root)]) == 2
    assert data_cli(["data", "prepare", "voc_aug", "--voc", str(voc_root), "--sbd", str(tmp_path / "nosbd")]) == 1
    err = capsys.readouterr().err
    assert "SBD labels:" in err and "nosbd" in err


def test_ready_segmentation_class_aug_with_deeplab_list(voc_sbd):
    voc_root, _, voc_labels, _ = voc_sbd
    voc2012 = voc_root / "VOCdevkit/VOC2012"
    for image_id in VOC_TRAIN:
        save_png(voc_labels[image_id], voc2012 / "SegmentationClassAug" / f"{image_id}.png")
    lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in VOC_TRAIN]
    (voc2012 / "ImageSets/Segmentation/aug.txt").write_text("".join(lines))
    dataset = SPEC.build("train_aug", voc2012)
    assert len(dataset) == 3 and dataset.samples[0][1].endswith("SegmentationClassAug/2007_000032.png")
    # a list that leaks a val image is refused
    (voc2012 / "ImageSets/Segmentation/aug.txt").write_text("".join(lines) + "2007_000033\n")
    save_png(voc_labels["2007_000033"], voc2012 / "SegmentationClassAug" / "2007_000033.png")
    report = SPEC.check(voc2012, partial=True, splits=["train_aug"])
    assert any("holds 1 val image(s) (e.g. 2007_000033)" in p for p in report.problems)


def test_bad_labels_are_reported(voc_sbd, tmp_path):
    voc_root, _, voc_labels, _ = voc_sbd
    voc2012 = voc_root / "VOCdevkit/VOC2012"
    colour = voc_colormap(256)[voc_labels["2007_000042"]]
    Image.fromarray(colour).save(voc2012 / "SegmentationClass/2007_000042.png")  # RGB visualisation
    bad = voc_labels["2007_000033"].copy()
    bad[0, 0] = 77
    save_png(bad, voc2012 / "SegmentationClass/2007_000033.png", palette=voc_colormap(256))
    jpeg = voc2012 / "JPEGImages/2007_000033.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:-200])  # an interrupted copy
    report = SPEC.check(voc_root, partial=True, splits=["val"])
    text = "\n".join(report.problems)
    assert f"{jpeg}: truncated JPEG" in text
    assert "SegmentationClass/2007_000042.png: label image has mode 'RGB', expected a single-channel" in text
    assert "SegmentationClass/2007_000033.png: label value(s) 77 not allowed; expected VOC class indices 0-20" in text
    with pytest.raises(DatasetError, match="2007_000042.png: label image has mode 'RGB'"):
        SPEC.build("val", voc_root)[1]


def test_sbd_mat_structure_is_checked(voc_sbd, tmp_path):
    _, sbd_root, _, sbd_labels = voc_sbd
    mat = sbd_root / "benchmark_RELEASE/dataset/cls/2008_000456.mat"
    assert np.array_equal(read_sbd_mat(mat), sbd_labels["2008_000456"])
    from scipy.io import savemat

    savemat(tmp_path / "wrong.mat", {"GTinst": {"Segmentation": np.zeros((4, 4), dtype=np.uint8)}})
    with pytest.raises(DatasetError, match=r"wrong.mat: expected a struct 'GTcls' with a field 'Segmentation'.*GTinst"):
        read_sbd_mat(tmp_path / "wrong.mat")
    savemat(tmp_path / "values.mat", {"GTcls": {"Segmentation": np.full((4, 4), 30, dtype=np.uint8)}})
    with pytest.raises(DatasetError, match="values.mat: GTcls.Segmentation holds value.s. 30, expected 0-20"):
        read_sbd_mat(tmp_path / "values.mat")


def test_download_offline_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(voc, "VOC_URL", "http://127.0.0.1:9/VOCtrainval_11-May-2012.tar")
    with pytest.raises(DatasetError, match=r"could not download Pascal VOC 2012 trainval from http://127.0.0.1:9/"):
        prepare_voc_aug(tmp_path / "voc", tmp_path / "sbd", download=True)
    assert not list((tmp_path / "voc").glob("*.part"))
