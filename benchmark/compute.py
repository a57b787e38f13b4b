"""The equal-compute view of a table (suite key ``compare_at``): every method row trained for one compute budget.

A paper's table trains every method for the same number of iterations, so a method whose step costs twice as
much gets twice the compute; arXiv 2604.25530 finds that at equal wall-clock plain KD matches the
segmentation-specific losses. With ``compare_at`` a suite's table is read twice: as the schedule says (equal
iterations, the view the papers' claims come from) and at equal compute, where each row trains for

    iterations = budget / its step time, rounded to a multiple of ``round_to``,

the budget being what the reference row (default: ``none``) costs with the schedule, or ``compare_at.hours``.
Step times come from a short profile of each (student, teacher, method) pair at the suite's crop and batch
(:func:`benchmark.cost.profile_step`), measured once on the device that trains, before any training, and
stored in ``results/<suite>/compute_profile.json``; every later command (``plan``, ``status``, each executor's
jobs) derives the same counts from that file, so the runs of this view are ordinary runs with their own keys
(the derived count is in their resolved schedule). Measuring again (deleting the file) may change a count and
with it a key: a new run, never an overwritten one. Rounding makes a small change in a step time mostly
harmless. The reference row's runs in this view are its ordinary runs.

Step times are of one process at the suite's per-process batch; a run of G processes (``resources.gpus``) is
assumed to take the same time per step, so its device-hours are G times its wall time.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmark.data.base import DatasetError
from benchmark.engine.loader import iterations_per_epoch
from benchmark.registry import DATASETS
from benchmark.store import atomic_write_json, read_json
from benchmark.suite import RunSpec, Suite, SuiteError, SuiteFile, config_key, expand

COMPUTE_PROFILE = "compute_profile.json"
#: The words the report uses for each budget.
BUDGET_NAMES = {"device_hours": "equal device-hours", "wall_clock": "equal wall-clock"}


def pair_key(suite: Suite, run: RunSpec) -> str:
    """What a step time depends on: student, teacher, method row, crop and batch."""
    teacher = suite.teachers[run.teacher.label].model if run.teacher else "-"
    return (f"{run.student}<-{teacher}|{run.method_label}|crop={list(suite.dataset.crop)}|"
            f"batch={suite.schedule.batch_size}")


#: Training images of the datasets' standard splits, so a plan needs no dataset on disk.
TRAIN_IMAGES = {"cityscapes": {"train": 2975}, "voc_aug": {"train_aug": 10582, "train": 1464},
                "camvid": {"train": 367, "train+val": 468}}


@functools.lru_cache(maxsize=64)
def _split_length(name: str, split: str, root: str | None, options_json: str) -> int | None:
    """Images of a split found on disk, once per process: plans ask for every run of a suite in epochs."""
    try:
        root_path = Path(root).expanduser() if root else None
        return len(DATASETS.get(name).build(split, root_path, **json.loads(options_json)))
    except (DatasetError, OSError):
        return None


def schedule_iterations(suite: Suite) -> int | None:
    """The iterations of the suite's schedule (epochs x iterations per epoch at ``resources.gpus`` processes);
    None when it is given in epochs and the training split's length is unknown (dataset not found)."""
    schedule = suite.schedule
    if schedule.iterations:
        return schedule.iterations
    dataset = suite.dataset.resolved()
    length = TRAIN_IMAGES.get(dataset["name"], {}).get(dataset["train_split"])
    if length is None:
        length = _split_length(dataset["name"], dataset["train_split"], dataset["root"],
                               json.dumps(dataset["options"], sort_keys=True))
        if length is None:
            return None
    return schedule.epochs * iterations_per_epoch(length, schedule.batch_size, max(suite.resources.gpus, 1))


def read_profile(results_dir: Path) -> dict[str, dict[str, Any]]:
    """Pair key -> the stored step time of the equal-compute view (empty without a profile)."""
    path = Path(results_dir) / COMPUTE_PROFILE
    return read_json(path) if path.is_file() else {}


@dataclass
class ComputeView:
    """The equal-compute runs of one suite (a table), derived from the stored profile."""

    budget: str
    reference: str | None  # the row whose cost is the budget; None with a stated budget (``hours``)
    hours: float | None
    round_to: int
    reference_iterations: int | None  # the schedule's iterations
    runs: list[RunSpec] = field(default_factory=list)  # every run of this view, the reference's ordinary runs too
    extra: list[RunSpec] = field(default_factory=list)  # those that are not runs of the table's schedule
    pending: list[str] = field(default_factory=list)  # "student / row" pairs still without a profiled step time
    iterations: dict[str, dict[str, int]] = field(default_factory=dict)  # student -> row -> iterations
    budget_hours: dict[str, float] = field(default_factory=dict)  # student -> budget per run, hours of `budget`
    profile: dict[str, dict[str, Any]] = field(default_factory=dict)  # pair key -> entry used

    def record(self) -> dict[str, Any]:
        """What the report needs (``suite.json``): the budget, the derived iterations and this view's run keys."""
        return {"budget": self.budget, "name": BUDGET_NAMES[self.budget], "reference": self.reference,
                "hours": self.hours, "round_to": self.round_to, "reference_iterations": self.reference_iterations,
                "run_keys": [run.key for run in self.runs], "pending": list(self.pending),
                "iterations": self.iterations, "budget_hours": self.budget_hours,
                "devices": sorted({str(e.get("device")) for e in self.profile.values()}),
                "profile_file": COMPUTE_PROFILE}


def _reference_label(suite: Suite) -> str | None:
    compare = suite.compare_at
    if compare.hours is not None:
        return None
    if compare.reference is not None:
        return compare.reference
    return next(m.row_label for m in suite.methods if [c.name for c in m.parts()] == ["none"])


def rounded(value: float, step: int) -> int:
    """``value`` to the nearest multiple of ``step``, at least one step."""
    return max(step, round(value / step) * step)


def compute_view(suite: Suite, runs: list[RunSpec], profile: dict[str, dict[str, Any]]) -> ComputeView:
    """The equal-compute runs of ``suite`` (its ``runs`` are the table's), as far as ``profile`` has step times."""
    compare = suite.compare_at
    total = schedule_iterations(suite)
    # Device-hours are G processes' wall time; a step time is one process's.
    processes = max(suite.resources.gpus, 1) if compare.budget == "device_hours" else 1
    reference = _reference_label(suite)
    round_to = compare.round_to or (max(1, round(0.01 * total)) if total else 1)
    view = ComputeView(budget=compare.budget, reference=reference, hours=compare.hours, round_to=round_to,
                       reference_iterations=total)
    if total is None:
        view.pending = sorted({f"{run.student} / {run.method_label} (the schedule's iteration count is unknown: "
                               f"dataset not found)" for run in runs})
        return view
    by_pair = {(run.student, run.method_label): run for run in runs}
    for run in runs:
        key = pair_key(suite, run)
        own = profile.get(key)
        if run.method_label == reference:  # its budget is its schedule: its runs are the table's
            view.runs.append(run)
            view.iterations.setdefault(run.student, {})[run.method_label] = total
            if own is not None:
                view.profile[key] = own
                view.budget_hours[run.student] = own["seconds_per_iteration"] * total * processes / 3600
            continue
        ref_entry = None
        if reference is not None:
            ref_entry = profile.get(pair_key(suite, by_pair[(run.student, reference)]))
        if own is None or (reference is not None and ref_entry is None):
            view.pending.append(f"{run.student} / {run.method_label}")
            continue
        view.profile[key] = own
        if compare.hours is not None:
            step_seconds = compare.hours * 3600 / processes
            view.budget_hours[run.student] = compare.hours
        else:
            step_seconds = ref_entry["seconds_per_iteration"] * total
        unrounded = step_seconds / own["seconds_per_iteration"]
        iterations = rounded(unrounded, round_to)
        view.iterations.setdefault(run.student, {})[run.method_label] = iterations
        if iterations == total:  # the same training as the table's run: the same run
            view.runs.append(run)
            continue
        config = {**run.config, "schedule": {**run.config["schedule"], "iterations": iterations, "epochs": None}}
        derivation = {"budget": compare.budget, "reference": reference, "hours": compare.hours,
                      "reference_iterations": total, "round_to": round_to, "iterations": iterations,
                      "unrounded_iterations": unrounded, "seconds_per_iteration": own["seconds_per_iteration"],
                      "reference_seconds_per_iteration": ref_entry["seconds_per_iteration"] if ref_entry else None,
                      "profile": {"file": COMPUTE_PROFILE, "device": own.get("device"), "steps": own.get("steps"),
                                  "measured": own.get("measured")}}
        derived = replace(run, key=config_key(config), config=config, compute=derivation)
        view.runs.append(derived)
        view.extra.append(derived)
    view.pending = sorted(set(view.pending))
    return view


# --- measuring ------------------------------------------------------------------------------------------


def missing_pairs(suite: Suite, runs: list[RunSpec], profile: dict[str, dict[str, Any]]) -> dict[str, RunSpec]:
    """Pair key -> one run of each (student, teacher, row) of ``suite`` whose step time the view still needs."""
    missing: dict[str, RunSpec] = {}
    for run in runs:
        key = pair_key(suite, run)
        if key not in profile:
            missing.setdefault(key, run)
    return missing


def measure_profile(suite_file: SuiteFile, results_dir: Path, device, echo=print) -> dict[str, dict[str, Any]]:
    """Measure and store every step time the equal-compute view of ``suite_file``'s tables still lacks.

    Entries already stored are kept (reruns derive the same iterations); a table whose stored step times come from
    another kind of device is not completed here (ratios across devices would mean nothing): an error says so.
    """
    from benchmark.plan import profile_run

    results_dir = Path(results_dir)
    path = results_dir / COMPUTE_PROFILE
    profile = read_profile(results_dir)
    for suite in suite_file.parts:
        if suite.compare_at is None:
            continue
        runs = expand(suite)[0]
        missing = missing_pairs(suite, runs, profile)
        if not missing:
            continue
        kinds = {profile[pair_key(suite, run)].get("device_type") for run in runs if pair_key(suite, run) in profile}
        if kinds - {device.type}:
            raise SuiteError(f"{suite_file.path}: {suite.name}: the equal-compute step times in {path} were measured "
                             f"on {sorted(kinds)}, this process has {device.type}: measure the missing "
                             f"{len(missing)} pair(s) on the same kind of device (`python -m benchmark plan "
                             f"{suite_file.path} --profile` there), or delete the file to measure every pair again")
        echo(f"{suite.name}: equal-compute view ({BUDGET_NAMES[suite.compare_at.budget]}): profiling "
             f"{len(missing)} (student, teacher, method) pair(s) on {device}, {suite.compare_at.profile_steps} "
             f"steps each")
        for key, run in missing.items():
            seconds = profile_run(suite, run, device, steps=suite.compare_at.profile_steps)
            profile[key] = {"seconds_per_iteration": seconds, "device": str(device), "device_type": device.type,
                            "steps": suite.compare_at.profile_steps, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
            results_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, profile)  # after each pair: an interrupted profile keeps what it measured
            echo(f"  {key}: {seconds:.4f} s/iteration")
    return profile


def needs_profile(suite_file: SuiteFile, results_dir: Path) -> list[str]:
    """The tables whose equal-compute view still lacks step times."""
    profile = read_profile(results_dir)
    return [suite.name for suite in suite_file.parts
            if suite.compare_at is not None and missing_pairs(suite, expand(suite)[0], profile)]
