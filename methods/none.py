"""The student alone: no distillation, no teacher."""

from __future__ import annotations

import torch

from benchmark.registry import METHODS
from methods.base import Batch, DistillationMethod


@METHODS.register("none")
class NoDistillation(DistillationMethod):
    """No distillation: the student trained with cross-entropy only (the baseline every gain is measured
    against). The harness builds no teacher for a run whose only method is this one."""

    paper = "-"

    def forward(self, student: dict, teacher: dict, batch: Batch) -> dict[str, torch.Tensor]:
        return {}
