"""Data loading whose order and augmentation are a pure function of (seed, iteration).

The sampler derives each epoch's permutation from (seed, epoch) and gives every sample its own
augmentation seed, so a run resumed at iteration k sees exactly the batches an uninterrupted run sees
from k on, whatever the number of workers. Under ``torchrun`` each rank takes its slice of the global
batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class SeededTransformDataset(Dataset):
    """Applies a random transform to a raw dataset under a per-sample seed given by the sampler."""

    def __init__(self, dataset: Dataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int] | int):
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, mask = self.dataset[index]
        if seed is None:
            return self.transform(image, mask)
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (the transforms run on the CPU): torch.manual_seed would also queue a lazy seed
            # of every accelerator backend, recording a stack trace per sample (a few % of a small model's step).
            torch.default_generator.manual_seed(seed)
            return self.transform(image, mask)


class IterationBatchSampler(Sampler):
    """Batches of (index, augmentation seed) for iterations ``start .. total - 1``; drops the last partial
    batch of each epoch (as the papers' loaders do) so every step has the full batch size."""

    def __init__(self, length: int, batch_size: int, seed: int, total_iterations: int, start_iteration: int = 0,
                 rank: int = 0, world_size: int = 1):
        if length < batch_size * world_size:
            raise ValueError(f"the training split has {length} images, fewer than one global batch "
                             f"({batch_size} x {world_size} processes)")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.total, self.start = total_iterations, start_iteration
        self.rank, self.world_size = rank, world_size
        self.per_epoch = length // (batch_size * world_size)

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        global_batch = self.batch_size * self.world_size
        iteration = self.start
        while iteration < self.total:
            epoch, position = divmod(iteration, self.per_epoch)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.length, generator=generator)
            aug_seeds = torch.randint(0, 2**62, (self.length,), generator=generator)
            for step in range(position, self.per_epoch):
                if iteration >= self.total:
                    return
                chunk = slice(step * global_batch + self.rank * self.batch_size,
                              step * global_batch + (self.rank + 1) * self.batch_size)
                yield [(int(i), int(aug_seeds[i])) for i in order[chunk]]
                iteration += 1


#: Decoding workers per GPU process by default: Cityscapes-sized images need at least 4 to keep a GPU fed, 8 leave
#: room (``python -m benchmark perf --num-workers 0 2 4 8`` measures it for a setting on a machine).
GPU_WORKERS = 8


def worker_count(setting: int | str, device_type: str) -> int:
    """``runtime.num_workers``: a number as given; ``auto``: none on a CPU (its cores are busy computing the step),
    on a GPU ``GPU_WORKERS`` or one less than this
    process's share of the cores (``OMP_NUM_THREADS`` where a launcher set it, else the cores this process may
    use over the processes of its node), whichever is fewer, and at least 1."""
    if setting != "auto":
        return int(setting)
    if device_type != "cuda":
        return 0
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        share = int(threads)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        share = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(GPU_WORKERS, share - 1))


def iterations_per_epoch(length: int, batch_size: int, world_size: int = 1) -> int:
    return max(length // (batch_size * world_size), 1)


def train_loader(dataset: Dataset, transform: Callable, batch_size: int, seed: int, total_iterations: int,
                 start_iteration: int, num_workers: int, pin_memory: bool, rank: int = 0,
                 world_size: int = 1) -> DataLoader:
    sampler = IterationBatchSampler(len(dataset), batch_size, seed, total_iterations, start_iteration, rank,
                                    world_size)
    return DataLoader(SeededTransformDataset(dataset, transform), batch_sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      prefetch_factor=4 if num_workers > 0 else None)


def eval_loader(dataset: Dataset, transform: Callable, batch_size: int, num_workers: int, pin_memory: bool,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """Every image once; under torchrun each rank evaluates a strided share and the confusion matrices
    are summed, so the score is the whole split's."""
    indices = list(range(rank, len(dataset), world_size))
    subset = torch.utils.data.Subset(SeededTransformDataset(dataset, transform), indices)
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0)
