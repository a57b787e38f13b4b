"""A run's prediction PNGs, made once after training, never inside the loop (layout: :mod:`benchmark.qualitative`).

The report shows, for a few fixed images of the evaluation split, the image, its ground truth, the teacher's
prediction and every method's student prediction. The same indices go to every run of a suite (suite key
``report.qualitative_indices``, or :func:`benchmark.qualitative.default_indices`); the image and ground truth
are stored once per dataset configuration, the predictions in each run's own folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from benchmark.data.base import DatasetSpec
from benchmark.data.transforms import EvalTransform
from benchmark.models.base import SegmentationModel
from benchmark.qualitative import (
    SAMPLES,
    check_indices,
    default_indices,
    display_size,
    ignore_rgb,
    image_png,
    label_png,
    prediction_path,
    sample_paths,
)
from benchmark.registry import DATASETS
from benchmark.store import atomic_write_bytes
from benchmark.suite import config_key, dataset_key_fields


@dataclass(frozen=True)
class QualitativePlan:
    """Which evaluation images a suite shows (suite key ``report``) and where their image and ground truth go."""

    indices: tuple[int, ...] | None  # None: DEFAULT_COUNT spread over the split
    max_side: int
    samples_dir: Path

    def indices_for(self, length: int) -> list[int]:
        if self.indices is None:
            return default_indices(length)
        check_indices(self.indices, length, "report.qualitative_indices")
        return list(self.indices)


def samples_folder(store_root: Path, dataset: dict[str, Any], max_side: int) -> Path:
    """One folder per dataset configuration (the data root left out, as in run keys) and display size."""
    key = config_key({"dataset": dataset_key_fields(dataset), "max_side": max_side})
    return Path(store_root) / SAMPLES / key


@torch.inference_mode()
def save_predictions(model: SegmentationModel, eval_set: Dataset, eval_split: str, transform: EvalTransform,
                     spec: DatasetSpec, folder: Path, plan: QualitativePlan, device: torch.device,
                     runtime: dict[str, Any]) -> dict[str, Any]:
    """Predict the plan's images with ``model`` as evaluation does (same transform, autocast, layout); write PNGs.

    Returns the record's ``qualitative`` block: what was written and how to read it back.
    """
    # Imported here: the training loop imports this module, and both must predict the same way.
    from benchmark.engine.train import autocast_context, use_channels_last

    indices = plan.indices_for(len(eval_set))
    channels_last = use_channels_last(device, runtime)
    was_training = model.training
    model.eval()
    for index in indices:
        image, mask = eval_set[index]
        inputs, label = transform(image, mask)
        inputs = inputs[None].to(device)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, runtime):
            logits = model(inputs)
        prediction = logits.float().argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
        size = display_size(*label.shape[-2:], plan.max_side)
        atomic_write_bytes(prediction_path(folder, eval_split, index),
                           label_png(prediction, spec.palette, spec.ignore_index, size))
        image_path, label_path = sample_paths(plan.samples_dir, eval_split, index)
        if not (image_path.is_file() and label_path.is_file()):
            picture = image.as_subclass(torch.Tensor)
            if tuple(picture.shape[-2:]) != tuple(label.shape[-2:]):
                picture = F.resize(picture, list(label.shape[-2:]), antialias=True)
            atomic_write_bytes(image_path, image_png(picture.permute(1, 2, 0).numpy(), size))
            atomic_write_bytes(label_path, label_png(label.numpy(), spec.palette, spec.ignore_index, size))
    model.train(was_training)
    return {"split": eval_split, "indices": indices, "checkpoint": "last", "sample_key": plan.samples_dir.name,
            "palette": [list(c) for c in spec.palette], "ignore_index": spec.ignore_index,
            "ignore_rgb": list(ignore_rgb(spec.palette)), "max_side": plan.max_side}


def save_teacher_predictions(model: SegmentationModel, dataset: dict[str, Any], root: Path | None, folder: Path,
                             plan: QualitativePlan, device: torch.device, runtime: dict[str, Any]) -> None:
    """A teacher loaded from a checkpoint has no run of its own: its PNGs go to ``teachers/<key>/`` once."""
    spec = DATASETS.get(dataset["name"])
    eval_set = spec.build(dataset["eval_split"], root, **dataset["options"])
    indices = plan.indices_for(len(eval_set))
    if all(prediction_path(folder, dataset["eval_split"], i).is_file() for i in indices):
        return
    save_predictions(model, eval_set, dataset["eval_split"], EvalTransform(dataset["eval_size"]), spec, folder, plan,
                     device, runtime)
