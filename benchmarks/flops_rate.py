"""How many multiply-adds per second a device sustains on the paper suites' training steps: the number behind
``plan``'s FLOPs-based guess (``benchmark.plan.ASSUMED_MACS_PER_SECOND``) where no step time is measured.

Run on the GPU the suites train on, with nothing else on it (numbers from a shared machine mean nothing)::

    python benchmarks/flops_rate.py                                   # every distinct pair of paper_tables.yaml
    python benchmarks/flops_rate.py suites/cirkd_readme_cityscapes.yaml --steps 20 --limit 4

For each distinct (student, teacher, method) pair it measures seconds per training step at the suite's crop and
batch (``benchmark.plan.profile_run``: random data, models without weights) and divides the multiply-adds the guess
assumes for that step (``benchmark.plan.FlopsGuess``) by it. It prints each pair's rate and the median, next to the
assumed rate: if they differ by more than a factor ~1.5, update ``ASSUMED_MACS_PER_SECOND`` (and say on which
device it was measured).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from benchmark.plan import ASSUMED_MACS_PER_SECOND, FlopsGuess, profile_run
from benchmark.runner import make_plan
from benchmark.suite import load_suite

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", nargs="?", type=Path, default=ROOT / "suites" / "paper_tables.yaml")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per pair (after one warm-up step)")
    parser.add_argument("--limit", type=int, default=None, help="measure at most this many pairs")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plan = make_plan(load_suite(args.suite), "/nonexistent-results")  # nothing is read or written there
    guess, seen, rates = FlopsGuess(), set(), []
    for part in plan.parts:
        for run in part.runs:
            key = (run.student, run.teacher.label if run.teacher else None, run.method_label,
                   tuple(part.suite.dataset.crop), part.suite.schedule.batch_size)
            if key in seen or (args.limit is not None and len(seen) >= args.limit):
                continue
            seen.add(key)
            macs = guess.iteration_macs(part.suite, run)
            if macs is None:
                continue
            seconds = profile_run(part.suite, run, device, steps=args.steps)
            rates.append(macs / seconds)
            print(f"{part.suite.name}: {run.student} / {run.method_label} at {list(part.suite.dataset.crop)} x "
                  f"{part.suite.schedule.batch_size}: {seconds:.4f} s/step, {macs / 1e12:.2f} T multiply-adds, "
                  f"{macs / seconds / 1e12:.1f} T/s")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if rates:
        print(f"\nmedian over {len(rates)} pair(s) on {device} "
              f"({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}): "
              f"{statistics.median(rates) / 1e12:.1f} T multiply-adds/s; plan assumes "
              f"{ASSUMED_MACS_PER_SECOND / 1e12:g}")


if __name__ == "__main__":
    main()
