"""``run --executor local|slurm``: a suite's runs as submitit jobs, on this machine's devices or a Slurm cluster.

One job trains one run or one teacher (:class:`RunJob`) through the same :class:`~benchmark.runner.Runner`
as ``--executor inline``, so the store, the locks and resume behave the same. A job receives strings only
(suite path, ``--set`` overrides, results root, run key, role, the submitting commit): submitit pickles
every array element (``max_pickle_size_gb`` 1), and the job rebuilds the plan from the suite file.

- ``local``: submitit's ``LocalExecutor`` alone has no queue: ``map_array`` starts every job at once and
  all of them see ``CUDA_VISIBLE_DEVICES=0`` (a footgun, facebookincubator/submitit#1685, #1718). So a
  fixed pool of device slots sits in front of it, one ``LocalExecutor`` per slot pinned with
  ``visible_gpus`` (the workaround of submitit#1718), one job per slot at a time; teachers first, each
  student when its teacher's job has finished; the report at the end.
- ``slurm``: one job per untrained teacher, then the students of each teacher as job arrays with
  ``--dependency=afterok:<teacher>`` and ``--kill-on-invalid-dep=yes`` (else the students of a failed
  teacher pend forever); no dependency when the teacher is trained already, since ``afterok`` on a
  purged job id fails at submit time. Arrays share one resource request (submitit ``submit_array``), so
  runs are grouped by teacher job and resources. Jobs ask for ``USR2`` ``SIGNAL_DELAY_S`` before their
  time limit (``USR1`` is NCCL's, submitit#1697) and are requeued by submitit's ``checkpoint()`` hook on
  preemption or time-out; a requeued job resumes from the run's ``checkpoint.pt``.
- A run on several GPUs is several tasks of one job (``ntasks-per-node == gpus-per-node``), ranks from
  ``SLURM_PROCID``/``SLURM_LOCALID`` through ``submitit.helpers.TorchDistributedEnvironment`` (``MASTER_ADDR``
  the first node of the job, ``MASTER_PORT`` seeded by the job id, so two jobs on one node do not clash);
  never torchrun inside srun (submitit#1764). ``srun --kill-on-bad-exit=1`` ends the other ranks when rank 0
  exits on the requeue signal.

``results/<suite>/jobs.json`` maps every run and teacher key to the jobs submitted for it (``status`` reads
it); the submitit folder ``results/<suite>/.submitit/<job id>/`` holds each job's log and pickles, and must
be on a filesystem the compute nodes share (a job whose folder they cannot see fails without a log).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import shlex
import shutil
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
import torch

from benchmark.engine import distributed
from benchmark.runner import (
    PROJECT_ROOT,
    Part,
    Plan,
    Runner,
    SuiteOutcome,
    _silent,
    check_resume_precision,
    deviation_lines,
    echo_failures,
    environment,
    make_plan,
    preflight,
    record_failure,
    suite_record,
)
from benchmark.store import ResultStore, RunFolder, atomic_write_json
from benchmark.suite import ResourcesConfig, SuiteError, SuiteFile, load_suite

#: Seconds between the requeue signal and the time limit: enough to finish a step and exit.
SIGNAL_DELAY_S = 120
#: A local job without a time limit in its suite: long enough never to stop a run.
LOCAL_TIMEOUT_MIN = 60 * 24 * 30
#: sacct states of a job that is queued or running (it will still touch its run).
LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
               "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


class LaunchError(SuiteError):
    """An executor that cannot start here (no sbatch, too few GPUs for the workers asked for)."""


@dataclass
class Job:
    """One run or teacher to train as a job."""

    key: str
    role: str  # "teacher" or "student"
    label: str
    part: Part
    config: dict[str, Any]
    teacher_key: str | None = None  # the teacher it needs, when that teacher is trained in this launch

    @property
    def resources(self) -> ResourcesConfig:
        return self.part.suite.resources


def job_graph(plan: Plan) -> tuple[list[Job], list[Job]]:
    """The untrained teachers that unfinished runs need (not those loaded from a file), and those runs."""
    teachers: dict[str, Job] = {}
    students: dict[str, Job] = {}
    for part in plan.parts:
        for run in part.runs:
            if run.key in students or plan.run_folder(run).done:
                continue
            teacher = run.teacher
            trains_teacher = teacher is not None and not teacher.checkpoint and not plan.store.teacher(teacher.key).done
            if trains_teacher and teacher.key not in teachers:
                model = part.suite.teachers[teacher.label].model
                teachers[teacher.key] = Job(teacher.key, "teacher", f"teacher {teacher.label} ({model})", part,
                                            teacher.config)
            students[run.key] = Job(run.key, "student", run.label, part, run.config,
                                    teacher.key if trains_teacher else None)
    return list(teachers.values()), list(students.values())


def _one_run_plan(plan: Plan, key: str) -> Plan:
    for part in plan.parts:
        for run in part.runs:
            if run.key == key:
                return Plan(plan.suite_file, [Part(part.suite, [run], part.teachers)], plan.store,
                            plan.dataset_problems)
    raise LaunchError(f"{plan.suite_file.path}: no run with key {key} (was the suite changed after submission?)")


def _teacher_of(plan: Plan, key: str):
    for part in plan.parts:
        for spec in part.teachers.values():
            if spec.key == key:
                return spec, part.suite
    raise LaunchError(f"{plan.suite_file.path}: no teacher with key {key} (was the suite changed after submission?)")


class RunJob(submitit.helpers.Checkpointable):
    """The payload of one job: train run ``key`` (or teacher ``key``) of a suite, resuming from its checkpoint.

    On the requeue signal submitit calls the inherited ``checkpoint()``, which resubmits this object with the
    same arguments; the state that matters is on disk (``checkpoint.pt``, written every
    ``schedule.checkpoint_every`` iterations, so at most that many iterations are trained twice).
    """

    def __init__(self) -> None:
        self.attempt = 0  # pickled with the resubmission: counts the starts of this job

    def __call__(self, suite_path: str, overrides: str, results_root: str, key: str, role: str,
                 submitted_commit: str) -> str:
        self.attempt += 1
        job_env = submitit.JobEnvironment()
        if job_env.num_tasks > 1:
            # RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* for env:// init; each task keeps every GPU of the job visible
            # (distributed.setup picks cuda:LOCAL_RANK, or cuda:0 where the cluster binds one GPU per task).
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        plan = make_plan(load_suite(suite_path, json.loads(overrides)), results_root)
        device = distributed.setup()
        echo = print if distributed.is_main() else _silent
        commit = environment()["git_commit"]
        launch = {"executor": job_env.cluster, "job_id": job_env.job_id, "host": job_env.hostname,
                  "attempt": self.attempt, "tasks": job_env.num_tasks, "submitted_commit": submitted_commit or None,
                  "commit_changed": bool(submitted_commit and commit and commit != submitted_commit)}
        if launch["commit_changed"]:
            # submitit runs the code as it is when a job starts, not as it was when it was submitted.
            launch["warning"] = (f"this job runs git commit {commit}, not {submitted_commit} it was submitted from: "
                                 "the code changed between submission and start")
            echo(f"WARNING: {launch['warning']}")
        try:
            if role == "teacher":
                Runner(plan, device, echo, launch).teacher(*_teacher_of(plan, key))
                return "trained"
            counts = Runner(_one_run_plan(plan, key), device, echo, launch).run_all()
        finally:
            if distributed.initialized():
                torch.distributed.destroy_process_group()
        outcome = next((name for name in ("failed", "trained", "done_elsewhere", "skipped_locked", "done_before")
                        if counts.get(name)), "done_before")
        if outcome == "failed":
            raise RuntimeError(f"run {key} failed: see {plan.store.run(key).log_path}")
        return outcome


def _job_args(suite_file: SuiteFile, overrides: list[str], store: ResultStore, job: Job,
              commit: str) -> tuple[str, ...]:
    # The store's own absolute root (``~`` expanded), so a job starting in another directory finds the same folders.
    return (str(Path(suite_file.path).resolve()), json.dumps(list(overrides)), str(store.root.parent),
            job.key, job.role, commit)


def _code_setup() -> list[str]:
    """Jobs import this checkout's code, whatever directory or environment they start in."""
    return [f"export PYTHONPATH={shlex.quote(str(PROJECT_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"]


def _submitit_folder(store: ResultStore) -> Path:
    return store.root.resolve() / ".submitit" / "%j"


class JobBook:
    """``jobs.json``: run or teacher key -> the jobs submitted for it, oldest first. Written atomically."""

    def __init__(self, store: ResultStore):
        self.store = store
        self._lock = threading.Lock()

    def add(self, key: str, job: Any, executor: str, role: str, commit: str, depends_on: str | None = None) -> None:
        entry = {"job_id": str(job.job_id), "executor": executor, "role": role,
                 "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": commit or None,
                 "depends_on": depends_on, "log": str(job.paths.stdout)}
        with self._lock:
            jobs = self.store.jobs()
            jobs.setdefault(key, []).append(entry)
            atomic_write_json(self.store.jobs_path, jobs)


def _prepare(suite_file: SuiteFile, results_root: str | Path) -> Plan:
    plan = make_plan(suite_file, results_root)
    preflight(plan)
    plan.store.root.mkdir(parents=True, exist_ok=True)
    plan.store.write_suite_record(suite_record(plan))
    return plan


def _render(plan: Plan, reports_root: str | Path) -> Path:
    from benchmark.report import render_report

    return render_report(plan.store.root, Path(reports_root) / plan.suite_file.name)


# --- local: a pool of device slots ------------------------------------------------------------------


def visible_gpus() -> list[int]:
    """This machine's GPUs as the indices ``CUDA_VISIBLE_DEVICES`` uses (all of them when it is unset)."""
    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return list(range(count))
    names = [name.strip() for name in listed.split(",") if name.strip()]
    if not all(name.isdigit() for name in names):
        raise LaunchError(f"CUDA_VISIBLE_DEVICES={listed!r} names GPUs by UUID; --executor local pins each slot "
                          "to GPUs by index: list indices instead")
    return [int(name) for name in names][:count]


def device_slots(workers: int | None, gpus_per_run: int, gpus: list[int], cores: int) -> list[tuple[int, ...]]:
    """The pool's slots: the GPUs of each (one run at a time per slot), or ``()`` per CPU worker."""
    if gpus:
        per = max(1, gpus_per_run)
        fit = len(gpus) // per
        if fit == 0:
            raise LaunchError(f"resources.gpus={gpus_per_run}: only {len(gpus)} GPU(s) visible ({gpus})")
        if workers is not None and workers > fit:
            raise LaunchError(f"--workers {workers}: {len(gpus)} visible GPU(s) make {fit} slot(s) of {per} GPU(s)")
        return [tuple(gpus[i * per:(i + 1) * per]) for i in range(workers or fit)]
    # On CPU: one single-thread process per core by default (a run's processes count as cores).
    return [()] * (workers or max(1, cores // max(1, gpus_per_run)))


JOB_POLL_S = 0.1


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class SlotPool:
    """A fixed set of device slots in front of submitit's ``LocalExecutor``: one job per slot at a time,
    ``CUDA_VISIBLE_DEVICES`` pinned to the slot's GPUs and ``OMP_NUM_THREADS`` to its share of the cores."""

    def __init__(self, folder: Path, slots: list[tuple[int, ...]], tasks: int, threads: int, timeout_min: float,
                 setup: list[str], max_timeouts: int = 3):
        self._free: queue.Queue = queue.Queue()
        for slot in slots:
            executor = submitit.LocalExecutor(folder=folder, max_num_timeout=max_timeouts)
            executor.update_parameters(timeout_min=timeout_min, gpus_per_node=len(slot), visible_gpus=list(slot),
                                       tasks_per_node=tasks, signal_delay_s=SIGNAL_DELAY_S, stderr_to_stdout=True,
                                       setup=[f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}",
                                              *setup])
            self._free.put((slot, executor))
        self._threads = concurrent.futures.ThreadPoolExecutor(len(slots), thread_name_prefix="slot")
        self._running: dict[str, Any] = {}
        self._lock = threading.Lock()

    def submit(self, function, args: tuple, on_start) -> concurrent.futures.Future:
        """Run ``function(*args)`` as a job in the next free slot; ``on_start(job, slot)`` once it started."""
        return self._threads.submit(self._run, function, args, on_start)

    def _run(self, function, args: tuple, on_start):
        slot, executor = self._free.get()
        try:
            job = executor.submit(function, *args)
            with self._lock:
                self._running[job.job_id] = job
            on_start(job, slot)
            try:
                # submitit's own wait sleeps a whole second between looks; a slot left idle that long after each
                # short run adds up over a suite of them.
                while not job.done():
                    time.sleep(JOB_POLL_S)
                return job.results()[0]  # rank 0's outcome; a multi-task job has one result per task
            finally:
                with self._lock:
                    self._running.pop(job.job_id, None)
        finally:
            self._free.put((slot, executor))

    def cancel(self) -> None:
        """Stop every running job (they resume from their checkpoints on the next ``run``)."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for job in self._running.values():
                job.cancel(check=False)


def _slot_name(slot: tuple[int, ...]) -> str:
    return f"GPU {','.join(map(str, slot))}" if slot else "CPU"


def _one_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "Error" in line and not line.startswith(" ")]
    return (useful[-1] if useful else lines[-1] if lines else type(error).__name__).strip()


def run_local(suite_file: SuiteFile, overrides: list[str], results_root: str | Path = "results",
              reports_root: str | Path = "reports", workers: int | None = None, echo=print) -> SuiteOutcome:
    """Train every unfinished run of a suite on a pool of this machine's devices; render the report."""
    plan = _prepare(suite_file, results_root)
    for line in deviation_lines(plan.parts):
        echo(line)
    teachers, students = job_graph(plan)
    per_run = {part.suite.resources.gpus for part in plan.parts}
    if len(per_run) > 1:
        raise LaunchError(f"{suite_file.path}: --executor local needs one resources.gpus for every table of the "
                          f"suite, got {sorted(per_run)}")
    gpus_per_run = per_run.pop()
    cores = _cores()
    slots = device_slots(workers, gpus_per_run, visible_gpus(), cores)
    check_resume_precision(plan, torch.device("cuda" if slots[0] else "cpu"))
    tasks = max(1, gpus_per_run)
    threads = max(1, cores // (len(slots) * tasks))
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # a cap the user set for this machine is kept
        threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
    limits = {part.suite.resources.time for part in plan.parts} - {None}
    timeout_min = max(limits) if limits else LOCAL_TIMEOUT_MIN
    folder = _submitit_folder(plan.store)
    echo(f"{suite_file.name}: {len(students)} runs and {len(teachers)} teacher(s) to train on {len(slots)} slot(s) "
         f"({', '.join(_slot_name(s) for s in slots)}; {tasks} process(es) per run, {threads} CPU thread(s) each); "
         f"job logs in {folder.parent}")
    commit = environment()["git_commit"] or ""
    book = JobBook(plan.store)
    pool = SlotPool(folder, slots, tasks, threads, timeout_min, _code_setup(),
                    max_timeouts=max(part.suite.resources.max_timeouts for part in plan.parts))
    futures: dict[concurrent.futures.Future, Job] = {}

    def start(job: Job) -> None:
        def started(submitted, slot) -> None:
            book.add(job.key, submitted, "local", job.role, commit)
            echo(f"{job.label}: started as local job {submitted.job_id} on {_slot_name(slot)} in "
                 f"{_folder_of(plan, job).path.resolve()}, log {_log_of(plan, job)}")

        futures[pool.submit(RunJob(), _job_args(suite_file, overrides, plan.store, job, commit), started)] = job

    waiting: dict[str, list[Job]] = defaultdict(list)
    for job in teachers:
        start(job)
    for job in students:
        if job.teacher_key:
            waiting[job.teacher_key].append(job)
        else:
            start(job)
    counts: Counter = Counter()
    failed: list[dict[str, str | None]] = []
    try:
        while futures:
            finished, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                job = futures.pop(future)
                try:
                    outcome = future.result()
                except Exception as error:  # noqa: BLE001 - a failed job (its log says why); the suite goes on
                    outcome = "failed"
                    echo(f"{job.label}: FAILED: {_one_line(error)} (log: {_log_of(plan, job)})")
                    # The run's own words where it recorded them (the job's error only says "see the log").
                    reason = _folder_of(plan, job).status().get("reason") or _one_line(error)
                    failed.append({"run": job.label, "reason": reason, "log": str(_log_of(plan, job))})
                else:
                    echo(f"{job.label}: {outcome.replace('_', ' ')}")
                counts[f"{job.role}:{outcome}"] += 1
                if job.role != "teacher":
                    continue
                for student in waiting.pop(job.key, []):
                    if plan.store.teacher(job.key).done:
                        start(student)
                    else:
                        reason = f"teacher unavailable: {job.label} failed: see {_log_of(plan, job)}"
                        outcome = record_failure(plan.store.run(student.key), student.config, reason)
                        counts[f"student:{outcome}"] += 1
                        if outcome == "failed":
                            failed.append({"run": student.label, "reason": reason,
                                           "log": str(plan.store.run(student.key).status_path.resolve())})
    except BaseException:
        pool.cancel()
        raise
    echo(f"{suite_file.name}: trained {counts['student:trained']}, failed {counts['student:failed']}, "
         f"teachers trained {counts['teacher:trained']}, failed {counts['teacher:failed']}"
         + (f", finished by another process {counts['student:done_elsewhere']}" if counts['student:done_elsewhere']
            else ""))
    echo_failures(failed, echo)
    return SuiteOutcome(_render(plan, reports_root), failed)


def _folder_of(plan: Plan, job: Job) -> RunFolder:
    return plan.store.teacher(job.key) if job.role == "teacher" else plan.store.run(job.key)


def _log_of(plan: Plan, job: Job) -> Path:
    return _folder_of(plan, job).log_path.resolve()


# --- slurm: submit and return -----------------------------------------------------------------------


def slurm_states(job_ids: list[str]) -> dict[str, str] | None:
    """Job id -> sacct state (first word: ``CANCELLED by 0`` -> ``CANCELLED``); None when sacct is unavailable."""
    if not job_ids:
        return {}
    if shutil.which("sacct") is None:
        return None
    from submitit.slurm.slurm import SlurmInfoWatcher

    command = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"]
    for main_id in sorted({job_id.split("_")[0] for job_id in job_ids}):
        command += ["-j", main_id]
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    info = SlurmInfoWatcher().read_info(output)
    return {job_id: (stats.get("State") or "UNKNOWN").split()[0] for job_id, stats in info.items()}


def latest_jobs(store: ResultStore, keys: list[str]) -> dict[str, dict[str, Any]]:
    book = store.jobs()
    return {key: book[key][-1] for key in keys if book.get(key)}


def _time_limit(plan: Plan, jobs: list[Job], role: str) -> int:
    """Minutes for an array of ``jobs``: the suite's, else suggested from measured step times (plan --profile)."""
    from benchmark.plan import PROFILE, estimated_seconds, measured_step_times, suggested_time_min
    from benchmark.store import read_json

    resources = jobs[0].resources
    limit = (resources.teacher_time or resources.time) if role == "teacher" else resources.time
    if limit is not None:
        return limit
    if role == "teacher":
        raise LaunchError(f"{plan.suite_file.path}: resources.teacher_time (or resources.time) is not set: give the "
                          "teacher jobs a time limit in minutes, e.g. --set resources.teacher_time=720")
    profile = plan.store.root / PROFILE
    cache = read_json(profile) if profile.is_file() else {}
    measured = measured_step_times(plan)
    device_type = "cuda" if resources.gpus else "cpu"
    runs = {run.key: (part, run) for part in plan.parts for run in part.runs}
    seconds = [estimated_seconds(*runs[job.key], measured, cache, device_type) for job in jobs]
    if any(s is None for s in seconds):
        raise LaunchError(f"{plan.suite_file.path}: resources.time is not set and {sum(s is None for s in seconds)} "
                          f"run(s) have no measured step time: run `python -m benchmark plan {plan.suite_file.path} "
                          "--profile` on the GPU type you will use, or --set resources.time=MINUTES")
    return suggested_time_min(max(seconds))


def _slurm_executor(plan: Plan, resources: ResourcesConfig, time_min: int, name: str,
                    dependency: str | None = None):
    executor = submitit.AutoExecutor(folder=_submitit_folder(plan.store), cluster="slurm",
                                     slurm_max_num_timeout=resources.max_timeouts)
    tasks = max(1, resources.gpus)
    additional: dict[str, Any] = {"requeue": True}
    parameters: dict[str, Any] = {
        "name": name, "timeout_min": time_min, "nodes": 1, "tasks_per_node": tasks,
        "slurm_signal_delay_s": SIGNAL_DELAY_S, "slurm_srun_args": ["--kill-on-bad-exit=1"],
        "slurm_setup": [*_code_setup(), *resources.setup],
    }
    if resources.gpus:
        parameters["gpus_per_node"] = resources.gpus
    if resources.cpus:
        parameters["cpus_per_task"] = resources.cpus
    if resources.mem_gb:
        parameters["mem_gb"] = resources.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(resources, key):
            parameters[f"slurm_{key}"] = getattr(resources, key)
    if resources.array_parallelism:
        parameters["slurm_array_parallelism"] = resources.array_parallelism
    if dependency:
        parameters["slurm_dependency"] = f"afterok:{dependency}"
        additional["kill-on-invalid-dep"] = "yes"
    parameters["slurm_additional_parameters"] = additional
    executor.update_parameters(**parameters)
    return executor


def submit_slurm(suite_file: SuiteFile, overrides: list[str], results_root: str | Path = "results",
                 reports_root: str | Path = "reports", echo=print) -> SuiteOutcome:
    """Submit every unfinished run (and the teachers they need) as Slurm jobs and return; a job already
    queued or running for a run (per ``sacct``) is not submitted again. Renders the report from what has
    finished so far."""
    for tool in ("sbatch", "srun"):
        if shutil.which(tool) is None:
            raise LaunchError(f"--executor slurm: `{tool}` is not on PATH: submit from a Slurm login node, or use "
                              "--executor local on a machine with GPUs")
    plan = _prepare(suite_file, results_root)
    for line in deviation_lines(plan.parts):
        echo(line)
    teachers, students = job_graph(plan)
    commit = environment()["git_commit"] or ""
    book = JobBook(plan.store)
    previous = latest_jobs(plan.store, [job.key for job in teachers + students])
    states = slurm_states([entry["job_id"] for entry in previous.values() if entry["executor"] == "slurm"])
    if states is None:
        echo("warning: sacct is not available: jobs submitted before cannot be checked and are submitted again "
             "(a duplicate finds its run done or locked and exits)")
        states = {}

    def live_job(job: Job) -> str | None:
        entry = previous.get(job.key)
        if entry and entry["executor"] == "slurm" and states.get(entry["job_id"]) in LIVE_STATES:
            return entry["job_id"]
        folder = plan.store.teacher(job.key) if job.role == "teacher" else plan.store.run(job.key)
        holder = folder.holder()
        return (holder.get("slurm_job_id") or f"pid {holder['pid']} on {holder['host']}") if holder else None

    # Every time limit is settled before the first sbatch: a suite that cannot be submitted submits nothing.
    teacher_jobs: dict[str, str | None] = {}
    to_submit: list[tuple[Job, int]] = []
    for job in teachers:
        running = live_job(job)
        if running is None:
            to_submit.append((job, _time_limit(plan, [job], "teacher")))
            continue
        # Depend on the Slurm job that has it; a process outside Slurm holding it is waited for by the runs.
        teacher_jobs[job.key] = running if running[0].isdigit() else None
        echo(f"{job.label}: already queued or training ({running})")
    groups: dict[tuple, list[Job]] = defaultdict(list)
    already = 0
    for job in students:
        if live_job(job) is not None:
            already += 1
            continue
        groups[(job.teacher_key, json.dumps(job.resources.model_dump(), sort_keys=True))].append(job)
    arrays = [(teacher_key, group, _time_limit(plan, group, "student")) for (teacher_key, _), group in groups.items()]

    for job, time_min in to_submit:
        executor = _slurm_executor(plan, job.resources, time_min, f"segkd-{suite_file.name}-teacher")
        handle = executor.submit(RunJob(), *_job_args(suite_file, overrides, plan.store, job, commit))
        book.add(job.key, handle, "slurm", "teacher", commit)
        teacher_jobs[job.key] = handle.job_id
        echo(f"{job.label}: submitted as job {handle.job_id}")
    submitted = len(to_submit)
    for teacher_key, group, time_min in arrays:
        dependency = teacher_jobs.get(teacher_key) if teacher_key else None
        executor = _slurm_executor(plan, group[0].resources, time_min, f"segkd-{suite_file.name}", dependency)
        with executor.batch():
            handles = [executor.submit(RunJob(), *_job_args(suite_file, overrides, plan.store, job, commit))
                       for job in group]
        for job, handle in zip(group, handles):
            book.add(job.key, handle, "slurm", "student", commit, depends_on=dependency)
        submitted += len(group)
        array = handles[0].job_id.split("_")[0]
        echo(f"{len(group)} run(s) submitted as job {'array ' if len(group) > 1 else ''}{array}"
             + (f", after teacher job {dependency} (afterok)" if dependency else ""))
    echo(f"{suite_file.name}: {submitted} job(s) submitted, {already} run(s) already queued or running; "
         f"follow with `python -m benchmark status {suite_file.path} --results {results_root}`, render the "
         "report again with the same `run` command (it submits only what is missing) or `report`")
    return SuiteOutcome(_render(plan, reports_root))


def profile_compute_view(executor: str | None, suite_file: SuiteFile, results_root: str | Path, echo=print) -> None:
    """Measure the step times the equal-compute view (``compare_at``) still lacks, before anything trains: the
    iteration counts, hence the keys, of its runs come from them. Only a single process on the device that trains
    measures; a Slurm submission from a host without that device, or a torchrun process, asks for
    ``plan --profile`` on the right device first."""
    from benchmark.compute import COMPUTE_PROFILE, measure_profile, needs_profile

    store = ResultStore(Path(results_root), suite_file.name)
    waiting = needs_profile(suite_file, store.root)
    if not waiting:
        return
    here = "cuda" if torch.cuda.is_available() else "cpu"
    gpu_jobs = any(suite.resources.gpus for suite in suite_file.parts if suite.name in waiting)
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if several or (executor == "slurm" and gpu_jobs and here != "cuda"):
        where = "under torchrun" if several else "on this host (no GPU; the jobs run on GPUs)"
        raise LaunchError(f"{suite_file.path}: the equal-compute view of {waiting} needs step times measured on the "
                          f"device that trains, once, and they cannot be measured {where}: run `python -m benchmark "
                          f"plan {suite_file.path} --profile` on a GPU node of the kind the runs use (it stores "
                          f"{store.root / COMPUTE_PROFILE}), then run this again")
    measure_profile(suite_file, store.root, torch.device(here), echo)


def run_with_executor(executor: str | None, suite_file: SuiteFile, overrides: list[str], results_root: str | Path,
                      reports_root: str | Path, workers: int | None, echo=print) -> SuiteOutcome:
    """``run``: ``executor`` None is inline, except after a Slurm submission of the same suite and results, where
    it renders the report from what has finished instead of training the queued runs here."""
    if workers is not None and executor != "local":
        raise LaunchError(f"--workers is for --executor local (got --executor {executor or 'inline'})")
    if workers is not None and workers < 1:
        raise LaunchError(f"--workers must be >= 1, got {workers}")
    profile_compute_view(executor, suite_file, results_root, echo)
    if executor == "local":
        return run_local(suite_file, overrides, results_root, reports_root, workers)
    if executor == "slurm":
        return submit_slurm(suite_file, overrides, results_root, reports_root)
    plan = None
    if executor is None:
        plan = make_plan(suite_file, results_root)
        unfinished = [run.key for run in plan.runs if not plan.run_folder(run).done]
        on_slurm = [key for key, entry in latest_jobs(plan.store, unfinished).items() if entry["executor"] == "slurm"]
        if on_slurm:
            echo(f"{suite_file.name}: {len(plan.runs) - len(unfinished)} of {len(plan.runs)} runs finished; "
                 f"{len(on_slurm)} unfinished run(s) were submitted to Slurm ({plan.store.jobs_path}), so nothing is "
                 "trained here: `--executor slurm` submits what is missing, `--executor inline` trains here, "
                 f"`python -m benchmark status {suite_file.path}` shows each run's job")
            return SuiteOutcome(_render(plan, reports_root))
    from benchmark.runner import run_suite

    return run_suite(suite_file, results_root, reports_root, plan=plan)
