"""From a validated suite to stored results: preflight, teachers, runs, report.

Everything that can be checked before training is checked first (datasets on disk, teacher checkpoints,
every method built with its hyperparameters on its models), so a bad suite stops before the first step
with a message naming the file and key. Then teachers are trained or loaded once, each run is trained
(or skipped when done, or resumed from its checkpoint), and a failed run is recorded and the suite goes on.
Several processes, on one host or many, may run one suite into one results folder: each run folder is
trained by the process holding its lock, and a teacher another process is training is waited for (the
runs that need it go last), never recorded as a failure. Executors for a device pool or Slurm:
:mod:`benchmark.launch`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import platform
import socket
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark.compute import ComputeView, compute_view, read_profile
from benchmark.convert import convert_file, describe_weights, load_weights
from benchmark.cost import FLOPS_CONVENTION, count_flops
from benchmark.data.base import DatasetError
from benchmark.engine import distributed
from benchmark.engine.board import folder_name
from benchmark.engine.checkpoint import (
    CheckpointError,
    check_precision,
    load_checkpoint,
    load_state_strict,
    stored_precision,
)
from benchmark.engine.predictions import QualitativePlan, samples_folder, save_teacher_predictions
from benchmark.engine.train import NonFiniteLossError, TrainJob, run_training
from benchmark.lock import describe
from benchmark.models.base import SegmentationModel, count_parameters, freeze
from benchmark.preflight import PreflightError, check_pairings
from benchmark.qualitative import check_indices
from benchmark.registry import DATASETS, MODELS
from benchmark.store import ResultStore, RunFolder, RunLockedError
from benchmark.suite import RunSpec, ScheduleConfig, Suite, SuiteFile, TeacherSpec, expand, expand_path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class TeacherBusy(Exception):
    """The teacher is being trained by another process (here or on another host) and the caller chose not to wait."""


WAIT_POLL_ENV = "SEGKD_WAIT_POLL_S"


def _shared(value_on_main):
    """A decision rank 0 takes from the store, the same on every process (one process: just the value)."""
    return distributed.broadcast_object(value_on_main() if distributed.is_main() else None)


@dataclass
class Part:
    suite: Suite
    runs: list[RunSpec]  # the table's runs, then those only its equal-compute view has
    teachers: dict[str, TeacherSpec]
    compute: ComputeView | None = None  # the equal-compute view (suite key compare_at)

    @property
    def table_runs(self) -> list[RunSpec]:
        """The runs of the table as the suite's schedule states it (equal iterations)."""
        extra = {run.key for run in self.compute.extra} if self.compute else set()
        return [run for run in self.runs if run.key not in extra]


@dataclass
class Plan:
    suite_file: SuiteFile
    parts: list[Part]
    store: ResultStore
    dataset_problems: dict[str, str] = field(default_factory=dict)

    @property
    def runs(self) -> list[RunSpec]:
        return [run for part in self.parts for run in part.runs]

    def teachers_needed(self) -> dict[str, TeacherSpec]:
        return {run.teacher.key: run.teacher for run in self.runs if run.teacher and not self.run_folder(run).done}

    def run_folder(self, run: RunSpec) -> RunFolder:
        return self.store.run(run.key)


def make_plan(suite_file: SuiteFile, results_root: str | Path = "results") -> Plan:
    parts = []
    store = ResultStore(Path(results_root), suite_file.name)
    profile = read_profile(store.root) if any(suite.compare_at for suite in suite_file.parts) else {}
    for suite in suite_file.parts:
        runs, teachers = expand(suite)
        compute = compute_view(suite, runs, profile) if suite.compare_at else None
        parts.append(Part(suite, runs + (compute.extra if compute else []), teachers, compute))
    plan = Plan(suite_file, parts, store)
    for part in parts:
        dataset = part.suite.dataset
        label = f"{dataset.name} at {dataset.root}"
        if label not in plan.dataset_problems:
            report = DATASETS.get(dataset.name).check(_root(dataset.root), **dataset.options)
            plan.dataset_problems[label] = "" if report.ok else report.message()
    return plan


def _root(root: str | None) -> Path | None:
    return expand_path(root) if root else None


def preflight(plan: Plan) -> None:
    """Check data, teacher checkpoints and every method's construction; raise PreflightError."""
    problems = [message for message in plan.dataset_problems.values() if message]
    if problems:
        raise PreflightError(f"{plan.suite_file.path}: dataset check failed before training:\n" + "\n".join(problems))
    for part in plan.parts:
        suite = part.suite
        num_classes = DATASETS.get(suite.dataset.name).num_classes
        for where, ref in suite.model_refs():
            if ref.checkpoint and not _root(ref.checkpoint).is_file():
                raise PreflightError(f"{plan.suite_file.path}: {where}.checkpoint: no such file "
                                     f"{_root(ref.checkpoint).resolve()}")
            if ref.checkpoint and ref.checkpoint_format != "ours":
                # Converting reads the file once more, but a file that cannot be converted stops the suite here.
                try:
                    convert_file(_root(ref.checkpoint), ref.checkpoint_format,
                                 _built_model(ref.model, tuple(sorted(ref.options.items())), num_classes), ref.model)
                except CheckpointError as error:
                    raise PreflightError(f"{plan.suite_file.path}: {where}.checkpoint: {error}") from None
        check_pairings(plan.suite_file.path, suite, _weighted_model)
    _check_qualitative_indices(plan)


def _check_qualitative_indices(plan: Plan) -> None:
    """Images named by index must exist in the evaluation split (their PNGs are made after training)."""
    for part in plan.parts:
        indices = part.suite.report.qualitative_indices
        if not indices:
            continue
        dataset = part.suite.dataset.resolved()
        length = len(DATASETS.get(dataset["name"]).build(dataset["eval_split"], _root(dataset["root"]),
                                                         **dataset["options"]))
        try:
            check_indices(indices, length, f"{plan.suite_file.path}: {part.suite.name}: report.qualitative_indices")
        except ValueError as error:
            raise PreflightError(str(error)) from None


def check_resume_precision(plan: Plan, device: torch.device) -> None:
    """Before anything trains: every interrupted run and teacher this process would resume continues in the precision
    its checkpoint was trained in (``runtime.amp`` is not part of a key, so the key cannot say). Raise PreflightError
    naming each one and both precisions."""
    from benchmark.engine.train import resolved_precision

    problems, seen = [], set()
    for part in plan.parts:
        folders = [(f"teacher {spec.label}", plan.store.teacher(spec.key)) for spec in part.teachers.values()
                   if not spec.checkpoint]
        folders += [(run.label, plan.run_folder(run))
                    for run in part.runs]
        for label, folder in folders:
            if folder.path in seen or folder.done or not folder.checkpoint_path.is_file():
                continue
            seen.add(folder.path)
            try:
                check_precision(f"{label} ({folder.path.name})", folder.checkpoint_path,
                                stored_precision(folder.checkpoint_path),
                                resolved_precision(device, part.suite.runtime.model_dump()))
            except CheckpointError as error:
                problems.append(str(error))
    if problems:
        raise PreflightError(f"{plan.suite_file.path}: nothing was trained:\n" + "\n".join(problems))


def _weighted_model(name: str, options: dict[str, Any], num_classes: int) -> SegmentationModel:
    """The model as it will train (its ImageNet weights loaded), built once per (name, options) per process."""
    return _built_model(name, tuple(sorted(options.items())), num_classes)


@functools.lru_cache(maxsize=16)
def _built_model(name: str, options: tuple, num_classes: int) -> SegmentationModel:
    try:
        return MODELS.get(name)(num_classes, **dict(options))
    except Exception as error:  # noqa: BLE001 - any build failure (e.g. offline weights) must stop the suite cleanly
        raise PreflightError(f"model {name} with options {dict(options)}: {error}") from None


def environment() -> dict[str, Any]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "timm", "segmentation-models-pytorch", "numpy", "fvcore", "segkd-bench"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                timeout=10, check=False).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                                    capture_output=True, text=True, timeout=10, check=False).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"versions": versions, "git_commit": commit, "git_dirty": dirty, "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def suite_record(plan: Plan) -> dict[str, Any]:
    """What the report needs besides the runs: tables, rows, claims, class names. Stored with the results."""
    parts = []
    for part in plan.parts:
        suite = part.suite
        spec = DATASETS.get(suite.dataset.name)
        parts.append({
            "name": suite.name,
            "title": suite.title,
            "table": suite.table.model_dump() if suite.table else None,
            "description": suite.description,
            "dataset": suite.dataset.name,
            "eval_split": suite.dataset.resolved()["eval_split"],
            "selection_split": suite.dataset.resolved()["selection_split"],
            "class_names": list(spec.class_names),
            "students": [s.model for s in suite.students],
            "methods": [{"label": m.row_label, "components": [c.name for c in m.parts()]} for m in suite.methods],
            "seeds": list(suite.seeds),
            "claims": [c.model_dump() for c in suite.claims],
            "run_keys": [r.key for r in part.table_runs],
            "protocol": suite.protocol_record(),
            "compute": part.compute.record() if part.compute else None,
        })
    return {"name": plan.suite_file.name, "description": plan.suite_file.description,
            "path": str(plan.suite_file.path), "parts": parts}


def run_logger(path: Path, name: str) -> logging.Logger:
    logger = logging.getLogger(f"segkd.run.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    if distributed.is_main():
        handler = logging.FileHandler(path, mode="a")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger


def record_failure(folder: RunFolder, config: dict[str, Any], reason: str) -> str:
    """Record a run failed before training, in a folder this process holds; a folder another process holds
    (it is training that run) or that finished meanwhile is left alone. Returns a ``run_all`` count key."""
    def record() -> str:
        try:
            folder.acquire()
        except RunLockedError:
            return "skipped_locked"
        try:
            if folder.done:
                return "done_elsewhere"
            folder.prepare(config)
            folder.set_status("failed", reason=reason)
            return "failed"
        finally:
            folder.release()

    return _shared(record)


@dataclass
class SuiteOutcome:
    """What ``run`` did: the report it rendered (None: none here) and the runs that failed, each with its reason and
    log, for the summary and the exit code (1 when any failed)."""

    report: Path | None
    failed: list[dict[str, str | None]] = field(default_factory=list)


def echo_failures(failed: list[dict[str, str | None]], echo=print) -> None:
    """The summary's list of failed runs: name, reason, log (or the status file where training never started)."""
    if failed:
        echo(f"{len(failed)} run(s) failed:")
    for failure in failed:
        echo(f"  {failure['run']}: {failure['reason']} (log: {failure['log']})")


def deviation_lines(parts: list[Part]) -> list[str]:
    """One line per table whose runs leave their protocol (:meth:`Suite.run_deviations`), for the console."""
    from benchmark.report.tables import fmt_deviation

    lines = []
    for part in parts:
        differences: dict[str, dict[str, Any]] = {}
        leaving = [run for run in part.runs if run.protocol_deviations]
        for run in leaving:
            for deviation in run.protocol_deviations:
                differences.setdefault(deviation["setting"], deviation)
        if leaving:
            lines.append(f"warning: {part.suite.name}: {len(leaving)} of {len(part.runs)} runs leave the protocol of "
                         f"the {part.suite.protocol_reference} (marked off protocol in their records and the report): "
                         + "; ".join(fmt_deviation(d) for d in differences.values()))
    return lines


class Runner:
    def __init__(self, plan: Plan, device: torch.device, echo=print, launch: dict[str, Any] | None = None):
        self.plan, self.device, self.echo = plan, device, echo
        #: Runs that failed in this process: ``{"run", "reason", "log"}`` (see :class:`SuiteOutcome`).
        self.failures: list[dict[str, str | None]] = []
        self.teachers: dict[str, SegmentationModel] = {}
        #: What each teacher loaded from a checkpoint file (``convert.load_weights``), for the runs' logs and records.
        self.teacher_checkpoints: dict[str, dict[str, Any]] = {}
        self._flops: dict[tuple, int] = {}
        #: How this process was started (executor, job id, host, commits); stored in every record it writes.
        self.launch = launch or {"executor": "inline", "host": socket.gethostname(), "job_id": None}

    def teacher(self, spec: TeacherSpec, suite: Suite, wait: bool = True) -> SegmentationModel:
        """The frozen teacher: loaded, or trained here once. When another process is training it, wait for it
        (``wait``) or raise :class:`TeacherBusy`; a teacher is never trained by two processes."""
        if spec.key in self.teachers:
            return self.teachers[spec.key]
        config = suite.teachers[spec.label]
        num_classes = DATASETS.get(suite.dataset.name).num_classes
        model = MODELS.get(config.model)(num_classes, **config.options)
        if spec.checkpoint:
            path = _root(spec.checkpoint)
            loaded = load_weights(model, path, config.checkpoint_format, f"teacher {config.model}")
            self.teacher_checkpoints[spec.key] = loaded
            self.echo(f"teacher {spec.label} ({config.model}): {describe_weights(loaded)}")
        else:
            folder = self.plan.store.teacher(spec.key)
            if folder.done:
                self.echo(f"teacher {spec.label} ({config.model}): trained already, loading")
            waited = False
            while not _shared(lambda: folder.done):
                holder = _shared(folder.holder)
                if holder is not None:
                    if not wait:
                        raise TeacherBusy(f"teacher {spec.label} is being trained on {describe(holder)}")
                    if not waited:
                        self.echo(f"teacher {spec.label} ({config.model}): being trained on {describe(holder)}; "
                                  "waiting for it")
                    waited = True
                    time.sleep(float(os.environ.get(WAIT_POLL_ENV, "5")))
                    continue
                status = _shared(folder.status)
                if waited and status["status"] == "failed":
                    raise RuntimeError(f"teacher {spec.label} failed in another process: {status.get('reason')}")
                self.echo(f"teacher {spec.label} ({config.model}): training (once; every run that names it shares "
                          f"it) in {folder.path.resolve()}, log {folder.log_path.resolve()}")
                job = TrainJob(name=f"teacher {config.model}", folder=folder.path,
                               dataset=suite.teacher_dataset(spec.label).resolved(),
                               dataset_root=suite.dataset.root, schedule=suite.teacher_schedule(spec.label),
                               model_name=config.model, model_options=config.options, seed=config.seed,
                               methods=[{"name": "none", "hparams": {}}], runtime=suite.runtime.model_dump(),
                               save_weights=True, qualitative=self.qualitative(suite),
                               board_name=folder_name("teacher", spec.label, config.model, f"seed{config.seed}"))
                outcome = self._train(folder, job, {"role": "teacher", "model": config.model,
                                                    "teacher_key": spec.key}, spec.config, suite)
                if outcome == "skipped_locked":
                    waited = True  # another process took it between our look and our lock: wait for that one
                    continue
                if not folder.done:
                    raise RuntimeError(f"teacher {spec.label} failed: see {folder.log_path.resolve()}")
            weights = folder.path / "model.pt"
            load_state_strict(model, load_checkpoint(weights), weights, f"teacher {config.model}")
        model = freeze(model.to(self.device))
        qualitative = self.qualitative(suite)
        if spec.checkpoint and qualitative is not None and distributed.is_main():
            save_teacher_predictions(model, suite.dataset.resolved(), _root(suite.dataset.root),
                                     self.plan.store.teacher(spec.key).path, qualitative, self.device,
                                     suite.runtime.model_dump())
        self.teachers[spec.key] = model
        return model

    def run_all(self) -> dict[str, int]:
        # A cell shared by two tables (e.g. the same baseline student) is one run, trained once.
        unique: dict[str, tuple[Part, RunSpec]] = {}
        for part in self.plan.parts:
            for run in part.runs:
                unique.setdefault(run.key, (part, run))
        runs = list(unique.values())
        done = sum(self.plan.run_folder(run).done for _, run in runs)
        self.echo(f"{self.plan.suite_file.name}: {len(runs)} runs, {done} already finished, "
                  f"{len(runs) - done} to train")
        counts = {"done_before": done, "trained": 0, "failed": 0, "skipped_locked": 0, "done_elsewhere": 0}
        # First pass: runs whose teacher another process is training wait until everything else is trained.
        pending, busy_teachers = list(enumerate(runs, start=1)), set()
        for wait in (False, True):
            deferred = []
            for index, (part, run) in pending:
                try:
                    outcome = self._run(index, len(runs), part, run, wait)
                except TeacherBusy as busy:
                    if run.teacher.key not in busy_teachers:
                        self.echo(f"{busy}: its runs wait until the others are trained")
                        busy_teachers.add(run.teacher.key)
                    deferred.append((index, (part, run)))
                    continue
                if outcome is not None:
                    counts[outcome] += 1
            pending = deferred
        return counts

    def _run(self, index: int, total: int, part: Part, run: RunSpec, wait: bool) -> str | None:
        """Train one run unless it is done; the outcome (a key of ``run_all``'s counts), None if it was done."""
        folder = self.plan.run_folder(run)
        if folder.done:
            return None
        name = run.label
        label = f"[{index}/{total}] {name}"
        try:
            teacher = self.teacher(run.teacher, part.suite, wait=wait) if run.teacher else None
        except (RuntimeError, CheckpointError) as error:
            outcome = record_failure(folder, run.config, f"teacher unavailable: {error}")
            if outcome == "failed":
                self.echo(f"{label}: FAILED before training: {error}")
                self._failed(name, folder)
            return outcome
        self.echo(f"{label}: {'resuming' if folder.checkpoint_path.is_file() else 'training'} in "
                  f"{folder.path.resolve()}, log {folder.log_path.resolve()}")
        job = TrainJob(name=f"{run.student}/{run.method_label}/s{run.seed}", folder=folder.path,
                       dataset=part.suite.dataset.resolved(), dataset_root=run.dataset_root,
                       schedule=ScheduleConfig(**run.config["schedule"]) if run.compute else part.suite.schedule,
                       model_name=run.student,
                       model_options=run.student_options, seed=run.seed,
                       methods=run.config["method"]["components"], teacher=teacher, runtime=run.runtime,
                       qualitative=self.qualitative(part.suite),
                       board_name=folder_name(run.suite, run.student, run.method_label, f"seed{run.seed}",
                                              *(["equal-compute"] if run.compute else [])),
                       initial_weights=run.student_checkpoint)
        meta = {"role": "student", "suite": run.suite, "table": run.table, "dataset": part.suite.dataset.name,
                "student": run.student, "method": run.method_label,
                "method_components": run.config["method"]["components"], "seed": run.seed,
                "teacher": part.suite.teachers[run.teacher.label].model if run.teacher else None,
                "teacher_key": run.teacher.key if run.teacher else None}
        if run.teacher and run.teacher.key in self.teacher_checkpoints:
            meta["teacher_checkpoint"] = self.teacher_checkpoints[run.teacher.key]
        if run.compute:  # an equal-compute run: how its iterations were derived from the profiled step times
            meta["compute_budget"] = run.compute
        meta["protocol_deviations"] = run.protocol_deviations
        meta["protocol_reference"] = run.protocol_reference
        outcome = self._train(folder, job, meta, run.config, part.suite)
        if outcome == "failed":
            self._failed(name, folder)
        return outcome

    def _failed(self, name: str, folder: RunFolder) -> None:
        reason = folder.status().get("reason") if distributed.is_main() else None
        log = folder.log_path if folder.log_path.is_file() else folder.status_path
        self.failures.append({"run": name, "reason": reason or "see the log", "log": str(log.resolve())})

    def qualitative(self, suite: Suite) -> QualitativePlan | None:
        """The suite's prediction images (``report`` key); None where it asks for none."""
        report = suite.report
        if report.qualitative_indices == []:
            return None
        indices = tuple(report.qualitative_indices) if report.qualitative_indices is not None else None
        return QualitativePlan(indices, report.qualitative_max_side,
                               samples_folder(self.plan.store.root, suite.dataset.resolved(),
                                              report.qualitative_max_side))

    def _train(self, folder: RunFolder, job: TrainJob, meta: dict[str, Any], config: dict[str, Any],
               suite: Suite) -> str:
        def claim() -> str:
            try:
                folder.acquire()
            except RunLockedError as error:
                self.echo(f"  skipped: {error}")
                return "skipped_locked"
            if folder.done:  # finished by another process after this one looked
                folder.release()
                return "done_elsewhere"
            try:
                folder.prepare(config)
                folder.set_status("running")
            except BaseException:
                folder.release()
                raise
            return "claimed"

        claimed = _shared(claim)
        if claimed != "claimed":
            return claimed
        log = run_logger(folder.log_path, folder.path.name)
        if "teacher_checkpoint" in meta:
            log.info("teacher %s: %s", meta["teacher"], describe_weights(meta["teacher_checkpoint"]))
        if self.launch.get("warning"):
            log.warning("%s", self.launch["warning"])
        stopping = False
        try:
            result = run_training(job, self.device, log)
            student = result.pop("student_model")
            method_params = result.pop("method_params")
            spec = DATASETS.get(suite.dataset.name)
            size = _cost_input_size(suite)
            record = {
                **meta,
                "run_key": folder.path.name,
                "status": "done",
                "class_names": list(spec.class_names),
                **result,
                "cost": {
                    "params": count_parameters(student),
                    "flops": self._count_flops(job, student, size),
                    "flops_input_size": list(size),
                    "flops_convention": FLOPS_CONVENTION,
                    "method_params": method_params,
                },
                "environment": environment(),
                "launch": self.launch,
                "config": config,
            }
            if distributed.is_main():
                folder.write_metrics(record)
            best = record["best"]["miou"] if record["best"] else float("nan")
            self.echo(f"  done: {record['final']['split']} mIoU {100 * record['final']['miou']:.2f} "
                      f"(best-on-{record['best']['selected_on'] if record['best'] else '-'}: {100 * best:.2f}), "
                      f"{record['timing']['wall_seconds']:.0f} s")
            return "trained"
        except (NonFiniteLossError, RuntimeError, ValueError, DatasetError, CheckpointError) as error:
            log.error("run failed: %s\n%s", error, traceback.format_exc())
            if distributed.is_main():
                folder.set_status("failed", reason=f"{type(error).__name__}: {error}")
            self.echo(f"  FAILED: {type(error).__name__}: {error} (log: {folder.log_path.resolve()})")
            return "failed"
        except BaseException:
            # Told to stop (a requeue signal exits rank 0 only, Ctrl-C): the other processes may never reach a
            # barrier, so waiting in one would hang until the job is killed. checkpoint.pt is the resume point.
            stopping = True
            raise
        finally:
            for handler in list(log.handlers):
                handler.close()
                log.removeHandler(handler)
            if distributed.is_main():
                folder.release()
            # Every process sees rank 0's metrics.json / model.pt before deciding what to do next.
            if not stopping:
                distributed.barrier()

    def _count_flops(self, job: TrainJob, student: SegmentationModel, size: tuple[int, int]) -> int:
        key = (job.model_name, tuple(sorted(job.model_options.items())), tuple(size))
        if key not in self._flops:
            self._flops[key] = count_flops(student, size)
        return self._flops[key]


def _silent(message: str) -> None:
    """Only rank 0 speaks: N processes printing the same progress would be noise."""


def _cost_input_size(suite: Suite) -> tuple[int, int]:
    """FLOPs at the evaluation size when the suite fixes one, else at the training crop."""
    size = suite.dataset.eval_size
    if isinstance(size, tuple):
        return size
    return tuple(suite.dataset.crop)


def run_suite(suite_file: SuiteFile, results_root: str | Path = "results", reports_root: str | Path = "reports",
              device: torch.device | None = None, echo=print, plan: Plan | None = None) -> SuiteOutcome:
    """Train every unfinished run here, one after another, then render the report (``plan``: made already)."""
    plan = plan or make_plan(suite_file, results_root)
    preflight(plan)
    device = device or distributed.setup()
    check_resume_precision(plan, device)
    if not distributed.is_main():
        echo = _silent
    for line in deviation_lines(plan.parts):
        echo(line)
    if distributed.is_main():
        plan.store.root.mkdir(parents=True, exist_ok=True)
        plan.store.write_suite_record(suite_record(plan))
    runner = Runner(plan, device, echo)
    counts = runner.run_all()
    echo(f"{suite_file.name}: trained {counts['trained']}, failed {counts['failed']}, "
         f"already finished {counts['done_before']}"
         + (f", finished by another process {counts['done_elsewhere']}" if counts["done_elsewhere"] else "")
         + (f", skipped (locked by another process) {counts['skipped_locked']}" if counts["skipped_locked"] else ""))
    echo_failures(runner.failures, echo)
    distributed.barrier()
    if not distributed.is_main():
        return SuiteOutcome(None, runner.failures)
    from benchmark.report import render_report

    return SuiteOutcome(render_report(plan.store.root, Path(reports_root) / suite_file.name), runner.failures)
