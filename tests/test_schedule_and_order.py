"""The lr multiplier against its closed forms, and the data order: a fresh permutation every epoch, a function of
the seed alone. Expected values are written out here from the formulas, never read from the code under test."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.engine.loader import IterationBatchSampler, train_loader
from benchmark.engine.train import lr_lambda
from benchmark.suite import ScheduleConfig

TOTAL = 200


def schedule(**fields) -> ScheduleConfig:
    return ScheduleConfig(**{"iterations": TOTAL, "batch_size": 2, "lr": 0.1, **fields})


def poly(iteration: int, power: float, floor: float = 0.0) -> float:
    """mmseg / CIRKD poly: (lr - min_lr) * (1 - i / T) ** power + min_lr, as a multiplier of lr."""
    return floor + (1 - floor) * (1 - iteration / TOTAL) ** power


def cosine(iteration: int, floor: float = 0.0) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * iteration / TOTAL))


CHOSEN = [0, 1, 37, 100, 150, 199, 200]


@pytest.mark.parametrize("power", [0.9, 2.0])
@pytest.mark.parametrize("iteration", CHOSEN)
def test_poly_multiplier_is_the_closed_form(power, iteration):
    factor = lr_lambda(schedule(lr_schedule="poly", poly_power=power), TOTAL)
    assert factor(iteration) == pytest.approx(poly(iteration, power), rel=1e-12, abs=1e-15)


def test_poly_power_changes_the_multiplier():
    """Half-way through, power 2 gives 0.25, power 0.9 gives 0.5 ** 0.9 = 0.5359: the power is used."""
    assert lr_lambda(schedule(poly_power=2.0), TOTAL)(100) == pytest.approx(0.25, rel=1e-12)
    assert lr_lambda(schedule(poly_power=0.9), TOTAL)(100) == pytest.approx(0.5358867312681466, rel=1e-12)


@pytest.mark.parametrize("iteration", CHOSEN)
def test_cosine_multiplier_is_the_closed_form(iteration):
    factor = lr_lambda(schedule(lr_schedule="cosine"), TOTAL)
    assert factor(iteration) == pytest.approx(cosine(iteration), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("kind,closed", [("poly", lambda i: poly(i, 0.9, 0.1)), ("cosine", lambda i: cosine(i, 0.1))])
def test_min_lr_is_the_floor(kind, closed):
    factor = lr_lambda(schedule(lr_schedule=kind, min_lr=0.01), TOTAL)  # floor = 0.01 / 0.1
    for iteration in CHOSEN:
        assert factor(iteration) == pytest.approx(closed(iteration), rel=1e-12)
    assert factor(TOTAL) == pytest.approx(0.1, rel=1e-12)


def test_constant_is_one_throughout():
    factor = lr_lambda(schedule(lr_schedule="constant"), TOTAL)
    assert [factor(i) for i in CHOSEN] == [1.0] * len(CHOSEN)


@pytest.mark.parametrize("kind", ["poly", "cosine", "constant"])
def test_linear_warm_up_then_the_schedule(kind):
    """Iteration i < W runs at (i + 1) / W of the lr; from W on, the schedule's own value at i."""
    warm = 10
    factor = lr_lambda(schedule(lr_schedule=kind, warmup_iterations=warm), TOTAL)
    for iteration in range(warm):
        assert factor(iteration) == pytest.approx((iteration + 1) / warm, rel=1e-12)
    after = {"poly": poly(warm, 0.9), "cosine": cosine(warm), "constant": 1.0}[kind]
    assert factor(warm) == pytest.approx(after, rel=1e-12)
    assert factor(150) == pytest.approx({"poly": poly(150, 0.9), "cosine": cosine(150), "constant": 1.0}[kind])


# --- data order ----------------------------------------------------------------------------------------------------

LENGTH, BATCH = 30, 4
PER_EPOCH = LENGTH // BATCH  # 7: the last partial batch of each epoch is dropped


def epochs(seed: int, count: int = 3, **kwargs) -> list[list[tuple[int, int]]]:
    """The sampler's (index, augmentation seed) pairs, one flat list per epoch."""
    batches = list(IterationBatchSampler(LENGTH, BATCH, seed, PER_EPOCH * count, **kwargs))
    assert len(batches) == PER_EPOCH * count and all(len(b) == BATCH for b in batches)
    return [[pair for batch in batches[e * PER_EPOCH:(e + 1) * PER_EPOCH] for pair in batch] for e in range(count)]


def test_each_epoch_is_a_permutation_without_repeats():
    for epoch in epochs(seed=3):
        indices = [index for index, _ in epoch]
        assert len(set(indices)) == len(indices) == PER_EPOCH * BATCH
        assert set(indices) <= set(range(LENGTH))


def test_a_fresh_permutation_and_fresh_augmentation_every_epoch():
    first, second, third = epochs(seed=3)
    orders = [[i for i, _ in epoch] for epoch in (first, second, third)]
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]
    # the same image is augmented differently in another epoch
    seeds = [dict(epoch) for epoch in (first, second)]
    shared = set(seeds[0]) & set(seeds[1])
    assert shared and all(seeds[0][i] != seeds[1][i] for i in shared)


def test_same_seed_same_order_other_seed_other_order():
    assert epochs(seed=5) == epochs(seed=5)
    assert [i for i, _ in epochs(seed=5)[0]] != [i for i, _ in epochs(seed=6)[0]]


def test_order_does_not_depend_on_where_the_run_starts():
    full = list(IterationBatchSampler(LENGTH, BATCH, 2, PER_EPOCH * 3))
    for start in (1, PER_EPOCH, PER_EPOCH + 3):
        assert list(IterationBatchSampler(LENGTH, BATCH, 2, PER_EPOCH * 3, start_iteration=start)) == full[start:]


def test_a_split_smaller_than_one_global_batch_is_refused():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        IterationBatchSampler(7, 4, 0, 10, world_size=2)


def test_the_sampler_says_how_many_batches_it_yields():
    for start in (0, 3, PER_EPOCH * 2 - 1):
        sampler = IterationBatchSampler(LENGTH, BATCH, 1, PER_EPOCH * 2, start_iteration=start)
        assert len(sampler) == len(list(sampler)) == PER_EPOCH * 2 - start


class Indices(torch.utils.data.Dataset):
    """A dataset whose sample is its own index, so a loader's batches show which images it drew."""

    def __len__(self) -> int:
        return LENGTH

    def __getitem__(self, index: int):
        return torch.tensor(index), torch.tensor(0)


def draw_augmentation(image, mask):
    """A transform whose only work is one random draw: what the sampler's per-sample seed decides."""
    return image, torch.randint(0, 10**6, ())


def test_the_train_loader_gives_each_rank_its_share_of_the_global_batch():
    """Batch 4 in one process vs 2 per rank in two: rank 0's and rank 1's batches together are the single process's
    batches, image for image and random draw for random draw (each sample's seed comes from the sampler)."""

    def batches(batch_size: int, **ranks) -> list[list[tuple[int, int]]]:
        loader = train_loader(Indices(), draw_augmentation, batch_size, 4, 6, 1, 0, False, **ranks)
        return [list(zip(images.tolist(), draws.tolist())) for images, draws in loader]

    single = batches(BATCH)
    assert single == batches(BATCH, rank=0, world_size=1)
    assert [[i for i, _ in b] for b in single] == [[i for i, _ in b] for b in
                                                   list(IterationBatchSampler(LENGTH, BATCH, 4, 6))[1:]]
    first, second = batches(BATCH // 2, rank=0, world_size=2), batches(BATCH // 2, rank=1, world_size=2)
    assert len(first) == len(second) == len(single) == 5
    assert [a + b for a, b in zip(first, second)] == single
