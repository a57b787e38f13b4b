"""``plan``: what a suite would do, without training: runs and their state, teachers, dataset problems."""

from __future__ import annotations

from collections import Counter

from benchmark.runner import make_plan
from benchmark.suite import SuiteFile


def print_plan(suite_file: SuiteFile, results_root: str = "results") -> int:
    plan = make_plan(suite_file, results_root)
    print(f"suite {suite_file.name} ({suite_file.path}): {len(plan.parts)} table(s), {len(plan.runs)} runs; "
          f"results in {plan.store.root}")
    for part in plan.parts:
        suite = part.suite
        states = Counter(plan.run_folder(run).status()["status"] for run in part.runs)
        print(f"\n== {suite.title} [{suite.name}] ==")
        print(f"  dataset: {suite.dataset.name} (root: {suite.dataset.root or '-'}), "
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
        for run in part.runs:
            status = plan.run_folder(run).status()
            reason = f" ({status['reason']})" if status.get("reason") else ""
            print(f"  {run.key}  {status['status']:<11} {run.student} / {run.method_label} / seed {run.seed}{reason}")
    return 0
