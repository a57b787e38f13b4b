"""The contract every registered method must honour, checked for all of them (after timm's registry tests).

A new method file gets these tests for free: finite named terms, gradients of the distillation terms (each
alone, cross-entropy off) reaching the student, and of all of them the method's own modules, but never the teacher, a frozen teacher in eval mode, batch size 1, ignore-only
labels, and a few optimisation steps that lower the loss.
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.registry import METHODS
from methods.base import DistillationMethod
from tests.method_utils import Step, build_method, random_batch, tiny_pair

ALL_METHODS = METHODS.names()


def prepared(name: str, student, teacher):
    method = build_method(name, student, teacher)
    if method.needs_prepare():
        from benchmark.engine.prepare import run_prepare

        run_prepare(method, teacher, lambda: random_batch(), num_classes=student.num_classes, device="cpu")
    return method


@pytest.mark.parametrize("name", ALL_METHODS)
def test_method_declares_paper_and_hyperparameters(name):
    cls = METHODS.get(name)
    assert issubclass(cls, DistillationMethod)
    assert cls.paper, f"{name} must cite its paper"
    assert cls.__doc__ and len(cls.__doc__) > 80, f"{name} needs a docstring naming paper, equations and choices"
    for key, default in cls.hyperparameters().items():
        assert default is not None, f"{name}.{key} has no default: every hyperparameter needs the paper's"


@pytest.mark.parametrize("name", ALL_METHODS)
def test_gradients_reach_student_and_method_never_teacher(name):
    """The distillation terms alone (cross-entropy left out: it always reaches the student) train the student and
    the method's modules; nothing reaches the teacher or moves its statistics."""
    student, teacher = tiny_pair()
    method = prepared(name, student, teacher)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    step = Step(student, teacher, method)
    terms, _, teacher_feats = step(random_batch())
    assert "ce" in terms
    for term, value in terms.items():
        assert value.dim() == 0 and torch.isfinite(value), f"{name}: term {term} = {value}"
    for tensor in teacher_feats.values():
        assert not tensor.requires_grad
    distill_terms = {k: v for k, v in terms.items() if k not in ("ce", "aux_ce")}
    if name == "none":
        assert not distill_terms
        return
    assert distill_terms, f"{name} returned no loss term with default hyperparameters"
    sum(distill_terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters()), "a gradient reached the teacher"
    assert not teacher.training
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), f"teacher {key} changed (running stats?)"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), (
        f"{name}: the distillation terms send no gradient into the student")
    trainable = [p for p in method.student_optimizer_parameters()]
    if trainable and any(v.item() != 0 for v in distill_terms.values()):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable), (
            f"{name}: none of the method's trainable parameters received a gradient")


@pytest.mark.parametrize("name", [n for n in ALL_METHODS if n != "none"])
def test_each_distillation_term_alone_sends_gradient_into_the_student(name):
    """CE switched off, each term on its own: a method whose student feature is detached would train only its own
    connectors and pass the summed check above through its other terms. Terms the paper uses to train only the
    method's modules are listed, with the reason, in ``terms_without_student_gradient`` and must send none."""
    student, teacher = tiny_pair()
    method = prepared(name, student, teacher)
    exempt = METHODS.get(name).terms_without_student_gradient
    # late in a long run, so delayed terms (LFD's KL from iteration 1000) are on
    batch = random_batch(iteration=2000)
    batch.total_iterations, batch.iterations_per_epoch = 4000, 10
    terms, _, _ = Step(student, teacher, method)(batch)
    distill = {k.split(".", 1)[1]: v for k, v in terms.items() if k not in ("ce", "aux_ce")}
    assert distill and set(exempt) <= set(distill), f"{name}: exempt {sorted(exempt)}, terms {sorted(distill)}"
    parameters = list(student.parameters())
    for term, value in distill.items():
        grads = torch.autograd.grad(value, parameters, allow_unused=True, retain_graph=True) if value.requires_grad \
            else [None] * len(parameters)
        reaches = any(g is not None and g.abs().sum() > 0 for g in grads)
        if term in exempt:
            assert exempt[term].strip() and not reaches, f"{name}.{term} is listed as not training the student"
        else:
            assert reaches, f"{name}: term {term!r} alone sends no gradient into the student's parameters"


@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.parametrize("batch_size,ignore_all", [(1, False), (2, True)])
def test_finite_on_edge_cases(name, batch_size, ignore_all):
    student, teacher = tiny_pair()
    method = prepared(name, student, teacher)
    if batch_size == 1:
        student.eval()  # the ASPP image-pooling BatchNorm cannot train on one 1x1 sample; the method can
    terms, _, _ = Step(student, teacher, method)(random_batch(batch_size, ignore_all=ignore_all))
    distill = sum(v for k, v in terms.items() if k not in ("ce", "aux_ce"))
    assert math.isfinite(float(distill.detach() if torch.is_tensor(distill) else distill)), f"{name}: distillation loss {distill} not finite"
    if not isinstance(distill, int):
        distill.backward()
        for p in student.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", ALL_METHODS)
def test_a_tiny_run_trains(name):
    """Twenty steps on one fixed batch lower the total loss: the terms are optimisable, not just finite."""
    student, teacher = tiny_pair()
    method = prepared(name, student, teacher)
    step = Step(student, teacher, method)
    params = list(student.parameters()) + list(method.student_optimizer_parameters())
    optimizer = torch.optim.Adam(params, lr=3e-3)
    batch = random_batch(4)
    losses = []
    for iteration in range(20):
        batch.iteration = iteration
        terms, student_feats, teacher_feats = step(batch)
        total = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        method.separate_step({k: v.detach() for k, v in student_feats.items()}, teacher_feats, batch)
        losses.append(total.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], f"{name}: loss went {losses[0]:.4f} -> {losses[-1]:.4f}"
