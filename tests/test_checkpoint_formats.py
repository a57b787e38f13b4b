"""Suites that start from checkpoint files: authors' formats are converted on load, strictly; the format brings its
preprocessing (validated at the door), and the run's log and record say what was loaded.

The CIRKD teacher is the real CIRKD ``deeplabv3_resnet18`` layout (``shared/reference``) at the synthetic dataset's
7 classes, on 32x32 crops: the same code path a user's ``deeplabv3_resnet101_citys_best_model.pth`` takes.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from benchmark.__main__ import main
from benchmark.registry import DATASETS, MODELS
from benchmark.store import load_records
from benchmark.suite import expand, file_digest, load_suite
from tests.conftest import SHARED
from tests.fixtures.make_authors_layouts import layout_values

LAYOUTS = json.loads((Path(SHARED) / "reference" / "checkpoint_layouts.json").read_text())["layouts"]
CLASSES = DATASETS.get("synthetic").num_classes

BASE = {
    "name": "from_checkpoints",
    "dataset": {"name": "synthetic", "crop": [32, 32], "scale_range": [1.0, 1.0], "normalization": "bgr_mean",
                "options": {"image_size": 32, "num_train": 8, "num_val": 4, "num_test": 4}},
    "schedule": {"iterations": 2, "batch_size": 4, "lr": 0.01, "eval_batch_size": 4, "log_every": 1,
                 "checkpoint_every": 2},
    "teachers": {"t": {"model": "tiny_teacher"}},
    "students": [{"model": "tiny_student"}],
    "methods": [{"name": "kd", "label": "KD"}],
    "seeds": [0],
}


def cirkd_file(path: Path, classes: int = CLASSES) -> Path:
    """A bare state dict in CIRKD's deeplabv3_resnet18 layout, its classifiers cut to ``classes``."""
    layout = {key: [classes, *shape[1:]] if shape and shape[0] == 19 else shape
              for key, shape in LAYOUTS["cirkd/deeplabv3_resnet18"]["state_dict"].items()}
    torch.save(layout_values().values(layout), path)
    return path


def suite_with(tmp_path: Path, **changes) -> Path:
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        data[key] = value
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_cirkd_teacher_is_converted_on_load_and_the_log_and_record_say_so(tmp_path, capsys):
    teacher_file = cirkd_file(tmp_path / "deeplabv3_resnet18_citys_best_model.pth")
    torch.manual_seed(3)
    student_file = tmp_path / "student_init.pt"
    initial = MODELS.get("tiny_student")(CLASSES).state_dict()
    torch.save(initial, student_file)
    suite = suite_with(tmp_path, teachers={"t": {"model": "deeplabv3_r18", "checkpoint": str(teacher_file),
                                                 "checkpoint_format": "cirkd"}},
                       students=[{"model": "tiny_student", "checkpoint": str(student_file)}])
    assert main(["run", str(suite), "--results", str(tmp_path / "results"),
                 "--reports", str(tmp_path / "reports")]) == 0
    out = capsys.readouterr().out
    digest = file_digest(str(teacher_file))
    assert f"teacher t (deeplabv3_r18): loaded {teacher_file} (format cirkd, sha256 {digest}, 190 tensors)" in out
    assert "dataset.normalization: bgr_mean" in out

    _, finished, unfinished = load_records(tmp_path / "results" / "from_checkpoints")
    assert not unfinished and len(finished) == 1
    record = finished[0]
    teacher = record["teacher_checkpoint"]
    assert teacher["format"] == "cirkd" and teacher["sha256"] == digest and teacher["path"] == str(teacher_file)
    assert teacher["tensors_loaded"] == 190 and teacher["set_aside"] == [] and teacher["normalization"] == "bgr_mean"
    assert record["config"]["dataset"]["normalization"] == "bgr_mean"
    assert record["student_checkpoint"]["format"] == "ours"
    assert record["student_checkpoint"]["sha256"] == file_digest(str(student_file))
    assert record["config"]["student"]["checkpoint"] == {"sha256": file_digest(str(student_file)), "format": "ours"}
    log = (tmp_path / "results" / "from_checkpoints" / "runs" / record["run_key"] / "train.log").read_text()
    assert f"teacher deeplabv3_r18: loaded {teacher_file} (format cirkd, sha256 {digest}" in log
    assert "input preprocessing dataset.normalization: bgr_mean" in log
    assert f"initial weights loaded {student_file} (format ours" in log


def test_a_student_starts_from_its_checkpoint(tmp_path):
    from benchmark.engine.train import TrainJob, run_training
    from benchmark.suite import ScheduleConfig

    torch.manual_seed(5)
    initial = MODELS.get("tiny_student")(CLASSES).state_dict()
    path = tmp_path / "init.pt"
    torch.save(initial, path)
    schedule = ScheduleConfig(iterations=1, batch_size=2, lr=1e-12, momentum=0.0, weight_decay=0.0)
    data = load_suite(suite_with(tmp_path, methods=[{"name": "none"}])).parts[0].dataset.resolved()
    job = TrainJob(name="s", folder=tmp_path / "run", dataset=data, dataset_root=None, schedule=schedule,
                   model_name="tiny_student", model_options={}, seed=0, methods=[{"name": "none", "hparams": {}}],
                   initial_weights={"path": str(path), "format": "ours"})
    job.folder.mkdir()
    result = run_training(job, torch.device("cpu"), logging.getLogger("test"))
    trained = result["student_model"].state_dict()
    # lr 1e-12: one step leaves the weights at the file's values (BN statistics move with the batch).
    assert torch.allclose(trained["classifier.weight"], initial["classifier.weight"], atol=1e-9)
    assert result["student_checkpoint"]["path"] == str(path)


@pytest.mark.parametrize(("fmt", "normalization", "needed"), [("cirkd", "imagenet", "bgr_mean"),
                                                              ("deeplab_xception", "bgr_mean", "imagenet")])
def test_a_format_with_other_preprocessing_is_refused_at_the_door(tmp_path, capsys, fmt, normalization, needed):
    teacher_file = cirkd_file(tmp_path / "t.pth")
    dataset = {**BASE["dataset"], "normalization": normalization}
    suite = suite_with(tmp_path, dataset=dataset, teachers={"t": {"model": "deeplabv3_r18", "checkpoint":
                                                                  str(teacher_file), "checkpoint_format": fmt}})
    assert main(["plan", str(suite), "--results", str(tmp_path / "results")]) == 2
    message = capsys.readouterr().err
    assert str(suite) in message and f"teachers.t.checkpoint_format '{fmt}'" in message
    assert f"Set `dataset.normalization: {needed}`" in message


def test_a_student_format_is_checked_too_and_a_format_needs_a_file(tmp_path, capsys):
    suite = suite_with(tmp_path, dataset={**BASE["dataset"], "normalization": "imagenet"},
                       students=[{"model": "tiny_student", "checkpoint": "x.pth", "checkpoint_format": "cirkd"}])
    assert main(["plan", str(suite)]) == 2
    assert "students[0].checkpoint_format 'cirkd' needs dataset.normalization: bgr_mean" in capsys.readouterr().err
    suite = suite_with(tmp_path, teachers={"t": {"model": "tiny_teacher", "checkpoint_format": "cirkd"}})
    assert main(["plan", str(suite)]) == 2
    assert "checkpoint_format 'cirkd' is given without a `checkpoint` file" in capsys.readouterr().err


def test_an_unconvertible_file_stops_the_suite_before_training(tmp_path, capsys):
    teacher_file = cirkd_file(tmp_path / "t.pth", classes=19)  # 19 classes where the dataset has 7
    suite = suite_with(tmp_path, teachers={"t": {"model": "deeplabv3_r18", "checkpoint": str(teacher_file),
                                                 "checkpoint_format": "cirkd"}})
    assert main(["run", str(suite), "--results", str(tmp_path / "results"),
                 "--reports", str(tmp_path / "reports")]) == 2
    message = capsys.readouterr().err
    assert "teachers.t.checkpoint" in message and str(teacher_file) in message
    assert "head.block.4.weight -> classifier.weight: file (19, 128, 1, 1), model (7, 128, 1, 1)" in message
    assert not (tmp_path / "results" / "from_checkpoints" / "runs").exists()


def test_format_and_student_weights_are_part_of_the_run_keys(tmp_path):
    teacher_file = cirkd_file(tmp_path / "t.pth")
    student_file = tmp_path / "s.pt"
    torch.save(MODELS.get("tiny_student")(CLASSES).state_dict(), student_file)
    teachers = {"t": {"model": "deeplabv3_r18", "checkpoint": str(teacher_file), "checkpoint_format": "cirkd"}}
    plain = expand(load_suite(suite_with(tmp_path, teachers=teachers)).parts[0])
    started = expand(load_suite(suite_with(tmp_path, teachers=teachers, students=[
        {"model": "tiny_student", "checkpoint": str(student_file)}])).parts[0])
    assert plain[1]["t"].config["checkpoint_format"] == "cirkd"
    assert plain[0][0].key != started[0][0].key
    assert started[0][0].student_checkpoint == {"path": str(student_file), "format": "ours"}
    ours = {"t": {"model": "tiny_teacher", "checkpoint": str(teacher_file)}}
    assert "checkpoint_format" not in expand(load_suite(suite_with(tmp_path, teachers=ours)).parts[0])[1]["t"].config
