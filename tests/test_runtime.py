"""``runtime`` settings resolved per device (loader workers, fused optimizers), and the synthetic data cache."""

from __future__ import annotations

import pytest
import torch

from benchmark.engine.loader import GPU_WORKERS, worker_count
from benchmark.engine.train import build_method, make_optimizer
from benchmark.registry import MODELS
from benchmark.suite import RuntimeConfig, ScheduleConfig


def test_auto_workers_none_on_a_cpu_and_a_share_of_the_cores_per_gpu(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(32)))
    assert worker_count("auto", "cpu") == 0
    assert worker_count(3, "cpu") == 3 and worker_count(0, "cuda") == 0
    assert worker_count("auto", "cuda") == GPU_WORKERS
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun: 8 processes share the 32 cores
    assert worker_count("auto", "cuda") == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the local pool's share for this slot
    assert worker_count("auto", "cuda") == 1


def test_num_workers_is_a_count_or_auto():
    assert RuntimeConfig().num_workers == "auto" and RuntimeConfig(num_workers=4).num_workers == 4
    with pytest.raises(ValueError, match="workers >= 0"):
        RuntimeConfig(num_workers=-1)
    with pytest.raises(ValueError):
        RuntimeConfig(num_workers="many")


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_optimizers_are_fused_on_cuda_only(kind):
    student = MODELS.get("tiny_student")(7)
    method = build_method([{"name": "none", "hparams": {}}], student, None)
    schedule = ScheduleConfig(iterations=1, batch_size=2, lr=0.1, optimizer=kind)
    assert not make_optimizer(schedule, student, method, torch.device("cpu")).defaults.get("fused")
    assert not make_optimizer(schedule, student, method).defaults.get("fused")
    # Built only (CPU parameters): what matters is that a CUDA device asks for the fused kernels.
    assert make_optimizer(schedule, student, method, torch.device("cuda")).defaults["fused"] is True


def test_synthetic_samples_come_from_the_cache_unchanged_and_the_cache_is_bounded(monkeypatch):
    from benchmark.data import synthetic

    monkeypatch.setattr(synthetic, "_RENDERED", {})
    monkeypatch.setattr(synthetic, "_rendered_bytes", 0)
    dataset = synthetic.SyntheticSegmentation(split_seed=77, length=4, size=24)
    first = dataset[1]
    first[0].zero_()  # a transform working in place must not reach the cache
    again = dataset[1]
    image, label = synthetic.render(78, 24)
    assert torch.equal(again[0].permute(1, 2, 0), torch.from_numpy(image))
    assert torch.equal(again[1], torch.from_numpy(label)) and again[1].dtype == torch.int64
    assert list(synthetic._RENDERED) == [(78, 24)]
    monkeypatch.setattr(synthetic, "_RENDERED_MAX_BYTES", synthetic._rendered_bytes)  # full: render, do not keep
    assert torch.equal(dataset[2][1], torch.from_numpy(synthetic.render(79, 24)[1]))
    assert list(synthetic._RENDERED) == [(78, 24)]
