"""Seconds per training iteration with and without the TensorBoard writer, and the cost of the prediction PNGs.

Run on a quiet machine (numbers from a shared one mean nothing)::

    python benchmarks/logging_overhead.py                   # synthetic data, tiny models, CPU or the GPU
    python benchmarks/logging_overhead.py --iterations 400 --log-every 10 --repeats 5

Each repeat trains the same run twice in fresh stores, once as the harness does (writer on) and once with the
writer never opened, alternating which goes first; it prints the median ``seconds_per_iteration`` of each
(from the records' timing) and their ratio. The writer only runs at logging points, so the ratio should be 1
within noise. The prediction PNGs are made after the timed loop; their own time is printed separately.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import yaml

from benchmark.engine import predictions
from benchmark.engine.board import RunBoard
from benchmark.runner import run_suite
from benchmark.store import load_records
from benchmark.suite import load_suite


def suite(iterations: int, log_every: int) -> dict:
    return {
        "name": "overhead",
        "dataset": {"name": "synthetic", "crop": [64, 64], "scale_range": [1.0, 1.0],
                    "options": {"image_size": 64, "num_train": 64, "num_val": 8, "num_test": 8}},
        "schedule": {"iterations": iterations, "batch_size": 8, "lr": 0.01, "eval_every": 0,
                     "checkpoint_every": 10**6, "log_every": log_every},
        "students": [{"model": "tiny_student"}],
        "methods": [{"name": "none"}],
        "seeds": [0],
    }


def seconds_per_iteration(path: Path, root: Path, board: bool) -> float:
    patch = contextlib.nullcontext() if board else mock.patch.object(RunBoard, "start", lambda self, iteration: None)
    with patch:
        run_suite(load_suite(path), root / "results", root / "reports", echo=lambda *_: None)
    _, (record,), _ = load_records(root / "results" / "overhead")
    return record["timing"]["seconds_per_iteration"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    timings: dict[bool, list[float]] = {True: [], False: []}
    png_seconds = []
    save = predictions.save_predictions

    def timed_save(*a, **k):
        start = time.perf_counter()
        try:
            return save(*a, **k)
        finally:
            png_seconds.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as folder, mock.patch("benchmark.engine.train.save_predictions", timed_save):
        path = Path(folder) / "overhead.yaml"
        path.write_text(yaml.safe_dump(suite(args.iterations, args.log_every)))
        for repeat in range(args.repeats):
            for board in ((True, False) if repeat % 2 == 0 else (False, True)):
                timings[board].append(seconds_per_iteration(path, Path(folder) / f"{repeat}-{board}", board))
    on, off = statistics.median(timings[True]), statistics.median(timings[False])
    print(f"{args.iterations} iterations, log every {args.log_every}, {args.repeats} repeats (median):")
    print(f"  writer on   {1e3 * on:.3f} ms/iteration")
    print(f"  writer off  {1e3 * off:.3f} ms/iteration")
    print(f"  ratio on/off {on / off:.3f}")
    print(f"  prediction PNGs after training: {statistics.median(png_seconds):.3f} s per run (median)")


if __name__ == "__main__":
    main()
