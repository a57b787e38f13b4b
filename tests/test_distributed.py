"""torchrun readiness: data sharding by rank, and a real two-process run on CPU (gloo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_gloo_processes_make_the_updates_of_one_process_on_the_whole_batch(tmp_path):
    """Batch 4 in one process vs 2 + 2 in two (a BatchNorm-free model, so only the gradient averaging differs):
    after one epoch (5 SGD steps with momentum) the parameters agree, both ranks hold the same ones, and the sharded evaluation
    gives the whole split's scores. Without the all-reduce each rank would follow its own half-batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    worker = str(ROOT / "tests" / "distributed_worker.py")
    single = subprocess.run([sys.executable, worker, str(tmp_path / "one"), "4"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert single.returncode == 0, single.stdout + single.stderr
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={_free_port()}", worker, str(tmp_path / "two"), "2"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert double.returncode == 0, double.stdout + double.stderr
    one = torch.load(tmp_path / "one" / "rank0.pt", weights_only=True)
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert one["world"] == 1 and ranks[0]["world"] == ranks[1]["world"] == 2
    initial = _probe_initial_parameters()
    for name, value in one["parameters"].items():
        assert not torch.allclose(value, initial[name]), f"{name} did not train: the comparison would be empty"
        assert torch.equal(ranks[0]["parameters"][name], ranks[1]["parameters"][name]), f"ranks differ in {name}"
        assert torch.allclose(ranks[0]["parameters"][name], value, rtol=1e-4, atol=1e-6), (
            f"{name}: two processes end {float((ranks[0]['parameters'][name] - value).abs().max()):.2e} away from "
            "one process on the whole batch")
    assert ranks[0]["final"] == ranks[1]["final"]
    assert ranks[0]["final"]["miou"] == pytest.approx(one["final"]["miou"], abs=1e-12)
    assert ranks[0]["final"]["per_class_iou"] == pytest.approx(one["final"]["per_class_iou"], abs=1e-12, nan_ok=True)


def _probe_initial_parameters() -> dict:
    """The worker's model as run_training builds it (seeded with the run's seed before construction)."""
    from tests.distributed_worker import ProbeNet

    torch.manual_seed(0)
    return dict(ProbeNet(7).named_parameters())
