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

from benchmark.compute import COMPUTE_PROFILE, measure_profile, pair_key, read_profile, schedule_iterations
from benchmark.cost import profile_step
from benchmark.engine.prepare import run_prepare
from benchmark.preflight import check_pairings, missing_weights, structure_builder, without_weights
from benchmark.registry import DATASETS, MODELS
from benchmark.report.significance import ALPHA, MAX_SEEDS, POWER, seeds_to_resolve
from benchmark.runner import Part, make_plan
from benchmark.store import atomic_write_json, read_json
from benchmark.suite import RunSpec, SuiteFile, expand
from methods.base import Batch

PROFILE = "profile.json"


def _pair_key(part: Part, run: RunSpec) -> str:
    return pair_key(part.suite, run)


def _iterations(part: Part) -> int | None:
    return schedule_iterations(part.suite)


def run_iterations(part: Part, run: RunSpec) -> int | None:
    """A run's iterations: its own schedule's where it states them (an equal-compute run), else the suite's."""
    return run.config["schedule"].get("iterations") or _iterations(part)


def profile_run(suite, run: RunSpec, device: torch.device, steps: int = 3) -> float:
    """Seconds per training step of one run's (student, teacher, method) at the suite's crop and batch, measured on
    ``device`` with random data and models without weights (:func:`benchmark.cost.profile_step`)."""
    from benchmark.engine.train import build_method

    num_classes = DATASETS.get(suite.dataset.name).num_classes
    student = MODELS.get(run.student)(num_classes, **without_weights(run.student_options))
    teacher = None
    if run.teacher:
        config = suite.teachers[run.teacher.label]
        teacher = MODELS.get(config.model)(num_classes, **without_weights(config.options)).to(device).eval()
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
    return profile_step(student, teacher, method, tuple(suite.dataset.crop), suite.schedule.batch_size,
                        num_classes, device, steps=steps, runtime=suite.runtime.model_dump())


def profile_suite(plan, device: torch.device, echo=print) -> dict:
    path = plan.store.root / PROFILE
    cache = read_json(path) if path.is_file() else {}
    compute_profile = read_profile(plan.store.root)  # the equal-compute view's step times, measured just before
    for part in plan.parts:
        for run in part.runs:
            key = _pair_key(part, run)
            if f"{key}|{device.type}" in cache:
                continue
            known = compute_profile.get(key)
            if known and known.get("device_type") == device.type:
                cache[f"{key}|{device.type}"] = {"seconds_per_iteration": known["seconds_per_iteration"],
                                                 "device": known["device"], "measured": known["measured"][:10]}
                echo(f"  step time of {key} on {device}: {known['seconds_per_iteration']:.3f} s/iteration "
                     f"(from {COMPUTE_PROFILE})")
                continue
            seconds = profile_run(part.suite, run, device)
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
    timing, iterations = step_time(part, run, measured, cache, device_type), run_iterations(part, run)
    return None if timing is None or iterations is None else timing["seconds_per_iteration"] * iterations


#: A time limit leaves room for evaluation, start-up and a slower node: 1.5x the estimate plus 10 minutes.
TIME_LIMIT_FACTOR, TIME_LIMIT_EXTRA_MIN = 1.5, 10


def suggested_time_min(seconds: float) -> int:
    return math.ceil(TIME_LIMIT_FACTOR * seconds / 60 + TIME_LIMIT_EXTRA_MIN)


#: What a FLOPs-based guess assumes one device sustains over a whole training step, in multiply-adds per second
#: (fvcore counts one multiply-add as one FLOP): about a third of an A100's dense bf16 peak (312 TFLOP/s, i.e. 156 T
#: multiply-adds/s). A stated assumption, not a measurement; ``plan --profile`` replaces it with step times.
ASSUMED_MACS_PER_SECOND = 50e12


class FlopsGuess:
    """Multiply-adds of one training iteration, from fvcore counts of the models (no weights), each counted once.

    An iteration is batch x (3 x the student's forward (forward + backward ~ 3 forwards) + the teacher's forward)
    at the crop; the method's own terms, evaluation and data loading are not counted. The models are fully
    convolutional, so a model is counted once at a small input and scaled by the pixel count.
    """

    def __init__(self) -> None:
        self._macs: dict[tuple, float | None] = {}

    def model_macs(self, name: str, options: dict, num_classes: int, crop: tuple[int, int]) -> float | None:
        from benchmark.cost import count_flops

        options = without_weights(options)  # weights change no count
        # One count per architecture, at 128 x 128, scaled by the pixel count: within 3% of the count at full size
        # for the zoo's models (fixed-size pooling branches differ), and the classifier's width (the dataset's
        # classes) is a rounding error next to the backbone.
        key = (name, json.dumps(options, sort_keys=True, default=str))
        if key not in self._macs:
            try:
                self._macs[key] = count_flops(MODELS.get(name)(num_classes, **options), (128, 128)) / 128**2
            except Exception:  # noqa: BLE001 - a model that cannot be built here leaves its runs unestimated
                self._macs[key] = None
        per_pixel = self._macs[key]
        return None if per_pixel is None else per_pixel * crop[0] * crop[1]

    def iteration_macs(self, suite, run: RunSpec) -> float | None:
        num_classes = DATASETS.get(suite.dataset.name).num_classes
        crop = tuple(suite.dataset.crop)
        student = self.model_macs(run.student, run.student_options, num_classes, crop)
        teacher = 0.0
        if run.teacher:
            config = suite.teachers[run.teacher.label]
            teacher = self.model_macs(config.model, config.options, num_classes, crop)
        if student is None or teacher is None:
            return None
        return suite.schedule.batch_size * (3 * student + teacher)

    def teacher_macs(self, suite, label: str) -> float | None:
        """Multiply-adds of one iteration of training the teacher ``label`` (batch x 3 forwards)."""
        config = suite.teachers[label]
        dataset, schedule = suite.teacher_dataset(label), suite.teacher_schedule(label)
        macs = self.model_macs(config.model, config.options, DATASETS.get(dataset.name).num_classes,
                               tuple(dataset.crop))
        return None if macs is None else schedule.batch_size * 3 * macs


def _teacher_iterations(suite, label: str) -> int | None:
    return schedule_iterations(suite.model_copy(update={"schedule": suite.teacher_schedule(label),
                                                        "dataset": suite.teacher_dataset(label)}))


def _hours(value: float) -> str:
    return f"{value:.3g}" if value >= 0.01 or value == 0 else f"{value:.2g}"


def print_plan(suite_file: SuiteFile, results_root: str = "results", profile: bool = False) -> int:
    plan = make_plan(suite_file, results_root)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if profile and any(suite.compare_at for suite in suite_file.parts):
        measure_profile(suite_file, plan.store.root, device)
        plan = make_plan(suite_file, results_root)  # the equal-compute runs now have their iteration counts
    distinct = {run.key for run in plan.runs}
    print(f"suite {suite_file.name} ({suite_file.path}): {len(plan.parts)} table(s), {len(plan.runs)} runs "
          f"({len(distinct)} distinct: a cell shared by two tables is one run); results in {plan.store.root}")
    profile_path = plan.store.root / PROFILE
    if profile:
        cache = profile_suite(plan, device)
    else:
        cache = read_json(profile_path) if profile_path.is_file() else {}
    measured_in_runs = measured_step_times(plan)
    guess = FlopsGuess()
    rates = _measured_rates(plan, measured_in_runs, cache, device.type, guess)
    rate, rate_source = (sorted(rates)[len(rates) // 2], f"the median rate of {len(rates)} measured pair(s)") if rates \
        else (ASSUMED_MACS_PER_SECOND, f"an assumed {ASSUMED_MACS_PER_SECOND / 1e12:g} T multiply-adds/s per device")
    totals = {"hours": 0.0, "runs": 0, "guess_hours": 0.0, "guess_runs": 0, "unknown": 0, "teacher_hours": 0.0}
    seen_runs, seen_teachers = set(), set()
    effects = _table_effects(plan)
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
                macs, iterations = guess.teacher_macs(suite, label), _teacher_iterations(suite, label)
                if macs is not None and iterations is not None:
                    hours = macs * iterations / rate / 3600
                    state += f" (≈ {_hours(hours)} device-hours, FLOPs-based guess)"
                    if teacher.key not in seen_teachers:
                        totals["teacher_hours"] += hours
                seen_teachers.add(teacher.key)
            print(f"  teacher {label}: {suite.teachers[label].model} [{teacher.key}] {state}")
        extra = {run.key for run in part.compute.extra} if part.compute else set()
        part_hours, part_runs, guess_hours, guess_runs, part_unknown, sources, longest = 0.0, 0, 0.0, 0, 0, set(), 0.0
        for run in part.runs:
            status = plan.run_folder(run).status()
            reason = f" ({status['reason']})" if status.get("reason") else ""
            view = f" [equal compute: {run.config['schedule']['iterations']} iterations]" if run.key in extra else ""
            print(f"  {run.key}  {status['status']:<11} {run.student} / {run.method_label} / seed {run.seed}{view}"
                  f"{reason}")
            if status["status"] == "done":
                continue
            new = run.key not in seen_runs
            seen_runs.add(run.key)
            key = _pair_key(part, run)
            timing = step_time(part, run, measured_in_runs, cache, device.type)
            iterations = run_iterations(part, run)
            if timing is not None and iterations is not None:
                sources.add("finished runs" if key in measured_in_runs else f"plan --profile on {timing['device']}")
                hours = timing["seconds_per_iteration"] * iterations / 3600
                part_hours, part_runs = part_hours + hours, part_runs + 1
                longest = max(longest, timing["seconds_per_iteration"] * iterations)
                totals["hours"] += hours if new else 0.0
                totals["runs"] += new
                continue
            macs = guess.iteration_macs(suite, run) if iterations is not None else None
            if macs is None:
                part_unknown += 1
                totals["unknown"] += new
                continue
            hours = macs * iterations / rate / 3600
            guess_hours, guess_runs = guess_hours + hours, guess_runs + 1
            totals["guess_hours"] += hours if new else 0.0
            totals["guess_runs"] += new
        seeds = len(suite.seeds)
        per_seed = f"{seeds} seed{'s' if seeds != 1 else ''}"
        if part_runs:
            print(f"  estimate: {_hours(part_hours)} device-hours for {part_runs} unfinished run(s) with a measured "
                  f"step time at {per_seed} ({_hours(part_hours / seeds)} per seed; step times from "
                  f"{', '.join(sorted(sources))}; teachers not included)")
            print(f"  suggested job time limit: --set resources.time={suggested_time_min(longest)} (minutes: "
                  f"{TIME_LIMIT_FACTOR}x the longest run's estimate + {TIME_LIMIT_EXTRA_MIN})")
        if guess_runs:
            print(f"  estimate: ≈ {_hours(guess_hours)} device-hours for {guess_runs} unfinished run(s) without a "
                  f"measured step time at {per_seed} (≈ {_hours(guess_hours / seeds)} per seed), FLOPs-based guess "
                  f"(see below); measure: `python -m benchmark plan {suite_file.path} --profile` on the device you "
                  "will train on")
        if part_unknown:
            print(f"  estimate: {part_unknown} run(s) not estimated (no measured step time, and no FLOPs count: "
                  f"a model could not be built or the schedule's length is unknown); measure: "
                  f"`python -m benchmark plan {suite_file.path} --profile` on the device you will train on")
        if seeds == 1:
            print("  single-seed table: no intervals, paired tests or detectable effects in its report")
        if part.compute is not None:
            _print_compute_view(part)
        for line in _seed_lines(part, effects.get(suite.name)):
            print("  " + line)
    print(f"\ntotal: {len(seen_runs)} distinct run(s) to train; {_hours(totals['hours'])} device-hours for "
          f"{totals['runs']} from measured step times"
          + (f"; ≈ {_hours(totals['guess_hours'])} device-hours for {totals['guess_runs']} without one (FLOPs-based "
             "guess)" if totals["guess_runs"] else "")
          + (f"; ≈ {_hours(totals['teacher_hours'])} device-hours to train {len(seen_teachers)} teacher(s) (FLOPs-based "
             "guess)" if totals["teacher_hours"] else "")
          + (f"; {totals['unknown']} run(s) not estimated" if totals["unknown"] else ""))
    if totals["guess_runs"] or totals["teacher_hours"]:
        print(f"FLOPs-based guess: one training iteration = batch x (3 x student + teacher) forward multiply-adds at "
              f"the crop (fvcore, no weights), at {rate_source}"
              + (" (about a third of an A100's dense bf16 peak)" if not rates else "")
              + "; method terms, evaluation and data loading not counted. A guess, not a measurement: "
              f"`python -m benchmark plan {suite_file.path} --profile` on the GPU you will train on measures step "
              "times.")
    return 0


def _measured_rates(plan, measured: dict, cache: dict, device_type: str, guess: FlopsGuess) -> list[float]:
    """Multiply-adds per second of the pairs with a measured step time (a FLOPs guess for the others then uses
    their median, on the measuring device, instead of the assumed rate)."""
    rates, seen = [], set()
    for part in plan.parts:
        for run in part.runs:
            key = _pair_key(part, run)
            timing = step_time(part, run, measured, cache, device_type)
            if timing is None or key in seen:
                continue
            seen.add(key)
            macs = guess.iteration_macs(part.suite, run)
            if macs:
                rates.append(macs / timing["seconds_per_iteration"])
    return rates


def _print_compute_view(part: Part) -> None:
    view = part.compute
    budget = {"device_hours": "device-hours", "wall_clock": "wall-clock"}[view.budget]
    what = (f"the {budget} of the {view.reference} row at {view.reference_iterations} iterations"
            if view.reference else f"{view.hours:g} {budget} per run (stated)")
    print(f"  equal-compute view ({budget}): every row trained for {what}; iterations rounded to multiples of "
          f"{view.round_to}; {len(view.extra)} run(s) of its own")
    for student, rows in view.iterations.items():
        budget_hours = view.budget_hours.get(student)
        print(f"    {student}: " + ", ".join(f"{row} {count}" for row, count in rows.items())
              + (f" iterations (budget {_hours(budget_hours)} h per run)" if budget_hours is not None else ""))
    if view.pending:
        print(f"    {len(view.pending)} row(s) wait for a step time ({', '.join(view.pending)}): measured at the "
              f"start of `run` on its device, or by `plan --profile`, into {COMPUTE_PROFILE}")


def _table_effects(plan) -> dict[str, dict]:
    """Per table that has run: claimed gains over none, and the pooled sd of the paired differences per student."""
    from benchmark.report.tables import collect

    if not (plan.store.root / "runs").is_dir():
        return {}
    report = collect(plan.store.root)
    return {view.info.name: {"effects": {e["student"]: e for e in view.effects}, "claims": view.info.claims}
            for view in report.parts}


def claimed_gains(claims: list[dict]) -> list[tuple[str, str, float, str]]:
    """(student, method, claimed gain over none, how it was read) for every claim that states or implies one:
    ``miou_delta``, or the claimed mIoU minus the claimed ``none`` of the same student."""
    baseline = {c["student"]: c["miou"] for c in claims if c["method"] == "none" and c.get("miou") is not None}
    gains = []
    for claim in claims:
        if claim["method"] == "none":
            continue
        if claim.get("miou_delta") is not None:
            gains.append((claim["student"], claim["method"], claim["miou_delta"], "stated gain"))
        elif claim.get("miou") is not None and claim["student"] in baseline:
            base = baseline[claim["student"]]
            gains.append((claim["student"], claim["method"], claim["miou"] - base,
                          f"{claim['miou']:.2f} − {base:.2f}"))
    return gains


def _seed_lines(part: Part, table: dict | None) -> list[str]:
    """How many seeds resolve each gain the paper claims, from the spread this table's runs showed."""
    if table is None:
        return []
    gains = claimed_gains(table["claims"])
    if not gains:
        return []
    lines = [(f"seeds to resolve the claimed gains over none ({POWER:.0%} power, two-sided α = {ALPHA:g}, paired t; "
             f"sd of the paired differences from this table's runs, pooled over its methods; this table runs "
             f"{len(part.suite.seeds)}):")]
    for student, method, gain, how in gains:
        effect = table["effects"].get(student)
        if effect is None or not math.isfinite(effect["sd"]):
            lines.append(f"  {student} / {method}: claimed {gain:+.2f} ({how}): n/a, no method of this table has two "
                         f"seeds paired with none yet")
            continue
        needed = seeds_to_resolve(gain, effect["sd"])
        text = (f"{needed} seeds" if needed is not None else
                "unresolvable (a zero gain)" if gain == 0 else f"more than {MAX_SEEDS} seeds")
        lines.append(f"  {student} / {method}: claimed {gain:+.2f} ({how}): {text} (sd {effect['sd']:.2f}, "
                     f"{effect['dof']} dof)")
    return lines


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
