"""One process of a gradient-equivalence check (tests/test_distributed.py): trains a BatchNorm-free model with the
real ``run_training`` and saves its parameters and final scores. Alone with batch B, or under
``torchrun --nproc_per_node=N`` with batch B / N per process, the updates must be the same: each step's gradient is
the mean over the global batch either way (BatchNorm would differ: on CPU its statistics are per process).

    python tests/distributed_worker.py OUT BATCH_PER_PROCESS
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from torch import nn

from benchmark.engine import distributed
from benchmark.engine.train import TrainJob, run_training
from benchmark.models.base import FeaturePoint, SegmentationModel
from benchmark.registry import MODELS
from benchmark.suite import Suite


class ProbeNet(SegmentationModel):
    """Two 3x3 convolutions and a classifier: per-sample computation only, so batch splits cannot change it."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(8, num_classes, 1)
        self.feature_points = {"decoder": FeaturePoint(8, 1, "body"), "logits": FeaturePoint(num_classes, 1, "")}
        self.validate_points()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(images))


def main(out: Path, batch: int) -> None:
    torch.set_num_threads(1)
    MODELS.register("probe_net")(ProbeNet)
    device = distributed.setup()
    suite = Suite(name="probe", dataset={"name": "synthetic", "crop": [16, 16], "scale_range": [1.0, 1.0],
                                         "options": {"image_size": 16, "num_train": 20, "num_val": 6}},
                  # one epoch of 20 images at a global batch of 4: 5 steps, however the batch is split
                  schedule={"epochs": 1, "batch_size": batch, "lr": 0.5, "momentum": 0.9, "weight_decay": 0.0,
                            "eval_batch_size": 2, "checkpoint_every": 100, "log_every": 1},
                  students=[{"model": "tiny_student"}], methods=[{"name": "none"}], seeds=[0])
    job = TrainJob(name="probe", folder=out / "run", dataset=suite.dataset.resolved(), dataset_root=None,
                   schedule=suite.schedule, model_name="probe_net", model_options={}, seed=0,
                   methods=[{"name": "none", "hparams": {}}], runtime=suite.runtime.model_dump())
    record = run_training(job, device, logging.getLogger("probe"))
    parameters = {k: v.detach().cpu() for k, v in record["student_model"].named_parameters()}
    torch.save({"parameters": parameters, "final": record["final"], "world": distributed.world_size()},
               out / f"rank{distributed.rank()}.pt")
    distributed.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
