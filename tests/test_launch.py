"""Many processes on one suite: two `run`s at once, the local device pool, Slurm submission, requeue, status."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.__main__ import main
from benchmark.launch import LaunchError, RunJob, SlotPool, device_slots
from benchmark.lock import STALE_ENV
from benchmark.runner import WAIT_POLL_ENV
from benchmark.store import load_records
from tests.test_runner import MINI, write_suite

ROOT = Path(__file__).resolve().parent.parent

#: The smoke suite in miniature: runs without a teacher, and runs waiting for one that takes a while to train.
TWO_STUDENT_SEEDS = {**MINI, "seeds": [0, 1], "teachers": {"t": {"model": "tiny_teacher", "schedule": {"iterations": 24}}}}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", WAIT_POLL_ENV: "0.3", **extra}


def _run_process(suite: Path, results: Path, reports: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmark", "run", str(suite), "--results", str(results),
                             "--reports", str(reports), *extra], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _training_starts(folder: Path) -> int:
    """How many times a run folder's training started (resumes included)."""
    return (folder / "train.log").read_text().count("training images")


def test_two_runs_started_together_train_every_run_exactly_once_and_fail_none(tmp_path):
    suite = write_suite(tmp_path, TWO_STUDENT_SEEDS)
    processes = [_run_process(suite, tmp_path / "results", tmp_path / "reports") for _ in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
        assert "FAILED" not in output and "failed 0" in output, output
    _, finished, unfinished = load_records(tmp_path / "results" / "mini")
    assert len(finished) == 4 and not unfinished
    folders = [*glob.glob(str(tmp_path / "results" / "mini" / "runs" / "*")),
               *glob.glob(str(tmp_path / "results" / "mini" / "teachers" / "*"))]
    assert len(folders) == 5
    assert all(_training_starts(Path(folder)) == 1 for folder in folders), "a run or the teacher trained twice"
    assert not list((tmp_path / "results").rglob("lock")), "every lock is released"
    trained = sum(int(output.split("trained ")[-1].split(",")[0]) for output in outputs)
    assert trained == 4


def test_a_teacher_held_by_another_host_is_waited_for_then_taken_when_its_heartbeat_stops(tmp_path, capsys,
                                                                                       monkeypatch):
    monkeypatch.setenv(STALE_ENV, "3")
    monkeypatch.setenv(WAIT_POLL_ENV, "0.2")
    suite = write_suite(tmp_path, MINI)
    from benchmark.runner import make_plan
    from benchmark.suite import load_suite

    plan = make_plan(load_suite(suite), tmp_path / "results")
    teacher = plan.store.teacher(next(iter(plan.parts[0].teachers.values())).key)
    teacher.path.mkdir(parents=True)
    teacher.lock_path.write_text(json.dumps({"host": "other-node", "pid": 1, "slurm_job_id": "9", "token": "x",
                                             "since": "earlier", "heartbeat": time.time()}))
    assert main(["run", str(suite), "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "teacher t is being trained on other-node (pid 1, Slurm job 9)" in out
    assert "waiting for it" in out and "FAILED" not in out and "failed 0" in out
    assert out.index("tiny_student / none") < out.index("waiting for it"), "runs without the teacher go first"
    _, finished, unfinished = load_records(tmp_path / "results" / "mini")
    assert len(finished) == 2 and not unfinished and teacher.done


def test_device_slots_pin_gpus_per_run_and_split_cpu_cores():
    assert device_slots(None, 1, [0, 1, 2, 3], cores=16) == [(0,), (1,), (2,), (3,)]
    assert device_slots(None, 2, [4, 5, 6, 7], cores=16) == [(4, 5), (6, 7)]
    assert device_slots(2, 1, [0, 1, 2], cores=16) == [(0,), (1,)]
    assert device_slots(None, 1, [], cores=2) == [(), ()]
    assert device_slots(None, 2, [], cores=8) == [(), (), (), ()]
    with pytest.raises(LaunchError, match="--workers 3: 2 visible GPU"):
        device_slots(3, 1, [0, 1], cores=16)
    with pytest.raises(LaunchError, match="resources.gpus=4"):
        device_slots(None, 4, [0, 1], cores=16)


def test_the_slot_pool_runs_one_job_per_gpu_at_a_time_pinned_to_it(tmp_path):
    import concurrent.futures

    import submitit

    command = ["sh", "-c", 'date +%s.%N; echo "$CUDA_VISIBLE_DEVICES|$OMP_NUM_THREADS"; sleep 1; date +%s.%N']
    pool = SlotPool(tmp_path / "%j", [(0,), (1,)], tasks=1, threads=3, timeout_min=5, setup=[])
    futures = [pool.submit(submitit.helpers.CommandFunction(command), (), lambda job, slot: None) for _ in range(4)]
    outputs = [future.result(timeout=300).split("\n") for future in concurrent.futures.as_completed(futures)]
    assert sorted(devices for _, devices, _ in outputs) == ["0|3", "0|3", "1|3", "1|3"]
    spans = [(float(start), float(end)) for start, _, end in outputs]
    for start, _ in spans:
        assert sum(s <= start < e for s, e in spans) <= 2, "more jobs ran at once than there are slots"


def test_local_executor_with_two_workers_finishes_every_run_teacher_first(tmp_path, capsys):
    suite = write_suite(tmp_path, MINI)
    assert main(["run", str(suite), "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports"),
                 "--executor", "local", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "on 2 slot(s)" in out and "FAILED" not in out and "trained 2, failed 0" in out
    assert out.index("teacher t (tiny_teacher): trained") < out.index("tiny_student / kd / seed 0: started")
    _, finished, unfinished = load_records(tmp_path / "results" / "mini")
    assert len(finished) == 2 and not unfinished
    jobs = json.loads((tmp_path / "results" / "mini" / "jobs.json").read_text())
    teachers = {path.name for path in (tmp_path / "results" / "mini" / "teachers").iterdir()}
    assert set(jobs) == {record["run_key"] for record in finished} | teachers and len(jobs) == 3
    assert all(entries[-1]["executor"] == "local" for entries in jobs.values())
    for record in finished:
        assert record["launch"]["executor"] == "local" and record["launch"]["job_id"] == \
            jobs[record["run_key"]][-1]["job_id"]
    kd = next(r for r in finished if r["method"] == "kd")
    assert "trained already, loading" in Path(jobs[kd["run_key"]][-1]["log"]).read_text()
    assert (tmp_path / "reports" / "mini" / "index.html").is_file()


def test_a_requeued_local_job_resumes_and_ends_with_the_numbers_of_an_uninterrupted_run(tmp_path):
    data = {**MINI, "methods": [{"name": "none"}], "claims": [],
            "schedule": {**MINI["schedule"], "iterations": 30, "checkpoint_every": 5, "eval_every": 10}}
    suite = write_suite(tmp_path, data)
    local = ("--executor", "local", "--workers", "1")
    reference = _run_process(suite, tmp_path / "r1", tmp_path / "p1", *local)
    interrupted = _run_process(suite, tmp_path / "r2", tmp_path / "p2", *local)
    runs = tmp_path / "r2" / "mini" / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and not list(runs.glob("*/checkpoint.pt")):
        time.sleep(0.02)
    (folder,) = runs.iterdir()
    pid = json.loads((folder / "lock").read_text())["pid"]
    os.kill(pid, signal.SIGUSR2)  # what Slurm sends before a preemption or the time limit
    for process in (reference, interrupted):
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0 and "failed 0" in output, output
    assert len(list((tmp_path / "r2").rglob("metrics.json"))) == 1
    log = (folder / "train.log").read_text()
    assert "resumed from" in log and _training_starts(folder) == 2
    job_logs = "".join(p.read_text() for p in (tmp_path / "r2" / "mini" / ".submitit").rglob("*_log.out"))
    assert "Caught signal SIGUSR2" in job_logs and "Requeued job" in job_logs
    _, (first,), _ = load_records(tmp_path / "r1" / "mini")
    _, (second,), _ = load_records(tmp_path / "r2" / "mini")
    assert second["launch"]["attempt"] == 2 and first["launch"]["attempt"] == 1
    assert second["final"]["per_class_iou"] == first["final"]["per_class_iou"]
    assert second["final"]["miou"] == first["final"]["miou"] and second["best"] == first["best"]
    assert second["last_losses"] == first["last_losses"] and second["history"] == first["history"]


def test_a_job_started_on_another_commit_says_so_in_its_log_and_record(tmp_path, monkeypatch):
    for name, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "123", "SUBMITIT_LOCAL_NTASKS": "1",
                        "SUBMITIT_LOCAL_GLOBALID": "0", "SUBMITIT_LOCAL_LOCALID": "0"}.items():
        monkeypatch.setenv(name, value)
    suite = write_suite(tmp_path, {**MINI, "methods": [{"name": "none"}], "claims": []})
    from benchmark.runner import make_plan
    from benchmark.suite import load_suite

    (run,) = make_plan(load_suite(suite), tmp_path / "results").runs
    assert RunJob()(str(suite), "[]", str(tmp_path / "results"), run.key, "student", "0" * 40) == "trained"
    _, (record,), _ = load_records(tmp_path / "results" / "mini")
    assert record["launch"]["commit_changed"] is True and record["launch"]["submitted_commit"] == "0" * 40
    assert record["launch"]["job_id"] == "123" and record["launch"]["executor"] == "local"
    log = (tmp_path / "results" / "mini" / "runs" / run.key / "train.log").read_text()
    assert "not 0000000000000000000000000000000000000000 it was submitted from" in log


FAKE_SBATCH = """#!/bin/sh
n=$(( $(cat "$FAKE_SLURM/counter" 2>/dev/null || echo 40) + 1 ))
echo "$n" > "$FAKE_SLURM/counter"
for last; do :; done
cp "$last" "$FAKE_SLURM/job_$n.sh"
echo "Submitted batch job $n"
"""
FAKE_SACCT = """#!/bin/sh
echo "JobID|State|NodeList"
cat "$FAKE_SLURM/sacct.txt" 2>/dev/null
"""
FAKE_FAILS = """#!/bin/sh
echo "this fake only exists to be found on PATH" >&2
exit 1
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in {"sbatch": FAKE_SBATCH, "sacct": FAKE_SACCT, "srun": FAKE_FAILS, "scontrol": FAKE_FAILS}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(state))
    return state


def _scripts(state: Path) -> dict[int, str]:
    return {int(p.stem.split("_")[1]): p.read_text() for p in state.glob("job_*.sh")}


def test_slurm_submission_holds_a_teacher_job_and_student_arrays_after_it(tmp_path, fake_slurm, capsys):
    suite = write_suite(tmp_path, TWO_STUDENT_SEEDS)
    results = tmp_path / "results"
    args = ["run", str(suite), "--results", str(results), "--reports", str(tmp_path / "reports"), "--executor",
            "slurm", "--set", "resources.time=90", "--set", "resources.teacher_time=240", "--set", "resources.gpus=2",
            "--set", "resources.partition=gpu", "--set", "resources.account=kd-lab", "--set", "resources.mem_gb=32"]
    assert main(args) == 0
    out = capsys.readouterr().out
    scripts = _scripts(fake_slurm)
    assert sorted(scripts) == [41, 42, 43]
    teacher, plain, distilled = scripts[41], scripts[42], scripts[43]
    assert "--array" not in teacher and "--time=240" in teacher and "--dependency" not in teacher
    assert "#SBATCH --array=0-1%2" in plain and "--dependency" not in plain, "runs without a teacher wait for none"
    assert "#SBATCH --array=0-1%2" in distilled and "#SBATCH --dependency=afterok:41" in distilled
    assert "#SBATCH --kill-on-invalid-dep=yes" in distilled
    for script in scripts.values():
        for flag in ("--signal=USR2@120", "--gpus-per-node=2", "--ntasks-per-node=2", "--partition=gpu",
                     "--account=kd-lab", "--mem=32GB", "--requeue", "--kill-on-bad-exit=1"):
            assert flag in script, (flag, script)
        assert "torchrun" not in script and "srun --unbuffered" in script
    assert "--time=90" in plain and "--time=90" in distilled
    jobs = json.loads((results / "mini" / "jobs.json").read_text())
    from benchmark.runner import make_plan
    from benchmark.suite import load_suite

    plan = make_plan(load_suite(suite), results)
    by_method = {run.key: run.method_label for run in plan.runs}
    assert set(jobs) == set(by_method) | {t.key for t in plan.parts[0].teachers.values()}
    for key, method in by_method.items():
        job = jobs[key][-1]
        assert job["job_id"].split("_")[0] == ("43" if method == "kd" else "42")
        assert job["depends_on"] == ("41" if method == "kd" else None)
    assert "submitted as job 41" in out and "report:" in out

    # A plain `run` after the submission trains nothing here: it renders the report of what has finished.
    assert main(["run", str(suite), "--results", str(results), "--reports", str(tmp_path / "reports")]) == 0
    out = capsys.readouterr().out
    assert "0 of 4 runs finished; 4 unfinished run(s) were submitted to Slurm" in out and "report:" in out
    assert not list((results / "mini" / "runs").glob("*/train.log"))

    # Pending jobs are queued, not submitted again; status shows each with its job and the way to resume.
    (fake_slurm / "sacct.txt").write_text("41|RUNNING|node7\n42_[0-1]|PENDING|\n43_[0-1]|PENDING|\n")
    assert main(args) == 0
    assert sorted(_scripts(fake_slurm)) == [41, 42, 43]
    capsys.readouterr()
    assert main(["status", str(suite), "--results", str(results)]) == 0
    status = capsys.readouterr().out
    assert "running slurm job 41 (RUNNING)" in status
    assert len(re.findall(r"^  [0-9a-f]{16}  queued ", status, flags=re.MULTILINE)) == 4
    assert "slurm job 43_1 (PENDING)" in status
    assert f"python -m benchmark run {suite} --results {results} --executor slurm" in status

    # A cancelled array (its teacher failed) shows as failed with its log (status exits 1), and is submitted again.
    (fake_slurm / "sacct.txt").write_text("41|FAILED|node7\n42_[0-1]|PENDING|\n43_[0-1]|CANCELLED by 0|\n")
    assert main(["status", str(suite), "--results", str(results)]) == 1
    status = capsys.readouterr().out
    assert "slurm job 43_0 (CANCELLED) ended; log:" in status and "failed" in status
    assert main(args) == 0
    assert sorted(_scripts(fake_slurm)) == [41, 42, 43, 44, 45]
    assert "#SBATCH --dependency=afterok:44" in _scripts(fake_slurm)[45]


def test_slurm_students_of_a_trained_teacher_depend_on_nothing(tmp_path, fake_slurm, capsys):
    trained_once = write_suite(tmp_path, {**MINI, "methods": [{"name": "kd"}]}, name="once.yaml")
    assert main(["run", str(trained_once), "--results", str(tmp_path / "results"), "--reports",
                 str(tmp_path / "reports")]) == 0
    more_seeds = write_suite(tmp_path, {**MINI, "methods": [{"name": "kd"}], "seeds": [0, 1, 2]})
    capsys.readouterr()
    assert main(["plan", str(more_seeds), "--results", str(tmp_path / "results")]) == 0
    # 6 iterations at the finished run's step time: 1.5x that + 10 minutes rounds up to 11.
    assert "suggested job time limit: --set resources.time=11" in capsys.readouterr().out
    assert main(["run", str(more_seeds), "--results", str(tmp_path / "results"), "--reports",
                 str(tmp_path / "reports"), "--executor", "slurm"]) == 0
    (script,) = _scripts(fake_slurm).values()
    assert "#SBATCH --array=0-1%2" in script and "--dependency" not in script and "kill-on-invalid-dep" not in script
    assert "--gpus-per-node=1" in script and "#SBATCH --time=11" in script


def test_slurm_without_a_time_limit_or_sbatch_stops_with_a_clear_message(tmp_path, fake_slurm, capsys, monkeypatch):
    suite = write_suite(tmp_path, MINI)
    base = ["run", str(suite), "--results", str(tmp_path / "results"), "--executor", "slurm"]
    assert main(base) == 2
    assert "resources.teacher_time (or resources.time) is not set" in capsys.readouterr().err
    assert main([*base, "--set", "resources.teacher_time=60"]) == 2
    assert "resources.time is not set and 1 run(s) have no measured step time" in capsys.readouterr().err
    assert not _scripts(fake_slurm), "a suite that cannot be submitted submits nothing"
    assert main([*base, "--workers", "2"]) == 2
    assert "--workers is for --executor local" in capsys.readouterr().err
    assert main([*base, "--set", "resources.gpus=-1"]) == 2
    assert "resources.gpus" in capsys.readouterr().err
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main([*base, "--set", "resources.time=5"]) == 2
    assert "`sbatch` is not on PATH" in capsys.readouterr().err
    assert not _scripts(fake_slurm)


def test_resources_do_not_change_run_keys(tmp_path):
    from benchmark.runner import make_plan
    from benchmark.suite import load_suite

    suite = write_suite(tmp_path, MINI)
    keys = [[run.key for run in make_plan(load_suite(suite, overrides), tmp_path).runs]
            for overrides in ([], ["resources.time=600", "resources.gpus=4", "resources.partition=a100"])]
    assert keys[0] == keys[1]


def test_a_process_told_to_stop_waits_in_no_barrier_and_leaves_its_run_to_resume(tmp_path, monkeypatch):
    """submitit's requeue handler exits rank 0 with SystemExit while the other ranks still train: a barrier
    on the way out would hang until the job is killed."""
    import benchmark.runner
    from benchmark.engine import distributed

    barriers = []
    monkeypatch.setattr(distributed, "barrier", lambda: barriers.append(1))

    def stopped(*args, **kwargs):
        raise SystemExit(-1)

    monkeypatch.setattr(benchmark.runner, "run_training", stopped)
    suite = write_suite(tmp_path, {**MINI, "methods": [{"name": "none"}], "claims": []})
    with pytest.raises(SystemExit):
        main(["run", str(suite), "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")])
    assert not barriers
    (folder,) = (tmp_path / "results" / "mini" / "runs").iterdir()
    assert not (folder / "lock").exists()
    _, finished, (unfinished,) = load_records(tmp_path / "results" / "mini")
    assert not finished and unfinished["status"] == "interrupted"


def test_a_run_on_two_devices_is_one_job_of_two_tasks_with_ranks_from_the_job(tmp_path, capsys):
    """resources.gpus: 2 makes one job of two tasks; on CPU they join a gloo group through submitit's
    TorchDistributedEnvironment (MASTER_ADDR the job's host, MASTER_PORT seeded by the job id)."""
    suite = write_suite(tmp_path, {**MINI, "methods": [{"name": "none"}], "claims": [], "schedule": {**MINI["schedule"],
                                                                                        "batch_size": 2}})
    assert main(["run", str(suite), "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports"),
                 "--executor", "local", "--workers", "1", "--set", "resources.gpus=2"]) == 0
    assert "2 process(es) per run" in capsys.readouterr().out
    _, (record,), unfinished = load_records(tmp_path / "results" / "mini")
    assert not unfinished and record["timing"]["world_size"] == 2 and record["launch"]["tasks"] == 2
    logs = sorted((tmp_path / "results" / "mini" / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2 and "global_rank=1(2)" in logs[1].read_text()


def test_one_visible_gpu_is_cuda_0_whatever_the_local_rank(monkeypatch):
    import torch

    from benchmark.engine import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed.setup() == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert distributed.setup() == torch.device("cuda", 3)


def test_jobs_get_the_results_root_the_submitter_uses_with_home_expanded(tmp_path, monkeypatch):
    """``--results=~/r`` reaches the program unexpanded: a job started elsewhere must still write where the
    submitting process reads, not into ``<its cwd>/~/r``."""
    from benchmark.launch import Job, _job_args
    from benchmark.store import ResultStore
    from benchmark.suite import load_suite

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    suite_file = load_suite(write_suite(tmp_path, MINI))
    store = ResultStore("~/r", suite_file.name)
    job = Job(key="k", role="student", label="run", part=None, config={})
    root = Path(_job_args(suite_file, [], store, job, "")[2])
    assert root == tmp_path / "home" / "r" and ResultStore(root, suite_file.name).root == store.root
