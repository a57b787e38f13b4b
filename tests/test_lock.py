"""The run-folder lock on a shared filesystem: judged by heartbeat across hosts, by pid on this host only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from benchmark import lock as run_lock
from benchmark.store import RunFolder, RunLockedError


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _write_lock(folder: RunFolder, host: str, pid: int, age_s: float = 0.0, job: str | None = None) -> str:
    folder.path.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"host": host, "pid": pid, "slurm_job_id": job, "slurm_step_id": None, "token": "theirs",
                       "since": "2024-01-01T00:00:00+0000", "heartbeat": time.time() - age_s})
    folder.lock_path.write_text(text)
    return text


@pytest.fixture(autouse=True)
def _limits(monkeypatch):
    monkeypatch.setenv(run_lock.STALE_ENV, "60")
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_STEP_ID"):
        monkeypatch.delenv(name, raising=False)


def test_a_lock_from_another_host_is_never_judged_by_a_local_pid(tmp_path):
    run = RunFolder(tmp_path / "run")
    for pid in (os.getpid(), _dead_pid()):  # alive here, dead here: both mean nothing for another host
        text = _write_lock(run, "other-node", pid, age_s=5)
        with pytest.raises(RunLockedError, match=f"other-node \\(pid {pid}\\)"):
            run.acquire()
        assert run.lock_path.read_text() == text, "a live lock from another host is left as it is"
        with pytest.raises(RunLockedError, match="must not write"):
            run.set_status("failed", reason="teacher unavailable")
        with pytest.raises(RunLockedError):
            run.write_metrics({"final": {}})
        assert not run.status_path.exists() and not run.metrics_path.exists()


def test_status_says_where_a_run_is_running_and_a_stale_one_is_interrupted(tmp_path):
    run = RunFolder(tmp_path / "run")
    _write_lock(run, "other-node", 4242, age_s=5, job="77_3")
    run.status_path.write_text(json.dumps({"status": "running"}))
    status = run.status()
    assert status["status"] == "running" and status["host"] == "other-node" and status["slurm_job_id"] == "77_3"
    assert status["since"] == "2024-01-01T00:00:00+0000"
    _write_lock(run, "other-node", 4242, age_s=120)
    assert run.status() == {"status": "interrupted"}


def test_a_stale_lock_from_another_host_is_taken(tmp_path):
    run = RunFolder(tmp_path / "run")
    _write_lock(run, "other-node", 4242, age_s=120)
    run.acquire()
    try:
        held = json.loads(run.lock_path.read_text())
        assert held["host"] == socket.gethostname() and held["pid"] == os.getpid()
        assert time.time() - held["heartbeat"] < 10 and held["token"] != "theirs"
        run.set_status("running")  # the holder may write
    finally:
        run.release()
    assert not run.lock_path.exists()
    assert not list(run.path.glob("lock.stale-*")), "the stale lock moved aside is removed"


def test_on_this_host_a_dead_pid_is_stale_at_once_and_a_live_one_holds(tmp_path):
    run = RunFolder(tmp_path / "run")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        _write_lock(run, socket.gethostname(), sleeper.pid)
        with pytest.raises(RunLockedError):
            run.acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    _write_lock(run, socket.gethostname(), _dead_pid())
    run.acquire()
    run.release()


def test_a_requeued_slurm_job_takes_its_lock_back(tmp_path, monkeypatch):
    run = RunFolder(tmp_path / "run")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_JOB_ID", "80")
    _write_lock(run, "other-node", 4242, job="77_2")
    with pytest.raises(RunLockedError):
        run.acquire()  # another task of the same array is another job
    _write_lock(run, "other-node", 4242, job="77_3")  # our earlier incarnation, before the requeue moved us
    run.acquire()
    try:
        held = json.loads(run.lock_path.read_text())
        assert held["slurm_job_id"] == "77_3" and held["host"] == socket.gethostname()
    finally:
        run.release()


def test_the_heartbeat_keeps_a_held_lock_fresh_and_stops_at_release(tmp_path, monkeypatch):
    monkeypatch.setenv(run_lock.HEARTBEAT_ENV, "0.05")
    run = RunFolder(tmp_path / "run")
    run.acquire()
    first = json.loads(run.lock_path.read_text())["heartbeat"]
    deadline = time.time() + 10
    while json.loads(run.lock_path.read_text())["heartbeat"] == first and time.time() < deadline:
        time.sleep(0.02)
    assert json.loads(run.lock_path.read_text())["heartbeat"] > first
    run.release()
    time.sleep(0.2)
    assert not run.lock_path.exists(), "a released lock is not written again by its heartbeat"


def test_an_old_format_lock_ages_by_its_mtime(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.lock_path.write_text(str(os.getpid()))
    with pytest.raises(RunLockedError, match="old-format lock"):
        run.acquire()
    old = time.time() - 120
    os.utime(run.lock_path, (old, old))
    run.acquire()
    run.release()
