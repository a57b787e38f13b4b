"""``plan``: what a suite would do, without training: runs and their state, teachers, dataset problems, and
an estimate of device-hours from measured step times.

Step times come from two places, both measurements: finished runs of this suite (their
``seconds_per_iteration``), and ``plan --profile``, a short profiling pass of each (student, teacher, method)
at the suite's crop and batch on this machine's device, cached in ``results/<suite>/profile.json``. Run
``--profile`` on the GPU you will train on; a CPU measurement estimates CPU hours.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

import torch
import yaml

from benchmark.cost import profile_step
from benchmark.data.base import DatasetError
from benchmark.engine.loader import iterations_per_epoch
from benchmark.engine.prepare import run_prepare
from benchmark.preflight import check_pairings, missing_weights, structure_builder
from benchmark.registry import DATASETS, MODELS
from benchmark.runner import Part, make_plan
from benchmark.store import atomic_write_json, read_json
from benchmark.suite import RunSpec, SuiteFile, expand
from methods.base import Batch

PROFILE = "profile.json"


def _pair_key(part: Part, run: RunSpec) -> str:
    suite = part.suite
    teacher = suite.teachers[run.teacher.label].model if run.teacher else "-"
    return (f"{run.student}<-{teacher}|{run.method_label}|crop={list(suite.dataset.crop)}|"
            f"batch={suite.schedule.batch_size}")


def _iterations(part: Part) -> int | None:
    schedule = part.suite.schedule
    if schedule.iterations:
        return schedule.iterations
    counts = {"cityscapes": {"train": 2975}, "voc_aug": {"train_aug": 10582, "train": 1464},
              "camvid": {"train": 367, "train+val": 468}}
    dataset = part.suite.dataset.resolved()
    length = counts.get(dataset["name"], {}).get(dataset["train_split"])
    if length is None:
        try:
            spec = DATASETS.get(dataset["name"])
            root = Path(dataset["root"]).expanduser() if dataset["root"] else None
            length = len(spec.build(dataset["train_split"], root, **dataset["options"]))
        except (DatasetError, OSError):
            return None
    return schedule.epochs * iterations_per_epoch(length, schedule.batch_size)


def profile_suite(plan, device: torch.device, echo=print) -> dict:
    from benchmark.engine.train import build_method

    path = plan.store.root / PROFILE
    cache = read_json(path) if path.is_file() else {}
    for part in plan.parts:
        suite = part.suite
        num_classes = DATASETS.get(suite.dataset.name).num_classes
        for run in part.runs:
            key = _pair_key(part, run)
            if f"{key}|{device.type}" in cache:
                continue
            student = MODELS.get(run.student)(num_classes, **{**run.config["student"]["options"], "pretrained": False}
                                              if "pretrained" in run.config["student"]["options"]
                                              else run.config["student"]["options"])
            teacher = None
            if run.teacher:
                config = suite.teachers[run.teacher.label]
                options = {**config.options, **({"pretrained": False} if "pretrained" in config.options else {})}
                teacher = MODELS.get(config.model)(num_classes, **options).to(device).eval()
                for p in teacher.parameters():
                    p.requires_grad_(False)
            method = build_method(run.config["method"]["components"], student, teacher).to(device)
            if method.needs_prepare():
                # One batch of random data: enough for margins, a one-step attention stage; the stage's own
                # time is not part of the per-iteration estimate.
                crop, size = tuple(suite.dataset.crop), suite.schedule.batch_size
                batch = Batch(torch.randn(size, 3, *crop, device=device),
                              torch.randint(0, num_classes, (size, *crop), device=device))
                run_prepare(method, teacher, lambda batch=batch: batch, num_classes, device, log=lambda message: None)
            seconds = profile_step(student, teacher, method, tuple(suite.dataset.crop), suite.schedule.batch_size,
                                   num_classes, device, runtime=suite.runtime.model_dump())
            cache[f"{key}|{device.type}"] = {"seconds_per_iteration": seconds, "device": str(device),
                                             "measured": time.strftime("%Y-%m-%d")}
            echo(f"  profiled {key} on {device}: {seconds:.3f} s/iteration")
    plan.store.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, cache)
    return cache


def measured_step_times(plan) -> dict[str, dict]:
    """Pair key -> timing of a finished run of this suite (its ``seconds_per_iteration``)."""
    measured = {}
    for part in plan.parts:
        for run in part.runs:
            folder = plan.run_folder(run)
            if folder.done:
                timing = folder.metrics().get("timing", {})
                if "seconds_per_iteration" in timing:
                    measured[_pair_key(part, run)] = timing
    return measured


def step_time(part: Part, run: RunSpec, measured: dict, cache: dict, device_type: str) -> dict | None:
    """The measured step time of a run's (student, teacher, method) pair: finished runs first, then
    ``plan --profile`` on a GPU, then on ``device_type``."""
    key = _pair_key(part, run)
    return measured.get(key) or cache.get(f"{key}|cuda") or cache.get(f"{key}|{device_type}")


def estimated_seconds(part: Part, run: RunSpec, measured: dict, cache: dict, device_type: str) -> float | None:
    """A run's training time from its measured step time and its schedule's iterations, or None."""
    timing, iterations = step_time(part, run, measured, cache, device_type), _iterations(part)
    return None if timing is None or iterations is None else timing["seconds_per_iteration"] * iterations


#: A time limit leaves room for evaluation, start-up and a slower node: 1.5x the estimate plus 10 minutes.
TIME_LIMIT_FACTOR, TIME_LIMIT_EXTRA_MIN = 1.5, 10


def suggested_time_min(seconds: float) -> int:
    return math.ceil(TIME_LIMIT_FACTOR * seconds / 60 + TIME_LIMIT_EXTRA_MIN)


def print_plan(suite_file: SuiteFile, results_root: str = "results", profile: bool = False) -> int:
    plan = make_plan(suite_file, results_root)
    print(f"suite {suite_file.name} ({suite_file.path}): {len(plan.parts)} table(s), {len(plan.runs)} runs; "
          f"results in {plan.store.root}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    profile_path = plan.store.root / PROFILE
    if profile:
        cache = profile_suite(plan, device)
    else:
        cache = read_json(profile_path) if profile_path.is_file() else {}
    measured_in_runs = measured_step_times(plan)
    total_hours, unknown = 0.0, 0
    for part in plan.parts:
        suite = part.suite
        states = Counter(plan.run_folder(run).status()["status"] for run in part.runs)
        print(f"\n== {suite.title} [{suite.name}] ==")
        root = Path(suite.dataset.root).expanduser().resolve() if suite.dataset.root else "-"
        print(f"  dataset: {suite.dataset.name} (root: {root}), "
              f"crop {list(suite.dataset.crop)}, {len(part.runs)} runs: "
              + ", ".join(f"{count} {state}" for state, count in sorted(states.items())))
        problem = plan.dataset_problems.get(f"{suite.dataset.name} at {suite.dataset.root}")
        if problem:
            print("  DATASET MISSING OR INCOMPLETE:\n" + "\n".join("    " + line for line in problem.splitlines()))
        for label, teacher in part.teachers.items():
            if teacher.checkpoint:
                state = f"load {teacher.checkpoint}"
            elif plan.store.teacher(teacher.key).done:
                state = "trained"
            else:
                state = "must be trained"
            print(f"  teacher {label}: {suite.teachers[label].model} [{teacher.key}] {state}")
        iterations = _iterations(part)
        part_hours, part_unknown, sources, longest = 0.0, 0, set(), 0.0
        for run in part.runs:
            status = plan.run_folder(run).status()
            reason = f" ({status['reason']})" if status.get("reason") else ""
            print(f"  {run.key}  {status['status']:<11} {run.student} / {run.method_label} / seed {run.seed}{reason}")
            if status["status"] == "done":
                continue
            key = _pair_key(part, run)
            timing = step_time(part, run, measured_in_runs, cache, device.type)
            if timing is None or iterations is None:
                part_unknown += 1
                continue
            sources.add("finished runs" if key in measured_in_runs else f"plan --profile on {timing['device']}")
            part_hours += timing["seconds_per_iteration"] * iterations / 3600
            longest = max(longest, timing["seconds_per_iteration"] * iterations)
        if part_unknown:
            print(f"  estimate: {part_unknown} run(s) without a measured step time: run "
                  f"`python -m benchmark plan {suite_file.path} --profile` on the device you will train on")
        if part_hours:
            print(f"  estimate: {part_hours:.3g} device-hours for the unfinished runs with a measured step time "
                  f"({iterations} iterations each; step times from {', '.join(sorted(sources))}; teachers not "
                  f"included)")
            print(f"  suggested job time limit: --set resources.time={suggested_time_min(longest)} (minutes: "
                  f"{TIME_LIMIT_FACTOR}x the longest run's estimate + {TIME_LIMIT_EXTRA_MIN})")
        total_hours += part_hours
        unknown += part_unknown
    print(f"\ntotal: {total_hours:.3g} device-hours estimated" + (f", {unknown} run(s) not estimated" if unknown
                                                                 else ""))
    return 0


def run_preflight(suite_file: SuiteFile, echo=print) -> None:
    """Build every pairing of every part (no weights); raise PreflightError on the first failure; list missing weights."""
    build = structure_builder()
    total = 0
    for suite in suite_file.parts:
        total += check_pairings(suite_file.path, suite, build)
        for line in missing_weights(suite):
            echo(f"  {suite.name}: WEIGHTS MISSING: {line}")
        for deviation in suite.protocol_deviations():
            echo(f"  {suite.name}: leaves its protocol card ({suite.protocol.name}): {deviation['setting']} is "
                 f"{deviation['ran']!r}, the card says {deviation['card']!r}")
    echo(f"preflight {suite_file.path}: {len(suite_file.parts)} table(s), every model and {total} method build(s) "
         f"ok (structure only: weights and datasets are not loaded)")


def plan_json(suite_file: SuiteFile) -> str:
    """The runs of a suite file, each with its resolved config exactly as its ``config.yaml`` stores it."""
    runs = []
    for suite in suite_file.parts:
        for run in expand(suite)[0]:
            # Through YAML and back: config.yaml is `yaml.safe_dump(run.config)`, so this is what it reads as.
            config = yaml.safe_load(yaml.safe_dump(run.config, sort_keys=True))
            runs.append({"key": run.key, "suite": run.suite, "student": run.student, "method": run.method_label,
                         "seed": run.seed, "config": config})
    return json.dumps({"runs": runs}, indent=1, sort_keys=False)
