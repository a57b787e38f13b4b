"""Contract of the real datasets, over all of them: attributes consistent, splits known, options as documented."""

from __future__ import annotations

import pytest

from benchmark.data.base import IGNORE_INDEX, DatasetError
from benchmark.data.common import RealDatasetSpec, required_splits
from benchmark.registry import DATASETS

REAL = ["camvid", "cityscapes", "voc_aug"]


def test_real_datasets_are_registered():
    assert set(REAL) <= set(DATASETS.names())


@pytest.mark.parametrize("name", REAL)
def test_spec_attributes_are_consistent(name):
    spec = DATASETS.get(name)
    assert isinstance(spec, RealDatasetSpec) and spec.name == name
    assert spec.num_classes == len(spec.class_names) == len(spec.palette) == len(set(spec.class_names))
    assert all(len(colour) == 3 and all(0 <= c <= 255 for c in colour) for colour in spec.palette)
    assert len(set(spec.palette)) == spec.num_classes  # distinct colours: a visualisation must be readable
    for split in required_splits(spec):
        assert split in spec.splits and split in spec.expected_counts
    assert spec.ignore_index == IGNORE_INDEX and spec.needs_root
    assert spec.options() == {"subset": None, "partial": False}
    for encoding in spec.encodings:
        mapped = set(encoding.lut[encoding.valid].tolist())
        assert mapped <= set(range(spec.num_classes)) | {IGNORE_INDEX}
        assert set(range(spec.num_classes)) <= mapped  # every class is reachable from some raw value
    assert "http" in spec.help  # says where to get it


@pytest.mark.parametrize("name", REAL)
def test_unknown_split_and_missing_root(name, tmp_path):
    spec = DATASETS.get(name)
    with pytest.raises(DatasetError, match="has no split 'nope'"):
        spec.build("nope", tmp_path)
    with pytest.raises(DatasetError, match="needs a root directory"):
        spec.build(spec.train_split, None)
    report = spec.check(tmp_path / "absent")
    assert not report.ok and "absent is not a directory" in report.problems[0]
    assert set(report.counts) == set(required_splits(spec))
    with pytest.raises(DatasetError, match=r"unknown check option\(s\) \['crop'\]"):
        spec.check(tmp_path, crop=3)
