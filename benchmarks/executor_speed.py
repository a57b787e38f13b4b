"""Wall time of ``run SUITE`` inline against ``--executor local --workers N``, each on a fresh results folder.

Run on a quiet machine (nothing else using its cores), from the repository root:
``python benchmarks/executor_speed.py`` (default: ``suites/smoke.yaml``, 2 workers; the issue's goal on a
2-core machine is a ratio under 0.8). Extra ``--set KEY=VALUE`` overrides pass through to both runs (a quick
check that the script works: ``--set schedule.iterations=5 --set teachers.teacher.schedule.iterations=5``;
its numbers mean nothing). Each variant runs ``--repeats`` times, alternating, and the median is compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed_run(suite: str, extra: list[str], overrides: list[str]) -> float:
    with tempfile.TemporaryDirectory(prefix="executor-speed-") as folder:
        command = [sys.executable, "-m", "benchmark", "run", suite, "--results", f"{folder}/results", "--reports",
                   f"{folder}/reports", *extra]
        for override in overrides:
            command += ["--set", override]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
    if done.returncode != 0 or "failed 0" not in done.stdout:
        sys.exit(f"{' '.join(command)} did not finish every run:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", nargs="?", default="suites/smoke.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    variants = {"inline": [], f"local --workers {args.workers}": ["--executor", "local", "--workers",
                                                                   str(args.workers)]}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, extra in variants.items():
            times[name].append(timed_run(args.suite, extra, args.overrides))
            print(f"repeat {repeat + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
    inline, local = (statistics.median(t) for t in times.values())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\n{args.suite} on {cores} core(s): inline {inline:.1f} s, local --workers {args.workers} {local:.1f} s "
          f"(median of {args.repeats}); ratio {local / inline:.2f} (goal < 0.8)")


if __name__ == "__main__":
    main()
