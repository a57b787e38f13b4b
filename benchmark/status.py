"""``status``: where every run and teacher of a suite stands, from the store, ``jobs.json`` and ``sacct``.

A run is *done* (``metrics.json``), *running* (a live lock: where, since when, last heartbeat), *queued*
(its latest Slurm job is pending), *interrupted* (a checkpoint to resume from, or a job that ended early),
*failed* (with the reason the store or the cluster gives) or *pending* (never started, nothing queued).
"""

from __future__ import annotations

import shlex
from collections import Counter
from typing import Any

from benchmark.launch import LIVE_STATES, latest_jobs, slurm_states
from benchmark.lock import describe
from benchmark.runner import make_plan
from benchmark.store import RunFolder
from benchmark.suite import SuiteFile

STATES = ("done", "running", "queued", "interrupted", "failed", "pending")


def folder_state(folder: RunFolder, job: dict[str, Any] | None, job_states: dict[str, str]) -> tuple[str, str]:
    """(state, detail) of one run or teacher folder and its latest job."""
    status = folder.status()
    state = status["status"]
    job_state = job_states.get(job["job_id"]) if job and job["executor"] == "slurm" else None
    job_text = f"{job['executor']} job {job['job_id']}" + (f" ({job_state})" if job_state else "") if job else ""
    if state == "done":
        return "done", ""
    if state == "running":
        return "running", f"on {describe(status)}"
    if state == "failed":
        return "failed", status.get("reason", "") + (f" [{job_text}]" if job_text else "")
    if job_state in LIVE_STATES:
        return ("queued" if job_state == "PENDING" else "running"), job_text
    if job_state is not None and job_state != "COMPLETED":
        ended = f"{job_text} ended; log: {job.get('log')}"
        return ("interrupted" if folder.checkpoint_path.is_file() else "failed"), ended
    if state == "interrupted":
        return "interrupted", "resumes from its checkpoint.pt" + (f" [last: {job_text}]" if job_text else "")
    return "pending", f"last: {job_text}" if job_text else "not started"


def print_status(suite_file: SuiteFile, overrides: list[str], results_root: str = "results", echo=print) -> int:
    """Print where every run and teacher stands; 1 if any of them failed, else 0 (running and pending are fine)."""
    plan = make_plan(suite_file, results_root)
    store = plan.store
    keys = [run.key for run in plan.runs] + [t.key for part in plan.parts for t in part.teachers.values()]
    latest = latest_jobs(store, keys)
    slurm_ids = [entry["job_id"] for entry in latest.values() if entry["executor"] == "slurm"]
    job_states = slurm_states(slurm_ids)
    echo(f"suite {suite_file.name} ({suite_file.path}): {len(plan.runs)} runs; results in {store.root}")
    if job_states is None:
        echo("  (sacct is not available here: Slurm jobs are shown without their state)")
        job_states = {}
    totals: Counter = Counter()
    seen: set[str] = set()
    teachers_failed = 0
    for part in plan.parts:
        suite = part.suite
        echo(f"\n== {suite.title} [{suite.name}] ==")
        for label, teacher in part.teachers.items():
            model = suite.teachers[label].model
            if teacher.checkpoint:
                echo(f"  teacher {label} ({model}) [{teacher.key}]: loaded from {teacher.checkpoint}")
                continue
            state, detail = folder_state(store.teacher(teacher.key), latest.get(teacher.key), job_states)
            teachers_failed += state == "failed"
            echo(f"  teacher {label} ({model}) [{teacher.key}]: {state}" + (f" {detail}" if detail else ""))
        for run in part.runs:
            state, detail = folder_state(plan.run_folder(run), latest.get(run.key), job_states)
            if run.key not in seen:
                totals[state] += 1
                seen.add(run.key)
            echo(f"  {run.key}  {state:<11} {run.student} / {run.method_label} / seed {run.seed}"
                 + (f"  {detail}" if detail else ""))
    echo("\ntotal: " + ", ".join(f"{totals[state]} {state}" for state in STATES if totals[state]))
    if totals["done"] < len(seen):
        executors = [entry["executor"] for entry in latest.values()]
        executor = max(set(executors), key=executors.count) if executors else "inline"
        command = ["python", "-m", "benchmark", "run", str(suite_file.path), "--results", str(results_root)]
        for override in overrides:
            command += ["--set", override]
        if executor != "inline":
            command += ["--executor", executor]
        echo("to resume (finished runs are kept, interrupted ones resume from their checkpoints, queued ones are not "
             f"submitted twice): {shlex.join(command)}")
    # The exit codes of every subcommand: 1 when the check found a problem, here a failed run or teacher.
    return 1 if totals["failed"] or teachers_failed else 0
