"""Every registered method's every numeric (and boolean) hyperparameter reaches what the harness reads from it.

For each hyperparameter, a few values other than the default are tried (x2, /2, +1, 0, 1, the other boolean); at
least one that the method accepts must change what one harness step sees on fixed inputs: the loss terms at an
early and a late iteration, their gradients, the task-loss scaling, the frozen-student flag, the method's lr
multiplier, and the terms after
the method's own optimizer step. A hyperparameter that cannot do that on fixed inputs is listed, with the reason, in
the method's ``hyperparameters_without_effect``; a new method gets this test for free.
"""

from __future__ import annotations

import copy
import functools
import numbers

import pytest
import torch

from benchmark.engine.prepare import run_prepare
from benchmark.registry import METHODS
from methods.base import Batch
from tests.method_utils import NUM_CLASSES, Step, build_method, tiny_pair

ITERATIONS = (0, 2000)  # before and after delayed terms switch on (LFD's KL at 1000), and inside a first epoch
TOTAL, PER_EPOCH = 4000, 10


def fixed_batch(iteration: int, seed: int) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (2, 32, 32), generator=generator)
    labels[:, :4] = 255  # some ignored pixels
    return Batch(images, labels, iteration=iteration, total_iterations=TOTAL, iterations_per_epoch=PER_EPOCH)


@functools.lru_cache(maxsize=1)
def pristine_pair():
    return tiny_pair()


def observe(name: str, **hparams) -> torch.Tensor:
    """Everything the harness reads from the method in two steps on fixed inputs, as one vector."""
    student, teacher = copy.deepcopy(pristine_pair())
    torch.manual_seed(1)
    method = build_method(name, student, teacher, **hparams)
    if method.needs_prepare():
        run_prepare(method, teacher, iter(fixed_batch(0, 100 + i) for i in range(10**6)), NUM_CLASSES, "cpu",
                    log=lambda message: None)
    step = Step(student, teacher, method)
    seen: list[torch.Tensor] = []
    for index, iteration in enumerate(ITERATIONS):
        batch = fixed_batch(iteration, seed=index)
        torch.manual_seed(2 + index)  # methods that sample (MGD's masks, CIRKD's memory) sample alike
        terms, student_feats, teacher_feats = step(batch)
        task = sum(v for k, v in terms.items() if k in ("ce", "aux_ce"))
        scaled = method.scale_task_loss(task, batch)
        frozen = method.student_frozen(batch)
        lr_multiplier = method.lr_multiplier(batch.epoch) if hasattr(method, "lr_multiplier") else None
        distill = sum((v for k, v in terms.items() if k not in ("ce", "aux_ce")), torch.zeros(()))
        parameters = [p for p in list(student.parameters()) + list(method.student_optimizer_parameters())]
        grads = torch.autograd.grad(distill + scaled, parameters, allow_unused=True)
        seen += [torch.stack([v.detach().float() for _, v in sorted(terms.items())]), scaled.detach().reshape(1),
                 torch.tensor([float(frozen), -1.0 if lr_multiplier is None else float(lr_multiplier)])]
        seen += [torch.zeros(1) if g is None else g.detach().float().reshape(-1)[:64] * 1.0 for g in grads]
        seen += [g.detach().float().pow(2).sum().reshape(1) for g in grads if g is not None]
        logs = method.separate_step({k: v.detach() for k, v in student_feats.items()}, teacher_feats, batch)
        seen += [torch.tensor([float(v) for _, v in sorted(logs.items())])]
    return torch.cat([s.reshape(-1) for s in seen])


@functools.cache
def observe_defaults(name: str) -> torch.Tensor:
    return observe(name)


def alternatives(default):
    if isinstance(default, bool):
        return [not default]
    if isinstance(default, numbers.Integral):
        return [v for v in dict.fromkeys([default + 1, default * 2, max(default - 1, 0), 1, 0]) if v != default]
    if isinstance(default, numbers.Real):
        return [v for v in dict.fromkeys([default * 2, default / 2, default + 1.0, 0.0, 1.0]) if v != default]
    if isinstance(default, (tuple, list)) and default and all(isinstance(v, numbers.Real) for v in default):
        twice = type(default)(v * 2 for v in default)
        first = type(default)([default[0] * 2, *default[1:]])
        return [twice, first, type(default)(v + 1 for v in default)]
    return []


CASES = [(name, key) for name, cls in METHODS.items() for key, default in cls.hyperparameters().items()
         if alternatives(default)]


def test_the_registry_has_numeric_hyperparameters_to_check():
    assert len(CASES) > 60, CASES


@pytest.mark.parametrize("name,key", CASES, ids=[f"{n}.{k}" for n, k in CASES])
def test_every_numeric_hyperparameter_reaches_the_loss(name, key):
    cls = METHODS.get(name)
    exempt = getattr(cls, "hyperparameters_without_effect", {})
    default = cls.hyperparameters()[key]
    reference = observe_defaults(name)
    accepted, changed = [], []
    for value in alternatives(default):
        try:
            seen = observe(name, **{key: value})
        except (ValueError, KeyError, TypeError, RuntimeError):
            continue  # a value this method refuses (e.g. 0 where it must be positive): try the next one
        accepted.append(value)
        if seen.shape != reference.shape or not torch.allclose(seen, reference, rtol=1e-6, atol=1e-9):
            changed.append(value)
            break
        if key in exempt:
            break  # one accepted value that changes nothing confirms the listed reason; the rest would cost minutes
    if key in exempt:
        assert exempt[key].strip(), f"{name}.{key}: give the reason it cannot change the terms"
        assert not changed, f"{name}.{key} is listed as without effect, but {key}={changed[0]} changes the terms"
        return
    if isinstance(default, bool) and not accepted:
        return  # a switch that cannot be flipped alone (it needs another switch): the method's own tests cover it
    assert accepted, f"{name}.{key}: none of {alternatives(default)} is accepted; the test needs another value"
    assert changed, (f"{name}.{key}: {accepted} instead of {default!r} change nothing the harness sees on fixed "
                     f"inputs; wire it into the loss, or list it in {cls.__name__}.hyperparameters_without_effect "
                     "with the reason")
