"""The result store: ``results/<suite>/``, one folder per run named by its key.

A run folder holds ``config.yaml`` (resolved), ``train.log``, ``checkpoint.pt`` (latest; the resume
point), ``status.json`` (running / failed + reason), and ``metrics.json``, written last and atomically.
A run is done iff ``metrics.json`` exists. ``lock`` names the process training it (host, pid, Slurm job,
heartbeat; :mod:`benchmark.lock`), so two processes, on one host or many, never write the same folder.
Teachers trained here live in ``teachers/<key>/`` the same way. ``jobs.json`` maps run and teacher keys to
the executor jobs submitted for them (:mod:`benchmark.launch`).
The report reads this store alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from benchmark import lock as run_lock
from benchmark.atomic import atomic_write_bytes
from benchmark.lock import RunLockedError

METRICS = "metrics.json"
STATUS = "status.json"
CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
LOG = "train.log"
LOCK = "lock"
SUITE_RECORD = "suite.json"
JOBS = "jobs.json"
SCHEMA_VERSION = 1


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


__all__ = ["RunLockedError"]  # re-exported: callers catch it from here


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_token: str | None = None

    metrics_path = property(lambda self: self.path / METRICS)
    status_path = property(lambda self: self.path / STATUS)
    checkpoint_path = property(lambda self: self.path / CHECKPOINT)
    log_path = property(lambda self: self.path / LOG)
    config_path = property(lambda self: self.path / CONFIG)
    lock_path = property(lambda self: self.path / LOCK)

    @property
    def done(self) -> bool:
        return self.metrics_path.is_file()

    def status(self) -> dict[str, Any]:
        if self.done:
            return {"status": "done"}
        if self.status_path.is_file():
            status = read_json(self.status_path)
            if status.get("status") == "running":
                holder = self.holder()
                if holder is None:
                    # Killed mid-run: its process is gone, so it is waiting to be resumed, not running.
                    return {"status": "interrupted"}
                return {**status, "host": holder.get("host"), "pid": holder.get("pid"),
                        "slurm_job_id": holder.get("slurm_job_id"), "since": holder.get("since"),
                        "heartbeat": holder.get("heartbeat")}
            return status
        if self.checkpoint_path.is_file():
            return {"status": "interrupted"}
        return {"status": "pending"}

    def prepare(self, config: dict[str, Any]) -> None:
        """Create the folder and its config; an existing config must be the same run's."""
        self.path.mkdir(parents=True, exist_ok=True)
        run_lock.check_writable(self.lock_path, self._lock_token)
        text = yaml.safe_dump(config, sort_keys=True)
        if self.config_path.is_file() and self.config_path.read_text() != text:
            raise RuntimeError(f"{self.config_path} holds a different configuration; refusing to overwrite it")
        if not self.config_path.is_file():
            atomic_write_bytes(self.config_path, text.encode())

    def set_status(self, status: str, **details: Any) -> None:
        run_lock.check_writable(self.lock_path, self._lock_token)
        atomic_write_json(self.status_path, {"status": status, **details})

    def write_metrics(self, record: dict[str, Any]) -> None:
        if self.done:
            raise RuntimeError(f"{self.metrics_path} exists: a finished run is never overwritten")
        run_lock.check_writable(self.lock_path, self._lock_token)
        atomic_write_json(self.metrics_path, {"schema": SCHEMA_VERSION, **record})
        self.status_path.unlink(missing_ok=True)

    def metrics(self) -> dict[str, Any]:
        return read_json(self.metrics_path)

    # --- lock ---------------------------------------------------------------------------------------

    def acquire(self) -> None:
        """Hold this folder (raise :class:`RunLockedError` naming the holder if a live process has it)."""
        self._lock_token = run_lock.acquire(self.lock_path)

    def release(self) -> None:
        run_lock.release(self.lock_path, self._lock_token)
        self._lock_token = None

    def holder(self) -> dict[str, Any] | None:
        """The live process that holds this folder (host, pid, Slurm job, since), or None."""
        info = run_lock.read_lock(self.lock_path)
        return info if run_lock.is_live(info) else None


class ResultStore:
    def __init__(self, root: Path, suite_name: str):
        self.root = Path(root).expanduser().resolve() / suite_name  # absolute: every message names it so
        self.suite_name = suite_name

    def run(self, key: str) -> RunFolder:
        return RunFolder(self.root / "runs" / key)

    def teacher(self, key: str) -> RunFolder:
        return RunFolder(self.root / "teachers" / key)

    def write_suite_record(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.root / SUITE_RECORD, record)

    @property
    def jobs_path(self) -> Path:
        return self.root / JOBS

    def jobs(self) -> dict[str, list[dict[str, Any]]]:
        """Run or teacher key -> the jobs submitted for it, oldest first."""
        return read_json(self.jobs_path) if self.jobs_path.is_file() else {}


def load_records(results_dir: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """(suite record, finished run records, unfinished runs' status) from a suite's results folder."""
    results_dir = Path(results_dir)
    suite_record = read_json(results_dir / SUITE_RECORD) if (results_dir / SUITE_RECORD).is_file() else None
    finished, unfinished = [], []
    runs = results_dir / "runs"
    for folder in sorted(runs.iterdir()) if runs.is_dir() else []:
        run = RunFolder(folder)
        if run.done:
            finished.append(run.metrics())
        else:
            status = run.status()
            config = yaml.safe_load(run.config_path.read_text()) if run.config_path.is_file() else {}
            unfinished.append({"run_key": folder.name, "config": config, **status})
    return suite_record, finished, unfinished
