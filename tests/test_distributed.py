"""torchrun readiness: data sharding by rank, and a real two-process run on CPU (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from benchmark.engine.loader import IterationBatchSampler
from benchmark.store import load_records
from tests.test_runner import MINI

ROOT = Path(__file__).resolve().parent.parent


def test_ranks_split_each_global_batch_without_overlap():
    single = list(IterationBatchSampler(40, batch_size=4, seed=3, total_iterations=7))
    shards = [list(IterationBatchSampler(40, batch_size=2, seed=3, total_iterations=7, rank=r, world_size=2))
              for r in (0, 1)]
    for step, batch in enumerate(single):
        first, second = shards[0][step], shards[1][step]
        assert not {i for i, _ in first} & {i for i, _ in second}
        assert first + second == batch, "the two ranks together see exactly the single-process batch"


def test_resumed_sampler_continues_the_same_sequence():
    full = list(IterationBatchSampler(24, batch_size=4, seed=1, total_iterations=15))
    resumed = list(IterationBatchSampler(24, batch_size=4, seed=1, total_iterations=15, start_iteration=9))
    assert resumed == full[9:]


def test_two_process_torchrun_trains_and_only_rank_zero_writes(tmp_path):
    suite = tmp_path / "mini.yaml"
    suite.write_text(yaml.safe_dump({**MINI, "schedule": {**MINI["schedule"], "batch_size": 2}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    done = subprocess.run([*torchrun, "--nproc_per_node=2", "-m", "benchmark", "run", str(suite),
                           "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("mini: 2 runs, 0 already finished") == 1, "only rank 0 prints progress"
    _, finished, unfinished = load_records(tmp_path / "results" / "mini")
    assert len(finished) == 2 and not unfinished
    assert all(record["timing"]["world_size"] == 2 for record in finished)
    assert (tmp_path / "reports" / "mini" / "index.html").is_file()
