"""Wall time of the README's first command, ``python -m benchmark run suites/smoke.yaml``, as a newcomer meets it.

Run on a quiet machine (nothing else using its cores), from the repository root: ``python benchmarks/smoke_wall.py``.
Each repeat clones the committed tree (``git clone`` of HEAD: no ``__pycache__`` of our code, no ``results/``,
no ``reports/``, as a fresh clone is) and runs the command there, from start to the printed report path; then it
runs the same command once more in the last clone, which must train nothing (``trained 0``) and only re-render
the report. The issue's goal on a 2-core machine: under 150 s for the first run. ``--set KEY=VALUE`` passes
overrides through (a quick check that the script works: ``--set schedule.iterations=5 --set
teachers.teacher.schedule.iterations=5``; its numbers mean nothing). ``--worktree`` runs the working tree as it
is instead of a clone (uncommitted changes included; fresh ``--results``/``--reports`` folders each time).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 150.0


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(cwd)})
    seconds = time.perf_counter() - started
    if done.returncode != 0 or "report: " not in done.stdout:
        sys.exit(f"{' '.join(command)} (in {cwd}) failed with exit code {done.returncode}:\n"
                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def trained(output: str) -> tuple[int, int]:
    """(runs trained, runs failed) from the summary line the run prints."""
    found = re.findall(r"trained (\d+), failed (\d+)", output)
    if not found:
        sys.exit(f"no 'trained N, failed M' line in the output:\n{output[-3000:]}")
    return int(found[-1][0]), int(found[-1][1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", nargs="?", default="suites/smoke.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worktree", action="store_true", help="run the working tree instead of a clone of HEAD")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    extra = [item for override in args.overrides for item in ("--set", override)]
    scratch = Path(tempfile.mkdtemp(prefix="smoke-wall-"))
    try:
        walls, rerun = [], None
        for repeat in range(args.repeats):
            folder = scratch / f"run{repeat}"
            if args.worktree:
                cwd, outputs = ROOT, ["--results", str(folder / "results"), "--reports", str(folder / "reports")]
            else:
                subprocess.run(["git", "clone", "--quiet", str(ROOT), str(folder)], check=True)
                cwd, outputs = folder, []
            command = [sys.executable, "-m", "benchmark", "run", args.suite, *outputs, *extra]
            seconds, output = timed(command, cwd)
            count, failed = trained(output)
            walls.append(seconds)
            print(f"fresh run {repeat + 1}: {seconds:.1f} s (trained {count}, failed {failed})", flush=True)
            if failed:
                sys.exit(f"{failed} run(s) failed:\n{output[-3000:]}")
            if repeat == args.repeats - 1:
                rerun = timed(command, cwd)
        seconds, output = rerun
        count, _ = trained(output)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"rerun on the same folders: {seconds:.1f} s, trained {count} (must be 0)")
        median = statistics.median(walls)
        print(f"\n{args.suite} on {cores} core(s): fresh runs {', '.join(f'{w:.1f}' for w in walls)} s, median "
              f"{median:.1f} s (goal < {GOAL_S:.0f} s: {'met' if median < GOAL_S else 'NOT met'}); rerun "
              f"{seconds:.1f} s, trained {count}")
        if count:
            sys.exit("the rerun trained runs again")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
