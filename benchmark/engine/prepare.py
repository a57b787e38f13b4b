"""The optional stage a method runs before student training (e.g. AttnFD's teacher-side attention)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch

from benchmark.engine.step import teacher_features
from benchmark.models.hooks import FeatureCapture
from methods.base import Batch, PrepareContext


def run_prepare(method, teacher, next_batch: Callable[[], Batch] | Iterator[Batch], num_classes: int,
                device: str | torch.device, log=print) -> None:
    """Give the method a frozen teacher, a way to read its points, and endless training batches."""
    batches = next_batch if isinstance(next_batch, Iterator) else (next_batch() for _ in itertools.count())
    with FeatureCapture(teacher, method.teacher_points) as capture:
        context = PrepareContext(
            teacher=teacher,
            teacher_features=lambda images: teacher_features(teacher, capture, images),
            batches=batches,
            num_classes=num_classes,
            device=torch.device(device),
            log=log,
        )
        method.prepare(context)
