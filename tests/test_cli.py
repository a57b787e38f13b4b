"""Every command the README lists, run through ``python -m benchmark``'s ``main``: what it prints, writes and refuses.

Expected numbers (parameters, FLOPs, method parameters) are counted here independently of the code that reports
them. The smoke suite runs end to end in miniature (a few iterations on 32x32 images).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REFERENCE_VECTORS
from fixtures_data import make_camvid

from benchmark.__main__ import main
from benchmark.registry import DATASETS, METHODS, MODELS
from benchmark.store import load_records
from tests.test_runner import run_cli as run
from tests.test_runner import write_suite

ROOT = Path(__file__).resolve().parent.parent
NUM_CLASSES = 7

SUITE = {
    "name": "cli",
    "dataset": {"name": "synthetic", "crop": [32, 32], "scale_range": [1.0, 1.0],
                "options": {"image_size": 32, "num_train": 16, "num_val": 8, "num_test": 8}},
    "schedule": {"iterations": 4, "batch_size": 4, "lr": 0.01, "eval_batch_size": 8, "checkpoint_every": 4,
                 "log_every": 2},
    "teachers": {"t": {"model": "tiny_teacher", "schedule": {"iterations": 2}}},
    "students": [{"model": "tiny_student"}],
    "methods": [{"name": "none"}, {"name": "kd"}],
    "seeds": [0],
}


def fvcore_flops(model: torch.nn.Module, size: tuple[int, int]) -> int:
    from fvcore.nn import FlopCountAnalysis

    model.eval()
    analysis = FlopCountAnalysis(model, torch.zeros(1, 3, *size))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return int(analysis.total())


# --- list, models, data check, check-reference ---------------------------------------------------------------------


def test_list_names_every_dataset_model_and_method_with_hyperparameters(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in DATASETS.names() + MODELS.names() + METHODS.names():
        assert re.search(rf"^  {re.escape(name)}: ", out, re.MULTILINE), f"{name} not listed"
    assert "temperature=1.0" in out and "lambda_ifv=200.0" in out
    assert "synthetic: 7 classes" in out
    assert main(["list", "methods"]) == 0
    only = capsys.readouterr().out
    assert "methods:" in only and "datasets:" not in only and "models:" not in only


def test_models_prints_parameters_flops_and_points_at_the_given_size(capsys):
    torch.manual_seed(0)
    model = MODELS.get("tiny_student")(NUM_CLASSES)
    params = sum(p.numel() for p in model.parameters())
    outputs = {}
    for size in ((64, 64), (32, 96)):
        assert main(["models", "tiny_student", "--size", *map(str, size), "--num-classes", str(NUM_CLASSES)]) == 0
        outputs[size] = capsys.readouterr().out
        out = outputs[size]
        assert f"input {size[0]}x{size[1]};" in out
        assert f"tiny_student ({NUM_CLASSES} classes): {params / 1e6:.2f}M params" in out
        assert f"{fvcore_flops(model, size) / 1e9:.2f} GFLOPs" in out
        for point, spec in model.feature_points.items():
            assert re.search(rf"{re.escape(point)}\s+{spec.channels} channels\s+stride\s+{spec.stride}\b", out), point


def test_data_check_through_the_main_command(tmp_path, capsys):
    assert main(["data", "check", "synthetic"]) == 0
    assert "train" in capsys.readouterr().out
    make_camvid(tmp_path / "CamVid")
    assert main(["data", "check", "camvid", "--root", str(tmp_path / "CamVid"), "--partial"]) == 0
    assert main(["data", "check", "camvid", "--root", str(tmp_path / "empty")]) == 1
    out = capsys.readouterr().out
    assert str(tmp_path / "empty") in out


def test_check_reference_through_the_main_command(capsys):
    if not Path(REFERENCE_VECTORS).is_file():
        pytest.skip(f"reference vectors not found at {REFERENCE_VECTORS}")
    assert main(["check-reference", REFERENCE_VECTORS]) == 0
    out = capsys.readouterr().out
    assert "kd" in out and "miou" in out.lower()


# --- plan --profile ---------------------------------------------------------------------------------------------------


def test_plan_profile_measures_each_pair_and_later_plans_use_it(tmp_path, capsys):
    suite = write_suite(tmp_path, SUITE)
    results = tmp_path / "results"
    assert main(["plan", str(suite), "--results", str(results)]) == 0
    before = capsys.readouterr().out
    assert "2 runs" in before and "without a measured step time" in before and "2 pending" in before
    assert main(["plan", str(suite), "--results", str(results), "--profile"]) == 0
    out = capsys.readouterr().out
    assert out.count("profiled") == 2
    cache = json.loads((results / "cli" / "profile.json").read_text())
    assert sorted(cache) == ["tiny_student<--|none|crop=[32, 32]|batch=4|cpu",
                             "tiny_student<-tiny_teacher|kd|crop=[32, 32]|batch=4|cpu"]
    assert all(entry["seconds_per_iteration"] > 0 for entry in cache.values())
    assert main(["plan", str(suite), "--results", str(results)]) == 0
    after = capsys.readouterr().out
    assert "without a measured step time" not in after and "plan --profile on cpu" in after
    hours = sum(entry["seconds_per_iteration"] for entry in cache.values()) * 4 / 3600
    printed = re.search(r"estimate: ([0-9.e+-]+) device-hours for 2 unfinished run", after)
    assert printed and float(printed.group(1)) == pytest.approx(hours, rel=0.05)  # printed to two digits
    assert not (results / "cli" / "runs").exists(), "plan trains nothing"


# --- run: refusals before training ------------------------------------------------------------------------------------


def test_run_refuses_missing_data_before_training(tmp_path, capsys):
    data = {**SUITE, "dataset": {"name": "camvid", "root": str(tmp_path / "no-camvid"), "crop": [32, 32]}}
    assert run(tmp_path, write_suite(tmp_path, data)) == 2
    err = capsys.readouterr().err
    assert "dataset check failed before training" in err and str(tmp_path / "no-camvid") in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "reports").exists()


def test_run_refuses_offline_pretrained_weights_before_training(tmp_path, capsys, monkeypatch):
    from benchmark.models import pretrained

    def offline(build, hub_name):
        raise OSError(f"cannot reach the hub for {hub_name} (no network)")

    monkeypatch.setattr(pretrained, "_hub_create", offline)
    for option, expected in ((True, "could not download ImageNet weights"),
                             (str(tmp_path / "missing.pth"), f"{tmp_path / 'missing.pth'}' does not exist")):
        data = {**SUITE, "students": [{"model": "deeplabv3plus_r18", "options": {"pretrained": option}}]}
        assert run(tmp_path, write_suite(tmp_path, data)) == 2
        err = capsys.readouterr().err
        assert "deeplabv3plus_r18" in err and expected in err and "Traceback" not in err
        assert not (tmp_path / "results").exists()


# --- run: teachers from a checkpoint ----------------------------------------------------------------------------------


def _teacher_file(path: Path, seed: int, nested: bool) -> Path:
    torch.manual_seed(seed)
    state = MODELS.get("tiny_teacher")(NUM_CLASSES).state_dict()
    torch.save({"model": state} if nested else state, path)
    return path


def test_teachers_load_from_a_checkpoint_by_content(tmp_path, capsys):
    records = {}
    for label, seed, nested in (("a", 1, False), ("a-nested", 1, True), ("b", 2, False)):
        folder = tmp_path / label
        folder.mkdir()
        checkpoint = _teacher_file(folder / "teacher.pt", seed, nested)
        data = {**SUITE, "methods": [{"name": "kd"}], "teachers": {"t": {"model": "tiny_teacher",
                                                                        "checkpoint": str(checkpoint)}}}
        assert run(folder, write_suite(folder, data)) == 0
        out = capsys.readouterr().out
        assert f"loaded {checkpoint}" in out and "training (once" not in out
        trained = [p.name for p in (folder / "results" / "cli").glob("teachers/*/*")
                   if p.name in ("metrics.json", "model.pt", "checkpoint.pt", "train.log")]
        assert not trained, f"a loaded teacher is not trained (found {trained})"
        (records[label],) = load_records(folder / "results" / "cli")[1]
    assert records["a"]["teacher_key"] != records["b"]["teacher_key"]
    assert records["a"]["last_losses"] == records["a-nested"]["last_losses"], "the same weights, either layout"
    assert records["a"]["last_losses"]["kd.kd"] != records["b"]["last_losses"]["kd.kd"], "the file's weights are used"


def test_a_teacher_checkpoint_that_does_not_match_fails_the_runs_naming_the_keys(tmp_path, capsys):
    state = _teacher_file(tmp_path / "teacher.pt", 1, False)
    weights = torch.load(state, weights_only=True)
    del weights["classifier.bias"]
    torch.save(weights, state)
    data = {**SUITE, "teachers": {"t": {"model": "tiny_teacher", "checkpoint": str(state)}}}
    assert run(tmp_path, write_suite(tmp_path, data)) == 1  # some run failed
    out = capsys.readouterr().out
    assert "FAILED before training" in out and "missing keys: classifier.bias" in out and str(state) in out
    _, finished, unfinished = load_records(tmp_path / "results" / "cli")
    assert [r["method"] for r in finished] == ["none"], "runs without the teacher still train"
    assert unfinished[0]["status"] == "failed" and "teacher unavailable" in unfinished[0]["reason"]
    missing = {**data, "teachers": {"t": {"model": "tiny_teacher", "checkpoint": str(tmp_path / "nowhere.pt")}}}
    assert run(tmp_path / "m", write_suite(tmp_path, missing, "m.yaml")) == 2
    assert "no such file" in capsys.readouterr().err


# --- the record's cost fields ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("eval_size", [None, [24, 40]])
def test_the_record_counts_cost_independently_checked(tmp_path, eval_size):
    data = {**SUITE, "methods": [{"name": "ickd"}],
            "dataset": {**SUITE["dataset"], "eval_size": eval_size}}
    assert run(tmp_path, write_suite(tmp_path, data)) == 0
    (record,) = load_records(tmp_path / "results" / "cli")[1]
    torch.manual_seed(0)
    student = MODELS.get("tiny_student")(NUM_CLASSES)
    teacher = MODELS.get("tiny_teacher")(NUM_CLASSES)
    method = METHODS.get("ickd")(student.feature_points, teacher.feature_points, NUM_CLASSES)
    size = eval_size or [32, 32]
    cost = record["cost"]
    assert cost["params"] == sum(p.numel() for p in student.parameters())
    assert cost["flops_input_size"] == size
    assert cost["flops"] == fvcore_flops(student, tuple(size))
    assert cost["method_params"] == sum(p.numel() for p in method.parameters() if p.requires_grad) > 0
    assert "multiply-add" in cost["flops_convention"]
    timing = record["timing"]
    assert timing["wall_seconds"] > 0 and timing["world_size"] == 1 and timing["device"] == "cpu"
    assert timing["device_hours"] == pytest.approx(timing["wall_seconds"] / 3600, rel=1e-12)
    assert timing["seconds_per_iteration"] == pytest.approx(timing["wall_seconds"] / 4, rel=1e-12)
    assert timing["peak_memory_bytes"] > 10 * 2**20 and timing["peak_memory_kind"]
    assert record["iterations"] == 4 and record["iterations_per_epoch"] == 4


def test_report_needs_a_results_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--reports", str(tmp_path / "reports")]) == 2
    assert "not a suite's results folder" in capsys.readouterr().err


# --- the smoke suite, end to end in miniature ------------------------------------------------------------------------

MINIATURE = ["--set", "dataset.crop=[32, 32]",
             "--set", "dataset.options={image_size: 32, num_train: 16, num_val: 8, num_test: 8}",
             "--set", "schedule.iterations=3", "--set", "schedule.batch_size=4", "--set", "schedule.eval_every=2",
             "--set", "schedule.warmup_iterations=1", "--set", "schedule.checkpoint_every=2",
             "--set", "schedule.log_every=1", "--set", "teachers.teacher.schedule.iterations=3", "--set", "seeds=[0]"]


def test_smoke_suite_end_to_end_in_miniature(tmp_path, capsys):
    suite = ROOT / "suites" / "smoke.yaml"
    assert run(tmp_path, suite, *MINIATURE) == 0
    out = capsys.readouterr().out
    assert "failed 0" in out
    smoke = yaml.safe_load(suite.read_text())
    rows = [m.get("label") or m["name"] for m in smoke["methods"]]
    students = [s["model"] for s in smoke["students"]]
    suite_record, finished, unfinished = load_records(tmp_path / "results" / "smoke")
    assert not unfinished and len(finished) == len(rows) * len(students)
    assert {(r["student"], r["method"]) for r in finished} == {(s, m) for s in students for m in rows}
    for record in finished:
        assert record["iterations"] == 3 and 0 <= record["final"]["miou"] <= 1
        assert record["best"]["selected_on"] == "val" and [h["iteration"] for h in record["history"]] == [2, 3]
    report = tmp_path / "reports" / "smoke"
    page = (report / "index.html").read_text()
    assert all(row in page for row in rows) and suite_record["parts"][0]["title"] in page
    assert len((report / "results.csv").read_text().strip().splitlines()) >= 1 + len(finished)
    assert (report / "tables.md").is_file() and (report / "tables.tex").is_file()
