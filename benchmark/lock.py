"""The run-folder lock: one holder per folder, safe on a filesystem shared by many hosts.

A lock is a small JSON file: who holds it (``host``, ``pid``, ``slurm_job_id`` with ``slurm_step_id``), a
``token`` unique to the acquisition, when it was taken (``since``) and a ``heartbeat`` (Unix seconds)
that a daemon thread of the holder rewrites every :func:`heartbeat_interval_s`. Who may take a lock that
exists:

- the same host and pid: the holder itself (re-entrant);
- the same Slurm job and step on another host: a requeued job whose earlier incarnation is gone (Slurm
  requeues a job under its job id);
- on the same host: a lock whose pid is dead, or whose heartbeat stopped (the pid was reused) is stale;
- from another host: only a lock whose heartbeat is older than :func:`stale_after_s`; a pid from another
  host means nothing here, so it is never looked up locally.

The file is created complete with ``os.link`` of a written temporary file (atomic, and it fails when the
lock exists, also on NFS), so a reader never sees a half-written lock. A stale lock is moved aside
under a unique name and checked to be the one judged stale before it is removed. Heartbeats compare
clocks across hosts: keep them synchronised (NTP) to well within the stale limit.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmark.atomic import atomic_write_bytes, create_temp

STALE_ENV = "SEGKD_LOCK_STALE_S"
HEARTBEAT_ENV = "SEGKD_LOCK_HEARTBEAT_S"


class RunLockedError(RuntimeError):
    """The folder is held by a live process elsewhere."""


def stale_after_s() -> float:
    """A lock whose heartbeat is older than this is abandoned (default 10 minutes)."""
    return float(os.environ.get(STALE_ENV, "600"))


def heartbeat_interval_s() -> float:
    return float(os.environ.get(HEARTBEAT_ENV, str(min(30.0, stale_after_s() / 10))))


def slurm_job_id() -> str | None:
    """This process's Slurm job, as ``sacct``/``scontrol`` name it (``<array>_<task>`` for an array task)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": slurm_job_id(),
            "slurm_step_id": os.environ.get("SLURM_STEP_ID")}


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's holder, or None when there is no lock. A lock file of an older format (a bare pid) or an
    unreadable one has no host: only its age (the file's mtime) can make it stale."""
    try:
        text = path.read_text()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
        if isinstance(info, dict) and "heartbeat" in info:
            return info
    except ValueError:
        pass
    return {"host": None, "pid": None, "slurm_job_id": None, "token": None, "since": None, "heartbeat": mtime,
            "legacy": text.strip()[:40]}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def heartbeat_age_s(info: dict[str, Any]) -> float:
    return time.time() - float(info.get("heartbeat") or 0)


def judge(info: dict[str, Any], me: dict[str, Any] | None = None) -> str:
    """``"ours"``, ``"held"`` (by a live process elsewhere) or ``"stale"``, for an existing lock."""
    me = me or identity()
    same_host = info.get("host") == me["host"]
    if same_host and info.get("pid") == me["pid"]:
        return "ours"
    fresh = heartbeat_age_s(info) <= stale_after_s()
    if same_host:
        return "held" if isinstance(info.get("pid"), int) and _pid_alive(info["pid"]) and fresh else "stale"
    if (info.get("host") is not None and me["slurm_job_id"] and info.get("slurm_job_id") == me["slurm_job_id"]
            and info.get("slurm_step_id") == me["slurm_step_id"]):
        return "ours"
    return "held" if fresh else "stale"


def is_live(info: dict[str, Any] | None) -> bool:
    """Whether a lock read by an observer (``status``, a waiting process) belongs to a running process."""
    if info is None:
        return False
    me = identity()
    if info.get("host") == me["host"] and info.get("pid") == me["pid"]:
        return True
    return judge(info, me) == "held"


def describe(info: dict[str, Any]) -> str:
    """``host (pid N, Slurm job J) since T, heartbeat S s ago`` for messages and ``status``."""
    if info.get("host") is None:
        return f"an old-format lock ({info.get('legacy')!r}), last touched {heartbeat_age_s(info):.0f} s ago"
    job = f", Slurm job {info['slurm_job_id']}" if info.get("slurm_job_id") else ""
    return (f"{info['host']} (pid {info['pid']}{job}) since {info.get('since')}, heartbeat "
            f"{heartbeat_age_s(info):.0f} s ago")


def _write_temp(folder: Path, info: dict[str, Any]) -> str:
    handle, temp = create_temp(folder, prefix=".lock.")
    with os.fdopen(handle, "w") as file:
        json.dump(info, file, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
    return str(temp)


def _create(path: Path, info: dict[str, Any]) -> bool:
    """Create the lock holding ``info``; False if it exists."""
    temp = _write_temp(path.parent, info)
    try:
        os.link(temp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: exclusive create, then the content
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as file:
            file.write(Path(temp).read_text())
        return True
    finally:
        Path(temp).unlink(missing_ok=True)


def _replace(path: Path, info: dict[str, Any]) -> None:
    atomic_write_bytes(path, json.dumps(info, sort_keys=True).encode())


def _remove_stale(path: Path, judged: dict[str, Any]) -> None:
    """Remove the lock judged stale, and only that one: another process may have replaced it meanwhile."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = read_lock(aside)
    if moved is not None and moved.get("token") != judged.get("token"):
        try:  # a fresh lock taken between our read and the rename: put it back
            os.link(aside, path)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


class _Heartbeat(threading.Thread):
    def __init__(self, path: Path, token: str):
        super().__init__(name=f"lock-heartbeat {path.parent.name}", daemon=True)
        self.path, self.token, self.stopped = path, token, threading.Event()

    def stop(self) -> None:
        """Stop beating, and wait for a beat in progress: it must not write the lock back after a release."""
        self.stopped.set()
        if self is not threading.current_thread() and self.is_alive():
            self.join(timeout=30)

    def run(self) -> None:
        while not self.stopped.wait(heartbeat_interval_s()):
            info = read_lock(self.path)
            if info is None or info.get("token") != self.token:
                return  # released, or taken over after we were judged stale: it is no longer ours to touch
            try:
                _replace(self.path, {**info, "heartbeat": time.time()})
            except OSError:
                continue  # a filesystem hiccup: the next beat tries again, well before the stale limit


_HEARTBEATS: dict[str, _Heartbeat] = {}
_HEARTBEATS_LOCK = threading.Lock()


def acquire(path: Path) -> str:
    """Take the lock at ``path`` and keep its heartbeat going; return the acquisition's token.
    Raise :class:`RunLockedError` naming the holder when a live process elsewhere holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    me = identity()
    now = time.time()
    info = {**me, "token": uuid.uuid4().hex, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
            "heartbeat": now}
    while not _create(path, info):
        current = read_lock(path)
        if current is None:
            continue  # released between our attempt and the read
        verdict = judge(current, me)
        if verdict == "held":
            raise RunLockedError(f"{path.parent} is being trained on {describe(current)}")
        if verdict == "ours":
            _replace(path, info)  # our own earlier incarnation (a requeued Slurm job): take it back
            break
        _remove_stale(path, current)
    heartbeat = _Heartbeat(path, info["token"])
    with _HEARTBEATS_LOCK:
        previous = _HEARTBEATS.pop(str(path), None)
        _HEARTBEATS[str(path)] = heartbeat
    if previous is not None:
        previous.stop()
    heartbeat.start()
    return info["token"]


def release(path: Path, token: str | None) -> None:
    """Stop the heartbeat and remove the lock, if it is still the one we took."""
    with _HEARTBEATS_LOCK:
        heartbeat = _HEARTBEATS.get(str(path))
        if heartbeat is not None and heartbeat.token == token:
            del _HEARTBEATS[str(path)]
        else:
            heartbeat = None
    if heartbeat is not None:
        heartbeat.stop()
    info = read_lock(path)
    if token is not None and info is not None and info.get("token") == token:
        path.unlink(missing_ok=True)


def check_writable(path: Path, token: str | None) -> None:
    """Refuse to write a folder whose lock another live process holds."""
    info = read_lock(path)
    if info is None or (token is not None and info.get("token") == token):
        return
    if judge(info) == "held":
        raise RunLockedError(f"{path.parent} is held by {describe(info)}: this process must not write it")
