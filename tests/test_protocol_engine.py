"""The authors' loss/optimizer/forward variants (``schedule.*`` protocol keys) in the training loop."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from benchmark.__main__ import main
from benchmark.engine.step import authors_kd_forward, segmentation_loss
from benchmark.engine.train import build_method, make_optimizer
from benchmark.models.hooks import FeatureCapture
from benchmark.registry import MODELS
from benchmark.suite import ScheduleConfig


def schedule(**keys) -> ScheduleConfig:
    return ScheduleConfig(**{"iterations": 10, "batch_size": 2, "lr": 0.01, **keys})


def test_head_lr_mult_puts_the_declared_head_in_its_own_group():
    student = MODELS.get("tiny_student")(5)
    method = build_method([{"name": "kd", "hparams": {}}], student, MODELS.get("tiny_teacher")(5))
    optimizer = make_optimizer(schedule(head_lr_mult=10.0), student, method)
    backbone, head = optimizer.param_groups[:2]
    assert backbone["lr"] == pytest.approx(0.01) and head["lr"] == pytest.approx(0.1)
    head_ids = {id(p) for name in ("aspp", "low_level", "fuse", "classifier") for p in
                getattr(student, name).parameters()}
    assert {id(p) for p in head["params"]} == head_ids
    assert {id(p) for p in backbone["params"]} == {id(p) for p in student.backbone.parameters()}
    assert len(make_optimizer(schedule(), student, method).param_groups) == 1  # 1x: today's single group


def test_head_of_deeplabv3plus_is_aspp_decoder_and_classifier():
    model = MODELS.get("deeplabv3plus_r18")(3)
    head = {id(p) for p in model.head_parameters()}
    backbone = {id(p) for p in model.backbone.parameters()}
    assert head and not head & backbone and head | backbone == {id(p) for p in model.parameters()}


def test_a_head_multiplier_on_a_model_without_a_head_is_refused():
    class Headless(nn.Module):
        head_parameters = staticmethod(list)  # declares no head modules

        def __init__(self):
            super().__init__()
            self.layer = nn.Conv2d(3, 3, 1)

    with pytest.raises(ValueError, match="declares no head"):
        make_optimizer(schedule(head_lr_mult=10.0), Headless(), SimpleNamespace(student_optimizer_parameters=list))


def test_authors_kd_forward_skips_the_aspp_dropout_and_puts_it_back():
    model = MODELS.get("deeplabv3plus_r18")(3).train()
    images = torch.randn(2, 3, 33, 33)
    with FeatureCapture(model, ["encoder", "encoder:pre_relu", "decoder", "decoder:pre_relu"]) as capture:
        with authors_kd_forward(model):
            assert isinstance(model.context.project[3], nn.Identity)
            model(images)
        bypassed = capture.pop()
        model(images)
        plain = capture.pop()
    assert isinstance(model.context.project[3], nn.Dropout)
    # The ASPP output is its ReLU's output exactly when the dropout is bypassed; with it, half is zeroed, half doubled.
    assert torch.equal(bypassed["encoder"], torch.relu(bypassed["encoder:pre_relu"]))
    assert not torch.equal(plain["encoder"], torch.relu(plain["encoder:pre_relu"]))
    # The decoder point is before the decoder's Dropout(0.1), in either forward.
    for features in (bypassed, plain):
        assert torch.equal(features["decoder"], torch.relu(features["decoder:pre_relu"]))


def test_aux_ce_upsamples_with_align_corners_true():
    # 2x2 aux logits -> 3x3 labels. With align_corners=True the corners are the inputs, edge midpoints the means of
    # two, the centre the mean of four; all labels 0, so each pixel's CE is softplus(-margin).
    margins = torch.tensor([[1.0, 3.0], [-2.0, 0.0]])
    aux = torch.stack([margins, torch.zeros(2, 2)])[None]
    grid = [[1.0, 2.0, 3.0], [-0.5, 0.5, 1.5], [-2.0, -1.0, 0.0]]
    expected = sum(math.log1p(math.exp(-m)) for row in grid for m in row) / 9
    labels = torch.zeros(1, 3, 3, dtype=torch.long)
    student = SimpleNamespace(aux_weight=1.0)
    terms = segmentation_loss(student, torch.zeros(1, 2, 3, 3), {"aux_logits": aux}, labels, 255)
    assert terms["aux_ce"].item() == pytest.approx(expected, rel=1e-6)
    assert terms["ce"].item() == pytest.approx(math.log(2), rel=1e-6)


def _first_step_ce(tmp_path, name: str, **schedule_keys) -> float:
    suite = {
        "name": name,
        "dataset": {"name": "synthetic", "crop": [32, 32], "scale_range": [1.0, 1.0],
                    "options": {"image_size": 32, "num_train": 8, "num_val": 4, "num_test": 4}},
        "schedule": {"iterations": 1, "batch_size": 4, "lr": 0.01, "log_every": 1, "checkpoint_every": 1,
                     "eval_batch_size": 4, **schedule_keys},
        "students": [{"model": "tiny_student"}], "methods": [{"name": "none"}], "seeds": [0],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["run", str(path), "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")]) == 0
    (metrics,) = (tmp_path / "results" / name / "runs").glob("*/metrics.json")
    return json.loads(metrics.read_text())["last_losses"]["ce"]


def test_ce_batch_average_divides_the_first_steps_ce_by_the_batch(tmp_path):
    plain = _first_step_ce(tmp_path, "plain")
    averaged = _first_step_ce(tmp_path, "averaged", ce_batch_average=True)
    assert averaged == pytest.approx(plain / 4, rel=1e-5)  # same data, same init: only the reduction differs
