"""The precision a run computes in is part of its result: recorded, shown in the report, checked on resume."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml

from benchmark.engine.checkpoint import PrecisionMismatchError, stored_precision
from benchmark.engine.train import TrainJob, resolved_precision, run_training
from benchmark.store import load_records
from benchmark.suite import ScheduleConfig, expand, load_suite
from tests.test_runner import run_cli, write_suite

SMOKE = Path(__file__).resolve().parent.parent / "suites" / "smoke.yaml"

MINI = {
    "name": "mini",
    "dataset": {"name": "synthetic", "crop": [32, 32], "scale_range": [1.0, 1.0],
                "options": {"image_size": 32, "num_train": 16, "num_val": 8, "num_test": 8}},
    "schedule": {"iterations": 4, "batch_size": 4, "lr": 0.01, "eval_every": 0, "eval_batch_size": 8,
                 "checkpoint_every": 2, "log_every": 2},
    "students": [{"model": "tiny_student_narrow"}],
    "methods": [{"name": "none"}],
    "seeds": [0],
    "report": {"qualitative_indices": []},
}


def run(tmp_path: Path, *extra: str) -> int:
    return run_cli(tmp_path, write_suite(tmp_path, MINI), *extra)


@pytest.mark.parametrize(("device", "amp", "expected"), [
    ("cpu", "auto", "fp32"), ("cpu", "bf16", "fp32"), ("cpu", "off", "fp32"),
    ("cuda", "auto", "bf16"), ("cuda", "bf16", "bf16"), ("cuda", "off", "fp32"),
])
def test_precision_is_resolved_from_amp_and_the_device(device, amp, expected):
    assert resolved_precision(torch.device(device), {"amp": amp}) == expected


def test_amp_is_not_part_of_the_run_key():
    """The same suite has the same keys on a CPU login node (fp32) and a GPU job (bf16)."""
    keys = {amp: [r.key for r in expand(load_suite(SMOKE, [f"runtime.amp={amp}"]).parts[0])[0]]
            for amp in ("auto", "off", "bf16")}
    assert keys["auto"] == keys["off"] == keys["bf16"]


def test_amp_off_unquoted_in_yaml_means_off(tmp_path):
    """YAML reads `amp: off` as False; the docs (and protocol cards) write it unquoted."""
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(MINI) + "runtime:\n  amp: off\n  channels_last: on\n")
    runtime = load_suite(path).parts[0].runtime
    assert (runtime.amp, runtime.channels_last) == ("off", "on")
    assert resolved_precision(torch.device("cuda"), runtime.model_dump()) == "fp32"


def test_record_checkpoint_and_report_hold_the_precision_and_a_resume_in_another_is_refused(tmp_path, capsys):
    assert run(tmp_path) == 0
    _, (record,), _ = load_records(tmp_path / "results" / "mini")
    assert record["precision"] == {"train": "fp32", "eval": "fp32"}
    run_dir = tmp_path / "results" / "mini" / "runs" / record["run_key"]
    assert stored_precision(run_dir / "checkpoint.pt") == "fp32"
    html = (tmp_path / "reports" / "mini" / "index.html").read_text()
    assert "<dt>Precision</dt><dd>fp32 (1)" in html
    csv = (tmp_path / "reports" / "mini" / "results.csv").read_text().splitlines()
    header = csv[0].split(",")
    assert csv[1].split(",")[header.index("train_precision")] == "fp32"

    # An interrupted run whose checkpoint was trained in bf16 (on a GPU) must not continue here in fp32.
    checkpoint = run_dir / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["precision"] = "bf16"
    torch.save(state, checkpoint)
    (run_dir / "metrics.json").unlink()
    before = checkpoint.read_bytes()
    capsys.readouterr()
    assert run(tmp_path) == 2
    err = capsys.readouterr().err
    assert "tiny_student_narrow / none / seed 0" in err and record["run_key"] in err
    assert "trained in bf16" in err and "resume it in fp32" in err
    assert checkpoint.read_bytes() == before and not (run_dir / "metrics.json").exists(), "nothing was trained"


def test_the_training_loop_refuses_a_checkpoint_of_another_precision(tmp_path):
    """The loop checks too (a job started by an executor on another kind of device reaches it directly)."""
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(MINI))
    dataset = load_suite(path).parts[0].dataset.resolved()
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({"precision": "bf16"}, folder / "checkpoint.pt")
    job = TrainJob(name="tiny_student_narrow/none/s0", folder=folder, dataset=dataset, dataset_root=None,
                   schedule=ScheduleConfig(**MINI["schedule"]), model_name="tiny_student_narrow", model_options={},
                   seed=0, methods=[{"name": "none", "hparams": {}}])
    with pytest.raises(PrecisionMismatchError, match=r"run tiny_student_narrow/none/s0: .*checkpoint.pt was trained in "
                                                     r"bf16, but this process would resume it in fp32"):
        run_training(job, torch.device("cpu"), logging.getLogger("test"))
