"""The result store never loses what it holds: a write interrupted at any point leaves the old file whole and no
partial file; a finished run is never overwritten; a folder's config is never replaced by another run's."""

from __future__ import annotations

import json
import os

import pytest

from benchmark import store
from benchmark.store import RunFolder, atomic_write_bytes, atomic_write_json

OLD = b'{"miou": 0.5}\n' * 100
NEW = b'{"miou": 0.7}\n' * 200


class Crash(Exception):
    """A process dying at the injected point (the test's stand-in for SIGKILL or a full disk)."""


def crash(*args, **kwargs):
    raise Crash


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != "metrics.json")


def crashing_half_way(handle):
    """``handle`` whose next write puts half of its bytes on disk, then dies."""
    real_write = handle.write

    def write(data):
        real_write(data[: len(data) // 2])
        handle.flush()
        raise Crash

    handle.write = write
    return handle


@pytest.mark.parametrize("where", ["replace", "fsync", "write"])
def test_interrupted_write_keeps_the_old_file_whole_and_leaves_no_partial_file(tmp_path, monkeypatch, where):
    path = tmp_path / "metrics.json"
    path.write_bytes(OLD)
    if where == "replace":  # the data is on disk in full, the rename never happens
        monkeypatch.setattr(os, "replace", crash)
        monkeypatch.setattr(os, "rename", crash)
    elif where == "fsync":
        monkeypatch.setattr(os, "fsync", crash)
    else:  # the process dies half-way through writing the bytes
        real_fdopen, real_open = os.fdopen, open

        def half_writing_fdopen(fd, *args, **kwargs):
            return crashing_half_way(real_fdopen(fd, *args, **kwargs))

        def half_writing_open(file, mode="r", *args, **kwargs):  # a plain `open(path, "wb")` gets the same fault
            handle = real_open(file, mode, *args, **kwargs)
            return crashing_half_way(handle) if "w" in mode and "b" in mode else handle

        monkeypatch.setattr(os, "fdopen", half_writing_fdopen)
        monkeypatch.setattr("builtins.open", half_writing_open)
    with pytest.raises(Crash):
        atomic_write_bytes(path, NEW)
    monkeypatch.undo()
    assert path.read_bytes() == OLD, "the old file was changed by an interrupted write"
    assert leftovers(tmp_path) == [], "a partial or temporary file was left behind"


def test_a_completed_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    atomic_write_bytes(path, OLD)
    atomic_write_bytes(path, NEW)
    assert path.read_bytes() == NEW and leftovers(path.parent) == []
    atomic_write_json(path, {"b": 1, "a": [1.5, None]})
    assert json.loads(path.read_text()) == {"a": [1.5, None], "b": 1}


def test_the_new_file_appears_only_by_rename(tmp_path, monkeypatch):
    """Until the rename, readers of `path` see the old bytes: the data goes to another file in the same folder."""
    path = tmp_path / "metrics.json"
    path.write_bytes(OLD)
    seen = {}
    real_replace = os.replace

    def replace(source, target):
        seen["before"] = path.read_bytes()
        seen["same_folder"] = os.path.dirname(os.path.abspath(source)) == str(tmp_path)
        with open(source, "rb") as handle:
            seen["temp"] = handle.read()
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    atomic_write_bytes(path, NEW)
    assert seen == {"before": OLD, "same_folder": True, "temp": NEW}


def test_a_finished_run_is_never_overwritten(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.prepare({"seed": 0})
    run.set_status("running")
    run.write_metrics({"final": {"miou": 0.5}})
    assert run.done and run.status() == {"status": "done"} and not run.status_path.exists()
    with pytest.raises(RuntimeError, match="never overwritten"):
        run.write_metrics({"final": {"miou": 0.9}})
    assert run.metrics()["final"] == {"miou": 0.5} and run.metrics()["schema"] == store.SCHEMA_VERSION


def test_a_folder_keeps_its_own_config(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.prepare({"seed": 0, "lr": 0.1})
    run.prepare({"lr": 0.1, "seed": 0})  # the same configuration: accepted
    with pytest.raises(RuntimeError, match="different configuration"):
        run.prepare({"seed": 1, "lr": 0.1})
    assert "seed: 0" in run.config_path.read_text()


def test_run_states(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert run.status() == {"status": "pending"}
    run.prepare({})
    run.checkpoint_path.write_bytes(b"x")
    assert run.status() == {"status": "interrupted"}
    run.set_status("failed", reason="NonFiniteLossError: nan")
    assert run.status() == {"status": "failed", "reason": "NonFiniteLossError: nan"}
