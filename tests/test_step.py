"""The per-step mechanics every run relies on: hooks capture the declared features, the teacher's forward
builds no graph, and the auxiliary cross-entropy is trained where a model has an auxiliary head."""

from __future__ import annotations

import torch

from benchmark.engine.step import step_losses, student_capture, teacher_features
from benchmark.models.base import freeze
from benchmark.models.hooks import FeatureCapture
from benchmark.registry import MODELS
from methods.base import Batch, CompositeMethod
from methods.none import NoDistillation
from tests.method_utils import random_batch, tiny_pair


def test_pre_relu_hook_is_the_input_of_the_relu_that_gives_the_point():
    student, _ = tiny_pair()
    points = ["encoder", "encoder:pre_relu", "backbone.4", "backbone.4:pre_relu"]
    with FeatureCapture(student, points) as capture:
        student(torch.randn(2, 3, 32, 32))
        features = capture.pop()
    assert set(features) == set(points), "exactly the requested points are captured"
    for name in ("encoder", "backbone.4"):
        pre = features[f"{name}:pre_relu"]
        assert (pre < 0).any(), "a pre-ReLU feature has negative values"
        assert torch.equal(torch.relu(pre), features[name])
    assert capture.pop() == {}, "features are handed out once, never reused by the next step"


def test_teacher_features_build_no_graph_and_are_usable_in_the_student_loss():
    student, teacher = tiny_pair()
    images = torch.randn(2, 3, 32, 32)
    with FeatureCapture(teacher, ["decoder", "logits"]) as capture:
        features = teacher_features(teacher, capture, images)
    assert all(not t.requires_grad and t.grad_fn is None and not t.is_inference() for t in features.values())
    with FeatureCapture(student, ["logits"]) as capture:
        logits = student(images)
    loss = ((logits - features["logits"]) ** 2).mean()  # would fail on an inference tensor saved for backward
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_auxiliary_head_is_trained_with_its_weight():
    torch.manual_seed(0)
    student = MODELS.get("deeplabv3_r18")(6)
    teacher = freeze(MODELS.get("tiny_teacher")(6))
    assert student.aux_weight == 0.4
    method = CompositeMethod({"none": NoDistillation(student.feature_points, teacher.feature_points, 6)})
    batch: Batch = random_batch(2, size=32)
    with student_capture(student, method) as hooks:
        terms, _, _ = step_losses(student, None, method, hooks, None, batch)
    assert set(terms) == {"ce", "aux_ce"} and terms["aux_ce"] > 0
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in student.aux_head.parameters())
    student.eval()
    with student_capture(student, method) as hooks:
        terms, _, _ = step_losses(student, None, method, hooks, None, batch)
    assert set(terms) == {"ce"}, "the auxiliary head does not run at evaluation"
