"""From a validated suite to stored results: preflight, teachers, runs, report.

Everything that can be checked before training is checked first (datasets on disk, teacher checkpoints,
every method built with its hyperparameters on its models), so a bad suite stops before the first step
with a message naming the file and key. Then teachers are trained or loaded once, each run is trained
(or skipped when done, or resumed from its checkpoint), and a failed run is recorded and the suite goes on.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import platform
import subprocess
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark.cost import FLOPS_CONVENTION, count_flops
from benchmark.data.base import DatasetError
from benchmark.engine import distributed
from benchmark.engine.checkpoint import CheckpointError, load_checkpoint, load_state_strict
from benchmark.engine.train import NonFiniteLossError, TrainJob, run_training
from benchmark.models.base import SegmentationModel, count_parameters, freeze
from benchmark.preflight import PreflightError, check_pairings
from benchmark.registry import DATASETS, MODELS
from benchmark.store import ResultStore, RunFolder, RunLockedError
from benchmark.suite import RunSpec, Suite, SuiteFile, TeacherSpec, expand

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Part:
    suite: Suite
    runs: list[RunSpec]
    teachers: dict[str, TeacherSpec]


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
    for suite in suite_file.parts:
        runs, teachers = expand(suite)
        parts.append(Part(suite, runs, teachers))
    plan = Plan(suite_file, parts, ResultStore(Path(results_root), suite_file.name))
    for part in parts:
        dataset = part.suite.dataset
        label = f"{dataset.name} at {dataset.root}"
        if label not in plan.dataset_problems:
            report = DATASETS.get(dataset.name).check(_root(dataset.root), **dataset.options)
            plan.dataset_problems[label] = "" if report.ok else report.message()
    return plan


def _root(root: str | None) -> Path | None:
    import os

    return Path(os.path.expanduser(os.path.expandvars(root))) if root else None


def preflight(plan: Plan) -> None:
    """Check data, teacher checkpoints and every method's construction; raise PreflightError."""
    problems = [message for message in plan.dataset_problems.values() if message]
    if problems:
        raise PreflightError(f"{plan.suite_file.path}: dataset check failed before training:\n" + "\n".join(problems))
    for part in plan.parts:
        suite = part.suite
        for label, teacher in suite.teachers.items():
            if teacher.checkpoint and not _root(teacher.checkpoint).is_file():
                raise PreflightError(f"{plan.suite_file.path}: teachers.{label}.checkpoint: no such file "
                                     f"{teacher.checkpoint}")
        check_pairings(plan.suite_file.path, suite, _weighted_model)


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
            "run_keys": [r.key for r in part.runs],
            "protocol": suite.protocol_record(),
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


class Runner:
    def __init__(self, plan: Plan, device: torch.device, echo=print):
        self.plan, self.device, self.echo = plan, device, echo
        self.teachers: dict[str, SegmentationModel] = {}
        self._flops: dict[tuple, int] = {}

    def teacher(self, spec: TeacherSpec, suite: Suite) -> SegmentationModel:
        if spec.key in self.teachers:
            return self.teachers[spec.key]
        config = suite.teachers[spec.label]
        num_classes = DATASETS.get(suite.dataset.name).num_classes
        model = MODELS.get(config.model)(num_classes, **config.options)
        if spec.checkpoint:
            path = _root(spec.checkpoint)
            state = load_checkpoint(path)
            state = state["model"] if isinstance(state.get("model"), dict) else state
            load_state_strict(model, state, path, f"teacher {config.model}")
            self.echo(f"teacher {spec.label} ({config.model}): loaded {path}")
        else:
            folder = self.plan.store.teacher(spec.key)
            if not folder.done:
                self.echo(f"teacher {spec.label} ({config.model}): training (once; every run that names it shares it)")
                job = TrainJob(name=f"teacher {config.model}", folder=folder.path,
                               dataset=suite.teacher_dataset(spec.label).resolved(),
                               dataset_root=suite.dataset.root, schedule=suite.teacher_schedule(spec.label),
                               model_name=config.model, model_options=config.options, seed=config.seed,
                               methods=[{"name": "none", "hparams": {}}], runtime=suite.runtime.model_dump(),
                               save_weights=True)
                self._train(folder, job, {"role": "teacher", "model": config.model, "teacher_key": spec.key},
                            spec.config, suite)
                if not folder.done:
                    raise RuntimeError(f"teacher {spec.label} failed: see {folder.log_path}")
            else:
                self.echo(f"teacher {spec.label} ({config.model}): trained already, loading")
            weights = folder.path / "model.pt"
            load_state_strict(model, load_checkpoint(weights), weights, f"teacher {config.model}")
        model = freeze(model.to(self.device))
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
        counts = {"done_before": done, "trained": 0, "failed": 0, "skipped_locked": 0}
        for index, (part, run) in enumerate(runs, start=1):
            folder = self.plan.run_folder(run)
            if folder.done:
                continue
            label = f"[{index}/{len(runs)}] {part.suite.name}: {run.student} / {run.method_label} / seed {run.seed}"
            try:
                teacher = self.teacher(run.teacher, part.suite) if run.teacher else None
            except (RuntimeError, CheckpointError) as error:
                self.echo(f"{label}: FAILED before training: {error}")
                if distributed.is_main():
                    folder.prepare(run.config)
                    folder.set_status("failed", reason=f"teacher unavailable: {error}")
                counts["failed"] += 1
                continue
            self.echo(f"{label}: {'resuming' if folder.checkpoint_path.is_file() else 'training'}")
            job = TrainJob(name=f"{run.student}/{run.method_label}/s{run.seed}", folder=folder.path,
                           dataset=part.suite.dataset.resolved(), dataset_root=run.dataset_root,
                           schedule=part.suite.schedule, model_name=run.student,
                           model_options=run.config["student"]["options"], seed=run.seed,
                           methods=run.config["method"]["components"], teacher=teacher, runtime=run.runtime)
            meta = {"role": "student", "suite": run.suite, "table": run.table, "dataset": part.suite.dataset.name,
                    "student": run.student, "method": run.method_label,
                    "method_components": run.config["method"]["components"], "seed": run.seed,
                    "teacher": part.suite.teachers[run.teacher.label].model if run.teacher else None,
                    "teacher_key": run.teacher.key if run.teacher else None}
            outcome = self._train(folder, job, meta, run.config, part.suite)
            counts[outcome] += 1
        return counts

    def _train(self, folder: RunFolder, job: TrainJob, meta: dict[str, Any], config: dict[str, Any],
               suite: Suite) -> str:
        if distributed.is_main():
            try:
                folder.acquire()
            except RunLockedError as error:
                self.echo(f"  skipped: {error}")
                return "skipped_locked"
            folder.prepare(config)
            folder.set_status("running")
        log = run_logger(folder.log_path, folder.path.name)
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
            self.echo(f"  FAILED: {type(error).__name__}: {error} (log: {folder.log_path})")
            return "failed"
        finally:
            for handler in list(log.handlers):
                handler.close()
                log.removeHandler(handler)
            if distributed.is_main():
                folder.release()
            # Every process sees rank 0's metrics.json / model.pt before deciding what to do next.
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
              device: torch.device | None = None, echo=print) -> Path | None:
    plan = make_plan(suite_file, results_root)
    preflight(plan)
    device = device or distributed.setup()
    if not distributed.is_main():
        echo = _silent
    if distributed.is_main():
        plan.store.root.mkdir(parents=True, exist_ok=True)
        plan.store.write_suite_record(suite_record(plan))
    counts = Runner(plan, device, echo).run_all()
    echo(f"{suite_file.name}: trained {counts['trained']}, failed {counts['failed']}, "
         f"already finished {counts['done_before']}"
         + (f", skipped (locked by another process) {counts['skipped_locked']}" if counts["skipped_locked"] else ""))
    distributed.barrier()
    if not distributed.is_main():
        return None
    from benchmark.report import render_report

    return render_report(plan.store.root, Path(reports_root) / suite_file.name)
