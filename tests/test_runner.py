"""The harness end to end on the synthetic dataset: run, store, skip, resume after SIGKILL, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from benchmark.__main__ import main
from benchmark.store import load_records

ROOT = Path(__file__).resolve().parent.parent

MINI = {
    "name": "mini",
    "dataset": {"name": "synthetic", "crop": [32, 32], "scale_range": [1.0, 1.0],
                "options": {"image_size": 32, "num_train": 16, "num_val": 8, "num_test": 8}},
    "schedule": {"iterations": 6, "batch_size": 4, "lr": 0.01, "eval_every": 3, "eval_batch_size": 8,
                 "checkpoint_every": 3, "log_every": 2},
    "teachers": {"t": {"model": "tiny_teacher", "schedule": {"iterations": 4}}},
    "students": [{"model": "tiny_student"}],
    "methods": [{"name": "none"}, {"name": "kd"}],
    "seeds": [0],
    "claims": [{"student": "tiny_student", "method": "kd", "miou": 42.0, "source": "made up for a test"}],
}


def write_suite(tmp_path: Path, data: dict, name: str = "mini.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(tmp_path: Path, suite: Path, *extra: str) -> int:
    return main(["run", str(suite), "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports"),
                 *extra])


def test_run_stores_records_reports_and_skips_finished_runs(tmp_path, capsys):
    suite = write_suite(tmp_path, MINI)
    assert run_cli(tmp_path, suite) == 0
    out = capsys.readouterr().out
    report = tmp_path / "reports" / "mini" / "index.html"
    assert f"report: {report}" in out and report.is_file()
    suite_record, finished, unfinished = load_records(tmp_path / "results" / "mini")
    assert len(finished) == 2 and not unfinished
    assert suite_record["parts"][0]["claims"][0]["miou"] == 42.0
    kd = next(r for r in finished if r["method"] == "kd")
    assert kd["teacher"] == "tiny_teacher" and kd["seed"] == 0 and kd["status"] == "done"
    for key in ("miou", "pixel_accuracy", "per_class_iou"):
        assert key in kd["final"] and key in kd["best"]
    assert kd["best"]["selected_on"] == "val" and len(kd["final"]["per_class_iou"]) == 7
    assert kd["cost"]["params"] > 0 and kd["cost"]["flops"] > 0 and kd["cost"]["flops_input_size"] == [32, 32]
    assert kd["environment"]["versions"]["torch"] and "git_commit" in kd["environment"]
    assert kd["timing"]["wall_seconds"] > 0 and kd["config"]["method"]["components"][0]["name"] == "kd"
    teachers = list((tmp_path / "results" / "mini" / "teachers").glob("*/metrics.json"))
    assert len(teachers) == 1
    assert (tmp_path / "reports" / "mini" / "results.csv").is_file()
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("metrics.json")}

    assert run_cli(tmp_path, suite) == 0
    out = capsys.readouterr().out
    assert "2 runs, 2 already finished, 0 to train" in out and "trained 0" in out
    assert "teacher" not in out.split("0 to train")[1].split("trained 0")[0], "a finished suite loads no teacher"
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("metrics.json")} == mtimes

    assert main(["plan", str(suite), "--results", str(tmp_path / "results")]) == 0
    assert capsys.readouterr().out.count("done") >= 2
    assert main(["report", str(tmp_path / "results" / "mini"), "--reports", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "mini" / "index.html").is_file()


def test_same_seed_same_numbers_and_different_seed_differs(tmp_path):
    data = {**MINI, "methods": [{"name": "none"}], "claims": [], "seeds": [0, 1]}
    scores = []
    for attempt in ("a", "b"):
        results = tmp_path / attempt
        assert main(["run", str(write_suite(tmp_path, data)), "--results", str(results), "--reports",
                     str(tmp_path / f"rep{attempt}")]) == 0
        _, finished, _ = load_records(results / "mini")
        scores.append({r["seed"]: r["final"]["per_class_iou"] for r in finished})
    assert json.dumps(scores[0]) == json.dumps(scores[1])
    assert scores[0][0] != scores[0][1]


def test_a_failed_run_is_recorded_and_the_suite_goes_on(tmp_path, capsys, monkeypatch):
    import methods.kd

    monkeypatch.setattr(methods.kd, "pixel_kd", lambda s, t, temperature: (s * float("nan")).mean())
    assert run_cli(tmp_path, write_suite(tmp_path, MINI)) == 1
    out = capsys.readouterr().out
    assert "FAILED: NonFiniteLossError" in out
    _, finished, unfinished = load_records(tmp_path / "results" / "mini")
    assert [r["method"] for r in finished] == ["none"]
    assert unfinished[0]["status"] == "failed" and "non-finite loss" in unfinished[0]["reason"]
    html = (tmp_path / "reports" / "mini" / "index.html").read_text()
    assert "non-finite loss" in html


def test_resume_is_strict_about_checkpoint_keys(tmp_path, capsys):
    data = {**MINI, "methods": [{"name": "none"}], "claims": []}
    suite = write_suite(tmp_path, data)
    assert run_cli(tmp_path, suite) == 0
    run_dir = next((tmp_path / "results" / "mini" / "runs").iterdir())
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    state["model"]["unexpected.weight"] = torch.zeros(1)
    del state["model"]["classifier.bias"]
    torch.save(state, run_dir / "checkpoint.pt")
    (run_dir / "metrics.json").rename(run_dir / "old-metrics.json")
    capsys.readouterr()
    assert run_cli(tmp_path, suite) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "checkpoint.pt" in out
    assert "missing keys: classifier.bias" in out and "unexpected keys: unexpected.weight" in out


def _subprocess_run(suite: Path, results: Path, reports: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "benchmark", "run", str(suite), "--results", str(results),
                             "--reports", str(reports)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path, capsys):
    data = {**MINI, "methods": [{"name": "kd"}],
            "schedule": {**MINI["schedule"], "iterations": 60, "checkpoint_every": 5, "eval_every": 20}}
    suite = write_suite(tmp_path, data)

    reference = _subprocess_run(suite, tmp_path / "r1", tmp_path / "p1")
    assert reference.wait(timeout=600) == 0, reference.stdout.read()

    killed = _subprocess_run(suite, tmp_path / "r2", tmp_path / "p2")
    runs = tmp_path / "r2" / "mini" / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and not list(runs.glob("*/checkpoint.pt")):
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert not list(runs.glob("*/metrics.json")), "the run finished before it could be killed"
    capsys.readouterr()
    assert main(["plan", str(suite), "--results", str(tmp_path / "r2")]) == 0
    assert "interrupted" in capsys.readouterr().out, "a killed run is shown as interrupted, not running"
    resumed = _subprocess_run(suite, tmp_path / "r2", tmp_path / "p2")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "resuming" in output

    _, (first,), _ = load_records(tmp_path / "r1" / "mini")
    _, (second,), _ = load_records(tmp_path / "r2" / "mini")
    assert second["final"]["miou"] == first["final"]["miou"]
    assert second["final"]["per_class_iou"] == first["final"]["per_class_iou"]
    assert second["best"] == first["best"]
    assert second["last_losses"] == pytest.approx(first["last_losses"], rel=0, abs=0)


def test_every_registered_method_trains_in_the_smoke_suites(tmp_path, capsys):
    """smoke.yaml (seed methods) and smoke_baselines.yaml (every baseline) cover the whole registry, and the
    baselines suite runs end to end through the real harness with no failed run."""
    from benchmark.registry import METHODS
    from benchmark.suite import load_suite

    covered = set()
    for name in ("smoke.yaml", "smoke_baselines.yaml"):
        for method in load_suite(ROOT / "suites" / name).parts[0].methods:
            covered |= {c.name for c in method.parts()}
    assert covered == set(METHODS.names())

    assert run_cli(tmp_path, ROOT / "suites" / "smoke_baselines.yaml") == 0
    assert "failed 0" in capsys.readouterr().out
    _, finished, unfinished = load_records(tmp_path / "results" / "smoke_baselines")
    assert not unfinished and len(finished) == 13
    for record in finished:
        assert 0 <= record["final"]["miou"] <= 1
        if record["method"] != "none":
            assert record["last_losses"].keys() - {"ce", "total"}, f"{record['method']} logged no loss term"


def test_student_frozen_steps_train_only_the_method(tmp_path):
    """AttnFD's code trains only the connectors in epoch 0: the student must come out of those steps unchanged
    (conv weights equal to its seeded initialisation) while the method's connectors move."""
    from benchmark.engine.train import build_method, seed_everything
    from benchmark.registry import MODELS

    data = {**MINI, "claims": [], "methods": [{"name": "attnfd", "hparams": {"connector_warmup_epochs": 1,
                                                                             "teacher_attention": "untrained"}}],
            "schedule": {**MINI["schedule"], "iterations": 2, "eval_every": 0, "checkpoint_every": 2}}
    assert run_cli(tmp_path, write_suite(tmp_path, data)) == 0
    run_dir = next((tmp_path / "results" / "mini" / "runs").iterdir())
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)

    seed_everything(0)
    student = MODELS.get("tiny_student")(7)
    teacher = MODELS.get("tiny_teacher")(7)
    method = build_method([{"name": "attnfd", "hparams": {"connector_warmup_epochs": 1,
                                                          "teacher_attention": "untrained"}}], student, teacher)
    for key, value in student.state_dict().items():
        if key.endswith("weight") and value.dim() == 4:
            assert torch.equal(state["model"][key], value), f"student {key} changed during a frozen step"
    moved = [k for k, v in method.state_dict().items() if v.is_floating_point() and not torch.equal(state["method"][k], v)]
    assert any("connector" in k for k in moved), moved


def test_worker_count_changes_neither_the_run_key_nor_the_numbers(tmp_path):
    """Augmentation is seeded per sample, so decoding in 2 worker processes gives the in-process numbers."""
    data = {**MINI, "methods": [{"name": "none"}], "claims": []}
    suite = write_suite(tmp_path, data)
    records = []
    for workers in (0, 2):
        results = tmp_path / f"w{workers}"
        assert main(["run", str(suite), "--results", str(results), "--reports", str(tmp_path / f"r{workers}"),
                     "--set", f"runtime.num_workers={workers}"]) == 0
        records.append(load_records(results / "mini")[1][0])
    assert records[0]["run_key"] == records[1]["run_key"]
    assert records[0]["final"]["per_class_iou"] == records[1]["final"]["per_class_iou"]
