"""TensorBoard scalars of one run (``torch.utils.tensorboard``, as mmengine, detectron2 and torchdistill log).

Events go to ``<run folder>/tb/<part>/<student>/<method>/seed<N>/`` (teachers: ``tb/teacher/<label>/<model>/
seed<N>``): next to ``train.log``, and ``tensorboard --logdir results/<suite>`` names each run by that readable
path after its hashed run folder. The loop calls this only where its values are already on the host (the
logging and evaluation steps), and only rank 0 writes. A resumed run appends to the same folder; its first
step after the checkpoint purges whatever an interrupted attempt wrote past that checkpoint.

Tags: ``loss/<term>`` and ``loss/total`` (means over the logging window), ``lr/<parameter group>`` (the lr the
next step uses, as ``train.log`` prints it),
``miou/<selection split>`` at each evaluation, and at the last iteration ``final/<split>/{miou,pixel_accuracy}``,
``final/<split>/iou/<class>`` and ``best/<split>/...`` for the checkpoint selected on the selection split.
Scores are in percent, as in the report.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import torch

BOARD = "tb"


def folder_name(*parts: Any) -> str:
    """A readable relative path from names (part, student, method label, seed): one folder per name."""
    return "/".join(re.sub(r"[^A-Za-z0-9._+=-]+", "_", str(part)).strip("_.")[:80] or "_" for part in parts)


class RunBoard:
    """One run's TensorBoard writer; every method is a no-op where ``enabled`` is false (ranks other than 0)."""

    def __init__(self, run_folder: Path, name: str, enabled: bool = True):
        self.path = Path(run_folder) / BOARD / name
        self.enabled = enabled
        self._writer = None

    def start(self, iteration: int) -> None:
        """Open the writer; a run resumed at ``iteration`` hides what an earlier attempt logged after it."""
        if not self.enabled or self._writer is not None:
            return
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(self.path), purge_step=iteration + 1 if iteration else None)

    def _scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None and value is not None and math.isfinite(value):
            self._writer.add_scalar(tag, value, step)

    def training(self, iteration: int, losses: dict[str, float], optimizer: torch.optim.Optimizer) -> None:
        """Loss terms by name and the total (window means), and each parameter group's current lr."""
        for name, value in losses.items():
            self._scalar(f"loss/{name}", value, iteration)
        for index, group in enumerate(optimizer.param_groups):
            self._scalar(f"lr/{group.get('name', f'group{index}')}", float(group["lr"]), iteration)

    def evaluation(self, iteration: int, split: str, miou: float) -> None:
        self._scalar(f"miou/{split}", 100 * miou, iteration)

    def scores(self, iteration: int, final: dict[str, Any], best: dict[str, Any] | None,
               class_names: Sequence[str]) -> None:
        """The run's final scores (last checkpoint, and the best-on-selection one when there is one)."""
        for prefix, scores in (("final", final), ("best", best)):
            if not scores:
                continue
            split = scores["split"]
            self._scalar(f"{prefix}/{split}/miou", 100 * scores["miou"], iteration)
            self._scalar(f"{prefix}/{split}/pixel_accuracy", 100 * scores["pixel_accuracy"], iteration)
            for name, value in zip(class_names, scores.get("per_class_iou") or []):
                self._scalar(f"{prefix}/{split}/iou/{name}", 100 * value, iteration)
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
