"""Shared helpers for method tests: a tiny student/teacher pair and one harness-identical step."""

from __future__ import annotations

import torch

from benchmark.engine.step import step_losses, student_capture
from benchmark.models.base import freeze
from benchmark.models.hooks import FeatureCapture
from benchmark.registry import METHODS, MODELS
from methods.base import Batch, CompositeMethod

NUM_CLASSES = 6


def tiny_pair(num_classes: int = NUM_CLASSES, seed: int = 0):
    torch.manual_seed(seed)
    student = MODELS.get("tiny_student")(num_classes)
    teacher = freeze(MODELS.get("tiny_teacher")(num_classes))
    return student, teacher


def build_method(name: str, student, teacher, **hparams) -> CompositeMethod:
    """The method wrapped exactly as the harness wraps it."""
    method = METHODS.get(name)(student.feature_points, teacher.feature_points, student.num_classes, **hparams)
    return CompositeMethod({name: method})


def random_batch(batch_size: int = 2, size: int = 32, num_classes: int = NUM_CLASSES, ignore_all: bool = False,
                 iteration: int = 0) -> Batch:
    images = torch.randn(batch_size, 3, size, size)
    labels = torch.randint(0, num_classes, (batch_size, size, size))
    if ignore_all:
        labels.fill_(255)
    return Batch(images=images, labels=labels, iteration=iteration, total_iterations=100, iterations_per_epoch=10)


class Step:
    """Hooks installed once, as in the training loop; call to compute one step's terms."""

    def __init__(self, student, teacher, method):
        self.student, self.teacher, self.method = student, teacher, method
        self.student_capture = student_capture(student, method)
        self.teacher_capture = FeatureCapture(teacher, method.teacher_points)

    def __call__(self, batch: Batch):
        return step_losses(self.student, self.teacher, self.method, self.student_capture, self.teacher_capture, batch)
