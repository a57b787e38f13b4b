"""The result store: ``results/<suite>/``, one folder per run named by its key.

A run folder holds ``config.yaml`` (resolved), ``train.log``, ``checkpoint.pt`` (latest; the resume
point), ``status.json`` (running / failed + reason), and ``metrics.json``, written last and atomically.
A run is done iff ``metrics.json`` exists. ``lock`` holds the pid of the process training it, so two
processes never write the same folder. Teachers trained here live in ``teachers/<key>/`` the same way.
The report reads this store alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

METRICS = "metrics.json"
STATUS = "status.json"
CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
LOG = "train.log"
LOCK = "lock"
SUITE_RECORD = "suite.json"
SCHEMA_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


class RunLockedError(RuntimeError):
    pass


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    metrics_path = property(lambda self: self.path / METRICS)
    status_path = property(lambda self: self.path / STATUS)
    checkpoint_path = property(lambda self: self.path / CHECKPOINT)
    log_path = property(lambda self: self.path / LOG)
    config_path = property(lambda self: self.path / CONFIG)

    @property
    def done(self) -> bool:
        return self.metrics_path.is_file()

    def status(self) -> dict[str, Any]:
        if self.done:
            return {"status": "done"}
        if self.status_path.is_file():
            status = read_json(self.status_path)
            owner = _read_pid(self.path / LOCK)
            if status.get("status") == "running" and (owner is None or not _alive(owner)):
                # Killed mid-run: its process is gone, so it is waiting to be resumed, not running.
                return {"status": "interrupted"}
            return status
        if self.checkpoint_path.is_file():
            return {"status": "interrupted"}
        return {"status": "pending"}

    def prepare(self, config: dict[str, Any]) -> None:
        """Create the folder and its config; an existing config must be the same run's."""
        self.path.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(config, sort_keys=True)
        if self.config_path.is_file() and self.config_path.read_text() != text:
            raise RuntimeError(f"{self.config_path} holds a different configuration; refusing to overwrite it")
        if not self.config_path.is_file():
            atomic_write_bytes(self.config_path, text.encode())

    def set_status(self, status: str, **details: Any) -> None:
        atomic_write_json(self.status_path, {"status": status, **details})

    def write_metrics(self, record: dict[str, Any]) -> None:
        if self.done:
            raise RuntimeError(f"{self.metrics_path} exists: a finished run is never overwritten")
        atomic_write_json(self.metrics_path, {"schema": SCHEMA_VERSION, **record})
        self.status_path.unlink(missing_ok=True)

    def metrics(self) -> dict[str, Any]:
        return read_json(self.metrics_path)

    # --- lock ---------------------------------------------------------------------------------------

    def acquire(self) -> None:
        lock = self.path / LOCK
        self.path.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = _read_pid(lock)
                if owner is not None and owner != os.getpid() and _alive(owner):
                    raise RunLockedError(f"{self.path} is being trained by process {owner}") from None
                lock.unlink(missing_ok=True)  # a stale lock from a killed process
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            return

    def release(self) -> None:
        lock = self.path / LOCK
        if _read_pid(lock) == os.getpid():
            lock.unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultStore:
    def __init__(self, root: Path, suite_name: str):
        self.root = Path(root) / suite_name
        self.suite_name = suite_name

    def run(self, key: str) -> RunFolder:
        return RunFolder(self.root / "runs" / key)

    def teacher(self, key: str) -> RunFolder:
        return RunFolder(self.root / "teachers" / key)

    def write_suite_record(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.root / SUITE_RECORD, record)


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
